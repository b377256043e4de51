"""A backend restart under a connect-per-100-ms client, through pylb and haproxy side by
side (issue #22, item 3; not a test). Run by `python -m bench.faults --restart`.

One backend (tests/hardening/_restartable.py, in a thread of this process: an echo
server for L4, a tiny HTTP server for L7) goes away for `outage` seconds — its listener
closed, connects refused, as a stopped postgres or nginx — and comes back on the same
port. Every 100 ms a probe connects through pylb, through haproxy 2.6 and directly, each
with a fresh connection (a `psql -c 'select 1'`, a `curl`), and counts as failed if it
does not get its answer within `probe_timeout`. Both proxies have the same retries (3,
and redispatch on the last, which has nowhere else to go with one server), connect
timeout (5 s) and active check (`inter 2s rise 2 fall 3`: pylb's defaults).

The direct count shows the outage; a proxy's count above it would be errors it made
itself (a server kept ejected after it was back), below it what its retries hid.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import procs
from pylb.demo import service_manifest, slice_manifest
from tests.hardening._restartable import Restartable

ROOT = Path(__file__).resolve().parents[1]
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 4000
defaults
    mode {mode}
    retries 3
    option redispatch
    timeout connect 5s
    timeout client 50s
    timeout server 50s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend_port} check inter 2s rise 2 fall 3
"""


@dataclass
class Count:
    probes: int = 0
    failures: int = 0
    last_failure_after_back: float | None = None  # s after the backend was back
    waits: list[float] = field(default_factory=list)  # latencies of the successes


async def _probe(port: int, http: bool, timeout: float) -> bool:
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        if http:
            w.write(b"GET /web/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = await asyncio.wait_for(r.read(), timeout)
            return got.startswith(b"HTTP/1.1 200 ")
        w.write(b"select 1;")
        return await asyncio.wait_for(r.readexactly(9), timeout) == b"select 1;"
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        w.close()


async def _run(targets: dict[str, int], backend: Restartable, http: bool, outage: float,
               before: float, after: float, probe_timeout: float) -> dict[str, Count]:
    counts = {name: Count() for name in targets}
    back_at: list[float] = []

    async def one(name: str, port: int) -> None:
        t0 = time.monotonic()
        ok = await _probe(port, http, probe_timeout)
        c = counts[name]
        c.probes += 1
        if ok:
            c.waits.append(time.monotonic() - t0)
        else:
            c.failures += 1
            if back_at and t0 >= back_at[0]:
                c.last_failure_after_back = t0 - back_at[0]

    async def away() -> None:
        await backend.outage(before, outage)
        back_at.append(time.monotonic())

    outage_task = asyncio.ensure_future(away())
    tasks = []
    end = time.monotonic() + before + outage + after
    while time.monotonic() < end:
        for name, port in targets.items():
            tasks.append(asyncio.ensure_future(one(name, port)))
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    await outage_task
    return counts


def run_restart(mode: str, outage: float, tmp: Path, before: float = 2.0,
                after: float = 10.0, probe_timeout: float = 15.0) -> dict[str, Count]:
    """One restart with pylb and haproxy in front; failures per target."""
    http = mode == "http"
    loop = asyncio.new_event_loop()
    backend = Restartable()
    loop.run_until_complete(backend.start())
    try:
        with ExitStack() as stack:
            g = stack.enter_context(procs.group())
            pylb_port, hap_port, stats_port = (procs.free_port() for _ in range(3))
            docs = [service_manifest("web" if http else "db", 80 if http else 5432, "p",
                                     port_name="p"),
                    slice_manifest("s", "web" if http else "db", backend.port,
                                   ["127.0.0.1"], port_name="p")]
            manifests = tmp / f"restart-{mode}.yaml"
            manifests.write_text(yaml.safe_dump_all(docs))
            argv = [sys.executable, "-m", "pylb.cli", "run", f"--source=file:{manifests}",
                    "--bind=127.0.0.1", f"--https-port={procs.free_port()}",
                    f"--stats-port={stats_port}", f"--health-port={procs.free_port()}",
                    "--workers=1", "--retries=3", "--timeout-connect=5s",
                    "--log-level=warning"]
            argv += [f"--http-port={pylb_port}"] if http else [
                f"--http-port={procs.free_port()}", f"--tcp-services=db:{pylb_port}"]
            g.add(procs.start(f"pylb-restart-{mode}", argv, cpus=None, logdir=tmp,
                              cwd=str(ROOT)))
            cfg = tmp / f"haproxy-restart-{mode}.cfg"
            cfg.write_text(HAPROXY_CFG.format(mode=mode, port=hap_port,
                                              backend_port=backend.port))
            g.add(procs.start(f"haproxy-restart-{mode}", [HAPROXY, "-db", "-f", str(cfg)],
                              cpus=None, logdir=tmp))
            for p in (pylb_port, hap_port):
                procs.wait_port(p, timeout=30)
            # Both see the server up (checks passed) before the run.
            warm = loop.run_until_complete(_run(
                {"pylb": pylb_port, "haproxy": hap_port}, backend, http, 0.0, 0.0, 3.0, 5.0))
            if any(c.failures for c in warm.values()):
                print(f"warning: failures before the outage: "
                      f"{ {k: c.failures for k, c in warm.items()} }", file=sys.stderr)
            return loop.run_until_complete(_run(
                {"direct": backend.port, "pylb": pylb_port, "haproxy": hap_port}, backend,
                http, outage, before, after, probe_timeout))
    finally:
        backend.stop()
        loop.close()


def report(mode: str, outage: float, counts: dict[str, Count]) -> None:
    print(f"{mode} restart, backend away {outage:g} s, a probe every 100 ms:")
    for name, c in counts.items():
        waits = sorted(c.waits)
        worst = waits[-1] if waits else 0.0
        tail = ("" if c.last_failure_after_back is None
                else f", last failure {c.last_failure_after_back:.1f} s after it was back")
        print(f"  {name:8s} {c.failures:4d} failed of {c.probes:4d}; slowest success "
              f"{worst:.1f} s{tail}")
