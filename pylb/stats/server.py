"""The stats server on --stats-port (1936): HTML, CSV, JSON and Prometheus from one view.

A render builds one `StatsView` (view_fn, on the event loop: it reads live controller
state, cheaply — the controller's counters are a `LazyCounters` merged later) and renders
it in a worker thread, so the loop goes on answering /readyz, discovery and checks.
At cluster scale a render costs seconds (bench/stats_scale.py), so three rules keep the
stats page from eating the controller:

- one render at a time of the HTML page, and one of the machine formats (renders
  would only fight for the GIL and hold a copy of the counters each; the page, cheap
  by design, must not queue behind a 10-second JSON), and a request that arrives while
  its page is being rendered waits for that render instead of starting another (a
  dashboard of 20 browsers costs one);
- a render that took `cost` seconds (at least REUSE_MIN_COST) is served again for
  REUSE_FACTOR x cost (at most REUSE_MAX_AGE), so the stats page takes at most about
  1/REUSE_FACTOR of a core however often it is fetched. Below REUSE_MIN_COST nothing
  is reused: a small cluster's page is as fresh as the workers' last report;
- at most REUSE_ENTRIES renders are kept (pages and scopes make many keys);
- the cyclic garbage collector is paused while a render runs (`pylb.collector.paused`). A render
  allocates a few hundred thousand short-lived dicts, which makes CPython run full
  (generation 2) collections over everything the controller holds — the table, the
  check results, the counters: at 100,000 servers each took up to 740 ms with the GIL
  held, stalling the event loop (bench/stats_scale.py). A render makes no reference
  cycles (its rows are freed by reference counting), so nothing is lost by pausing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pylb import collector
from pylb.config import MetricsAuth, Settings
from pylb.stats.formats import csv_chunks, json_chunks
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

REUSE_MIN_COST = 0.05  # s: renders cheaper than this are never reused
REUSE_FACTOR = 4.0
REUSE_MAX_AGE = 10.0  # s
REUSE_ENTRIES = 8

_Key = tuple[str, bool, int, str, int]
_T = TypeVar("_T")

def _paused(fn: Callable[..., _T], *args: Any) -> _T:
    started = time.monotonic()
    try:
        with collector.paused():
            return fn(*args)
    finally:
        # A big render's garbage is freed into this thread's malloc arena, which keeps it
        # (tens of MiB at 100,000 servers) unless told to give it back.
        if time.monotonic() - started >= REUSE_MIN_COST:
            collector.trim()

REALM = "pylb statistics"

# The page has no script, no frame, one form (the scope filter, a GET to itself) and
# loads nothing: say so, so that a name that ever slipped past the escaping could still
# run nothing (defence in depth).
_CSP = ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


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
        self._page_slot = asyncio.Semaphore(1)  # one HTML render at a time
        self._export_slot = asyncio.Semaphore(1)  # one CSV/JSON/metrics render
        self._inflight: dict[_Key, asyncio.Future[Reply]] = {}
        self._done: dict[_Key, tuple[float, Reply]] = {}  # key → (reuse until, reply)

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
        refresh = 0 if query.norefresh else self._settings.stats_refresh
        if query.fmt != "html":
            refresh, scope, page = 0, "", 1  # the machine formats are always whole
        else:
            scope, page = query.scope, query.page
        key: _Key = (query.fmt, query.up_only, refresh, scope, page)
        now = time.monotonic()
        done = self._done.get(key)
        if done is not None and now < done[0]:
            return done[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            async with self._page_slot if query.fmt == "html" else self._export_slot:
                started = time.monotonic()
                reply = await self._render(key)
                cost = time.monotonic() - started
            if cost >= REUSE_MIN_COST:
                for k, (until, _) in list(self._done.items()):
                    if until <= started:
                        del self._done[k]
                if len(self._done) >= REUSE_ENTRIES:
                    del self._done[min(self._done, key=lambda k: self._done[k][0])]
                self._done[key] = (time.monotonic() + min(REUSE_MAX_AGE, REUSE_FACTOR * cost),
                                   reply)
            fut.set_result(reply)
            return reply
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # retrieved, even when nobody else waited for it
            raise
        except BaseException:  # cancelled: those waiting for it are too
            fut.cancel()
            raise
        finally:
            del self._inflight[key]

    async def _render(self, key: _Key) -> Reply:
        fmt, up_only, refresh, scope, page = key
        view = self._view_fn()
        if fmt == "metrics":
            metrics = await asyncio.to_thread(_paused, self._exposition.render_parts, view)
            return Reply(200, parts=tuple(metrics), content_type=CONTENT_TYPE)
        if fmt == "csv":
            csv = await asyncio.to_thread(_paused, _utf8_of, csv_chunks, view, up_only)
            return Reply(200, parts=csv, content_type="text/plain; charset=utf-8")
        if fmt == "json":
            doc = await asyncio.to_thread(_paused, _utf8_of, json_chunks, view, up_only)
            return Reply(200, parts=doc, content_type="application/json")
        text = await asyncio.to_thread(_paused, render_html, view, up_only, refresh, scope,
                                       page)
        return Reply(200, utf8(text), "text/html; charset=utf-8", headers=(_CSP,))


def _utf8_of(render: Callable[..., Iterable[str]], *args: Any) -> tuple[bytes, ...]:
    """The pieces render(*args) yields, each in UTF-8, encoded in the render thread: a
    JSON of 100,000 servers is some 80 MB, and one join or encode of it holds the GIL
    (stalling the event loop) for ~0.1 s; piece by piece nothing does."""
    return tuple(utf8(piece) for piece in render(*args))


def utf8(text: str) -> bytes:
    """`text` in UTF-8; a lone surrogate (a bad escape in a manifest can put one in a
    name) becomes U+FFFD rather than failing the whole page."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
