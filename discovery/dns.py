"""ExternalName services: their DNS names resolved to addresses, asynchronously.

A `type: ExternalName` Service (a managed database outside the cluster, say) names a host
instead of selecting pods; its addresses become the backend's servers. Lookups go through
the event loop's `getaddrinfo` (a thread, so /etc/hosts, nsswitch and search domains apply
as for any other program) and are re-done periodically, since DNS answers change.

A lookup that fails or times out keeps the addresses the name had before: a DNS blink must
not empty a backend. A name never resolved yet resolves to nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Resolve = Callable[[str], Awaitable[tuple[str, ...]]]


def addresses(infos: Iterable[tuple[Any, ...]]) -> tuple[str, ...]:
    """Distinct addresses of `getaddrinfo` results, IPv4 first, each family in numeric
    order (a stable order: equal answers give equal route tables)."""
    seen: set[str] = set()
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.add(str(ipaddress.ip_address(sockaddr[0].split("%", 1)[0])))
    return tuple(sorted(seen, key=lambda a: (ipaddress.ip_address(a).version,
                                             ipaddress.ip_address(a))))


async def resolve(name: str) -> tuple[str, ...]:
    """All IPv4 and IPv6 addresses of `name` (raises `OSError` when it does not resolve)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return addresses(infos)


class ExternalNames:
    """A cache of name → addresses for the ExternalName services currently wanted.

    New names are looked up in background tasks: `ensure()` waits for them only up to a
    bound, so one slow DNS server cannot hold back every other route change; a lookup that
    finishes later calls `on_update()` (the source then builds a new table). `close()`
    cancels lookups still running.
    """

    def __init__(self, resolver: Resolve = resolve, timeout: float = 5.0,
                 on_update: Callable[[], None] | None = None) -> None:
        self._resolve = resolver
        self._timeout = timeout
        self.on_update = on_update or (lambda: None)
        self._known: dict[str, tuple[str, ...]] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}
        self.lookups = 0
        self.failures = 0

    def snapshot(self) -> dict[str, tuple[str, ...]]:
        return dict(self._known)

    async def ensure(self, names: Iterable[str], wait: float | None = None) -> bool:
        """Start lookups of names never seen before and wait for them, at most `wait`
        seconds (None: until they end, each bounded by the lookup timeout); forget names
        no longer wanted. True when the cache changed meanwhile."""
        before = dict(self._known)
        wanted = set(names)
        self._forget(wanted)
        for name in sorted(wanted - self._known.keys() - self._pending.keys()):
            self._pending[name] = asyncio.create_task(self._first_lookup(name),
                                                      name=f"resolve {name}")
        waiting = [task for name, task in self._pending.items() if name in wanted]
        if waiting and (wait is None or wait > 0):
            await asyncio.wait(waiting, timeout=wait)
        return self._known != before

    async def refresh(self, names: Iterable[str]) -> bool:
        """Resolve every wanted name again (those with no lookup running). True when any
        answer changed."""
        wanted = set(names)
        changed = self._forget(wanted)
        todo = sorted(wanted - self._pending.keys())
        results = await asyncio.gather(*(self._one(n) for n in todo))
        for name, found in zip(todo, results, strict=True):
            changed = self._store(name, found) or changed
        return changed

    async def close(self) -> None:
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, wanted: set[str]) -> bool:
        for name in self._pending.keys() - wanted:
            self._pending.pop(name).cancel()
        gone = self._known.keys() - wanted
        for name in gone:
            del self._known[name]
        return bool(gone)

    def _store(self, name: str, found: tuple[str, ...] | None) -> bool:
        if found is None:
            if name in self._known:
                return False  # keep the last good answer
            found = ()
        if self._known.get(name) == found:
            return False
        self._known[name] = found
        return True

    async def _first_lookup(self, name: str) -> None:
        try:
            found = await self._one(name)
        finally:
            if self._pending.get(name) is asyncio.current_task():
                del self._pending[name]
        if self._store(name, found):
            self.on_update()

    async def _one(self, name: str) -> tuple[str, ...] | None:
        self.lookups += 1
        try:
            async with asyncio.timeout(self._timeout):
                return await self._resolve(name)
        except (OSError, TimeoutError, UnicodeError, ValueError) as e:
            self.failures += 1
            log.warning("ExternalName %s does not resolve: %s", name, e)
            return None
        except Exception:  # a resolver bug costs this name, not discovery
            self.failures += 1
            log.exception("ExternalName %s: lookup failed", name)
            return None


def external_names(services: Iterable[Mapping[str, Any]]) -> set[str]:
    """The `spec.externalName` of every `type: ExternalName` service."""
    out: set[str] = set()
    for svc in services:
        spec = svc.get("spec") or {}
        if spec.get("type") == "ExternalName" and isinstance(spec.get("externalName"), str):
            name = spec["externalName"].strip()
            if name:
                out.add(name)
    return out
