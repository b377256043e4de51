"""The incremental translation equals the whole one: over random sequences of adds,
changes and deletes of services, slices and Endpoints (route and host collisions, TCP
ports, duplicates, bad input), every table `Translator.build()` returns equals
`translate()` of the same objects, part by part and in order; and a change re-plans only
the service it touches, sharing every unchanged backend and route with the last table."""

from __future__ import annotations

import base64
import copy
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery.incremental import Translator
from discovery.translate import KubeObjects, translate
from pylb.config import GatewayApi, Settings
from pylb.model import RouteTable

NAMES = ("a", "b", "c", "d")
NAMESPACES = ("ns1", "ns2")


def service(ns: str, name: str, rv: int, ports: list[dict[str, Any]], ann: dict[str, str],
            svc_type: str = "ClusterIP", affinity: str = "None") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv),
                         "annotations": {f"serviceloadbalancer/{k}": v
                                         for k, v in ann.items()}},
            "spec": {"type": svc_type, "sessionAffinity": affinity, "ports": ports,
                     "clusterIP": "127.0.0.9"}}


def eslice(ns: str, service_name: str, suffix: str, ips: list[str], port: int = 8080,
           ready: bool = True, rv: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": f"{service_name}-{suffix}", "namespace": ns,
                         "resourceVersion": str(rv),
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips]}


# Mostly valid annotations, chosen so that services collide: on hosts, on aclMatch
# prefixes (also with service a's own /a, and case-insensitively), on the TLS frontend.
ANNOTATIONS = st.lists(st.sampled_from([
    ("lb.host", "x.example"), ("lb.host", "y.example"), ("lb.aclMatch", "/p"),
    ("lb.aclMatch", "-i /P"), ("lb.aclMatch", "/a"), ("lb.aclMatch", "-i /A"),
    ("lb.sslTerm", "true"), ("lb.sslRedirect", "true"), ("lb.sslPassthrough", "true"),
    ("lb.algorithm", "leastconn"), ("lb.algorithm", "bogus"),
    ("lb.cookie-sticky-session", "true"), ("lb.sslTerm", "maybe"),
]), max_size=2).map(dict)

PORTS = st.lists(st.sampled_from([
    {"name": "http", "port": 80, "targetPort": 8080},
    {"name": "alt", "port": 8080},
    {"name": "mysql", "port": 3306, "targetPort": 8080},
    {"name": "dns", "port": 53, "protocol": "UDP"},
    {"name": "tls", "port": 443, "targetPort": 8080},
]), min_size=1, max_size=3, unique_by=lambda p: p["port"])


@st.composite
def services(draw: st.DrawFn) -> dict[str, Any]:
    obj = service(draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(NAMES)),
                  draw(st.integers(1, 5)), draw(PORTS), draw(ANNOTATIONS),
                  draw(st.sampled_from(["ClusterIP", "ClusterIP", "LoadBalancer"])),
                  draw(st.sampled_from(["None", "ClientIP"])))
    bad = draw(st.integers(0, 20))
    if bad == 2:
        obj["spec"]["type"] = "ExternalName"
        obj["spec"]["externalName"] = draw(st.sampled_from(["db.example", "DB.example."]))
    if bad == 0:
        del obj["metadata"]["name"]  # bad metadata: skipped as "?"
    elif bad == 1:
        obj["spec"]["ports"] = []  # a bad service
    return obj


@st.composite
def slices(draw: st.DrawFn) -> dict[str, Any]:
    ips = draw(st.lists(st.sampled_from(["127.1.0.1", "127.1.0.2", "127.1.0.3",
                                         "not-an-ip"]), max_size=3))
    return eslice(draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(NAMES)),
                  draw(st.sampled_from(["x", "y"])), ips,
                  draw(st.sampled_from([8080, 8081])), draw(st.booleans()),
                  draw(st.integers(1, 5)))


def legacy(ns: str, name: str, ip: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "http", "port": 8080}]}]}


@st.composite
def ingresses(draw: st.DrawFn) -> dict[str, Any]:
    """Ingresses that collide on hosts and paths, name services that may not exist, ports
    by number or name, and sometimes are not ours or are malformed."""
    def backend() -> dict[str, Any]:
        port = draw(st.sampled_from([{"number": 80}, {"number": 8080}, {"name": "http"},
                                     {"name": "mysql"}, {"number": 9999}]))
        return {"service": {"name": draw(st.sampled_from(NAMES)), "port": port}}

    paths = [{"path": draw(st.sampled_from(["/", "/p", "/p/", "/q/r"])),
              "pathType": draw(st.sampled_from(["Prefix", "Exact",
                                                "ImplementationSpecific"])),
              "backend": backend()}
             for _ in range(draw(st.integers(0, 2)))]
    host = draw(st.sampled_from([None, "x.example", "*.example", "Bad_Host"]))
    rule: dict[str, Any] = {"http": {"paths": paths}}
    if host is not None:
        rule["host"] = host
    spec: dict[str, Any] = {"rules": [rule]}
    cls = draw(st.sampled_from(["pylb", "pylb", None, "nginx"]))
    if cls is not None:
        spec["ingressClassName"] = cls
    if draw(st.booleans()):
        spec["tls"] = [{"hosts": ["x.example"], "secretName": "s"}]
    if draw(st.integers(0, 3)) == 0:
        spec["defaultBackend"] = backend()
    ann = draw(st.sampled_from([{}, {"kubernetes.io/ingress.class": "pylb"},
                                {"nginx.ingress.kubernetes.io/ssl-redirect": "false"},
                                {"nginx.ingress.kubernetes.io/force-ssl-redirect": "yes"}]))
    return {"metadata": {"name": draw(st.sampled_from(["i", "j"])),
                         "namespace": draw(st.sampled_from(NAMESPACES)),
                         "resourceVersion": str(draw(st.integers(1, 5))),
                         "annotations": ann},
            "spec": spec}


def ingress_class(default: bool, controller: str = "pylb.io/ingress-controller") -> Any:
    return {"metadata": {"name": "pylb", "annotations": {
        "ingressclass.kubernetes.io/is-default-class": str(default).lower()}},
            "spec": {"controller": controller}}


def tls_secret(ns: str, name: str, kind: str, rv: int) -> dict[str, Any]:
    pem = base64.b64encode(b"-----BEGIN X-----\n%d\n" % rv).decode()
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv)},
            "type": kind, "data": {"tls.crt": pem, "tls.key": pem}}


# An operation: (kind, store key, object or None to delete). Keys are small so that
# operations hit the same objects; a service key is not its (namespace, name), so two
# keys can hold copies of one service (duplicates).
OPS = st.one_of(
    st.tuples(st.just("services"), st.integers(0, 6),
              st.one_of(st.none(), services(), services(), services())),
    st.tuples(st.just("endpointslices"), st.integers(0, 6),
              st.one_of(st.none(), slices(), slices())),
    st.tuples(st.just("external"), st.just(0),
              st.sampled_from([{}, {"db.example": ("127.3.0.1",)},
                               {"db.example": ("127.3.0.2", "127.3.0.1")}])),
    st.tuples(st.just("endpoints"), st.integers(0, 2),
              st.none() | st.builds(legacy, st.sampled_from(NAMESPACES),
                                    st.sampled_from(NAMES),
                                    st.sampled_from(["127.2.0.1", "127.2.0.2"]))),
    st.tuples(st.just("ingresses"), st.integers(0, 3),
              st.one_of(st.none(), ingresses(), ingresses())),
    # keyed by namespace, as an informer keys by namespace/name: two live Secrets never
    # share a name (with two, which one a Secret reference names would depend on order)
    st.sampled_from(NAMESPACES).flatmap(lambda ns: st.tuples(
        st.just("secrets"), st.just(ns),
        st.none() | st.builds(tls_secret, st.just(ns), st.just("s"),
                              st.sampled_from(["kubernetes.io/tls", "Opaque"]),
                              st.integers(1, 3)))),
    st.tuples(st.just("ingressclasses"), st.just(0),
              st.none() | st.builds(ingress_class, st.booleans(),
                                    st.sampled_from(["pylb.io/ingress-controller",
                                                     "k8s.io/ingress-nginx"]))),
)

SETTINGS = st.sampled_from([
    Settings(namespaces=()),
    Settings(namespaces=("ns1",)),
    Settings(namespaces=(), tcp_services=(("a", 3306), ("b", 3306), ("c", 443),
                                          ("d", 3307))),
    Settings(namespaces=(), tcp_services=(("a", 3306), ("b", 3306))),
    Settings(namespaces=(), target_service="b"),
    Settings(namespaces=(), forward_services=True),
    Settings(namespaces=(), endpoints_api="endpoints"),
    Settings(namespaces=(), ingress_class="pylb"),
    Settings(namespaces=("ns1",), ingress_class="pylb", tcp_services=(("a", 3306),)),
    Settings(namespaces=(), tcp_services=(("a", 3306),), gateway=GatewayApi(enabled=True)),
])


def reference(stores: dict[str, dict[Any, Any]], s: Settings) -> RouteTable:
    return translate(KubeObjects(services=tuple(stores["services"].values()),
                                 endpointslices=tuple(stores["endpointslices"].values()),
                                 endpoints=tuple(stores["endpoints"].values()),
                                 external=stores["external"].get(0, {}),
                                 ingresses=tuple(stores["ingresses"].values()),
                                 ingressclasses=tuple(stores["ingressclasses"].values()),
                                 secrets=tuple(stores["secrets"].values())), s)


def check_same(got: RouteTable, want: RouteTable) -> None:
    assert got == want
    for part in ("http", "https", "tcp", "backends", "skipped"):
        assert getattr(got, part) == getattr(want, part), part
    assert got.render() == want.render()
    for b in want.backends:
        assert got.backend(b.name) is got.backends[got.backends.index(b)]
    assert got.get_backend("nope/none:1") is None


def apply(tr: Translator, kind: str, key: int, obj: Any) -> None:
    if kind == "external":
        tr.set_external(obj)
        return
    {"services": tr.set_service, "endpointslices": tr.set_slice,
     "endpoints": tr.set_endpoints, "ingresses": tr.set_ingress,
     "ingressclasses": tr.set_ingress_class, "secrets": tr.set_secret}[kind](key, obj)


# INCR_EXAMPLES=5000 for a longer search
@settings(max_examples=int(os.environ.get("INCR_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(SETTINGS, st.lists(st.lists(OPS, min_size=1, max_size=4), min_size=1, max_size=12))
def test_incremental_equals_translate(s: Settings, batches: list[list[Any]]) -> None:
    stores: dict[str, dict[Any, Any]] = {"services": {}, "endpointslices": {},
                                         "endpoints": {}, "external": {},
                                         "ingresses": {}, "ingressclasses": {},
                                         "secrets": {}}
    tr = Translator(s)
    last = tr.build()
    for batch in batches:
        for kind, key, obj in batch:
            if obj is None:
                stores[kind].pop(key, None)
            else:
                stores[kind][key] = obj
            apply(tr, kind, key, obj)
        table = tr.build()
        want = reference(stores, s)
        check_same(table, want)
        if table == last:
            assert table is last  # an equal table is not made again
        else:  # unchanged backends are shared
            for b in table.backends:
                old = last.get_backend(b.name)
                if old is not None and old == b:
                    assert old is b
        last = table
    # deleting everything leaves the empty table
    for kind, store in stores.items():
        for key in list(store):
            apply(tr, kind, key, {} if kind == "external" else None)
    check_same(tr.build(), RouteTable())


def test_route_collisions_follow_namespace_order() -> None:
    """The first service in (namespace, name) order keeps /web; the loser gets it when the
    winner goes, and loses it again when the winner returns."""
    s = Settings(namespaces=())
    tr = Translator(s)
    port = [{"name": "http", "port": 80, "targetPort": 8080}]
    b = service("b", "web", 1, port, {})
    a = service("a", "web", 1, port, {})
    tr.set_service("b", b)
    t1 = tr.build()
    assert t1.http[0].backend == "b/web:80"
    tr.set_service("a", a)
    t2 = tr.build()
    assert [r.backend for r in t2.http] == ["a/web:80"]
    assert any("already taken by service a/web" in x.reason for x in t2.skipped)
    tr.set_service("a", None)
    t3 = tr.build()
    assert [r.backend for r in t3.http] == ["b/web:80"]
    check_same(t3, translate(KubeObjects(services=(b,)), s))


def cluster(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    port = [{"name": "http", "port": 80, "targetPort": 8080}]
    svcs = [service("default", f"s{i}", 1, port, {}) for i in range(n)]
    sls = [eslice("default", f"s{i}", "a", [f"127.1.{i}.1", f"127.1.{i}.2"])
           for i in range(n)]
    return svcs, sls


def loaded(n: int) -> tuple[Translator, list[dict[str, Any]], list[dict[str, Any]]]:
    tr = Translator(Settings())
    svcs, sls = cluster(n)
    for i, (svc, sl) in enumerate(zip(svcs, sls, strict=True)):
        tr.set_service(i, svc)
        tr.set_slice(i, sl)
    tr.build()
    return tr, svcs, sls


def test_one_slice_change_replans_one_service_and_shares_the_rest() -> None:
    tr, svcs, sls = loaded(50)
    assert tr.plans == 50
    before = tr.table
    changed = copy.deepcopy(sls[7])
    changed["endpoints"][0]["addresses"] = ["127.1.7.9"]
    changed["metadata"]["resourceVersion"] = "2"
    tr.set_slice(7, changed)
    after = tr.build()
    assert tr.plans == 51
    assert after is not before
    for old, new in zip(before.backends, after.backends, strict=True):
        if new.name == "default/s7:80":
            assert new is not old and "127.1.7.9" in new.render()
        else:
            assert new is old
    assert all(a is b for a, b in zip(before.http, after.http, strict=True))
    sls[7] = changed
    check_same(after, translate(KubeObjects(services=tuple(svcs),
                                            endpointslices=tuple(sls)), Settings()))


def test_an_equal_result_is_the_same_table() -> None:
    tr, svcs, _ = loaded(5)
    before = tr.table
    relabelled = copy.deepcopy(svcs[2])
    relabelled["metadata"]["labels"] = {"team": "blue"}  # nothing a route depends on
    tr.set_service(2, relabelled)
    assert tr.build() is before
    assert tr.plans == 6
    assert tr.build() is before and tr.plans == 6  # nothing dirty: nothing re-planned


def test_a_new_version_of_a_service_or_its_endpoints_is_seen() -> None:
    """(What translate()'s old resourceVersion memo promised, through the public surface.)"""
    tr, _, _ = loaded(3)
    tr.set_service(1, service("default", "s1", 2, [{"name": "http", "port": 80,
                                                     "targetPort": 8080}],
                              {"lb.algorithm": "leastconn"}))
    assert tr.build().backend("default/s1:80").algorithm.value == "leastconn"
    unversioned = eslice("default", "s2", "a", ["127.1.2.7"])
    del unversioned["metadata"]["resourceVersion"]
    tr.set_slice(2, unversioned)
    assert "127.1.2.7" in tr.build().backend("default/s2:80").render()


def test_from_sorted_tables_equal_constructed_ones() -> None:
    tr, _, _ = loaded(20)
    t = tr.table
    rebuilt = RouteTable(t.http, t.https, t.tcp, t.backends, t.skipped)
    check_same(t, rebuilt)
    v = t.with_version(7)
    assert v.version == 7 and v == t and v.backends is t.backends
    assert v.backend("default/s3:80") is t.backend("default/s3:80")
