"""The file source: Service, EndpointSlice and Endpoints manifests from a YAML file.

Theory of operation. This is pylb's embedded default: with `--source file:PATH` it runs
with no cluster at all. `load()` reads the file, parses every YAML document (a `kind:
List` contributes its `items`), keeps the objects of the three kinds translate() reads,
gives objects without a namespace the namespace "default" (as kubectl does), and
translates them.

`run()` loads once, publishes, then polls the file. Polling rather than inotify is a
choice: Kubernetes mounts ConfigMaps as a symlink (`cluster.yaml -> ..data/cluster.yaml`,
`..data -> ..2024_01_01_00_00_00.123`) and updates them by swapping `..data`, which an
inotify watch on the file never sees; `os.stat` follows the links, so a change of the
resolved inode, size or times is a change. A file written twice within one tick of the
file-system clock can keep its size and mtime (git's "racy" problem), so a file whose
mtime was recent when it was read is read again on the next poll.

A reload that fails (the file is mid-write, has a YAML error, or is briefly gone) logs an
ERROR naming the line and keeps serving the last good table; the same error on the same
file (a racy file is reread while its mtime is recent) is logged once, not once a poll.
A table is published only when it differs from the last one published; versions count up
from 1. The file is read whole, but translated incrementally (discovery/incremental.py):
each object is compared with the one read last under the same key — its kind, namespace,
name and how many of that name came before it in the file — and only those that differ
are handed to the `Translator`, so a new table shares every unchanged backend and route
with the last. The DNS names of ExternalName services are resolved as the Kubernetes
source does (discovery.dns): when they first appear, then every `dns_interval`, a failed
lookup keeping the last answer.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import replace
from typing import Any

import yaml

from discovery.dns import ExternalNames, Resolve, external_names, resolve
from discovery.incremental import Translator
from discovery.translate import KubeObjects, translate
from pylb.config import Settings
from pylb.model import RouteTable

log = logging.getLogger("pylb.discovery")

_KINDS = {"Service": "services", "EndpointSlice": "endpointslices", "Endpoints": "endpoints",
          # read only with --ingress-class (discovery/ingress.py)
          "Ingress": "ingresses", "IngressClass": "ingressclasses", "Secret": "secrets"}

# A file whose mtime is closer than this to the time it was read may be rewritten within
# the same timestamp tick (Linux stamps files from a clock that ticks every few ms; some
# file systems keep whole seconds), so it is read again on the next poll.
_RACY_NS = 2_000_000_000

Signature = tuple[int, int, int, int, int]


class FileSourceError(Exception):
    """The file cannot be used: missing, unreadable, or not valid YAML. `line` is the
    1-based line of a YAML error, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def objects_from_yaml(text: str, settings: Settings, origin: str = "<string>") -> KubeObjects:
    """The Services, EndpointSlices and Endpoints in a YAML text (multi-document, or `kind:
    List`), in the watched namespaces. Raises FileSourceError on a YAML error."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        where = f"{origin}:{line}" if line is not None else origin
        problem = e.problem or e.context or "invalid YAML"
        raise FileSourceError(f"{where}: YAML error: {problem}", line) from None
    except yaml.YAMLError as e:
        raise FileSourceError(f"{origin}: YAML error: {e}") from None
    found: dict[str, list[dict[str, Any]]] = {k: [] for k in _KINDS.values()}
    for obj in _flatten(docs, origin):
        kind = obj.get("kind")
        bucket = _KINDS.get(kind) if isinstance(kind, str) else None
        if bucket is None:
            log.debug("%s: ignoring an object of kind %r", origin, kind)
            continue
        if bucket == "ingressclasses":  # cluster-scoped: no namespace to filter on
            found[bucket].append(obj)
            continue
        obj = _with_namespace(obj)
        ns = obj["metadata"].get("namespace") if isinstance(obj.get("metadata"), dict) else None
        if settings.namespaces and isinstance(ns, str) and ns not in settings.namespaces:
            continue
        found[bucket].append(obj)
    return KubeObjects(services=tuple(found["services"]),
                       endpointslices=tuple(found["endpointslices"]),
                       endpoints=tuple(found["endpoints"]),
                       ingresses=tuple(found["ingresses"]),
                       ingressclasses=tuple(found["ingressclasses"]),
                       secrets=tuple(found["secrets"]))


def _flatten(docs: Iterable[Any], origin: str) -> Iterable[dict[str, Any]]:
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            log.warning("%s: document %d is not an object; ignored", origin, i + 1)
            continue
        if doc.get("kind") == "List":
            items = doc.get("items")
            if not isinstance(items, list):
                log.warning("%s: document %d is a List without items; ignored", origin, i + 1)
                continue
            for item in items:
                if isinstance(item, dict):
                    yield item
                else:
                    log.warning("%s: an item of List document %d is not an object; ignored",
                                origin, i + 1)
        else:
            yield doc


def _with_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    if isinstance(meta, dict) and meta.get("namespace") is None:
        obj = copy.copy(obj)
        obj["metadata"] = {**meta, "namespace": "default"}
    return obj


def keyed(objects: Iterable[Any]) -> dict[Hashable, Any]:
    """Objects under keys that survive edits elsewhere in the file: (namespace, name, how
    many objects of that namespace and name came before)."""
    out: dict[Hashable, Any] = {}
    seen: dict[tuple[str, str], int] = {}
    for obj in objects:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        ident = (str(meta.get("namespace")), str(meta.get("name")))
        n = seen.get(ident, 0)
        seen[ident] = n + 1
        out[(*ident, n)] = obj
    return out


class FileSource:
    """Route tables from a file of manifests, republished when the file changes.

    ExternalName services are resolved with `discovery.dns` (the resolver is injectable)
    when the file is read and again every `settings.kube.dns_interval`; `load()` alone
    does no DNS and shows what has been resolved so far."""

    def __init__(self, path: str, settings: Settings, *, poll_interval: float = 1.0,
                 resolver: Resolve = resolve) -> None:
        self.path = path
        self.settings = settings
        self.poll_interval = poll_interval
        self.synced = False
        self.last_sync: float | None = None  # a file is read, never synced with a cluster
        self.version = 0
        self._last: RouteTable | None = None
        self._signature: Signature | None = None
        self._racy = False
        self._last_error: tuple[Signature | None, str] | None = None  # logged once
        self._externals = ExternalNames(resolver, settings.kube.dns_timeout)
        self._translator = Translator(settings)
        self._fed: dict[str, dict[Hashable, Any]] = {
            "services": {}, "endpointslices": {}, "endpoints": {}, "ingresses": {},
            "ingressclasses": {}, "secrets": {}}

    def _stat(self) -> tuple[Signature, bool]:
        """(signature, racy) of the file as it is now; OSError if it cannot be stat'ed."""
        st = os.stat(self.path)
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return sig, time.time_ns() - st.st_mtime_ns < _RACY_NS

    def metrics(self) -> dict[str, float]:
        """No watch to report on: the stats page's discovery numbers are the cluster's."""
        return {}

    def read(self) -> KubeObjects:
        """Read and parse the file once. Raises FileSourceError."""
        try:
            sig, racy = self._stat()
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileSourceError(f"{self.path}: no such file (the file source needs an "
                                  "existing YAML file of Service and EndpointSlice "
                                  "manifests)") from None
        except OSError as e:
            raise FileSourceError(f"{self.path}: cannot read: {e.strerror or e}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FileSourceError(f"{self.path}: not UTF-8 text (byte {e.start})") from None
        objects = objects_from_yaml(text, self.settings, self.path)
        self._signature, self._racy = sig, racy
        return objects

    def _translate(self, objects: KubeObjects) -> RouteTable:
        return translate(replace(objects, external=self._externals.snapshot()), self.settings)

    def _translate_incremental(self, objects: KubeObjects) -> RouteTable:
        """The table for `objects`, re-translating only the services whose objects differ
        from the last read's (run() calls it from one thread at a time)."""
        try:
            return self._feed_and_build(objects)
        except Exception:  # a bug in the incremental path: start it afresh, serve the whole
            log.exception("file source: incremental translation failed; starting afresh")
            self._translator = Translator(self.settings)
            self._fed = {kind: {} for kind in self._fed}
            return self._translate(objects)

    def _feed_and_build(self, objects: KubeObjects) -> RouteTable:
        tr = self._translator
        for kind, setter in (("services", tr.set_service),
                             ("endpointslices", tr.set_slice),
                             ("endpoints", tr.set_endpoints),
                             ("ingresses", tr.set_ingress),
                             ("ingressclasses", tr.set_ingress_class),
                             ("secrets", tr.set_secret)):
            old, new = self._fed[kind], keyed(getattr(objects, kind))
            for key in old.keys() - new.keys():
                setter(key, None)
            for key, obj in new.items():
                was = old.get(key)
                if was is not None and was == obj:
                    new[key] = was
                else:
                    setter(key, obj)
            self._fed[kind] = new
        tr.set_external(self._externals.snapshot())
        return tr.build()

    def load(self) -> RouteTable:
        """Read, parse and translate the file once (version 0). Raises FileSourceError."""
        return self._translate(self.read())

    def _changed(self) -> bool:
        try:
            sig, _ = self._stat()
        except OSError:
            return self._signature is not None
        return self._racy or sig != self._signature

    def _publish_if_new(self, table: RouteTable,
                        publish: Callable[[RouteTable], None]) -> None:
        if self._last is not None and table == self._last:
            return
        self.version += 1
        table = table.with_version(self.version)
        try:
            publish(table)
        except Exception:  # the consumer's bug must not stop the source; the next change retries
            log.exception("publishing route table v%d failed", self.version)
            return
        self._last = table
        self.synced = True
        log.info("file source %s: route table v%d (%d http, %d https, %d tcp, %d skipped)",
                 self.path, self.version, len(table.http), len(table.https), len(table.tcp),
                 len(table.skipped))

    async def _reread(self) -> KubeObjects | None:
        """The file's objects, or None (logged) when it cannot be used right now."""
        try:
            objects = await asyncio.to_thread(self.read)
        except FileSourceError as e:
            self._refused(f"file source: {e}; keeping route table v{self.version}")
        except Exception:  # a parser bug must not stop the source (the fuzzers found none)
            log.exception("file source: %s could not be read; keeping route table v%d",
                          self.path, self.version)
            self._refused("")
        else:
            self._last_error = None
            return objects
        return None

    def _refused(self, message: str) -> None:
        """After a failed read: wait for the file to change, and log `message` at ERROR
        unless it was logged for this very state of the file (a racy file is reread)."""
        try:
            self._signature, self._racy = self._stat()  # do not retry until it changes
        except OSError:
            self._signature, self._racy = None, False  # gone: wait for it to return
        key = (self._signature, message)
        if message and key != self._last_error:
            log.error("%s", message)
        self._last_error = key

    async def run(self, publish: Callable[[RouteTable], None]) -> None:
        """Load and publish, then watch the file until cancelled. The first read's
        FileSourceError propagates (start-up stops with it); later ones are logged and
        the last good table stays."""
        loop = asyncio.get_running_loop()
        interval = self.settings.kube.dns_interval
        try:
            objects = await asyncio.to_thread(self.read)
            await self._externals.ensure(external_names(objects.services))
            self._publish_if_new(
                await asyncio.to_thread(self._translate_incremental, objects), publish)
            next_dns = loop.time() + interval
            while True:
                await asyncio.sleep(self.poll_interval)
                fresh = await self._reread() if self._changed() else None
                changed = fresh is not None
                if fresh is not None:
                    objects = fresh
                    await self._externals.ensure(external_names(objects.services))
                if loop.time() >= next_dns:
                    next_dns = loop.time() + interval
                    names = external_names(objects.services)
                    if names and await self._externals.refresh(names):
                        changed = True
                if changed:
                    table = await asyncio.to_thread(self._translate_incremental, objects)
                    self._publish_if_new(table, publish)
        finally:
            await self._externals.close()
