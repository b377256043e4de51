"""`pylb elect` against the fake API server: in-process, and as a real process."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
from kubernetes_asyncio.client import ApiClient

from election.decide import Timing
from election.sidecar import SidecarOptions, run_sidecar
from tests.conftest import free_port
from tests.kfake import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]
TINY = Timing.from_ttl(1.0)  # 1 / 0.5 / 0.25 s


async def get_name(session: aiohttp.ClientSession, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/") as resp:
        assert resp.status == 200
        body = await resp.json()
        assert set(body) == {"name"}
        return str(body["name"])


async def wait_for(condition: object, seconds: float = 10.0) -> None:
    assert callable(condition)
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition()


async def test_two_sidecars_in_process(kube_api: FakeApiServer, api_client: ApiClient) -> None:
    outs = {n: io.StringIO() for n in ("a", "b")}
    ports: dict[str, int] = {}
    tasks = {}
    for n in ("a", "b"):
        opts = SidecarOptions(election="example", identity=n, timing=TINY,
                              http=("127.0.0.1", 0), lock="leases")
        tasks[n] = asyncio.create_task(run_sidecar(
            opts, api_client, out=outs[n], on_http=lambda p, n=n: ports.__setitem__(n, p)))
    try:
        await wait_for(lambda: all(o.getvalue() for o in outs.values()))
        first = outs["a"].getvalue().split()[0]
        assert outs["a"].getvalue() == outs["b"].getvalue() == f"{first} is the leader\n"
        async with aiohttp.ClientSession() as session:
            assert await get_name(session, ports["a"]) == first
            assert await get_name(session, ports["b"]) == first
            other = "b" if first == "a" else "a"
            tasks[first].cancel()
            await asyncio.gather(tasks[first], return_exceptions=True)
            await wait_for(lambda: outs[other].getvalue().count("is the leader") == 2)
            assert outs[other].getvalue().splitlines() == [
                f"{first} is the leader", f"{other} is the leader"]
            assert await get_name(session, ports[other]) == other
    finally:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_sidecar_process_prints_serves_and_releases(kube_api: FakeApiServer,
                                                          tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(kube_api.kubeconfig_dict()))
    port = free_port()
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(ROOT)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from election.sidecar import main; sys.exit(main())",
        "--election=example", "--id=pod-1", "--ttl=2s", f"--http=127.0.0.1:{port}",
        f"--kubeconfig={kubeconfig}", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line == b"pod-1 is the leader\n"
        async with aiohttp.ClientSession() as session:
            for _ in range(500):
                try:
                    assert await get_name(session, port) == "pod-1"
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("sidecar never answered on --http")
        lease = kube_api.store.read("leases", "default", "example")
        assert lease["spec"]["holderIdentity"] == "pod-1"
        assert lease["spec"]["leaseDurationSeconds"] == 2
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 30)
        assert rc == 0
        lease = kube_api.store.read("leases", "default", "example")
        assert lease["spec"]["holderIdentity"] == ""
        assert lease["spec"]["leaseDurationSeconds"] == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.read()
        if proc.stderr is not None:
            await proc.stderr.read()


async def test_sidecar_process_bad_kubeconfig(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from election.sidecar import main; sys.exit(main())",
        "--election=example", f"--kubeconfig={tmp_path / 'missing'}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b"pylb elect: cannot configure the Kubernetes client" in err
    assert out == b""
