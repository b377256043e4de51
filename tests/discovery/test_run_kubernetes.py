"""`pylb run --source kubernetes` as a user runs it, against the fake API server: real HTTP
and TCP traffic reaches backends on loopback, and follows changes made through the API
while traffic flows."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylb.demo import (
    service_manifest,
    slice_manifest,
    start_echo_server,
    start_name_server,
)
from tests.conftest import free_port, free_ports
from tests.kfake import FakeApiServer

pytestmark = pytest.mark.timeout(90)


def service(name: str, port: int, target: int) -> dict[str, Any]:
    return service_manifest(name, port, target)


def slice_(name: str, svc: str, port: int) -> dict[str, Any]:
    return slice_manifest(name, svc, port, ["127.0.0.1"])


async def get(port: int, path: str) -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer() as server:
        yield server


async def test_pylb_run_follows_the_cluster_while_traffic_flows(
        api: FakeApiServer, tmp_path: Path) -> None:
    one = await start_name_server("one")
    two = await start_name_server("two")
    echo = await start_echo_server()
    p1, p2, pe = (s.sockets[0].getsockname()[1] for s in (one, two, echo))
    api.store.create("services", service("web", 80, 8080))
    api.store.create("endpointslices", slice_("web-a", "web", p1))
    api.store.create("services", service("mysql", 3306, 3306))
    api.store.create("endpointslices", slice_("mysql-a", "mysql", pe))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(api.kubeconfig_dict()))
    http_port, tcp_port = free_ports(2)
    log = tmp_path / "pylb.log"
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pylb", "run", "--source=kubernetes",
            "--use-kubernetes-cluster-service=false", f"--kubeconfig={kubeconfig}",
            "--bind=127.0.0.1", f"--http-port={http_port}",
            f"--tcp-services=mysql:{tcp_port}", f"--stats-port={free_port()}",
            f"--health-port={free_port()}", "--workers=1",
            env={"NO_PROXY": "127.0.0.1,localhost", "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.DEVNULL, stderr=fh)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, IndexError, ValueError, asyncio.TimeoutError):
                status, body = await get(http_port, "/web")
                if status == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        assert b'"server": "one"' in body
        r, w = await asyncio.open_connection("127.0.0.1", tcp_port)
        w.write(b"select 1;")
        assert await asyncio.wait_for(r.readexactly(9), 5) == b"select 1;"
        w.close()
        await w.wait_closed()

        # traffic flows while the endpoints move from `one` to `two` through the API
        seen: list[bytes] = []
        failures: list[int] = []

        async def load() -> None:
            end = time.monotonic() + 30
            while time.monotonic() < end:
                status, body = await get(http_port, "/web")
                if status != 200:
                    failures.append(status)
                seen.append(b"two" if b'"server": "two"' in body else b"one")
                if seen[-5:] == [b"two"] * 5:
                    return

        traffic = asyncio.create_task(load())
        await asyncio.sleep(0.2)
        api.store.create("endpointslices", slice_("web-b", "web", p2))
        api.store.delete("endpointslices", "default", "web-a")
        await asyncio.wait_for(traffic, 40)
        assert seen[-5:] == [b"two"] * 5, log.read_text()[-2000:]
        assert failures == []
        # a new service appears through the API and is routed
        api.store.create("services", service("late", 80, 8080))
        api.store.create("endpointslices", slice_("late-a", "late", p1))
        deadline = time.monotonic() + 15
        while (await get(http_port, "/late"))[0] != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 20)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for s in (one, two, echo):
            s.close()
            await s.wait_closed()
