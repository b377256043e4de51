"""The conformance harness: the upstream manifests (tests/gateway/conformance, Apache-2.0,
see LICENSE and UPSTREAM_COMMIT there) loaded as a cluster would hold them, translated by
discovery.gateway, and requests answered by proxy.http.gwrouting as pylb's Gateway listeners
answer them.

`Cluster.load(*names)` reads `base-manifests.yaml` and the named test manifests;
`cluster.plan()` translates; `Client(plan).get(gateway, path, host=, headers=, method=)`
gives the `Decision` the listener on that Gateway's address makes. Each Gateway gets its own
address from a pool, 127.0.10.x, as the issue asks.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from discovery.gateway.secrets import valid_tls_secret
from discovery.gateway.translate import GatewayInputs, GatewaySettings, translate
from discovery.secrets import by_ident
from proxy.certs import generate_self_signed
from proxy.http.gwrouting import Decision, GatewayRouter
from pylb.gatewaymodel import GatewayPlan

HERE = Path(__file__).parent / "conformance"
INFRA = "gateway-conformance-infra"
WEB = "gateway-conformance-web-backend"
APP = "gateway-conformance-app-backend"
CLASS = "pylb"
POOL = tuple(f"127.0.10.{i}" for i in range(1, 60))

JsonObj = dict[str, Any]
# the kinds the Gateway source watches, by the plural its informers use
PLURALS = {"GatewayClass": "gatewayclasses", "Gateway": "gateways", "HTTPRoute": "httproutes",
           "TLSRoute": "tlsroutes", "TCPRoute": "tcproutes",
           "ReferenceGrant": "referencegrants", "Service": "services",
           "Namespace": "namespaces"}


# The names the suite's TLS Secrets' certificate covers (it makes them itself, self-signed)
TLS_NAMES = ("example.org", "second-example.org", "unknown-example.org", "*.wildcard.org",
             "secure.test.com")


@functools.cache
def tls_secret(ns: str, name: str, names: tuple[str, ...] = TLS_NAMES) -> JsonObj:
    """A kubernetes.io/tls Secret with a fresh self-signed certificate for `names`."""
    pem = generate_self_signed(list(names))
    cut = pem.index(b"-----BEGIN", pem.index(b"-----END"))
    first, second = pem[:cut], pem[cut:]
    crt, key = (first, second) if b"CERTIFICATE" in first.split(b"\n", 1)[0] else \
        (second, first)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"namespace": ns, "name": name},
            "data": {"tls.crt": base64.b64encode(crt).decode(),
                     "tls.key": base64.b64encode(key).decode()}}


def suite_secrets() -> list[JsonObj]:
    """The TLS Secrets the suite creates before the tests."""
    return [tls_secret(INFRA, "tls-validity-checks-certificate"), tls_secret(WEB, "certificate")]


def read_manifests(name: str) -> list[JsonObj]:
    path = HERE / name if (HERE / name).exists() else HERE / "tests" / name
    text = path.read_text().replace("{GATEWAY_CLASS_NAME}", CLASS)
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


@dataclass
class Cluster:
    """Objects by kind, in the order they were applied (which gives creationTimestamps)."""

    objects: list[JsonObj] = field(default_factory=list)

    @classmethod
    def load(cls, *names: str) -> Cluster:
        c = cls()
        c.objects.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                          "metadata": {"name": CLASS},
                          "spec": {"controllerName": "pylb.io/gateway-controller"}})
        for name in ("base-manifests.yaml", *names):
            c.objects += read_manifests(name)
        for i, obj in enumerate(c.objects):
            meta = obj.setdefault("metadata", {})
            meta.setdefault("generation", 1)
            meta["creationTimestamp"] = f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z"
        return c

    def kind(self, kind: str) -> list[JsonObj]:
        return [o for o in self.objects if o.get("kind") == kind]

    def inputs(self) -> GatewayInputs:
        services: dict[tuple[str, str], tuple[int, ...]] = {}
        for s in self.kind("Service"):
            meta = s["metadata"]
            services[(meta.get("namespace", "default"), meta["name"])] = tuple(
                p["port"] for p in s.get("spec", {}).get("ports", []))
        namespaces: Mapping[str, Mapping[str, str]] = {
            n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in self.kind("Namespace")}
        # the suite creates its TLS Secrets itself (valid certificate and key); a test's
        # manifests add others (`malformed-certificate`, which is no valid TLS secret)
        objs = by_ident([*suite_secrets(), *self.kind("Secret")])
        secrets = frozenset(k for k, obj in objs.items() if valid_tls_secret(obj))
        return GatewayInputs(self.kind("GatewayClass"), self.kind("Gateway"),
                             self.kind("HTTPRoute"), self.kind("ReferenceGrant"), services,
                             namespaces, secrets, secret_objects=objs,
                             tlsroutes=self.kind("TLSRoute"), tcproutes=self.kind("TCPRoute"))

    def stores(self) -> dict[str, dict[tuple[str, str], JsonObj]]:
        """The objects as the Gateway source's informers hold them: by plural, then by
        (namespace, name)."""
        out: dict[str, dict[tuple[str, str], JsonObj]] = {p: {} for p in PLURALS.values()}
        for obj in self.objects:
            plural = PLURALS.get(obj.get("kind", ""))
            if plural is not None:
                meta = obj["metadata"]
                ns = meta.get("namespace", "default" if plural == "services" else "")
                out[plural][(ns, meta["name"])] = obj
        return out

    def plan(self, l4: bool = False) -> GatewayPlan:
        return translate(self.inputs(), GatewaySettings(address_pool=POOL, l4=l4))


class Client:
    """Requests to a Gateway, as the conformance suite's round tripper sends them."""

    def __init__(self, plan: GatewayPlan) -> None:
        self.plan = plan
        self.routers = {k: GatewayRouter(v) for k, v in plan.by_endpoint().items()}

    def address(self, gateway: str, ns: str = INFRA) -> str:
        status = self.plan.status[("gateways", ns, gateway)]
        return str(status["addresses"][0]["value"])

    def get(self, gateway: str, path: str, host: str = "", headers: Mapping[str, str] = {},
            method: str = "GET", port: int = 80, ns: str = INFRA) -> Decision:
        router = self.routers.get((self.address(gateway, ns), port))
        if router is None:
            return Decision(-1)  # nothing listens: connection refused
        p, _, q = path.partition("?")
        return router.route(host.encode() or self.address(gateway, ns).encode(), method.encode(),
                            p.encode(), (b"?" + q.encode()) if q else b"",
                            [(k.encode(), v.encode()) for k, v in headers.items()])


def condition(status: JsonObj, ctype: str) -> JsonObj:
    for c in status.get("conditions", []):
        if c["type"] == ctype:
            return dict(c)
    raise AssertionError(f"no {ctype} condition in {status}")


def parent(plan: GatewayPlan, route: str, gateway: str, ns: str = INFRA,
           gw_ns: str = INFRA, plural: str = "httproutes") -> JsonObj:
    for p in plan.status[(plural, ns, route)]["parents"]:
        ref = p["parentRef"]
        if ref["name"] == gateway and ref.get("namespace", ns) == gw_ns:
            return dict(p)
    raise AssertionError(f"no parent {gateway} in {route}'s status")


def route_conditions(plan: GatewayPlan, route: str, gateway: str = "same-namespace",
                     ns: str = INFRA) -> dict[str, tuple[str, str]]:
    """{type: (status, reason)} of the route's parent status for `gateway`."""
    p = parent(plan, route, gateway, ns)
    return {c["type"]: (c["status"], c["reason"]) for c in p["conditions"]}


def accepted_and_resolved(plan: GatewayPlan, routes: Iterable[str],
                          gateway: str = "same-namespace", ns: str = INFRA) -> None:
    """GatewayAndHTTPRoutesMustBeAccepted + HTTPRouteMustHaveResolvedRefsConditionsTrue."""
    gw = plan.status[("gateways", INFRA, gateway)]
    assert condition(gw, "Accepted")["status"] == "True"
    assert condition(gw, "Programmed")["status"] == "True"
    assert gw["addresses"]
    for r in routes:
        conds = route_conditions(plan, r, gateway, ns)
        assert conds["Accepted"] == ("True", "Accepted"), (r, conds)
        assert conds["ResolvedRefs"] == ("True", "ResolvedRefs"), (r, conds)


@dataclass(frozen=True)
class ResponseCase:
    """One case of an upstream test that checks response headers: the request, what the
    echo backend is asked to answer with (`X-Echo-Set-Header`), the response headers that
    must arrive (values of a repeated field joined with ",", as the suite's Go client
    joins them) and the ones that must not."""

    path: str
    backend_sets: Mapping[str, str]
    want: Mapping[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()
    request: Mapping[str, str] = field(default_factory=dict)
    want_request: Mapping[str, str] = field(default_factory=dict)  # what the backend saw
    absent_request: tuple[str, ...] = ()


# HTTPRouteResponseHeaderModifier (conformance/tests/httproute-response-header-modifier.go)
RESPONSE_HEADER_MODIFIER_CASES = (
    ResponseCase("/set", {"Some-Other-Header": "val"},
                 {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
    ResponseCase("/set", {"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
                 {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
    ResponseCase("/add", {"Some-Other-Header": "val"},
                 {"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"}),
    ResponseCase("/add", {"Some-Other-Header": "val", "X-Header-Add": "some-other-value"},
                 {"Some-Other-Header": "val",
                  "X-Header-Add": "some-other-value,add-appends-values"}),
    ResponseCase("/remove", {"X-Header-Remove": "val"}, absent=("X-Header-Remove",)),
    ResponseCase("/multiple",
                 {"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                  "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val",
                  "X-Header-Remove-1": "val"},
                 {"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
                  "X-Header-Add-1": "header-add-1", "X-Header-Add-2": "add-val-2,header-add-2",
                  "X-Header-Add-3": "header-add-3", "Another-Header": "another-header-val"},
                 ("X-Header-Remove-1", "X-Header-Remove-2")),
    ResponseCase("/case-insensitivity",
                 {"x-header-set": "original-val-set", "x-header-add": "original-val-add",
                  "x-header-remove": "original-val-remove",
                  "Another-Header": "another-header-val"},
                 {"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add",
                  "X-Lowercase-Add": "lowercase-add", "X-Mixedcase-Add-1": "mixedcase-add-1",
                  "X-Mixedcase-Add-2": "mixedcase-add-2", "X-Uppercase-Add": "uppercase-add",
                  "Another-Header": "another-header-val"},
                 ("x-header-remove", "X-Header-Remove")),
    ResponseCase("/response-and-request-header-modifiers",
                 {"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                  "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val",
                  "X-Header-Remove-1": "remove-val-1", "X-Header-Echo": "echo"},
                 {"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
                  "X-Header-Add-1": "header-add-1", "X-Header-Add-2": "add-val-2,header-add-2",
                  "Another-Header": "another-header-val", "X-Header-Echo": "echo"},
                 ("X-Header-Remove-1", "X-Header-Remove-2"),
                 request={"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1",
                          "X-Header-Echo": "echo"},
                 want_request={"X-Header-Add": "header-val-1",
                               "X-Header-Set": "set-overwrites-values",
                               "X-Header-Add-Append": "append-val-1,header-val-2",
                               "X-Header-Echo": "echo"},
                 absent_request=("X-Header-Remove",)),
)


def echo_set_header(sets: Mapping[str, str]) -> str:
    """The `X-Echo-Set-Header` request header the suite sends: `name:value` pairs joined
    with ","."""
    return ",".join(f"{k}:{v}" for k, v in sets.items())


def joined(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header fields as the suite's Go client sees them: names compared in lower case, the
    values of a repeated field joined with ","."""
    out: dict[str, list[str]] = {}
    for k, v in fields:
        out.setdefault(k.lower(), []).append(v)
    return {k: ",".join(v) for k, v in out.items()}


def judge(seen: Mapping[str, str], want: Mapping[str, str], absent: Iterable[str]) -> None:
    """http.go's check of headers: each wanted one present with that value, each absent one
    missing (`seen` as `joined` gives it)."""
    for name, value in want.items():
        assert seen.get(name.lower()) == value, (name, value, seen)
    for name in absent:
        assert name.lower() not in seen, (name, seen)
