"""Watch streams, as the apiserver's watch cache serves them.

Theory of operation. A watch subscribes to the store and gets, atomically, a backlog and a
live queue. The backlog is either synthetic ADDED events for the current objects (RV unset or
"0", or `sendInitialEvents=true`) or the history after the requested revision; an RV older
than the history is answered 200 with one ERROR event (410 Expired) and a clean end, an RV in
the future with a 504 before any byte. Each change goes through `convert()`, the per-watcher
selector filter: a MODIFIED that leaves the selector becomes DELETED (the previous object,
stamped with the new revision), one that enters it becomes ADDED. One JSON line per event,
flushed at once; no blank lines.

The stream ends cleanly at its deadline (`timeoutSeconds`, else a random time in
[1, 2) x min-request-timeout), when the server drops its watches, or when the watcher's buffer
overflows. Bookmarks, when asked for, follow `nextBookmarkTime` of the real cache: every
`bookmark_interval` and once `bookmark_before_deadline` before the deadline, never after it.
Faults (`faults.WatchFault`) may end the stream early, truncate a line or delay each event.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.kfake import errors
from tests.kfake.errors import ApiError
from tests.kfake.faults import WatchFault, abort
from tests.kfake.resources import Resource
from tests.kfake.store import Change, Store

JsonObj = dict[str, Any]
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class WatchSettings:
    bookmark_interval: float = 60.0
    bookmark_before_deadline: float = 2.0
    min_request_timeout: float = 1800.0


@dataclass(frozen=True)
class WatchRequest:
    resource_version: str
    allow_bookmarks: bool
    timeout_seconds: int
    send_initial_events: bool | None


def convert(ch: Change, match: Callable[[JsonObj], bool]) -> tuple[str, JsonObj] | None:
    """The event a watcher with selector `match` sees for a change, or None."""
    if ch.type in ("ADDED", "DELETED"):
        return (ch.type, ch.obj) if match(ch.obj) else None
    new_ok = match(ch.obj)
    old_ok = ch.prev is not None and match(ch.prev)
    if new_ok and old_ok:
        return "MODIFIED", ch.obj
    if new_ok:
        return "ADDED", ch.obj
    if old_ok and ch.prev is not None:
        gone = {**ch.prev, "metadata": {**ch.prev["metadata"], "resourceVersion": str(ch.rv)}}
        return "DELETED", gone
    return None


def bookmark(res: Resource, rv: int, *, initial_end: bool = False) -> JsonObj:
    meta: JsonObj = {"resourceVersion": str(rv), "creationTimestamp": None}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}


def next_bookmark_time(now: float, deadline: float, interval: float,
                       before_deadline: float) -> float | None:
    """apiserver `cacheWatcher.nextBookmarkTime`: periodic, and once just before the end."""
    at = min(now + interval, deadline - before_deadline)
    return None if at < now else at


def encode(etype: str, obj: JsonObj) -> bytes:
    return json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n"


class _Stream:
    def __init__(self, resp: web.StreamResponse, request: web.Request,
                 fault: WatchFault | None, render: Callable[[JsonObj], JsonObj]) -> None:
        self.render = render
        self.resp = resp
        self.request = request
        self.fault = fault
        self.sent = 0
        self.ended = False

    async def send(self, etype: str, obj: JsonObj) -> bool:
        """Write one event; False once the stream is over (fault or closed peer)."""
        f = self.fault
        obj = self.render(obj)
        if f is not None and f.event_delay > 0:
            await asyncio.sleep(f.event_delay)
        if f is not None and f.after is not None and self.sent >= f.after:
            line = encode(etype, obj)
            if f.end == "truncate":
                await self.resp.write(line[: max(1, len(line) // 2)])
            elif f.end == "reset":
                abort(self.request.transport)
            self.ended = True
            return False
        await self.resp.write(encode(etype, obj))
        self.sent += 1
        return True


async def serve_watch(
    request: web.Request,
    store: Store,
    res: Resource,
    namespace: str | None,
    match: Callable[[JsonObj], bool],
    opts: WatchRequest,
    settings: WatchSettings,
    fault: WatchFault | None,
    headers: list[tuple[str, str]],
    clock: Callable[[], float] = time.monotonic,
    render: Callable[[JsonObj], JsonObj] = lambda obj: obj,
    view: Callable[[JsonObj], JsonObj] = lambda obj: obj,
) -> web.StreamResponse:
    """Serve one watch. `view` turns stored objects into the requested version's (events
    only); `render` rewrites anything sent (the opaque-RV codec)."""
    rv = opts.resource_version
    # sendInitialEvents, when given, decides; else RV unset or "0" means "state, then changes".
    initial = (opts.send_initial_events if opts.send_initial_events is not None
               else rv in ("", "0"))
    if opts.send_initial_events is not None and rv not in ("", "0"):
        want = int(rv)
        if want > store.rv:
            raise errors.too_large_rv(want, store.rv)
    since: int | None = None
    if not initial:
        since = store.rv if rv in ("", "0") else int(rv)
    expired: ApiError | None = None
    try:
        sub, backlog = store.subscribe(res, namespace, since)
    except ApiError as e:
        if e.code != 410:
            raise
        expired, sub, backlog = e, None, []
    start_rv = store.rv

    resp = web.StreamResponse(status=200, headers={
        "Content-Type": "application/json", "Cache-Control": "no-cache, private"})
    for k, v in headers:
        resp.headers.add(k, v)
    resp.enable_chunked_encoding()
    try:
        await resp.prepare(request)
        stream = _Stream(resp, request, fault, render)
        if expired is not None:
            await stream.send("ERROR", errors.expired_status_json(expired.body["message"]))
            return _finish(stream)
        assert sub is not None
        now = clock()
        timeout = opts.timeout_seconds or random.uniform(
            settings.min_request_timeout, 2 * settings.min_request_timeout)
        deadline = now + timeout
        cut_at = now + fault.cut_after if fault and fault.cut_after is not None else float("inf")
        for past in backlog:
            ev = convert(past, match)
            if ev is not None and not await stream.send(ev[0], view(ev[1])):
                return _finish(stream)
        end_bm = bookmark(res, start_rv, initial_end=True)
        if (opts.send_initial_events and opts.allow_bookmarks
                and not await stream.send("BOOKMARK", end_bm)):
            return _finish(stream)
        next_bm = (next_bookmark_time(clock(), deadline, settings.bookmark_interval,
                                      settings.bookmark_before_deadline)
                   if opts.allow_bookmarks else None)
        while True:
            now = clock()
            if now >= deadline or now >= cut_at:
                break
            wake = min(deadline, cut_at) if next_bm is None else min(deadline, cut_at, next_bm)
            change = await sub.next(max(0.0, wake - now))
            if change is not None:
                ev = convert(change, match)
                if ev is not None and not await stream.send(ev[0], view(ev[1])):
                    break
                continue
            if sub.closed:
                break
            now = clock()
            if next_bm is not None and now >= next_bm and now < deadline:
                if not await stream.send("BOOKMARK", bookmark(res, store.rv)):
                    break
                next_bm = next_bookmark_time(now, deadline, settings.bookmark_interval,
                                             settings.bookmark_before_deadline)
        return _finish(stream)
    finally:
        if sub is not None:
            store.unsubscribe(sub)


def _finish(stream: _Stream) -> web.StreamResponse:
    if stream.ended and stream.fault is not None and stream.fault.end == "reset":
        # The transport is already aborted; aiohttp must not try to finish the response.
        raise asyncio.CancelledError()
    return stream.resp
