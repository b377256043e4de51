"""Incremental translation: the route table of `translate()`, redoing only what a change
touches.

Theory of operation
-------------------
`translate()` (discovery/translate.py) is the reference: every object in, one table out.
At 10,000 services that is a second of Python per change. `Translator` gets the same table
by keeping what translate() recomputes:

1. **Inputs, keyed.** The caller tells it which object changed (`set_service`,
   `set_slice`, `set_endpoints`: a key — the informer's (namespace, name), or any key the
   caller likes — and the object, or None when deleted) and the resolved ExternalName
   names (`set_external`). Each object is filed under the service it belongs to (a
   Service under its (namespace, name); a slice under its namespace and service-name
   label), and that service is marked dirty. Nothing else is done per event.
2. **Plans.** `build()` re-plans each dirty service — `plan_service`, the per-service
   part of translate(): parse it, read its endpoints — and compares the plan with the
   last one. An equal plan is the end of it.
3. **Claims.** A service whose plan changed may win or lose a route, host or TCP port that
   another service wants, and that one another's: the first service in (namespace, name)
   order wins, greedily, service by service. The greedy outcome of a service depends only
   on the services that share a claim key with it (`claim_keys`), so the services are
   re-claimed — with translate()'s own `_Builder`, in translate()'s order — over the
   connected component of the changed services in the graph "shares a claim key". In a
   cluster of plain services every component is one service.
4. **The table.** Each service's outcome (routes, backends, skips) replaces its last one
   in sorted lists kept between builds (bisect, or one sort when much changed); an
   outcome object equal to the one it replaces is not replaced, so a new table shares
   every unchanged Backend and route with the last (`is`). What depends on all services
   at once — whether any HTTPS route exists (then a TCP frontend may not take the HTTPS
   port), and so the TCP frontends and which TCP backends are used — is small and
   recomputed each build. The table is made with `RouteTable.from_sorted`: no sort, no
   scan. A build that changes nothing returns the last table itself.

5. **Ingresses** (with `--ingress-class`) are a layer over that table
   (discovery/ingress.py `apply_ingresses`), redone whole — it is small: one pass over
   the Ingresses, and one sort of the routes — when an Ingress or IngressClass changed,
   when the services' table changed, or when a service an Ingress names was re-planned
   (its servers may show only through an Ingress: a cloud-balanced service). Otherwise the
   last layered table is returned as it is.

tests/discovery/test_incremental.py checks, over random sequences of changes (collisions,
duplicates, TCP ports, --target-service), that every table equals translate()'s.

A `Translator` is not thread-safe: one caller at a time (KubeSource feeds and builds it
from one task; a big build runs in a thread while nothing else touches it).
"""

from __future__ import annotations

import logging
from bisect import bisect_left, insort
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from discovery.ingress import LayerParts, apply_ingresses, merge_layer
from discovery.secrets import by_ident
from discovery.translate import (
    Ident,
    Plan,
    _Builder,
    _TcpClaim,
    canonical_order,
    claim_keys,
    claim_service,
    endpoints_owner,
    newer,
    plan_service,
    service_ident,
    slice_owner,
)
from pylb.config import Settings
from pylb.model import (
    Backend,
    HttpRoute,
    RouteTable,
    SkippedService,
    TcpFrontend,
    route_order,
    skipped_order,
)

log = logging.getLogger("pylb.discovery")

Obj = Any  # an API object as a dict (anything else is bad input, skipped with a reason)
T = TypeVar("T")

# Sorted lists take changes one by one (bisect: O(n) memmove, fast) up to this many, or a
# sixteenth of the list; beyond that, one sort of the whole list is cheaper.
_BULK = 64


class _SortedList(Generic[T]):
    """A list kept in a table's order, and the tuple of it, made again only after a change.
    Items are unique by key (a table never holds two routes with one prefix and host, or
    two backends with one name)."""

    def __init__(self, key: Callable[[T], Any]) -> None:
        self.items: list[T] = []
        self._key = key
        self._tuple: tuple[T, ...] | None = ()

    def update(self, removed: list[T], added: list[T]) -> None:
        if not removed and not added:
            return
        self._tuple = None
        key = self._key
        n = len(removed) + len(added)
        if n > _BULK and n * 16 > len(self.items):
            if removed:
                gone = {id(x) for x in removed}
                self.items = [x for x in self.items if id(x) not in gone]
            self.items.extend(added)
            self.items.sort(key=key)
            return
        for x in removed:
            i = bisect_left(self.items, key(x), key=key)
            if i == len(self.items) or self.items[i] is not x:
                raise AssertionError(f"incremental table lost track of {x!r}")
            del self.items[i]
        for x in added:
            insort(self.items, x, key=key)

    def as_tuple(self) -> tuple[T, ...]:
        if self._tuple is None:
            self._tuple = tuple(self.items)
        return self._tuple

    @property
    def changed(self) -> bool:
        return self._tuple is None


# Indexes map to one value or, rarely, a list of them (a dict or set per entry would cost
# ~200 bytes each at 10,000 services for the one value they almost always hold).
Multi = dict[Any, Any]


def _multi_add(index: Multi, key: Any, value: Any) -> None:
    held = index.get(key, _NONE)
    if held is _NONE:
        index[key] = value
    elif type(held) is list:
        held.append(value)
    else:
        index[key] = [held, value]


def _multi_remove(index: Multi, key: Any, value: Any) -> None:
    held = index[key]
    if type(held) is list:
        held.remove(value)
        if len(held) == 1:
            index[key] = held[0]
    else:
        del index[key]


def _multi_get(index: Multi, key: Any) -> list[Any]:
    held = index.get(key, _NONE)
    if held is _NONE:
        return []
    return list(held) if type(held) is list else [held]


_NONE: Any = object()


@dataclass(slots=True)
class _Entry:
    """One service: its plan, its claim keys, and what it got when last claimed."""

    plan: Plan
    keys: tuple[tuple[Any, ...], ...]
    http: tuple[HttpRoute, ...] = ()
    https: tuple[HttpRoute, ...] = ()
    skipped: tuple[SkippedService, ...] = ()
    backends: tuple[Backend, ...] = ()  # of its routes
    tcp_backends: tuple[Backend, ...] = ()  # of its TCP claims (used if the port is)


class Translator:
    """Keeps the route table of a changing set of objects (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.plans = 0  # plan_service calls so far (tests count them)
        self.table = RouteTable()  # the last table built (version 0)
        self._services: dict[Hashable, tuple[Obj, Ident | SkippedService | None]] = {}
        self._candidates: Multi = {}  # Ident -> keys of _services
        self._slices: dict[Hashable, tuple[Obj, Ident | None]] = {}
        self._slices_of: Multi = {}  # Ident -> keys of _slices
        self._endpoints: dict[Hashable, tuple[Obj, Ident | None]] = {}
        self._endpoints_of: Multi = {}  # Ident -> keys of _endpoints
        self._external: Mapping[str, Any] = {}
        self._external_services: set[Ident] = set()
        self._dirty: set[Ident] = set()
        self._gone: dict[Ident, _Entry] = {}  # deleted since the last build
        self._entries: dict[Ident, _Entry] = {}
        self._by_key: Multi = {}  # claim key -> Idents of the entries that hold it
        # the table's parts
        self._http: _SortedList[HttpRoute] = _SortedList(route_order)
        self._https: _SortedList[HttpRoute] = _SortedList(route_order)
        self._backends: _SortedList[Backend] = _SortedList(_backend_name)
        self._by_name: dict[str, Backend] = {}
        self._skipped: _SortedList[SkippedService] = _SortedList(skipped_order)
        self._skip_counts: dict[SkippedService, int] = {}
        self._tcp_claims: dict[int, _TcpClaim] = {}
        self._tcp_backends: dict[str, Backend] = {}  # every TCP claim's backend
        self._tcp_used: dict[str, Backend] = {}  # those in the table
        self._tcp_skips: list[SkippedService] = []  # TCP ports that are reserved
        # backends out of / into the table, applied once the TCP ones are known (a backend
        # can move between a route and a TCP port as the same object)
        self._gone_backends: list[Backend] = []
        self._new_backends: list[Backend] = []
        # the Ingress layer: its inputs, the services' table it was laid on, the result
        self._ingresses: dict[Hashable, Obj] = {}
        self._ingress_classes: dict[Hashable, Obj] = {}
        self._secrets: dict[Hashable, Obj] = {}
        self._ingress_dirty = False
        self._ingress_base: RouteTable | None = None
        self._ingress_services: frozenset[Ident] = frozenset()
        self._ingress_parts: LayerParts | None = None
        self._layered = self.table

    # -- inputs ---------------------------------------------------------------------------

    @property
    def dirty(self) -> int:
        """Services marked for re-planning by the next `build()`."""
        return len(self._dirty)

    def set_service(self, key: Hashable, obj: Obj | None) -> None:
        """The Service stored under `key` is now `obj` (None: deleted)."""
        old = self._services.pop(key, None)
        if old is not None:
            if old[0] is obj:
                self._services[key] = old
                return
            ident = old[1]
            if isinstance(ident, SkippedService):
                self._count_skip(ident, -1)
            elif ident is not None:
                _multi_remove(self._candidates, ident, key)
                self._dirty.add(ident)
        if obj is None:
            return
        ident = service_ident(obj, self.settings)
        self._services[key] = (obj, ident)
        if isinstance(ident, SkippedService):
            self._count_skip(ident, 1)
        elif ident is not None:
            _multi_add(self._candidates, ident, key)
            self._dirty.add(ident)

    def set_slice(self, key: Hashable, obj: Obj | None) -> None:
        """The EndpointSlice stored under `key` is now `obj` (None: deleted)."""
        self._set_owned(self._slices, self._slices_of, slice_owner, key, obj)

    def set_endpoints(self, key: Hashable, obj: Obj | None) -> None:
        """The (legacy) Endpoints object stored under `key` is now `obj` (None: deleted)."""
        self._set_owned(self._endpoints, self._endpoints_of, endpoints_owner, key, obj)

    def _set_owned(self, store: dict[Hashable, tuple[Obj, Ident | None]],
                   of: Multi,
                   owner_of: Callable[[Obj], Ident | None], key: Hashable,
                   obj: Obj | None) -> None:
        old = store.pop(key, None)
        if old is not None:
            if old[0] is obj:
                store[key] = old
                return
            owner = old[1]
            if owner is not None:
                _multi_remove(of, owner, key)
                self._dirty.add(owner)
        if obj is None:
            return
        owner = owner_of(obj)
        store[key] = (obj, owner)
        if owner is not None:
            _multi_add(of, owner, key)
            self._dirty.add(owner)

    def set_ingress(self, key: Hashable, obj: Obj | None) -> None:
        """The Ingress stored under `key` is now `obj` (None: deleted)."""
        self._set_layer_input(self._ingresses, key, obj)

    def set_ingress_class(self, key: Hashable, obj: Obj | None) -> None:
        """The IngressClass stored under `key` is now `obj` (None: deleted)."""
        self._set_layer_input(self._ingress_classes, key, obj)

    def set_secret(self, key: Hashable, obj: Obj | None) -> None:
        """The Secret stored under `key` is now `obj` (None: deleted)."""
        self._set_layer_input(self._secrets, key, obj)

    def _set_layer_input(self, store: dict[Hashable, Obj], key: Hashable,
                         obj: Obj | None) -> None:
        old = store.pop(key, None)
        if obj is not None:
            store[key] = obj
        if old is not obj:
            self._ingress_dirty = True

    def set_external(self, external: Mapping[str, Any]) -> None:
        """The resolved ExternalName names (discovery.dns): re-plans ExternalName services."""
        if external == self._external:
            return
        self._external = external
        self._dirty.update(self._external_services)

    # -- the table ------------------------------------------------------------------------

    def build(self) -> RouteTable:
        """The table for the objects as they are now: `self.table` itself when nothing
        that shows in it changed."""
        changed, seed = self._replan()
        if changed:
            self._reclaim(self._component(changed, seed), seed)
        table = self._assemble()
        if self.settings.ingress_class is None:
            return table
        return self._layer(table, changed)

    def _layer(self, table: RouteTable, changed: list[Ident]) -> RouteTable:
        """`table` with the Ingresses' routes: the last result when nothing they read
        changed."""
        if not self._ingress_dirty and self._ingress_services.isdisjoint(changed):
            if table is self._ingress_base:
                return self._layered
            if self._ingress_parts is not None:
                # only the services' table moved: lay the same parts on it, if it still
                # agrees with what they read (else redo them below)
                merged = merge_layer(table, self._ingress_parts)
                if merged is not None:
                    self._ingress_base = table
                    if merged != self._layered:
                        self._layered = merged
                    return self._layered
        entries = self._entries

        def plan_of(ns: str, name: str) -> Plan | None:
            entry = entries.get((ns, name))
            return entry.plan if entry is not None else None

        result = apply_ingresses(table, self._ingresses.values(),
                                 self._ingress_classes.values(), self.settings, plan_of,
                                 self._layered, by_ident(self._secrets.values()))
        self._ingress_dirty = False
        self._ingress_base = table
        self._ingress_services = result.services
        self._ingress_parts = result.parts
        if result.table != self._layered:
            self._layered = result.table
        return self._layered

    def _replan(self) -> tuple[list[Ident], set[tuple[Any, ...]]]:
        """Re-plan the dirty services; those whose plan changed (or that are gone), and the
        claim keys they held or now hold."""
        changed: list[Ident] = []
        seed: set[tuple[Any, ...]] = set()
        settings, external = self.settings, self._external
        for ident in self._dirty:
            old = self._entries.get(ident)
            keys_of = _multi_get(self._candidates, ident)
            if not keys_of:
                if old is not None:
                    del self._entries[ident]
                    self._gone[ident] = old
                    self._unindex(ident, old.keys)
                    seed.update(old.keys)
                    changed.append(ident)
                self._external_services.discard(ident)
                continue
            obj = _winner([self._services[k][0] for k in keys_of])
            slices = [self._slices[k][0] for k in _multi_get(self._slices_of, ident)]
            eps = [self._endpoints[k][0] for k in _multi_get(self._endpoints_of, ident)]
            plan = plan_service(obj, ident[0], ident[1], settings, canonical_order(slices),
                                canonical_order(eps), external)
            self.plans += 1
            if plan.svc is not None and plan.svc.external_name is not None:
                self._external_services.add(ident)
            else:
                self._external_services.discard(ident)
            if old is not None and plan == old.plan:
                continue
            keys = claim_keys(plan, settings)
            if old is None:
                self._entries[ident] = _Entry(plan, keys)
            else:
                old.plan = plan
                if keys != old.keys:
                    self._unindex(ident, old.keys)
                    seed.update(old.keys)
                    old.keys = keys
                    old = None
            if old is None:
                for k in keys:
                    _multi_add(self._by_key, k, ident)
            seed.update(keys)
            changed.append(ident)
        self._dirty.clear()
        return changed, seed

    def _unindex(self, ident: Ident, keys: tuple[tuple[Any, ...], ...]) -> None:
        for k in keys:
            _multi_remove(self._by_key, k, ident)

    def _component(self, changed: list[Ident], seed: set[tuple[Any, ...]]) -> set[Ident]:
        """The changed services and every service connected to one through shared claim
        keys. Adds the keys reached to `seed`."""
        affected = {i for i in changed if i in self._entries}
        todo = list(seed)
        while todo:  # each key is queued once
            for ident in _multi_get(self._by_key, todo.pop()):
                if ident in affected:
                    continue
                affected.add(ident)
                for k in self._entries[ident].keys:
                    if k not in seed:
                        seed.add(k)
                        todo.append(k)
        # the changed services that are gone: their outcome is withdrawn below
        return affected | self._gone.keys()

    def _reclaim(self, affected: set[Ident], keys: set[tuple[Any, ...]]) -> None:
        """Claim again, in translate()'s order, for every affected service, and put each
        one's outcome in place of its last."""
        settings = self.settings
        builder = _Builder(settings)
        gone_http: list[HttpRoute] = []
        gone_https: list[HttpRoute] = []
        new_http: list[HttpRoute] = []
        new_https: list[HttpRoute] = []
        gone_backends: list[Backend] = []
        new_backends: list[Backend] = []
        for ident in sorted(affected):
            entry = self._entries.get(ident)
            if entry is None:
                old, out = self._gone.pop(ident), _EMPTY
            else:
                old = _Entry(entry.plan, entry.keys, entry.http, entry.https, entry.skipped,
                             entry.backends, entry.tcp_backends)
                builder.http, builder.https, builder.skipped = [], [], []
                builder.backends, builder.unrouted = {}, set()
                claim_service(ident[0], ident[1], entry.plan, settings, builder)
                http = _reuse(builder.http, old.http)
                https = _reuse(builder.https, old.https)
                routed = {r.backend for r in http}
                routed.update(r.backend for r in https)
                routed.update(builder.unrouted)  # --gateway-api: as translate()
                olds = {b.name: b for b in old.backends + old.tcp_backends}
                backends: list[Backend] = []
                tcp_backends: list[Backend] = []
                for name, b in builder.backends.items():
                    was = olds.get(name)
                    if was is not None and was == b:
                        b = was
                    (backends if name in routed else tcp_backends).append(b)
                entry.http, entry.https = tuple(http), tuple(https)
                entry.skipped = tuple(builder.skipped)
                entry.backends, entry.tcp_backends = tuple(backends), tuple(tcp_backends)
                out = entry
            _diff(old.http, out.http, gone_http, new_http)
            _diff(old.https, out.https, gone_https, new_https)
            _diff(old.backends, out.backends, gone_backends, new_backends)
            for s in old.skipped:
                self._count_skip(s, -1)
            for s in out.skipped:
                self._count_skip(s, 1)
            for b in old.tcp_backends:
                del self._tcp_backends[b.name]
            for b in out.tcp_backends:
                self._tcp_backends[b.name] = b
        self._http.update(gone_http, new_http)
        self._https.update(gone_https, new_https)
        self._gone_backends += gone_backends
        self._new_backends += new_backends
        for k in keys:
            if k[0] == "tcp":
                self._tcp_claims.pop(k[1], None)
        self._tcp_claims.update(builder.tcp)

    def _update_backends(self) -> None:
        gone, new = self._gone_backends, self._new_backends
        if not gone and not new:
            return
        self._gone_backends, self._new_backends = [], []
        moved = {id(b) for b in gone} & {id(b) for b in new}
        if moved:
            gone = [b for b in gone if id(b) not in moved]
            new = [b for b in new if id(b) not in moved]
        for b in gone:
            del self._by_name[b.name]
        for b in new:
            self._by_name[b.name] = b
        self._backends.update(gone, new)

    def _count_skip(self, skip: SkippedService, delta: int) -> None:
        n = self._skip_counts.get(skip, 0) + delta
        if n > 0:
            self._skip_counts[skip] = n
            if n == delta:  # new
                self._skipped.update([], [skip])
        else:
            del self._skip_counts[skip]
            self._skipped.update([self._skipped.items[
                bisect_left(self._skipped.items, skipped_order(skip), key=skipped_order)]], [])

    def _assemble(self) -> RouteTable:
        """The TCP frontends (what depends on all services at once), then the table."""
        s = self.settings
        reserved = {s.http_port: "the HTTP port", s.stats_port: "the stats port",
                    s.health_port: "the health port"}
        if self._https.items:
            reserved.setdefault(s.https_port, "the HTTPS port")
        old_tcp = {f.port: f for f in self.table.tcp}
        frontends: list[TcpFrontend] = []
        skips: list[SkippedService] = []
        used: dict[str, Backend] = {}
        for listen, claim in sorted(self._tcp_claims.items()):
            if listen in reserved:
                for ns, name in sorted(set(claim.owners)):
                    skips.append(SkippedService(ns, name, f"TCP port {listen} is "
                                                f"{reserved[listen]}"))
                continue
            f = TcpFrontend("+".join(sorted(claim.names)), listen, claim.default,
                            tuple(sorted((h, b) for h, (b, _) in claim.sni.items())))
            was = old_tcp.get(listen)
            frontends.append(was if was == f else f)
            for name in (f.backend, *(b for _, b in f.sni)):
                if name:
                    used[name] = self._tcp_backends[name]
        if skips != self._tcp_skips:
            for skip in self._tcp_skips:
                self._count_skip(skip, -1)
            for skip in skips:
                if skip not in self._tcp_skips:
                    log.warning("skipping service %s/%s: %s", skip.namespace, skip.name,
                                skip.reason)
                self._count_skip(skip, 1)
            self._tcp_skips = skips
        if used.keys() != self._tcp_used.keys() or any(
                self._tcp_used[n] is not b for n, b in used.items()):
            self._gone_backends += self._tcp_used.values()
            self._new_backends += used.values()
            self._tcp_used = used
        self._update_backends()
        last = self.table
        tcp = _same_or(tuple(frontends), last.tcp)
        if tcp is last.tcp and not any(p.changed for p in (self._http, self._https,
                                                            self._backends, self._skipped)):
            return last
        http = _same_or(self._http.as_tuple(), last.http)
        https = _same_or(self._https.as_tuple(), last.https)
        backends = _same_or(self._backends.as_tuple(), last.backends)
        skipped = _same_or(self._skipped.as_tuple(), last.skipped)
        if (http, https, tcp, backends, skipped) == (last.http, last.https, last.tcp,
                                                     last.backends, last.skipped):
            return last  # changed and changed back within one build
        by_name = last._by_name if backends is last.backends else dict(self._by_name)
        self.table = RouteTable.from_sorted(http, https, tcp, backends, skipped, by_name)
        return self.table


_EMPTY = _Entry(Plan(None, (), None), ())


def _same_or(new: tuple[T, ...], old: tuple[T, ...]) -> tuple[T, ...]:
    """`old` when `new` holds the same objects (an equal table is the same table)."""
    if len(new) == len(old) and all(a is b for a, b in zip(new, old, strict=True)):
        return old
    return new


def _backend_name(b: Backend) -> str:
    return b.name


def _winner(copies: list[Obj]) -> Obj:
    """Of the copies of one service, the one translate() keeps (`newer`)."""
    it = iter(copies)
    best = next(it)
    for obj in it:
        if newer(obj, best):
            best = obj
    return best


def _reuse(new: list[T], old: tuple[T, ...]) -> list[T]:
    """`new`, with each item equal to one in `old` replaced by that old object."""
    if not old:
        return new
    olds = {x: x for x in old}
    return [olds.get(x, x) for x in new]


def _diff(old: tuple[T, ...], new: tuple[T, ...], gone: list[T], added: list[T]) -> None:
    """Add to `gone` what of `old` is not (as the same object) in `new`, and to `added`
    what of `new` is not in `old`."""
    if not old:
        added.extend(new)
        return
    if len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True)):
        return
    old_ids = {id(x) for x in old}
    new_ids = {id(x) for x in new}
    gone.extend(x for x in old if id(x) not in new_ids)
    added.extend(x for x in new if id(x) not in old_ids)
