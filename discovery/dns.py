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
    """A cache of name → addresses for the ExternalName services currently wanted."""

    def __init__(self, resolver: Resolve = resolve, timeout: float = 5.0) -> None:
        self._resolve = resolver
        self._timeout = timeout
        self._known: dict[str, tuple[str, ...]] = {}
        self.lookups = 0
        self.failures = 0

    def snapshot(self) -> dict[str, tuple[str, ...]]:
        return dict(self._known)

    async def ensure(self, names: Iterable[str]) -> bool:
        """Resolve the names never seen before, forget those no longer wanted. True when
        the cache changed."""
        wanted = set(names)
        changed = self._forget(wanted)
        new = sorted(wanted - self._known.keys())
        return await self._lookup(new) or changed

    async def refresh(self, names: Iterable[str]) -> bool:
        """Resolve every wanted name again. True when any answer changed."""
        wanted = set(names)
        changed = self._forget(wanted)
        return await self._lookup(sorted(wanted)) or changed

    def _forget(self, wanted: set[str]) -> bool:
        gone = self._known.keys() - wanted
        for name in gone:
            del self._known[name]
        return bool(gone)

    async def _lookup(self, names: list[str]) -> bool:
        if not names:
            return False
        results = await asyncio.gather(*(self._one(n) for n in names))
        changed = False
        for name, found in zip(names, results, strict=True):
            if found is None:
                if name in self._known:
                    continue  # keep the last good answer
                found = ()
            if self._known.get(name) != found:
                self._known[name] = found
                changed = True
        return changed

    async def _one(self, name: str) -> tuple[str, ...] | None:
        self.lookups += 1
        try:
            async with asyncio.timeout(self._timeout):
                return await self._resolve(name)
        except (OSError, TimeoutError, UnicodeError, ValueError) as e:
            self.failures += 1
            log.warning("ExternalName %s does not resolve: %s", name, e)
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
