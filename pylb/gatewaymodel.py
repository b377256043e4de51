"""What the Gateway translation produces: plain frozen data, compared by value.

A `GatewayPlan` holds the listeners pylb binds (one `Listener` per Gateway listener it
accepts, at the address chosen for its Gateway), the compiled HTTPRoute rules attached to
each, and the status every watched object should carry (written by the leader only).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pylb.model import SniCertificate

JsonObj = dict[str, Any]

GROUP = "gateway.networking.k8s.io"
DEFAULT_CONTROLLER = "pylb.io/gateway-controller"

T = TypeVar("T", bound=type)


def pickled_by_fields(cls: T) -> T:
    """Pickle a slotted dataclass as its constructor call with the fields in order: half
    the time of the dataclass's own __getstate__/__setstate__ (which call `fields()` per
    object), both ways. A whole plan (to a worker that starts or lagged; a change goes as a
    pylb.gatewaydelta delta) at 5,000 routes is 25,000 objects: 78 → 41 ms to pickle, 71 →
    37 ms to unpickle (bench.gateway_scale)."""
    names: tuple[str, ...] = getattr(cls, "__slots__")  # noqa: B009
    get = operator.attrgetter(*names)
    single = len(names) == 1

    def __reduce__(self: Any) -> tuple[Any, tuple[Any, ...]]:
        values = get(self)
        return type(self), ((values,) if single else values)

    setattr(cls, "__reduce__", __reduce__)  # noqa: B010 (a method on a made class)
    return cls


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class HeaderOps:
    """A RequestHeaderModifier or ResponseHeaderModifier: names kept as given (lower-cased
    when compared)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


# Fields a header modifier may not touch: the message's framing and the hop-by-hop fields
# (RFC 9110 §7.6.1), which pylb writes itself on each side (a changed Content-Length would
# desynchronise the peer from the body). The translation refuses a modifier naming one.
FRAMING_FIELDS = frozenset(("content-length", "transfer-encoding", "connection",
                            "keep-alive", "proxy-connection", "te", "trailer", "upgrade"))


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class PathModifier:
    """`ReplaceFullPath` or `ReplacePrefixMatch` and its value."""

    kind: str
    value: str


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: PathModifier | None = None
    status: int = 302


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Rewrite:
    hostname: str | None = None
    path: PathModifier | None = None


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Filters:
    request_headers: HeaderOps | None = None
    response_headers: HeaderOps | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class WeightedBackend:
    """A backendRef: `service` is (namespace, name, port), or None when the reference does
    not resolve (its share of the traffic is answered 500, as the spec says)."""

    service: tuple[str, str, int] | None
    weight: int
    filters: Filters = Filters()


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class RouteMatch:
    """One `matches[]` entry of a rule, compiled. `path_kind` is Exact or PathPrefix;
    header names are lower case; `method` is upper case or None."""

    path_kind: str = "PathPrefix"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    queries: tuple[tuple[str, str], ...] = ()
    method: str | None = None


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class RuleEntry:
    """One (hostname, match) of a rule of an HTTPRoute attached to a listener.

    `hostname` is the route hostname after intersection with the listener's ("" = any).
    `order` is the spec's precedence key (smaller wins), ties broken by the route's age,
    namespace/name and the rule's and match's index.
    """

    hostname: str
    match: RouteMatch
    backends: tuple[WeightedBackend, ...]
    filters: Filters
    route: str  # namespace/name
    order: tuple[Any, ...] = field(compare=False, default=())


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class L4Route:
    """A TLSRoute (by SNI: `hostname` after intersection with the listener's, "" = any) or a
    TCPRoute (`hostname` "") attached to a TLS Passthrough or TCP listener."""

    hostname: str
    backends: tuple[WeightedBackend, ...]
    route: str  # namespace/name
    order: tuple[Any, ...] = field(compare=False, default=())


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Listener:
    """A Gateway listener pylb serves: `address:port`, matched by `hostname` ("" = any)."""

    gateway: str  # namespace/name
    name: str
    address: str
    port: int
    protocol: str
    hostname: str
    rules: tuple[RuleEntry, ...] = ()
    # HTTPS: what to terminate with, for `hostname` by SNI ("*": any name, and none)
    certificates: tuple[SniCertificate, ...] = ()
    # TLS (mode Passthrough) and TCP: the TLSRoutes/TCPRoutes attached, oldest first
    l4_routes: tuple[L4Route, ...] = ()


@dataclass(frozen=True)
class GatewayPlan:
    listeners: tuple[Listener, ...] = ()
    # status to write, keyed by (plural, namespace, name): the whole `status` object
    status: dict[tuple[str, str, str], JsonObj] = field(default_factory=dict, compare=False)
    skipped: tuple[str, ...] = ()  # "kind ns/name: reason", for logs and --dry
    # TLS (Passthrough) and TCP listeners with their routes (bound by proxy/tcp/gwl4.py,
    # apart from the HTTP ones: GatewayPlane never sees them)
    l4_listeners: tuple[Listener, ...] = ()

    def by_endpoint(self) -> dict[tuple[str, int], tuple[Listener, ...]]:
        """Listeners grouped by the (address, port) they share."""
        out: dict[tuple[str, int], list[Listener]] = {}
        for lst in self.listeners:
            out.setdefault((lst.address, lst.port), []).append(lst)
        return {k: tuple(v) for k, v in out.items()}
