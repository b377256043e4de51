"""The status publisher's decisions, as tables over plain data."""

from __future__ import annotations

from typing import Any

import pytest

from election.publish import (
    ServiceEvent,
    event_name,
    events_to_send,
    exposed_services,
    ingress_patch,
    node_addresses,
    plan_events,
    retry_delay,
    wants_status,
)
from pylb.kubeapi import ApiError
from pylb.model import Backend, HttpRoute, RouteTable, Server, SkippedService, TcpFrontend

WEB = Backend("shop/web:80", (Server("10.0.0.1", 8080),))
API = Backend("shop/api:8443", (Server("10.0.0.2", 8443),))
DB = Backend("data/mysql:3306", (Server("10.0.0.3", 3306),))

TABLE = RouteTable(
    http=(HttpRoute("web", "/web", "shop/web:80"),
          HttpRoute("api:8443", "/api:8443", "shop/api:8443", host="api.example.com")),
    https=(HttpRoute("web", "/web", "shop/web:80", tls=True),),
    tcp=(TcpFrontend("mysql", 3306, "data/mysql:3306"),),
    backends=(WEB, API, DB),
    skipped=(SkippedService("shop", "legacy", "type LoadBalancer without class pylb.io/lb"),
             SkippedService("shop", "broken", "bad annotation lb.algorithm: 'fastest'"),
             SkippedService("shop", "broken", "no ports")),
)


def test_exposed_services_say_how() -> None:
    assert exposed_services(TABLE) == {
        ("shop", "web"): ["http /web", "https /web"],
        ("shop", "api"): ["http host=api.example.com /api:8443"],
        ("data", "mysql"): ["tcp :3306"],
    }


def test_sni_frontend_exposes_each_backend() -> None:
    t = RouteTable(tcp=(TcpFrontend("tls", 443, "", sni=(("a.example", "shop/web:80"),)),),
                   backends=(WEB,))
    assert exposed_services(t) == {("shop", "web"): ["tcp :443 sni=a.example"]}


def test_plan_events_one_per_service_and_reason() -> None:
    planned = plan_events(TABLE)
    assert planned[("shop", "web", "Exposed")] == ServiceEvent(
        "shop", "web", "Normal", "Exposed", "exposed by pylb: http /web, https /web")
    broken = planned[("shop", "broken", "NotExposed")]
    assert broken.type == "Warning"
    assert broken.message == ("not exposed by pylb: bad annotation lb.algorithm: 'fastest'; "
                              "no ports")
    assert len(planned) == 5


DEDUP = [
    ("nothing sent yet: all", {}, 5),
    ("all sent: none", "all", 0),
    ("one message changed", "changed", 1),
]


@pytest.mark.parametrize(("sent", "count"), [d[1:] for d in DEDUP], ids=[d[0] for d in DEDUP])
def test_events_to_send_deduplicates(sent: Any, count: int) -> None:
    planned = plan_events(TABLE)
    if sent == "all":
        sent = {k: e.message for k, e in planned.items()}
    elif sent == "changed":
        sent = {k: e.message for k, e in planned.items()}
        sent[("shop", "web", "Exposed")] = "exposed by pylb: http /web"
    assert len(events_to_send(planned, sent)) == count


def test_event_name_is_stable_and_distinct() -> None:
    e = ServiceEvent("shop", "web", "Normal", "Exposed", "exposed by pylb: http /web")
    name = event_name("web", "uid-1", e)
    assert name == event_name("web", "uid-1", e)
    assert name.startswith("web.pylb-") and len(name) == len("web.pylb-") + 12
    assert name != event_name("web", "uid-2", e)


def pod(ip: str | None, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"pylb-{ip}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-21T22:00:00Z"
    status: dict[str, Any] = {"conditions": [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Ready", "status": "True" if ready else "False"}]}
    if ip is not None:
        status["hostIP"] = ip
    return {"metadata": meta, "status": status}


def test_node_addresses_of_ready_pods_only() -> None:
    pods = [pod("192.168.1.20"), pod("192.168.1.3"), pod("192.168.1.3"),
            pod("192.168.1.9", ready=False), pod("192.168.1.8", deleting=True), pod(None),
            pod("fd00::1"), {"metadata": {}, "status": {"hostIP": "192.168.1.7"}}]
    assert node_addresses(pods) == ["192.168.1.3", "192.168.1.20", "fd00::1"]


def svc(type_: str = "LoadBalancer", cls: str | None = "pylb.io/lb",
        ingress: list[dict[str, str]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_}
    if cls is not None:
        spec["loadBalancerClass"] = cls
    status: dict[str, Any] = {"loadBalancer": {}}
    if ingress is not None:
        status["loadBalancer"]["ingress"] = ingress
    return {"metadata": {"name": "web", "namespace": "shop"}, "spec": spec, "status": status}


@pytest.mark.parametrize(("service", "wanted"), [
    (svc(), True), (svc(cls=None), False), (svc(cls="metallb"), False),
    (svc(type_="ClusterIP"), False), ({}, False),
])
def test_wants_status(service: dict[str, Any], wanted: bool) -> None:
    assert wants_status(service) is wanted


IPS = ["10.0.0.1", "10.0.0.2"]
PATCHES = [
    ("empty → addresses", svc(), IPS, True, [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]),
    ("already right", svc(ingress=[{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]), IPS, True, None),
    ("a node left", svc(ingress=[{"ip": "10.0.0.1"}, {"ip": "10.0.0.9"}]), IPS, True,
     [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]),
    ("not exposed: cleared", svc(ingress=[{"ip": "10.0.0.1"}]), IPS, False, []),
    ("not exposed, already clear", svc(), IPS, False, None),
    ("no ready pods: cleared", svc(ingress=[{"ip": "10.0.0.1"}]), [], True, []),
]


@pytest.mark.parametrize(("service", "ips", "exposed", "ingress"), [p[1:] for p in PATCHES],
                         ids=[p[0] for p in PATCHES])
def test_ingress_patch(service: dict[str, Any], ips: list[str], exposed: bool,
                       ingress: list[dict[str, str]] | None) -> None:
    patch = ingress_patch(service, ips, exposed)
    if ingress is None:
        assert patch is None
    else:
        assert patch == {"status": {"loadBalancer": {"ingress": ingress}}}


@pytest.mark.parametrize(("exc", "resync", "expected"), [
    (TimeoutError(), 10.0, 2.0),
    (ApiError(0, "ClientConnectorError", "refused"), 10.0, 2.0),
    (ApiError(429, "TooManyRequests", "slow down", retry_after=5.0), 10.0, 5.0),
    (ApiError(429, "TooManyRequests", "slow down", retry_after=120.0), 10.0, 10.0),
    (ApiError(503, "ServiceUnavailable", "x", retry_after=1.0), 10.0, 2.0),
    (TimeoutError(), 1.0, 1.0),
])
def test_retry_delay_honours_retry_after_up_to_the_resync(
        exc: BaseException, resync: float, expected: float) -> None:
    assert retry_delay(exc, resync) == expected
