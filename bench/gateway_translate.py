"""The Gateway translation alone, in-process: what a plan costs the controller after one
change, whole (`translate`, what every change cost before the incremental translator) and
incremental (`GatewayTranslator.build`, what GatewaySource.build runs).

    python -m bench.gateway_translate [--routes 1000 5000] [--services 1000] [--repeat 9]

The objects are bench.gateway_scale's (tests.kfake's `gateway_objects`): a GatewayClass,
one Gateway (one HTTP listener, routes from all namespaces), N HTTPRoutes (one rule, a
hostname, a backendRef to one of the Services) and S Services over 50 namespaces. Each
figure is the CPU time (time.process_time) of one `build()` right after the change, the
median and the best of `--repeat` changes (each change the other way round from the one
before), with the cyclic collector on as in the controller:

- whole: `translate(inputs_from(stores))` after any change;
- first: the incremental translator's first plan (every route);
- nothing changed: `build()` over the same stores (the last plan itself);
- route status: one route replaced by a copy with a new status and resourceVersion (the
  leader's own write coming back);
- route change: one route's backendRef moved to another Service (bench.gateway_scale's
  "route change");
- route added / deleted;
- Service ports: one Service's port changed (the routes that name it re-translated);
- Service status: one Service replaced by a copy with a new status (no port changed);

and what follows each plan until the workers get deltas: the plan (without its status)
encoded once for the workers (pylb.messages.encode), decoded in each, and each listener's
`GatewayRouter` made.

Prints a markdown table; no timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from discovery.gateway.incremental import GatewayTranslator, inputs_from
from discovery.gateway.translate import GatewaySettings, translate
from proxy.http.gwrouting import GatewayRouter
from pylb.messages import HEADER, Gateways, decode, encode
from tests.kfake.__main__ import gateway_objects, services

Stores = dict[str, dict[tuple[str, str], Any]]


def stores(routes: int, n_services: int, namespaces: int = 50) -> Stores:
    objs = gateway_objects(routes, n_services, "default", namespaces)
    objs["services"] = list(services(n_services, "default", namespaces))
    out: Stores = {p: {} for p in ("gatewayclasses", "gateways", "httproutes", "tlsroutes",
                                   "tcproutes", "referencegrants", "services", "namespaces")}
    for plural, items in objs.items():
        for o in items:
            meta = o["metadata"]
            out[plural][(meta.get("namespace", ""), meta["name"])] = o
    return out


def _cpu(fn: Callable[[], Any]) -> float:
    t = time.process_time()
    fn()
    return (time.process_time() - t) * 1e3


def measure(routes: int, n_services: int, repeat: int) -> dict[str, Any]:
    st = stores(routes, n_services)
    s = GatewaySettings(now="2026-12-07T00:00:00Z")
    out: dict[str, Any] = {"routes": routes, "services": n_services}
    tr = GatewayTranslator()
    out["first"] = [_cpu(lambda: tr.build(st, settings=s))]
    route = next(iter(st["httproutes"]))
    svc = next(iter(st["services"]))
    other = f"svc-{(int(st['httproutes'][route]['spec']['rules'][0]['backendRefs'][0]['name'][4:]) + 1) % n_services}"  # noqa: E501
    flip = {"n": 0}

    def route_status() -> None:
        o = copy.deepcopy(st["httproutes"][route])
        o["metadata"]["resourceVersion"] = str(flip["n"])
        o["status"] = {"parents": [{"n": flip["n"]}]}
        st["httproutes"][route] = o

    original = copy.deepcopy(st["httproutes"][route])

    def route_change() -> None:
        o = copy.deepcopy(original)
        if flip["n"] % 2 == 0:
            o["spec"]["rules"][0]["backendRefs"][0]["name"] = other
        st["httproutes"][route] = o

    added = ("default", "route-added")

    def route_added() -> None:
        if added in st["httproutes"]:
            del st["httproutes"][added]
        else:
            o = copy.deepcopy(original)
            o["metadata"]["name"] = added[1]
            st["httproutes"][added] = o

    svc_original = copy.deepcopy(st["services"][svc])

    def service_ports() -> None:
        o = copy.deepcopy(svc_original)
        if flip["n"] % 2 == 0:
            o["spec"]["ports"][0]["port"] = 81
        st["services"][svc] = o

    def service_status() -> None:
        o = copy.deepcopy(st["services"][svc])
        o["status"] = {"loadBalancer": {"ingress": [{"ip": f"10.0.0.{flip['n'] % 250}"}]}}
        st["services"][svc] = o

    cases: list[tuple[str, Callable[[], None] | None]] = [
        ("nothing changed", None), ("route status", route_status),
        ("route change", route_change), ("route added / deleted", route_added),
        ("Service ports", service_ports), ("Service status", service_status)]
    for name, change in cases:
        times = []
        for _ in range(repeat):
            flip["n"] += 1
            if change is not None:
                change()
            times.append(_cpu(lambda: tr.build(st, settings=s)))
        out[name] = times
    # the routes a Service-ports change re-translates
    before = tr.translated
    service_ports()
    tr.build(st, settings=s)
    out["translated per Service change"] = tr.translated - before
    whole = []
    for _ in range(max(3, repeat // 3)):
        whole.append(_cpu(lambda: translate(inputs_from(st), s)))
    out["whole"] = whole
    # what follows a plan today, until the workers get deltas: the whole plan to them
    plan = tr.build(st, settings=s)
    msg = Gateways(1, dataclasses.replace(plan, status={}))
    frames: list[bytes] = []
    out["encode (controller)"] = [_cpu(lambda: frames.append(encode(msg)))
                                  for _ in range(repeat)]
    payload = frames[0][HEADER.size:]
    out["decode (each worker)"] = [_cpu(lambda: decode(payload)) for _ in range(repeat)]
    out["GatewayRouter (each worker)"] = [
        _cpu(lambda: [GatewayRouter(lsts) for lsts in plan.by_endpoint().values()])
        for _ in range(repeat)]
    out["frame"] = len(frames[0])
    return out


ORDER = ("whole", "first", "nothing changed", "route status", "route change",
         "route added / deleted", "Service ports", "Service status", "encode (controller)",
         "decode (each worker)", "GatewayRouter (each worker)")


def markdown(results: list[dict[str, Any]]) -> str:
    head = "| case | " + " | ".join(f"{r['routes']:,} routes" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for case in ORDER:
        cells = []
        for r in results:
            xs = r[case]
            cells.append(f"{statistics.median(xs):.2f} / {min(xs):.2f} ms")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines.append("| routes translated per Service change | " + " | ".join(
        str(r["translated per Service change"]) for r in results) + " |")
    lines.append("| plan frame to the workers | " + " | ".join(
        f"{r['frame'] / 2**20:.2f} MiB" for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_translate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--routes", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=9)
    args = p.parse_args(argv)
    results = [measure(n, args.services, args.repeat) for n in args.routes]
    print("CPU per build (median / best), time.process_time:\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
