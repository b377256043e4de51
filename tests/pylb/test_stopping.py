"""Signals under load (pylb.stopping): the hard stop's decisions with an injected clock and
timer, and `pylb run` stopped while its controller is stalled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pylb.stopping import EXIT_HARD, EXIT_MARGIN, MIN_DEADLINE, RESERVE, HardStop
from tests.conftest import free_port


class Clock:
    def __init__(self) -> None:
        self.t = 100.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.t

    def timer(self, delay: float, fn: Callable[[], None]) -> None:
        self.timers.append((delay, fn))


def make(grace: float) -> tuple[HardStop, Clock, list[int]]:
    clock, kills = Clock(), []
    return HardStop(grace, kills.append, clock=clock, timer=clock.timer), clock, kills


@pytest.mark.parametrize(("grace", "deadline", "drain_at_signal"), [
    (30.0, 30.0 - EXIT_MARGIN, 30.0 - EXIT_MARGIN - RESERVE),
    (EXIT_MARGIN + 1.0, 1.0, 0.5),  # a deadline under 2 s: half of it for closing
    (1.0, MIN_DEADLINE, MIN_DEADLINE / 2),
    (0.0, MIN_DEADLINE, 0.0),  # no wait for connections, still time to close
])
def test_first_signal_arms_the_deadline_once(grace: float, deadline: float,
                                             drain_at_signal: float) -> None:
    stop, clock, kills = make(grace)
    assert not stop.armed and stop.drain_budget() == grace
    assert stop.on_signal(signal.SIGTERM) is True
    assert stop.armed and [d for d, _ in clock.timers] == [deadline]
    assert stop.drain_budget() == pytest.approx(drain_at_signal)
    stop.arm()  # again: the first deadline stays
    assert len(clock.timers) == 1 and kills == []


def test_the_budget_shrinks_with_time_and_never_goes_negative() -> None:
    stop, clock, _ = make(10.0)
    stop.on_signal(signal.SIGTERM)
    clock.t += 4
    assert stop.remaining() == pytest.approx(6.0 - EXIT_MARGIN)
    assert stop.drain_budget() == pytest.approx(6.0 - EXIT_MARGIN - RESERVE)
    clock.t += 60
    assert stop.remaining() == 0.0 and stop.drain_budget() == 0.0


def test_the_deadline_kills_with_the_hard_status() -> None:
    stop, clock, kills = make(5.0)
    stop.on_signal(signal.SIGTERM)
    _, expire = clock.timers[0]
    expire()
    assert kills == [EXIT_HARD]


@pytest.mark.parametrize(("first", "second", "code"), [
    (signal.SIGTERM, signal.SIGTERM, 128 + signal.SIGTERM),
    (signal.SIGTERM, signal.SIGINT, 128 + signal.SIGINT),
    (signal.SIGINT, signal.SIGINT, 128 + signal.SIGINT),
])
def test_a_second_signal_kills_at_once(first: int, second: int, code: int) -> None:
    stop, clock, kills = make(30.0)
    assert stop.on_signal(first) is True and kills == []
    assert stop.on_signal(second) is False
    assert kills == [code] and len(clock.timers) == 1


# -- `pylb run` with a stalled controller ----------------------------------------------------

# Parsing this file takes the (pure-Python) YAML loader a minute or more: the file source
# reads it in a thread, which interpreter exit would wait for, and its GIL use slows the loop.
STALL_SERVICES = 10_000


def stall_file(path: Path) -> None:
    from pylb.demo import service_manifest, slice_manifest

    docs = []
    for i in range(STALL_SERVICES):
        docs.append(json.dumps(service_manifest(f"s{i}", 80, 8080)))
        addresses = [f"127.3.{(i * 10 + j) >> 8 & 255}.{(i * 10 + j) & 255}" for j in range(10)]
        docs.append(json.dumps(slice_manifest(f"s{i}-a", f"s{i}", 8080, addresses)))
    path.write_text("\n---\n".join(docs))


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def gone(pids: list[int]) -> list[str]:
    """The command lines of those of `pids` still alive after a moment (SIGKILL is not
    instantaneous)."""
    for _ in range(50):
        if not any(_alive(p) for p in pids):
            return []
        await asyncio.sleep(0.1)
    out = []
    for p in pids:
        if _alive(p):
            with contextlib.suppress(OSError):
                out.append(Path(f"/proc/{p}/cmdline").read_text().replace("\0", " "))
    return out


async def start_stalled(tmp_path: Path, grace: str) -> tuple[asyncio.subprocess.Process,
                                                              list[int], Path]:
    """`pylb run` with 2 workers over the stall file; returns once its health port answers
    (workers up, the file still being parsed)."""
    f = tmp_path / "big.yaml"
    stall_file(f)
    health = free_port()
    log = tmp_path / "pylb.log"
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pylb.cli", "run", f"--source=file:{f}", "--bind=127.0.0.1",
            f"--http-port={free_port()}", f"--stats-port={free_port()}",
            f"--health-port={health}", "--workers=2", f"--grace-period={grace}",
            stdout=asyncio.subprocess.DEVNULL, stderr=fh)
    for _ in range(600):
        try:
            _r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", health), 2)
            w.close()
            break
        except (OSError, TimeoutError):
            assert proc.returncode is None, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("pylb never listened: " + log.read_text()[-3000:])
    workers = _descendants(proc.pid)
    assert len(workers) >= 2, workers
    return proc, workers, log


async def stopped_within(proc: asyncio.subprocess.Process, seconds: float) -> float:
    t = time.monotonic()
    try:
        await asyncio.wait_for(proc.wait(), seconds)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return time.monotonic() - t


@pytest.mark.timeout(120)
async def test_sigterm_ends_the_tree_in_the_grace_period_while_the_controller_is_stalled(
        tmp_path: Path) -> None:
    proc, workers, log = await start_stalled(tmp_path, "2s")
    proc.send_signal(signal.SIGTERM)
    # Without the hard stop, exit waits for the parse (a minute or more): 30 s proves it.
    await stopped_within(proc, 30)
    text = log.read_text()
    assert "route table v1" not in text, "the file was parsed: the stall did not stall"
    assert proc.returncode == EXIT_HARD, text[-3000:]
    assert "did not end within --grace-period 2s" in text
    assert await gone(workers) == []


@pytest.mark.timeout(120)
async def test_a_second_sigterm_ends_the_tree_at_once(tmp_path: Path) -> None:
    proc, workers, log = await start_stalled(tmp_path, "60s")
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert proc.returncode is None  # the first one begins a graceful shutdown of up to 60 s
    proc.send_signal(signal.SIGTERM)
    await stopped_within(proc, 30)
    assert proc.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert "second stop signal" in log.read_text()
    assert await gone(workers) == []
