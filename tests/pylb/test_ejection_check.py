"""A passing active check ends a passive ejection even while the check stays up (issue
#22, item 2), through `pylb run` on real sockets: a worker ejects a server after three
refused connects; the server listens again before its check could mark it down (fall 10);
with --error-down-for=60s the ejection ends with the controller's next passing probe of
it, one "back after a passing check" line per worker that ejected it, and it gets
traffic again — seconds, not a minute."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import pytest
import yaml

from pylb.demo import service_manifest, slice_manifest
from tests.conftest import free_port


async def _named_server(name: bytes, port: int = 0) -> asyncio.Server:
    async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(name)
        with contextlib.suppress(OSError):
            await w.drain()
        w.close()

    return await asyncio.start_server(serve, "127.0.0.1", port)


async def _through(port: int) -> bytes:
    """One connection through pylb: the name of the server that answered, b"" if none."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (OSError, TimeoutError):
        return b""
    try:
        return await asyncio.wait_for(r.read(), 10)
    except (OSError, TimeoutError):
        return b""
    finally:
        w.close()


def _lines(log: Path, text: str) -> list[str]:
    return [ln for ln in log.read_text(errors="replace").splitlines() if text in ln]


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_passing_check_ends_an_ejection(tmp_path: Path, workers: int) -> None:
    a = await _named_server(b"A")
    b = await _named_server(b"B")
    pa, pb = (s.sockets[0].getsockname()[1] for s in (a, b))
    manifests = tmp_path / "services.yaml"
    manifests.write_text(yaml.safe_dump_all([
        service_manifest("db", 5432, "p", port_name="p"),
        slice_manifest("db-a", "db", pa, ["127.0.0.1"], port_name="p"),
        slice_manifest("db-b", "db", pb, ["127.0.0.1"], port_name="p")]))
    port = free_port()
    log = tmp_path / "pylb.log"
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pylb", "run", f"--source=file:{manifests}",
            "--bind=127.0.0.1", f"--http-port={free_port()}",
            f"--https-port={free_port()}", f"--stats-port={free_port()}",
            f"--health-port={free_port()}", f"--tcp-services=db:{port}",
            f"--workers={workers}", "--retries=3", "--error-limit=3",
            "--error-down-for=60s", "--checks=all", "--check-interval=300ms",
            "--check-rise=1", "--check-fall=10", "--log-level=info",
            stdout=asyncio.subprocess.DEVNULL, stderr=fh)
    try:
        deadline = time.monotonic() + 30
        seen: set[bytes] = set()
        while seen != {b"A", b"B"}:  # both servers serve through pylb
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            seen.add(await _through(port))
            seen.discard(b"")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # B's first probes have passed: its check is UP

        b.close()
        await b.wait_closed()
        # Refused connects to B (each client redispatched to A) until a worker ejects it;
        # well inside the 3 s its check would need to fail 10 times.
        deadline = time.monotonic() + 2
        while not _lines(log, " ejected for 60s") and time.monotonic() < deadline:
            assert await _through(port) == b"A"
        ejected = _lines(log, " ejected for 60s")
        assert ejected, log.read_text()[-3000:]
        assert all(f"127.0.0.1:{pb}" in ln for ln in ejected)
        b = await _named_server(b"B", pb)
        back_at = time.monotonic()

        # Each ejection ends with a passing probe: a few check intervals, not 60 s.
        deadline = back_at + 10
        while len(_lines(log, "back after a passing check")) < len(ejected):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.05)
        back = _lines(log, "back after a passing check")
        assert len(back) == len(_lines(log, " ejected for 60s"))
        assert all(f"127.0.0.1:{pb}" in ln for ln in back)
        assert not _lines(log, "back after its ejection")  # not by time nor a connect
        assert not _lines(log, "is DOWN")  # the check never went down meanwhile
        # ... and B has traffic again: round robin in every worker.
        answers = [await _through(port) for _ in range(40)]
        assert answers.count(b"B") >= 10, answers
    finally:
        proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 15)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        a.close()
        b.close()
