"""The Gateway translation alone, in-process: what a plan costs the controller after one
change, whole (`translate`, what every change cost before the incremental translator) and
incremental (`GatewayTranslator.build`, what GatewaySource.build runs).

    python -m bench.gateway_translate [--routes 1000 5000] [--services 1000] [--repeat 9]
    python -m bench.gateway_translate --turns [--routes 5000 10000]

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

`--turns`: the controller's whole work per change, as the leader does it
(`GatewaySource.build` and `write_status` over stand-in informers, the PATCH a stand-in that
stores the status, as the API server would, and brings it back as the watch event would):
a route change is two turns (the change: a plan and a pass that writes its status; then
that write coming back: a plan and a pass that finds it settled), a no-change turn one
(the RESYNC wake-up, or a Service's status). Each measured both ways:

- keyed: the informers' change sets to the translator, the status pass over what changed
  (what GatewaySource does);
- whole: no change sets (every store compared by identity) and a pass over every object
  (the full pass; what every turn did before the change sets).

Prints a markdown table; no timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

from discovery.gateway import source as gateway_source
from discovery.gateway.incremental import GatewayTranslator, inputs_from
from discovery.gateway.source import GatewaySource
from discovery.gateway.translate import GatewaySettings, translate
from proxy.http.gwrouting import GatewayRouter
from pylb.config import GatewayApi, Settings
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


class _Informer:
    """An informer's store and change set, changed by hand."""

    synced, absent = True, False

    def __init__(self, objects: dict[Any, Any], keyed: bool) -> None:
        self.objects = objects
        self.keyed = keyed
        self.changes: set[Any] | None = None

    def take_changes(self) -> set[Any] | None:
        changes, self.changes = self.changes, set()
        return changes if self.keyed else None

    def put(self, key: Any, obj: Any) -> None:
        self.objects[key] = obj
        if self.changes is not None:
            self.changes.add(key)


def turns(routes: int, n_services: int, repeat: int, keyed: bool) -> dict[str, list[float]]:
    """CPU per route change (two turns) and per no-change turn; see --turns."""
    st = stores(routes, n_services)
    source = GatewaySource(Settings(gateway=GatewayApi(enabled=True)))
    informers = {p: _Informer(objs, keyed) for p, objs in st.items()}
    source._informers = informers  # type: ignore[assignment]
    route_store = informers["httproutes"]
    patched: list[tuple[str, Any]] = []

    wrote: dict[tuple[str, Any], Any] = {}  # by (plural, key): the status PATCHed

    async def patch(client: Any, method: str, path: str, *, params: dict[str, str],
                    body: Any, **kw: Any) -> Any:
        plural = path.split("/")[-3]
        key = (params.get("namespace", ""), params["name"])
        patched.append((plural, key))
        wrote[(plural, key)] = body["status"]
        return {}

    def echo() -> None:
        """The PATCHes made come back as watch events (the object with its new status)."""
        for plural, key in patched:
            o = informers[plural].objects.get(key)
            if o is not None:
                meta = o["metadata"]
                rv = str(int(meta.get("resourceVersion") or 0) + 1)
                informers[plural].put(key, {**o, "metadata": {**meta, "resourceVersion": rv},
                                            "status": wrote[(plural, key)]})
        patched.clear()

    def turn() -> None:
        plan = source.build()
        todo, source._built_todo = source._built_todo, {}
        asyncio.run(source.write_status(None, plan,  # type: ignore[arg-type]
                                        todo if keyed else None))

    out: dict[str, list[float]] = {"route change": [], "nothing changed": []}
    route = next(iter(route_store.objects))
    original = route_store.objects[route]
    other = f"svc-{(int(original['spec']['rules'][0]['backendRefs'][0]['name'][4:]) + 1) % n_services}"  # noqa: E501
    with mock.patch.object(gateway_source.kapi, "call", patch):
        turn()  # the first plan, the first pass: a write per route
        echo()
        turn()
        gc.collect()
        gc.freeze()  # as the controller's settle does once the first pass is over
        for i in range(repeat):
            o = copy.deepcopy(route_store.objects[route])
            o["spec"]["rules"][0]["backendRefs"][0]["name"] = \
                other if i % 2 == 0 else original["spec"]["rules"][0]["backendRefs"][0]["name"]
            o["metadata"]["generation"] = i + 2
            route_store.put(route, o)
            t = time.process_time()
            turn()
            echo()
            turn()
            out["route change"].append((time.process_time() - t) * 1e3)
            assert not patched  # the echo settled it
        for _ in range(repeat):
            out["nothing changed"].append(_cpu(turn))
    gc.unfreeze()
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
    p.add_argument("--turns", action="store_true",
                   help="only the controller's work per turn (build and status pass), "
                        "keyed and whole")
    args = p.parse_args(argv)
    if args.turns:
        print("Controller CPU per change, build + status pass (median / best), "
              "time.process_time:\n")
        print("| case | " + " | ".join(f"{n:,} routes" for n in args.routes) + " |")
        print("|---|" + "---|" * len(args.routes))
        rows: dict[str, list[str]] = {}
        for n in args.routes:
            for keyed in (True, False):
                for case, xs in turns(n, args.services, args.repeat, keyed).items():
                    rows.setdefault(f"{case}, {'keyed' if keyed else 'whole'}", []).append(
                        f"{statistics.median(xs):.2f} / {min(xs):.2f} ms")
        for case, cells in rows.items():
            print(f"| {case} | " + " | ".join(cells) + " |")
        return 0
    results = [measure(n, args.services, args.repeat) for n in args.routes]
    print("CPU per build (median / best), time.process_time:\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
