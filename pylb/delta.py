"""Route-table deltas: what changed between two tables, and the new table from the old one
and that change. Pure functions over `pylb.model`; nothing here does I/O.

A worker process gets the whole table once, then a `Delta` per new table: the backends
added or changed (whole, by name), the names of those removed, and each route tuple only
when it changed. `base` is the version the delta applies to and `version` the version it
makes; a worker whose table is not `base` asks for the whole table instead
(pylb.workers). The data plane applies a delta (or `diff` of its table and a new one)
incrementally: balancers of changed backends only, routers only when routes changed.

`diff` is cheap when the new table shares its unchanged `Backend` objects with the old one
by identity, as discovery builds them: one `is` per backend, `==` only for a backend that
is not the very same object. Route tuples: `is` first, then `==`.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

from pylb.model import (
    Backend,
    HttpRoute,
    RouteTable,
    Server,
    SkippedService,
    SniCertificate,
    TcpFrontend,
    server_unchecked,
)

_name = attrgetter("name")


@dataclass(frozen=True, slots=True)
class Delta:
    """The change from table version `base` to table version `version`."""

    base: int
    version: int
    backends: tuple[Backend, ...] = ()  # added or changed, whole
    removed: tuple[str, ...] = ()  # names of backends that left
    http: tuple[HttpRoute, ...] | None = None  # None: unchanged
    https: tuple[HttpRoute, ...] | None = None
    tcp: tuple[TcpFrontend, ...] | None = None
    skipped: tuple[SkippedService, ...] | None = None
    certs: tuple[SniCertificate, ...] | None = None

    @property
    def empty(self) -> bool:
        """Nothing but the version changes."""
        return not self.backends and not self.removed and self.http is None and \
            self.https is None and self.tcp is None and self.skipped is None and \
            self.certs is None

    def __reduce__(self) -> tuple[Any, ...]:
        if not PACKABLE:
            return (Delta, (self.base, self.version, self.backends, self.removed, self.http,
                            self.https, self.tcp, self.skipped, self.certs))
        return (_unpack_delta, (self.base, self.version, pack_backends(self.backends),
                                self.removed, _pack_routes(self.http),
                                _pack_routes(self.https), self.tcp, self.skipped,
                                self.certs))

    def render(self) -> str:
        """One line for the log."""
        parts = [f"v{self.base}→v{self.version}"]
        if self.backends:
            parts.append(f"{len(self.backends)} backends changed")
        if self.removed:
            parts.append(f"{len(self.removed)} removed")
        for what in ("http", "https", "tcp", "skipped", "certs"):
            if getattr(self, what) is not None:
                parts.append(f"{what} routes" if what not in ("skipped", "certs")
                             else f"{what} list")
        return ", ".join(parts)


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return a is b or a == b


def diff(old: RouteTable, new: RouteTable) -> Delta:
    """The delta that turns `old` into `new`: apply_delta(old, diff(old, new)) == new."""
    changed: list[Backend] = []
    found = 0
    get = old._by_name.get  # get_backend(), without a method call per backend
    for b in new.backends:
        o = get(b.name)
        if o is b:
            found += 1
            continue
        if o is None:
            changed.append(b)
            continue
        found += 1
        if o != b:
            changed.append(b)
    removed: tuple[str, ...] = ()
    if found < len(old.backends):  # names are unique: some old name is not in new
        removed = tuple(b.name for b in old.backends if new.get_backend(b.name) is None)
    return Delta(
        base=old.version, version=new.version, backends=tuple(changed), removed=removed,
        http=None if _same(old.http, new.http) else new.http,
        https=None if _same(old.https, new.https) else new.https,
        tcp=None if _same(old.tcp, new.tcp) else new.tcp,
        skipped=None if _same(old.skipped, new.skipped) else new.skipped,
        certs=None if _same(old.certs, new.certs) else new.certs)


def apply_delta(old: RouteTable, delta: Delta) -> RouteTable:
    """The table `delta` makes from `old`. Raises ValueError when `old` is not the delta's
    base version, or when the result would not be a valid table (a route to a backend
    that is gone): the caller then asks for the whole table."""
    if delta.base != old.version:
        raise ValueError(f"delta from v{delta.base} does not apply to v{old.version}")
    backends = _merge(old.backends, delta.backends, delta.removed)
    http = old.http if delta.http is None else delta.http
    https = old.https if delta.https is None else delta.https
    tcp = old.tcp if delta.tcp is None else delta.tcp
    skipped = old.skipped if delta.skipped is None else delta.skipped
    certs = old.certs if delta.certs is None else delta.certs
    if delta.removed or delta.http is not None or delta.https is not None or \
            delta.tcp is not None or delta.skipped is not None:
        # Routes changed or backends left: the constructor sorts and checks every reference.
        return RouteTable(http=http, https=https, tcp=tcp, backends=backends,
                          skipped=skipped, certs=certs, version=delta.version)
    # Only backends changed or came: every route's backend is still there, the order of
    # the parts is the old (checked) table's, and `_merge` kept `backends` sorted. Skip
    # the constructor's sort and checks, which cost ~20 ms at 10,000 services — most of a
    # one-backend change.
    by_name = dict(old._by_name)
    for b in delta.backends:
        by_name[b.name] = b
    return RouteTable.from_sorted(http, https, tcp, backends, skipped, by_name, delta.version,
                                  certs)


def _merge(old: tuple[Backend, ...], changed: tuple[Backend, ...],
           removed: tuple[str, ...]) -> tuple[Backend, ...]:
    """`old` (sorted by name) with `changed` put in by name and `removed` taken out, still
    sorted. When every changed backend replaces one of the same name and none leaves, the
    positions are found by bisection: a copy of the tuple, no sort."""
    if not removed:
        out = list(old)
        n = len(out)
        appended = False
        for b in changed:
            i = bisect_left(out, b.name, 0, n, key=_name)
            if i < n and out[i].name == b.name:
                out[i] = b
            else:
                out.append(b)
                appended = True
        if appended:
            out.sort(key=_name)
        return tuple(out)
    by_name = {b.name: b for b in old}
    for name in removed:
        by_name.pop(name, None)
    for b in changed:
        by_name[b.name] = b
    return tuple(sorted(by_name.values(), key=_name))



# -- the wire form ---------------------------------------------------------------------------
#
# Tables and deltas cross to the workers pickled (pylb.messages). Pickled as they are, their
# 100,000 Servers and 10,000 routes each go through dataclasses' per-field state functions:
# 1.5-2.6 s of the controller's loop for a 10,000-service table on the reference machine.
# Packed first into plain tuples of str/int/bool/enum (one C-level attrgetter call per
# object), the pickler's own work is all in C: ~10 times less. The worker rebuilds the
# objects with their constructors.

_PACKED_FIELDS = {
    Server: ("address", "port", "name", "weight", "ready", "serving", "terminating"),
    Backend: ("name", "servers", "algorithm", "affinity", "cookie_name", "proxy_protocol",
              "check_path", "check", "error_limit", "maxconn", "rate_limit", "h2c"),
    HttpRoute: ("name", "prefix", "backend", "host", "strip_prefix", "case_insensitive",
                "tls", "ssl_redirect", "match", "rewrite", "redirect", "redirect_code",
                "slash_redirect"),
}
_SERVER = attrgetter(*_PACKED_FIELDS[Server])
# A backend packs as (its fields but servers, its servers packed); see unpack_backends.
_BACKEND = attrgetter(*(n for n in _PACKED_FIELDS[Backend] if n != "servers"))
_ROUTE = attrgetter(*_PACKED_FIELDS[HttpRoute])


def _packing_current() -> bool:
    """Whether the packed forms name every constructor field, in order. A field added to
    the model and not here would be lost on the way to the workers: then tables and
    deltas are pickled as they are (slower, still whole), and a test fails."""
    return all(tuple(f.name for f in fields(cls) if f.init) == names
               for cls, names in _PACKED_FIELDS.items())


PACKABLE = _packing_current()

PackedBackend = tuple[tuple[Any, ...], tuple[tuple[Any, ...], ...]]


def pack_backends(backends: tuple[Backend, ...]) -> tuple[PackedBackend, ...]:
    server = _SERVER
    return tuple((_BACKEND(b), tuple(map(server, b.servers))) for b in backends)


def unpack_backends(packed: tuple[PackedBackend, ...],
                    ports: dict[int, int] | None = None) -> tuple[Backend, ...]:
    # Each port comes out of the unpickler as an int object of its own (pickle shares no
    # ints): one per port number instead is ~3 MiB less in a worker at 100,000 servers
    # (`ports`: the ones met so far, shared across the parts of one table).
    if ports is None:
        ports = {}
    share, make = ports.setdefault, server_unchecked
    out = []
    for (name, *rest), servers in packed:
        out.append(Backend(name, tuple(make(s[0], share(s[1], s[1]), *s[2:])
                                       for s in servers), *rest))
    return tuple(out)


def pack_routes(routes: tuple[HttpRoute, ...]) -> tuple[tuple[Any, ...], ...]:
    return tuple(map(_ROUTE, routes))


def _pack_routes(routes: tuple[HttpRoute, ...] | None) -> tuple[tuple[Any, ...], ...] | None:
    return None if routes is None else tuple(map(_ROUTE, routes))


def _unpack_routes(packed: tuple[tuple[Any, ...], ...] | None) -> tuple[HttpRoute, ...] | None:
    return None if packed is None else tuple(HttpRoute(*r) for r in packed)


def pack_table(table: RouteTable) -> tuple[Any, ...]:
    """`table` as plain tuples (for pickling); `unpack_table` makes it again."""
    return (_pack_routes(table.http), _pack_routes(table.https), table.tcp,
            pack_backends(table.backends), table.skipped, table.version, table.certs)


def unpack_table(packed: tuple[Any, ...]) -> RouteTable:
    http, https, tcp, backends, skipped, version, certs = packed
    return RouteTable(_unpack_routes(http) or (), _unpack_routes(https) or (), tcp,
                      unpack_backends(backends), skipped, certs, version=version)


def _unpack_delta(base: int, version: int, backends: tuple[PackedBackend, ...],
                  removed: tuple[str, ...], http: tuple[tuple[Any, ...], ...] | None,
                  https: tuple[tuple[Any, ...], ...] | None,
                  tcp: tuple[TcpFrontend, ...] | None,
                  skipped: tuple[SkippedService, ...] | None,
                  certs: tuple[SniCertificate, ...] | None = None) -> Delta:
    return Delta(base, version, unpack_backends(backends), removed, _unpack_routes(http),
                 _unpack_routes(https), tcp, skipped, certs)
