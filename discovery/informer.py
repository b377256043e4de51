"""The informer: a local copy of one kind of object in one namespace (or all), kept current
by list + watch.

Theory of operation
-------------------
This is client-go's reflector (`tools/cache/reflector.go`), owned by pylb rather than by
kubernetes-asyncio, whose `Watch` relists nothing, retries a 410 once with the same stale
version, hands plain-text bodies back as `str` events and, since 32.0, has no read
timeout. We use the generated API methods only to build authenticated requests
(`_preload_content=False` gives the raw aiohttp response) and read the stream ourselves:

1. **List**, paginated (`limit`, `continue`), into a *new* dict; only a complete list
   replaces the store, in one assignment, so readers never see a half-built store, and
   objects deleted while we were disconnected do disappear. The list's
   `metadata.resourceVersion` (not the largest item's) is where the watch starts.
2. **Watch** from that version with bookmarks and a server-side `timeoutSeconds`. Every
   event, bookmarks included, advances the version. A clean end (the server's timeout)
   reopens the watch at once from the last version; no relist.
3. **410 Gone** (an ERROR event, an HTTP 410, or an expired `continue` token) means our
   version has been compacted away: list again. The first relist is immediate; a
   repeated one backs off. A version *ahead* of the server's (504 "Too large resource
   version": etcd restored from a backup) also relists, after a backoff.
4. **Everything else** — 429 (text or JSON), 5xx, resets, a truncated or non-JSON line, a
   stream silent for `read_timeout` (a dead socket sends nothing, forever), a watch that
   closes at once with nothing in it — backs off with full jitter
   (`random() * min(cap, base * 2**n)`), at least `Retry-After` when the server sent one,
   and then resumes the watch from the last version: the store stays as it was, the last
   good state keeps serving.

The failure count resets when a watch delivers an event, or has stayed open for
`backoff_cap` (a quiet namespace on a server that sends no bookmarks delivers nothing, yet
is plainly back: without this, the next blip would inherit the last outage's backoff, up
to the cap; client-go likewise forgets its backoff after 2 minutes without one); never on
a bare list, so a server that answers every watch with 410 cannot make us relist in a hot
loop.

Randomness, sleeping and both clocks are injected so that tests run the backoff in
milliseconds. `on_change()` is called after every change to the store (a list, or an event
that adds, modifies or deletes); it must not block. Which objects changed is kept until the
consumer takes it (`take_changes()`: the keys, or None for "all": the first list), so a
consumer redoes only what changed. A relist keeps each object it already held with the same
resourceVersion (the API server changes it on every write) as that very object, and counts
as changed only the keys that were added, modified or deleted meanwhile. While a list runs
the cyclic garbage collector is paused, and a big list's objects are frozen out of its way
once stored (see FREEZE_LIST): otherwise each full collection walks the whole store again.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import (
    ApiClient,
    CoreV1Api,
    CustomObjectsApi,
    DiscoveryV1Api,
    NetworkingV1Api,
)

from pylb import collector
from pylb.config import KubeSettings

# Re-exported (`x as x`): callers and tests have long imported them from here.
from pylb.kubeapi import ApiError as ApiError
from pylb.kubeapi import backoff_delay as backoff_delay
from pylb.kubeapi import error_from_status
from pylb.kubeapi import is_too_large as is_too_large
from pylb.kubeapi import parse_status as parse_status
from pylb.kubeapi import retry_after as retry_after

log = logging.getLogger(__name__)

Object = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

# client-go: a watch that "lasted less than a second and no items received" is an error
# (reflector.go), so an API server answering every watch with an empty 200 cannot spin us.
MIN_WATCH_SECONDS = 1.0
MAX_LIST_PAGES = 100_000  # 50 M objects at limit=500: a server looping on `continue`
MAX_ERROR_BODY = 64 * 1024
# A list this big is moved out of the cyclic collector's way once stored (gc.freeze): the
# store lives until the next relist, and each full collection would walk it again. While
# any list is in progress the collector is paused: a list allocates only acyclic JSON, yet
# the growing heap would be walked again and again (measured at 10,000 services / 20,000
# objects: stalls of up to 255 ms on the loop during the initial lists). Frozen objects are
# still freed by reference counting when the store drops them.
FREEZE_LIST = 5_000


@dataclass(frozen=True, slots=True)
class Kind:
    """One listable kind: its plural, and the kubernetes-asyncio methods that list it in a
    namespace and in all namespaces."""

    plural: str
    group: str  # "core", "discovery" or "networking"; or a CRD's API group, with `version`
    namespaced: str  # "" for a cluster-scoped kind
    cluster: str
    field_selector: str = ""  # e.g. only kubernetes.io/tls Secrets
    version: str = ""  # a CRD's version: listed and watched through CustomObjectsApi
    # Metadata fields kept beyond KEPT_METADATA (slim): a Gateway API object's generation
    # (status.observedGeneration) and creationTimestamp (the spec's tie-break by age).
    more_metadata: frozenset[str] = frozenset()


def custom_kind(group: str, version: str, plural: str, *, namespaced: bool = True) -> Kind:
    """A CRD-backed kind (e.g. the Gateway API's): CustomObjectsApi's list calls, which take
    the same list/watch parameters as the built-in kinds' and answer the same shapes."""
    return Kind(plural, group, "list_namespaced_custom_object" if namespaced else "",
                "list_cluster_custom_object", version=version,
                more_metadata=frozenset({"generation", "creationTimestamp"}))


SERVICES = Kind("services", "core", "list_namespaced_service",
                "list_service_for_all_namespaces")
ENDPOINTSLICES = Kind("endpointslices", "discovery", "list_namespaced_endpoint_slice",
                      "list_endpoint_slice_for_all_namespaces")
ENDPOINTS = Kind("endpoints", "core", "list_namespaced_endpoints",
                 "list_endpoints_for_all_namespaces")
# With --ingress-class (discovery/ingress.py, discovery/secrets.py):
INGRESSES = Kind("ingresses", "networking", "list_namespaced_ingress",
                 "list_ingress_for_all_namespaces")
INGRESSCLASSES = Kind("ingressclasses", "networking", "", "list_ingress_class")
TLS_SECRETS = Kind("secrets", "core", "list_namespaced_secret",
                   "list_secret_for_all_namespaces", field_selector="type=kubernetes.io/tls")
_APIS = {"core": CoreV1Api, "discovery": DiscoveryV1Api, "networking": NetworkingV1Api}


class Gone(Exception):
    """410: our resourceVersion (or continue token) has expired; relist."""


class StreamError(Exception):
    """A watch stream we cannot read: truncated line, not JSON, not an event."""


# --- pure helpers -----------------------------------------------------------------------

def error_from_response(code: int, headers: Mapping[str, str], body: bytes,
                        now: float | None = None) -> Exception:
    """The exception for a non-2xx answer: `Gone` for 410, else `ApiError` (`now`: the
    wall clock a Retry-After date counts from, pylb.kubeapi.retry_after)."""
    status = parse_status(body)
    if code == 410:
        return Gone((status or {}).get("message") or "410 Gone")
    return error_from_status(code, status, headers=headers, now=now,
                             text=body[:200].decode("utf-8", "replace").strip())


def decode_event(line: bytes) -> tuple[str, Object]:
    """One watch line → (type, object). ERROR events raise `Gone` or `ApiError`;
    anything that is not a watch event raises `StreamError`."""
    try:
        event = json.loads(line)
    except ValueError as e:
        raise StreamError(f"watch line is not JSON: {line[:120]!r}") from e
    if not isinstance(event, dict):
        raise StreamError(f"watch line is not an event: {line[:120]!r}")
    etype, obj = event.get("type"), event.get("object")
    if not isinstance(obj, dict) or etype not in (
            "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"):
        raise StreamError(f"watch line is not an event: {line[:120]!r}")
    if etype == "ERROR":
        code = obj.get("code")
        if code == 410:
            raise Gone(str(obj.get("message") or "410 Gone"))
        raise error_from_status(code if isinstance(code, int) else 500, obj)
    return etype, obj


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


# The metadata fields pylb reads (discovery.translate, the stores' keys and versions);
# the rest — managedFields, often most of an object's bytes (client-go's
# TransformStripManagedFields), uid, creationTimestamp, ownerReferences, finalizers, … —
# is not stored: ~6 MiB at 10,000 services / 10,000 slices with the fake API server's
# sparse metadata, far more with a real cluster's.
KEPT_METADATA = frozenset({"name", "namespace", "resourceVersion", "labels", "annotations",
                           "deletionTimestamp"})
# An annotation kubectl writes on every object it applies (the whole object again, as
# JSON) and nothing in pylb reads.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def slim(obj: Object, more: frozenset[str] = frozenset()) -> Object:
    """The object as stored: only the metadata pylb reads (`KEPT_METADATA`, without
    kubectl's last-applied copy of the object), and with an EndpointSlice's endpoint
    `conditions` shared (`_shared_conditions`). The input is not changed (the metadata is
    a new dict when anything is left out)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        annotations = meta.get("annotations")
        odd = isinstance(annotations, dict) and LAST_APPLIED in annotations
        kept = KEPT_METADATA | more if more else KEPT_METADATA
        if odd or not kept.issuperset(meta):
            obj = dict(obj)
            meta = {k: v for k, v in meta.items() if k in kept}
            if odd:
                assert isinstance(annotations, dict)
                meta["annotations"] = {k: v for k, v in annotations.items()
                                       if k != LAST_APPLIED}
            obj["metadata"] = meta
    endpoints = obj.get("endpoints")
    if isinstance(endpoints, list) and "addressType" in obj:
        _share_conditions(endpoints)
    if "data" in obj and obj.get("type") not in (None, "kubernetes.io/tls"):
        # a Secret that is not a TLS certificate (discovery/secrets.py): its passwords
        # and tokens are not kept in memory
        obj = {k: v for k, v in obj.items() if k != "data"}
    return obj


# Equal `conditions` dicts of EndpointSlice endpoints, one object each. A cluster has a
# handful of distinct ones ({ready, serving, terminating} as booleans) and one per
# endpoint: at 100,000 endpoints, sharing them is ~20 MiB less in the controller. Stored
# objects are never mutated (translate and the Translator only read them), so one dict
# can stand for all equal ones; the ones changed here are fresh from the JSON decoder and
# not yet seen by anyone. Bounded: odd values are left alone past `_SHARED_MAX` kinds.
_SHARED: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
_SHARED_MAX = 64


def _share_conditions(endpoints: list[Any]) -> None:
    shared = _SHARED
    for ep in endpoints:
        if not isinstance(ep, dict):
            continue
        cond = ep.get("conditions")
        if type(cond) is not dict:
            continue
        try:
            key = tuple(sorted(cond.items()))
            one = shared.get(key)
        except TypeError:  # an unhashable value: not ours to judge here (translate does)
            continue
        if one is None:
            if len(shared) >= _SHARED_MAX:
                continue
            one = shared[key] = dict(cond)  # our own: no caller holds it
        ep["conditions"] = one


def apply_event(store: dict[Key, Object], etype: str, obj: Object,
                more: frozenset[str] = frozenset()) -> bool:
    """Apply a non-ERROR event to `store`; True when the store changed."""
    if etype == "BOOKMARK":
        return False
    key = object_key(obj)
    if etype == "DELETED":
        return store.pop(key, None) is not None
    store[key] = slim(obj, more)
    return True


def same_object(old: Object, new: Object) -> bool:
    """Whether `new` is `old` again: the same non-empty resourceVersion, else equal."""
    rv = resource_version(new)
    return (rv != "" and rv == resource_version(old)) or old == new


# --- the informer -----------------------------------------------------------------------

@dataclass(slots=True)
class InformerMetrics:
    lists: int = 0
    relists: int = 0  # list attempts after the first (after a 410, or a failed list)
    watches: int = 0  # watch requests opened
    watch_restarts: int = 0  # watches that ended (cleanly or not) and were reopened
    events: int = 0
    errors: int = 0
    last_sync: float | None = None  # wall clock of the last complete list
    last_error: str = ""


class Informer:
    """Keeps `objects` equal to the API's objects of `kind` in `namespace` (None = all)."""

    def __init__(
        self,
        api_client: ApiClient,
        kind: Kind,
        namespace: str | None,
        settings: KubeSettings,
        on_change: Callable[[], None] | None = None,
        *,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.objects: dict[Key, Object] = {}
        self.synced = False
        # the list was answered 404: the kind is not served here (a CRD not installed);
        # listing goes on with backoff, and a later list that succeeds clears it
        self.absent = False
        self._changes: set[Key] | None = None  # since the last take_changes(); None = all
        self.resource_version = ""
        self.metrics = InformerMetrics()
        self._settings = settings
        self._on_change = on_change or (lambda: None)
        self._rng = rng
        self._sleep = sleep
        self._clock = clock
        self._wallclock = wallclock
        self._failures = 0
        self._list_attempts = 0
        self._selector: dict[str, str] = (
            {"field_selector": kind.field_selector} if kind.field_selector else {})
        self._args: tuple[str, ...]
        if kind.version:
            api: Any = CustomObjectsApi(api_client)
            crd = (kind.group, kind.version)
            if namespace is None or not kind.namespaced:
                self._call = getattr(api, kind.cluster)
                self._args = (*crd, kind.plural)
            else:
                self._call = getattr(api, kind.namespaced)
                self._args = (*crd, namespace, kind.plural)
            return
        api = _APIS[kind.group](api_client)
        if namespace is None or not kind.namespaced:
            self._call = getattr(api, kind.cluster)
            self._args = ()
        else:
            self._call = getattr(api, kind.namespaced)
            self._args = (namespace,)

    def take_changes(self) -> set[Key] | None:
        """The keys of `objects` added, modified or deleted since the last call, or None
        when any may have (nothing taken since the first list): read `objects` whole."""
        changes, self._changes = self._changes, set()
        return changes

    @property
    def name(self) -> str:
        return f"{self.kind.plural}@{self.namespace or '*'}"

    async def run(self) -> None:
        """List and watch until cancelled. Never returns; never raises but CancelledError."""
        need_list = True
        while True:  # each turn awaits a request bounded by timeouts, or a backoff sleep
            delay = 0.0
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                self.metrics.watch_restarts += 1
                continue
            except Gone as e:
                need_list = True
                self._failures += 1
                if self._failures > 1:
                    delay = self._backoff()
                self._note_error(f"410 Gone: {e}", logging.INFO)
            except ApiError as e:
                again = self.absent and e.status == 404
                if need_list and e.status == 404 and not self.absent:
                    # Not served (a CRD not installed): a change for the owner, which may
                    # count this kind as listed and empty now (the Gateway source does) and
                    # would otherwise wait for some other change to build its first plan.
                    self.absent = True
                    self._on_change()
                need_list = need_list or e.too_large
                self._failures += 1
                delay = max(self._backoff(), min(e.retry_after or 0.0, self._settings.backoff_cap))
                self._note_error(f"API error {e}{self._hint(e.status)}",
                                 logging.DEBUG if again else logging.WARNING)
            except (StreamError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                self._failures += 1
                delay = self._backoff()
                self._note_error(f"{type(e).__name__}: {e}", logging.WARNING)
            except Exception as e:  # a bug must not end discovery: log it whole, go on
                self._failures += 1
                delay = self._backoff()
                log.exception("%s: unexpected error", self.name)
                self._note_error(f"{type(e).__name__}: {e}", None)
            if not need_list:
                self.metrics.watch_restarts += 1
            if delay > 0:
                await self._sleep(delay)

    def _hint(self, status: int) -> str:
        if status == 403:
            return (f" (RBAC: the service account needs get/list/watch on "
                    f"{self.kind.plural} in {self.namespace or 'all namespaces'})")
        if status == 404 and self.kind is ENDPOINTSLICES:
            return " (no discovery.k8s.io/v1 here? try --endpoints-api=endpoints)"
        return ""

    def _backoff(self) -> float:
        s = self._settings
        return backoff_delay(self._failures, s.backoff_base, s.backoff_cap, self._rng())

    def _note_error(self, text: str, level: int | None) -> None:
        self.metrics.errors += 1
        self.metrics.last_error = text
        if level is not None:
            log.log(level, "%s: %s (failures in a row: %d)", self.name, text, self._failures)

    def _timeout(self, total: float | None) -> aiohttp.ClientTimeout:
        s = self._settings
        return aiohttp.ClientTimeout(total=total, sock_connect=s.connect_timeout,
                                     sock_read=s.read_timeout)

    async def _list(self) -> None:
        with collector.paused():
            await self._list_pages()

    async def _list_pages(self) -> None:
        s = self._settings
        items: dict[Key, Object] = {}
        version = ""
        token: str | None = None
        if self._list_attempts:
            self.metrics.relists += 1
        self._list_attempts += 1
        for page in range(MAX_LIST_PAGES):
            kwargs: dict[str, Any] = {"limit": s.page_size, **self._selector}
            if token:
                kwargs["_continue"] = token
            resp = await self._call(*self._args, _preload_content=False,
                                    _request_timeout=self._timeout(s.list_timeout), **kwargs)
            try:
                body = await resp.read()
                if not 200 <= resp.status < 300:
                    raise error_from_response(resp.status, resp.headers, body[:MAX_ERROR_BODY],
                                              self._wallclock())
            finally:
                resp.release()
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise StreamError("list answer is not an object")
            meta = doc.get("metadata") or {}
            if page == 0:
                version = str(meta.get("resourceVersion") or "")
            for item in doc.get("items") or ():
                items[object_key(item)] = slim(item, self.kind.more_metadata)
            token = meta.get("continue") or None
            if not token:
                break
        else:
            raise StreamError(f"list did not end after {MAX_LIST_PAGES} pages")
        old, changes = self.objects, self._changes
        if old:  # a relist: keep what did not change, note what did
            for key, obj in items.items():
                was = old.get(key)
                if was is not None and same_object(was, obj):
                    items[key] = was
                elif changes is not None:
                    changes.add(key)
            if changes is not None:
                changes.update(key for key in old if key not in items)
        else:
            self._changes = None  # all of it
        if len(items) >= FREEZE_LIST:
            gc.freeze()  # while the collector is paused: the new objects join no generation
        self.objects = items
        self.resource_version = version
        self.synced = True
        self.absent = False
        self.metrics.lists += 1
        self.metrics.last_sync = self._wallclock()
        log.debug("%s: listed %d at %s", self.name, len(items), version)
        self._on_change()

    async def _watch(self) -> None:
        s = self._settings
        started = self._clock()
        deadline = started + s.watch_timeout + s.read_timeout
        self.metrics.watches += 1
        resp = await self._call(
            *self._args, watch=True, resource_version=self.resource_version,
            allow_watch_bookmarks=True, timeout_seconds=s.watch_timeout,
            _preload_content=False, _request_timeout=self._timeout(None), **self._selector)
        events = 0
        opened: float | None = None
        try:
            if resp.status != 200:
                async with asyncio.timeout(s.read_timeout):
                    body = await resp.content.read(MAX_ERROR_BODY)
                raise error_from_response(resp.status, resp.headers, body, self._wallclock())
            opened = self._clock()
            while self._clock() < deadline:
                try:
                    async with asyncio.timeout(s.read_timeout):
                        line = await resp.content.readline()
                except TimeoutError:
                    raise StreamError(f"watch silent for {s.read_timeout:g}s") from None
                if not line:
                    break
                if not line.endswith(b"\n"):
                    raise StreamError(f"watch stream cut mid-line: {line[:120]!r}")
                if not line.strip():
                    continue
                etype, obj = decode_event(line)
                events += 1
                self._failures = 0
                self.metrics.events += 1
                rv = resource_version(obj)
                if rv:
                    self.resource_version = rv
                if apply_event(self.objects, etype, obj, self.kind.more_metadata):
                    if self._changes is not None:
                        self._changes.add(object_key(obj))
                    self._on_change()
        finally:
            resp.close()
            if opened is not None and self._clock() - opened >= max(MIN_WATCH_SECONDS,
                                                                    s.backoff_cap):
                self._failures = 0  # held long enough, events or not: the server is back
        if events == 0 and self._clock() - started < MIN_WATCH_SECONDS:
            raise StreamError("watch ended at once with no events")
