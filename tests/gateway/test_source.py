"""discovery.gateway.source against the fake API server: plans follow the objects, only
the leader writes status, a write happens only when the status changes, and translation
never raises on shapes the API server would accept."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes_asyncio.client import ApiClient

from discovery.gateway.incremental import GatewayTranslator
from discovery.gateway.source import GatewaySource, inputs_from, settled_status
from discovery.gateway.translate import GatewayInputs, GatewaySettings, translate
from proxy.http.gwrouting import GatewayRouter
from pylb.config import GatewayApi, Settings
from pylb.gatewaymodel import GatewayPlan
from pylb.kubeapi import api_client_from_dict
from tests.gateway.harness import POOL, Cluster
from tests.kfake import FakeApiServer

G = "gateway.networking.k8s.io"


def load(api: FakeApiServer, *manifests: str) -> None:
    for obj in Cluster.load(*manifests).objects:
        kind = obj["kind"]
        res = {"GatewayClass": f"gatewayclasses.{G}", "Gateway": f"gateways.{G}",
               "HTTPRoute": f"httproutes.{G}", "TCPRoute": f"tcproutes.{G}",
               "TLSRoute": f"tlsroutes.{G}", "Service": "services",
               "Namespace": "namespaces"}.get(kind)
        meta = obj["metadata"]
        if res is not None and api.store.get(res, meta.get("namespace", ""),
                                             meta["name"]) is None:  # base loaded once
            if str(obj.get("apiVersion", "")).startswith(f"{G}/"):
                obj["apiVersion"] = f"{G}/v1"  # the version the CRDs here serve
            obj["metadata"].pop("creationTimestamp", None)
            obj["metadata"].pop("generation", None)
            api.store.create(res, obj)


async def until(check: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.02)


async def test_only_the_leader_writes_status(kube_api: FakeApiServer) -> None:
    load(kube_api, "httproute-simple-same-namespace.yaml")
    plans: list[GatewayPlan] = []
    leader = False

    async def factory() -> ApiClient:
        return await api_client_from_dict(kube_api.kubeconfig_dict())

    s = Settings(namespaces=(), gateway=GatewayApi(enabled=True,
                                                   address_pool=("127.0.10.1", "127.0.10.2",
                                                                 "127.0.10.3")))
    source = GatewaySource(s, factory, is_leader=lambda: leader)
    task = asyncio.create_task(source.run(plans.append))
    try:
        await until(lambda: plans)
        route = "gateway-conformance-infra-test"
        # same age: the pool goes in namespace/name order
        assert [lst.address for lst in plans[-1].listeners] == \
            ["127.0.10.1", "127.0.10.2", "127.0.10.3"]
        await asyncio.sleep(0.3)  # a follower: nothing written
        assert source.status_writes == 0
        assert kube_api.store.get(f"httproutes.{G}", "gateway-conformance-infra",
                                  route)["status"] in ({}, None, {"parents": []})
        leader = True
        source._changed()
        await until(lambda: (kube_api.store.get(f"httproutes.{G}",
                                                "gateway-conformance-infra", route)
                             or {}).get("status", {}).get("parents"))
        gw = kube_api.store.get(f"gateways.{G}", "gateway-conformance-infra",
                                "same-namespace")
        assert gw is not None
        assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": "127.0.10.3"}]
        writes = source.status_writes
        # our own status writes come back as MODIFIED events: nothing more to write
        await asyncio.sleep(0.5)
        assert source.status_writes == writes
        # a route of another controller's Gateway is left alone
        kube_api.store.create(f"httproutes.{G}", {
            "metadata": {"name": "theirs", "namespace": "gateway-conformance-infra"},
            "spec": {"parentRefs": [{"name": "not-ours"}]}})
        await asyncio.sleep(0.5)
        theirs = kube_api.store.get(f"httproutes.{G}", "gateway-conformance-infra", "theirs")
        assert (theirs or {}).get("status") in ({}, None)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_cluster_without_l4_route_crds_serves_httproutes(
        kube_api: FakeApiServer) -> None:
    """TLSRoute/TCPRoute lists answered 404 (their CRDs not installed): HTTPRoutes are
    served and their status written all the same; once the CRDs answer, a TCPRoute is
    served and its status.parents written, as an HTTPRoute's."""
    from tests.kfake import faults

    load(kube_api, "httproute-simple-same-namespace.yaml")
    missing = kube_api.faults.add(faults.http(404, "the server could not find the "
                                                   "requested resource"),
                                  path_re="/(tlsroutes|tcproutes)", count=None)
    plans: list[GatewayPlan] = []

    async def factory() -> ApiClient:
        return await api_client_from_dict(kube_api.kubeconfig_dict())

    s = Settings(namespaces=(), gateway=GatewayApi(enabled=True),
                 kube=dataclasses.replace(Settings().kube, backoff_base=0.05,
                                          backoff_cap=0.2))
    source = GatewaySource(s, factory)
    task = asyncio.create_task(source.run(plans.append))
    infra = "gateway-conformance-infra"
    try:
        await until(lambda: plans and plans[-1].listeners)
        assert source._informers["tcproutes"].absent
        assert source._informers["tlsroutes"].absent
        await until(lambda: (kube_api.store.get(f"httproutes.{G}", infra,
                                                "gateway-conformance-infra-test")
                             or {}).get("status", {}).get("parents"))
        kube_api.faults.rules.remove(missing)
        load(kube_api, "tcproute-parentref-port-and-section-name.yaml")
        await until(lambda: len(plans[-1].l4_listeners) == 3)
        # (the Gateways' TCP listeners can be planned before the TCPRoute informer's
        # backoff ends: a plan turn no longer waits for the status pass)
        await until(lambda: not source._informers["tcproutes"].absent)
        await until(lambda: (kube_api.store.get(f"tcproutes.{G}", infra,
                                                "tcp-route-by-port")
                             or {}).get("status", {}).get("parents"))
        parent = kube_api.store.get(f"tcproutes.{G}", infra,
                                    "tcp-route-by-port")["status"]["parents"][0]
        assert {c["type"]: c["status"] for c in parent["conditions"]} == \
            {"Accepted": "True", "ResolvedRefs": "True"}
        gw = kube_api.store.get(f"gateways.{G}", infra, "tcp-multi-listener-gateway")
        assert gw is not None
        assert [(lst["name"], lst["attachedRoutes"],
                 {c["type"]: c["status"] for c in lst["conditions"]}["Programmed"])
                for lst in gw["status"]["listeners"]] == \
            [("one", 1, "True"), ("two", 1, "True"), ("three", 1, "True")]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_settled_status_keeps_other_controllers_parents_and_transition_times() -> None:
    other = {"parentRef": {"name": "x"}, "controllerName": "example.com/other",
             "conditions": []}
    mine_old = {"parentRef": {"name": "gw"}, "controllerName": "pylb.io/gateway-controller",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "lastTransitionTime": "2020-01-01T00:00:00Z",
                                "observedGeneration": 1, "message": ""}]}
    planned = {"parents": [{"parentRef": {"name": "gw"},
                            "controllerName": "pylb.io/gateway-controller",
                            "conditions": [{"type": "Accepted", "status": "True",
                                            "reason": "Accepted", "message": "",
                                            "observedGeneration": 1,
                                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]}
    current = {"parents": [other, mine_old]}
    assert settled_status("httproutes", current, planned, "pylb.io/gateway-controller") is None
    planned["parents"][0]["conditions"][0]["observedGeneration"] = 2
    want = settled_status("httproutes", current, planned, "pylb.io/gateway-controller")
    assert want is not None and want["parents"][0] == other
    assert want["parents"][1]["conditions"][0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    # pylb no longer a parent: its entries go, the others stay
    assert settled_status("httproutes", current, None, "pylb.io/gateway-controller") == \
        {"parents": [other]}


# -- bad input never raises -----------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(
        ["", "/", "/a", "x", "*.x.com", "a.x.com", "HTTP", "HTTPS", "TCP", "Exact",
         "PathPrefix", "RegularExpression", "Service", "Gateway", "All", "Same", "Selector",
         "RequestRedirect", "URLRewrite", "RequestHeaderModifier", "ReplacePrefixMatch",
         "gateway.networking.k8s.io", "pylb", "pylb.io/gateway-controller", "ns", "gw"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["metadata", "spec", "name", "namespace", "listeners", "port",
                         "protocol", "hostname", "rules", "matches", "path", "type", "value",
                         "backendRefs", "weight", "parentRefs", "sectionName", "filters",
                         "requestRedirect", "urlRewrite", "statusCode", "headers",
                         "queryParams", "method", "hostnames", "allowedRoutes", "kinds",
                         "namespaces", "from", "gatewayClassName", "controllerName",
                         "addresses", "kind", "group", "tls", "certificateRefs", "to",
                         "generation", "creationTimestamp"]), children, max_size=4),
    max_leaves=25)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_json, max_size=4), st.lists(_json, max_size=4), st.lists(_json, max_size=4))
def test_translate_never_raises(gateways: list[Any], routes: list[Any],
                                grants: list[Any]) -> None:
    """Anything at all where the objects go: a plan comes out (bad parts skipped)."""
    classes = [{"metadata": {"name": "pylb"},
                "spec": {"controllerName": "pylb.io/gateway-controller"}}]
    gws = [g if not isinstance(g, dict) else {**g, "spec": {
        **(g.get("spec") if isinstance(g.get("spec"), dict) else {}),
        "gatewayClassName": "pylb"}} for g in gateways]
    plan = translate(GatewayInputs(classes, gws, routes, grants,  # type: ignore[arg-type]
                                   {("ns", "x"): (80,)}))
    assert isinstance(plan, GatewayPlan)
    for listeners in plan.by_endpoint().values():  # and every request gets an answer
        router = GatewayRouter(listeners)
        for host, path, query in ((b"a.x.com", b"/a", b"?x=1"), (b"x", b"/", b""),
                                  (b"[::1]:80", b"/a/b", b"?a")):
            d = router.route(host, b"GET", path, query, [(b"x", b"1")])
            assert d.status in (0, 301, 302, 303, 307, 308, 404, 500)


_CORPUS = Cluster.load("httproute-matching.yaml", "httproute-rewrite-path.yaml",
                       "httproute-redirect-port-and-scheme.yaml",
                       "httproute-request-header-modifier.yaml",
                       "httproute-listener-hostname-matching.yaml",
                       "gateway-with-attached-routes.yaml",
                       "httproute-reference-grant.yaml").objects
_BASE = Cluster.load().inputs()
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-1, 70000), st.text(max_size=5),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                       st.integers(),
                                                                       max_size=2))


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_conformance_objects_never_raise(data: st.DataObject) -> None:
    """The upstream manifests with one to three values replaced by junk of any type (what
    a cluster without the CRDs' validation, or a file, could hold)."""
    import copy

    objs = copy.deepcopy([o for o in _CORPUS if o["kind"] in
                          ("GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant")])
    for _ in range(data.draw(st.integers(1, 3))):
        obj = data.draw(st.sampled_from(objs))
        path = data.draw(st.sampled_from(_paths(obj)))
        target = obj
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = data.draw(_JUNK)
    kinds = {k: [o for o in objs if o.get("kind") == k]
             for k in ("GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant")}
    inputs = _BASE
    plan = translate(GatewayInputs(kinds["GatewayClass"], kinds["Gateway"], kinds["HTTPRoute"],
                                   kinds["ReferenceGrant"], inputs.services,
                                   inputs.namespaces, inputs.secrets))
    for listeners in plan.by_endpoint().values():
        router = GatewayRouter(listeners)
        for host, path_, query in ((b"foo.bar.com", b"/v2/x", b"?animal=whale"),
                                   (b"example.org", b"/prefix/one", b""),
                                   (b"x:1", b"/scheme-nil-and-port-8080", b"?q")):
            d = router.route(host, b"GET", path_, query, [(b"version", b"two")])
            assert d.status in (0, 301, 302, 303, 307, 308, 404, 500)


async def test_a_port_in_use_is_reported_and_retried() -> None:
    """The data plane cannot bind a Gateway's address:port (someone holds it): the plan's
    next status says PortUnavailable on that listener and Programmed False on the
    Gateway; once the port is free, the next plan binds it."""
    import socket

    from proxy.balance import Balancers
    from proxy.http.gwplane import GatewayPlane
    from pylb.config import Limits
    from pylb.counters import Stats
    from tests.conftest import free_port

    port = free_port("127.0.10.1")
    pool = ("127.0.10.1", "127.0.10.2", "127.0.10.3")
    s = Settings(bind="127.0.10.9", gateway=GatewayApi(enabled=True, address_pool=pool,
                                                       port_map=((80, port),
                                                                 (443, free_port()))),
                 grace_period=0.1)
    plane = GatewayPlane(s, Stats(), Balancers(Limits()))
    inputs = Cluster.load().inputs()
    gs = GatewaySettings(address_pool=pool, node_address="127.0.10.9")
    plan = translate(inputs, gs)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.10.1", port))
    holder.listen()
    try:
        down = await plane.apply_plan(plan)
        assert down == {("127.0.10.1", 80)}
    except BaseException:
        await plane.shutdown(0.1)
        raise
    finally:
        holder.close()
    gw = next(g for g in ("all-namespaces", "backend-namespaces", "same-namespace")
              if plan.status[("gateways", "gateway-conformance-infra", g)]["addresses"]
              and plan.status[("gateways", "gateway-conformance-infra", g)]["addresses"][0][
                  "value"] == "127.0.10.1")
    marked = translate(dataclasses.replace(inputs, unavailable=down), gs)
    st = marked.status[("gateways", "gateway-conformance-infra", gw)]
    assert [(c["type"], c["status"], c["reason"]) for c in st["listeners"][0]["conditions"]
            if c["type"] in ("Accepted", "Programmed")] == [
        ("Accepted", "False", "PortUnavailable"), ("Programmed", "False", "Invalid")]
    assert [c["status"] for c in st["conditions"] if c["type"] == "Programmed"] == ["False"]
    assert marked == plan  # the listener stays in the plan: binding is retried
    try:
        assert await plane.apply_plan(marked) == frozenset()
        # the three Gateways on :80, and the HTTPS one's :443
        assert set(plane.proxies) == set(plan.by_endpoint()) and len(plane.proxies) == 4
        assert set(plane.tls) == {k for k in plane.proxies if k[1] == 443}
    finally:
        await plane.shutdown(0.1)


def test_a_route_status_change_is_no_reason_to_translate_again() -> None:
    """GatewaySource.build's translator: a route's status or resourceVersion changing (the
    leader's own writes, thousands of them on a first pass, each coming back as a MODIFIED
    event) gives the last plan itself, nothing translated again; anything translate reads
    gives a new plan, translating the routes it touches."""
    import copy

    stores = Cluster.load("httproute-simple-same-namespace.yaml").stores()
    tr = GatewayTranslator()
    s = GatewaySettings(address_pool=POOL)
    last = tr.build(stores, settings=s)
    assert last.listeners and tr.translated == 1

    def built(edit: Any, settings: GatewaySettings = s, translated: int = 0) -> bool:
        """After `edit` (of copies, as the informer replaces objects): a new plan?"""
        nonlocal last
        n = tr.translated
        edit()
        plan = tr.build(stores, settings=settings)
        assert tr.translated - n == translated
        new, last = plan is not last, plan
        return new

    def edit(plural: str, change: Any) -> Any:
        def go() -> None:
            key = next(iter(stores[plural]))
            stores[plural][key] = copy.deepcopy(stores[plural][key])
            change(stores[plural][key])
        return go

    assert not built(edit("httproutes", lambda r: r.update(status={"parents": [{"x": 1}]})))
    assert not built(edit("httproutes", lambda r: r["metadata"].update(resourceVersion="9")))
    assert not built(edit("gateways", lambda g: g.update(status={"conditions": []})))
    assert not built(edit("services", lambda v: v.update(status={"loadBalancer": {}})))
    assert built(edit("httproutes", lambda r: r["spec"].update(hostnames=["x.example"])),
                 translated=1)
    assert built(edit("httproutes", lambda r: r["metadata"].update(generation=7)),
                 translated=1)
    # a Gateway's status.addresses keeps its pool address: the routes read nothing of it
    assert built(edit("gateways", lambda g: g.update(status={"addresses": [
        {"type": "IPAddress", "value": POOL[5]}]})))
    backend = ("gateway-conformance-infra", "infra-backend-v1")
    assert built(lambda: stores["services"].pop(backend), translated=1)
    assert not built(lambda: stores["services"].pop(("gateway-conformance-infra",
                                                     "infra-backend-v2")))  # not named
    # the ready nodes' addresses: the status of a Gateway on the node's own address (not
    # one from the pool), and nothing else
    assert not built(lambda: None, GatewaySettings(address_pool=POOL, node_addresses=("10.1",)))
    # (all on the node's address, the Gateways on :80 conflict: their routes translated
    # again, against listeners that are no longer usable)
    assert built(lambda: None, GatewaySettings(), translated=1)
    assert built(lambda: None, GatewaySettings(node_addresses=("10.0.0.1",)))
    assert not built(lambda: None, GatewaySettings(node_addresses=("10.0.0.1",)))


async def test_a_burst_of_changes_makes_few_plans_and_an_idle_change_waits_for_none() -> None:
    """The plan loop's coalescing, on a fake clock: 5,000 route creations arriving 0.1 ms
    apart against a plan whose build and publish take 1 ms + 10 µs a route (50 ms at
    5,000, today's cost of pickling the whole plan to the workers) make a few dozen plans,
    and at most about half the time goes into them; a change that finds the loop idle is
    built after no wait at all."""
    t = 0.0
    created = 0
    waits: list[float] = []
    costs: list[float] = []
    built_with: list[int] = []
    source = GatewaySource(Settings(gateway=GatewayApi(enabled=True)), is_leader=lambda: False,
                           clock=lambda: t, sleep=None)  # type: ignore[arg-type]

    def elapse(dt: float) -> None:
        """`dt` of fake time: the burst's events that arrive meanwhile."""
        nonlocal t, created
        due = min(5000, int((t + dt) / 1e-4))
        if due > created:
            created = due
            source._changed()
        t += dt

    async def sleep(dt: float) -> None:
        waits.append(dt)
        elapse(dt)
        await asyncio.sleep(0)

    def build() -> GatewayPlan:
        cost = 1e-3 + 1e-5 * created
        costs.append(cost)
        built_with.append(created)
        elapse(cost)
        return GatewayPlan(skipped=(str(created),))

    class Synced:
        synced, absent, objects = True, False, {}

    source._sleep = sleep
    source._informers = {"httproutes": Synced()}  # type: ignore[dict-item]
    source.build = build  # type: ignore[method-assign]
    created = 1
    source._changed()
    loop = asyncio.create_task(source._loop(None, lambda plan: None))  # type: ignore[arg-type]
    try:
        for _ in range(100_000):
            if built_with and built_with[-1] == 5000:
                break
            await asyncio.sleep(0)
        assert built_with[-1] == 5000, "the burst's last creation never made a plan"
        assert waits[0] > 0 and not source._dirty.is_set()
        burst = len(built_with)
        assert burst <= 60, f"{burst} plans for one burst"
        assert sum(costs) <= t / 2 + costs[-1]
        # the burst is over: a change that finds the loop idle waits for nothing
        waits.clear()
        await asyncio.sleep(0)
        source._changed()
        for _ in range(100):
            if len(built_with) > burst:
                break
            await asyncio.sleep(0)
        assert len(built_with) == burst + 1 and waits == []
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


def test_a_failing_incremental_translation_starts_afresh(caplog: Any) -> None:
    """A bug in the translator's bookkeeping (here: a KeyError from its first build) is
    logged, and the plan comes from a fresh translator: equal to translate()'s."""
    stores = Cluster.load("httproute-simple-same-namespace.yaml").stores()

    class Informed:
        def __init__(self, objects: Any) -> None:
            self.objects = objects

        def take_changes(self) -> None:
            return None  # all

    source = GatewaySource(Settings(gateway=GatewayApi(enabled=True)))
    source._informers = {p: Informed(o) for p, o in stores.items()}  # type: ignore[misc]
    broken = source.translator

    def fail(*args: Any, **kwargs: Any) -> GatewayPlan:
        raise KeyError("bookkeeping")

    broken.build = fail  # type: ignore[method-assign]
    plan = source.build()
    assert source.translator is not broken and "translating everything again" in caplog.text
    want = translate(dataclasses.replace(inputs_from(stores), secrets=frozenset()),
                     source.gw_settings)
    assert plan == want and plan.skipped == want.skipped
    assert plan.status.keys() == want.status.keys()
    assert any(key[0] == "httproutes" for key in plan.status)


async def test_many_watch_events_then_quiet_settle_the_heap_once(monkeypatch: Any) -> None:
    """The leader's first status pass brings every route back as a watch event, one at a
    time: the plan loop settles the heap (collector.settle) once the events stop — not per
    event, not while they keep coming, and not after a handful of them."""
    from discovery.gateway import source as source_mod

    monkeypatch.setattr(source_mod, "SETTLE_CHURN", 50)
    # quiet = 0.3 s against events 5 ms apart: a stall of the loop that long mid-burst is
    # the only way the "nothing while they keep coming" check could see a settle
    monkeypatch.setattr(source_mod, "SETTLE_QUIET", 0.3)
    settled: list[int] = []
    monkeypatch.setattr(source_mod.collector, "settle", lambda: settled.append(1))
    source = GatewaySource(Settings(gateway=GatewayApi(enabled=True)), is_leader=lambda: False)
    built: list[int] = []

    class Synced:
        synced, absent, objects = True, False, {}

    source._informers = {"httproutes": Synced()}  # type: ignore[dict-item]
    source.build = lambda: built.append(1) or GatewayPlan()  # type: ignore[method-assign]
    loop = asyncio.create_task(source._loop(None, lambda plan: None))  # type: ignore[arg-type]
    try:
        for _ in range(10):  # a few events: below the threshold, nothing settles
            source._changed()
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.5)
        assert settled == [] and built
        for _ in range(60):  # a burst: nothing settles while it lasts …
            source._changed()
            await asyncio.sleep(0.005)
            assert settled == []
        for _ in range(250):  # … and once it is quiet, once
            if settled:
                break
            await asyncio.sleep(0.02)
        assert settled == [1] and source.settles == 1
        await asyncio.sleep(0.5)
        assert settled == [1]  # and not again without new events
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


INFRA = "gateway-conformance-infra"
ROUTES_N = 40


def _routes_cluster(api: FakeApiServer) -> None:
    load(api, "httproute-simple-same-namespace.yaml")
    for i in range(ROUTES_N):
        api.store.create(f"httproutes.{G}", {
            "metadata": {"name": f"r{i}", "namespace": INFRA},
            "spec": {"parentRefs": [{"name": "same-namespace"}], "rules": [
                {"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}]}})


def _resolved(api: FakeApiServer, name: str) -> str | None:
    route = api.store.get(f"httproutes.{G}", INFRA, name) or {}
    for parent in (route.get("status") or {}).get("parents") or []:
        for c in parent.get("conditions") or []:
            if c.get("type") == "ResolvedRefs":
                return str(c["status"])
    return None


def _to_missing_service(api: FakeApiServer, name: str) -> None:
    route = api.store.get(f"httproutes.{G}", INFRA, name)
    assert route is not None
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = "not-there"
    api.store.update(f"httproutes.{G}", route, INFRA)


async def _quiet(source: GatewaySource) -> None:
    """Until no plan, status look or write happens for 0.3 s (bounded: 10 s)."""
    last = None
    for _ in range(34):
        now = (source.plans_built, source.status_looked, source.status_writes)
        if now == last:
            return
        last = now
        await asyncio.sleep(0.3)
    raise AssertionError("the Gateway source never went quiet")


async def test_the_status_pass_looks_at_what_changed(kube_api: FakeApiServer,
                                                     monkeypatch: Any) -> None:
    """After the leader's first pass (every object), a route change makes status passes
    that look at that route (its new status, then its write coming back), not at the 40
    other routes; a write that fails is made on a later pass; a follower that becomes the
    leader looks at every object once."""
    from discovery.gateway import source as source_mod
    from tests.kfake import faults

    monkeypatch.setattr(source_mod, "RESYNC", 60.0)  # no full turn but those asked for here
    _routes_cluster(kube_api)
    leader = True

    async def factory() -> ApiClient:
        return await api_client_from_dict(kube_api.kubeconfig_dict())

    source = GatewaySource(Settings(namespaces=(), gateway=GatewayApi(enabled=True)),
                           factory, is_leader=lambda: leader)
    task = asyncio.create_task(source.run(lambda plan: None))
    try:
        await until(lambda: all(_resolved(kube_api, f"r{i}") == "True"
                                for i in range(ROUTES_N)))
        await _quiet(source)
        assert source.status_looked > ROUTES_N  # the first pass: every object
        looked, writes = source.status_looked, source.status_writes
        _to_missing_service(kube_api, "r7")
        await until(lambda: _resolved(kube_api, "r7") == "False")
        await _quiet(source)
        assert source.status_writes == writes + 1
        assert source.status_looked - looked <= 3, source.status_looked - looked
        # a write that fails is made again
        kube_api.faults.add(faults.http(500, "etcd is away"), method="PATCH",
                            path_re="/httproutes/r8/status", count=1)
        _to_missing_service(kube_api, "r8")
        # (within 3 s: a RESYNC pass, 10 s after the last change, does not count)
        await until(lambda: _resolved(kube_api, "r8") == "False", timeout=3.0)
        assert source.status_errors == 1
        await _quiet(source)
        # a follower forgets; its first pass as the leader looks at everything
        leader = False
        source._changed()
        await _quiet(source)
        looked = source.status_looked
        leader = True
        source._changed()
        await until(lambda: source.status_looked - looked > ROUTES_N, timeout=3.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_resync_pass_looks_at_every_object(kube_api: FakeApiServer,
                                                   monkeypatch: Any) -> None:
    """Nothing changed for RESYNC seconds: the status pass of that turn is a full one (the
    safety net for what the change sets could miss); and under steady churn (a turn every
    0.05 s, so the loop never waits RESYNC seconds), one turn every RESYNC seconds is."""
    from discovery.gateway import source as source_mod

    monkeypatch.setattr(source_mod, "RESYNC", 0.3)
    _routes_cluster(kube_api)

    async def factory() -> ApiClient:
        return await api_client_from_dict(kube_api.kubeconfig_dict())

    source = GatewaySource(Settings(namespaces=(), gateway=GatewayApi(enabled=True)),
                           factory)
    task = asyncio.create_task(source.run(lambda plan: None))
    try:
        await until(lambda: all(_resolved(kube_api, f"r{i}") == "True"
                                for i in range(ROUTES_N)))
        await asyncio.sleep(0.5)
        looked, writes = source.status_looked, source.status_writes
        await until(lambda: source.status_looked - looked > 2 * ROUTES_N)
        assert source.status_writes == writes
        monkeypatch.setattr(source_mod, "RESYNC", 0.6)
        await asyncio.sleep(0.7)  # (a wait begun with the old RESYNC)
        looked, built = source.status_looked, source.plans_built
        for _ in range(40):  # 2 s of churn: 3 full turns or more, 40 in all
            source._changed()
            await asyncio.sleep(0.05)
        assert source.plans_built - built >= 30
        assert source.status_looked - looked > 2 * ROUTES_N
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
