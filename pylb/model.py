"""The route model: one immutable snapshot that the data plane reads.

A `RouteTable` is built by discovery (from Kubernetes objects or a file of manifests) and
handed to the workers whole. It is never mutated: a change produces a new table that
replaces the old one atomically. Connections already open keep the server they have; new
ones use the new table.

Everything here is plain frozen data with value equality, so two tables built from the
same objects compare equal (which lets discovery skip no-op updates) and `render()` gives a
stable, human-readable text (what `pylb run --dry` prints).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class Algorithm(enum.StrEnum):
    """Balancing algorithms, named as haproxy names them (`balance <name>`)."""

    ROUNDROBIN = "roundrobin"
    LEASTCONN = "leastconn"
    FIRST = "first"
    SOURCE = "source"


class Affinity(enum.StrEnum):
    """Session stickiness of a backend."""

    NONE = "none"
    CLIENT_IP = "client-ip"  # spec.sessionAffinity: ClientIP (haproxy: stick on src)
    COOKIE = "cookie"  # serviceloadbalancer/lb.cookie-sticky-session: "true"


class ProxyProtocol(enum.StrEnum):
    """PROXY protocol sent to backends of a TCP frontend (haproxy's send-proxy[-v2])."""

    NONE = "none"
    V1 = "v1"
    V2 = "v2"


class PathMatch(enum.StrEnum):
    """How an `HttpRoute` matches a request (proxy/http/routing.py does the matching)."""

    LEGACY = "legacy"  # the 2015 rules: segment-boundary prefix, OR-ed with the Host
    PREFIX = "prefix"  # Ingress pathType Prefix: host AND element-wise path prefix
    EXACT = "exact"  # Ingress pathType Exact: host AND the path itself
    DEFAULT = "default"  # Ingress defaultBackend: whatever no other route takes
    REGEX = "regex"  # ingress-nginx use-regex/rewrite-target: host AND ^path, any case


_set = object.__setattr__  # how a frozen dataclass sets its derived fields


@dataclass(frozen=True, slots=True)
class Server:
    """One endpoint of a backend: where to connect, and what Kubernetes says of it.

    `ready` endpoints get new work. An endpoint that is `serving` but `terminating` gets no
    new work but keeps its open connections (it is draining). `name` is what the stats
    page shows (the pod name when known, else `address:port`).
    """

    address: str
    port: int
    name: str = ""
    weight: int = 1
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    # Derived once: the data plane reads them on every request.
    key: tuple[str, int] = field(init=False, repr=False, compare=False)
    _label: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set(self, "key", (self.address, self.port))
        _set(self, "_label", self.name or None)

    @property
    def label(self) -> str:
        """The server's name on the stats page and in counters: `name`, else
        `address:port`, made on first use and kept — most of a big cluster's servers never
        see a request in a given worker, and a string each was ~6 MiB a process at
        100,000 servers. (proxy.http.server's `_attach` reads `_label` first.)"""
        label = self._label
        if label is None:  # two threads may both make it: the same string either way
            label = format_hostport(self.address, self.port)
            _set(self, "_label", label)
        return label

    @property
    def accepts_new_work(self) -> bool:
        return self.ready and not self.terminating and self.weight > 0

    def render(self) -> str:
        state = "ready" if self.accepts_new_work else (
            "draining" if self.serving or self.terminating else "not-ready")
        extra = f" weight={self.weight}" if self.weight != 1 else ""
        name = f" ({self.name})" if self.name else ""
        return f"{format_hostport(self.address, self.port)}{name} {state}{extra}"


def _server_setters() -> tuple[Any, ...]:
    return tuple(Server.__dict__[name].__set__ for name in (
        "address", "port", "name", "weight", "ready", "serving", "terminating", "key",
        "_label"))


_SERVER_SETTERS = _server_setters()
_new_server = Server.__new__


def server_unchecked(address: str, port: int, name: str, weight: int, ready: bool,
                     serving: bool, terminating: bool) -> Server:
    """`Server(address, port, name, weight, ready, serving, terminating)`, made by setting
    its slots directly: ~5 times faster than the frozen dataclass's `__init__` (one
    `object.__setattr__` per field, then `__post_init__`), which was most of a worker's
    0.4 s of CPU turning a 100,000-server table off the wire into objects. For values that
    came from a Server (pylb.delta's wire form); the derived fields are those of
    `__post_init__`, kept in step with it by tests/pylb/test_model.py."""
    s = _new_server(Server)
    a, p, n, w, r, sv, t, k, lb = _SERVER_SETTERS
    a(s, address)
    p(s, port)
    n(s, name)
    w(s, weight)
    r(s, ready)
    sv(s, serving)
    t(s, terminating)
    k(s, (address, port))
    lb(s, name or None)
    return s


@dataclass(frozen=True, slots=True)
class Backend:
    """A set of servers and how to choose among them.

    `name` is unique in a table: `namespace/service:port`.
    """

    name: str
    servers: tuple[Server, ...] = ()
    algorithm: Algorithm = Algorithm.ROUNDROBIN
    affinity: Affinity = Affinity.NONE
    cookie_name: str = "SERVERID"  # haproxy's conventional name for `cookie ... insert`
    proxy_protocol: ProxyProtocol = ProxyProtocol.NONE
    check_path: str | None = None  # HTTP health check path; None = TCP connect check
    # Actively checked? None: as --checks says for backends not annotated (translate
    # resolves it against the settings, so a rendered table shows it).
    check: bool | None = None
    # Failed connects in a row that eject a server (lb.error-limit); None: --error-limit.
    error_limit: int | None = None
    # Per-server connection limit (lb.maxconn or --server-maxconn; 0: none) and per-client
    # rate limit (lb.rate-limit or --rate-limit: per second, burst; None: none).
    maxconn: int = 0
    rate_limit: tuple[float, int] | None = None
    # Speak HTTP/2 without TLS (h2c, prior knowledge) to the servers: gRPC. From the
    # port's appProtocol (kubernetes.io/h2c, grpc) or lb.backend-protocol: h2c.
    h2c: bool = False

    @property
    def available(self) -> tuple[Server, ...]:
        return tuple(s for s in self.servers if s.accepts_new_work)

    def render(self) -> str:
        head = f"backend {self.name} balance={self.algorithm.value}"
        if self.affinity is not Affinity.NONE:
            head += f" affinity={self.affinity.value}"
            if self.affinity is Affinity.COOKIE:
                head += f" cookie={self.cookie_name}"
        if self.proxy_protocol is not ProxyProtocol.NONE:
            head += f" send-proxy={self.proxy_protocol.value}"
        if self.check:
            head += " check"
        if self.check_path:
            head += f" check-path={self.check_path}"
        if self.error_limit is not None:
            head += f" error-limit={self.error_limit}"
        if self.maxconn:
            head += f" maxconn={self.maxconn}"
        if self.rate_limit is not None:
            head += f" rate-limit={self.rate_limit[0]:g}/s,burst={self.rate_limit[1]}"
        if self.h2c:
            head += " proto=h2c"
        lines = [head]
        lines += [f"    server {s.render()}" for s in self.servers]
        if not self.servers:
            lines.append("    (no servers)")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """An L7 route on the plain (`tls=False`) or TLS frontend.

    A request matches when its path starts with `prefix` at a segment boundary (`/foo`
    matches `/foo`, `/foo/…` and `/foo?…`, never `/foobar`), compared case-insensitively
    when `case_insensitive`; or, when `host` is set, when its Host header (without port)
    equals `host` — the two are OR-ed, as the 2015 template's ACLs were. `strip_prefix`
    removes the prefix before forwarding (`/name/a?b` → `/a?b`, `/name` → `/`); aclMatch
    routes keep it. That is `match=LEGACY`; the Ingress kinds (`PREFIX`, `EXACT`,
    `DEFAULT`) match host AND path, `host` may then be a `*.` wildcard of one label, and
    `prefix` of a PREFIX route has no trailing slash (but `/` itself): see
    proxy/http/routing.py for their precedence.
    """

    name: str  # "svc" for service port 80, else "svc:port"; or the aclMatch prefix
    prefix: str
    backend: str
    host: str | None = None
    strip_prefix: bool = True
    case_insensitive: bool = False
    tls: bool = False
    ssl_redirect: bool = False  # plain frontend answers 301 to https for this route
    match: PathMatch = PathMatch.LEGACY
    # ingress-nginx rewrite-target: the path sent is this, with $1..$9 the groups of the
    # route's path (as a regular expression) matched against the request's path
    rewrite: str | None = None
    redirect: str | None = None  # answer every request with a redirect to this location
    redirect_code: int = 301  # or 302
    # The bare prefix (`/web`, no slash) of a stripping route answers 301 to `/web/`
    # (nginx's directory behaviour; lb.slash-redirect), so relative URLs resolve.
    slash_redirect: bool = False

    def render(self) -> str:
        flags = []
        if self.match is not PathMatch.LEGACY:
            flags.append(self.match.value)
        if self.rewrite is not None:
            flags.append(f"rewrite={self.rewrite}")
        if self.redirect is not None:
            flags.append(f"redirect-{self.redirect_code}={self.redirect}")
        if self.host:
            flags.append(f"host={self.host}")
        if self.case_insensitive:
            flags.append("-i")
        if not self.strip_prefix:
            flags.append("no-strip")
        if self.ssl_redirect:
            flags.append("redirect-https")
        if self.slash_redirect:
            flags.append("redirect-slash")
        tail = (" " + " ".join(flags)) if flags else ""
        return f"route {self.prefix} -> {self.backend}{tail}"


@dataclass(frozen=True, slots=True)
class TcpFrontend:
    """An L4 frontend: a listening port spliced to a backend.

    With `sni` set, this is TLS passthrough: the ClientHello's server name picks the
    backend among `sni` (exact name, then `*.` wildcard), else `backend` (which may be
    empty: then an unknown name is refused).
    """

    name: str
    port: int
    backend: str
    sni: tuple[tuple[str, str], ...] = ()
    # Gateway listeners (TLSRoute, TCPRoute: proxy/tcp/gwl4.py, served by a TcpProxy made
    # with gateway=True). A backend named in `weighted` is a choice among several, made
    # per connection in proportion to their weights ("" among them: that share is
    # refused); `gateway`: a `*.` name in `sni` covers any number of labels, as Gateway
    # API hostnames do (one, as certificates, otherwise).
    weighted: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    gateway: bool = False

    def render(self) -> str:
        line = f"tcp :{self.port} {self.name} -> {self.backend or '(none)'}"
        for host, backend in self.sni:
            line += f"\n    sni {host} -> {backend}"
        for choice, options in self.weighted:
            line += f"\n    {choice} = " + " ".join(f"{b or '(refused)'}*{w}"
                                                 for b, w in options)
        return line


@dataclass(frozen=True, slots=True)
class SniCertificate:
    """A certificate to serve on the TLS frontend for `hosts` (exact names, or `*.`
    wildcards of one label), from a Kubernetes Secret (discovery/secrets.py). `chain` and
    `key` are PEM as the Secret holds them, not yet checked: the TLS store checks them
    (proxy/tls.py) and serves the default certificate for the hosts of one that fails."""

    source: str  # "namespace/secret"
    hosts: tuple[str, ...]
    chain: bytes = field(repr=False)
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SkippedService:
    """A service the translation did not expose, and why (shown by --dry, logged, and
    written as a Kubernetes Event by the leader). `kind` is "Ingress" for an Ingress, or a
    part of one, that pylb does not serve."""

    namespace: str
    name: str
    reason: str
    kind: str = "Service"

    def render(self) -> str:
        kind = "" if self.kind == "Service" else f"{self.kind} "
        return f"skipped {kind}{self.namespace}/{self.name}: {self.reason}"


@dataclass(frozen=True)
class RouteTable:
    """The immutable snapshot the data plane serves from.

    Routes are kept sorted longest prefix first (then by name), so the first match wins
    and is the longest. `version` numbers the snapshot and takes no part in equality.
    """

    http: tuple[HttpRoute, ...] = ()
    https: tuple[HttpRoute, ...] = ()
    tcp: tuple[TcpFrontend, ...] = ()
    backends: tuple[Backend, ...] = ()
    skipped: tuple[SkippedService, ...] = ()
    # certificates from Secrets for the TLS frontend's SNI (Ingress spec.tls), in order:
    # the first listing a host serves it
    certs: tuple[SniCertificate, ...] = ()
    version: int = field(default=0, compare=False)
    _by_name: Mapping[str, Backend] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "http", _sort_routes(self.http))
        object.__setattr__(self, "https", _sort_routes(self.https))
        object.__setattr__(self, "tcp", tuple(sorted(self.tcp, key=lambda f: f.port)))
        object.__setattr__(self, "backends", tuple(sorted(self.backends, key=lambda b: b.name)))
        object.__setattr__(self, "skipped", tuple(sorted(set(self.skipped), key=skipped_order)))
        by_name = {b.name: b for b in self.backends}
        if len(by_name) != len(self.backends):
            raise ValueError("duplicate backend names in route table")
        for ref in self._backend_refs():
            if ref and ref not in by_name:
                raise ValueError(f"route refers to unknown backend {ref!r}")
        ports = [f.port for f in self.tcp]
        if len(set(ports)) != len(ports):
            raise ValueError("two TCP frontends on one port")
        object.__setattr__(self, "_by_name", by_name)

    def _backend_refs(self) -> Iterable[str]:
        for r in self.http + self.https:
            yield r.backend
        for f in self.tcp:
            yield f.backend
            for _, b in f.sni:
                yield b

    def backend(self, name: str) -> Backend:
        return self._by_name[name]

    def get_backend(self, name: str) -> Backend | None:
        return self._by_name.get(name)

    @classmethod
    def from_sorted(cls, http: tuple[HttpRoute, ...], https: tuple[HttpRoute, ...],
                    tcp: tuple[TcpFrontend, ...], backends: tuple[Backend, ...],
                    skipped: tuple[SkippedService, ...], by_name: Mapping[str, Backend],
                    version: int = 0, certs: tuple[SniCertificate, ...] = ()) -> RouteTable:
        """A table from parts already in the constructor's order and already valid, with
        `by_name` mapping each backend's name to it, and which the caller never mutates.

        No sorting and no checks: this is O(1), for builders that keep their parts sorted
        as they change (discovery's incremental translation, whose tests check that its
        tables equal the constructor's). Everyone else uses the constructor.
        """
        table = object.__new__(cls)
        for name, value in (("http", http), ("https", https), ("tcp", tcp),
                            ("backends", backends), ("skipped", skipped),
                            ("certs", certs), ("version", version), ("_by_name", by_name)):
            object.__setattr__(table, name, value)
        return table

    def with_version(self, version: int) -> RouteTable:
        """This table under another version number: shares every part (no re-sorting)."""
        return RouteTable.from_sorted(self.http, self.https, self.tcp, self.backends,
                                      self.skipped, self._by_name, version, self.certs)

    def render(self) -> str:
        out: list[str] = []
        out.append(f"# route table v{self.version}")
        out.append("frontend http")
        out += [f"    {r.render()}" for r in self.http] or ["    (no routes)"]
        out.append("frontend https")
        out += [f"    {r.render()}" for r in self.https] or ["    (no routes)"]
        for f in self.tcp:
            out.append(f"frontend {f.render()}")
        for b in self.backends:
            out.append(b.render())
        for s in self.skipped:
            out.append(s.render())
        for c in self.certs:
            out.append(f"certificate {c.source} for {' '.join(c.hosts)}")
        return "\n".join(out) + "\n"


def route_order(r: HttpRoute) -> tuple[int, str, str, str, str]:
    """A table's order of routes: longest prefix first, then by prefix, host, name, and
    match kind. (The router orders Ingress routes its own way.)"""
    return (-len(r.prefix), r.prefix, r.host or "", r.name, r.match.value)


def skipped_order(s: SkippedService) -> tuple[str, str, str, str]:
    """A table's order of skipped services."""
    return (s.namespace, s.name, s.reason, s.kind)


def _sort_routes(routes: Iterable[HttpRoute]) -> tuple[HttpRoute, ...]:
    return tuple(sorted(routes, key=route_order))


def format_hostport(address: str, port: int) -> str:
    """`1.2.3.4:80`, `[::1]:80` — the form haproxy and curl use."""
    if ":" in address:
        return f"[{address}]:{port}"
    return f"{address}:{port}"
