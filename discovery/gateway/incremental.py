"""The Gateway translation, incremental: a plan after a change costs what the change
touches, not what the cluster holds.

Theory of operation
-------------------
`translate` (translate.py) is a fold: the Gateway-level state (`gateway_state`), then each
route on its own against it (`translate_route`, a `RouteResult`: what it attaches where, its
status, its skipped lines), then the plan (`gateway_status`, `plan_listener`).
`GatewayTranslator.build(objects, …)` runs those very functions, and keeps each route's
result together with what it read, replaying it while none of that changed:

- the route as `route_key` sees it (the metadata translate reads, and the spec; not its
  status nor its resourceVersion): by identity first (an informer stores a new object on
  every event, so an untouched route is the very object), by key only when it is not;
- the Services it looked up, present or absent, with their ports: a reverse index
  (Service → routes) re-translates only the routes that name a Service that changed;
- the ReferenceGrants, if it read any (a cross-namespace backendRef);
- its namespace's labels, if it read them (a Selector listener);
- the Gateway-level state, through `GatewayState.route_view` (GatewayClasses, Gateways and
  their listeners, grants and Secrets through certificateRefs, the settings): when the view
  changes every route is translated again. That is rare, and a Gateway's status write (the
  leader's own, coming back) does not change it.

Which objects to look at: `build(changes=)` takes, by plural, the keys changed since the
last build (the informers' `take_changes()`), and looks at those keys only, plus the routes
a changed Service, namespace or grant made stale (`_stale_ids`): a turn after one route's
change touches that route, a turn with nothing changed no store at all. The identity and
`route_key` comparisons above are then applied to those keys; the whole store is compared
only for a plural whose set is None (the first list, a relist from scratch, a fresh
translator) and for the routes after the route view changed (none is cached). What the
plan's status may have changed in is kept too (`take_status_changes()`: the status keys of
the routes translated or dropped, the Gateways whose status was made again or went, every
GatewayClass's when the Gateway-level state was rebuilt): the leader's status pass looks at
those, and at the objects whose informer entry changed, and no other.

What a route read is recorded, not re-derived: the route is translated against mappings
that note each key looked up (`_Looked`, `_Used`), so the dependencies follow the
translation's code, with no second copy of its rules here. Services come in through the
Gateway source's own Service informer: EndpointSlices are not an input at all, so an
endpoint change never reaches this translator.

Each part of the plan is kept up to date too: per listener its entries in precedence order
(inserted by bisect; a route's own entries with equal precedence stay in the order made, as
translate's stable sort leaves them, and two routes never tie: the precedence ends with the
route's age, namespace and name), the attached counts, the routes' status dicts, the
skipped lines of the routes that have some. A replayed route contributes the very objects
it did (RuleEntry, L4Route, its status dict), so an unchanged listener is the same
`Listener` object and an unchanged status the same dict: the leader's status pass skips an
object whose planned status `is` the one it found settled (source.py, `_settled`), and a
delta to the workers can tell what changed by identity. With nothing changed, `build`
returns the last plan itself.

`now`: a replayed route keeps the `lastTransitionTime` of the translation that made it
(translate writes `now` on every condition it makes). That is the right value: a route
is replayed only while nothing it depends on changed, so its conditions have not
transitioned since; and the leader writes a condition's time only when its status
differs from the object's (`_settle` keeps the object's time while type and status
agree), so the time seen in the cluster is the same either way whenever a condition is
unchanged, and is the time pylb's view of it changed when it is not. Gateway statuses are
remade with the current `now` only when they differ otherwise.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import operator
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from discovery.gateway.translate import (
    L4_PROTOCOLS,
    ROUTE_PLURALS,
    GatewayInputs,
    GatewaySettings,
    GatewayState,
    ListenerKey,
    RouteResult,
    _by_order,
    _meta,
    _objects,
    gateway_state,
    gateway_status,
    listener_order,
    plan_listener,
    translate_route,
)
from pylb import collector
from pylb.gatewaymodel import GatewayPlan, JsonObj, Listener

StoreKey = Any  # an informer's key: (namespace, name)
RouteId = tuple[str, StoreKey]  # (plural, key in its store)
StatusKey = tuple[str, str, str]  # (plural, namespace, name): a GatewayPlan.status key
# By plural, the keys changed since the last build (Informer.take_changes()), or None: any
# may have (a plural missing from the mapping counts as None)
Changes = Mapping[str, Collection[StoreKey] | None]
_MISSING = object()


def route_key(obj: Any) -> Any:
    """What `translate` reads of a route (and of a GatewayClass or ReferenceGrant): not its
    status, nor its resourceVersion."""
    if not isinstance(obj, dict):
        return obj
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta = (meta.get("namespace"), meta.get("name"), meta.get("generation"),
                meta.get("creationTimestamp"))
    return meta, obj.get("spec")


def _gateway_key(obj: Any) -> Any:
    """A Gateway's: also its status.addresses (a pool address stays with its holder)."""
    status = obj.get("status") if isinstance(obj, dict) else None
    return route_key(obj), status.get("addresses") if isinstance(status, dict) else None


def service_ports(svc: Any) -> tuple[int, ...]:
    """A Service's ports, as a backendRef's `port` names them."""
    ports = (svc.get("spec") or {}).get("ports") or [] if isinstance(svc, dict) else []
    return tuple(p["port"] for p in ports
                 if isinstance(p, dict) and isinstance(p.get("port"), int))


def namespace_labels(ns: Any) -> dict[str, str]:
    return dict((ns.get("metadata") or {}).get("labels") or {}) if isinstance(ns, dict) else {}


def inputs_from(objects: Mapping[str, Mapping[Any, JsonObj]]) -> GatewayInputs:
    """The translation's inputs from the informers' stores (by plural)."""
    return GatewayInputs(
        tuple(objects.get("gatewayclasses", {}).values()),
        tuple(objects.get("gateways", {}).values()),
        tuple(objects.get("httproutes", {}).values()),
        tuple(objects.get("referencegrants", {}).values()),
        {key: service_ports(svc) for key, svc in objects.get("services", {}).items()},
        {name: namespace_labels(n) for (_, name), n in objects.get("namespaces", {}).items()},
        tlsroutes=tuple(objects.get("tlsroutes", {}).values()),
        tcproutes=tuple(objects.get("tcproutes", {}).values()))


class _Looked(Mapping[Any, Any]):
    """A mapping that notes each key looked up in it; `everything` once it is iterated."""

    __slots__ = ("_data", "everything", "seen")

    def __init__(self, data: Mapping[Any, Any]) -> None:
        self._data = data
        self.seen: list[Any] = []
        self.everything = False

    def __getitem__(self, key: Any) -> Any:
        self.seen.append(key)
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        self.seen.append(key)
        return key in self._data

    def get(self, key: Any, default: Any = None) -> Any:
        self.seen.append(key)
        return self._data.get(key, default)

    def __iter__(self) -> Iterator[Any]:
        self.everything = True
        return iter(self._data)

    def __len__(self) -> int:
        self.everything = True
        return len(self._data)


class _Used(Sequence[JsonObj]):
    """A sequence that notes whether it was read at all."""

    __slots__ = ("_data", "used")

    def __init__(self, data: Sequence[JsonObj]) -> None:
        self._data = data
        self.used = False

    def __getitem__(self, i: Any) -> Any:
        self.used = True
        return self._data[i]

    def __iter__(self) -> Iterator[JsonObj]:
        self.used = True
        return iter(self._data)

    def __len__(self) -> int:
        self.used = True
        return len(self._data)


@dataclass(eq=False, slots=True)
class _Route:
    obj: Any
    key: Any  # route_key(obj)
    status_key: tuple[str, str, str]
    order: tuple[int, str, str, str]  # of its skipped lines: (plural's rank, age, ns, name)
    result: RouteResult
    services: tuple[Any, ...] = ()  # looked up
    all_services: bool = False
    grants: bool = False
    namespaces: tuple[Any, ...] = ()
    stale: bool = False  # something it read changed: translate it again


_NOTHING = RouteResult((), (), None, ())
# Routes translated in one build past which a listener's entries are sorted once rather than
# each inserted in place (bisect: O(log n) comparisons and a move each; a sort of a list
# already in order: ~n comparisons)
BULK = 64


def _scan(store: Mapping[Any, Any], seen: dict[Any, tuple[Any, Any]],
          value: Any, keys: Collection[Any] | None = None) -> list[Any]:
    """Bring `seen` (key → (object, value(object))) up to `store`; the keys whose value
    changed, came or went. An object still there is the very object in the common case.
    `keys`: only those can have changed (None: any, the whole store is compared)."""
    changed = []
    if keys is not None:
        for key in keys:
            obj = store.get(key, _MISSING)
            was = seen.get(key)
            if obj is _MISSING:
                if was is not None:
                    del seen[key]
                    changed.append(key)
                continue
            if was is not None:
                if was[0] is obj:
                    continue
                v = value(obj)
                if v == was[1]:
                    seen[key] = (obj, v)
                    continue
                seen[key] = (obj, v)
            else:
                seen[key] = (obj, value(obj))
            changed.append(key)
        return changed
    before = len(seen)
    hits = 0
    for key, obj in store.items():
        was = seen.get(key)
        if was is not None:
            hits += 1
            if was[0] is obj:
                continue
            v = value(obj)
            if v != was[1]:
                changed.append(key)
            seen[key] = (obj, v)
        else:
            seen[key] = (obj, value(obj))
            changed.append(key)
    if hits < before:
        gone = [key for key in seen if key not in store]
        for key in gone:
            del seen[key]
        changed += gone
    return changed


class GatewayTranslator:
    """`build()` equals `translate()` of the same objects (with `now` where a condition was
    made): see the module's docstring. Stores are keyed as an informer keys them, by
    (namespace, name); objects are never mutated (the informer replaces them)."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[Any, tuple[Any, Any]]] = {
            p: {} for p in ("gatewayclasses", "gateways", "referencegrants", "services",
                            "namespaces")}
        self._ports: dict[Any, tuple[int, ...]] = {}
        self._labels: dict[str, dict[str, str]] = {}
        self._grants: list[JsonObj] = []
        self._secrets: tuple[Any, Any] | None = None
        self._core: GatewaySettings | None = None  # the settings but now, node_addresses
        self._state: GatewayState | None = None
        self._view: Any = None
        self._routes: dict[str, dict[StoreKey, _Route]] = {p: {} for p in ROUTE_PLURALS}
        self._by_service: dict[Any, set[RouteId]] = {}
        self._by_namespace: dict[Any, set[RouteId]] = {}
        self._grant_readers: set[RouteId] = set()
        self._all_services: set[RouteId] = set()
        self._stale_ids: set[RouteId] = set()  # routes marked stale, not yet translated
        # the status keys whose planned status may not be the object it was, since the
        # last take_status_changes() (None: any)
        self._status_changes: set[StatusKey] | None = None
        # the plan's parts
        self._attached: dict[ListenerKey, int] = {}
        self._entries: dict[ListenerKey, list[Any]] = {}
        self._status: dict[tuple[str, str, str], JsonObj] = {}
        self._lines: dict[RouteId, tuple[tuple[int, str, str, str], tuple[str, ...]]] = {}
        self._route_lines: tuple[str, ...] = ()
        self._lines_dirty = False
        self._listeners: dict[ListenerKey, Listener] = {}
        self._gw_status: dict[str, tuple[JsonObj, str | None, str]] = {}  # (…, line, now)
        self._gw_inputs: tuple[Any, Any] | None = None  # (unavailable, node_addresses)
        self._plan: GatewayPlan | None = None
        self.translated = 0  # routes translated, ever (tests, bench)

    def build(self, objects: Mapping[str, Mapping[Any, Any]], *,
              settings: GatewaySettings, changes: Changes | None = None,
              secrets: frozenset[tuple[str, str]] | None = None,
              secret_objects: Mapping[tuple[str, str], Any] | None = None,
              unavailable: frozenset[tuple[str, int]] = frozenset()) -> GatewayPlan:
        """The plan of `objects` (informer stores by plural: gatewayclasses, gateways,
        httproutes, tlsroutes, tcproutes, referencegrants, services, namespaces) with the
        other inputs as `translate` takes them.

        `changes`: by plural, the keys whose objects may differ from the last build's (the
        informers' `take_changes()`), or None for "any": only those keys are looked at, so a
        build after one route change costs what that route touches and a build with nothing
        changed does not walk the stores. A plural missing, or None, is compared whole (by
        identity, then by what translate reads), as every plural is when `changes` is None
        (the first build, a relist, a fresh translator)."""
        s = settings

        def keys(plural: str) -> Collection[StoreKey] | None:
            return None if changes is None else changes.get(plural)

        secret_objects = secret_objects if secret_objects is not None else {}
        empty: Mapping[Any, Any] = {}
        dirty_listeners: set[ListenerKey] = set()
        changed = remake = False

        # Gateway-level: GatewayClasses, Gateways, grants, Secrets, settings
        seen = self._seen
        gw_changed = bool(_scan(objects.get("gatewayclasses", empty), seen["gatewayclasses"],
                                route_key, keys("gatewayclasses")))
        gw_changed = bool(_scan(objects.get("gateways", empty), seen["gateways"],
                                _gateway_key, keys("gateways"))) or gw_changed
        grants_changed = bool(_scan(objects.get("referencegrants", empty),
                                    seen["referencegrants"], route_key,
                                    keys("referencegrants")))
        if grants_changed:
            self._grants = _objects(obj for obj, _ in seen["referencegrants"].values())
            self._stale(self._grant_readers)
        core = dataclasses.replace(s, now="", node_addresses=())
        if self._secrets is None or self._secrets[0] != secrets or \
                self._secrets[1] != secret_objects:
            self._secrets = (secrets, dict(secret_objects))
            gw_changed = True
        if core != self._core:
            self._core = core
            gw_changed = True
        if gw_changed or grants_changed or self._state is None:
            state = gateway_state(GatewayInputs(
                _objects(obj for obj, _ in seen["gatewayclasses"].values()),
                _objects(obj for obj, _ in seen["gateways"].values()), (), self._grants,
                secrets=secrets, secret_objects=secret_objects), s)
            view = state.route_view()
            if view != self._view:
                self._reset_routes()
                self._view = view
            if self._status_changes is not None:  # GatewayClasses' (and Gateways')
                self._status_changes.update(k for k in state.status)
                if self._state is not None:
                    self._status_changes.update(k for k in self._state.status)
            self._state = state
            remake = True  # every listener and Gateway status (the same objects if equal)
            changed = True
        state = self._state

        # Services and namespaces: the routes that read a changed one are stale
        for key in _scan(objects.get("services", empty), seen["services"], service_ports,
                         keys("services")):
            was = seen["services"].get(key)
            if was is None:
                self._ports.pop(key, None)
            else:
                self._ports[key] = was[1]
            self._stale(self._by_service.get(key, ()))
            self._stale(self._all_services)
        for key in _scan(objects.get("namespaces", empty), seen["namespaces"],
                         namespace_labels, keys("namespaces")):
            name = key[1]  # (cluster-scoped: ("", name)) keyed by name, as inputs_from does
            was = seen["namespaces"].get(key)
            if was is None:
                self._labels.pop(name, None)
            else:
                self._labels[name] = was[1]
            self._stale(self._by_namespace.get(name, ()))

        # routes: identity, then route_key, then what they read; of all of them, or of the
        # changed and the stale ones (every one after _reset_routes: none is cached)
        todo: list[tuple[str, StoreKey, Any]] = []
        every = not any(self._routes.values())
        stale_ids, self._stale_ids = self._stale_ids, set()
        for plural in ROUTE_PLURALS:
            store = objects.get(plural, empty)
            cache = self._routes[plural]
            look = None if every else keys(plural)
            if look is not None:
                if stale_ids:
                    look = {*look, *(key for p, key in stale_ids if p == plural)}
                for key in look:
                    obj = store.get(key, _MISSING)
                    r = cache.get(key)
                    if obj is _MISSING:
                        if r is not None:
                            self._drop(plural, key, dirty_listeners)
                            changed = True
                        continue
                    if r is not None and not r.stale:
                        if r.obj is obj:
                            continue
                        if route_key(obj) == r.key:
                            r.obj = obj  # its status or resourceVersion: nothing to do
                            continue
                    todo.append((plural, key, obj))
                continue
            before = len(cache)
            hits = 0
            for key, obj in store.items():
                r = cache.get(key)
                if r is not None:
                    hits += 1
                    if r.obj is obj and not r.stale:
                        continue
                    if not r.stale and route_key(obj) == r.key:
                        r.obj = obj  # its status or resourceVersion: nothing to do
                        continue
                todo.append((plural, key, obj))
            if hits < before:
                for key in [key for key in cache if key not in store]:
                    self._drop(plural, key, dirty_listeners)
                    changed = True
        if todo:
            for plural, key, _ in todo:
                if key in self._routes[plural]:
                    self._drop(plural, key, dirty_listeners)
            # many routes (a first plan, a relist): their entries appended, each listener
            # sorted once (stable: a route's own ties stay in the order made); a few: each
            # entry inserted in place
            bulk = len(todo) > BULK
            # (the collector paused for many, as for the Service source's first table:
            # a translation makes no cyclic garbage, and what it keeps would be walked
            # again and again while it grows: 5,000 routes, ~210 → ~120 ms)
            with collector.paused() if bulk else contextlib.nullcontext():
                for plural, key, obj in todo:
                    self._add(plural, key, obj, state, s, dirty_listeners, bulk)
            if bulk:
                for lkey in dirty_listeners:
                    if lkey in self._entries:
                        self._entries[lkey].sort(key=_by_order)
            changed = True

        # the plan: listeners, Gateway statuses, skipped lines
        if self._lines_dirty:
            self._route_lines = tuple(line for _, lines in sorted(self._lines.values())
                                      for line in lines)
            self._lines_dirty = False
        gw_inputs = (unavailable, s.node_addresses)
        if gw_inputs != self._gw_inputs:
            self._gw_inputs = gw_inputs
            remake_gateways = True
        else:
            remake_gateways = remake
        dirty_gateways = {lkey[0] for lkey in dirty_listeners}
        gw_status: dict[str, tuple[JsonObj, str | None, str]] = {}
        after: list[str] = []
        status_changes = self._status_changes
        for gkey in state.gw_meta:
            old = self._gw_status.get(gkey)
            # kept when nothing it reads changed, or when all that changed is its time
            if old is not None and (
                    not (remake_gateways or gkey in dirty_gateways) or
                    gateway_status(gkey, state, self._attached, unavailable,
                                   dataclasses.replace(s, now=old[2]))[0] == old[0]):
                made = old
            else:
                st, line = gateway_status(gkey, state, self._attached, unavailable, s)
                made = (st, line, s.now)
                changed = True
                if status_changes is not None:
                    status_changes.add(_gateway_status_key(gkey))
            gw_status[gkey] = made
            if made[1] is not None:
                after.append(made[1])
        if status_changes is not None:  # Gateways gone
            status_changes.update(_gateway_status_key(gkey) for gkey in self._gw_status
                                  if gkey not in gw_status)
        self._gw_status = gw_status
        if not changed and self._plan is not None:
            return self._plan
        plan_listeners: list[Listener] = []
        l4_listeners: list[Listener] = []
        listeners: dict[ListenerKey, Listener] = {}
        for gkey, lsts in state.listeners.items():
            for lst in lsts:
                if not lst.usable:
                    continue
                lkey = (gkey, lst.name)
                out = self._listeners.get(lkey)
                if out is None or remake or lkey in dirty_listeners:
                    new = plan_listener(lst, self._entries.get(lkey, ()))
                    out = out if out is not None and _same_listener(out, new) else new
                listeners[lkey] = out
                (l4_listeners if lst.protocol in L4_PROTOCOLS else plan_listeners).append(out)
        self._listeners = listeners
        plan_listeners.sort(key=listener_order)
        l4_listeners.sort(key=listener_order)
        status = dict(state.status)
        status.update(self._status)
        for gkey, (gst, _, _) in gw_status.items():
            ns, name = gkey.split("/", 1)
            status[("gateways", ns, name)] = gst
        plan = GatewayPlan(tuple(plan_listeners), status,
                           (*state.skipped, *self._route_lines, *after), tuple(l4_listeners))
        self._plan = plan
        return plan

    def take_status_changes(self) -> set[StatusKey] | None:
        """The keys of the plan's `status` whose value may not be the very object it was
        in the plans built before the last call (a route's or Gateway's made again, come
        or gone), or None when any may be (nothing taken since the translator was made, or
        every route translated again). The leader's status pass looks at these only."""
        changes, self._status_changes = self._status_changes, set()
        return changes

    def _stale(self, ids: Iterable[RouteId]) -> None:
        for rid in ids:
            plural, key = rid
            self._routes[plural][key].stale = True
            self._stale_ids.add(rid)

    def _reset_routes(self) -> None:
        """Every route translated again (the Gateway-level state they read changed)."""
        self._routes = {p: {} for p in ROUTE_PLURALS}
        self._by_service = {}
        self._by_namespace = {}
        self._grant_readers = set()
        self._all_services = set()
        self._stale_ids = set()
        self._status_changes = None
        self._attached = {}
        self._entries = {}
        self._status = {}
        self._lines = {}
        self._lines_dirty = True

    def _add(self, plural: str, key: StoreKey, obj: Any, state: GatewayState,
             s: GatewaySettings, dirty: set[ListenerKey], bulk: bool) -> None:
        rid = (plural, key)
        if not (isinstance(obj, dict) and _meta(obj)[1]):  # not an object: no route
            self._routes[plural][key] = _Route(obj, route_key(obj), ("", "", ""),
                                               (0, "", "", ""), _NOTHING)
            return
        ns, name, _, created = _meta(obj)
        services = _Looked(self._ports)
        namespaces = _Looked(self._labels)
        grants = _Used(self._grants)
        result = translate_route(plural, obj, state,
                                 GatewayInputs(grants=grants, services=services,
                                               namespaces=namespaces), s)
        self.translated += 1
        r = _Route(obj, route_key(obj), (plural, ns, name),
                   (ROUTE_PLURALS.index(plural), created, ns, name), result,
                   tuple(dict.fromkeys(services.seen)), services.everything, grants.used,
                   tuple(dict.fromkeys(namespaces.seen)))
        self._routes[plural][key] = r
        for svc in r.services:
            self._by_service.setdefault(svc, set()).add(rid)
        if r.all_services:
            self._all_services.add(rid)
        if r.grants:
            self._grant_readers.add(rid)
        for n in r.namespaces:
            self._by_namespace.setdefault(n, set()).add(rid)
        attached = self._attached
        for lkey in result.attached:
            attached[lkey] = attached.get(lkey, 0) + 1
            dirty.add(lkey)
        for lkey, made in result.entries:
            entries = self._entries.setdefault(lkey, [])
            if bulk:
                entries += made
            else:
                for e in made:
                    bisect.insort_right(entries, e, key=_by_order)
        if result.status is not None:
            self._status[r.status_key] = result.status
        if self._status_changes is not None and r.status_key[0]:
            self._status_changes.add(r.status_key)
        if result.skipped:
            self._lines[rid] = (r.order, result.skipped)
            self._lines_dirty = True

    def _drop(self, plural: str, key: StoreKey, dirty: set[ListenerKey]) -> None:
        rid = (plural, key)
        r = self._routes[plural].pop(key)
        result = r.result
        for svc in r.services:
            users = self._by_service[svc]
            users.discard(rid)
            if not users:
                del self._by_service[svc]
        for n in r.namespaces:
            users = self._by_namespace[n]
            users.discard(rid)
            if not users:
                del self._by_namespace[n]
        self._all_services.discard(rid)
        self._grant_readers.discard(rid)
        attached = self._attached
        for lkey in result.attached:
            attached[lkey] -= 1
            if not attached[lkey]:
                del attached[lkey]
            dirty.add(lkey)
        for lkey, made in result.entries:
            entries = self._entries[lkey]
            for e in made:
                i = bisect.bisect_left(entries, e.order, key=_by_order)
                while entries[i] is not e:
                    i += 1
                del entries[i]
            if not entries:
                del self._entries[lkey]
        if result.status is not None:
            del self._status[r.status_key]
        if self._status_changes is not None and r.status_key[0]:
            self._status_changes.add(r.status_key)
        if result.skipped:
            del self._lines[rid]
            self._lines_dirty = True


def _gateway_status_key(gkey: str) -> StatusKey:
    ns, name = gkey.split("/", 1)
    return ("gateways", ns, name)


def _same_listener(old: Listener, new: Listener) -> bool:
    """Equal, with the very same entries (RuleEntry.order is not compared by ==)."""
    return len(old.rules) == len(new.rules) and \
        len(old.l4_routes) == len(new.l4_routes) and \
        all(map(operator.is_, old.rules, new.rules)) and \
        all(map(operator.is_, old.l4_routes, new.l4_routes)) and \
        (old.gateway, old.name, old.address, old.port, old.protocol, old.hostname,
         old.certificates) == (new.gateway, new.name, new.address, new.port, new.protocol,
                               new.hostname, new.certificates)
