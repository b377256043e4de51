"""A Gateway HTTP listener on a port pylb's own frontends hold on `--bind` (`--http-port`,
`--https-port`, `--tcp-services`) is refused, not shared: with `--workers` every socket is
bound with SO_REUSEPORT, so a second one there would bind all the same and take a share of
the frontend's connections. Its status says PortUnavailable, as for the L4 listeners
(tests/proxy/tcp/test_gwl4.py)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from proxy.balance import Balancers
from proxy.http.gwplane import GatewayPlane
from pylb.config import GatewayApi, Limits, Settings
from pylb.counters import Stats
from pylb.gatewaymodel import GatewayPlan, Listener
from tests.conftest import free_port
from tests.gateway.harness import CLASS, INFRA
from tests.gateway.live import GROUP, RESOURCE, Live
from tests.kfake import FakeApiServer

BIND = "127.0.10.9"
NODE = "10.0.0.1"  # the Gateways' address that binds --bind


def http(port: int) -> Listener:
    return Listener(gateway=f"{INFRA}/gw", name=f"http-{port}", address=NODE, port=port,
                    protocol="HTTP", hostname="")


async def accepted_by(holder: socket.socket, n: int) -> int:
    """Connect `n` times to the holder's port: how many connections the holder accepted
    (with SO_REUSEPORT the kernel spreads them over every socket bound there)."""
    address = holder.getsockname()
    got = 0
    for _ in range(n):
        _, w = await asyncio.wait_for(asyncio.open_connection(*address), 5)
        try:
            conn, _ = await asyncio.wait_for(asyncio.to_thread(holder.accept), 0.5)
            conn.close()
            got += 1
        except TimeoutError:
            pass
        finally:
            w.close()
    return got


async def test_a_listener_on_a_frontend_port_is_refused_not_shared() -> None:
    held, other = free_port(BIND), free_port(BIND)
    s = Settings(bind=BIND, gateway=GatewayApi(enabled=True,
                                               port_map=((80, held), (8080, other))),
                 grace_period=0.1)
    plane = GatewayPlane(s, Stats(), Balancers(Limits()), node_address=NODE, reuse_port=True)
    plan = GatewayPlan(listeners=(http(80), http(8080)))
    # the data plane's own frontend at `held`, bound as a worker binds it
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((BIND, held))
    holder.listen(16)
    holder.settimeout(0.4)
    try:
        assert await plane.apply_plan(plan, reserved={held}) == {(NODE, 80)}
        assert set(plane.proxies) == {(NODE, 8080)}
        assert await accepted_by(holder, 8) == 8  # every connection the frontend's
        # once the port is no frontend's, the next plan binds it ...
        assert await plane.apply_plan(plan) == frozenset()
        assert set(plane.proxies) == {(NODE, 80), (NODE, 8080)}
        # ... and a plan after it that finds it reserved again closes that listener
        assert await plane.apply_plan(plan, reserved={held}) == {(NODE, 80)}
        assert set(plane.proxies) == {(NODE, 8080)}
        await asyncio.sleep(0.2)  # the closing proxy's grace (0.1 s)
        assert await accepted_by(holder, 8) == 8
    finally:
        holder.close()
        await plane.shutdown(0.1)


@pytest.mark.timeout(120)
@pytest.mark.slow
async def test_a_listener_on_the_http_port_is_refused_live(tmp_path: Path,
                                                           no_proxy_env: None) -> None:
    """`pylb run --gateway-api --workers 2`: a Gateway at the node's address (--bind) with
    a listener on --http-port gets Accepted False, PortUnavailable; the frontend's port
    keeps its two sockets (one per worker), and the Gateway's other listener is served."""
    async with FakeApiServer(bookmark_interval=0.5) as api:
        lv = Live(api, tmp_path, workers=2)
        await lv.start()
        try:
            api.store.create(RESOURCE["Gateway"], {
                "apiVersion": f"{GROUP}/v1", "kind": "Gateway",
                "metadata": {"name": "on-node", "namespace": INFRA},
                "spec": {"gatewayClassName": CLASS,
                         "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                         "listeners": [
                             {"name": "taken", "protocol": "HTTP", "port": lv.http_port},
                             {"name": "free", "protocol": "HTTP", "port": 80}]}})

            def listener(name: str) -> dict[str, Any]:
                for lst in lv.status("Gateway", "on-node").get("listeners", []):
                    if lst["name"] == name:
                        return {c["type"]: (c["status"], c["reason"])
                                for c in lst["conditions"]}
                raise AssertionError(f"no status for listener {name}")

            async def refused() -> None:
                assert listener("taken")["Accepted"] == ("False", "PortUnavailable")
                assert listener("free")["Programmed"] == ("True", "Programmed")
                assert lv.sockets_listening("127.0.0.1", lv.gw_port) == lv.workers
                assert lv.sockets_listening("127.0.0.1", lv.http_port) == lv.workers
            await lv.eventually(refused, 30)
        finally:
            await lv.stop()
