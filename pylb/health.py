"""The health server on --health-port (8081), as the 2015 controller had it.

`/healthz` answers 200 while `alive_fn()` (the process and its listeners are up: the
liveness probe), `/readyz` 200 once `ready_fn()` (discovery has synced and pylb is not
shutting down: the readiness probe), else 503. Any other path gets the default backend's
answer: `--default-return-code` with the `--error-page` body when one is set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pylb.config import Settings
from pylb.stats.http import Reply, Request, SmallHttpServer

log = logging.getLogger(__name__)


class HealthServer:
    def __init__(self, settings: Settings, alive_fn: Callable[[], bool],
                 ready_fn: Callable[[], bool]) -> None:
        self._settings = settings
        self._alive_fn = alive_fn
        self._ready_fn = ready_fn
        # Probes come every few seconds on fresh connections; 10 s idle is plenty.
        self._http = SmallHttpServer(self.handle, name="health", idle_timeout=10.0)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        return await self._http.start(host, port)

    async def close(self) -> None:
        await self._http.close()

    def handle(self, request: Request) -> Reply:
        path = request.target.partition("?")[0]
        if path == "/healthz":
            ok = _call(self._alive_fn)
            return Reply(200 if ok else 503, b"ok\n" if ok else b"not alive\n")
        if path == "/readyz":
            ok = _call(self._ready_fn)
            return Reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        status = self._settings.default_return_code
        body = self._settings.error_page_body
        if body is not None:
            return Reply(status, body, "text/html; charset=utf-8")
        return Reply(status, f"default backend - {status}\n".encode())


def _call(fn: Callable[[], bool]) -> bool:
    """A probe function that raises counts as a failed probe."""
    try:
        return bool(fn())
    except Exception:
        log.exception("health probe function failed")
        return False
