"""networking.k8s.io/v1 Ingress → routes: a pure layer over the services' route table.

Theory of operation. `apply_ingresses()` takes the table translate() made from the
Services (discovery/translate.py), the Ingress and IngressClass objects as plain dicts, the
settings, and a way to read a service's `Plan` (its parsed ports and their servers); it
returns the table with the Ingresses' routes and backends added, and the services the
Ingresses refer to (so that the incremental translation knows when to redo this layer).
It does no I/O, keeps no state but a bounded "logged once" set, and never raises: an
Ingress (or one path of it) it cannot serve is skipped with a reason, recorded as a
`SkippedService` of kind "Ingress" (logged, shown by --dry, and an Event by the leader).

Which Ingresses are ours (`selection`), with `--ingress-class=NAME`:
- `spec.ingressClassName: NAME`, and the IngressClass NAME says `spec.controller:
  pylb.io/ingress-controller`. NAME without that IngressClass (missing, or another
  controller's) is skipped with a reason: the Ingress asks for us, the cluster disagrees.
- no `spec.ingressClassName` and the legacy annotation `kubernetes.io/ingress.class: NAME`
  (ingress-nginx honours it without an IngressClass object; so do we).
- neither, and the IngressClass NAME is ours and annotated
  `ingressclass.kubernetes.io/is-default-class: "true"`.
Anything else belongs to another controller and is ignored without a word. Only
Ingresses in the watched namespaces (`--namespace`) are considered.

Rules, as the Ingress spec says (see proxy/http/routing.py for how they match):
- `host` is a DNS name or `*.` and a DNS name (one label); lowercased. No host: any host.
- `pathType` Exact and Prefix as the spec says; ImplementationSpecific is Prefix (pylb has
  no regular-expression paths; ingress-nginx's are regexes only with `use-regex`).
  A path must be absolute; Prefix paths lose a trailing slash (`/foo/` is `/foo`).
- A backend is `service` {name, port {number | name}}: the port of that Service with that
  number, or that name. A `resource` backend is skipped with a reason (pylb forwards to
  services only). A Service that does not exist, or lacks the port, still gets its route:
  it answers 503 (ingress-nginx does the same), and the reason is recorded.
- `defaultBackend`: takes what no route takes; the first Ingress (by namespace/name) that
  has one wins, the others' are skipped with a reason.
- The same (host, path, pathType) in two Ingresses: the first by namespace/name keeps it.
- `tls[].hosts`: those hosts' routes are also served on the TLS frontend, and the plain
  frontend redirects them to https (ingress-nginx's ssl-redirect default), unless
  `nginx.ingress.kubernetes.io/ssl-redirect: "false"`; `force-ssl-redirect: "true"`
  redirects (and serves on TLS) every route of the Ingress. The certificate of those hosts
  is the `tls[].secretName` Secret's (discovery/secrets.py), put in the table's `certs`
  for the TLS store, in Ingress order (the first Ingress naming a host gives its
  certificate). A Secret that is missing or not a TLS Secret is recorded as a reason on
  each Ingress naming it, and its hosts get the default certificate. Rules without a
  host are served on both ports (HTTPS with the default certificate, no redirect), as
  ingress-nginx's catch-all server does.

Backends are the services' own (`namespace/service:port`, the same object when the
service's own route already has it), with the service's `serviceloadbalancer/lb.*`
annotations: an Ingress routes to a service the way pylb balances it anyway. An Ingress
whose annotations change how a backend balances (affinity, load-balance) gets its own
copy, named `namespace/service:port@namespace/ingress`.

ingress-nginx annotations (`nginx.ingress.kubernetes.io/…`; README lists them): mapped
where pylb has the feature — `ssl-redirect`, `force-ssl-redirect`, `use-regex`,
`rewrite-target` (its paths become regular expressions, `$n` their groups),
`permanent-redirect` (+ `-code`), `app-root`, `affinity: cookie` + `session-cookie-name`,
`load-balance` (round_robin; ewma and least_conn as leastconn), `backend-protocol` HTTP
(the default) and GRPC / H2C (HTTP/2 without TLS to the servers, as
`serviceloadbalancer/lb.backend-protocol: h2c`).
Refused — the Ingress is skipped with the reason, because serving it without the feature
would be wrong, not just different: `whitelist-source-range`/`allowlist-source-range` (it
would be open to everyone), `ssl-passthrough` (its backend expects TLS), a
`backend-protocol` of HTTPS, GRPCS, AJP or FCGI (pylb speaks plain HTTP/1.1 or h2c to
backends). Any other
(`proxy-body-size`, `proxy-*-timeout`, …: in pylb these are the global flags) is ignored
with a log line, once.
"""

from __future__ import annotations

import logging
import re
from bisect import insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from discovery.secrets import sni_certificates
from pylb.config import Settings
from pylb.model import (
    Affinity,
    Algorithm,
    Backend,
    HttpRoute,
    PathMatch,
    RouteTable,
    Server,
    SkippedService,
    SniCertificate,
    route_order,
    skipped_order,
)

if TYPE_CHECKING:  # translate.py builds this layer on top of its table (no cycle)
    from discovery.translate import Ident, Plan, _Port, _Service

log = logging.getLogger("pylb.discovery")

CONTROLLER = "pylb.io/ingress-controller"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
NGINX = "nginx.ingress.kubernetes.io/"
KIND = "Ingress"

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\Z")
_PATH = re.compile(r"/[!$&'()*+,;=:@%A-Za-z0-9._~/-]*\Z")
_PATH_TYPES = {"Exact": PathMatch.EXACT, "Prefix": PathMatch.PREFIX,
               "ImplementationSpecific": PathMatch.PREFIX}
_LOGGED_MAX = 10_000

PlanOf = Callable[[str, str], "Plan | None"]
T = TypeVar("T")


class _Bad(Exception):
    """This Ingress (or this part of it) cannot be served, for this reason."""


# ingress-nginx annotations that pylb maps, refuses (with the reason), or knowingly ignores
_MAPPED = frozenset({"ssl-redirect", "force-ssl-redirect", "use-regex", "rewrite-target",
                     "permanent-redirect", "permanent-redirect-code", "app-root",
                     "affinity", "session-cookie-name", "load-balance", "backend-protocol"})
_REFUSED = {
    "whitelist-source-range": "pylb has no per-route source address allow-list; served "
                              "without it, the Ingress would be open to every address",
    "allowlist-source-range": "pylb has no per-route source address allow-list; served "
                              "without it, the Ingress would be open to every address",
    "ssl-passthrough": "TLS passthrough is per TCP port in pylb (serviceloadbalancer/"
                       "lb.sslPassthrough with --tcp-services); terminating TLS here would "
                       "break a backend that expects it",
}
_ALGORITHMS = {"round_robin": Algorithm.ROUNDROBIN, "ewma": Algorithm.LEASTCONN,
               "least_conn": Algorithm.LEASTCONN}
_COOKIE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}\Z")
_LOCATION = re.compile(r"[!-~]{1,2048}\Z")  # visible ASCII, no space


@dataclass(frozen=True, slots=True)
class _Nginx:
    """What the ingress-nginx annotations of one Ingress ask of pylb."""

    ssl_redirect: bool = True
    force_ssl_redirect: bool = False
    regex: bool = False
    rewrite: str | None = None
    redirect: str | None = None
    redirect_code: int = 301
    app_root: str | None = None
    cookie: str | None = None  # affinity: cookie, with this cookie name
    algorithm: Algorithm | None = None
    h2c: bool = False  # backend-protocol: GRPC or H2C

    @property
    def own_backend(self) -> bool:
        return self.cookie is not None or self.algorithm is not None or self.h2c


def _nginx(ann: Mapping[str, Any], ns: str, name: str) -> _Nginx:
    """The annotations read, or _Bad (a refused one, or a bad value); unknown ones logged
    once as ignored."""
    for key in sorted(k for k in ann if isinstance(k, str) and k.startswith(NGINX)):
        short = key[len(NGINX):]
        if short in _REFUSED and ann[key] not in (None, ""):
            raise _Bad(f"annotation {key}: {_REFUSED[short]}")
        if short not in _MAPPED and short not in _REFUSED:
            _log_once(logging.INFO, ns, name,
                      f"annotation {key} is ignored (not supported by pylb)")

    def text(key: str, pattern: re.Pattern[str] = _LOCATION) -> str | None:
        value = ann.get(NGINX + key)
        if value is None:
            return None
        if not isinstance(value, str) or not pattern.match(value):
            raise _Bad(f"annotation {NGINX}{key}: bad value {value!r}")
        return value

    protocol = text("backend-protocol")
    h2c = False
    if protocol is not None:
        if protocol.upper() in ("GRPC", "H2C"):
            h2c = True
        elif protocol.upper() != "HTTP":
            raise _Bad(f"annotation {NGINX}backend-protocol: {protocol} is not supported: "
                       "pylb speaks plain HTTP/1.1 or h2c to backends (no TLS to backends)")
    code = text("permanent-redirect-code")
    redirect_code = 301
    if code is not None:
        if code not in ("301", "302", "307", "308"):
            raise _Bad(f"annotation {NGINX}permanent-redirect-code: {code!r} is not 301, "
                       "302, 307 or 308")
        redirect_code = 302 if code in ("302", "307") else 301
    cookie: str | None = None
    affinity = text("affinity")
    if affinity is not None:
        if affinity != "cookie":
            raise _Bad(f"annotation {NGINX}affinity: {affinity!r} is not cookie")
        cookie = text("session-cookie-name", _COOKIE) or "INGRESSCOOKIE"  # nginx's default
    algorithm: Algorithm | None = None
    lb = text("load-balance")
    if lb is not None:
        algorithm = _ALGORITHMS.get(lb)
        if algorithm is None:
            raise _Bad(f"annotation {NGINX}load-balance: {lb!r} is not round_robin, ewma "
                       "or least_conn")
    rewrite = text("rewrite-target")
    return _Nginx(
        ssl_redirect=_flag(ann, "ssl-redirect", True),
        force_ssl_redirect=_flag(ann, "force-ssl-redirect", False),
        regex=_flag(ann, "use-regex", False) or rewrite is not None,
        rewrite=rewrite, redirect=text("permanent-redirect"), redirect_code=redirect_code,
        app_root=text("app-root"), cookie=cookie, algorithm=algorithm, h2c=h2c)


@dataclass(frozen=True, slots=True)
class LayerParts:
    """What the Ingresses add to a table, apart from it: `merge_layer` lays them on
    another services' table, as long as it agrees with the one they were made for
    wherever they read it (`deps`: each backend name looked up, and what was there)."""

    http: tuple[HttpRoute, ...]
    https: tuple[HttpRoute, ...]
    new: tuple[Backend, ...]  # backends the table did not have
    skipped: tuple[SkippedService, ...]
    certs: tuple[SniCertificate, ...]
    deps: tuple[tuple[str, Backend | None], ...]


@dataclass(frozen=True, slots=True)
class IngressResult:
    """What the Ingresses add: the table with them, the services they name, and the
    parts (None when there is nothing to reuse)."""

    table: RouteTable
    services: frozenset[Ident]
    parts: LayerParts | None = None


_logged: set[tuple[str, str, str]] = set()


def _log_once(level: int, ns: str, name: str, reason: str) -> None:
    key = (ns, name, reason)
    if key in _logged:
        return
    if len(_logged) >= _LOGGED_MAX:
        _logged.clear()
    _logged.add(key)
    log.log(level, "Ingress %s/%s: %s", ns, name, reason)


# -- selection -------------------------------------------------------------------------------


def class_index(classes: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """IngressClass objects by name (malformed ones left out)."""
    out: dict[str, dict[str, Any]] = {}
    for obj in classes:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(name, str) and name:
            out[name] = obj
    return out


def _is_ours(cls: dict[str, Any] | None) -> bool:
    spec = cls.get("spec") if cls is not None else None
    return isinstance(spec, dict) and spec.get("controller") == CONTROLLER


def _is_default(cls: dict[str, Any]) -> bool:
    meta = cls.get("metadata")
    ann = meta.get("annotations") if isinstance(meta, dict) else None
    value = ann.get(DEFAULT_CLASS_ANNOTATION) if isinstance(ann, dict) else None
    return isinstance(value, str) and value.lower() == "true"


def selection(obj: Any, classes: Mapping[str, dict[str, Any]],
              class_name: str) -> bool | str:
    """True: the Ingress is ours to serve; False: another controller's; a string: it asks
    for us but cannot be served, for that reason."""
    if not isinstance(obj, dict):
        return False
    spec = obj.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    meta = obj.get("metadata")
    ann = meta.get("annotations") if isinstance(meta, dict) else None
    ann = ann if isinstance(ann, dict) else {}
    ours = classes.get(class_name)
    wanted = spec.get("ingressClassName")
    if wanted is not None:
        if wanted != class_name:
            return False
        if ours is None:
            return f"IngressClass {class_name} does not exist"
        if not _is_ours(ours):
            return (f"IngressClass {class_name} names controller "
                    f"{(ours.get('spec') or {}).get('controller')!r}, not {CONTROLLER}")
        return True
    legacy = ann.get(CLASS_ANNOTATION)
    if legacy is not None:
        return bool(legacy == class_name)
    return ours is not None and _is_ours(ours) and _is_default(ours)


# -- the layer -------------------------------------------------------------------------------


def _meta(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise _Bad("metadata is not an object")
    ns, name = meta.get("namespace"), meta.get("name")
    if not isinstance(ns, str) or not ns or not isinstance(name, str) or not name:
        raise _Bad("metadata.namespace or metadata.name is missing")
    return ns, name


def ingress_ident(obj: Any) -> tuple[str, str]:
    """(namespace, name) of an Ingress, with "?" for what is missing (for messages)."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns if isinstance(ns, str) and ns else "?",
            name if isinstance(name, str) and name else "?")


def _version(obj: dict[str, Any]) -> int:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return int(rv) if isinstance(rv, str) and rv.isdigit() else -1


def _host(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Bad(f"{what} is not a string")
    host = value.lower().rstrip(".")
    if not _HOST.match(host) or len(host) > 253:
        raise _Bad(f"{what} {value!r} is not a DNS name (or *. and one)")
    return host


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Bad(f"{what} is not a list")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{what} is not an object")
    return value


def _flag(ann: Mapping[str, Any], key: str, default: bool) -> bool:
    value = ann.get(NGINX + key)
    if value is None:
        return default
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _Bad(f"annotation {NGINX}{key}: expected \"true\" or \"false\", got {value!r}")


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a path sends: a backend name (maybe with no servers), and why it has none."""

    backend: str
    service: Ident
    port: _Port | None
    problem: str | None


class _Layer:
    def __init__(self, table: RouteTable, settings: Settings, plan_of: PlanOf,
                 previous: RouteTable | None) -> None:
        self.table = table
        self.previous = previous
        self.settings = settings
        self.plan_of = plan_of
        self.http: list[HttpRoute] = []
        self.https: list[HttpRoute] = []
        self.backends: dict[str, Backend] = {}
        self.skipped: list[SkippedService] = []
        self.services: set[Ident] = set()
        self.claims: dict[tuple[bool, str, str, PathMatch], str] = {}
        self.default_owner: str | None = None
        # (Ingress namespace, name), Secret name, the hosts it serves: in Ingress order
        self.tls: list[tuple[tuple[str, str], str, tuple[str, ...]]] = []
        self.certs: tuple[SniCertificate, ...] = ()
        self.looked: set[str] = set()  # backend names looked up in the table

    def skip(self, ns: str, name: str, reason: str, level: int = logging.WARNING) -> None:
        _log_once(level, ns, name, reason)
        self.skipped.append(SkippedService(ns, name, reason, KIND))

    def target(self, ns: str, raw: Any, what: str) -> _Target:
        backend = _obj(raw, what)
        if backend.get("resource") is not None:
            raise _Bad(f"{what}.resource: pylb forwards to services only")
        svc_ref = _obj(backend.get("service"), f"{what}.service")
        svc_name = svc_ref.get("name")
        if not isinstance(svc_name, str) or not svc_name:
            raise _Bad(f"{what}.service.name is missing")
        port_ref = _obj(svc_ref.get("port"), f"{what}.service.port")
        number, port_name = port_ref.get("number"), port_ref.get("name")
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)
                                   or not 1 <= number <= 65535):
            raise _Bad(f"{what}.service.port.number {number!r} is not a port number")
        if number is None and (not isinstance(port_name, str) or not port_name):
            raise _Bad(f"{what}.service.port needs a number or a name")
        ident = (ns, svc_name)
        self.services.add(ident)
        plan = self.plan_of(ns, svc_name)
        wanted = str(number) if number is not None else port_name
        svc: _Service | None = plan.svc if plan is not None else None
        if plan is None or svc is None:
            why = "does not exist" if plan is None else f"is unusable ({plan.error})"
            return _Target(f"{ns}/{svc_name}:{wanted}", ident, None,
                           f"service {ns}/{svc_name} {why}: its paths answer 503")
        port = next((p for p in svc.ports
                     if (p.port == number if number is not None else p.name == port_name)),
                    None)
        if port is None:
            return _Target(f"{ns}/{svc_name}:{wanted}", ident, None,
                           f"service {ns}/{svc_name} has no port {wanted}: its paths "
                           "answer 503")
        if port.protocol != "TCP":
            raise _Bad(f"service {ns}/{svc_name} port {wanted} is {port.protocol}, not TCP")
        return _Target(f"{ns}/{svc_name}:{port.port}", ident, port, None)

    def backend(self, target: _Target) -> Backend:
        """The backend of a target: the table's own when the service's route made it."""
        self.looked.add(target.backend)
        known = self.backends.get(target.backend) or self.table.get_backend(target.backend)
        if known is not None:
            return known
        plan = self.plan_of(*target.service)
        servers: tuple[Server, ...] = ()
        if plan is not None and plan.svc is not None and target.port is not None:
            for step in plan.steps:
                if not isinstance(step, str) and step[0] == target.port:
                    servers = step[1]
            backend = plan.backend(target.port, servers, self.settings)
        else:
            backend = Backend(target.backend)
        was = self.previous.get_backend(backend.name) if self.previous is not None else None
        if was is not None and was == backend:
            backend = was  # an unchanged backend stays the same object (workers keep state)
        self.backends[backend.name] = backend
        return backend

    def add(self, ns: str, name: str, route: HttpRoute) -> str | None:
        """Claim a route; the owner's name when it is already taken."""
        key = (route.tls, route.host or "", route.prefix, route.match)
        owner = self.claims.get(key)
        if owner is not None:
            return owner
        self.claims[key] = f"{ns}/{name}"
        (self.https if route.tls else self.http).append(route)
        return None

    def ingress(self, obj: dict[str, Any]) -> None:
        ns, name = _meta(obj)
        ident = f"{ns}/{name}"
        meta = obj["metadata"]
        ann = meta.get("annotations")
        ann = ann if isinstance(ann, dict) else {}
        spec = _obj(obj.get("spec"), "spec")
        tls_hosts: set[str] = set()
        tls_refs: list[tuple[tuple[str, str], str, tuple[str, ...]]] = []
        for i, entry in enumerate(_list(spec.get("tls"), "spec.tls")):
            entry = _obj(entry, f"spec.tls[{i}]")
            hosts: list[str] = []
            for j, h in enumerate(_list(entry.get("hosts"), f"spec.tls[{i}].hosts")):
                host = _host(h, f"spec.tls[{i}].hosts[{j}]")
                if host is not None:
                    hosts.append(host)
            secret = entry.get("secretName")
            if secret is not None and (not isinstance(secret, str) or not secret):
                raise _Bad(f"spec.tls[{i}].secretName is not a name")
            tls_hosts.update(hosts)
            if secret and hosts:
                tls_refs.append(((ns, name), secret, tuple(hosts)))
        nginx = _nginx(ann, ns, name)
        redirect, force = nginx.ssl_redirect, nginx.force_ssl_redirect
        routes: list[tuple[HttpRoute, _Target, str]] = []

        def mk(path: str, target: _Target, host: str | None, match: PathMatch, tls: bool,
               ssl_redirect: bool = False) -> HttpRoute:
            backend = target.backend + (f"@{ident}" if nginx.own_backend else "")
            return HttpRoute(ident, path, backend, host, strip_prefix=False, tls=tls,
                             ssl_redirect=ssl_redirect, match=match,
                             rewrite=nginx.rewrite if match is not PathMatch.DEFAULT else None,
                             redirect=nginx.redirect, redirect_code=nginx.redirect_code)

        for i, rule in enumerate(_list(spec.get("rules"), "spec.rules")):
            what = f"spec.rules[{i}]"
            try:
                rule = _obj(rule, what)
                host = _host(rule.get("host"), f"{what}.host")
                http = rule.get("http")
                paths = _list(_obj(http, f"{what}.http").get("paths"),
                              f"{what}.http.paths") if http is not None else []
            except _Bad as e:
                self.skip(ns, name, str(e))
                continue
            tls = host is not None and host in tls_hosts
            for j, p in enumerate(paths):
                pw = f"{what}.http.paths[{j}]"
                try:
                    p = _obj(p, pw)
                    path_type = p.get("pathType") or "ImplementationSpecific"
                    match = _PATH_TYPES.get(path_type)
                    if match is None:
                        raise _Bad(f"{pw}.pathType {path_type!r} is not Exact, Prefix or "
                                   "ImplementationSpecific")
                    path = p.get("path") or "/"
                    if nginx.regex and match is PathMatch.PREFIX:
                        match = PathMatch.REGEX  # ingress-nginx: `location ~* "^path"`
                        if not isinstance(path, str) or not _LOCATION.match(path) \
                                or not path.startswith("/"):
                            raise _Bad(f"{pw}.path {path!r} is not an absolute path")
                        try:
                            re.compile(path)
                        except re.error as e:
                            raise _Bad(f"{pw}.path {path!r} is not a regular expression "
                                       f"pylb reads: {e}") from None
                    elif not isinstance(path, str) or not _PATH.match(path):
                        raise _Bad(f"{pw}.path {path!r} is not an absolute path")
                    if match is PathMatch.PREFIX and len(path) > 1:
                        path = path.rstrip("/") or "/"
                    target = self.target(ns, p.get("backend"), f"{pw}.backend")
                except _Bad as e:
                    self.skip(ns, name, str(e))
                    continue
                on_tls = tls or force
                # ingress-nginx serves a rule without a host in its catch-all server,
                # which listens on 443 too (default certificate), without a redirect
                served_tls = on_tls or host is None
                routes.append((mk(path, target, host, match, False,
                                  on_tls and (force or redirect)),
                               target, f"{pw} ({host or '*'}{path})"))
                if served_tls:
                    routes.append((mk(path, target, host, match, True),
                                   target, f"{pw} ({host or '*'}{path}, TLS)"))
                if nginx.app_root is not None and j == 0:  # `/` of this host → app-root
                    for on in ((False, True) if served_tls else (False,)):
                        routes.append((HttpRoute(
                            ident, "/", target.backend, host, strip_prefix=False, tls=on,
                            match=PathMatch.EXACT, redirect=nginx.app_root,
                            redirect_code=302), target, f"app-root ({host or '*'}/)"))
        if spec.get("defaultBackend") is not None:
            try:
                target = self.target(ns, spec.get("defaultBackend"), "spec.defaultBackend")
            except _Bad as e:
                self.skip(ns, name, str(e))
            else:
                if self.default_owner is not None:
                    self.skip(ns, name, "spec.defaultBackend: the default backend is "
                              f"already Ingress {self.default_owner}'s")
                else:
                    self.default_owner = ident
                    # on both ports, as ingress-nginx's catch-all server
                    routes.append((mk("/", target, None, PathMatch.DEFAULT, False),
                                   target, "spec.defaultBackend"))
                    routes.append((mk("/", target, None, PathMatch.DEFAULT, True),
                                   target, "spec.defaultBackend (TLS)"))
        self.tls += tls_refs
        problems: set[str] = set()
        for route, target, where in routes:
            owner = (self.add(ns, name, route) if route.match is not PathMatch.DEFAULT
                     else self._add_default(route))
            if owner is not None:
                self.skip(ns, name, f"{where}: already taken by Ingress {owner}")
                continue
            backend = self.backend(target)
            if route.backend != backend.name and route.backend not in self.backends:
                own = replace(backend, name=route.backend)
                if nginx.cookie is not None:
                    own = replace(own, affinity=Affinity.COOKIE, cookie_name=nginx.cookie)
                if nginx.algorithm is not None:
                    own = replace(own, algorithm=nginx.algorithm)
                if nginx.h2c:
                    own = replace(own, h2c=True)
                was = (self.previous.get_backend(own.name) if self.previous is not None
                       else None)
                self.backends[own.name] = was if was is not None and was == own else own
            if target.problem is not None and target.problem not in problems:
                problems.add(target.problem)
                self.skip(ns, name, target.problem, logging.INFO)

    def _add_default(self, route: HttpRoute) -> str | None:
        (self.https if route.tls else self.http).append(route)
        return None

    def certificates(self, secrets: Mapping[tuple[str, str], Any]) -> None:
        """The certificates of the TLS hosts, from the Secrets; the Ingresses naming a
        Secret that cannot give one get the reason."""
        certs, problems = sni_certificates(
            ((ing[0], secret, hosts) for ing, secret, hosts in self.tls), secrets)
        self.certs = certs
        bad = dict(problems)
        for (ns, name), secret, _ in self.tls:
            reason = bad.get((ns, secret))
            if reason is not None:
                self.skip(ns, name, f"TLS secret {secret}: {reason}; its hosts get the "
                          "default certificate")

    def parts(self) -> LayerParts:
        t = self.table
        used = {r.backend for r in self.http}
        used.update(r.backend for r in self.https)
        new = tuple(b for n, b in self.backends.items()
                    if n in used and t.get_backend(n) is None)
        names = sorted(self.looked | self.backends.keys())
        return LayerParts(tuple(self.http), tuple(self.https), new,
                          tuple(dict.fromkeys(self.skipped)), self.certs,
                          tuple((n, t.get_backend(n)) for n in names))


def merge_layer(t: RouteTable, parts: LayerParts) -> RouteTable | None:
    """The services' table `t` with the Ingresses' `parts`; None when `t` differs from the
    table the parts were made for where they read it (then redo them)."""
    for name, was in parts.deps:
        if t.get_backend(name) is not was:
            return None
    if not (parts.http or parts.https or parts.skipped or parts.certs):
        return t
    by_name = dict(t._by_name)
    by_name.update((b.name, b) for b in parts.new)
    # The services' parts are sorted already: the layer's few are inserted into them
    # (O(n) copies at C speed, not a sort of the whole table in Python: at 10,000
    # services, a one-endpoint change cost 15 ms with the constructor). translate()
    # re-sorts and checks the result with the constructor, so the property test of
    # discovery/incremental.py would see a wrong order here.
    return RouteTable.from_sorted(
        _merged(t.http, parts.http, route_order), _merged(t.https, parts.https, route_order),
        t.tcp, _merged(t.backends, parts.new, _backend_name),
        _merged(t.skipped, parts.skipped, skipped_order), by_name,
        t.version, t.certs + parts.certs)


def _merged(base: tuple[T, ...], extra: Iterable[T], key: Callable[[T], Any]) -> tuple[T, ...]:
    """`base` (sorted by `key`) with `extra` inserted where a stable sort of `base` then
    `extra` would put them."""
    add = sorted(extra, key=key)
    if not add:
        return base
    out = list(base)
    for item in add:
        insort(out, item, key=key)
    return tuple(out)


def _backend_name(b: Backend) -> str:
    return b.name


def apply_ingresses(table: RouteTable, ingresses: Iterable[Any], classes: Iterable[Any],
                    settings: Settings, plan_of: PlanOf,
                    previous: RouteTable | None = None,
                    secrets: Mapping[tuple[str, str], Any] | None = None) -> IngressResult:
    """`table` with the routes of the Ingresses that are ours (see the module docstring).
    Backends equal to those of `previous` (the last result) are taken from it. Never
    raises: an Ingress that fails is skipped with a reason."""
    class_name = settings.ingress_class
    if class_name is None:
        return IngressResult(table, frozenset())
    layer = _Layer(table, settings, plan_of, previous)
    by_class = class_index(classes)
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in ingresses:
        ns, name = ingress_ident(obj)
        if ns != "?" and settings.namespaces and ns not in settings.namespaces:
            continue
        ours = selection(obj, by_class, class_name)
        if ours is False:
            continue
        if isinstance(ours, str):
            layer.skip(ns, name, ours)
            continue
        old = chosen.get((ns, name))
        if old is None or _version(obj) > _version(old):
            chosen[(ns, name)] = obj
    for (ns, name), obj in sorted(chosen.items()):
        try:
            layer.ingress(obj)
        except _Bad as e:
            layer.skip(ns, name, str(e))
        except Exception as e:  # a bug here must cost one Ingress, not the whole table
            log.exception("internal error translating Ingress %s/%s", ns, name)
            layer.skip(ns, name, f"internal error: {e!r}", logging.ERROR)
    layer.certificates(secrets or {})
    try:
        parts = layer.parts()
        merged = merge_layer(table, parts)
        assert merged is not None  # made for this very table
        return IngressResult(merged, frozenset(layer.services), parts)
    except (ValueError, AssertionError):  # a bug: serve the services alone
        log.exception("internal error adding the Ingresses' routes")
        return IngressResult(table, frozenset(layer.services))
