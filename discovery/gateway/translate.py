"""Gateway API objects → a `GatewayPlan`: pure functions, every bad object skipped with a
reason (on its status and in `plan.skipped`), never raising.

Inputs are the objects as the API serves them (JSON dicts: CustomObjectsApi's shape), the
Services (namespace, name → ports), the namespaces' labels (for `allowedRoutes.namespaces.
from: Selector`) and the TLS Secrets present. The CRDs' defaults are applied here too, so a
file of manifests that omits them translates as the cluster would store it.

Precedence (GEP-1016/the HTTPRoute spec): a request picks the listener with the most specific
hostname, then among the rules attached there the most specific route hostname, then Exact
path before PathPrefix, the longest prefix, a method match, the most header matches, the most
query matches; ties go to the oldest route, then namespace/name, then rule and match order.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from discovery.secrets import sni_certificates
from pylb.gatewaymodel import (
    DEFAULT_CONTROLLER,
    FRAMING_FIELDS,
    GROUP,
    Filters,
    GatewayPlan,
    HeaderOps,
    JsonObj,
    L4Route,
    Listener,
    PathModifier,
    Redirect,
    Rewrite,
    RouteMatch,
    RuleEntry,
    WeightedBackend,
)
from pylb.model import SniCertificate

HTTP_PROTOCOLS = ("HTTP",)
SERVED_PROTOCOLS = ("HTTP", "HTTPS")
L4_PROTOCOLS = ("TLS", "TCP")  # TLS: mode Passthrough only (proxy/tcp/gwl4.py)
ROUTE_KINDS = {"HTTP": "HTTPRoute", "HTTPS": "HTTPRoute", "TLS": "TLSRoute", "TCP": "TCPRoute"}
REDIRECT_CODES = (301, 302, 303, 307, 308)
_PARAMS_ERR = "pylb takes no infrastructure parameters (parametersRef)"


@dataclass(frozen=True)
class GatewaySettings:
    controller_name: str = DEFAULT_CONTROLLER
    address_pool: tuple[str, ...] = ()  # handed to Gateways without spec.addresses, in order
    node_address: str = "0.0.0.0"
    now: str = "1970-01-01T00:00:00Z"  # lastTransitionTime written on conditions
    # serve TLS (Passthrough) and TCP listeners and their TLSRoutes/TCPRoutes (into
    # `GatewayPlan.l4_listeners`); off: they are Accepted False, UnsupportedProtocol (for a
    # source that does not watch TLSRoutes and TCPRoutes)
    l4: bool = False
    # the ready pylb nodes' IPs (pylb.nodes): the status.addresses of a Gateway bound on
    # the node's own address, as for a Service's status.loadBalancer; () = node_address
    node_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayInputs:
    classes: Sequence[JsonObj] = ()
    gateways: Sequence[JsonObj] = ()
    httproutes: Sequence[JsonObj] = ()
    grants: Sequence[JsonObj] = ()
    services: Mapping[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # TLS Secrets holding a certificate and key; None: not watched (existence unchecked)
    secrets: frozenset[tuple[str, str]] | None = None
    # (address, port) the data plane could not bind (in use, not on this node): their
    # listeners stay in the plan (binding is retried) with Accepted False, PortUnavailable
    unavailable: frozenset[tuple[str, int]] = frozenset()
    # those Secrets' objects by (namespace, name): the certificates HTTPS listeners serve
    secret_objects: Mapping[tuple[str, str], Any] = field(default_factory=dict)
    tlsroutes: Sequence[JsonObj] = ()
    tcproutes: Sequence[JsonObj] = ()


def _meta(obj: JsonObj) -> tuple[str, str, int, str]:
    meta = _dict(obj.get("metadata"))
    gen = meta.get("generation")
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns if isinstance(ns, str) else "", name if isinstance(name, str) else "",
            gen if isinstance(gen, int) else 1, str(meta.get("creationTimestamp") or ""))


def _objects(objs: Iterable[Any]) -> list[JsonObj]:
    """The objects that are objects at all (a dict with a name): the rest is skipped."""
    return [o for o in objs if isinstance(o, dict) and _meta(o)[1]]


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _cond(ctype: str, ok: bool, reason: str, message: str, gen: int, now: str) -> JsonObj:
    return {"type": ctype, "status": "True" if ok else "False", "reason": reason,
            "message": message, "observedGeneration": gen, "lastTransitionTime": now}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> JsonObj:
    return value if isinstance(value, dict) else {}


# ---- hostnames -------------------------------------------------------------------------------


def hostname_matches(pattern: str, host: str) -> bool:
    """`host` (a request's, or a non-wildcard route hostname) is covered by `pattern`: equal,
    or `*.example.com` covering one or more labels before `.example.com`."""
    if not pattern:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def intersect(listener: str, route_hosts: Sequence[str]) -> list[str]:
    """The route's hostnames as the listener narrows them ("" = any); [] = no intersection."""
    if not route_hosts:
        return [listener]
    if not listener:
        return list(route_hosts)
    out: list[str] = []
    for h in route_hosts:
        if hostname_matches(listener, h) if not h.startswith("*.") else False:
            out.append(h)
        elif h.startswith("*.") and hostname_matches(h, listener) and not \
                listener.startswith("*."):
            out.append(listener)
        elif h.startswith("*.") and listener.startswith("*."):
            if h == listener or h.endswith(listener[1:]):
                out.append(h)
            elif listener.endswith(h[1:]):
                out.append(listener)
    return out


# ---- gateways, listeners, addresses -----------------------------------------------------------


@dataclass
class _GwListener:
    gateway: str
    gw_ns: str
    spec: JsonObj
    name: str
    port: int
    protocol: str
    hostname: str
    address: str = ""
    kinds: list[str] = field(default_factory=list)
    conditions: dict[str, tuple[bool, str, str]] = field(default_factory=dict)
    certificates: tuple[SniCertificate, ...] = ()

    @property
    def usable(self) -> bool:
        return all(ok or t == "Conflicted" for t, (ok, _, _) in self.conditions.items()) and \
            not self.conditions.get("Conflicted", (False, "", ""))[0]


def _listener_kinds(spec: JsonObj, protocol: str) -> tuple[list[str], bool]:
    """(supported kinds, every listed kind supported)."""
    default = [ROUTE_KINDS[protocol]] if protocol in ROUTE_KINDS else []
    kinds = _list(_dict(spec.get("allowedRoutes")).get("kinds"))
    if not kinds:
        return default, True
    ok: list[str] = []
    for k in kinds:
        k = _dict(k)
        group = k.get("group", GROUP)
        if group == GROUP and k.get("kind") in default:
            ok.append(str(k["kind"]))
    return ok, len(ok) == len(kinds)


def _pick_address(gw: JsonObj, pool: list[str], node: str,
                  kept: str | None = None) -> tuple[str, str | None]:
    """(address, error): spec.addresses' first IPAddress, else the pool address it `kept`,
    else the pool's next, else the node's (`node`). An address of another type or not an
    IP is an error (UnsupportedAddress)."""
    for a in _list(_dict(gw.get("spec")).get("addresses")):
        a = _dict(a)
        atype = a.get("type", "IPAddress")
        value = str(a.get("value") or "")
        if atype != "IPAddress":
            return "", f"address type {atype!r} is not supported"
        if not value:
            break  # GatewayAddressEmpty: an address of pylb's choosing
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return "", f"{value!r} is not an IP address"
        return value, None
    if kept:
        return kept, None
    if pool:
        return pool.pop(0), None
    return node, None


def _own_spec_address(gw: JsonObj) -> bool:
    """spec.addresses' first entry names a value (an empty one asks pylb to choose)."""
    addresses = _list(_dict(gw.get("spec")).get("addresses"))
    return bool(addresses and _dict(addresses[0]).get("value"))


def _controller_classes(inputs: GatewayInputs, s: GatewaySettings,
                        status: dict[tuple[str, str, str], JsonObj]) -> set[str]:
    mine: set[str] = set()
    for gc in inputs.classes:
        _, name, gen, _ = _meta(gc)
        if _dict(gc.get("spec")).get("controllerName") != s.controller_name or not name:
            continue
        mine.add(name)
        status[("gatewayclasses", "", name)] = {"conditions": [
            _cond("Accepted", True, "Accepted", "handled by pylb", gen, s.now),
            _cond("SupportedVersion", True, "SupportedVersion", "v1", gen, s.now)]}
    return mine


def _order(objs: Iterable[JsonObj]) -> list[JsonObj]:
    """Oldest first, then namespace/name: the spec's tie-break, and the order addresses from
    the pool and conflicts are settled in."""
    def key(o: JsonObj) -> tuple[str, str, str]:
        ns, name, _, created = _meta(o)
        return (created, ns, name)
    return sorted((o for o in objs if isinstance(o, dict)), key=key)


def _gateway_listeners(gw: JsonObj, ns: str, name: str, address: str,
                       inputs: GatewayInputs, l4: bool) -> list[_GwListener]:
    out: list[_GwListener] = []
    seen: set[str] = set()
    for spec in _list(_dict(gw.get("spec")).get("listeners")):
        spec = _dict(spec)
        lname = str(spec.get("name") or "")
        port = spec.get("port")
        protocol = str(spec.get("protocol") or "")
        if not lname or lname in seen or not isinstance(port, int) or not 1 <= port <= 65535:
            continue  # the CRD rejects these; a bad one never reaches traffic
        seen.add(lname)
        lst = _GwListener(f"{ns}/{name}", ns, spec, lname, port, protocol,
                          str(spec.get("hostname") or "").lower(), address)
        kinds, all_ok = _listener_kinds(spec, protocol if l4 or protocol not in L4_PROTOCOLS
                                        else "")
        lst.kinds = kinds
        mode = _dict(spec.get("tls")).get("mode", "Terminate")
        if protocol in L4_PROTOCOLS and not l4:
            lst.conditions["Accepted"] = (False, "UnsupportedProtocol",
                                          f"protocol {protocol} is not served by pylb yet")
            lst.conditions["Programmed"] = (False, "Invalid", "listener not accepted")
        elif protocol == "TLS" and mode != "Passthrough":
            lst.kinds = []
            lst.conditions["Accepted"] = (False, "UnsupportedProtocol",
                                          "TLS listeners are served in mode Passthrough only")
            lst.conditions["Programmed"] = (False, "Invalid", "listener not accepted")
        elif protocol not in SERVED_PROTOCOLS + L4_PROTOCOLS:
            lst.conditions["Accepted"] = (False, "UnsupportedProtocol",
                                          f"protocol {protocol} is not served by pylb yet")
            lst.conditions["Programmed"] = (False, "Invalid", "listener not accepted")
        else:
            lst.conditions["Accepted"] = (True, "Accepted", "")
            lst.conditions["Programmed"] = (True, "Programmed", "")
        lst.conditions["ResolvedRefs"] = (
            (True, "ResolvedRefs", "") if all_ok else
            (False, "InvalidRouteKinds", "allowedRoutes.kinds names a kind pylb does not serve"))
        if protocol == "HTTPS" or (protocol == "TLS" and _dict(spec.get("tls")).get(
                "mode", "Terminate") == "Terminate"):
            bad, refs = _certificate_refs(spec, ns, inputs)
            if bad is None and protocol == "HTTPS":
                # served for the listener's hostname by SNI ("*": any name, and none)
                certs, problems = sni_certificates(
                    [(rns, rname, (lst.hostname or "*",)) for rns, rname in refs],
                    inputs.secret_objects)
                if problems:
                    (pns, pname), why = problems[0]
                    bad = ("InvalidCertificateRef", f"Secret {pns}/{pname}: {why}")
                lst.certificates = certs
            if bad is not None:
                lst.conditions["ResolvedRefs"] = (False, *bad)
                if protocol == "HTTPS":  # nothing to terminate with: not served
                    lst.conditions["Programmed"] = (False, "Invalid", bad[1])
        lst.conditions["Conflicted"] = (False, "NoConflicts", "")
        out.append(lst)
    return out


def _certificate_refs(spec: JsonObj, gw_ns: str, inputs: GatewayInputs
                      ) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
    """(reason, message) of the first bad certificateRef of a terminating listener (None:
    all good), and the (namespace, name) of the Secrets referred to."""
    bad = _first_bad_certificate_ref(spec, gw_ns, inputs)
    refs = [(str(_dict(r).get("namespace") or gw_ns), str(_dict(r).get("name") or ""))
            for r in _list(_dict(spec.get("tls")).get("certificateRefs"))]
    return bad, refs


def _first_bad_certificate_ref(spec: JsonObj, gw_ns: str,
                               inputs: GatewayInputs) -> tuple[str, str] | None:
    refs = _list(_dict(spec.get("tls")).get("certificateRefs"))
    if not refs:
        return ("InvalidCertificateRef", "no certificateRefs")
    for ref in refs:
        ref = _dict(ref)
        group, kind = ref.get("group", ""), ref.get("kind", "Secret")
        ns, name = str(ref.get("namespace") or gw_ns), str(ref.get("name") or "")
        if group != "" or kind != "Secret":
            return ("InvalidCertificateRef", f"certificateRef {group}/{kind} is not a Secret")
        if ns != gw_ns and not _granted(inputs.grants, "Gateway", gw_ns, "", "Secret", ns,
                                        name):
            return ("RefNotPermitted", f"no ReferenceGrant in {ns} allows Secret {name}")
        if inputs.secrets is not None and (ns, name) not in inputs.secrets:
            return ("InvalidCertificateRef", f"Secret {ns}/{name} is missing or not a TLS "
                                             "secret with a certificate and key")
    return None


def _overlap(a: str, b: str) -> bool:
    if not a or not b:
        return True
    return a == b or hostname_matches(a, b) or hostname_matches(b, a)


# ---- HTTPRoutes ----------------------------------------------------------------------------


_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")  # the CRDs' HTTPHeaderName pattern
_BAD_VALUE = re.compile(r"[\x00\r\n]")  # would split the head (RFC 9110 §5.5)


def _header_ops(value: Any, response: bool = False) -> HeaderOps:
    """A header modifier; _Unsupported for a name that is not a token or a value that
    would split the message (the API server checks neither the value nor, without the
    CRD's schema, the name), and in a response for the framing fields pylb writes."""
    v = _dict(value)

    def check(name: str) -> str:
        if not _TOKEN.fullmatch(name):
            raise _Unsupported(f"header name {name[:64]!r} is not a token")
        if response and name.lower() in FRAMING_FIELDS:
            raise _Unsupported(f"ResponseHeaderModifier cannot change {name}: pylb "
                               "writes the framing and hop-by-hop fields")
        return name

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for h in _list(v.get(key)):
            h = _dict(h)
            if not h.get("name"):
                continue
            val = str(h.get("value", ""))
            if _BAD_VALUE.search(val):
                raise _Unsupported(f"header {str(h['name'])[:64]!r}: the value has a "
                                   "control character (CR, LF or NUL)")
            out.append((check(str(h["name"])), val))
        return tuple(out)
    return HeaderOps(pairs("set"), pairs("add"),
                     tuple(check(x) for x in _list(v.get("remove")) if isinstance(x, str)))


class _Unsupported(ValueError):
    """A value the spec lets implementations refuse: the route is not Accepted
    (UnsupportedValue)."""


def _path_mod(value: Any) -> PathModifier | None:
    if value is None:
        return None
    v = _dict(value)
    kind = v.get("type")
    if kind == "ReplaceFullPath":
        return PathModifier(kind, str(v.get("replaceFullPath") or "/"))
    if kind == "ReplacePrefixMatch":
        return PathModifier(kind, str(v.get("replacePrefixMatch") or "/"))
    raise _Unsupported(f"path modifier type {kind!r} is not supported")


def compile_filters(items: Any) -> tuple[Filters, str | None]:
    """(filters, error) of a rule's or backendRef's `filters`."""
    try:
        return _compile_filters(items)
    except _Unsupported as e:
        return Filters(), str(e)


def _compile_filters(items: Any) -> tuple[Filters, str | None]:
    req = resp = None
    redirect = rewrite = None
    for f in _list(items):
        f = _dict(f)
        ftype = f.get("type")
        if ftype == "RequestHeaderModifier":
            req = _header_ops(f.get("requestHeaderModifier"))
        elif ftype == "ResponseHeaderModifier":
            resp = _header_ops(f.get("responseHeaderModifier"), response=True)
        elif ftype == "RequestRedirect":
            r = _dict(f.get("requestRedirect"))
            code = r.get("statusCode", 302)
            port = r.get("port")
            if code not in REDIRECT_CODES or isinstance(code, bool):
                return Filters(), f"redirect statusCode {code!r} is not supported"
            scheme = r.get("scheme")
            if scheme is not None and scheme not in ("http", "https"):
                return Filters(), f"redirect scheme {scheme!r} is not supported"
            redirect = Redirect(_str_or_none(scheme), _str_or_none(r.get("hostname")),
                                port if isinstance(port, int) and 0 < port < 65536 else None,
                                _path_mod(r.get("path")), int(code))
        elif ftype == "URLRewrite":
            r = _dict(f.get("urlRewrite"))
            rewrite = Rewrite(_str_or_none(r.get("hostname")), _path_mod(r.get("path")))
        else:
            return Filters(), f"filter type {ftype!r} is not supported"
    if redirect is not None and rewrite is not None:
        return Filters(), "RequestRedirect and URLRewrite cannot be combined"
    return Filters(req, resp, redirect, rewrite), None


def compile_match(m: JsonObj) -> tuple[RouteMatch | None, str | None]:
    path = _dict(m.get("path")) or {"type": "PathPrefix", "value": "/"}
    kind = path.get("type", "PathPrefix")
    value = str(path.get("value", "/"))
    if kind not in ("Exact", "PathPrefix"):
        return None, f"path match type {kind!r} is not supported"
    if not value.startswith("/"):
        return None, f"path {value!r} does not start with /"
    headers = []
    for h in _list(m.get("headers")):
        h = _dict(h)
        if h.get("type", "Exact") != "Exact":
            return None, f"header match type {h.get('type')!r} is not supported"
        headers.append((str(h.get("name", "")).lower(), str(h.get("value", ""))))
    queries = []
    for q in _list(m.get("queryParams")):
        q = _dict(q)
        if q.get("type", "Exact") != "Exact":
            return None, f"query match type {q.get('type')!r} is not supported"
        queries.append((str(q.get("name", "")), str(q.get("value", ""))))
    method = m.get("method")
    return RouteMatch(kind, value, tuple(headers), tuple(queries),
                      str(method).upper() if method else None), None


def _granted(grants: Sequence[JsonObj], from_kind: str, from_ns: str, to_group: str,
             to_kind: str, to_ns: str, to_name: str) -> bool:
    for g in grants:
        gns, _, _, _ = _meta(g)
        if gns != to_ns:
            continue
        spec = _dict(g.get("spec"))
        if not any(_dict(f).get("group") == GROUP and _dict(f).get("kind") == from_kind
                   and _dict(f).get("namespace") == from_ns for f in _list(spec.get("from"))):
            continue
        for t in _list(spec.get("to")):
            t = _dict(t)
            if t.get("group", "") == to_group and t.get("kind") == to_kind and \
                    t.get("name") in (None, "", to_name):
                return True
    return False


def resolve_backends(route_ns: str, refs: Any, inputs: GatewayInputs,
                     kind: str = "HTTPRoute") -> tuple[tuple[WeightedBackend, ...],
                                                       tuple[str, str] | None]:
    """The rule's backends and the first reference problem (reason, message), if any."""
    out: list[WeightedBackend] = []
    problem: tuple[str, str] | None = None
    for ref in _list(refs):
        ref = _dict(ref)
        weight = ref.get("weight", 1)
        weight = weight if isinstance(weight, int) and weight >= 0 else 1
        group, rkind = ref.get("group", ""), ref.get("kind", "Service")
        name = str(ref.get("name") or "")
        ns = str(ref.get("namespace") or route_ns)
        port = ref.get("port")
        filters, _ = compile_filters(ref.get("filters"))
        bad: tuple[str, str] | None = None
        if group != "" or rkind != "Service":
            bad = ("InvalidKind", f"backendRef kind {group}/{rkind} is not supported")
        elif ns != route_ns and not _granted(inputs.grants, kind, route_ns, "", "Service",
                                             ns, name):
            bad = ("RefNotPermitted", f"no ReferenceGrant in {ns} allows {route_ns}/{name}")
        elif (ns, name) not in inputs.services:
            bad = ("BackendNotFound", f"service {ns}/{name} not found")
        elif not isinstance(port, int) or port not in inputs.services[(ns, name)]:
            bad = ("BackendNotFound", f"service {ns}/{name} has no port {port}")
        if bad is not None:
            problem = problem or bad
            out.append(WeightedBackend(None, weight, filters))
        else:
            assert isinstance(port, int)
            out.append(WeightedBackend((ns, name, port), weight, filters))
    return tuple(out), problem


def _allowed(lst: _GwListener, route_ns: str, inputs: GatewayInputs, kind: str) -> bool:
    if kind not in lst.kinds:
        return False
    ns_rule = _dict(_dict(lst.spec.get("allowedRoutes")).get("namespaces"))
    frm = ns_rule.get("from", "Same")
    if frm == "All":
        return True
    if frm == "Same":
        return route_ns == lst.gw_ns
    if frm == "Selector":
        sel = _dict(ns_rule.get("selector"))
        # the API server labels every namespace with its name (Kubernetes 1.22+)
        labels = {**inputs.namespaces.get(route_ns, {}), "kubernetes.io/metadata.name": route_ns}
        want = _dict(sel.get("matchLabels"))
        if any(labels.get(k) != v for k, v in want.items()):
            return False
        for expr in _list(sel.get("matchExpressions")):
            expr = _dict(expr)
            key, op, vals = expr.get("key"), expr.get("operator"), _list(expr.get("values"))
            has = key in labels
            if (op == "In" and labels.get(str(key)) not in vals) or \
                    (op == "NotIn" and labels.get(str(key)) in vals) or \
                    (op == "Exists" and not has) or (op == "DoesNotExist" and has):
                return False
        return True
    return False


def _route_entries(route: JsonObj, rhosts: list[str], created: str, ns: str, name: str,
                   inputs: GatewayInputs) -> tuple[list[tuple[list[RouteMatch], Filters,
                                                              tuple[WeightedBackend, ...], int]],
                                                    tuple[str, str] | None, str | None]:
    """(compiled rules, ref problem, spec error)."""
    rules = []
    problem = None
    for ri, rule in enumerate(_list(_dict(route.get("spec")).get("rules")) or [{}]):
        rule = _dict(rule)
        filters, err = compile_filters(rule.get("filters"))
        if err:
            return [], None, err
        matches = []
        for m in _list(rule.get("matches")) or [{}]:
            cm, err = compile_match(_dict(m))
            if err or cm is None:
                return [], None, err
            matches.append(cm)
        mods = [f.path for f in (filters.redirect, filters.rewrite) if f is not None]
        for ref in _list(rule.get("backendRefs")):  # their filters as the rule's
            bf, err = compile_filters(_dict(ref).get("filters"))
            if err:
                return [], None, f"backendRef filter: {err}"
            if (filters.redirect and (bf.redirect or bf.rewrite)) or \
                    (bf.redirect and filters.rewrite):
                return [], None, "RequestRedirect and URLRewrite cannot be combined " \
                    "(rule and backendRef)"
            mods += [f.path for f in (bf.redirect, bf.rewrite) if f is not None]
        if any(m is not None and m.kind == "ReplacePrefixMatch" for m in mods) and \
                any(m.path_kind != "PathPrefix" for m in matches):
            return [], None, "ReplacePrefixMatch needs PathPrefix matches"
        backends, p = resolve_backends(ns, rule.get("backendRefs"), inputs)
        problem = problem or p
        rules.append((matches, filters, backends, ri))
    return rules, problem, None


# ---- the translation: Gateway-level state, one route at a time, the plan ------------------
#
# `translate` is a fold: the Gateway-level state (`gateway_state`: GatewayClasses, Gateways
# and their listeners, from classes, Gateways, grants, Secrets and the settings; never from a
# route), then each route on its own against it (`translate_route`: what it attaches where,
# its status, its skipped lines), then the plan (`gateway_status`, `plan_listener`). The
# incremental translator (discovery/gateway/incremental.py) runs the very same functions
# and keeps each route's `RouteResult` while nothing it read changes.

ListenerKey = tuple[str, str]  # (Gateway "namespace/name", listener name)
ROUTE_PLURALS = ("httproutes", "tlsroutes", "tcproutes")  # in the order they are translated
_ROUTE_KIND = {"httproutes": "HTTPRoute", "tlsroutes": "TLSRoute", "tcproutes": "TCPRoute"}


def _by_order(entry: RuleEntry | L4Route) -> tuple[Any, ...]:
    return entry.order


@dataclass
class GatewayState:
    """What routes are translated against, and what the plan's Gateway parts are made of."""

    status: dict[tuple[str, str, str], JsonObj]  # the GatewayClasses'
    gw_meta: dict[str, tuple[JsonObj, int, str, str | None]]  # (gw, generation, address, err)
    listeners: dict[str, list[_GwListener]]
    on_node: dict[str, bool]  # bound at the node's address (no spec or pool address)
    skipped: list[str]  # the Gateways', before any route's

    def route_view(self) -> Any:
        """All that `translate_route` reads of this state: two states with equal views
        translate every route alike."""
        return [(key, [(lst.name, lst.port, lst.kinds, lst.gw_ns, lst.hostname, lst.usable,
                        _dict(_dict(lst.spec.get("allowedRoutes")).get("namespaces")))
                       for lst in lsts]) for key, lsts in self.listeners.items()]


@dataclass(eq=False, slots=True)
class RouteResult:
    """What one route contributes to a plan: the listeners it attached to (one each time,
    for attachedRoutes), the entries (RuleEntry or L4Route, in the order made) it adds to
    each usable one, its status (None: no parent of ours) and its skipped lines."""

    attached: tuple[ListenerKey, ...]
    entries: tuple[tuple[ListenerKey, tuple[Any, ...]], ...]
    status: JsonObj | None
    skipped: tuple[str, ...]


def normalized(inputs: GatewayInputs) -> GatewayInputs:
    """`inputs` with every list of objects cut to the objects (dicts with a name)."""
    return GatewayInputs(_objects(inputs.classes), _objects(inputs.gateways),
                         _objects(inputs.httproutes), _objects(inputs.grants),
                         inputs.services, inputs.namespaces, inputs.secrets,
                         inputs.unavailable, inputs.secret_objects,
                         _objects(inputs.tlsroutes), _objects(inputs.tcproutes))


def translate(inputs: GatewayInputs, s: GatewaySettings = GatewaySettings()) -> GatewayPlan:
    inputs = normalized(inputs)
    state = gateway_state(inputs, s)
    status = dict(state.status)
    attached: dict[ListenerKey, int] = {}
    entries: dict[ListenerKey, list[Any]] = {}
    route_lines: list[str] = []
    for plural, routes in (("httproutes", inputs.httproutes), ("tlsroutes", inputs.tlsroutes),
                           ("tcproutes", inputs.tcproutes)):
        for route in _order(routes):
            ns, name, _, _ = _meta(route)
            r = translate_route(plural, route, state, inputs, s)
            for lkey in r.attached:
                attached[lkey] = attached.get(lkey, 0) + 1
            for lkey, made in r.entries:
                entries.setdefault(lkey, []).extend(made)
            if r.status is not None:
                status[(plural, ns, name)] = r.status
            route_lines += r.skipped
    plan_listeners: list[Listener] = []
    l4_listeners: list[Listener] = []
    after: list[str] = []
    for key in state.gw_meta:
        ns, name = key.split("/", 1)
        status[("gateways", ns, name)], line = gateway_status(key, state, attached,
                                                              inputs.unavailable, s)
        if line is not None:
            after.append(line)
        for lst in state.listeners[key]:
            if lst.usable:
                ordered = sorted(entries.get((key, lst.name), ()), key=_by_order)
                (l4_listeners if lst.protocol in L4_PROTOCOLS else plan_listeners).append(
                    plan_listener(lst, ordered))
    plan_listeners.sort(key=listener_order)
    l4_listeners.sort(key=listener_order)
    return GatewayPlan(tuple(plan_listeners), status,
                       (*state.skipped, *route_lines, *after), tuple(l4_listeners))


def listener_order(lst: Listener) -> tuple[str, int, str, str]:
    return (lst.address, lst.port, lst.gateway, lst.name)


def gateway_state(inputs: GatewayInputs, s: GatewaySettings) -> GatewayState:
    """The GatewayClasses' status, and the Gateways of ours with their listeners: addresses
    picked, listener conditions (conflicts included). Reads classes, Gateways, grants
    (certificateRefs), Secrets and `s` but `now` (of the classes' conditions) and
    `node_addresses`; never a route or a Service."""
    status: dict[tuple[str, str, str], JsonObj] = {}
    skipped: list[str] = []
    mine = _controller_classes(inputs, s, status)
    pool = list(s.address_pool)
    # A pool address stays with the Gateway that has it (its status says so), so that
    # another Gateway coming or going never moves it.
    kept: dict[str, str] = {}
    for gw in _order(inputs.gateways):
        ns, name, _, _ = _meta(gw)
        held = [a.get("value") for a in _list(_dict(gw.get("status")).get("addresses"))
                if isinstance(a, dict)]
        if held and held[0] in pool and not _list(_dict(gw.get("spec")).get("addresses")):
            kept[f"{ns}/{name}"] = str(held[0])
            pool.remove(held[0])
    listeners: dict[str, list[_GwListener]] = {}
    on_node: dict[str, bool] = {}
    gw_meta: dict[str, tuple[JsonObj, int, str, str | None]] = {}
    bound: list[_GwListener] = []
    for gw in _order(inputs.gateways):
        ns, name, gen, _ = _meta(gw)
        cls = _dict(gw.get("spec")).get("gatewayClassName")
        if not isinstance(cls, str) or cls not in mine:
            continue
        err: str | None
        if _dict(_dict(gw.get("spec")).get("infrastructure")).get("parametersRef"):
            address, err = "", _PARAMS_ERR
        else:
            before = len(pool)
            address, err = _pick_address(gw, pool, s.node_address, kept.get(f"{ns}/{name}"))
            on_node[f"{ns}/{name}"] = not err and len(pool) == before and \
                f"{ns}/{name}" not in kept and not _own_spec_address(gw)
        key = f"{ns}/{name}"
        gw_meta[key] = (gw, gen, address, err)
        if err:
            skipped.append(f"Gateway {key}: {err}")
            listeners[key] = []
            continue
        lsts = _gateway_listeners(gw, ns, name, address, inputs, s.l4)
        for lst in lsts:
            for other in bound:
                if other.address == lst.address and other.port == lst.port and \
                        other.protocol != lst.protocol:  # one port: TLS or not, never both
                    lst.conditions["Conflicted"] = (
                        True, "ProtocolConflict",
                        f"{other.gateway} listener {other.name} holds "
                        f"{lst.address}:{lst.port} for {other.protocol}")
                    lst.conditions["Programmed"] = (False, "Invalid", "conflicted")
                    break
                if other.address == lst.address and other.port == lst.port and \
                        _overlap(other.hostname, lst.hostname) and \
                        (other.gateway != lst.gateway or other.hostname == lst.hostname):
                    lst.conditions["Conflicted"] = (
                        True, "HostnameConflict",
                        f"{other.gateway} listener {other.name} holds "
                        f"{lst.address}:{lst.port} for an overlapping hostname")
                    lst.conditions["Programmed"] = (False, "Invalid", "conflicted")
                    break
            if lst.usable:
                bound.append(lst)
        listeners[key] = lsts
    return GatewayState(status, gw_meta, listeners, on_node, skipped)


def translate_route(plural: str, route: JsonObj, state: GatewayState, inputs: GatewayInputs,
                    s: GatewaySettings) -> RouteResult:
    """One route (of `plural`: httproutes, tlsroutes or tcproutes) against `state`. Reads
    the route, `state`, `s` (controller_name, now) and of `inputs` only the Services and
    grants its backendRefs name and its namespace's labels."""
    kind = _ROUTE_KIND[plural]
    ns, name, _, created = _meta(route)
    spec = _dict(route.get("spec"))
    rhosts = [str(h).lower() for h in _list(spec.get("hostnames")) if isinstance(h, str)] \
        if kind != "TCPRoute" else []
    make: Callable[[list[str]], tuple[Any, ...]]
    err: str | None = None
    if kind == "HTTPRoute":
        compiled, problem, err = _route_entries(route, rhosts, created, ns, name, inputs)
        make = _rule_maker(compiled, ns, name, created)
    else:
        backends: list[WeightedBackend] = []
        problem = None
        for rule in _list(spec.get("rules")):
            b, p = resolve_backends(ns, _dict(rule).get("backendRefs"), inputs, kind)
            backends += b
            problem = problem or p
        l4_backends = tuple(backends)
        l4_order = (created, ns, name)

        def make(hosts: list[str]) -> tuple[Any, ...]:
            return tuple(L4Route(h, l4_backends, f"{ns}/{name}", l4_order) for h in hosts)
    skipped: list[str] = []
    attached: list[ListenerKey] = []
    entries: list[tuple[ListenerKey, tuple[Any, ...]]] = []
    parents = _parents(kind, route, rhosts, err, problem, state, inputs, s, skipped,
                       attached, entries, make)
    return RouteResult(tuple(attached), tuple(entries),
                       {"parents": parents} if parents else None, tuple(skipped))


def gateway_status(key: str, state: GatewayState, attached: Mapping[ListenerKey, int],
                   unavailable: frozenset[tuple[str, int]], s: GatewaySettings
                   ) -> tuple[JsonObj, str | None]:
    """Gateway `key`'s status (its listeners' attachedRoutes from `attached`), and its
    skipped line if some of its listeners are not served."""
    gw, gen, address, err = state.gw_meta[key]
    lsts = state.listeners[key]
    lstat = []
    for lst in lsts:
        port_down = lst.usable and (lst.address, lst.port) in unavailable
        lconds = dict(lst.conditions)
        if port_down:
            lconds["Accepted"] = (False, "PortUnavailable",
                                  f"{lst.address}:{lst.port} cannot be bound here")
            lconds["Programmed"] = (False, "Invalid", "port unavailable")
        lstat.append({
            "name": lst.name, "attachedRoutes": attached.get((key, lst.name), 0),
            "supportedKinds": [{"group": GROUP, "kind": k} for k in lst.kinds],
            "conditions": [_cond(t, ok, r, m, gen, s.now)
                           for t, (ok, r, m) in lconds.items()]})
    # an address of a type or value pylb cannot use: not Accepted (UnsupportedAddress)
    reason_of_err = "InvalidParameters" if err == _PARAMS_ERR else "UnsupportedAddress"
    prog_of_err = "Invalid"
    all_ok = not err and bool(lsts) and all(lst.usable for lst in lsts)
    any_ok = not err and any(lst.usable for lst in lsts)
    acc: tuple[bool, str, str] = (False, reason_of_err, err) if err else (
        (True, "Accepted", "") if all_ok or not lsts else
        (True, "ListenersNotValid", "some listeners are not valid") if any_ok else
        (False, "ListenersNotValid", "no listener is valid"))
    serving = any(lst.usable and (lst.address, lst.port) not in unavailable for lst in lsts)
    prog: tuple[bool, str, str] = (False, prog_of_err, err) if err else (
        (True, "Programmed", "") if serving else (False, "Invalid", "nothing served"))
    if not serving and any_ok and _own_spec_address(gw) and all(
            (lst.address, lst.port) in unavailable for lst in lsts if lst.usable):
        # its spec.addresses IP cannot be bound here (not this node's): a usable kind
        # of address, unusable in fact
        prog = (False, "AddressNotUsable", f"{address} cannot be bound on this node")
    line = f"Gateway {key}: some listeners are not served" \
        if not err and any_ok and not all_ok else None
    # its own address (spec, pool), else the ready pylb nodes' (all serve it)
    shown = [] if err else list(s.node_addresses) if state.on_node.get(key) and \
        s.node_addresses else [address]
    return {"addresses": [{"type": "IPAddress", "value": a} for a in shown],
            "conditions": [_cond("Accepted", acc[0], acc[1], acc[2], gen, s.now),
                           _cond("Programmed", prog[0], prog[1], prog[2], gen, s.now)],
            "listeners": lstat}, line


def plan_listener(lst: _GwListener, entries: Sequence[Any]) -> Listener:
    """The plan's listener for a usable one, with its entries in precedence order:
    RuleEntries (HTTP, HTTPS), L4Routes (TLS, TCP)."""
    if lst.protocol in L4_PROTOCOLS:
        return Listener(lst.gateway, lst.name, lst.address, lst.port, lst.protocol,
                        lst.hostname, l4_routes=tuple(entries))
    return Listener(lst.gateway, lst.name, lst.address, lst.port, lst.protocol, lst.hostname,
                    tuple(entries), lst.certificates)


def _rule_maker(compiled: list[tuple[list[RouteMatch], Filters,
                                     tuple[WeightedBackend, ...], int]],
                ns: str, name: str, created: str) -> Callable[[list[str]], tuple[Any, ...]]:
    def make(hosts: list[str]) -> tuple[Any, ...]:
        return tuple(RuleEntry(h, m, backends, filters, f"{ns}/{name}",
                               _precedence(m, created, ns, name, ri, mi))
                     for matches, filters, backends, ri in compiled
                     for mi, m in enumerate(matches) for h in hosts)
    return make


def _parents(kind: str, route: JsonObj, rhosts: list[str], err: str | None,
             problem: tuple[str, str] | None, state: GatewayState, inputs: GatewayInputs,
             s: GatewaySettings, skipped: list[str], attached: list[ListenerKey],
             entries: list[tuple[ListenerKey, tuple[Any, ...]]],
             make: Callable[[list[str]], tuple[Any, ...]]) -> list[JsonObj]:
    """The route's `status.parents` for the Gateways of ours it names; each listener that
    accepts it goes to `attached`, and if usable, with what `make` makes of the intersected
    hostnames, to `entries`."""
    ns, name, gen, _ = _meta(route)
    parents_status = []
    for pref in _list(_dict(route.get("spec")).get("parentRefs")):
        pref = _dict(pref)
        if pref.get("group", GROUP) != GROUP or pref.get("kind", "Gateway") != "Gateway":
            continue
        gkey = f"{pref.get('namespace') or ns}/{pref.get('name')}"
        if gkey not in state.gw_meta:
            continue  # not a Gateway of ours: its controller writes this parent's status
        section, port = pref.get("sectionName"), pref.get("port")
        cands = [lst for lst in state.listeners[gkey]
                 if (section is None or lst.name == section)
                 and (port is None or lst.port == port)]
        accepted = False
        reason, message = "NoMatchingParent", "no listener matches sectionName/port"
        if err:
            reason, message = "UnsupportedValue", err
        elif cands:
            allowed = [lst for lst in cands if _allowed(lst, ns, inputs, kind)]
            if not allowed:
                reason, message = "NotAllowedByListeners", "no listener allows this route"
            for lst in allowed:
                hosts = intersect(lst.hostname, rhosts)
                if not hosts:
                    if reason != "NotAllowedByListeners":
                        reason = "NoMatchingListenerHostname"
                        message = "no hostname intersects the listener's"
                    continue
                accepted = True
                attached.append((gkey, lst.name))
                if lst.usable:
                    entries.append(((gkey, lst.name), make(hosts)))
        if accepted:
            reason, message = "Accepted", ""
        conds = [_cond("Accepted", accepted, reason, message, gen, s.now)]
        if problem:
            conds.append(_cond("ResolvedRefs", False, problem[0], problem[1], gen, s.now))
        else:
            conds.append(_cond("ResolvedRefs", True, "ResolvedRefs", "", gen, s.now))
        if not accepted:
            skipped.append(f"{kind} {ns}/{name} on {gkey}: {reason}: {message}")
        pstat = {k: v for k, v in pref.items()
                 if k in ("group", "kind", "namespace", "name", "sectionName", "port")}
        pstat.setdefault("group", GROUP)
        pstat.setdefault("kind", "Gateway")
        parents_status.append({"parentRef": pstat, "controllerName": s.controller_name,
                               "conditions": conds})
    return parents_status


def _precedence(m: RouteMatch, created: str, ns: str, name: str, ri: int,
                mi: int) -> tuple[Any, ...]:
    return (0 if m.path_kind == "Exact" else 1, -len(m.path), 0 if m.method else 1,
            -len(m.headers), -len(m.queries), created, ns, name, ri, mi)
