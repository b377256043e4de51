"""The upstream TLSRoute/TCPRoute conformance tests (experimental channel), ported at the
translation level: the same manifests, the same route and listener status the suite waits
for, and which backends each listener's routes lead to (by SNI for TLS passthrough).
With `GatewaySettings(l4=True)` (the live source's) these listeners are Programmed and
bound by proxy/tcp/gwl4.py; without, they stay UnsupportedProtocol. The same scenarios run
on real sockets in tests/gateway/test_l4_live.py."""

from __future__ import annotations

from discovery.gateway.translate import GatewayInputs, GatewaySettings, translate
from pylb.gatewaymodel import GatewayPlan, Listener
from tests.gateway.harness import CLASS, INFRA, Cluster, condition, parent


def l4(plan: GatewayPlan, gateway: str, listener: str) -> Listener:
    for lst in plan.l4_listeners:
        if lst.gateway == f"{INFRA}/{gateway}" and lst.name == listener:
            return lst
    raise AssertionError(f"no L4 listener {gateway}/{listener}")


def conds(plan: GatewayPlan, plural: str, route: str, gateway: str) -> dict[str, tuple[str, str]]:
    p = parent(plan, route, gateway, plural=plural)
    return {c["type"]: (c["status"], c["reason"]) for c in p["conditions"]}


def listener_status(plan: GatewayPlan, gateway: str, name: str) -> dict[str, object]:
    for lst in plan.status[("gateways", INFRA, gateway)]["listeners"]:
        if lst["name"] == name:
            return dict(lst)
    raise AssertionError(name)


def test_TCPRouteInvalidNonTCPListener() -> None:
    plan = Cluster.load("tcproute-invalid-non-tcp-listener.yaml").plan(l4=True)
    assert conds(plan, "tcproutes", "tcp-route", "tcp-mixed-protocol-gateway")["Accepted"] \
        == ("False", "NotAllowedByListeners")
    assert listener_status(plan, "tcp-mixed-protocol-gateway",
                           "only-allow-http-routes")["attachedRoutes"] == 0


def test_TCPRouteInvalidBackendRefNonexistent() -> None:
    plan = Cluster.load("tcproute-invalid-backendref-nonexistent.yaml").plan(l4=True)
    c = conds(plan, "tcproutes", "tcp-route-invalid-backend-ref-nonexistent",
              "tcp-gateway-invalid-backend")
    assert c["ResolvedRefs"] == ("False", "BackendNotFound")
    lst = l4(plan, "tcp-gateway-invalid-backend", "tcp")
    # its share of the connections is refused: no service to send them to
    assert [b.service for r in lst.l4_routes for b in r.backends] == [None]


def test_TCPRouteParentRefPortAndSectionName() -> None:
    plan = Cluster.load("tcproute-parentref-port-and-section-name.yaml").plan(l4=True)
    gw = "tcp-multi-listener-gateway"
    for route in ("tcp-route-by-port", "tcp-route-by-section", "tcp-route-by-section-and-port"):
        assert conds(plan, "tcproutes", route, gw) == {
            "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    for name, svc in (("one", "tcp-echo-one"), ("two", "tcp-echo-two"),
                      ("three", "tcp-echo-three")):
        lst = l4(plan, gw, name)
        assert lst.protocol == "TCP"
        assert [(r.hostname, [b.service for b in r.backends]) for r in lst.l4_routes] == \
            [("", [(INFRA, svc, 3000)])], name
        st = listener_status(plan, gw, name)
        assert st["attachedRoutes"] == 1
        assert st["supportedKinds"] == [{"group": "gateway.networking.k8s.io",
                                         "kind": "TCPRoute"}]
        assert condition(st, "Accepted")["status"] == "True"
        # bound by the data plane (proxy/tcp/gwl4.py) unless the port is unavailable
        assert (condition(st, "Programmed")["status"],
                condition(st, "Programmed")["reason"]) == ("True", "Programmed")
    # nothing of it reaches the HTTP listeners
    assert all(lst.gateway != f"{INFRA}/{gw}" for lst in plan.listeners)


def test_TLSRouteSimpleSameNamespace() -> None:
    plan = Cluster.load("tlsroute-simple-same-namespace.yaml").plan(l4=True)
    assert conds(plan, "tlsroutes", "gateway-conformance-infra-test", "gateway-tlsroute") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    lst = l4(plan, "gateway-tlsroute", "https")
    assert (lst.protocol, lst.port, lst.hostname) == ("TLS", 443, "*.example.com")
    assert [(r.hostname, [(b.service, b.weight) for b in r.backends])
            for r in lst.l4_routes] == [("abc.example.com", [((INFRA, "tcp-backend", 8443), 1)])]


def test_TLSRouteInvalidNoMatchingListenerHostname() -> None:
    plan = Cluster.load("tlsroute-invalid-no-matching-listener-hostname.yaml").plan(l4=True)
    for route, gw in (("tlsroute-hostname-mismatch-1", "gateway-tls-exact-hostname"),
                      ("tlsroute-hostname-mismatch-2", "gateway-tls-wildcard-hostname")):
        assert conds(plan, "tlsroutes", route, gw)["Accepted"] == \
            ("False", "NoMatchingListenerHostname")
        assert listener_status(plan, gw, "tls")["attachedRoutes"] == 0
        assert not l4(plan, gw, "tls").l4_routes


def _gateway(listener: dict[str, object]) -> dict[str, object]:
    return {"kind": "Gateway", "metadata": {"namespace": INFRA, "name": "gw"},
            "spec": {"gatewayClassName": CLASS, "listeners": [listener]}}


def test_tls_terminate_is_refused_and_weights_and_intersection_are_kept() -> None:
    c = Cluster.load()
    c.objects.append(_gateway({"name": "t", "port": 8443, "protocol": "TLS",
                               "hostname": "*.example.com", "tls": {"mode": "Terminate"}}))
    c.objects.append(_gateway({"name": "p", "port": 9443, "protocol": "TLS",
                               "hostname": "*.example.com", "tls": {"mode": "Passthrough"}}))
    c.objects[-1]["metadata"]["name"] = "gw2"
    c.objects.append({"kind": "TLSRoute", "metadata": {"namespace": INFRA, "name": "r"},
                      "spec": {"parentRefs": [{"name": "gw"}, {"name": "gw2"}],
                               "hostnames": ["*.example.com", "a.b.example.com", "x.org"],
                               "rules": [{"backendRefs": [
                                   {"name": "infra-backend-v1", "port": 8080, "weight": 3},
                                   {"name": "infra-backend-v2", "port": 8080, "weight": 1}]}]}})
    plan = c.plan(l4=True)
    st = listener_status(plan, "gw", "t")
    assert (condition(st, "Accepted")["status"], condition(st, "Accepted")["reason"]) == \
        ("False", "UnsupportedProtocol")
    assert conds(plan, "tlsroutes", "r", "gw")["Accepted"] == ("False", "NotAllowedByListeners")
    assert conds(plan, "tlsroutes", "r", "gw2")["Accepted"] == ("True", "Accepted")
    lst = l4(plan, "gw2", "p")
    assert [r.hostname for r in lst.l4_routes] == ["*.example.com", "a.b.example.com"]
    assert [(b.service and b.service[1], b.weight) for b in lst.l4_routes[0].backends] == \
        [("infra-backend-v1", 3), ("infra-backend-v2", 1)]


def test_bad_l4_objects_are_skipped_never_raised() -> None:
    c = Cluster.load("tlsroute-simple-same-namespace.yaml")
    inputs = c.inputs()
    junk: list[object] = [None, 3, {"metadata": {}}, {"metadata": {"name": "x"}, "spec": 7},
                          {"metadata": {"name": "y", "namespace": INFRA},
                           "spec": {"parentRefs": "no", "rules": [None, {"backendRefs": 4}]}}]
    plan = translate(GatewayInputs(inputs.classes, inputs.gateways, (), (), inputs.services,
                                   tlsroutes=[*inputs.tlsroutes, *junk],  # type: ignore[list-item]
                                   tcproutes=junk),  # type: ignore[arg-type]
                     GatewaySettings(l4=True))
    assert l4(plan, "gateway-tlsroute", "https").l4_routes[0].route == \
        f"{INFRA}/gateway-conformance-infra-test"


def test_without_l4_tls_and_tcp_listeners_stay_unsupported() -> None:
    plan = Cluster.load("tlsroute-simple-same-namespace.yaml",
                        "tcproute-invalid-backendref-nonexistent.yaml").plan()
    for gw, name in (("gateway-tlsroute", "https"), ("tcp-gateway-invalid-backend", "tcp")):
        st = listener_status(plan, gw, name)
        assert (condition(st, "Accepted")["status"], condition(st, "Accepted")["reason"]) == \
            ("False", "UnsupportedProtocol")
        assert st["supportedKinds"] == []
    assert not plan.l4_listeners


def test_TLSRouteInvalidBackendRefNonexistent() -> None:
    plan = Cluster.load("tlsroute-invalid-backendref-nonexistent.yaml").plan(l4=True)
    gw = "gateway-tlsroute-invalid-backend-ref-nonexistent"
    assert conds(plan, "tlsroutes", "invalid-backend-ref-nonexistent", gw)["ResolvedRefs"] \
        == ("False", "BackendNotFound")
    # attached, its connections refused: the only backend does not resolve
    assert [b.service for lst in plan.l4_listeners if lst.gateway == f"{INFRA}/{gw}"
            for r in lst.l4_routes for b in r.backends] == [None]


def test_TLSRouteInvalidBackendRefUnknownKind() -> None:
    plan = Cluster.load("tlsroute-invalid-backendref-unknown-kind.yaml").plan(l4=True)
    gw = "gateway-tlsroute-invalid-backend-ref-unknown-kind"
    assert conds(plan, "tlsroutes", "invalid-backend-ref-unknown-kind", gw)["ResolvedRefs"] \
        == ("False", "InvalidKind")
    assert [b.service for lst in plan.l4_listeners if lst.gateway == f"{INFRA}/{gw}"
            for r in lst.l4_routes for b in r.backends] == [None]  # rejected connections


def test_TLSRouteInvalidNoMatchingListener() -> None:
    plan = Cluster.load("tlsroute-invalid-no-matching-listener.yaml").plan(l4=True)
    for route, gw, reason in (
            ("tlsroute-not-allowed-protocol-http", "gateway-tlsroute-http-only",
             "NotAllowedByListeners"),
            ("tlsroute-not-allowed-protocol-https", "gateway-tlsroute-https-only",
             "NotAllowedByListeners"),
            ("tlsroute-no-matching-section-name", "gateway-tlsroute-tls-passthrough-only",
             "NoMatchingParent")):
        assert conds(plan, "tlsroutes", route, gw)["Accepted"] == ("False", reason), route
        # no parent of the route is accepted
        assert all(c["status"] == "False"
                   for p in plan.status[("tlsroutes", INFRA, route)]["parents"]
                   for c in p["conditions"] if c["type"] == "Accepted"), route


def test_TLSRouteListenerPassthroughSupportedKinds() -> None:
    plan = Cluster.load("tlsroute-listener-passthrough-supported-kinds.yaml").plan(l4=True)
    st = listener_status(plan, "gateway-tlsroute-passthrough-supported-kind", "tls-passthrough")
    assert st["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]
    assert (condition(st, "ResolvedRefs")["status"], condition(st, "ResolvedRefs")["reason"]) \
        == ("False", "InvalidRouteKinds")
    assert st["attachedRoutes"] == 0
