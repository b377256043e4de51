"""`pylb run --source kubernetes --checks=all` with thousands of endpoints and few file
descriptors: the checks stay inside their budget — no server is blamed for the
controller's own shortage, traffic is served, SIGTERM ends it within the grace period.

Every fake endpoint is in 127.0.0.0/8: 3,000 that refuse at once (nothing listens), 200
that hang (a listener whose accept queue is full drops the SYNs, so each probe holds a
descriptor until its timeout), and one real backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import re
import resource
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pylb.demo import service_manifest, slice_manifest, start_name_server
from tests.conftest import free_port, free_ports
from tests.discovery.test_run_kubernetes import get
from tests.kfake import FakeApiServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NOFILE = 256  # pylb raises its soft limit to the hard one: both are set
REFUSING = 3000
HANGING = 200
GRACE = 5.0


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@contextlib.contextmanager
def hanging_listeners(n: int, port: int) -> Iterator[list[str]]:
    """`n` listeners on 127.7.0.x:`port` that never accept, their queues full."""
    socks: list[socket.socket] = []
    addresses = [f"127.7.{i // 250}.{i % 250 + 1}" for i in range(n)]
    try:
        for a in addresses:
            listener = socket.socket()
            socks.append(listener)
            listener.bind((a, port))
            listener.listen(0)
            for _ in range(2):
                c = socket.socket()
                socks.append(c)
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    c.connect((a, port))
        yield addresses
    finally:
        for s in socks:
            s.close()


async def server_rows(stats_port: int) -> dict[str, dict[str, str]]:
    """The stats page's server rows (haproxy CSV), by server name."""
    status, body = await get(stats_port, "/;csv")
    assert status == 200
    lines = body.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, r, strict=False)) for r in csv.reader(lines[1:])]
    return {r["svname"]: r for r in rows if r.get("type") == "2"}


async def test_thousands_of_checks_under_a_low_fd_limit(tmp_path: Path) -> None:
    web = await start_name_server("web")
    web_port = web.sockets[0].getsockname()[1]
    hang_port, dead_port = free_port("127.7.0.1"), free_port("127.6.0.1")
    log = tmp_path / "pylb.log"
    proc = None
    with hanging_listeners(HANGING, hang_port) as hanging:
        async with FakeApiServer() as api:
            api.store.create("services", service_manifest("web", 80, web_port))
            api.store.create("endpointslices",
                             slice_manifest("web-a", "web", web_port, ["127.0.0.1"]))
            api.store.create("services", service_manifest("hang", 80, hang_port))
            api.store.create("endpointslices",
                             slice_manifest("hang-a", "hang", hang_port, hanging))
            for i in range(REFUSING // 100):
                api.store.create("services", service_manifest(f"dead{i}", 80, dead_port))
                api.store.create("endpointslices", slice_manifest(
                    f"dead{i}-a", f"dead{i}", dead_port,
                    [f"127.6.{i}.{j}" for j in range(1, 101)]))
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump(api.kubeconfig_dict()))
            http_port, stats_port = free_ports(2)
            try:
                with log.open("wb") as fh:
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "pylb", "run", "--source=kubernetes",
                        "--use-kubernetes-cluster-service=false",
                        f"--kubeconfig={kubeconfig}", "--bind=127.0.0.1",
                        f"--http-port={http_port}", f"--stats-port={stats_port}",
                        f"--health-port={free_port()}", "--workers=1", "--checks=all",
                        "--check-fall=1", "--check-timeout=1s",
                        f"--grace-period={GRACE:g}s",
                        env={"NO_PROXY": "127.0.0.1,localhost", "PATH": "/usr/bin:/bin"},
                        stdout=asyncio.subprocess.DEVNULL, stderr=fh,
                        preexec_fn=_limit_fds)
                deadline = time.monotonic() + 60
                while True:
                    with contextlib.suppress(OSError, IndexError, ValueError,
                                             asyncio.TimeoutError):
                        if (await get(http_port, "/web"))[0] == 200:
                            break
                    assert proc.returncode is None, log.read_text()[-3000:]
                    assert time.monotonic() < deadline, log.read_text()[-3000:]
                    await asyncio.sleep(0.1)

                # every refusing and hanging server is found down for what it did (the
                # stats page has each; the log has the first few) — none for the
                # controller's own want of descriptors — while traffic is served
                deadline = time.monotonic() + 90
                while True:
                    rows = await server_rows(stats_port)
                    down = {k: r for k, r in rows.items()
                            if r["status"] == "DOWN" and not k.startswith("127.0.0.1:")}
                    if len(down) >= REFUSING + HANGING:
                        break
                    assert proc.returncode is None, log.read_text()[-3000:]
                    assert time.monotonic() < deadline, (len(down), log.read_text()[-3000:])
                    assert (await get(http_port, "/web"))[0] == 200
                    await asyncio.sleep(1.0)
                assert {r["check_status"] for r in down.values()} == {"L4CON", "L4TOUT"}
                assert not any("open files" in r["last_chk"] for r in rows.values())
                assert rows[f"127.0.0.1:{web_port}"]["status"] == "UP"
                text = log.read_text(errors="replace")
                logged = re.findall(r"server (\S+) is DOWN: (.*)", text)
                assert logged and all(r.startswith(("Layer4 connection problem",
                                                    "Layer4 timeout")) for _, r in logged)
                assert "Socket error" not in text and "SOCKERR" not in text
                assert (await get(http_port, "/web"))[0] == 200

                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), GRACE + 30)
                took = time.monotonic() - started
                assert took < GRACE + 5, (took, log.read_text()[-2000:])
            finally:
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                web.close()
                await web.wait_closed()
