"""Kubernetes objects → RouteTable: the 2015 service-loadbalancer's rules, as one pure function.

Theory of operation. `translate()` takes plain dicts as the API server returns them
(camelCase keys) and the settings, and returns a `RouteTable`. It does no I/O, and its
result depends on its arguments alone; the one state it keeps is a memo of address texts
(`_canonical_ip`, a module-global `functools.lru_cache`, which is thread-safe: the
watcher and the file source call this module from a worker thread, `asyncio.to_thread`,
while the loop may call it too). It is the reference: the watcher and the file source get
the same table from discovery/incremental.py, which keeps per-service results between
changes and redoes only what a change touches, using this module's pieces —
`plan_service` (the per-service part of passes 1 and 2), `claim_service` (pass 3 for one
service) and `claim_keys` (which services' claims can interact) — and whose tests check it
against `translate()`.

It works in three passes:

1. Parse. Each Service is checked and turned into a small typed record (`_Service`): its
   name, type, ports and annotations. EndpointSlices and Endpoints are indexed by the
   service they belong to. Anything malformed in a service — or in the endpoints that
   belong to it — raises `_Bad`, which skips THAT service with a reason (logged at WARNING
   and recorded as a `SkippedService`). Nothing raises out of `translate()`.
2. Servers. For each service port, the servers: the endpoints whose port matches the
   service port's targetPort, or the cluster IP (`--forward-services`), or the resolved
   addresses of an ExternalName.
3. Routes. Services are visited sorted by (namespace, name) and their ports sorted by
   number. Each port claims a route (HTTP, HTTPS) or a TCP port; a claim that is already
   taken is refused and reported, so the first service in that order wins. Input order and
   duplicates therefore never change the result.

The rules, each with its reason:

- Namespaces: only services in `settings.namespaces` (empty = all) are considered; others
  are ignored without a word (they are not ours to report). `settings.target_service`
  restricts to the one service of that name, as `--target-service` did.
- Duplicates: the same (namespace, name) given twice keeps the copy with the highest
  `metadata.resourceVersion` (the newest), so a stale copy from a relist cannot win.
- Type: `LoadBalancer` services are skipped (a cloud load balancer serves them), except
  those with `spec.loadBalancerClass: pylb.io/lb`, which ask for us. `ExternalName`
  services send to the addresses their DNS name resolved to (`KubeObjects.external`, at
  the service port; targetPort means nothing there); not resolved yet → no servers.
- Ports: every TCP port becomes a route; UDP and SCTP ports are skipped (we balance TCP
  only). A service without ports is bad input.
- Names: the route of service port 80 is `/name`, of any other port `/name:port`; the
  backend is `namespace/name:port`. Two watched namespaces with a service of the same
  name collide on `/name`: the first namespace in sorted order keeps it and the other's
  port is skipped with a reason that names the winner. Any other route collision (same
  aclMatch prefix, same lb.host on one frontend, same TCP port) is settled the same way.
- Endpoints: the union of every EndpointSlice labelled `kubernetes.io/service-name` —
  or, with `endpoints_api == "endpoints"` or when a service has no slice at all, the
  legacy Endpoints subsets — over the ports that match the service port's targetPort:
  by number (an int targetPort equals the endpoint port), or by name: the service port's
  name equals the endpoint port's name — that is how Kubernetes names slice ports, the
  empty name included, which names the one port of a single-port service — or a string
  targetPort equals the endpoint port's name (the 2015 controller's rule). A missing
  targetPort is the port. `(address, port)` pairs are deduplicated across
  slices (one per address family, and duplicates during rollouts); the best state wins.
  Each endpoint contributes its first address, as kube-proxy does. FQDN slices are
  skipped (nothing to connect to without a resolver).
- Conditions: missing `ready`/`serving` count as true, missing `terminating` as false
  (the API's documented meaning of nil). Ready → a server that gets new work. Serving and
  terminating → a draining server: no new work, open connections stay. Neither ready nor
  serving → left out. A legacy `notReadyAddresses` entry → a server marked not ready,
  shown on the stats page and given no work. The server's name is the pod's
  (`targetRef.name`) when known.
- No endpoints: the service still gets its route and a backend with no servers, so the
  router answers 503 as haproxy does for a backend without a server, rather than a
  misleading 404; `render()` shows the backend as "(no servers)".
- `--forward-services`: the one server is `clusterIP:port` (kube-proxy balances behind
  it); a headless service (`clusterIP: None`) has no such address and is skipped.
- `--tcp-services=name:port`: the port of service `name` whose `port` equals the listed
  port (or its only port) becomes a TCP frontend on the listed port; every other port is
  HTTP. A TCP frontend cannot take the HTTP, stats or health port, nor the HTTPS port
  while any route needs the TLS frontend.
- Annotations (`serviceloadbalancer/…`): `lb.algorithm` (roundrobin, leastconn, first,
  source; an unknown value falls back to `--balance-algorithm` with a WARNING, as in
  2015); `lb.host` (a hostname, lowercased; the route also matches that Host header);
  `lb.sslTerm` (the route is served on the TLS frontend instead); `lb.aclMatch`
  (`[-i] /prefix`: that prefix replaces `/name`, is not stripped, and `-i` makes it
  case-insensitive); `lb.cookie-sticky-session` (cookie affinity on HTTP ports);
  `lb.sslRedirect` (the route is on both frontends and the plain one answers with a
  redirect to https); `lb.sslPassthrough` with `lb.host` on a TCP port (the TLS
  ClientHello's server name picks the backend; several such services may share one
  port — without `lb.host` the service is that port's default backend; on a service with
  no TCP port it is an error); `lb.send-proxy: v1|v2` (PROXY protocol to the backends of
  the TCP ports); `lb.check-path` (HTTP health check path; implies `lb.check`);
  `lb.check: "true"|"false"` (active checks for this service whatever `--checks=all|
  annotated` says; `--checks=off` wins); `lb.error-limit: N` (failed connects in a row
  that eject a server, as `--error-limit`; 0 never ejects); `lb.slash-redirect: "true"`
  (the bare prefix `/name` answers 301 to `/name/`, the query kept; stripping routes);
  `lb.maxconn` (requests or connections in flight per server, more wait in a queue; else
  `--server-maxconn`) and `lb.rate-limit` (`RATE[/s|/m][,burst=N]` per client address, or
  `off`; else `--rate-limit`): the syntax is pylb.limits'.
  `spec.sessionAffinity: ClientIP` gives client-IP affinity (on HTTP ports the cookie
  wins when both are set).
  Booleans are "true" or "false" in any case; any other value — or a value that is not a
  string — is a bad annotation. A `*.` wildcard `lb.host` is accepted only with
  `lb.sslPassthrough` (SNI matches wildcards; Host routes do not) and is then not put on
  the service's HTTP routes.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from discovery.ingress import apply_ingresses
from discovery.secrets import by_ident
from pylb.config import CheckScope, Settings
from pylb.limits import parse_maxconn, parse_rate_limit
from pylb.model import (
    Affinity,
    Algorithm,
    Backend,
    HttpRoute,
    ProxyProtocol,
    RouteTable,
    Server,
    SkippedService,
    TcpFrontend,
)

log = logging.getLogger("pylb.discovery")

ANNOTATION_PREFIX = "serviceloadbalancer/"
LB_CLASS = "pylb.io/lb"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_SERVICE_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
_SKIPPED_PROTOCOLS = frozenset({"UDP", "SCTP"})
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_PATH = re.compile(r"/[!$&'()*+,;=:@%A-Za-z0-9._~/-]*\Z")
_CHECK_PATH = re.compile(r"/[!$&'()*+,;=:@%A-Za-z0-9._~/?-]*\Z")


@dataclass(frozen=True)
class KubeObjects:
    """The objects translate() reads: API dicts, plus the resolved ExternalName names."""

    services: tuple[dict[str, Any], ...] = ()
    endpointslices: tuple[dict[str, Any], ...] = ()
    endpoints: tuple[dict[str, Any], ...] = ()
    external: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ingresses: tuple[dict[str, Any], ...] = ()  # with --ingress-class (discovery/ingress.py)
    ingressclasses: tuple[dict[str, Any], ...] = ()
    secrets: tuple[dict[str, Any], ...] = ()  # kubernetes.io/tls ones (discovery/secrets.py)


class _Bad(Exception):
    """Malformed input: skip the service it belongs to, with this reason."""


@dataclass(frozen=True, slots=True)
class _Annotations:
    algorithm: Algorithm
    host: str | None = None
    ssl_term: bool = False
    acl_prefix: str | None = None
    acl_case_insensitive: bool = False
    cookie: bool = False
    ssl_redirect: bool = False
    passthrough: bool = False
    send_proxy: ProxyProtocol = ProxyProtocol.NONE
    check_path: str | None = None
    check: bool | None = None  # lb.check; lb.check-path alone means True
    error_limit: int | None = None  # lb.error-limit
    slash_redirect: bool = False  # lb.slash-redirect
    maxconn: int = 0  # lb.maxconn, else --server-maxconn
    rate_limit: tuple[float, int] | None = None  # lb.rate-limit, else --rate-limit
    h2c: bool | None = None  # lb.backend-protocol; None: as the port's appProtocol says


@dataclass(frozen=True, slots=True)
class _Port:
    port: int
    name: str
    target: int | str
    protocol: str
    app_protocol: str = ""  # spec.ports[].appProtocol


@dataclass(frozen=True, slots=True)
class _Service:
    namespace: str
    name: str
    type: str
    cluster_ip: str | None
    external_name: str | None
    client_ip_affinity: bool
    ports: tuple[_Port, ...]
    ann: _Annotations

    @property
    def ident(self) -> str:
        return f"{self.namespace}/{self.name}"


# -- small checked accessors ---------------------------------------------------------------


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{what} is not an object")
    return value


def _opt_dict(value: Any, what: str) -> dict[str, Any]:
    return {} if value is None else _dict(value, what)


def _opt_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Bad(f"{what} is not a list")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"{what} is missing or not a string")
    return value


def _opt_str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Bad(f"{what} is not a string")
    return value


def _port_number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _Bad(f"{what} must be a port number (1-65535), got {value!r}")
    return value


def _opt_bool(value: Any, default: bool, what: str) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Bad(f"{what} must be true or false, got {value!r}")
    return value


# An IPv4 address in canonical dotted-decimal form (no leading zeros): ipaddress's own
# text for it is the very same string.
_CANONICAL_V4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                           r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)", re.ASCII)


def _canonical_ip(value: str) -> str | None:
    """The canonical text of an IP address, or None. The common case — an IPv4 address as
    Kubernetes writes it — is `value` itself, checked by a regular expression: no parse, no
    new string, nothing cached (a cache entry and a second copy of each address were ~15 MiB
    at 100,000 endpoints). Anything else is parsed, cached: ipaddress is slow, and every
    endpoint is read again on every rebuild of its service."""
    if _CANONICAL_V4.fullmatch(value) is not None:
        return value
    return _parsed_ip(value)


@functools.lru_cache(maxsize=1 << 16)
def _parsed_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _ip(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what} is not a string")
    ip = _canonical_ip(value)
    if ip is None:
        raise _Bad(f"{what} {value!r} is not an IP address")
    return ip


def _plain_endpoint(ep: Any) -> tuple[str, int, str] | None:
    """The common, well-formed endpoint — (address, state, pod name) — read without
    building the error context strings the careful path needs; None sends it down that
    path (which also owns every error message)."""
    if type(ep) is not dict:
        return None
    addresses = ep.get("addresses")
    if type(addresses) is not list or not addresses or type(addresses[0]) is not str:
        return None
    address = _canonical_ip(addresses[0])
    cond = ep.get("conditions")
    if cond is None:
        cond = {}
    ref = ep.get("targetRef")
    if address is None or type(cond) is not dict or (ref is not None and type(ref) is not dict):
        return None
    ready, serving, terminating = (cond.get("ready"), cond.get("serving"),
                                   cond.get("terminating"))
    ready = True if ready is None else ready
    serving = True if serving is None else serving
    terminating = False if terminating is None else terminating
    if type(ready) is not bool or type(serving) is not bool or type(terminating) is not bool:
        return None
    name = "" if ref is None else ref.get("name", "")
    if name is None:
        name = ""
    if type(name) is not str:
        return None
    if terminating:
        state = _DRAINING if serving else -1
    elif ready:
        state = _READY
    else:
        state = _NOT_READY if serving else -1
    return address, state, name


# -- annotations -----------------------------------------------------------------------------


def _ann_bool(key: str, value: str) -> bool:
    low = value.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise _Bad(f"annotation {ANNOTATION_PREFIX}{key}: expected \"true\" or \"false\", "
               f"got {value!r}")


def _hostname(value: str, wildcard_ok: bool) -> str:
    host = value.lower()
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    if wildcard_ok and len(labels) > 1 and labels[0] == "*":
        labels = labels[1:]
    if not host or len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        hint = " (a *. wildcard needs lb.sslPassthrough)" if value.startswith("*.") else ""
        raise _Bad(f"annotation {ANNOTATION_PREFIX}lb.host: {value!r} is not a valid "
                   f"hostname{hint}")
    return host


def _acl_match(value: str) -> tuple[str, bool]:
    """`[-i] /prefix` → (prefix, case_insensitive). A trailing slash is kept: the router
    reads `/test/` as "under /test/" (not /test itself), as haproxy's path_beg did."""
    tokens = value.split()
    case_insensitive = bool(tokens) and tokens[0] == "-i"
    if case_insensitive:
        tokens = tokens[1:]
    if len(tokens) != 1 or not _PATH.match(tokens[0]):
        raise _Bad(f"annotation {ANNOTATION_PREFIX}lb.aclMatch: expected \"[-i] /prefix\", "
                   f"got {value!r}")
    return tokens[0], case_insensitive


def _annotations(raw: dict[str, Any], settings: Settings, ident: str) -> _Annotations:
    ann: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key.startswith(ANNOTATION_PREFIX):
            continue
        short = key[len(ANNOTATION_PREFIX):]
        if not isinstance(value, str):
            raise _Bad(f"annotation {key}: value must be a string (quote it in YAML), "
                       f"got {value!r}")
        ann[short] = value

    algorithm = settings.balance_algorithm
    if "lb.algorithm" in ann:
        try:
            algorithm = Algorithm(ann["lb.algorithm"].strip().lower())
        except ValueError:
            log.warning("service %s: unknown %slb.algorithm %r, using %s", ident,
                        ANNOTATION_PREFIX, ann["lb.algorithm"], algorithm.value)

    flags = {key: _ann_bool(key, ann[key]) for key in (
        "lb.sslTerm", "lb.cookie-sticky-session", "lb.sslRedirect", "lb.sslPassthrough",
        "lb.check", "lb.slash-redirect",
    ) if key in ann}
    passthrough = flags.get("lb.sslPassthrough", False)

    host = _hostname(ann["lb.host"], passthrough) if "lb.host" in ann else None

    acl_prefix: str | None = None
    acl_ci = False
    if "lb.aclMatch" in ann:
        acl_prefix, acl_ci = _acl_match(ann["lb.aclMatch"])

    send_proxy = ProxyProtocol.NONE
    if "lb.send-proxy" in ann:
        try:
            send_proxy = ProxyProtocol(ann["lb.send-proxy"].strip().lower())
        except ValueError:
            send_proxy = ProxyProtocol.NONE
        if send_proxy is ProxyProtocol.NONE:
            raise _Bad(f"annotation {ANNOTATION_PREFIX}lb.send-proxy: expected \"v1\" or "
                       f"\"v2\", got {ann['lb.send-proxy']!r}")

    check_path: str | None = None
    if "lb.check-path" in ann:
        check_path = ann["lb.check-path"]
        if not _CHECK_PATH.match(check_path):
            raise _Bad(f"annotation {ANNOTATION_PREFIX}lb.check-path: expected a path "
                       f"starting with /, got {check_path!r}")

    error_limit: int | None = None
    if "lb.error-limit" in ann:
        limit_text = ann["lb.error-limit"].strip()
        if not limit_text.isdigit() or int(limit_text) > 1_000_000:
            raise _Bad(f"annotation {ANNOTATION_PREFIX}lb.error-limit: expected a whole "
                       f"number of failed connects (0: never eject), got {limit_text!r}")
        error_limit = int(limit_text)
    maxconn = settings.limits.server_maxconn
    if "lb.maxconn" in ann:
        try:
            maxconn = parse_maxconn(ann["lb.maxconn"])
        except ValueError as e:
            raise _Bad(f"annotation {ANNOTATION_PREFIX}lb.maxconn: {e}") from None
    rate_limit = settings.limits.rate_limit
    if "lb.rate-limit" in ann:
        value = ann["lb.rate-limit"].strip()
        try:  # "off" (or "0") lifts --rate-limit for this service
            rate_limit = None if value.lower() in ("off", "0") else parse_rate_limit(value)
        except ValueError as e:
            raise _Bad(f"annotation {ANNOTATION_PREFIX}lb.rate-limit: {e}") from None

    h2c: bool | None = None
    if "lb.backend-protocol" in ann:
        proto = ann["lb.backend-protocol"].strip().lower()
        if proto not in _BACKEND_PROTOCOLS:
            raise _Bad(f"annotation {ANNOTATION_PREFIX}lb.backend-protocol: expected "
                       f"\"h2c\", \"grpc\" or \"http1\", got {ann['lb.backend-protocol']!r}")
        h2c = _BACKEND_PROTOCOLS[proto]

    return _Annotations(
        algorithm=algorithm,
        host=host,
        ssl_term=flags.get("lb.sslTerm", False),
        acl_prefix=acl_prefix,
        acl_case_insensitive=acl_ci,
        cookie=flags.get("lb.cookie-sticky-session", False),
        ssl_redirect=flags.get("lb.sslRedirect", False),
        passthrough=passthrough,
        send_proxy=send_proxy,
        check_path=check_path,
        check=flags.get("lb.check", True if check_path is not None else None),
        error_limit=error_limit,
        slash_redirect=flags.get("lb.slash-redirect", False),
        maxconn=maxconn,
        rate_limit=rate_limit,
        h2c=h2c,
    )


# lb.backend-protocol values (haproxy: `proto h2` on a server line) → h2c or not.
_BACKEND_PROTOCOLS = {"h2c": True, "grpc": True, "http1": False, "http/1.1": False}
# A port's appProtocol that means h2c (KEP-3726's kubernetes.io/h2c; "grpc" as Istio and
# Envoy Gateway read it).
H2C_APP_PROTOCOLS = frozenset({"kubernetes.io/h2c", "grpc", "h2c"})


def checked(ann: _Annotations, settings: Settings) -> bool:
    """Whether the service's backends get active checks: `--checks` and `lb.check`."""
    scope = settings.checks.scope
    if scope is CheckScope.OFF:
        return False
    if ann.check is not None:
        return ann.check
    return scope is CheckScope.ALL


# -- services --------------------------------------------------------------------------------


def _meta(obj: Any, what: str) -> tuple[str, str]:
    """(namespace, name) of an object, or _Bad."""
    meta = _dict(_dict(obj, what).get("metadata"), f"{what} metadata")
    return (_name(meta.get("namespace"), f"{what} metadata.namespace"),
            _name(meta.get("name"), f"{what} metadata.name"))


def _resource_version(obj: dict[str, Any]) -> int:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    if isinstance(rv, str) and rv.isdigit():
        return int(rv)
    return -1


def _canonical(obj: Any) -> str:
    try:
        return json.dumps(obj, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(obj)


def _ports(spec: dict[str, Any]) -> tuple[_Port, ...]:
    raw = spec.get("ports")
    if not isinstance(raw, list) or not raw:
        raise _Bad("spec.ports is missing or empty")
    ports: list[_Port] = []
    for i, p in enumerate(raw):
        p = _dict(p, f"spec.ports[{i}]")
        number = _port_number(p.get("port"), f"spec.ports[{i}].port")
        name = _opt_str(p.get("name"), f"spec.ports[{i}].name")
        protocol = _opt_str(p.get("protocol"), f"spec.ports[{i}].protocol") or "TCP"
        if protocol != "TCP" and protocol not in _SKIPPED_PROTOCOLS:
            raise _Bad(f"spec.ports[{i}].protocol {protocol!r} is not TCP, UDP or SCTP")
        tp = p.get("targetPort")
        target: int | str
        if tp is None:
            target = number
        elif isinstance(tp, str) and tp:
            target = int(tp) if tp.isdigit() else tp
            if isinstance(target, int):
                target = _port_number(target, f"spec.ports[{i}].targetPort")
        else:
            target = _port_number(tp, f"spec.ports[{i}].targetPort")
        app = p.get("appProtocol")
        ports.append(_Port(number, name, target, protocol,
                           app if isinstance(app, str) else ""))
    seen: set[tuple[int, str]] = set()
    for p in ports:
        if (p.port, p.protocol) in seen:
            raise _Bad(f"spec.ports lists port {p.port}/{p.protocol} twice")
        seen.add((p.port, p.protocol))
    return tuple(sorted(ports, key=lambda p: (p.port, p.protocol)))


def _parse_service(obj: dict[str, Any], settings: Settings, namespace: str,
                   name: str) -> _Service:
    ident = f"{namespace}/{name}"
    meta = _dict(obj.get("metadata"), "metadata")
    annotations = _opt_dict(meta.get("annotations"), "metadata.annotations")
    spec = _dict(obj.get("spec"), "spec")
    svc_type = _opt_str(spec.get("type"), "spec.type") or "ClusterIP"
    if svc_type not in _SERVICE_TYPES:
        raise _Bad(f"spec.type {svc_type!r} is not a Service type")
    affinity = _opt_str(spec.get("sessionAffinity"), "spec.sessionAffinity") or "None"
    if affinity not in ("None", "ClientIP"):
        raise _Bad(f"spec.sessionAffinity {affinity!r} is not None or ClientIP")
    cluster_ip = _opt_str(spec.get("clusterIP"), "spec.clusterIP") or None
    external_name: str | None = None
    if svc_type == "ExternalName":
        external_name = _name(spec.get("externalName"), "spec.externalName")
    return _Service(
        namespace=namespace,
        name=name,
        type=svc_type,
        cluster_ip=cluster_ip,
        external_name=external_name,
        client_ip_affinity=affinity == "ClientIP",
        ports=_ports(spec),
        ann=_annotations(annotations, settings, ident),
    )


# -- endpoints -------------------------------------------------------------------------------

# Best state first when one (address, port) appears more than once.
_READY, _DRAINING, _NOT_READY = 2, 1, 0


def _port_matches(port: _Port, ep_name: str, ep_port: int) -> bool:
    if ep_name == port.name:
        return True
    if isinstance(port.target, int):
        return ep_port == port.target
    return ep_name == port.target


def _endpoint_ports(raw: Any, what: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for i, p in enumerate(_opt_list(raw, f"{what}.ports")):
        p = _dict(p, f"{what}.ports[{i}]")
        protocol = _opt_str(p.get("protocol"), f"{what}.ports[{i}].protocol") or "TCP"
        if protocol != "TCP" or p.get("port") is None:
            continue  # a nil port means "all ports": nothing we can connect to by number
        out.append((_opt_str(p.get("name"), f"{what}.ports[{i}].name"),
                    _port_number(p.get("port"), f"{what}.ports[{i}].port")))
    return out


def _pod_name(ref: Any, what: str) -> str:
    return _opt_str(_opt_dict(ref, f"{what}.targetRef").get("name"), f"{what}.targetRef.name")


Found = dict[tuple[str, int], tuple[int, str]]  # (address, port) -> (state, pod name)


def _add(found: Found, address: str, port: int, state: int, name: str) -> None:
    """Merge one sighting of (address, port): the best state wins, and the smallest
    non-empty pod name, so the result does not depend on the order of sightings."""
    key = (address, port)
    old = found.get(key)
    if old is None:
        found[key] = (state, name)
        return
    names = [n for n in (old[1], name) if n]
    found[key] = (max(old[0], state), min(names) if names else "")


def _slice_endpoints(slices: Iterable[Any], port: _Port, found: Found) -> None:
    for si, raw in enumerate(slices):
        what = f"EndpointSlice #{si}"
        sl = _dict(raw, what)
        meta = _opt_dict(sl.get("metadata"), f"{what} metadata")
        if isinstance(meta.get("name"), str):
            what = f"EndpointSlice {meta['name']}"
        family = _opt_str(sl.get("addressType"), f"{what} addressType")
        if family == "FQDN":
            continue
        if family not in ("IPv4", "IPv6"):
            raise _Bad(f"{what} addressType {family!r} is not IPv4, IPv6 or FQDN")
        numbers = [n for name, n in _endpoint_ports(sl.get("ports"), what)
                   if _port_matches(port, name, n)]
        for ei, ep in enumerate(_opt_list(sl.get("endpoints"), f"{what} endpoints")):
            plain = _plain_endpoint(ep)
            if plain is not None:
                if plain[1] >= 0:
                    for n in numbers:
                        _add(found, plain[0], n, plain[1], plain[2])
                continue
            ew = f"{what} endpoints[{ei}]"
            ep = _dict(ep, ew)
            addresses = _opt_list(ep.get("addresses"), f"{ew}.addresses")
            if not addresses:
                raise _Bad(f"{ew}.addresses is empty")
            address = _ip(addresses[0], f"{ew}.addresses[0]")
            cond = _opt_dict(ep.get("conditions"), f"{ew}.conditions")
            ready = _opt_bool(cond.get("ready"), True, f"{ew}.conditions.ready")
            serving = _opt_bool(cond.get("serving"), True, f"{ew}.conditions.serving")
            terminating = _opt_bool(cond.get("terminating"), False,
                                    f"{ew}.conditions.terminating")
            if terminating:
                state = _DRAINING if serving else -1
            elif ready:
                state = _READY
            else:
                state = _NOT_READY if serving else -1
            name = _pod_name(ep.get("targetRef"), ew)
            if state < 0:
                continue
            for n in numbers:
                _add(found, address, n, state, name)


def _legacy_endpoints(objs: Iterable[Any], port: _Port, found: Found) -> None:
    for oi, raw in enumerate(objs):
        what = f"Endpoints #{oi}"
        obj = _dict(raw, what)
        for si, subset in enumerate(_opt_list(obj.get("subsets"), f"{what} subsets")):
            sw = f"{what} subsets[{si}]"
            subset = _dict(subset, sw)
            numbers = [n for name, n in _endpoint_ports(subset.get("ports"), sw)
                       if _port_matches(port, name, n)]
            for key, state in (("addresses", _READY), ("notReadyAddresses", _NOT_READY)):
                for ai, addr in enumerate(_opt_list(subset.get(key), f"{sw}.{key}")):
                    aw = f"{sw}.{key}[{ai}]"
                    addr = _dict(addr, aw)
                    address = _ip(addr.get("ip"), f"{aw}.ip")
                    name = _pod_name(addr.get("targetRef"), aw)
                    for n in numbers:
                        _add(found, address, n, state, name)


def _to_servers(found: Found) -> tuple[Server, ...]:
    servers = []
    for (address, port), (state, name) in sorted(found.items()):
        if state == _READY:
            servers.append(Server(address, port, name))
        elif state == _DRAINING:
            servers.append(Server(address, port, name, ready=False, serving=True,
                                  terminating=True))
        else:
            servers.append(Server(address, port, name, ready=False, serving=False))
    return tuple(servers)


Ident = tuple[str, str]  # (namespace, name) of a service


@dataclass
class _EndpointIndex:
    slices: dict[Ident, list[Any]] = field(default_factory=dict)
    endpoints: dict[Ident, list[Any]] = field(default_factory=dict)


def slice_owner(obj: Any) -> Ident | None:
    """The service an EndpointSlice belongs to (its namespace and service-name label), or
    None (logged) when it names none."""
    try:
        meta = _dict(_dict(obj, "EndpointSlice").get("metadata"), "EndpointSlice metadata")
        labels = _opt_dict(meta.get("labels"), "EndpointSlice labels")
        return (_name(meta.get("namespace"), "EndpointSlice metadata.namespace"),
                _name(labels.get(SERVICE_NAME_LABEL), f"label {SERVICE_NAME_LABEL}"))
    except _Bad as e:
        log.warning("ignoring an EndpointSlice that names no service: %s", e)
        return None


def endpoints_owner(obj: Any) -> Ident | None:
    """The service an Endpoints object belongs to (its own name), or None (logged)."""
    try:
        return _meta(obj, "Endpoints")
    except _Bad as e:
        log.warning("ignoring an Endpoints object that names no service: %s", e)
        return None


def canonical_order(group: list[Any]) -> list[Any]:
    """One service's slices (or Endpoints) in a canonical order, so that which bad object
    is reported never depends on input order. Sorts in place; returns `group`."""
    if len(group) > 1:
        group.sort(key=_canonical)
    return group


def _index(objects: KubeObjects) -> _EndpointIndex:
    idx = _EndpointIndex()
    for obj in _iter(objects.endpointslices, "endpointslices"):
        key = slice_owner(obj)
        if key is not None:
            idx.slices.setdefault(key, []).append(obj)
    for obj in _iter(objects.endpoints, "endpoints"):
        key = endpoints_owner(obj)
        if key is not None:
            idx.endpoints.setdefault(key, []).append(obj)
    for group in (*idx.slices.values(), *idx.endpoints.values()):
        canonical_order(group)
    return idx


def _iter(values: Any, what: str) -> list[Any]:
    if isinstance(values, list | tuple):
        return list(values)
    log.warning("KubeObjects.%s is not a sequence; ignored", what)
    return []


def external_answer(external: Any, name: str) -> Any:
    """What `external` (the resolved ExternalName names) holds for DNS name `name`, as
    written or normalised; None when not resolved (yet)."""
    if not isinstance(external, Mapping):
        return None
    for dns_name in (name, name.strip(), name.strip().lower().rstrip(".")):
        addrs = external.get(dns_name)
        if addrs is not None:
            return addrs
    return None


def _servers(svc: _Service, port: _Port, slices: list[Any], endpoints: list[Any],
             external: Any, settings: Settings) -> tuple[Server, ...]:
    if svc.external_name is not None:
        name = svc.external_name
        addrs = external_answer(external, name)
        found: Found = {}
        for a in addrs if isinstance(addrs, list | tuple) else ():
            try:
                _add(found, _ip(a, "resolved address"), port.port, _READY, "")
            except _Bad:
                log.warning("service %s: ignoring resolved address %r of %s", svc.ident, a,
                            name)
        return _to_servers(found)
    if settings.forward_services:
        if svc.cluster_ip is None:
            raise _Bad("--forward-services: spec.clusterIP is missing")
        if svc.cluster_ip == "None":
            raise _Bad("--forward-services: a headless service (clusterIP None) has no "
                       "address to forward to")
        return (Server(_ip(svc.cluster_ip, "spec.clusterIP"), port.port),)
    found = {}
    if settings.endpoints_api == "endpoints" or not slices:
        _legacy_endpoints(endpoints, port, found)
    else:
        _slice_endpoints(slices, port, found)
    return _to_servers(found)


# -- routes ----------------------------------------------------------------------------------


@dataclass
class _TcpClaim:
    names: set[str] = field(default_factory=set)
    owners: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)
    default: str = ""
    default_owner: str = ""
    sni: dict[str, tuple[str, str]] = field(default_factory=dict)  # host -> (backend, owner)


class _Builder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http: list[HttpRoute] = []
        self.https: list[HttpRoute] = []
        self.backends: dict[str, Backend] = {}
        # --gateway-api: backends of Service ports whose /name route clashed, kept for
        # Gateway routes (which name them by namespace)
        self.unrouted: set[str] = set()
        self.skipped: list[SkippedService] = []
        self.tcp: dict[int, _TcpClaim] = {}
        # per frontend: exact prefix / casefolded prefix / host -> owner ident
        self.claims: dict[bool, dict[tuple[str, str], str]] = {False: {}, True: {}}

    def skip(self, svc_ns: str, svc_name: str, reason: str, level: int = logging.INFO) -> None:
        log.log(level, "skipping service %s/%s: %s", svc_ns, svc_name, reason)
        self.skipped.append(SkippedService(svc_ns, svc_name, reason))

    def _route_conflict(self, route: HttpRoute) -> str | None:
        claims = self.claims[route.tls]
        keys = [("prefix", route.prefix), ("fold", route.prefix.casefold())]
        for kind, value in keys:
            owner = claims.get((kind, value))
            if owner is not None and (kind == "prefix" or route.case_insensitive
                                      or ("ci", value) in claims):
                return f"route {route.prefix} on the {_frontend(route.tls)} frontend is " \
                       f"already taken by service {owner}"
        if route.host is not None and ("host", route.host) in claims:
            return f"host {route.host} on the {_frontend(route.tls)} frontend is already " \
                   f"taken by service {claims[('host', route.host)]}"
        return None

    def _claim(self, route: HttpRoute, owner: str) -> None:
        claims = self.claims[route.tls]
        claims[("prefix", route.prefix)] = owner
        claims.setdefault(("fold", route.prefix.casefold()), owner)
        if route.case_insensitive:
            claims[("ci", route.prefix.casefold())] = owner
        if route.host is not None:
            claims[("host", route.host)] = owner

    def add_http(self, svc: _Service, port: _Port, backend: Backend) -> None:
        ann = svc.ann
        route_name = svc.name if port.port == 80 else f"{svc.name}:{port.port}"
        if ann.acl_prefix is not None:
            name, prefix, strip = ann.acl_prefix, ann.acl_prefix, False
        else:
            name, prefix, strip = route_name, "/" + route_name, True
        host = ann.host if ann.host is not None and not ann.host.startswith("*.") else None
        ci = ann.acl_case_insensitive
        routes: list[HttpRoute] = []
        slash = ann.slash_redirect and strip
        if ann.ssl_term or ann.ssl_redirect:
            routes.append(HttpRoute(name, prefix, backend.name, host, strip, ci, tls=True,
                                    slash_redirect=slash))
        if not ann.ssl_term or ann.ssl_redirect:
            routes.append(HttpRoute(name, prefix, backend.name, host, strip, ci,
                                    ssl_redirect=ann.ssl_redirect, slash_redirect=slash))
        for r in routes:
            conflict = self._route_conflict(r)
            if conflict is not None:
                self.skip(svc.namespace, svc.name, f"port {port.port}: {conflict}")
                if self.settings.gateway.enabled:
                    # only its /name route clashes (a same-named Service of another
                    # namespace): its backend, ns/name:port, stays for Gateway routes
                    self.backends[backend.name] = backend
                    self.unrouted.add(backend.name)
                return
        for r in routes:
            self._claim(r, svc.ident)
            (self.https if r.tls else self.http).append(r)
        self.backends[backend.name] = backend

    def add_tcp(self, svc: _Service, port: _Port, listen: int, backend: Backend) -> None:
        claim = self.tcp.setdefault(listen, _TcpClaim())
        sni_host = svc.ann.host if svc.ann.passthrough else None
        if sni_host is not None:
            owner = claim.sni.get(sni_host)
            if owner is not None:
                self.skip(svc.namespace, svc.name,
                          f"port {port.port}: TLS server name {sni_host} on TCP port {listen} "
                          f"is already taken by service {owner[1]}")
                return
            claim.sni[sni_host] = (backend.name, svc.ident)
        else:
            if claim.default:
                self.skip(svc.namespace, svc.name,
                          f"port {port.port}: TCP port {listen} is already taken by service "
                          f"{claim.default_owner} (services share a TCP port only when "
                          f"routed by TLS server name: {ANNOTATION_PREFIX}lb.sslPassthrough "
                          "with lb.host)")
                return
            claim.default, claim.default_owner = backend.name, svc.ident
        claim.names.add(svc.name)
        claim.owners.append((svc.namespace, svc.name))
        self.backends[backend.name] = backend

    def table(self) -> RouteTable:
        s = self.settings
        reserved = {s.http_port: "the HTTP port", s.stats_port: "the stats port",
                    s.health_port: "the health port"}
        if self.https:
            reserved.setdefault(s.https_port, "the HTTPS port")
        frontends: list[TcpFrontend] = []
        for listen, claim in sorted(self.tcp.items()):
            if listen in reserved:
                for ns, name in sorted(set(claim.owners)):
                    self.skip(ns, name, f"TCP port {listen} is {reserved[listen]}",
                              logging.WARNING)
                continue
            frontends.append(TcpFrontend(
                "+".join(sorted(claim.names)), listen, claim.default,
                tuple(sorted((h, b) for h, (b, _) in claim.sni.items()))))
        used = {r.backend for r in self.http}
        used.update(r.backend for r in self.https)
        for f in frontends:
            used.add(f.backend)
            used.update(b for _, b in f.sni)
        used.update(self.unrouted)
        return RouteTable(
            http=tuple(self.http),
            https=tuple(self.https),
            tcp=tuple(frontends),
            backends=tuple(b for name, b in self.backends.items() if name in used),
            skipped=tuple(self.skipped),
        )


def _frontend(tls: bool) -> str:
    return "https" if tls else "http"


# -- the translation -------------------------------------------------------------------------


def service_ident(obj: Any, settings: Settings) -> Ident | SkippedService | None:
    """Which service `obj` is: its (namespace, name) when it is one of ours; a skip (logged)
    when its metadata is unusable and it may be ours; None when it is not ours (another
    namespace, or not the --target-service)."""
    try:
        namespace, name = _meta(obj, "Service")
    except _Bad as e:
        ns, nm = _best_effort_ident(obj)
        if (ns == "?" or _watched(ns, settings)) and settings.target_service in (None, nm):
            log.warning("skipping service %s/%s: %s", ns, nm, e)
            return SkippedService(ns, nm, str(e))
        return None
    if not _watched(namespace, settings):
        return None
    if settings.target_service is not None and name != settings.target_service:
        return None
    return (namespace, name)


def newer(obj: dict[str, Any], old: dict[str, Any]) -> bool:
    """Of two copies of one service, whether `obj` wins: the highest resourceVersion (the
    newest), then a canonical order, so that input order never matters."""
    return ((_resource_version(obj), _canonical(obj))
            > (_resource_version(old), _canonical(old)))


def _select(objects: KubeObjects, settings: Settings,
            builder: _Builder) -> list[tuple[Ident, dict[str, Any]]]:
    """The watched services, one per (namespace, name), sorted; unusable ones skipped."""
    chosen: dict[Ident, dict[str, Any]] = {}
    for obj in _iter(objects.services, "services"):
        ident = service_ident(obj, settings)
        if isinstance(ident, SkippedService):
            builder.skipped.append(ident)
        elif ident is not None:
            old = chosen.get(ident)
            if old is None or newer(obj, old):
                chosen[ident] = obj
    return sorted(chosen.items())


def _watched(namespace: str, settings: Settings) -> bool:
    return not settings.namespaces or namespace in settings.namespaces


def _best_effort_ident(obj: Any) -> tuple[str, str]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns if isinstance(ns, str) and ns else "?",
            name if isinstance(name, str) and name else "?")


def _tcp_listen(svc: _Service, settings: Settings, builder: _Builder) -> dict[int, list[int]]:
    """Service port → the TCP ports it is listed on (--tcp-services)."""
    out: dict[int, list[int]] = {}
    tcp_ports = [p for p in svc.ports if p.protocol == "TCP"]
    for name, listen in sorted(set(settings.tcp_services)):
        if name != svc.name:
            continue
        match = [p for p in tcp_ports if p.port == listen]
        if not match and len(svc.ports) == 1:
            match = tcp_ports
        if not match:
            builder.skip(svc.namespace, svc.name,
                         f"--tcp-services lists {name}:{listen} but the service has no TCP "
                         f"port {listen}", logging.WARNING)
            continue
        out.setdefault(match[0].port, []).append(listen)
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """The per-service part of translation, which reads only that service, its endpoints
    and settings: the service parsed (None if unusable) and, port by port, a skip reason or
    the port's servers, up to the first error that makes the whole service unusable — the
    order in which `claim_service` reports them. Equal plans make equal routes: the
    incremental translation (discovery/incremental.py) re-plans a service when one of its
    objects changes and re-claims its routes only when the plan differs."""

    svc: _Service | None
    steps: tuple[str | tuple[_Port, tuple[Server, ...]], ...]
    error: str | None
    cloud_lb: bool = False  # type LoadBalancer without our class: a cloud LB serves it

    def backend(self, port: _Port, servers: tuple[Server, ...], settings: Settings) -> Backend:
        """The HTTP backend of one of this (usable) service's ports: its route's, or an
        Ingress's (discovery/ingress.py)."""
        assert self.svc is not None
        return service_backend(self.svc, port, servers, checked(self.svc.ann, settings))


def plan_service(obj: dict[str, Any], namespace: str, name: str, settings: Settings,
                 slices: list[Any], endpoints: list[Any], external: Any) -> Plan:
    """The plan of one service from its object, its EndpointSlices and Endpoints (in
    `canonical_order`) and the resolved ExternalName names. Never raises."""
    try:
        return _plan_service(obj, namespace, name, settings, slices, endpoints, external)
    except Exception as e:  # a bug here must cost one service, not the whole table
        log.exception("internal error translating service %s/%s", namespace, name)
        return Plan(None, (), f"internal error: {e!r}")


def _plan_service(obj: dict[str, Any], namespace: str, name: str, settings: Settings,
                  slices: list[Any], endpoints: list[Any], external: Any) -> Plan:
    try:
        svc = _parse_service(obj, settings, namespace, name)
    except _Bad as e:
        return Plan(None, (), str(e))
    cloud_lb = (svc.type == "LoadBalancer"
                and obj.get("spec", {}).get("loadBalancerClass") != LB_CLASS)
    if cloud_lb and settings.ingress_class is None:
        return Plan(svc, (), None, cloud_lb=True)
    # (With Ingresses a cloud-balanced service still gets its servers: an Ingress may
    # route to it.)
    steps: list[str | tuple[_Port, tuple[Server, ...]]] = []
    try:
        for port in svc.ports:
            if port.protocol != "TCP":
                steps.append(f"port {port.port}/{port.protocol}: only TCP is balanced")
            else:
                steps.append((port, _servers(svc, port, slices, endpoints, external,
                                             settings)))
    except _Bad as e:
        return Plan(svc, tuple(steps), str(e), cloud_lb)
    return Plan(svc, tuple(steps), None, cloud_lb)


def translate(objects: KubeObjects, settings: Settings) -> RouteTable:
    """The route table for these objects under these settings (see the module docstring for
    every rule). Never raises: a service it cannot use is skipped with a reason.

    This is the whole translation, the reference: discovery/incremental.py gets the same
    table by redoing only what a change touches (its tests check that it equals this)."""
    builder = _Builder(settings)
    idx = _index(objects)
    external = objects.external
    plans: dict[Ident, Plan] = {}
    for (namespace, name), obj in _select(objects, settings, builder):
        plan = plan_service(obj, namespace, name, settings,
                            idx.slices.get((namespace, name), []),
                            idx.endpoints.get((namespace, name), []), external)
        claim_service(namespace, name, plan, settings, builder)
        plans[(namespace, name)] = plan
    table = builder.table()
    if settings.ingress_class is None:
        return table
    layered = apply_ingresses(table, objects.ingresses, objects.ingressclasses, settings,
                              lambda ns, name: plans.get((ns, name)),
                              secrets=by_ident(objects.secrets)).table
    # The reference sorts and checks the layered table whole (the layer inserts into
    # sorted parts; the incremental translation's tests compare with this).
    return RouteTable(http=layered.http, https=layered.https, tcp=layered.tcp,
                      backends=layered.backends, skipped=layered.skipped, certs=layered.certs)


def claim_service(namespace: str, name: str, plan: Plan, settings: Settings,
                  builder: _Builder) -> None:
    """Add a planned service's routes, TCP ports and backends to `builder`, or the reasons
    it cannot have them. Never raises."""
    try:
        _claim_service(plan, settings, builder)
    except _Bad as e:
        builder.skip(namespace, name, str(e), logging.WARNING)
    except Exception as e:  # a bug here must cost one service, not the whole table
        log.exception("internal error translating service %s/%s", namespace, name)
        builder.skip(namespace, name, f"internal error: {e!r}", logging.ERROR)


def _claim_service(plan: Plan, settings: Settings, builder: _Builder) -> None:
    svc, steps, error = plan.svc, plan.steps, plan.error
    if svc is None:
        raise _Bad(error or "unusable service")
    if plan.cloud_lb:
        builder.skip(svc.namespace, svc.name,
                     "type LoadBalancer is served by a cloud load balancer (set "
                     f"spec.loadBalancerClass: {LB_CLASS} to have pylb serve it)")
        return
    listen = _tcp_listen(svc, settings, builder)
    if svc.ann.passthrough and not listen:
        raise _Bad(f"annotation {ANNOTATION_PREFIX}lb.sslPassthrough needs the service "
                   "listed in --tcp-services")
    # Every port's servers come first (in the plan) so that bad endpoints skip the whole
    # service.
    plans: list[tuple[_Port, tuple[Server, ...]]] = []
    for step in steps:
        if isinstance(step, str):
            builder.skip(svc.namespace, svc.name, step)
        else:
            plans.append(step)
    if error is not None:
        raise _Bad(error)
    is_checked = checked(svc.ann, settings)
    for port, servers in plans:
        backend_name = f"{svc.namespace}/{svc.name}:{port.port}"
        if not servers:
            log.debug("service %s port %d has no endpoints: its route answers 503",
                     svc.ident, port.port)
        if port.port in listen:
            backend = Backend(
                backend_name, servers, svc.ann.algorithm,
                Affinity.CLIENT_IP if svc.client_ip_affinity else Affinity.NONE,
                proxy_protocol=svc.ann.send_proxy, check_path=svc.ann.check_path,
                check=is_checked, error_limit=svc.ann.error_limit,
                maxconn=svc.ann.maxconn, rate_limit=svc.ann.rate_limit)
            for lp in listen[port.port]:
                builder.add_tcp(svc, port, lp, backend)
        else:
            builder.add_http(svc, port, service_backend(svc, port, servers, is_checked))


def service_backend(svc: _Service, port: _Port, servers: tuple[Server, ...],
                    is_checked: bool | None) -> Backend:
    """The HTTP backend of a service port (its route's, or an Ingress's)."""
    affinity = (Affinity.COOKIE if svc.ann.cookie else
                Affinity.CLIENT_IP if svc.client_ip_affinity else Affinity.NONE)
    h2c = svc.ann.h2c if svc.ann.h2c is not None \
        else port.app_protocol.lower() in H2C_APP_PROTOCOLS
    return Backend(f"{svc.namespace}/{svc.name}:{port.port}", servers, svc.ann.algorithm,
                   affinity, check_path=svc.ann.check_path, check=is_checked,
                   error_limit=svc.ann.error_limit, maxconn=svc.ann.maxconn,
                   rate_limit=svc.ann.rate_limit, h2c=h2c)


def claim_keys(plan: Plan, settings: Settings) -> tuple[tuple[Any, ...], ...]:
    """Every claim `claim_service` could make for this plan, as keys two services share
    exactly when one's claim can refuse or shape the other's: the casefolded route prefix
    and the host on each frontend it uses, and each TCP port listened on. (A superset is
    harmless: it only makes the incremental translation redo more together.)"""
    svc = plan.svc
    if svc is None or plan.cloud_lb:
        return ()
    keys: dict[tuple[Any, ...], None] = {}
    for name, listen in settings.tcp_services:
        if name == svc.name:
            keys[("tcp", listen)] = None
    ann = svc.ann
    frontends = []  # as add_http puts its routes
    if not ann.ssl_term or ann.ssl_redirect:
        frontends.append(False)
    if ann.ssl_term or ann.ssl_redirect:
        frontends.append(True)
    for port in svc.ports:
        route_name = svc.name if port.port == 80 else f"{svc.name}:{port.port}"
        prefix = ann.acl_prefix if ann.acl_prefix is not None else "/" + route_name
        for tls in frontends:
            keys[("fold", tls, prefix.casefold())] = None
            if ann.host is not None:
                keys[("host", tls, ann.host)] = None
    return tuple(keys)
