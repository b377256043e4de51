"""The fake's etcd plus registry: objects, one global revision, bounded history, watchers.

Theory of operation. Every write takes the next value of one counter (`Store.rv`), shared by
all resources as etcd's revision is, stamps it on the object and appends a `Change` to a
bounded history. The history gives watches their replay ("everything after N") and lists their
snapshots ("the state at N", rebuilt by undoing later changes, which is how a continue token
sees a consistent list). When a change falls off the history, or `compact()` drops it,
`compacted_rv` moves up: asking for anything older is a 410, as after an etcd compaction.
Committed objects are never mutated (each write builds a new dict), so history entries and
watch queues may share them; everything handed to callers is a deep copy.

Writes go through one path per verb, with the registry strategy from `resources.py`:
server-set metadata (uid, creationTimestamp, resourceVersion, and generation for the kinds
whose strategy keeps one), generateName,
defaults, validation (422), optimistic concurrency (409), the spec/status split, create-on-PUT
where the real registry allows it, and no-op updates that keep the old revision (etcd skips
a write whose bytes did not change). Watchers are fed synchronously inside the write, so a
watcher sees changes in revision order and never misses one between its replay and its
first live event.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from tests.kfake import errors
from tests.kfake.errors import Cause
from tests.kfake.patch import apply_patch
from tests.kfake.resources import (
    Allocator,
    DecodeError,
    Resource,
    check_times,
    lookup,
    validate_meta,
)

JsonObj = dict[str, Any]
ObjKey = tuple[str, str]
T = TypeVar("T")

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"

CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted "
    "between the time the first chunk was returned and now may show up in the list."
)


@dataclass(frozen=True)
class Change:
    """One committed write. For DELETED, `obj` is the last state stamped with the deletion
    revision and `prev` the last state as it was stored."""

    rv: int
    type: str
    res: Resource
    namespace: str
    name: str
    obj: JsonObj
    prev: JsonObj | None


class Subscription:
    """A watcher's queue of changes, fed by the store during each write."""

    def __init__(self, res: Resource, namespace: str | None, maxsize: int) -> None:
        self.res = res
        self.namespace = namespace
        self.maxsize = maxsize
        self.pending: deque[Change] = deque()
        self.closed = False
        self.overflowed = False
        self._wakeup = asyncio.Event()

    def wants(self, ch: Change) -> bool:
        return ch.res is self.res and (self.namespace is None or ch.namespace == self.namespace)

    def offer(self, ch: Change) -> None:
        if self.closed:
            return
        if len(self.pending) >= self.maxsize:
            # The real cache drops a watcher whose buffer is full; it must relist or rewatch.
            self.overflowed = True
            self.close()
            return
        self.pending.append(ch)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def next(self, timeout: float) -> Change | None:
        """The next change, or None after `timeout` seconds or once closed and drained."""
        if not self.pending and not self.closed:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return None
        if self.pending:
            return self.pending.popleft()
        return None


def clone(obj: T) -> T:
    """A deep copy of JSON data (through the C codec: several times faster than deepcopy)."""
    return cast(T, json.loads(json.dumps(obj)))


def _now_rfc3339(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(int(clock()), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: JsonObj) -> JsonObj:
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    return meta


def _spec_part(obj: JsonObj) -> JsonObj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def _parse_rv(value: Any, what: str = "resourceVersion") -> int:
    try:
        rv = int(str(value))
    except ValueError:
        raise errors.bad_request(f"invalid {what}: {value!r}") from None
    if rv < 0:
        raise errors.bad_request(f"invalid {what}: {value!r}")
    return rv


class Store:
    """Objects of every resource, the global revision and its history, and the watchers."""

    def __init__(
        self,
        history_size: int = 1000,
        *,
        clock: Callable[[], float] = time.time,
        continue_ttl: float = 300.0,
        watch_buffer: int = 10_000,
    ) -> None:
        self.rv = 1
        self.compacted_rv = 1
        self.history_size = history_size
        self.clock = clock
        self.continue_ttl = continue_ttl
        self.watch_buffer = watch_buffer
        self.history: deque[Change] = deque()
        self._objects: dict[Resource, dict[ObjKey, JsonObj]] = {}
        self._subs: set[Subscription] = set()
        self._key_cache: dict[Resource, list[ObjKey]] = {}
        self._alloc = Allocator()
        self._rand = random.Random(0x6B66)

    # ---- resolving -----------------------------------------------------------------------

    @staticmethod
    def resource(which: str | Resource) -> Resource:
        return which if isinstance(which, Resource) else lookup(which)

    @staticmethod
    def home(res: Resource) -> Resource:
        """The resource whose storage `res` uses (itself, or e.g. core Events for
        events.k8s.io Events)."""
        return lookup(res.storage) if res.storage else res

    @staticmethod
    def view(res: Resource, obj: JsonObj) -> JsonObj:
        """A stored object as `res` shows it (a new dict when converted)."""
        if res.storage and res.from_storage is not None:
            return res.from_storage(obj)
        return obj

    @staticmethod
    def _to_storage(res: Resource, obj: JsonObj) -> JsonObj:
        if res.storage and res.to_storage is not None:
            return res.to_storage(obj)
        return obj

    def _table(self, res: Resource) -> dict[ObjKey, JsonObj]:
        return self._objects.setdefault(self.home(res), {})

    def _ns(self, res: Resource, namespace: str | None, obj: JsonObj | None = None) -> str:
        if not res.namespaced:
            return ""
        if namespace:
            return namespace
        meta_ns = ((obj or {}).get("metadata") or {}).get("namespace")
        return str(meta_ns) if meta_ns else "default"

    # ---- reads ---------------------------------------------------------------------------

    def get(self, which: str | Resource, namespace: str, name: str) -> JsonObj | None:
        res = self.resource(which)
        obj = self._table(res).get((self._ns(res, namespace), name))
        return clone(self.view(res, obj)) if obj is not None else None

    def read(self, which: str | Resource, namespace: str, name: str) -> JsonObj:
        """Like `get`, but a missing object is the API's 404."""
        res = self.resource(which)
        obj = self.get(res, namespace, name)
        if obj is None:
            raise errors.not_found(res.plural, res.group, name)
        return obj

    def items(self, which: str | Resource, namespace: str | None = None) -> list[JsonObj]:
        """Current objects in key order (namespace, name), deep-copied."""
        res = self.resource(which)
        table = self._table(res)
        return [clone(self.view(res, table[k])) for k in sorted(table)
                if namespace is None or k[0] == namespace]

    def state_at(self, res: Resource, rv: int) -> dict[ObjKey, JsonObj]:
        """The objects of `res` as they were at revision `rv` (410 if compacted away)."""
        if rv < self.compacted_rv:
            raise errors.gone(f"too old resource version: {rv} ({self.compacted_rv})")
        if rv > self.rv:
            raise errors.too_large_rv(rv, self.rv)
        return self._snapshot(res, rv)[0]

    def _snapshot(self, res: Resource, rv: int) -> tuple[dict[ObjKey, JsonObj], bool]:
        """(state at rv, whether its key set is the live one); the live table if unchanged."""
        later = []
        home = self.home(res)
        for ch in reversed(self.history):
            if ch.rv <= rv:
                break
            if ch.res is home:
                later.append(ch)
        if not later:
            return self._table(res), True
        state = dict(self._table(res))
        same_keys = True
        for ch in later:
            key = (ch.namespace, ch.name)
            if ch.prev is None:
                state.pop(key, None)
                same_keys = False
            else:
                same_keys = same_keys and (ch.type != "DELETED")
                state[key] = ch.prev
        return state, same_keys

    def _sorted_keys(self, res: Resource) -> list[ObjKey]:
        home = self.home(res)
        keys = self._key_cache.get(home)
        if keys is None:
            keys = self._key_cache[home] = sorted(self._table(home))
        return keys

    # ---- list with pagination ------------------------------------------------------------

    def list_page(
        self,
        which: str | Resource,
        namespace: str | None = None,
        *,
        match: Callable[[JsonObj], bool] | None = None,
        resource_version: str = "",
        exact: bool = False,
        limit: int = 0,
        continue_token: str = "",
        selector_used: bool = False,
    ) -> tuple[int, list[JsonObj], str, int | None]:
        """One page: (list RV, items in key order, continue token, remainingItemCount).

        Items are the stored dicts, not copies: the caller serializes them at once.
        """
        res = self.resource(which)
        start_after: ObjKey | None = None
        live_keys = True
        if continue_token:
            token_rv, start_after = self._decode_continue(continue_token)
            if token_rv == -1:
                # The token a 410 hands out: go on at the latest state, inconsistently.
                list_rv, state = self.rv, self._table(res)
            else:
                self.state_at(res, token_rv)  # 410 / 504 checks
                list_rv = token_rv
                state, live_keys = self._snapshot(res, token_rv)
        elif exact:
            list_rv = _parse_rv(resource_version)
            self.state_at(res, list_rv)
            state, live_keys = self._snapshot(res, list_rv)
        else:
            if resource_version not in ("", "0"):
                want = _parse_rv(resource_version)
                if want > self.rv:
                    raise errors.too_large_rv(want, self.rv)
            if resource_version == "0":
                limit = 0
            list_rv = self.rv
            state = self._table(res)
        keys = self._sorted_keys(res) if live_keys else sorted(state)
        lo, hi = 0, len(keys)
        if namespace is not None:
            lo = bisect.bisect_left(keys, (namespace, ""))
            hi = bisect.bisect_left(keys, (namespace + "\x00", ""))
        if start_after is not None:
            lo = max(lo, bisect.bisect_right(keys, start_after))
        out: list[JsonObj] = []
        token = ""
        remaining: int | None = None
        last: ObjKey = ("", "")
        for i in range(lo, hi):
            key = keys[i]
            obj = state[key]
            if match is not None and not match(obj):
                continue
            if limit and len(out) == limit:
                token = self._encode_continue(list_rv, last)
                if not selector_used:
                    remaining = hi - i
                break
            out.append(self.view(res, obj))
            last = key
        return list_rv, out, token, remaining

    def _encode_continue(self, rv: int, after: ObjKey) -> str:
        raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{after[0]}/{after[1]}\x00",
                          "t": self.clock()})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def _decode_continue(self, token: str) -> tuple[int, ObjKey]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
            rv = int(data["rv"])
            ns, _, name = str(data["start"]).rstrip("\x00").partition("/")
            issued = float(data["t"])
        except (ValueError, KeyError, TypeError):
            raise errors.bad_request("continue key is not valid: incorrect encoded start "
                                     "resourceVersion (version meta.k8s.io/v1)") from None
        if rv != -1 and (rv < self.compacted_rv or self.clock() - issued > self.continue_ttl):
            # etcd's answer after a compaction (apiserver `handleCompactedErrorForPaging`):
            # 410 with a token that continues at the latest revision.
            err = errors.gone(CONTINUE_TOO_OLD)
            err.body["metadata"] = {"continue": self._encode_continue(-1, (ns, name))}
            raise err
        return rv, (ns, name)

    # ---- writes --------------------------------------------------------------------------

    def create(
        self, which: str | Resource, obj: JsonObj, namespace: str | None = None
    ) -> JsonObj:
        return clone(self._create(self.resource(which), clone(obj), namespace))

    def _create(self, res: Resource, body: JsonObj, namespace: str | None) -> JsonObj:
        """Create from a body the store may keep; returns the stored object itself."""
        ns = self._ns(res, namespace, body)
        self._check_body(res, body, ns)
        meta = _meta(body)
        if meta.get("resourceVersion"):
            raise errors.internal_error(
                "resourceVersion should not be set on objects to be created")
        name = meta.get("name") or ""
        generate = meta.get("generateName") or ""
        if not name and not generate:
            raise errors.invalid_object(res.kind, res.group, "", [
                errors.required("metadata.name", "name or generateName is required")])
        table = self._table(res)
        if not name:
            for _ in range(100):
                name = generate + "".join(self._rand.choice(_NAME_CHARS) for _ in range(5))
                if (ns, name) not in table:
                    break
        for key in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
            meta.pop(key, None)
        if res.has_status:
            body["status"] = json.loads(res.initial_status)
        meta["name"] = name
        if res.namespaced:
            meta["namespace"] = ns
        self._prepare(res, body, None)
        if (ns, name) in table:
            raise errors.already_exists(res.plural, res.group, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now_rfc3339(self.clock)
        if res.generation:
            meta["generation"] = 1
        stored = self._commit(res, ns, name, "ADDED", self._to_storage(res, body), None)
        return self.view(res, stored)

    def update(
        self,
        which: str | Resource,
        obj: JsonObj,
        namespace: str | None = None,
        *,
        name: str | None = None,
        subresource: str = "",
    ) -> JsonObj:
        """PUT: compare-and-swap when the body carries a resourceVersion."""
        res = self.resource(which)
        body = clone(obj)
        ns = self._ns(res, namespace, body)
        self._check_body(res, body, ns)
        meta = _meta(body)
        body_name = meta.get("name") or ""
        if name is not None and body_name != name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        if not body_name:
            raise errors.bad_request("name is required")
        if subresource and (subresource != "status" or not res.has_status):
            raise errors.not_found(res.plural, res.group, body_name)
        old = self._table(res).get((ns, body_name))
        if old is None:
            if res.create_on_update and not subresource:
                meta.pop("resourceVersion", None)
                return self.create(res, body, ns)
            raise errors.not_found(res.plural, res.group, body_name)
        self._precondition(res, old, meta)
        return clone(self._replace(res, ns, old, body, subresource))

    def put(self, which: str | Resource, obj: JsonObj, namespace: str | None = None) -> JsonObj:
        """Test convenience: create, or replace whatever is there (spec and status alike)."""
        res = self.resource(which)
        ns = self._ns(res, namespace, obj)
        name = (obj.get("metadata") or {}).get("name", "")
        old = self._table(res).get((ns, name))
        if old is None:
            status = obj.get("status")
            created = self.create(res, obj, ns)
            if res.has_status and status is not None:
                created["status"] = status
                return self.update(res, created, ns, subresource="status")
            return created
        body = clone(obj)
        _meta(body)["resourceVersion"] = old["metadata"]["resourceVersion"]
        out = self.update(res, body, ns)
        if res.has_status and "status" in obj:
            out["status"] = obj["status"]
            out = self.update(res, out, ns, subresource="status")
        return out

    def update_status(
        self, which: str | Resource, obj: JsonObj, namespace: str | None = None
    ) -> JsonObj:
        return self.update(which, obj, namespace, subresource="status")

    def patch(
        self,
        which: str | Resource,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str = "application/merge-patch+json",
        *,
        subresource: str = "",
    ) -> JsonObj:
        """PATCH: apply to the stored object; a resourceVersion in the result is a precondition."""
        res = self.resource(which)
        ns = self._ns(res, namespace)
        if subresource and (subresource != "status" or not res.has_status):
            raise errors.not_found(res.plural, res.group, name)
        old = self._table(res).get((ns, name))
        if old is None:
            raise errors.not_found(res.plural, res.group, name)
        body = apply_patch(res, clone(self.view(res, old)), patch, content_type)
        if not isinstance(body, dict):
            raise errors.bad_request("patch result is not an object")
        meta = _meta(body)
        if meta.get("name") != name:
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        if res.namespaced and meta.get("namespace", ns) != ns:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        self._check_body(res, body, ns)
        self._precondition(res, old, meta)
        return clone(self._replace(res, ns, old, body, subresource))

    def delete(
        self,
        which: str | Resource,
        namespace: str,
        name: str,
        *,
        preconditions: JsonObj | None = None,
    ) -> JsonObj:
        """Delete now (no finalizers, no grace); returns the last stored state."""
        res = self.resource(which)
        ns = self._ns(res, namespace)
        old = self._table(res).get((ns, name))
        if old is None:
            raise errors.not_found(res.plural, res.group, name)
        pre = preconditions or {}
        old_meta = old["metadata"]
        if pre.get("resourceVersion") and pre["resourceVersion"] != old_meta["resourceVersion"]:
            raise errors.conflict(res.plural, res.group, name)
        if pre.get("uid") and pre["uid"] != old_meta["uid"]:
            raise errors.conflict_uid(res.plural, res.group, name, pre["uid"], old_meta["uid"])
        self._commit(res, ns, name, "DELETED", clone(old), old)
        return clone(self.view(res, old))

    def compact(self, rv: int | None = None) -> int:
        """Forget history up to `rv` (default: all of it); returns the new compacted revision.

        Watches and continue tokens older than it get 410 from now on.
        """
        target = self.rv if rv is None else min(rv, self.rv)
        while self.history and self.history[0].rv <= target:
            self.history.popleft()
        self.compacted_rv = max(self.compacted_rv, target)
        return self.compacted_rv

    # ---- watch support -------------------------------------------------------------------

    def subscribe(
        self, res: Resource, namespace: str | None, since: int | None
    ) -> tuple[Subscription, list[Change]]:
        """A live subscription plus what comes before it, atomically.

        `since=None`: synthetic ADDED for each current object (key order). `since=N`: the
        history after N (410 if compacted, 504 if N is in the future).
        """
        if since is not None:
            if since > self.rv:
                raise errors.too_large_rv(since, self.rv)
            if since < self.compacted_rv:
                raise errors.gone(f"too old resource version: {since} ({self.compacted_rv})")
        home = self.home(res)
        sub = Subscription(home, namespace, self.watch_buffer)
        if since is None:
            table = self._table(home)
            backlog = [
                Change(int(table[k]["metadata"]["resourceVersion"]), "ADDED", home, k[0], k[1],
                       table[k], None)
                for k in sorted(table) if namespace is None or k[0] == namespace
            ]
        else:
            backlog = [ch for ch in self.history if ch.rv > since and sub.wants(ch)]
        self._subs.add(sub)
        return sub, backlog

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        self._subs.discard(sub)

    def close_watchers(self) -> int:
        subs = list(self._subs)
        for sub in subs:
            self.unsubscribe(sub)
        return len(subs)

    @property
    def watcher_count(self) -> int:
        """Open watches (a closed one may linger in the set until the next write)."""
        return sum(1 for sub in self._subs if not sub.closed)

    # ---- internals -----------------------------------------------------------------------

    def _check_body(self, res: Resource, body: JsonObj, ns: str) -> None:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request was in an unknown format")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != res.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({res.api_version})"
            )
        if kind and kind != res.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({res.kind})"
            )
        meta = _meta(body)
        if res.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        try:
            check_times(res, body)
        except DecodeError as e:
            raise errors.bad_request(str(e)) from None
        body["apiVersion"] = res.api_version
        body["kind"] = res.kind

    def _precondition(self, res: Resource, old: JsonObj, meta: JsonObj) -> None:
        rv = meta.get("resourceVersion")
        name = old["metadata"]["name"]
        if not rv:
            if not res.unconditional_update:
                # The generic registry names the resource, not the kind, here (store.go:
                # "TODO: The Invalid error should have a field for Resource").
                raise errors.invalid_object(res.plural, res.group, name, [
                    errors.invalid("metadata.resourceVersion", 0, "must be specified for an update")
                ])
            return
        _parse_rv(rv)
        if str(rv) != old["metadata"]["resourceVersion"]:
            raise errors.conflict(res.plural, res.group, name)
        uid = meta.get("uid")
        if uid and uid != old["metadata"]["uid"]:
            raise errors.invalid_object(res.kind, res.group, name, [
                errors.invalid("metadata.uid", uid, "field is immutable")])

    def _replace(
        self, res: Resource, ns: str, stored: JsonObj, body: JsonObj, subresource: str
    ) -> JsonObj:
        """Write `body` over the `stored` object (a no-op if nothing changes); returns the
        object as `res` shows it."""
        old = self.view(res, stored)
        meta = _meta(body)
        old_meta = old["metadata"]
        if subresource == "status":
            new = clone(old)
            new["status"] = body.get("status") or {}
        else:
            new = body
            if res.has_status:
                new["status"] = clone(old.get("status") or {})
            for key in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                if key in old_meta:
                    meta[key] = old_meta[key]
            meta.pop("resourceVersion", None)
            if res.generation and _spec_part(new) != _spec_part(old):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
        self._prepare(res, new, old)
        old_cmp = {**old, "metadata": {k: v for k, v in old_meta.items() if k != "resourceVersion"}}
        new_cmp = {**new, "metadata": {k: v for k, v in new["metadata"].items()
                                       if k != "resourceVersion"}}
        if json.dumps(old_cmp, sort_keys=True) == json.dumps(new_cmp, sort_keys=True):
            return old
        out = self._commit(res, ns, old_meta["name"], "MODIFIED", self._to_storage(res, new),
                           stored)
        return self.view(res, out)

    def _prepare(self, res: Resource, body: JsonObj, old: JsonObj | None) -> None:
        if res.default is not None:
            res.default(body, old, self._alloc)
        causes: list[Cause] = validate_meta(res, body)
        if res.validate is not None:
            causes += res.validate(body, old)
        if causes:
            name = (body.get("metadata") or {}).get("name") or ""
            raise errors.invalid_object(res.kind, res.group, name, causes)

    def _commit(
        self, res: Resource, ns: str, name: str, etype: str, obj: JsonObj, prev: JsonObj | None
    ) -> JsonObj:
        """Store `obj` (storage form) under the next revision and tell the watchers."""
        home = self.home(res)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        table = self._table(home)
        if etype == "DELETED":
            del table[(ns, name)]
            self._key_cache.pop(home, None)
        else:
            if etype == "ADDED":
                self._key_cache.pop(home, None)
            table[(ns, name)] = obj
        ch = Change(self.rv, etype, home, ns, name, obj, prev)
        self.history.append(ch)
        while len(self.history) > self.history_size:
            self.compacted_rv = self.history.popleft().rv
        for sub in list(self._subs):
            if sub.closed:
                self._subs.discard(sub)
            elif sub.wants(ch):
                sub.offer(ch)
        return obj

    def load(self, which: str | Resource, objs: Iterable[JsonObj]) -> int:
        """Bulk create for benchmarks: the store takes ownership of the dicts given (no copies
        in or out), otherwise exactly `create`. Returns the store revision afterwards."""
        res = self.resource(which)
        for obj in objs:
            self._create(res, obj, None)
        return self.rv
