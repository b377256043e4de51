"""The incremental Gateway translation equals the whole one: over random sequences of
changes (routes of the three kinds added, changed, deleted or only their status written;
Services added, removed, their ports changed; ReferenceGrants; namespace labels; Gateways
and their listeners; GatewayClasses; Secrets; unbindable ports; node addresses), every plan
`GatewayTranslator.build()` returns equals `translate()` of the same objects: listeners
with their entries in order (`order` included, which == does not compare), the L4
listeners, the status (`lastTransitionTime` aside: a replayed route keeps the time it was
made, see discovery/gateway/incremental.py), the skipped lines in order. The upstream
conformance manifests, route by route, are the seed corpus. And a change translates only
what it touches, reusing every other route's objects."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from discovery.gateway import incremental
from discovery.gateway.incremental import GatewayTranslator, inputs_from
from discovery.gateway.translate import GatewaySettings, translate
from pylb.gatewaymodel import GatewayPlan
from tests.gateway.harness import HERE, POOL, Cluster, tls_secret

G = "gateway.networking.k8s.io"
NSS = ("ns1", "ns2", "infra")
TIMES = ("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")  # ties: then namespace, name


def obj(ns: str, name: str, spec: Any, created: str = TIMES[0], gen: int = 1,
        rv: int = 1) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "generation": gen, "creationTimestamp": created,
                            "resourceVersion": str(rv)}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, "spec": spec}


# ---- objects, drawn so that they collide and refer to each other -------------------------

def _listener(draw: st.DrawFn, i: int) -> dict[str, Any]:
    proto, port = draw(st.sampled_from([("HTTP", 80), ("HTTP", 80), ("HTTP", 8080),
                                        ("HTTPS", 443), ("TLS", 443), ("TCP", 9000),
                                        ("UDP", 53)]))
    lst: dict[str, Any] = {"name": draw(st.sampled_from([f"l{i}", "l0"])), "port": port,
                           "protocol": proto}
    host = draw(st.sampled_from([None, None, "*.x.com", "a.x.com"]))
    if host is not None and proto != "TCP":
        lst["hostname"] = host
    frm = draw(st.sampled_from(["All", "Same", "Selector", None]))
    if frm is not None:
        ns_rule: dict[str, Any] = {"from": frm}
        if frm == "Selector":
            ns_rule["selector"] = draw(st.sampled_from([
                {"matchLabels": {"env": "prod"}},
                {"matchExpressions": [{"key": "env", "operator": "Exists"}]}]))
        lst["allowedRoutes"] = {"namespaces": ns_rule}
    if proto == "HTTPS":
        lst["tls"] = {"certificateRefs": [{"name": "s", **draw(st.sampled_from(
            [{}, {"namespace": "ns2"}, {"namespace": "ns1"}]))}]}
    if proto == "TLS":
        lst["tls"] = {"mode": draw(st.sampled_from(["Passthrough", "Passthrough",
                                                    "Terminate"]))}
    return lst


@st.composite
def gateways(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "gatewayClassName": draw(st.sampled_from(["pylb", "pylb", "other"])),
        "listeners": [_listener(draw, i) for i in range(draw(st.integers(0, 3)))]}
    addr = draw(st.sampled_from([None, None, "127.0.10.7", "not-an-ip", ""]))
    if addr is not None:
        spec["addresses"] = [{"type": "IPAddress", "value": addr}]
    g = obj(draw(st.sampled_from(["infra", "ns1"])), draw(st.sampled_from(["g1", "g2"])),
            spec, draw(st.sampled_from(TIMES)), draw(st.integers(1, 2)))
    if draw(st.booleans()):  # a pool address it holds (the leader's status write)
        g["status"] = {"addresses": [{"type": "IPAddress",
                                      "value": draw(st.sampled_from(POOL[:3]))}]}
    return g


def _parent_refs(draw: st.DrawFn) -> list[dict[str, Any]]:
    if draw(st.integers(0, 2)):
        return [{"name": "g1", "namespace": "infra"}]  # the base Gateway, mostly
    refs = []
    for _ in range(draw(st.integers(0, 2))):
        ref: dict[str, Any] = {"name": draw(st.sampled_from(["g1", "g2"]))}
        ns = draw(st.sampled_from([None, "infra", "ns1"]))
        if ns is not None:
            ref["namespace"] = ns
        extra = draw(st.sampled_from([{}, {}, {"sectionName": "l0"}, {"sectionName": "l1"},
                                      {"port": 80}, {"port": 9000}]))
        refs.append({**ref, **extra})
    return refs


def _backend_refs(draw: st.DrawFn) -> list[dict[str, Any]]:
    refs = []
    for _ in range(draw(st.integers(0, 2)) or 1):
        ref: dict[str, Any] = {"name": draw(st.sampled_from(["a", "b"])),
                               "port": draw(st.sampled_from([80, 80, 8080]))}
        ns = draw(st.sampled_from([None, None, "ns1", "ns2"]))
        if ns is not None:
            ref["namespace"] = ns
        if draw(st.integers(0, 5)) == 0:
            ref["kind"] = "Pod"
        if draw(st.integers(0, 3)) == 0:
            ref["weight"] = draw(st.integers(0, 3))
        refs.append(ref)
    return refs


@st.composite
def httproutes(draw: st.DrawFn) -> dict[str, Any]:
    rules = []
    for _ in range(draw(st.integers(0, 2))):
        rule: dict[str, Any] = {"backendRefs": _backend_refs(draw)}
        matches = [draw(st.sampled_from([
            {"path": {"type": "PathPrefix", "value": "/"}},
            {"path": {"type": "Exact", "value": "/a"}},
            {"path": {"type": "PathPrefix", "value": "/a"}, "method": "GET"},
            {"headers": [{"name": "v", "value": "1"}]},
            {"path": {"type": "RegularExpression", "value": ".*"}}]))
            for _ in range(draw(st.integers(0, 2)))]
        if matches:
            rule["matches"] = matches
        f = draw(st.sampled_from([None, None, {"type": "URLRewrite", "urlRewrite": {
            "hostname": "h"}}, {"type": "RequestMirror"}]))
        if f is not None:
            rule["filters"] = [f]
        rules.append(rule)
    spec: dict[str, Any] = {"parentRefs": _parent_refs(draw), "rules": rules}
    hosts = draw(st.sampled_from([None, ["a.x.com"], ["*.x.com", "b.y.com"], ["c.y.com"]]))
    if hosts is not None:
        spec["hostnames"] = hosts
    return obj(draw(st.sampled_from(NSS)), draw(st.sampled_from(["r1", "r2", "r3"])), spec,
               draw(st.sampled_from(TIMES)), draw(st.integers(1, 2)))


@st.composite
def l4routes(draw: st.DrawFn, tls: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": _parent_refs(draw),
                            "rules": [{"backendRefs": _backend_refs(draw)}
                                      for _ in range(draw(st.integers(0, 2)))]}
    if tls:
        hosts = draw(st.sampled_from([None, ["a.x.com"], ["*.x.com"]]))
        if hosts is not None:
            spec["hostnames"] = hosts
    return obj(draw(st.sampled_from(NSS)), draw(st.sampled_from(["t1", "t2"])), spec,
               draw(st.sampled_from(TIMES)))


@st.composite
def grants(draw: st.DrawFn) -> dict[str, Any]:
    frm = draw(st.sampled_from(["HTTPRoute", "HTTPRoute", "TLSRoute", "TCPRoute", "Gateway"]))
    to = draw(st.sampled_from([{"group": "", "kind": "Service"},
                               {"group": "", "kind": "Service", "name": "a"},
                               {"group": "", "kind": "Secret"}]))
    return obj(draw(st.sampled_from(["ns2", "ns1"])), draw(st.sampled_from(["rg1", "rg2"])),
               {"from": [{"group": G, "kind": frm,
                          "namespace": draw(st.sampled_from(["ns1", "ns1", "infra"]))}],
                "to": [to]})


@st.composite
def services(draw: st.DrawFn) -> dict[str, Any]:
    ports = draw(st.lists(st.sampled_from([80, 8080, 9999]), max_size=2, unique=True))
    svc = obj(draw(st.sampled_from(["ns1", "ns2"])), draw(st.sampled_from(["a", "b"])),
              {"ports": [{"port": p} for p in ports]}, rv=draw(st.integers(1, 3)))
    if draw(st.booleans()):
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}
    return svc


@st.composite
def namespaces(draw: st.DrawFn) -> dict[str, Any]:
    n = obj("", draw(st.sampled_from(NSS)), {})
    labels = draw(st.sampled_from([None, {"env": "prod"}, {"env": "dev"}]))
    if labels is not None:
        n["metadata"]["labels"] = labels
    return n


def gateway_class(controller: str, name: str = "pylb") -> dict[str, Any]:
    return obj("", name, {"controllerName": controller})


def base(world: World) -> None:
    """A GatewayClass of pylb's, Gateway infra/g1 (HTTP, TCP, TLS listeners taking routes
    from all namespaces), Services a and b in ns1 and ns2: what most routes attach to."""
    world.apply("gatewayclasses", gateway_class("pylb.io/gateway-controller"))
    everywhere = {"namespaces": {"from": "All"}}
    world.apply("gateways", obj("infra", "g1", {"gatewayClassName": "pylb", "listeners": [
        {"name": "l0", "port": 80, "protocol": "HTTP", "allowedRoutes": everywhere},
        {"name": "l1", "port": 9000, "protocol": "TCP", "allowedRoutes": everywhere},
        {"name": "l2", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"},
         "allowedRoutes": everywhere},
        {"name": "l3", "port": 8080, "protocol": "HTTP", "hostname": "*.x.com",
         "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {
             "matchLabels": {"env": "prod"}}}}}]}))
    for ns in ("ns1", "ns2"):
        for name in ("a", "b"):
            world.apply("services", obj(ns, name, {"ports": [{"port": 80}]}))


def _key(o: dict[str, Any]) -> tuple[str, str]:
    return (o["metadata"].get("namespace", ""), o["metadata"]["name"])


def status_written(o: dict[str, Any]) -> dict[str, Any]:
    """The same object after a status write: a new object, a new resourceVersion."""
    again = copy.deepcopy(o)
    again["metadata"]["resourceVersion"] = str(int(again["metadata"].get("resourceVersion", 0)) + 7)
    again["status"] = {"parents": [{"controllerName": "x"}]}
    return again


SECRETS = ("infra", "ns1", "ns2")  # each may hold a valid TLS Secret "s"

# An operation: (plural, object or None (delete), key when deleting).
ROUTE_OPS = st.one_of(
    st.tuples(st.just("httproutes"), httproutes()),
    st.tuples(st.just("httproutes"), httproutes()),
    st.tuples(st.just("httproutes"), httproutes()),
    st.tuples(st.just("tlsroutes"), l4routes(True)),
    st.tuples(st.just("tcproutes"), l4routes(False)),
)
OTHER_OPS = st.one_of(
    st.tuples(st.sampled_from(["httproutes", "tlsroutes", "tcproutes", "services",
                               "referencegrants", "gateways"]), st.just("delete")),
    st.tuples(st.sampled_from(["httproutes", "tlsroutes", "tcproutes", "services",
                               "gateways", "gatewayclasses"]), st.just("status")),
    st.tuples(st.just("services"), services()),
    st.tuples(st.just("services"), services()),
    st.tuples(st.just("referencegrants"), grants()),
    st.tuples(st.just("referencegrants"), grants()),
    st.tuples(st.just("namespaces"), namespaces()),
    st.tuples(st.just("gateways"), gateways()),
    st.tuples(st.just("gatewayclasses"), st.sampled_from(
        ["pylb.io/gateway-controller", "example.com/other"]).map(gateway_class)),
    st.tuples(st.just("secrets"), st.sampled_from(SECRETS)),
    st.tuples(st.just("unavailable"), st.sampled_from(
        [frozenset(), frozenset({("127.0.10.1", 80)}), frozenset({("127.0.0.1", 80)})])),
    st.tuples(st.just("nodes"), st.sampled_from([(), ("10.0.0.1", "10.0.0.2")])),
)
OPS = st.one_of(ROUTE_OPS, ROUTE_OPS, OTHER_OPS)

PLURALS = ("gatewayclasses", "gateways", "httproutes", "tlsroutes", "tcproutes",
           "referencegrants", "services", "namespaces")


class World:
    """The informers' stores and the other inputs, changed as a cluster changes them."""

    def __init__(self, s: GatewaySettings) -> None:
        self.stores: dict[str, dict[Any, Any]] = {p: {} for p in PLURALS}
        self.secrets: dict[tuple[str, str], Any] = {}
        self.valid: frozenset[tuple[str, str]] | None = None  # None: every one of them
        self.unavailable: frozenset[tuple[str, int]] = frozenset()
        self.settings = s
        # by plural, the keys changed since the last build, as the informers note them
        # (Informer.take_changes()); None until the first build: all
        self.changes: dict[str, set[Any]] | None = None

    def apply(self, plural: str, what: Any, pick: int = 0) -> None:
        if plural == "secrets":
            key = (what, "s")
            if key in self.secrets:
                del self.secrets[key]
            else:
                self.secrets[key] = tls_secret(what, "s", ("a.x.com", "*.x.com"))
        elif plural == "unavailable":
            self.unavailable = what
        elif plural == "nodes":
            self.settings = GatewaySettings(**{**self.settings.__dict__,
                                               "node_addresses": what})
        elif what in ("delete", "status"):
            store = self.stores[plural]
            if store:
                key = sorted(store)[pick % len(store)]
                if what == "delete":
                    del store[key]
                else:
                    store[key] = status_written(store[key])
                self.changed(plural, key)
        else:
            self.stores[plural][_key(what)] = what
            self.changed(plural, _key(what))

    def changed(self, plural: str, key: Any) -> None:
        if self.changes is not None:
            self.changes.setdefault(plural, set()).add(key)

    def build(self, tr: GatewayTranslator, now: str, keyed: bool = False) -> GatewayPlan:
        """`keyed`: the keys changed since the last build given (as GatewaySource gives
        the informers'), else none (everything compared)."""
        changes, self.changes = self.changes, {}
        given = None if not keyed or changes is None else \
            {p: changes.get(p, set()) for p in PLURALS}
        return tr.build(self.stores, settings=self.now(now), changes=given,
                        secrets=self.valid_secrets(), secret_objects=dict(self.secrets),
                        unavailable=self.unavailable)

    def valid_secrets(self) -> frozenset[tuple[str, str]]:
        return frozenset(self.secrets) if self.valid is None else self.valid

    def now(self, now: str) -> GatewaySettings:
        return GatewaySettings(**{**self.settings.__dict__, "now": now})

    def translate(self, now: str) -> GatewayPlan:
        inputs = inputs_from(self.stores)
        inputs = type(inputs)(**{**inputs.__dict__, "secrets": self.valid_secrets(),
                                 "secret_objects": dict(self.secrets),
                                 "unavailable": self.unavailable})
        return translate(inputs, self.now(now))


def untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "T" if k == "lastTransitionTime" else untimed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def check_same(got: GatewayPlan, want: GatewayPlan) -> None:
    assert got.listeners == want.listeners
    assert got.l4_listeners == want.l4_listeners
    for a, b in zip(got.listeners + got.l4_listeners, want.listeners + want.l4_listeners,
                    strict=True):
        assert [e.order for e in a.rules] == [e.order for e in b.rules]
        assert [e.order for e in a.l4_routes] == [e.order for e in b.l4_routes]
    assert got.skipped == want.skipped
    assert got.status.keys() == want.status.keys()
    assert untimed(got.status) == untimed(want.status)


def entries(plan: GatewayPlan) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for lst in plan.listeners + plan.l4_listeners:
        for e in (*lst.rules, *lst.l4_routes):
            out.setdefault(e.route, []).append(e)
    return out


def reused(plan: GatewayPlan, last: GatewayPlan) -> None:
    """What did not change is the very object it was: a listener with the very same entries,
    a Gateway's status equal but for its times."""
    before = {(lst.gateway, lst.name): lst for lst in last.listeners + last.l4_listeners}
    for lst in plan.listeners + plan.l4_listeners:
        old = before.get((lst.gateway, lst.name))
        if old is not None and old == lst and all(
                a is b for a, b in zip(old.rules + old.l4_routes, lst.rules + lst.l4_routes,
                                       strict=True)):
            assert old is lst
    for key, status in plan.status.items():
        if key[0] == "gateways" and key in last.status and \
                untimed(last.status[key]) == untimed(status):
            assert last.status[key] is status


SETTINGS = st.sampled_from([
    GatewaySettings(l4=True),
    GatewaySettings(l4=True, address_pool=POOL[:3], node_address="127.0.0.1"),
    GatewaySettings(l4=False, address_pool=POOL[:1]),
])


# INCR_EXAMPLES=2000 for a longer search
@settings(max_examples=int(os.environ.get("INCR_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(SETTINGS, st.lists(st.lists(st.tuples(OPS, st.integers(0, 5)), min_size=1,
                                   max_size=4), min_size=1, max_size=12),
       st.sampled_from([0, 1, incremental.BULK]), st.sampled_from(["none", "all", "odd"]))
def test_incremental_equals_translate(s: GatewaySettings, batches: list[list[Any]],
                                      bulk: int, keyed: str) -> None:
    """(`bulk`: the number of routes in one build past which entries are sorted once
    rather than inserted one by one: both ways, for any number of routes. `keyed`: which
    builds are given the keys changed since the last one (the informers' change sets):
    none, all, or every other one.)"""
    with mock.patch.object(incremental, "BULK", bulk):
        run_changes(s, batches, keyed)


def check_status_changes(tr: GatewayTranslator, plan: GatewayPlan,
                         last: GatewayPlan) -> None:
    """Every status key whose planned status is not the very object it was is among those
    the translator says may have changed (the leader's status pass looks at no other)."""
    said = tr.take_status_changes()
    if said is None:
        return
    for key in plan.status.keys() | last.status.keys():
        if plan.status.get(key) is not last.status.get(key):
            assert key in said, key


def run_changes(s: GatewaySettings, batches: list[list[Any]], keyed: str = "none") -> None:
    world = World(s)
    base(world)
    tr = GatewayTranslator()
    last = world.build(tr, "t0", keyed=keyed != "none")
    check_same(last, world.translate("t0"))
    tr.take_status_changes()
    most = 0  # entries on one listener
    for step, batch in enumerate(batches, 1):
        before = {p: dict(store) for p, store in world.stores.items()}
        for (plural, what), pick in batch:
            world.apply(plural, what, pick)
        now = f"t{step}"
        plan = world.build(tr, now, keyed=keyed == "all" or (keyed == "odd" and step % 2 == 1))
        check_same(plan, world.translate(now))
        check_status_changes(tr, plan, last)
        most = max(most, max((len(lst.rules) + len(lst.l4_routes)
                              for lst in plan.listeners + plan.l4_listeners), default=0))
        reused(plan, last)
        if all(plural in ("httproutes", "tlsroutes", "tcproutes") for (plural, _), _ in batch):
            # only routes changed: every other route's status dict and entries are the
            # very objects they were
            old_entries, new_entries = entries(last), entries(plan)
            for plural in ("httproutes", "tlsroutes", "tcproutes"):
                for key, o in world.stores[plural].items():
                    if before[plural].get(key) is not o:
                        continue
                    skey = (plural, *key)
                    assert (skey in plan.status) == (skey in last.status)
                    if skey in plan.status:
                        assert plan.status[skey] is last.status[skey]
                    if plural == "httproutes":
                        mine = new_entries.get(f"{key[0]}/{key[1]}", [])
                        assert len(mine) == len(old_entries.get(f"{key[0]}/{key[1]}", []))
                        assert all(any(e is o for o in old_entries[e.route]) for e in mine)
        if untimed(plan.status) == untimed(last.status) and plan == last and \
                all(what == "status" and plural != "gateways"
                    for (plural, what), _ in batch):
            assert plan is last  # a status write is no reason to make a plan again
        last = plan
    event(f"most entries on a listener: {min(most, 4)}")
    # and everything deleted: the plan of nothing
    for store in world.stores.values():
        store.clear()
    check_same(world.build(tr, "end"), world.translate("end"))


# ---- the conformance manifests, route by route -------------------------------------------

_MANIFESTS = sorted(p.name for p in (HERE / "tests").glob("*.yaml"))


@pytest.mark.parametrize("name", _MANIFESTS)
def test_conformance_manifests_route_by_route(name: str) -> None:
    """Each upstream test's objects: the Gateway-level ones first, then its routes one at a
    time, then its Services removed one at a time, then its routes deleted one at a time:
    after every step the plan equals translate()'s."""
    cluster = Cluster.load(name)
    inputs = cluster.inputs()
    world = World(GatewaySettings(address_pool=POOL, l4=True))
    world.secrets = dict(inputs.secret_objects)
    world.valid = inputs.secrets
    world.stores = cluster.stores()
    routes = [(plural, key, o) for plural in ("httproutes", "tlsroutes", "tcproutes")
              for key, o in world.stores[plural].items()]
    for plural, key, _ in routes:
        del world.stores[plural][key]
    tr = GatewayTranslator()
    step = 0

    def check() -> None:
        nonlocal step
        step += 1
        check_same(world.build(tr, f"t{step}"), world.translate(f"t{step}"))

    check()
    for plural, key, o in routes:
        world.stores[plural][key] = o
        check()
    translated = tr.translated
    world.stores["httproutes"].update(
        {k: status_written(o) for k, o in world.stores["httproutes"].items()})
    check()
    assert tr.translated == translated  # status writes: nothing translated again
    for key in [k for k in world.stores["services"] if k[0] != "gateway-conformance-infra"]:
        del world.stores["services"][key]
        check()
    for plural, key, _ in routes:
        del world.stores[plural][key]
        check()


def test_the_seed_corpus_is_there() -> None:
    assert len(_MANIFESTS) > 90 and Path(HERE / "base-manifests.yaml").exists()


def test_a_keyed_build_looks_at_the_changed_keys_only() -> None:
    """Given the informers' change sets, a build looks at no key outside them: other routes
    replaced behind its back (no change noted) are not translated, and a build with no
    change returns the last plan even though every store's objects were swapped. Given
    None (a relist, a fresh start), the stores are compared whole again."""
    world = World(GatewaySettings(l4=True))
    base(world)
    for i in range(20):
        world.apply("httproutes", obj("ns1", f"r{i}", {
            "parentRefs": [{"name": "g1", "namespace": "infra"}],
            "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]}))
    tr = GatewayTranslator()
    last = world.build(tr, "t0", keyed=True)
    assert tr.translated == 20 and tr.take_status_changes() is None  # (its first: any)

    def respec(key: Any, name: str) -> None:
        o = copy.deepcopy(world.stores["httproutes"][key])
        o["spec"]["rules"][0]["backendRefs"][0]["name"] = name
        world.stores["httproutes"][key] = o  # not noted in world.changes

    for key in list(world.stores["httproutes"]):
        respec(key, "b")
    world.stores["services"] = {k: copy.deepcopy(o) for k, o in world.stores["services"].items()}
    assert world.build(tr, "t1", keyed=True) is last and tr.translated == 20
    world.apply("httproutes", obj("ns1", "r3", {
        "parentRefs": [{"name": "g1", "namespace": "infra"}],
        "rules": [{"backendRefs": [{"name": "b", "port": 8080}]}]}))
    plan = world.build(tr, "t2", keyed=True)
    assert tr.translated == 21 and plan is not last
    assert tr.take_status_changes() == {("httproutes", "ns1", "r3")}
    assert tr.take_status_changes() == set()
    world.build(tr, "t3", keyed=True)
    assert tr.take_status_changes() == set()
    # compared whole: the routes changed behind its back are found
    check_same(world.build(tr, "t4"), world.translate("t4"))
    assert tr.translated == 40
    assert ("httproutes", "ns1", "r5") in (tr.take_status_changes() or ())
