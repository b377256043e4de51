"""Backend faults under load, end to end (issue #12; not a test).

    python -m bench.faults [--seconds 30] [--connections 20] [--faults none,reset-before,...]
    python -m bench.faults --restart [--outage 5] [--modes tcp,http]

`--restart`: a backend that goes away for `--outage` seconds under a connect-per-100-ms
client, through pylb and haproxy side by side with the same retries (bench/restart.py).

For each fault: `pylb run` (a subprocess, `--source file:`, one worker, active checks off
so the fault lasts the whole run) serves one service whose three servers are two nginx
backends and one misbehaving server (tests/hardening/_faulty_backend.py, run in a thread
of this process; or a refused port, or a black hole). wrk loads it for `--seconds`; then
the backend's row of the stats CSV (econ, eresp, wretr, wredis) is read.

Printed per fault: requests wrk completed, non-2xx/3xx responses, socket errors, the
proxy's retries and redispatches, what the faulty server did (misbehaved / answered),
how many failures the fault *should* cause (one per misbehaviour for the faults whose
right answer is an error: a 502, a 504 or a cut; zero for the faults pylb must hide:
keep-alive races of GETs, closed keep-alive connections, refused and black-holed
connects), and `lost`: failures beyond those. pylb's target is lost = 0.

wrk counts a connection cut mid-response as a read error, a 502/504 as non-2xx; a cut
connection also costs wrk the request it had in flight, so an error shows in exactly one
column.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvloop
import yaml

from bench import procs, wrk
from bench.run import backend
from pylb.demo import service_manifest, slice_manifest
from tests.hardening._faulty_backend import BlackHole, Fault, FaultyBackend, RefusedPort

ROOT = Path(__file__).resolve().parents[1]
APP = "default/app:80"

# fault name -> (FaultyBackend fault or "refused"/"blackhole", rate, errors expected)
# `errors expected`: the right answer to each misbehaviour is an error the client sees.
FAULTS: dict[str, tuple[Fault | str, float, bool]] = {
    "none": (Fault.NONE, 1.0, False),
    "reset-before": (Fault.RESET_BEFORE, 0.2, True),
    "reset-in-body": (Fault.RESET_IN_BODY, 0.2, True),
    "close-in-body": (Fault.CLOSE_IN_BODY, 0.2, True),
    "garbage": (Fault.GARBAGE, 0.2, True),
    "bad-status": (Fault.BAD_STATUS, 0.2, True),
    "silent": (Fault.SILENT, 0.01, True),
    "ka-race-rst": (Fault.KA_RACE_RST, 0.2, False),
    "ka-race-fin": (Fault.KA_RACE_FIN, 0.2, False),
    "ka-close-after": (Fault.KA_CLOSE_AFTER, 0.2, False),
    "refused": ("refused", 1.0, False),
    "blackhole": ("blackhole", 1.0, False),
}


@dataclass
class Row:
    fault: str
    requests: int = 0
    non_2xx: int = 0
    socket_errors: int = 0
    retries: int = 0
    redispatches: int = 0
    econ: int = 0
    eresp: int = 0
    misbehaved: int = 0
    fresh: int = 0  # misbehaviours on a connection's first request
    answered: int = 0
    expected: int = 0
    healthy_errors: int = 0  # econ + eresp counted on the healthy (nginx) servers

    @property
    def lost(self) -> int:
        return max(0, self.non_2xx + self.socket_errors - self.expected)


class _LoopThread:
    """A uvloop event loop in a thread, for the faulty server."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def faulty_server(kind: Fault | str, rate: float) -> Iterator[tuple[int, FaultyBackend | None]]:
    if kind == "refused":
        r = RefusedPort()
        try:
            yield r.port, None
        finally:
            r.stop()
        return
    if kind == "blackhole":
        b = BlackHole().start()
        try:
            yield b.port, None
        finally:
            b.stop()
        return
    assert isinstance(kind, Fault)
    lt = _LoopThread()
    fb = FaultyBackend(kind, rate=rate, drip=5.0)
    try:
        lt.run(fb.start())
        yield fb.port, fb
    finally:
        lt.run(fb.stop())
        lt.stop()


def stats_rows(port: int, backend_name: str) -> dict[str, dict[str, str]]:
    """The CSV rows of `backend_name`: svname ("BACKEND" or a server) -> row."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/;csv", timeout=5) as resp:
        text = resp.read().decode()
    return {row["svname"]: row for row in csv.DictReader(io.StringIO(text.lstrip("# ")))
            if row.get("pxname") == backend_name}


def settled_rows(port: int, backend_name: str, limit: float = 15.0
                 ) -> dict[str, dict[str, str]]:
    """The controller merges the workers' counters periodically: read until two reads a
    second apart agree (bounded)."""
    last: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        rows = stats_rows(port, backend_name)
        if rows and rows == last:
            return rows
        last = rows
        time.sleep(1.0)
    return last


def _errors(row: dict[str, str]) -> int:
    return sum(int(row.get(k) or 0) for k in ("econ", "eresp"))


def run_fault(name: str, seconds: float, connections: int, tmp: Path) -> Row:
    kind, rate, errors_expected = FAULTS[name]
    row = Row(name)
    with ExitStack() as stack:
        ports = []
        for i in range(2):
            sub = tmp / f"nginx{i}"
            sub.mkdir(exist_ok=True)
            sub.chmod(0o755)
            ports.append(stack.enter_context(backend(sub, None)))
        fport, fb = stack.enter_context(faulty_server(kind, rate))
        manifests = tmp / f"{name}.yaml"
        docs = [service_manifest("app", 80, "http", port_name="http")]
        for i, p in enumerate([*ports, fport]):
            docs.append(slice_manifest(f"app-{i}", "app", p, ["127.0.0.1"],
                                       port_name="http"))
        manifests.write_text(yaml.safe_dump_all(docs))
        http_port, stats_port = procs.free_port(), procs.free_port()
        argv = [sys.executable, "-m", "pylb.cli", "run", f"--source=file:{manifests}",
                "--bind=127.0.0.1", f"--http-port={http_port}",
                f"--https-port={procs.free_port()}", f"--stats-port={stats_port}",
                f"--health-port={procs.free_port()}", "--workers=1", "--checks=false",
                "--timeout-server=1s", "--timeout-connect=1s",
                f"--log-level={os.environ.get('FAULTS_LOG', 'error')}"]
        g = stack.enter_context(procs.group())
        g.add(procs.start(f"pylb-{name}", argv, cpus=None, logdir=tmp, cwd=str(ROOT)))
        procs.wait_port(http_port, timeout=30)
        url = f"http://127.0.0.1:{http_port}/app/small"
        _wait_routed(url)
        rows0 = settled_rows(stats_port, APP)
        before = rows0.get("BACKEND", {})
        f0 = (fb.faults, fb.answered, fb.faults_fresh) if fb is not None else (0, 0, 0)
        r = wrk.run(url, seconds=seconds, connections=connections, timeout_s=10)
        rows1 = settled_rows(stats_port, APP)  # (requests in flight at wrk's end ended)
        after = rows1.get("BACKEND", {})
        # econ + eresp of the nginx servers: what the fault did to its healthy peers.
        row.healthy_errors = sum(
            _errors(sr) - _errors(rows0.get(sv, {})) for sv, sr in rows1.items()
            if sv != "BACKEND" and not sv.endswith(f":{fport}"))
        row.requests = r.requests
        row.non_2xx = r.non_2xx
        row.socket_errors = sum(r.socket_errors.values())
        for key, attr in (("wretr", "retries"), ("wredis", "redispatches"),
                          ("econ", "econ"), ("eresp", "eresp")):
            setattr(row, attr, int(after.get(key) or 0) - int(before.get(key) or 0))
        if fb is not None:
            row.misbehaved = fb.faults - f0[0]
            row.answered = fb.answered - f0[1]
            row.fresh = fb.faults_fresh - f0[2]
        # A reset before any response byte on a reused connection is the keep-alive race:
        # retried, so only those on new connections must fail.
        row.expected = 0 if not errors_expected else (
            row.fresh if kind is Fault.RESET_BEFORE else row.misbehaved)
    return row


def _wait_routed(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    ok = 0
    while time.monotonic() < deadline and ok < 3:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                ok += resp.status == 200
        except OSError:
            pass
        time.sleep(0.1)
    if ok < 3:
        raise TimeoutError(f"pylb did not route {url} within {timeout}s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--restart", action="store_true",
                    help="the restart-under-load case instead, pylb beside haproxy")
    ap.add_argument("--outage", type=float, default=5.0)
    ap.add_argument("--modes", default="tcp,http")
    args = ap.parse_args()
    if args.restart:
        from bench.restart import report, run_restart

        with tempfile.TemporaryDirectory(prefix="pylb-restart-") as t:
            for mode in filter(None, args.modes.split(",")):
                report(mode, args.outage, run_restart(mode, args.outage, Path(t)))
        return 0
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    names = [n for n in args.faults.split(",") if n]
    rows = []
    cols = ("fault", "requests", "non2xx", "sockerr", "retries", "redisp", "econ", "eresp",
            "misbeh", "answered", "expected", "lost", "peer_err")
    print(("%-15s" + " %9s" * (len(cols) - 1)) % cols, flush=True)
    with tempfile.TemporaryDirectory(prefix="pylb-faults-") as t:
        tmp = Path(os.environ.get("FAULTS_TMP") or t)
        tmp.chmod(0o755)
        for name in names:
            sub = tmp / name
            sub.mkdir()
            sub.chmod(0o755)
            row = run_fault(name, args.seconds, args.connections, sub)
            rows.append(row)
            print(("%-15s" + " %9d" * (len(cols) - 1)) % (
                row.fault, row.requests, row.non_2xx, row.socket_errors, row.retries,
                row.redispatches, row.econ, row.eresp, row.misbehaved, row.answered,
                row.expected, row.lost, row.healthy_errors), flush=True)
    total = sum(r.requests for r in rows)
    lost = sum(r.lost for r in rows)
    print(f"\n{len(rows)} faults, {total} requests, {lost} lost "
          f"(failures beyond one per server misbehaviour whose right answer is an error)")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
