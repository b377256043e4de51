"""The Kubernetes source: informers over Services and EndpointSlices (or Endpoints), turned
into route tables.

Theory of operation
-------------------
One `Informer` per kind per namespace (or one per kind for all namespaces) keeps a local
copy of the objects (see discovery/informer.py). Each change to any store marks the source
dirty and wakes the publisher, which waits for the burst to settle — `coalesce_window` of
quiet, and never more than `coalesce_max_delay` after its first event — then takes from
each informer the keys that changed and hands just those objects to a `Translator`
(discovery/incremental.py), which re-plans only the services they belong to and builds a
table sharing everything else with the last one. No table is built or published before
every informer has completed its first list (a table from half the kinds would serve 503s
for services whose endpoints have not arrived yet): the first table of a big cluster is
built once, from everything, after the lists. A table equal to the last one published
(versions aside) is not published again; each table published carries the next version
number.

Where the work runs: a burst that touches few services (`SMALL_BUILD`) is translated on
the loop — a few milliseconds, less than a thread hop costs under load. A big one (the
first table, a relist) runs in a thread, so the controller's loop keeps serving the stats
page, /readyz and lease renewals; the thread holds the GIL for at most the interpreter's
switch interval (5 ms) at a time, and the loop only hands it objects it has already read
from the stores, which are never mutated after they are stored. A big build pauses the
cyclic garbage collector, and the first one then freezes what it and the stores hold (see
`_build_big`): with a million long-lived objects, each full collection would otherwise
stall the loop for hundreds of ms. Should a build fail (a bug), the translator is dropped
and the next one starts again from every object.

Stores are only ever replaced by complete lists, and a failing watch leaves its store as
it was, so a table is never built from a partial list: while the API server is away, the
last good table keeps serving, and the first fresh list replaces it.

ExternalName services are resolved by `ExternalNames`: a new name is looked up before the
table that first needs it is built, waiting at most `coalesce_max_delay` (a slow DNS server
must not hold back every other change; a late answer makes a new table), and every name is
re-resolved every `dns_interval`; a changed answer makes a new table.

The data path never waits on any of this: `publish` is called with a finished, immutable
table and must not block. Should it raise, the table is offered again (with a new version)
shortly after.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient

from discovery.dns import ExternalNames, Resolve, external_names, resolve
from discovery.incremental import Translator
from discovery.informer import (
    ENDPOINTS,
    ENDPOINTSLICES,
    INGRESSCLASSES,
    INGRESSES,
    SERVICES,
    TLS_SECRETS,
    Informer,
    Key,
    Kind,
    Object,
)
from discovery.translate import KubeObjects
from pylb import collector
from pylb.config import Settings
from pylb.kubeapi import client_for
from pylb.model import RouteTable

log = logging.getLogger(__name__)

ApiClientFactory = Callable[[], Awaitable[ApiClient]]
Translate = Callable[[KubeObjects, Settings], RouteTable]
Publish = Callable[[RouteTable], None]

# A burst changing at most this many objects, re-planning at most this many services, is
# translated on the loop (≈ 50 µs a service, so at most ~10 ms); more goes to a thread.
SMALL_BUILD = 200


def watched_kinds(settings: Settings) -> tuple[Kind, ...]:
    """Services, and EndpointSlices or (`--endpoints-api=endpoints`) legacy Endpoints; with
    `--ingress-class`, Ingresses, IngressClasses and kubernetes.io/tls Secrets too."""
    ingress = (INGRESSES, INGRESSCLASSES, TLS_SECRETS) if settings.ingress_class else ()
    if settings.endpoints_api == "endpoints":
        return (SERVICES, ENDPOINTS, *ingress)
    if settings.endpoints_api == "endpointslices":
        return (SERVICES, ENDPOINTSLICES, *ingress)
    raise ValueError(f"endpoints_api must be 'endpointslices' or 'endpoints', "
                     f"not {settings.endpoints_api!r}")


class KubeSource:
    """Publishes a `RouteTable` for the cluster's services, and a new one on each change.

    `api_client_factory` makes the client (default: `pylb.kubeapi.client_for(settings)`); the
    source closes it when `run` ends. `translate_fn` (tests) replaces the incremental
    translation by a whole one, called with every object on each change; `resolver`, and
    the informers' backoff `rng` and `sleep` are there for tests too.
    """

    def __init__(
        self,
        settings: Settings,
        api_client_factory: ApiClientFactory | None = None,
        *,
        translate_fn: Translate | None = None,
        resolver: Resolve = resolve,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._kinds = watched_kinds(settings)
        self._factory = api_client_factory or (lambda: client_for(settings))
        self._translate = translate_fn
        self._rng = rng
        self._sleep = sleep
        self._externals = ExternalNames(resolver, settings.kube.dns_timeout, self._changed)
        self._informers: list[Informer] = []
        self._dirty = asyncio.Event()
        self._dirty_since: float | None = None
        self.table: RouteTable | None = None  # the last table published
        self.version = 0
        self.publishes = 0
        self.translate_errors = 0
        self.last_latency: float | None = None  # first event of a burst → its table out
        self.last_build: float | None = None  # seconds the last build took
        self.first_build: float | None = None  # seconds the first table took to build
        self._translator: Translator | None = None  # None: (re)start from every object
        self._built: RouteTable | None = None  # the unversioned table published last
        self._external_of: dict[tuple[str, Key], str] = {}  # ExternalName service → name
        self._external_names: set[str] = set()

    @property
    def synced(self) -> bool:
        """Every informer has completed its first list. Stays true while the API server
        is away (readiness must not flap with the control plane: the last good table is
        still served; staleness shows as `last_sync` and `errors` in `metrics()`)."""
        return bool(self._informers) and all(i.synced for i in self._informers)

    async def run(self, publish: Publish) -> None:
        """Watch and publish until cancelled. Errors talking to the API server are retried
        for ever; a failure to build the client (bad kubeconfig) raises."""
        client = await self._factory()
        try:
            namespaces: tuple[str | None, ...] = (
                tuple(dict.fromkeys(self.settings.namespaces)) or (None,))
            self._informers = [
                Informer(client, kind, ns, self.settings.kube, self._changed,
                         rng=self._rng, sleep=self._sleep)
                for kind in self._kinds
                for ns in (namespaces if kind.namespaced else (None,))]
            async with asyncio.TaskGroup() as tg:
                for informer in self._informers:
                    tg.create_task(informer.run(), name=f"informer {informer.name}")
                tg.create_task(self._dns_loop(), name="externalname refresh")
                await self._publish_loop(publish)
        finally:
            await self._externals.close()
            await client.close()

    def _changed(self) -> None:
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self._dirty.set()

    async def _publish_loop(self, publish: Publish) -> None:
        kube = self.settings.kube
        while True:  # one turn per burst of changes
            await self._dirty.wait()
            first = self._dirty_since if self._dirty_since is not None else time.monotonic()
            deadline = first + kube.coalesce_max_delay
            while (remaining := deadline - time.monotonic()) > 0:  # bounded by max delay
                self._dirty.clear()
                try:
                    await asyncio.wait_for(self._dirty.wait(),
                                           min(kube.coalesce_window, remaining))
                except TimeoutError:
                    break
            self._dirty.clear()
            self._dirty_since = None
            if not self.synced:
                continue
            if not await self._build_and_publish(publish, first):
                await asyncio.sleep(kube.backoff_base)  # then offer it again
                self._changed()

    def _take_changes(self) -> list[tuple[Kind, Key, Any]]:
        """(kind, key, object or None) for every object changed since the last call — all
        of them when the translator starts afresh — and the ExternalName names noted."""
        fresh = self._translator is None
        changes: list[tuple[Kind, Key, Any]] = []
        for informer in self._informers:
            keys = informer.take_changes()
            store, kind = informer.objects, informer.kind
            if keys is None or fresh:
                changes += [(kind, key, obj) for key, obj in store.items()]
            else:
                changes += [(kind, key, store.get(key)) for key in keys]
        externals = self._external_of
        if fresh:
            externals.clear()
        for kind, key, obj in changes:
            if kind is SERVICES:
                names = external_names((obj,)) if isinstance(obj, dict) else set()
                if names:
                    externals[(kind.plural, key)] = names.pop()
                else:
                    externals.pop((kind.plural, key), None)
        self._external_names = set(externals.values())
        return changes

    def _feed(self, translator: Translator, changes: list[tuple[Kind, Key, Any]]) -> None:
        setters = {SERVICES: translator.set_service, ENDPOINTSLICES: translator.set_slice,
                   ENDPOINTS: translator.set_endpoints, INGRESSES: translator.set_ingress,
                   INGRESSCLASSES: translator.set_ingress_class,
                   TLS_SECRETS: translator.set_secret}
        for kind, key, obj in changes:
            setters[kind](key, obj)

    def _build_incremental(self, translator: Translator,
                           changes: list[tuple[Kind, Key, Any]],
                           external: dict[str, tuple[str, ...]]) -> RouteTable:
        self._feed(translator, changes)
        translator.set_external(external)
        return translator.build()

    def _build_big(self, translator: Translator, changes: list[tuple[Kind, Key, Any]],
                   external: dict[str, tuple[str, ...]]) -> RouteTable:
        """`_build_incremental` with the cyclic garbage collector paused: a first table
        allocates a million objects beside the million the stores hold, and each full
        collection it triggers walks them all (measured at 10,000 services: 2.2 s with it,
        1.3 s without). Nothing it builds is cyclic garbage; the pause lasts one build."""
        with collector.paused():
            table = self._build_incremental(translator, changes, external)
            if self.first_build is None:
                # The stores and the first table live as long as the process: move them out
                # of the collector's way, or every later full collection walks them all — at
                # 10,000 services a million objects, a stall of a few hundred ms on the loop
                # each time. Frozen objects are still freed by reference counting when
                # dropped; only a cycle that was garbage already stays (no gc.collect()
                # first: at this size it alone stalls the loop for ~0.5 s, measured).
                gc.freeze()
            return table

    async def _translate_now(self) -> RouteTable:
        """The table for the stores as they are now (raises what a failed build raised)."""
        changes = self._take_changes()
        await self._externals.ensure(self._external_names, self.settings.kube.coalesce_max_delay)
        external = self._externals.snapshot()
        if self._translate is not None:  # the whole translation, for tests
            objects = KubeObjects(
                services=self._objects(SERVICES),
                endpointslices=self._objects(ENDPOINTSLICES),
                endpoints=self._objects(ENDPOINTS),
                external=external,
                ingresses=self._objects(INGRESSES),
                ingressclasses=self._objects(INGRESSCLASSES),
                secrets=self._objects(TLS_SECRETS))
            return await asyncio.to_thread(self._translate, objects, self.settings)
        translator = self._translator or Translator(self.settings)
        self._translator = None  # until this build has succeeded
        started = time.monotonic()
        if len(changes) > SMALL_BUILD or translator.dirty > SMALL_BUILD:
            table = await asyncio.to_thread(self._build_big, translator, changes, external)
            collector.trim()  # what the build and the lists before it freed (see trim)
        else:
            table = self._build_incremental(translator, changes, external)
        self._translator = translator
        self.last_build = time.monotonic() - started
        if self.first_build is None:
            self.first_build = self.last_build
        return table

    async def _build_and_publish(self, publish: Publish, first: float) -> bool:
        """False when `publish` raised: the caller offers the table again."""
        try:
            table = await self._translate_now()
        except Exception:  # keep serving the last table; translation should never raise
            self.translate_errors += 1
            log.exception("translation failed; keeping route table v%d", self.version)
            return True  # the same objects would fail the same way: wait for a change
        # (Cheap: tables share their unchanged parts, and tuples compare those by `is`.)
        if self._built is not None and (table is self._built or table == self._built):
            return True
        self.version += 1  # used up even if publish fails: a version never names two tables
        unversioned, table = table, table.with_version(self.version)
        try:
            publish(table)
        except Exception:
            log.exception("publishing route table v%d failed", self.version)
            return False
        self.table = table
        self._built = unversioned
        self.publishes += 1
        self.last_latency = time.monotonic() - first
        log.debug("route table v%d: %d backends, %d http, %d https, %d tcp, %d skipped",
                 table.version, len(table.backends), len(table.http), len(table.https),
                 len(table.tcp), len(table.skipped))
        return True

    def _objects(self, kind: Kind) -> tuple[Object, ...]:
        merged: dict[tuple[str, str], Object] = {}
        for informer in self._informers:
            if informer.kind is kind:
                merged.update(informer.objects)
        return tuple(merged[k] for k in sorted(merged))

    async def _dns_loop(self) -> None:
        interval = self.settings.kube.dns_interval
        while True:  # one lookup round per interval
            await asyncio.sleep(interval)
            if not self.synced:
                continue
            try:
                if await self._externals.refresh(self._external_names):
                    self._changed()
            except Exception:  # must not end discovery: the next round tries again
                log.exception("ExternalName refresh failed")

    @property
    def last_sync(self) -> float | None:
        """Wall-clock time of the latest complete list by any informer."""
        syncs = [i.metrics.last_sync for i in self._informers
                 if i.metrics.last_sync is not None]
        return max(syncs) if syncs else None

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the stats page and /metrics: totals over the informers,
        `objects_<kind>` held, `last_sync` (Unix time) and `last_event_to_table_seconds`
        (the last burst's first event → its table published) once known."""
        out: dict[str, float] = {
            "synced": 1.0 if self.synced else 0.0,
            "version": float(self.version),
            "plans": float(self._translator.plans if self._translator is not None else 0),
            "publishes": float(self.publishes),
            "translate_errors": float(self.translate_errors),
            "watch_restarts": float(sum(i.metrics.watch_restarts for i in self._informers)),
            "relists": float(sum(i.metrics.relists for i in self._informers)),
            "errors": float(sum(i.metrics.errors for i in self._informers)),
            "events": float(sum(i.metrics.events for i in self._informers)),
            "external_names": float(len(self._externals.snapshot())),
            "dns_failures": float(self._externals.failures),
        }
        for kind in self._kinds:
            out[f"objects_{kind.plural}"] = float(sum(
                len(i.objects) for i in self._informers if i.kind is kind))
        if self.last_sync is not None:
            out["last_sync"] = self.last_sync
        if self.last_latency is not None:
            out["last_event_to_table_seconds"] = self.last_latency
        if self.last_build is not None:
            out["last_build_seconds"] = self.last_build
        if self.first_build is not None:
            out["first_build_seconds"] = self.first_build
        return out

    def informers(self) -> list[dict[str, Any]]:
        """One row per informer (kind@namespace), for a detailed status view."""
        return [
            {"name": i.name, "synced": i.synced, "objects": len(i.objects),
             "resource_version": i.resource_version, "lists": i.metrics.lists,
             "relists": i.metrics.relists, "watches": i.metrics.watches,
             "watch_restarts": i.metrics.watch_restarts, "events": i.metrics.events,
             "errors": i.metrics.errors, "last_error": i.metrics.last_error,
             "last_sync": i.metrics.last_sync}
            for i in self._informers]
