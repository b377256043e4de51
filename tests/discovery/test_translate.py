"""Table-driven tests of discovery.translate: one table (or test) per rule."""

from __future__ import annotations

import copy
import ipaddress
import itertools
import logging
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from discovery.translate import KubeObjects, translate
from pylb.config import CheckScope, CheckSettings, GatewayApi, Settings
from pylb.model import (
    Affinity,
    Algorithm,
    Backend,
    HttpRoute,
    ProxyProtocol,
    RouteTable,
    Server,
    TcpFrontend,
)

P = "serviceloadbalancer/"


def svc(name: str, ports: list[Any] | None = None, ns: str = "default",
        annotations: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations is not None:
        meta["annotations"] = annotations
    body = {"ports": ports if ports is not None else [{"port": 80}], **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def ep(address: str, pod: str | None = None, **conditions: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [address]}
    if conditions:
        out["conditions"] = conditions
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod}
    return out


def eps(service: str, endpoints: list[Any] | None, ports: list[Any] | None = None,
        ns: str = "default", family: str = "IPv4", name: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name or f"{service}-{family.lower()}", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": family,
        "ports": ports if ports is not None else [{"port": 80, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def legacy(service: str, subsets: list[Any], ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": service, "namespace": ns}, "subsets": subsets}


def run(services: Sequence[Any], slices: Sequence[Any] = (), endpoints: Sequence[Any] = (),
        external: dict[str, tuple[str, ...]] | None = None, **settings: Any) -> RouteTable:
    return translate(KubeObjects(tuple(services), tuple(slices), tuple(endpoints),
                                 external or {}), Settings(**settings))


def reasons(table: RouteTable, name: str | None = None) -> list[str]:
    return [s.reason for s in table.skipped if name is None or s.name == name]


def servers(table: RouteTable, backend: str) -> tuple[Server, ...]:
    return table.backend(backend).servers


# -- ports, names, routes ----------------------------------------------------------------------


def test_port_80_is_slash_name_other_ports_name_colon_port() -> None:
    t = run([svc("web", [{"port": 80, "name": "http"}, {"port": 8080, "name": "alt"}])])
    assert t.http == (
        HttpRoute("web:8080", "/web:8080", "default/web:8080"),
        HttpRoute("web", "/web", "default/web:80"),
    )
    assert t.https == () and t.tcp == () and t.skipped == ()
    assert [b.name for b in t.backends] == ["default/web:80", "default/web:8080"]


@pytest.mark.parametrize("protocol", ["UDP", "SCTP"])
def test_udp_and_sctp_ports_are_skipped_tcp_ports_kept(
        protocol: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pylb.discovery")
    t = run([svc("dns", [{"port": 53, "protocol": protocol, "name": "a"},
                         {"port": 53, "protocol": "TCP", "name": "b"}])])
    assert [r.prefix for r in t.http] == ["/dns:53"]
    assert reasons(t) == [f"port 53/{protocol}: only TCP is balanced"]
    assert any("only TCP" in r.message and r.levelno == logging.INFO for r in caplog.records)


@pytest.mark.parametrize(("spec", "exposed"), [
    ({"type": "LoadBalancer"}, False),
    ({"type": "LoadBalancer", "loadBalancerClass": "other.io/lb"}, False),
    ({"type": "LoadBalancer", "loadBalancerClass": "pylb.io/lb"}, True),
    ({"type": "NodePort"}, True),
    ({"type": "ClusterIP"}, True),
    ({}, True),
])
def test_load_balancer_services(spec: dict[str, Any], exposed: bool) -> None:
    t = run([svc("a", **spec)])
    assert bool(t.http) is exposed
    if not exposed:
        assert "type LoadBalancer" in reasons(t, "a")[0]
        assert "pylb.io/lb" in reasons(t, "a")[0]


def test_target_service_restricts_to_one_service() -> None:
    t = run([svc("a"), svc("b"), svc("c", ns="other")], target_service="b")
    assert [r.name for r in t.http] == ["b"] and t.skipped == ()


@pytest.mark.parametrize(("namespaces", "expected"), [
    (("default",), ["default/a:80"]),
    (("other",), ["other/b:80"]),
    (("default", "other"), ["default/a:80", "other/b:80"]),
    ((), ["default/a:80", "kube-system/c:80", "other/b:80"]),
])
def test_namespace_filter(namespaces: tuple[str, ...], expected: list[str]) -> None:
    t = run([svc("a"), svc("b", ns="other"), svc("c", ns="kube-system")],
            namespaces=namespaces)
    assert [b.name for b in t.backends] == expected
    assert t.skipped == ()


def test_same_name_in_two_namespaces_first_namespace_keeps_the_route() -> None:
    t = run([svc("web", ns="zeta"), svc("web", ns="alpha")], namespaces=())
    assert t.http == (HttpRoute("web", "/web", "alpha/web:80"),)
    assert [(s.namespace, s.name) for s in t.skipped] == [("zeta", "web")]
    assert "already taken by service alpha/web" in t.skipped[0].reason
    assert [b.name for b in t.backends] == ["alpha/web:80"]


def test_with_gateway_api_a_clashing_service_keeps_its_backend() -> None:
    """Only its /name route clashes: Gateway routes name Service ports by namespace, so
    with --gateway-api every Service port keeps its backend."""
    t = run([svc("web", ns="zeta"), svc("web", ns="alpha")], namespaces=(),
            gateway=GatewayApi(enabled=True))
    assert t.http == (HttpRoute("web", "/web", "alpha/web:80"),)
    assert [(s.namespace, s.name) for s in t.skipped] == [("zeta", "web")]
    assert [b.name for b in t.backends] == ["alpha/web:80", "zeta/web:80"]


def test_order_and_duplicates_do_not_matter() -> None:
    services = [svc("a", [{"port": 80}, {"port": 81}]), svc("b", ns="o"), svc("a", ns="o"),
                svc("c", annotations={P + "lb.aclMatch": "/x"}),
                svc("d", annotations={P + "lb.aclMatch": "/x"}), svc("udp", [
                    {"port": 1, "protocol": "UDP"}])]
    slices = [eps("a", [ep("10.0.0.1"), ep("10.0.0.2")], ns="default"),
              eps("a", [ep("fd00::1")], family="IPv6"),
              eps("b", [ep("10.0.0.3")], ns="o"), eps("c", [ep("10.0.0.4")])]
    base = run(services, slices, namespaces=())
    rnd = random.Random(7)
    for _ in range(20):
        s2 = [*services, copy.deepcopy(rnd.choice(services))]
        sl2 = [*slices, copy.deepcopy(rnd.choice(slices))]
        rnd.shuffle(s2)
        rnd.shuffle(sl2)
        t = run(s2, sl2, namespaces=())
        assert t == base
        assert t.render() == base.render()


def test_duplicate_service_newest_resource_version_wins() -> None:
    old = svc("a", [{"port": 80}])
    old["metadata"]["resourceVersion"] = "9"
    new = svc("a", [{"port": 8080}])
    new["metadata"]["resourceVersion"] = "10"
    for order in ([old, new], [new, old]):
        assert [r.prefix for r in run(order).http] == ["/a:8080"]


# -- endpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("port", "slice_ports", "expected_ports"), [
    # targetPort by number
    ({"port": 80, "name": "web", "targetPort": 8080},
     [{"port": 8080, "name": "x"}, {"port": 9090, "name": "y"}], [8080]),
    # missing targetPort = port
    ({"port": 80, "name": "a"}, [{"port": 80}, {"port": 9090, "name": "b"}], [80]),
    # the empty name is a name: the one port of a single-port service
    ({"port": 80, "targetPort": 8080}, [{"port": 18080}], [18080]),
    # targetPort as a number in a string
    ({"port": 80, "targetPort": "8080"}, [{"port": 8080}], [8080]),
    # service port name <-> endpoint port name (how Kubernetes names slice ports)
    ({"port": 80, "name": "web", "targetPort": "http"},
     [{"port": 8080, "name": "web"}, {"port": 9090, "name": "metrics"}], [8080]),
    ({"port": 80, "name": "web", "targetPort": 1234},
     [{"port": 8080, "name": "web"}], [8080]),
    # string targetPort <-> endpoint port name (the 2015 controller's rule)
    ({"port": 80, "name": "web", "targetPort": "http"},
     [{"port": 8080, "name": "http"}], [8080]),
    # unnamed single-port service with a named targetPort: Kubernetes writes name ""
    ({"port": 80, "targetPort": "http"}, [{"port": 8080}], [8080]),
    # nothing matches
    ({"port": 80, "name": "web", "targetPort": 8080}, [{"port": 9090, "name": "x"}], []),
    ({"port": 80, "targetPort": "http"}, [{"port": 8080, "name": "other"}], []),
    # UDP endpoint ports and "all ports" (nil port) never match
    ({"port": 80}, [{"port": 80, "protocol": "UDP"}], []),
    ({"port": 80}, [{"name": "", "port": None}], []),
])
def test_endpoint_port_matching(port: dict[str, Any], slice_ports: list[Any],
                                expected_ports: list[int]) -> None:
    t = run([svc("a", [port])], [eps("a", [ep("10.0.0.1")], slice_ports)])
    assert [s.port for s in servers(t, "default/a:80")] == expected_ports


def test_union_of_slices_dedup_and_both_families() -> None:
    slices = [
        eps("a", [ep("10.0.0.2", "p2"), ep("10.0.0.1", "p1")], name="a-1"),
        eps("a", [ep("10.0.0.1", "p1"), ep("10.0.0.3")], name="a-2"),
        eps("a", [ep("FD00:0::1", "p1")], family="IPv6", name="a-3"),
        eps("a", None, name="a-4"),  # endpoints: null is legal
        eps("a", [{"addresses": ["a.example.com"]}], family="FQDN", name="a-5"),
        eps("other", [ep("10.9.9.9")]),
    ]
    t = run([svc("a")], slices)
    assert servers(t, "default/a:80") == (
        Server("10.0.0.1", 80, "p1"), Server("10.0.0.2", 80, "p2"), Server("10.0.0.3", 80),
        Server("fd00::1", 80, "p1"),
    )


def test_duplicate_endpoint_in_two_states_best_state_wins() -> None:
    slices = [eps("a", [ep("10.0.0.1", ready=False, serving=True, terminating=True)],
                  name="s1"),
              eps("a", [ep("10.0.0.1", "pod", ready=True)], name="s2")]
    for order in (slices, slices[::-1]):
        assert servers(run([svc("a")], order), "default/a:80") == (
            Server("10.0.0.1", 80, "pod"),)


DRAIN = Server("10.0.0.1", 80, "pod", ready=False, serving=True, terminating=True)
NOT_READY = Server("10.0.0.1", 80, "pod", ready=False, serving=False)


@pytest.mark.parametrize(("conditions", "expected"), [
    ({}, Server("10.0.0.1", 80, "pod")),
    ({"ready": True}, Server("10.0.0.1", 80, "pod")),
    ({"ready": None, "serving": None, "terminating": None}, Server("10.0.0.1", 80, "pod")),
    ({"ready": True, "serving": True, "terminating": False}, Server("10.0.0.1", 80, "pod")),
    ({"ready": False, "serving": True, "terminating": True}, DRAIN),
    ({"serving": True, "terminating": True}, DRAIN),
    ({"ready": False, "serving": False, "terminating": True}, None),
    ({"ready": False, "serving": False}, None),
    ({"ready": False, "serving": True, "terminating": False}, NOT_READY),
])
def test_endpointslice_conditions(conditions: dict[str, Any], expected: Server | None) -> None:
    t = run([svc("a")], [eps("a", [ep("10.0.0.1", "pod", **conditions)])])
    got: tuple[Server, ...] = servers(t, "default/a:80")
    assert got == ((expected,) if expected else ())
    if expected is DRAIN:
        assert [(s.accepts_new_work, "draining" in s.render()) for s in got] == [(False, True)]


def test_legacy_endpoints_api() -> None:
    subsets = [{"addresses": [{"ip": "10.0.0.1", "targetRef": {"name": "p1"}}],
                "notReadyAddresses": [{"ip": "10.0.0.2"}],
                "ports": [{"port": 8080, "name": "web"}, {"port": 9, "name": "x"}]},
               {"addresses": None, "ports": None}]
    service = svc("a", [{"port": 80, "name": "web", "targetPort": 8080}])
    legacy_obj = legacy("a", subsets)
    expected = (Server("10.0.0.1", 8080, "p1"),
                Server("10.0.0.2", 8080, ready=False, serving=False))
    # chosen by settings
    t = run([service], [eps("a", [ep("10.0.0.9")], [{"port": 8080}])], [legacy_obj],
            endpoints_api="endpoints")
    assert servers(t, "default/a:80") == expected
    # fallback when the service has no slice at all
    assert servers(run([service], [], [legacy_obj]), "default/a:80") == expected
    # slices win otherwise
    t = run([service], [eps("a", [ep("10.0.0.9")], [{"port": 8080}])], [legacy_obj])
    assert servers(t, "default/a:80") == (Server("10.0.0.9", 8080),)


def test_service_without_endpoints_keeps_route_and_empty_backend() -> None:
    t = run([svc("a")])
    assert t.http == (HttpRoute("a", "/a", "default/a:80"),)
    assert t.backend("default/a:80").servers == ()
    assert "backend default/a:80 balance=roundrobin check\n    (no servers)" in t.render()


def test_forward_services_uses_cluster_ip() -> None:
    t = run([svc("a", [{"port": 80, "targetPort": 8080}], clusterIP="10.96.0.10"),
             svc("h", clusterIP="None"), svc("m")],
            [eps("a", [ep("10.0.0.1")], [{"port": 8080}])], forward_services=True)
    assert servers(t, "default/a:80") == (Server("10.96.0.10", 80),)
    assert "headless" in reasons(t, "h")[0]
    assert "clusterIP is missing" in reasons(t, "m")[0]


def test_external_name() -> None:
    ext = svc("rds", [{"port": 3306, "targetPort": 9999}], type="ExternalName",
              externalName="db.example.com")
    t = run([ext], external={"db.example.com": ("192.0.2.2", "192.0.2.1", "2001:db8::1")})
    assert servers(t, "default/rds:3306") == (
        Server("192.0.2.1", 3306), Server("192.0.2.2", 3306), Server("2001:db8::1", 3306))
    unresolved = run([ext])
    assert [r.prefix for r in unresolved.http] == ["/rds:3306"]
    assert servers(unresolved, "default/rds:3306") == ()


# -- tcp services -------------------------------------------------------------------------------


def test_tcp_services() -> None:
    services = [svc("mysql", [{"port": 3306}]),
                svc("nginxsvc", [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]),
                svc("single", [{"port": 5000}]), svc("multi", [{"port": 1}, {"port": 2}])]
    t = run(services, tcp_services=(("mysql", 3306), ("nginxsvc", 443), ("single", 6000),
                                    ("multi", 3)))
    assert t.tcp == (
        TcpFrontend("nginxsvc", 443, "default/nginxsvc:443"),
        TcpFrontend("mysql", 3306, "default/mysql:3306"),
        TcpFrontend("single", 6000, "default/single:5000"),
    )
    assert [r.prefix for r in t.http] == ["/nginxsvc", "/multi:1", "/multi:2"]
    assert reasons(t) == ["--tcp-services lists multi:3 but the service has no TCP port 3"]


@pytest.mark.parametrize(("listen", "ok"), [(80, False), (1936, False), (8081, False),
                                            (443, True), (3306, True)])
def test_tcp_frontend_cannot_take_a_reserved_port(listen: int, ok: bool) -> None:
    t = run([svc("db", [{"port": 3306}])], tcp_services=(("db", listen),))
    assert bool(t.tcp) is ok
    assert t.backends == (() if not ok else t.backends)
    if not ok:
        assert reasons(t, "db")[0].startswith(f"TCP port {listen} is the ")


def test_tcp_frontend_cannot_take_https_port_when_tls_routes_exist() -> None:
    t = run([svc("db", [{"port": 3306}]), svc("s", annotations={P + "lb.sslTerm": "true"})],
            tcp_services=(("db", 443),))
    assert t.tcp == () and reasons(t, "db") == ["TCP port 443 is the HTTPS port"]


def test_tcp_port_collision_across_namespaces() -> None:
    t = run([svc("mysql", [{"port": 3306}], ns="b"), svc("mysql", [{"port": 3306}], ns="a")],
            namespaces=(), tcp_services=(("mysql", 3306),))
    assert t.tcp == (TcpFrontend("mysql", 3306, "a/mysql:3306"),)
    assert reasons(t) == ["port 3306: TCP port 3306 is already taken by service a/mysql "
                          "(services share a TCP port only when routed by TLS server name: "
                          "serviceloadbalancer/lb.sslPassthrough with lb.host)"]


def test_ssl_passthrough_services_share_a_port_by_sni() -> None:
    def pt(name: str, host: str | None) -> dict[str, Any]:
        ann = {P + "lb.sslPassthrough": "true"}
        if host:
            ann[P + "lb.host"] = host
        return svc(name, [{"port": 443}], annotations=ann)
    t = run([pt("b", "B.example.com"), pt("a", "a.example.com"), pt("w", "*.example.org"),
             pt("dflt", None), pt("dup", "a.example.com")],
            tcp_services=(("a", 443), ("b", 443), ("w", 443), ("dflt", 443), ("dup", 443)))
    assert t.tcp == (TcpFrontend("a+b+dflt+w", 443, "default/dflt:443", sni=(
        ("*.example.org", "default/w:443"), ("a.example.com", "default/a:443"),
        ("b.example.com", "default/b:443"))),)
    assert reasons(t, "dup") == [
        "port 443: TLS server name a.example.com on TCP port 443 is already taken by "
        "service default/a"]


def test_ssl_passthrough_without_tcp_service_is_an_error() -> None:
    t = run([svc("a", annotations={P + "lb.sslPassthrough": "true", P + "lb.host": "a.b"})])
    assert t.http == () and "needs the service listed in --tcp-services" in reasons(t)[0]


# -- annotations --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("roundrobin", Algorithm.ROUNDROBIN), ("leastconn", Algorithm.LEASTCONN),
    ("first", Algorithm.FIRST), ("source", Algorithm.SOURCE), ("LeastConn", Algorithm.LEASTCONN),
])
def test_algorithm_annotation(value: str, expected: Algorithm) -> None:
    t = run([svc("a", annotations={P + "lb.algorithm": value})])
    assert t.backend("default/a:80").algorithm is expected


def test_unknown_algorithm_falls_back_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pylb.discovery")
    t = run([svc("a", annotations={P + "lb.algorithm": "random"})],
            balance_algorithm=Algorithm.LEASTCONN)
    assert t.backend("default/a:80").algorithm is Algorithm.LEASTCONN
    assert t.skipped == ()
    warn = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "default/a" in warn[0].getMessage()
    assert "'random'" in warn[0].getMessage()


def test_default_algorithm_from_settings() -> None:
    t = run([svc("a")], balance_algorithm=Algorithm.SOURCE)
    assert t.backend("default/a:80").algorithm is Algorithm.SOURCE


R = HttpRoute("a", "/a", "default/a:80")


@pytest.mark.parametrize(("annotations", "spec", "http", "https"), [
    ({P + "lb.host": "Foo.Example.COM"}, {},
     [HttpRoute("a", "/a", "default/a:80", host="foo.example.com")], []),
    ({P + "lb.host": "foo.example.com."}, {},
     [HttpRoute("a", "/a", "default/a:80", host="foo.example.com")], []),
    ({P + "lb.sslTerm": "true"}, {}, [], [HttpRoute("a", "/a", "default/a:80", tls=True)]),
    ({P + "lb.sslTerm": "False"}, {}, [R], []),
    ({P + "lb.aclMatch": "-i /Test"}, {},
     [HttpRoute("/Test", "/Test", "default/a:80", strip_prefix=False, case_insensitive=True)],
     []),
    ({P + "lb.aclMatch": "/test/"}, {},
     [HttpRoute("/test/", "/test/", "default/a:80", strip_prefix=False)], []),
    ({P + "lb.aclMatch": "/"}, {},
     [HttpRoute("/", "/", "default/a:80", strip_prefix=False)], []),
    ({P + "lb.aclMatch": "  -i   /t  "}, {},
     [HttpRoute("/t", "/t", "default/a:80", strip_prefix=False, case_insensitive=True)], []),
    ({P + "lb.sslRedirect": "TRUE"}, {},
     [HttpRoute("a", "/a", "default/a:80", ssl_redirect=True)],
     [HttpRoute("a", "/a", "default/a:80", tls=True)]),
    ({P + "lb.sslRedirect": "true", P + "lb.sslTerm": "true"}, {},
     [HttpRoute("a", "/a", "default/a:80", ssl_redirect=True)],
     [HttpRoute("a", "/a", "default/a:80", tls=True)]),
    ({P + "lb.sslTerm": "true", P + "lb.aclMatch": "-i /test"}, {}, [],
     [HttpRoute("/test", "/test", "default/a:80", strip_prefix=False, case_insensitive=True,
                tls=True)]),
    ({P + "unknown": "x", "other/annotation": "y"}, {}, [R], []),
])
def test_route_annotations(annotations: dict[str, str], spec: dict[str, Any],
                           http: list[HttpRoute], https: list[HttpRoute]) -> None:
    t = run([svc("a", annotations=annotations, **spec)])
    assert list(t.http) == http and list(t.https) == https and t.skipped == ()


@pytest.mark.parametrize(("annotations", "spec", "affinity"), [
    ({}, {}, Affinity.NONE),
    ({}, {"sessionAffinity": "None"}, Affinity.NONE),
    ({}, {"sessionAffinity": "ClientIP"}, Affinity.CLIENT_IP),
    ({P + "lb.cookie-sticky-session": "true"}, {}, Affinity.COOKIE),
    ({P + "lb.cookie-sticky-session": "false"}, {}, Affinity.NONE),
    ({P + "lb.cookie-sticky-session": "true"}, {"sessionAffinity": "ClientIP"}, Affinity.COOKIE),
])
def test_affinity(annotations: dict[str, str], spec: dict[str, Any],
                  affinity: Affinity) -> None:
    t = run([svc("a", annotations=annotations, **spec)])
    assert t.backend("default/a:80").affinity is affinity


def test_tcp_backend_affinity_and_proxy_protocol() -> None:
    ann = {P + "lb.cookie-sticky-session": "true", P + "lb.send-proxy": "v2",
           P + "lb.check-path": "/healthz"}
    t = run([svc("a", [{"port": 80}, {"port": 3306}], annotations=ann,
                 sessionAffinity="ClientIP")], tcp_services=(("a", 3306),))
    tcp = t.backend("default/a:3306")
    http = t.backend("default/a:80")
    assert (tcp.affinity, tcp.proxy_protocol, tcp.check_path) == (
        Affinity.CLIENT_IP, ProxyProtocol.V2, "/healthz")
    assert (http.affinity, http.proxy_protocol, http.check_path) == (
        Affinity.COOKIE, ProxyProtocol.NONE, "/healthz")


@pytest.mark.parametrize(("scope", "annotations", "check", "line"), [
    # --checks=all: every backend, unless the service says lb.check: "false"
    (CheckScope.ALL, {}, True, "balance=roundrobin check"),
    (CheckScope.ALL, {"lb.check": "false"}, False, "balance=roundrobin\n"),
    (CheckScope.ALL, {"lb.check": "TRUE"}, True, "balance=roundrobin check"),
    # --checks=annotated: only what asks, by lb.check or lb.check-path
    (CheckScope.ANNOTATED, {}, False, "balance=roundrobin\n"),
    (CheckScope.ANNOTATED, {"lb.check": "true"}, True, "balance=roundrobin check"),
    (CheckScope.ANNOTATED, {"lb.check-path": "/ready"}, True,
     "balance=roundrobin check check-path=/ready"),
    (CheckScope.ANNOTATED, {"lb.check-path": "/ready", "lb.check": "false"}, False,
     "balance=roundrobin check-path=/ready\n"),
    # --checks=off: nothing, whatever the annotations say
    (CheckScope.OFF, {"lb.check": "true"}, False, "balance=roundrobin\n"),
    (CheckScope.OFF, {"lb.check-path": "/ready"}, False, "balance=roundrobin check-path=/ready\n"),
])
def test_check_scope_and_annotation(scope: CheckScope, annotations: dict[str, str],
                                    check: bool, line: str) -> None:
    t = run([svc("a", annotations={P + k: v for k, v in annotations.items()})],
            checks=CheckSettings(scope=scope))
    assert t.backend("default/a:80").check is check
    assert f"backend default/a:80 {line}" in t.render()


@pytest.mark.parametrize(("value", "expected"), [("v1", ProxyProtocol.V1),
                                                 ("V2", ProxyProtocol.V2)])
def test_send_proxy(value: str, expected: ProxyProtocol) -> None:
    t = run([svc("a", [{"port": 3306}], annotations={P + "lb.send-proxy": value})],
            tcp_services=(("a", 3306),))
    assert t.backend("default/a:3306") == Backend("default/a:3306", proxy_protocol=expected,
                                                  check=True)


def test_error_limit_annotation() -> None:
    t = run([svc("a", annotations={P + "lb.error-limit": "0"}), svc("b")])
    assert t.backend("default/a:80").error_limit == 0  # never eject
    assert t.backend("default/b:80").error_limit is None  # --error-limit
    assert "backend default/a:80 balance=roundrobin check error-limit=0" in t.render()


def test_slash_redirect_annotation() -> None:
    t = run([svc("a", annotations={P + "lb.slash-redirect": "true"}),
             svc("b", annotations={P + "lb.slash-redirect": "true",
                                   P + "lb.aclMatch": "/keep"}), svc("c")])
    routes = {r.name: r for r in t.http}
    assert routes["a"].slash_redirect  # a stripping route
    assert not routes["/keep"].slash_redirect  # aclMatch keeps the prefix: nothing to do
    assert not routes["c"].slash_redirect  # the 2015 default
    assert "route /a -> default/a:80 redirect-slash" in t.render()


@pytest.mark.parametrize(("port", "annotations", "h2c"), [
    ({"port": 80}, {}, False),
    ({"port": 80, "appProtocol": "kubernetes.io/h2c"}, {}, True),
    ({"port": 80, "appProtocol": "grpc"}, {}, True),
    ({"port": 80, "appProtocol": "http"}, {}, False),
    ({"port": 80}, {"lb.backend-protocol": "h2c"}, True),
    ({"port": 80}, {"lb.backend-protocol": "GRPC"}, True),
    ({"port": 80, "appProtocol": "grpc"}, {"lb.backend-protocol": "http1"}, False),
])
def test_backend_protocol(port: dict[str, Any], annotations: dict[str, str],
                          h2c: bool) -> None:
    t = run([svc("a", [port], annotations={P + k: v for k, v in annotations.items()})])
    backend = t.backend("default/a:80")
    assert backend.h2c is h2c
    assert ("proto=h2c" in backend.render()) is h2c


# Every malformed input skips that one service (the good one beside it stays) with a reason
# that names the problem.
BAD: list[tuple[str, Any, str]] = [
    ("bool annotation", svc("bad", annotations={P + "lb.sslTerm": "yes"}), "lb.sslTerm"),
    ("bool annotation 2", svc("bad", annotations={P + "lb.sslRedirect": "1"}), "lb.sslRedirect"),
    ("bool cookie", svc("bad", annotations={P + "lb.cookie-sticky-session": ""}),
     "lb.cookie-sticky-session"),
    ("non-string annotation", svc("bad", annotations={P + "lb.sslTerm": True}),
     "must be a string"),
    ("annotations not a map", svc("bad", annotations=["x"]), "annotations is not an object"),  # type: ignore[arg-type]
    ("bad host", svc("bad", annotations={P + "lb.host": "foo_bar.com"}), "lb.host"),
    ("backend protocol", svc("bad", annotations={P + "lb.backend-protocol": "h3"}),
     "lb.backend-protocol"),
    ("host with space", svc("bad", annotations={P + "lb.host": "a b"}), "lb.host"),
    ("empty host", svc("bad", annotations={P + "lb.host": ""}), "lb.host"),
    ("long label", svc("bad", annotations={P + "lb.host": "a" * 64 + ".com"}), "lb.host"),
    ("wildcard host", svc("bad", annotations={P + "lb.host": "*.a.com"}), "wildcard"),
    ("aclMatch no slash", svc("bad", annotations={P + "lb.aclMatch": "test"}), "lb.aclMatch"),
    ("aclMatch two paths", svc("bad", annotations={P + "lb.aclMatch": "/a /b"}), "lb.aclMatch"),
    ("aclMatch only -i", svc("bad", annotations={P + "lb.aclMatch": "-i"}), "lb.aclMatch"),
    ("aclMatch query", svc("bad", annotations={P + "lb.aclMatch": "/a?b"}), "lb.aclMatch"),
    ("send-proxy", svc("bad", annotations={P + "lb.send-proxy": "v3"}), "lb.send-proxy"),
    ("send-proxy none", svc("bad", annotations={P + "lb.send-proxy": "none"}), "lb.send-proxy"),
    ("check-path", svc("bad", annotations={P + "lb.check-path": "healthz"}), "lb.check-path"),
    ("check-path space", svc("bad", annotations={P + "lb.check-path": "/a b"}), "lb.check-path"),
    ("check", svc("bad", annotations={P + "lb.check": "yes"}), "lb.check"),
    ("error-limit", svc("bad", annotations={P + "lb.error-limit": "-1"}), "lb.error-limit"),
    ("slash-redirect", svc("bad", annotations={P + "lb.slash-redirect": "yes"}),
     "lb.slash-redirect"),
    ("error-limit word", svc("bad", annotations={P + "lb.error-limit": "few"}),
     "lb.error-limit"),
    ("passthrough bool", svc("bad", annotations={P + "lb.sslPassthrough": "on"}),
     "lb.sslPassthrough"),
    ("port string", svc("bad", [{"port": "80"}]), "spec.ports[0].port"),
    ("port bool", svc("bad", [{"port": True}]), "spec.ports[0].port"),
    ("port float", svc("bad", [{"port": 80.0}]), "spec.ports[0].port"),
    ("port zero", svc("bad", [{"port": 0}]), "spec.ports[0].port"),
    ("port too big", svc("bad", [{"port": 70000}]), "spec.ports[0].port"),
    ("port missing", svc("bad", [{"name": "x"}]), "spec.ports[0].port"),
    ("port not object", svc("bad", [80]), "spec.ports[0] is not an object"),
    ("port name not str", svc("bad", [{"port": 80, "name": 5}]), "spec.ports[0].name"),
    ("targetPort float", svc("bad", [{"port": 80, "targetPort": 1.5}]), "targetPort"),
    ("targetPort empty", svc("bad", [{"port": 80, "targetPort": ""}]), "targetPort"),
    ("targetPort too big", svc("bad", [{"port": 80, "targetPort": "99999"}]), "targetPort"),
    ("duplicate port", svc("bad", [{"port": 80}, {"port": 80}]), "twice"),
    ("protocol", svc("bad", [{"port": 80, "protocol": "HTTP"}]), "protocol"),
    ("ports empty", svc("bad", []), "spec.ports is missing or empty"),
    ("ports not list", svc("bad", {"port": 80}), "spec.ports is missing or empty"),  # type: ignore[arg-type]
    ("no spec", {"metadata": {"name": "bad", "namespace": "default"}}, "spec is not an object"),
    ("spec list", {"metadata": {"name": "bad", "namespace": "default"}, "spec": []},
     "spec is not an object"),
    ("type", svc("bad", type="Weird"), "spec.type"),
    ("type int", svc("bad", type=3), "spec.type"),
    ("affinity", svc("bad", sessionAffinity="Cookie"), "sessionAffinity"),
    ("external no name", svc("bad", type="ExternalName"), "spec.externalName"),
    ("no name", {"metadata": {"namespace": "default"}, "spec": {"ports": [{"port": 80}]}},
     "metadata.name"),
    ("name not str", {"metadata": {"name": 7, "namespace": "default"}, "spec": {}},
     "metadata.name"),
    ("no namespace", {"metadata": {"name": "bad"}, "spec": {"ports": [{"port": 80}]}},
     "metadata.namespace"),
    ("no metadata", {"spec": {"ports": [{"port": 80}]}}, "metadata"),
    ("not a dict", ["Service"], "Service is not an object"),
    ("none", None, "Service is not an object"),
]


@pytest.mark.parametrize(("bad", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_service_input_skips_that_service(bad: Any, reason: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    t = run([svc("good"), bad])
    assert t.http == (HttpRoute("good", "/good", "default/good:80"),)
    assert len(t.skipped) == 1, t.skipped
    assert reason in t.skipped[0].reason
    assert "internal error" not in t.skipped[0].reason
    assert any(r.levelno == logging.WARNING and reason in r.getMessage()
               for r in caplog.records)


BAD_EP: list[tuple[str, Any, str]] = [
    ("slice not dict", {"metadata": {"namespace": "default", "labels": {
        "kubernetes.io/service-name": "bad"}}, "addressType": "IPv4", "endpoints": "x"},
     "endpoints is not a list"),
    ("address type", {**eps("bad", [ep("10.0.0.1")]), "addressType": "IPv5"}, "addressType"),
    ("bad ip", eps("bad", [ep("10.0.0.300")]), "not an IP address"),
    ("ip not str", eps("bad", [{"addresses": [10]}]), "addresses[0] is not a string"),
    ("no addresses", eps("bad", [{"addresses": []}]), "addresses is empty"),
    ("endpoint not dict", eps("bad", ["10.0.0.1"]), "endpoints[0] is not an object"),
    ("conditions", eps("bad", [ep("10.0.0.1", ready="yes")]), "conditions.ready"),
    ("conditions list", eps("bad", [{"addresses": ["10.0.0.1"], "conditions": []}]),
     "conditions is not an object"),
    ("slice port", eps("bad", [ep("10.0.0.1")], [{"port": "80"}]), "ports[0].port"),
    ("slice ports", eps("bad", [ep("10.0.0.1")], {"port": 80}), "ports is not a list"),  # type: ignore[arg-type]
    ("target ref", eps("bad", [{"addresses": ["10.0.0.1"], "targetRef": {"name": 3}}]),
     "targetRef.name"),
]


@pytest.mark.parametrize(("bad", "reason"), [b[1:] for b in BAD_EP], ids=[b[0] for b in BAD_EP])
def test_bad_endpointslice_skips_its_service(bad: Any, reason: str) -> None:
    t = run([svc("good"), svc("bad")], [eps("good", [ep("10.0.0.1")]), bad])
    assert [r.name for r in t.http] == ["good"]
    assert len(t.skipped) == 1 and reason in t.skipped[0].reason, t.skipped


BAD_LEGACY: list[tuple[str, Any, str]] = [
    ("subsets", legacy("bad", {"a": 1}), "subsets is not a list"),  # type: ignore[arg-type]
    ("subset", legacy("bad", [1]), "subsets[0] is not an object"),
    ("ip", legacy("bad", [{"addresses": [{"ip": "x"}], "ports": [{"port": 80}]}]),
     "not an IP address"),
    ("address", legacy("bad", [{"addresses": ["10.0.0.1"], "ports": [{"port": 80}]}]),
     "addresses[0] is not an object"),
    ("port", legacy("bad", [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": -1}]}]),
     "ports[0].port"),
]


@pytest.mark.parametrize(("bad", "reason"), [b[1:] for b in BAD_LEGACY],
                         ids=[b[0] for b in BAD_LEGACY])
def test_bad_legacy_endpoints_skip_their_service(bad: Any, reason: str) -> None:
    t = run([svc("good"), svc("bad")], [], [bad])
    assert [r.name for r in t.http] == ["good"]
    assert len(t.skipped) == 1 and reason in t.skipped[0].reason, t.skipped


def test_unattributable_endpoint_objects_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    t = run([svc("a")], [None, {"metadata": {"namespace": "default"}}, eps("a", [ep("10.0.0.1")])],
            [7, {"metadata": {}}])
    assert servers(t, "default/a:80") == (Server("10.0.0.1", 80),)
    assert t.skipped == ()
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 4


def test_skips_are_rendered() -> None:
    t = run([svc("a", [{"port": 5, "protocol": "UDP"}]), svc("b", type="LoadBalancer")])
    assert t.render().endswith(
        "skipped default/a: port 5/UDP: only TCP is balanced\n"
        "skipped default/b: type LoadBalancer is served by a cloud load balancer (set "
        "spec.loadBalancerClass: pylb.io/lb to have pylb serve it)\n")


def test_collisions_on_acl_prefix_and_host() -> None:
    t = run([svc("a", annotations={P + "lb.aclMatch": "-i /x"}),
             svc("b", annotations={P + "lb.aclMatch": "/X"}),
             svc("c", annotations={P + "lb.host": "h.example"}),
             svc("d", annotations={P + "lb.host": "H.example"}),
             svc("e", annotations={P + "lb.host": "h.example", P + "lb.sslTerm": "true"})])
    assert sorted(r.backend for r in t.http) == ["default/a:80", "default/c:80"]
    assert [r.backend for r in t.https] == ["default/e:80"]
    assert reasons(t, "b") == ["port 80: route /X on the http frontend is already taken by "
                               "service default/a"]
    assert reasons(t, "d") == ["port 80: host h.example on the http frontend is already "
                               "taken by service default/c"]


# -- never raises --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(
        ["", "80", "http", "TCP", "UDP", "IPv4", "IPv6", "FQDN", "10.0.0.1", "::1", "true",
         "-i /x", "/x", "default", "a", "ExternalName", "LoadBalancer", "None", "ClientIP"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["metadata", "spec", "ports", "port", "targetPort", "name",
                         "namespace", "annotations", "labels", "endpoints", "addresses",
                         "conditions", "ready", "serving", "terminating", "addressType",
                         "protocol", "type", "subsets", "ip", "clusterIP", "externalName",
                         "kubernetes.io/service-name", P + "lb.host", P + "lb.aclMatch"]),
        children, max_size=5),
    max_leaves=25)


@hsettings(max_examples=150, deadline=None)
@given(st.lists(json_values, max_size=3), st.lists(json_values, max_size=3),
       st.lists(json_values, max_size=2))
def test_translate_never_raises(services: list[Any], slices: list[Any],
                                endpoints: list[Any]) -> None:
    logging.getLogger("pylb.discovery").disabled = True
    try:
        t = run([*services, svc("a")], slices, endpoints, namespaces=())
        again = run([svc("a"), *services[::-1]], slices[::-1], endpoints[::-1], namespaces=())
    finally:
        logging.getLogger("pylb.discovery").disabled = False
    assert all("internal error" not in s.reason for s in t.skipped)
    assert t == again and t.render() == again.render()


def test_permutations_of_a_small_cluster_render_identically() -> None:
    objs = [svc("a"), svc("b", [{"port": 8080}]), svc("a", ns="x")]
    renders = {run(list(p), namespaces=()).render() for p in itertools.permutations(objs)}
    assert len(renders) == 1


# Near-valid objects reach the deep paths that random JSON rarely does.
ann_values = st.sampled_from(["true", "false", "TRUE", "yes", "", "/x", "-i /x", "x.example",
                              "v1", "v3", "leastconn", "bogus", "*.x.example"])
annotation_maps = st.dictionaries(
    st.sampled_from([P + k for k in ("lb.algorithm", "lb.host", "lb.sslTerm", "lb.aclMatch",
                                     "lb.cookie-sticky-session", "lb.sslRedirect",
                                     "lb.sslPassthrough", "lb.send-proxy", "lb.check-path",
                                     "lb.check")]),
    ann_values, max_size=4)
port_numbers = st.sampled_from([80, 443, 3306, 8080, "80", None, 0, True])
service_ports = st.lists(st.fixed_dictionaries({"port": port_numbers}, optional={
    "name": st.sampled_from(["", "http", "https"]),
    "targetPort": st.sampled_from([8080, "http", "8080", 80, None]),
    "protocol": st.sampled_from(["TCP", "UDP", "tcp"]),
}), max_size=3)
near_services = st.builds(
    lambda name, ns, ports, ann, kind, cip: svc(name, ports, ns, ann, type=kind,
                                                 clusterIP=cip, externalName="db.example"),
    st.sampled_from(["a", "b", "mysql"]), st.sampled_from(["default", "x"]), service_ports,
    annotation_maps, st.sampled_from(["ClusterIP", "LoadBalancer", "ExternalName", "NodePort"]),
    st.sampled_from(["10.96.0.1", "None", None]))
conditions = st.fixed_dictionaries({}, optional={
    k: st.sampled_from([True, False, None]) for k in ("ready", "serving", "terminating")})
near_slices = st.builds(
    lambda name, ns, addrs, ports, conds, fam: eps(
        name, [ep(a, **c) for a, c in zip(addrs, conds, strict=False)], ports, ns, fam),
    st.sampled_from(["a", "b", "mysql"]), st.sampled_from(["default", "x"]),
    st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1", "bad"]), max_size=3),
    st.lists(st.fixed_dictionaries({"port": st.sampled_from([80, 8080, 3306])}, optional={
        "name": st.sampled_from(["", "http"])}), max_size=2),
    st.lists(conditions, min_size=3, max_size=3),
    st.sampled_from(["IPv4", "IPv6", "FQDN"]))


@hsettings(max_examples=100, deadline=None)
@given(st.lists(near_services, max_size=5), st.lists(near_slices, max_size=4),
       st.sampled_from([(), (("mysql", 3306),), (("a", 443), ("b", 443))]),
       st.booleans())
def test_near_valid_clusters_never_raise_and_do_not_depend_on_order(
        services: list[Any], slices: list[Any], tcp: tuple[tuple[str, int], ...],
        forward: bool) -> None:
    logging.getLogger("pylb.discovery").disabled = True
    try:
        kw: dict[str, Any] = {"namespaces": (), "tcp_services": tcp, "forward_services": forward,
                              "external": {"db.example": ("192.0.2.1",)}}
        t = run(services, slices, **kw)
        again = run(services[::-1], slices[::-1], **kw)
    finally:
        logging.getLogger("pylb.discovery").disabled = False
    assert all("internal error" not in s.reason for s in t.skipped)
    assert t == again and t.render() == again.render()


@pytest.mark.parametrize("text", [
    "0.0.0.0", "127.1.2.3", "255.255.255.255", "199.249.250.251", "10.0.0.1",
    "256.1.1.1", "01.2.3.4", "1.2.3.04", "0.0.0.00", "1.2.3", "1.2.3.4.5", "10.0.0.1 ",
    "1.2.3.4\n", "\u0661.2.3.4", "", "::1", "::ffff:1.2.3.4", "2001:DB8::1", "fe80::1%eth0",
    "1.2.3.4%eth0",
])
def test_canonical_ip_is_ipaddress_text(text: str) -> None:
    """The IPv4 fast path (a regular expression, the input returned as is) agrees with
    ipaddress on every form, canonical or not."""
    from discovery.translate import _canonical_ip

    try:
        want: str | None = str(ipaddress.ip_address(text))
    except ValueError:
        want = None
    got = _canonical_ip(text)
    assert got == want
    if want == text:
        assert got is text or ":" in text  # no second copy of a canonical IPv4 address


# -- protecting backends: lb.maxconn, lb.rate-limit ---------------------------------------------


def test_maxconn_and_rate_limit_annotations_and_their_flags() -> None:
    from pylb.config import Limits

    services = [svc("a", annotations={P + "lb.maxconn": "25", P + "lb.rate-limit": "10/s"}),
                svc("b"),
                svc("c", annotations={P + "lb.maxconn": "0", P + "lb.rate-limit": "off"}),
                svc("db", [{"port": 3306}], annotations={P + "lb.maxconn": "4",
                                                        P + "lb.rate-limit": "1/s,burst=5"})]
    t = run(services, tcp_services=(("db", 3306),))
    assert (t.backend("default/a:80").maxconn, t.backend("default/a:80").rate_limit) == \
        (25, (10.0, 10))
    assert (t.backend("default/b:80").maxconn, t.backend("default/b:80").rate_limit) == \
        (0, None)
    assert t.backend("default/db:3306").maxconn == 4
    assert t.backend("default/db:3306").rate_limit == (1.0, 5)
    assert "maxconn=25 rate-limit=10/s,burst=10" in t.render()
    # The flags are the defaults of services without the annotations; "0"/"off" lift them.
    t = run(services, limits=Limits(server_maxconn=100, rate_limit=(50.0, 100)))
    assert (t.backend("default/b:80").maxconn, t.backend("default/b:80").rate_limit) == \
        (100, (50.0, 100))
    assert (t.backend("default/c:80").maxconn, t.backend("default/c:80").rate_limit) == \
        (0, None)
    assert t.backend("default/a:80").maxconn == 25


@pytest.mark.parametrize(("key", "value"), [("lb.maxconn", "-1"), ("lb.maxconn", "many"),
                                            ("lb.rate-limit", "fast"),
                                            ("lb.rate-limit", "10/s,burst=0")])
def test_bad_protection_annotations_skip_the_service(key: str, value: str) -> None:
    t = run([svc("a", annotations={P + key: value}), svc("ok")])
    assert [r.name for r in t.http] == ["ok"]
    assert len(reasons(t, "a")) == 1 and key in reasons(t, "a")[0]
