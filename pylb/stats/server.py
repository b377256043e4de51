"""The stats server on --stats-port (1936): HTML, CSV, JSON and Prometheus from one view.

Every request builds one `StatsView` (view_fn) and renders it; nothing is cached, so the
page is always as fresh as the counters the workers last reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pylb.config import MetricsAuth, Settings
from pylb.stats.formats import render_csv, render_json
from pylb.stats.http import (
    BasicAuth,
    Reply,
    Request,
    SmallHttpServer,
    parse_stats_uri,
    unauthorized,
)
from pylb.stats.page import render_html
from pylb.stats.prom import CONTENT_TYPE, Exposition
from pylb.stats.view import StatsView

log = logging.getLogger(__name__)

REALM = "pylb statistics"

# The page has no script, no frame, no form and loads nothing: say so, so that a name
# that ever slipped past the escaping could still run nothing (defence in depth).
_CSP = ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class StatsServer:
    """Serves `/` (HTML), `/;csv`, `/;json` (and haproxy's `?stats;csv` forms), `/metrics`.

    `settings.stats_auth` ("user:password" or "@file", see BasicAuth) guards every path,
    /metrics included (Prometheus scrapes with basic_auth) unless `--metrics-auth none`
    opens /metrics alone; unset, the page is open and start() logs a warning.
    """

    def __init__(self, settings: Settings, view_fn: Callable[[], StatsView]) -> None:
        self._settings = settings
        self._view_fn = view_fn
        self._auth: BasicAuth | None = None
        self._exposition = Exposition(view_fn)
        self._http = SmallHttpServer(self.handle, name="stats",
                                     idle_timeout=settings.timeouts.client)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Read the credential (ValueError when the file is unreadable or malformed), then
        listen. Returns the bound address (port 0 picks one)."""
        self._auth = BasicAuth.from_setting(self._settings.stats_auth)
        if self._auth is None:
            log.warning("the stats page on %s:%d has no password: anyone who reaches it "
                        "sees every service and server (set --stats-auth user:password)",
                        host, port)
        return await self._http.start(host, port)

    async def close(self) -> None:
        await self._http.close()

    async def handle(self, request: Request) -> Reply:
        """Authenticate, route, build the view here (on the loop: view_fn reads live
        controller state), render it in a worker thread (pure, over frozen data) so a
        big table does not stall health checks and discovery."""
        query = parse_stats_uri(request.target)
        open_metrics = (query is not None and query.fmt == "metrics"
                        and self._settings.metrics_auth is MetricsAuth.NONE)
        if self._auth is not None and not open_metrics and not self._auth.check(
                request.headers.get("authorization")):
            return unauthorized(REALM)
        if request.method not in ("GET", "HEAD"):
            return Reply(405, b"405 Method Not Allowed\n",
                         headers=(("Allow", "GET, HEAD"),))
        if query is None:
            return Reply(404, b"404 Not Found\n")
        view = self._view_fn()
        if query.fmt == "metrics":
            body = await asyncio.to_thread(self._exposition.render_view, view)
            return Reply(200, body, CONTENT_TYPE)
        if query.fmt == "csv":
            text = await asyncio.to_thread(render_csv, view, query.up_only)
            return Reply(200, utf8(text), "text/plain; charset=utf-8")
        if query.fmt == "json":
            text = await asyncio.to_thread(render_json, view, query.up_only)
            return Reply(200, utf8(text), "application/json")
        refresh = 0 if query.norefresh else self._settings.stats_refresh
        text = await asyncio.to_thread(render_html, view, query.up_only, refresh)
        return Reply(200, utf8(text), "text/html; charset=utf-8", headers=(_CSP,))


def utf8(text: str) -> bytes:
    """`text` in UTF-8; a lone surrogate (a bad escape in a manifest can put one in a
    name) becomes U+FFFD rather than failing the whole page."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
