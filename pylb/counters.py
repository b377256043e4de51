"""Counters the data plane increments and the stats page reads.

Hot paths do `c.bytes_in += n` on plain slotted objects: no locks, no library calls. A
worker takes a `snapshot()` (plain dicts, picklable) to report to the controller, which
`merge`s the snapshots of all workers exactly: sums for totals and current values, max for
maxima. The controller's merged rows are bounded by the route table (`prune_to_table`:
a row the table lost goes with its last session) and computed at most once per
freshness window for the stats page (`ShownCounters`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from typing import Any

from pylb.failures import Failure

# Which fields are maxima (merged with max), and which are timestamps (merged with max).
_MAX_FIELDS = frozenset({"max_conns", "max_rate", "last_session"})


class Counters:
    """One row of the stats page (a frontend, a backend or a server)."""

    __slots__ = (
        "_rate_count",
        "_rate_second",
        "bytes_in",
        "bytes_out",
        "conn_errors",
        "cur_conns",
        "denied_req",
        "denied_resp",
        "hrsp",
        "last_session",
        "lbtot",
        "max_conns",
        "max_rate",
        "redispatches",
        "req_errors",
        "req_total",
        "resp_errors",
        "retries",
        "total_conns",
    )

    def __init__(self) -> None:
        self.cur_conns = 0
        self.max_conns = 0
        self.total_conns = 0
        self.lbtot = 0  # times chosen by the balancer (haproxy's lbtot)
        self.bytes_in = 0  # from clients (frontend) / to servers (server)
        self.bytes_out = 0
        self.denied_req = 0
        self.denied_resp = 0
        self.req_errors = 0
        self.conn_errors = 0
        self.resp_errors = 0
        self.retries = 0
        self.redispatches = 0
        self.req_total = 0
        self.hrsp = [0, 0, 0, 0, 0, 0]  # 1xx 2xx 3xx 4xx 5xx other
        self.last_session = 0.0  # wall-clock time of the last new session
        self.max_rate = 0
        self._rate_second = 0
        self._rate_count = 0

    def open(self, now: float | None = None) -> None:
        """A new session (connection or, on a server, a request sent to it)."""
        self.cur_conns += 1
        self.total_conns += 1
        if self.cur_conns > self.max_conns:
            self.max_conns = self.cur_conns
        t = time.time() if now is None else now
        self.last_session = t
        second = int(t)
        if second != self._rate_second:
            self._rate_second = second
            self._rate_count = 0
        self._rate_count += 1
        if self._rate_count > self.max_rate:
            self.max_rate = self._rate_count

    def close(self) -> None:
        self.cur_conns -= 1

    def response(self, status: int) -> None:
        idx = status // 100 - 1
        self.hrsp[idx if 0 <= idx < 5 else 5] += 1

    def rate(self, now: float | None = None) -> int:
        """Sessions in the current second (haproxy's `rate`)."""
        t = int(time.time() if now is None else now)
        return self._rate_count if t == self._rate_second else 0

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        d = dict(zip(_PUBLIC, _get_public(self), strict=True))
        d["hrsp"] = list(self.hrsp)
        d["rate"] = self.rate(now)
        return d


# One C call reads every public field (a snapshot of 100,000 servers is taken often).
_PUBLIC = tuple(k for k in Counters.__slots__ if k[0] != "_")
_get_public = attrgetter(*_PUBLIC)


def merge_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge one row's snapshots from several workers (one row: that row, shared)."""
    if len(rows) == 1:
        return rows[0]
    out: dict[str, Any] = dict(rows[0])
    out["hrsp"] = list(out.get("hrsp", (0,) * 6))
    for row in rows[1:]:
        for k, v in row.items():
            if k == "hrsp":
                out["hrsp"] = [x + y for x, y in zip(out["hrsp"], v, strict=False)]
            elif k in _MAX_FIELDS:
                out[k] = max(out.get(k, 0), v)
            else:
                out[k] = out.get(k, 0) + v
    return out


class Stats:
    """All counters of one process: per frontend, per backend, per server, and failures by
    reason. Keys: frontend name; backend name; (backend name, server label)."""

    __slots__ = ("backends", "failures", "frontends", "servers")

    def __init__(self) -> None:
        self.frontends: dict[str, Counters] = {}
        self.backends: dict[str, Counters] = {}
        self.servers: dict[tuple[str, str], Counters] = {}
        self.failures: dict[Failure, int] = {}

    def frontend(self, name: str) -> Counters:
        c = self.frontends.get(name)
        if c is None:
            c = self.frontends[name] = Counters()
        return c

    def backend(self, name: str) -> Counters:
        c = self.backends.get(name)
        if c is None:
            c = self.backends[name] = Counters()
        return c

    def server(self, backend: str, server: str) -> Counters:
        key = (backend, server)
        c = self.servers.get(key)
        if c is None:
            c = self.servers[key] = Counters()
        return c

    def fail(self, reason: Failure) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        # list(d.items()) is one C call: the stats thread may take this snapshot while
        # the event loop adds a row (a new server) without either seeing a torn dict.
        now = time.time()
        return {
            "frontends": {k: c.snapshot(now) for k, c in list(self.frontends.items())},
            "backends": {k: c.snapshot(now) for k, c in list(self.backends.items())},
            "servers": {f"{b}\x00{s}": c.snapshot(now)
                        for (b, s), c in list(self.servers.items())},
            "failures": {f.name: n for f, n in list(self.failures.items())},
        }


def merge_snapshots(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact aggregate of several workers' `Stats.snapshot()`s.

    A row only one snapshot has is shared, not copied (nothing mutates a merged dict):
    with one worker the merge of 100,000 server rows is a dict copy per section.
    """
    out: dict[str, Any] = {"frontends": {}, "backends": {}, "servers": {}, "failures": {}}
    for section in ("frontends", "backends", "servers"):
        parts = [s[section] for s in snaps if s.get(section)]
        if not parts:
            continue
        merged = dict(parts[0])
        for part in parts[1:]:
            for k, row in part.items():
                have = merged.get(k)
                merged[k] = row if have is None else merge_rows([have, row])
        out[section] = merged
    for s in snaps:
        for k, n in s.get("failures", {}).items():
            out["failures"][k] = out["failures"].get(k, 0) + n
    return out


# -- bounded state ----------------------------------------------------------------------

def table_rows(backends: Iterable[Any]) -> tuple[frozenset[str], frozenset[str]]:
    """The backend names and the server keys (`backend\x00label`) of a route table's
    backends: the rows the stats page has a place for."""
    names: list[str] = []
    keys: list[str] = []
    for b in backends:
        names.append(b.name)
        keys.extend(f"{b.name}\x00{s.label}" for s in b.servers)
    return frozenset(names), frozenset(keys)


def prune_to_table(counters: Mapping[str, Any], backends: frozenset[str],
                   servers: frozenset[str]) -> dict[str, Any]:
    """`counters` (merge_snapshots' shape) bounded by the route table: backend and server
    rows the table no longer has are dropped, except those with current sessions. A
    removed server that still has sessions moves from "servers" to "removed" (same keys,
    same rows): the stats page shows it as draining, and it goes with its last session.
    Frontend rows and failures stay (few, and fixed). Pure; `table_rows` gives `backends`
    and `servers`.

    Without this every server name ever seen stays forever: under pod churn (a
    Deployment rolled a thousand times) the rows, the page and the memory grow without
    bound."""
    out = dict(counters)
    out["backends"] = {k: row for k, row in counters.get("backends", {}).items()
                       if k in backends or row.get("cur_conns", 0) > 0}
    live: dict[str, Any] = {}
    rows = counters.get("servers", {})
    # A row reported again (in "servers") is newer than the one kept as removed.
    removed = {k: row for k, row in counters.get("removed", {}).items() if k not in rows}
    for k, row in rows.items():
        if k in servers:
            live[k] = row
        elif row.get("cur_conns", 0) > 0:
            removed[k] = row
    out["servers"] = live
    out["removed"] = {k: row for k, row in removed.items()
                      if k not in servers and row.get("cur_conns", 0) > 0}
    return out


class ShownCounters:
    """What the stats page shows: `merged()` (merge_snapshots' shape) pruned to a table,
    computed at most once per freshness window, from any thread.

    Merging and pruning 100,000 server rows takes about a second; every format of the
    page and every page of the HTML needs it. A result that took `cost` seconds (at
    least MIN_COST) is reused for REUSE x cost (at most MAX_AGE) with the same table;
    below MIN_COST it is recomputed each time, so a small cluster's page is as fresh as
    the workers' last report. The workers report every 0.5 s anyway. While one thread
    recomputes, another asking for the same table gets the previous result rather than
    waiting (a page render does not queue behind the merge an export started).
    """

    MIN_COST = 0.05
    REUSE = 4.0
    MAX_AGE = 5.0

    def __init__(self, merged: Callable[[], Mapping[str, Any]]) -> None:
        self._merged = merged
        self._lock = threading.Lock()
        self._until = 0.0
        self._last: tuple[object, dict[str, Any]] | None = None  # (table, value): one read

    def get(self, table: Any, keys: tuple[frozenset[str], frozenset[str]]) -> dict[str, Any]:
        """The counters for `table`, whose `table_rows` are `keys`."""
        if not self._lock.acquire(blocking=False):
            last = self._last
            if last is not None and last[0] is table:
                return last[1]
            self._lock.acquire()
        try:
            now = time.monotonic()
            last = self._last
            if last is not None and last[0] is table and now < self._until:
                return last[1]
            value = prune_to_table(self._merged(), *keys)
            cost = time.monotonic() - now
            self._last = (table, value)
            self._until = (now + cost + min(self.MAX_AGE, self.REUSE * cost)
                           if cost >= self.MIN_COST else 0.0)
            return value
        finally:
            self._lock.release()
