"""A route change's Gateway plan on its way to the workers, in process: the whole plan
against a plan delta (pylb.gatewaydelta), controller side and worker side.

    python -m bench.gateway_delta [--routes 1000 5000] [--repeat 7]

The plan is `discovery.gateway.translate` of what bench.gateway_scale's fake API server
holds (one Gateway, one HTTP listener, N HTTPRoutes each with a hostname and one rule to
one of 1,000 Services). The change is one route's backendRef moved to another Service,
translated again. Today's translation makes every entry anew (`new objects`); the
incremental one reuses the entries of unchanged routes (`reused`: made here by putting the
old plan's entries back for every other route). Figures are the best of `--repeat` runs of
each step (perf_counter), in ms.

Controller: encoding the whole plan (`encode(Gateways)`), or `plan_delta` + encoding it.
Worker: decoding; `apply_delta` for a delta; then the router: `GatewayRouter` made anew
(before) or `updated` from the one before (after: a whole plan goes that way too, entries
compared by value as nothing is shared). The L4 planes' rebuild is measured apart: a plan
of a few TLS/TCP listeners applied again (`GatewayL4Plane.apply_plan`, nothing to bind).

Measured: see the note of issue #23 (docs/notes/2026-12-07/) and the module's caller.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Callable
from typing import Any

from discovery.gateway.translate import GatewayInputs, GatewaySettings, translate
from proxy.http.gwrouting import GatewayRouter
from pylb.gatewaydelta import apply_delta, plan_delta
from pylb.gatewaymodel import GatewayPlan, Listener, RuleEntry
from pylb.messages import Gateways, GatewaysDelta, decode, encode

SERVICES = 1000
NAMESPACES = 50


def _ns(svc: int) -> str:
    return f"ns-{svc % NAMESPACES}"


def inputs(routes: int, probe_service: int = 0) -> GatewayInputs:
    """bench.gateway_scale's objects: route-i to svc-(i mod 1000), `route-0` to
    `probe_service` (the one that changes)."""
    gw = {"metadata": {"name": "gw", "namespace": _ns(0)},
          "spec": {"gatewayClassName": "pylb",
                   "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                   "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                                  "allowedRoutes": {"namespaces": {"from": "All"}}}]}}
    out = []
    for i in range(routes):
        svc = probe_service if i == 0 else i % SERVICES
        out.append({
            "metadata": {"name": f"route-{i}", "namespace": _ns(i % SERVICES),
                         "creationTimestamp": "2026-12-07T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "gw", "namespace": _ns(0)}],
                     "hostnames": [f"r-{i}.bench"],
                     "rules": [{"backendRefs": [{"name": f"svc-{svc}", "port": 80,
                                                 "namespace": _ns(svc)}]}]}})
    classes = [{"metadata": {"name": "pylb"},
                "spec": {"controllerName": "pylb.io/gateway-controller"}}]
    services = {(_ns(j), f"svc-{j}"): (80,) for j in range(SERVICES)}
    grants = [{"metadata": {"name": "all", "namespace": _ns(j)},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                  "namespace": _ns(k)} for k in range(NAMESPACES)],
                        "to": [{"group": "", "kind": "Service"}]}} for j in range(NAMESPACES)]
    return GatewayInputs(classes, [gw], out, grants, services,
                         {_ns(j): {} for j in range(NAMESPACES)})


def plan_of(routes: int, probe_service: int) -> GatewayPlan:
    return dataclasses.replace(translate(inputs(routes, probe_service), GatewaySettings()),
                               status={})


def reusing(old: GatewayPlan, new: GatewayPlan, changed: str) -> GatewayPlan:
    """`new` with the old plan's entry objects for every route but `changed`, as the
    incremental translation makes it."""
    def rules(was: Listener, now: Listener) -> tuple[RuleEntry, ...]:
        mine: dict[str, list[RuleEntry]] = {}
        for e in was.rules:
            mine.setdefault(e.route, []).append(e)
        return tuple(e if e.route == changed else mine[e.route].pop(0) for e in now.rules)

    return dataclasses.replace(new, listeners=tuple(
        dataclasses.replace(n, rules=rules(o, n))
        for o, n in zip(old.listeners, new.listeners, strict=True)))


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The fastest of `repeat` runs in ms, and the last run's result."""
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(min(times), 3), out


def measure(routes: int, repeat: int) -> dict[str, Any]:
    old = plan_of(routes, 1)
    fresh = plan_of(routes, 2)  # route-0 moved from svc-1 to svc-2
    changed_inputs = inputs(routes, 2)
    # what comes before, in the controller, until the translation is incremental
    t_translate = best(lambda: translate(changed_inputs, GatewaySettings()), repeat)[0]
    changed = "ns-0/route-0"
    reused = reusing(old, fresh, changed)
    row: dict[str, Any] = {"routes": routes, "rules": len(old.listeners[0].rules),
                           "translate (whole, today) ms": t_translate}

    # controller
    t, whole = best(lambda: encode(Gateways(1, fresh)), repeat)
    row["whole: encode ms"], row["whole: bytes"] = t, len(whole)
    for name, new in (("new objects", fresh), ("reused", reused)):
        t, delta = best(lambda new=new: plan_delta(old, new), repeat)
        assert delta.routes == 1, delta
        te, frame = best(lambda delta=delta: encode(GatewaysDelta(1, 0, delta)), repeat)
        row[f"delta ({name}): plan_delta ms"], row[f"delta ({name}): encode ms"] = t, te
        row["delta: bytes"] = len(frame)

    # worker: holds `old` (as decoded from its frame) and a router made from it
    held = decode(encode(Gateways(0, old))[4:])
    assert isinstance(held, Gateways)
    router = GatewayRouter(held.plan.listeners)
    t, msg = best(lambda: decode(whole[4:]), repeat)
    row["whole: decode ms"] = t
    assert isinstance(msg, Gateways)
    row["whole: router made anew ms"] = best(
        lambda: GatewayRouter(msg.plan.listeners), repeat)[0]
    row["whole: router updated ms"] = best(
        lambda: router.updated(msg.plan.listeners), repeat)[0]
    delta_frame = encode(GatewaysDelta(1, 0, plan_delta(old, reused)))
    t, dmsg = best(lambda: decode(delta_frame[4:]), repeat)
    row["delta: decode ms"] = t
    assert isinstance(dmsg, GatewaysDelta)
    t, plan = best(lambda: apply_delta(held.plan, dmsg.delta), repeat)
    row["delta: apply_delta ms"] = t
    row["delta: router updated ms"] = best(lambda: router.updated(plan.listeners), repeat)[0]
    # the updated router routes the changed route's host to its new Service
    d = router.updated(plan.listeners).route(b"r-0.bench", b"GET", b"/", b"", ())
    assert d.backend == (_ns(2), "svc-2", 80), d
    return row


async def l4_rebuild(repeat: int) -> dict[str, Any]:
    """GatewayL4Plane.apply_plan of an unchanged plan (equal, new objects): 4 listeners
    (2 TLS with 10 SNI routes each, 2 TCP), bound once before."""
    from proxy.balance import Balancers
    from proxy.tcp.gwl4 import GatewayL4Plane
    from pylb.config import Settings
    from pylb.counters import Stats
    from pylb.gatewaymodel import L4Route, WeightedBackend

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    ports = [free_port() for _ in range(4)]

    def plan() -> GatewayPlan:
        lsts = []
        for k, port in enumerate(ports):
            tls = k < 2
            routes = tuple(L4Route(f"t{j}.example.com" if tls else "",
                                   (WeightedBackend(("ns", f"s{j}", 443), 1),),
                                   f"ns/r{k}-{j}", (j,)) for j in range(10 if tls else 1))
            lsts.append(Listener("ns/gw", f"l{k}", "127.0.0.1", port,
                                 "TLS" if tls else "TCP", "", l4_routes=routes))
        return GatewayPlan(l4_listeners=tuple(lsts))

    settings = Settings(bind="127.0.0.1")
    stats = Stats()
    plane = GatewayL4Plane(settings, stats, Balancers(settings.limits, stats=stats),
                           node_address="127.0.0.1")
    assert await plane.apply_plan(plan()) == frozenset()
    times = []
    for _ in range(repeat):
        p = plan()
        t = time.perf_counter()
        await plane.apply_plan(p)
        times.append((time.perf_counter() - t) * 1000)
    await plane.shutdown(0)
    return {"l4: 4 listeners, 22 routes, applied again ms": round(min(times), 3)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_delta", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--routes", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    for n in args.routes:
        print(json.dumps(measure(n, args.repeat)), flush=True)
    print(json.dumps(asyncio.run(l4_rebuild(args.repeat))), flush=True)


if __name__ == "__main__":
    main()
