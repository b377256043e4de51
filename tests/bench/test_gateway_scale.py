"""bench.gateway_scale's plumbing at a tiny size (20 HTTPRoutes, 3 changes): the fake loads
the Gateway objects it is asked for, the run reports its fields, and nothing of it is left
running. No timing is asserted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench import gateway_scale as gs
from tests.kfake.__main__ import GATEWAY_CONTROLLER, gateway_objects


def test_the_fake_loads_a_gateway_and_routes_to_its_services() -> None:
    objs = gateway_objects(7, 3, "default", namespaces=2)
    assert [c["spec"]["controllerName"] for c in objs["gatewayclasses"]] == \
        [GATEWAY_CONTROLLER]
    (gw,) = objs["gateways"]
    assert gw["spec"]["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    routes = objs["httproutes"]
    assert len(routes) == 7
    assert len({r["spec"]["hostnames"][0] for r in routes}) == 7
    # route i goes to svc-(i mod 3), in that Service's namespace (ns-(svc mod 2))
    r4 = routes[4]
    assert r4["spec"]["rules"] == [{"backendRefs": [{"name": "svc-1", "port": 80}]}]
    assert r4["metadata"]["namespace"] == "ns-1"


@pytest.mark.timeout(300)
def test_a_tiny_run_reports_every_field(tmp_path: Path) -> None:
    cfg = gs.Config(routes=20, workers=1, services=20, namespaces=3, changes=3,
                    first_timeout=90, change_timeout=10, changes_budget=60, out=tmp_path,
                    settle=True)
    result = asyncio.run(gs.run(cfg))
    for key in ("routes", "services", "workers", "api_load_s", "pylb_argv",
                "first_traffic_s", "nothing_served", "rss_mib_max", "controller_rss_mib_max",
                "sigterm", "worker_restarts", "tracebacks"):
        assert key in result, key
    for flag in ("--gateway-api", "--gateway-port-map=80=", "--workers 1"):
        assert flag in result["pylb_argv"]
    if not result["nothing_served"]:  # a machine too busy to serve in 90 s still reports
        assert result["settled_after_s"] >= 1.0
        # changes alternate: route, Service, route
        assert result["route_change"]["n"] == 2 and result["service_change"]["n"] == 1
        for kind in ("route_change", "service_change"):
            assert set(result[kind]) >= {"p50_ms", "p99_ms", "max_ms", "misses", "ms"}
            assert set(result[f"{kind}_cpu_ms"]) == {"p50", "max"}
    written = json.loads((tmp_path / "gateway-20-w1.json").read_text())
    assert written["pylb_argv"] == result["pylb_argv"]
    table = gs.markdown([result]).splitlines()
    assert len(table) == 3 and table[2].startswith("| 20 / 20 | 1 |")
    for pid_dir in Path("/proc").iterdir():  # pylb's tree and the fake are gone
        if pid_dir.name.isdigit():
            try:
                cmd = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            assert str(tmp_path).encode() not in cmd, (pid_dir.name, cmd)
