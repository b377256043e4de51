"""Counters the data plane increments and the stats page reads.

Hot paths do `c.bytes_in += n` on plain slotted objects: no locks, no library calls. A
worker takes a `snapshot()` (plain dicts, picklable) to report to the controller, which
`merge`s the snapshots of all workers exactly: sums for totals and current values, max for
maxima. The controller's merged rows are bounded by the route table (`prune_to_table`:
a row the table lost goes with its last session) and computed at most once per
freshness window for the stats page (`ShownCounters`).

Bounded, and reported by change. Rows of backends and servers that leave the route table
are dropped (`prune`) — at once when idle, else when their last connection closes
(`sweep`) — so pod churn does not grow them forever. A worker's periodic report
(`report`) carries only the rows that changed since its last one, found by a fingerprint
per row rather than by marks on the hot path (at most `SWEEP_ROWS` rows looked at per
report, in a round: beyond that many rows a row's change reaches the controller within a
round), and the names of rows dropped since; the controller folds reports into the
worker's snapshot (`fold_report`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from operator import attrgetter
from typing import Any

from pylb.failures import Failure

# Which fields are maxima (merged with max), and which are timestamps (merged with max).
_MAX_FIELDS = frozenset({"max_conns", "max_rate", "last_session", "ejected_until",
                         "queue_max"})


# The `hrsp` slot of each status code below 1000: 0-4 for 1xx-5xx, 5 for any other. A
# response's status is three digits (both response parsers refuse others) or one of our
# own, so the data path indexes this instead of dividing (an int floor division is a
# generic BINARY_OP in CPython 3.11: ~230 instructions, twice per request).
HRSP_SLOT: tuple[int, ...] = tuple(s // 100 - 1 if 100 <= s < 600 else 5 for s in range(1000))


class Counters:
    """One row of the stats page (a frontend, a backend or a server)."""

    __slots__ = (
        "_max_rate",
        "_rate_base",
        "_rate_second",
        "bytes_in",
        "bytes_out",
        "conn_errors",
        "cur_conns",
        "denied_conn",
        "denied_req",
        "denied_resp",
        "ejected_until",
        "h2_conn_errors",
        "h2_cur",
        "h2_resets",
        "h2_streams",
        "h2_strm_errors",
        "h2_tot",
        "hrsp",
        "last_session",
        "lbtot",
        "max_conns",
        "queue_cur",
        "queue_max",
        "queue_time",
        "queued",
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
        self.denied_conn = 0  # L4 connections refused by a rate limit (haproxy's dcon)
        # The queue (proxy.queue): waiting now, most ever waiting, and the requests that
        # waited with their total wait in seconds (the stats page's qtime is the mean).
        self.queue_cur = 0
        self.queue_max = 0
        self.queue_time = 0.0
        self.queued = 0
        self.req_errors = 0
        self.conn_errors = 0
        self.resp_errors = 0
        self.retries = 0
        self.redispatches = 0
        self.req_total = 0
        self.hrsp = [0, 0, 0, 0, 0, 0]  # 1xx 2xx 3xx 4xx 5xx other
        # HTTP/2 client connections (a frontend's: proxy.http.h2server): open, total;
        # request streams; streams the client reset; stream and connection errors sent
        self.h2_cur = 0
        self.h2_tot = 0
        self.h2_streams = 0
        self.h2_resets = 0
        self.h2_strm_errors = 0
        self.h2_conn_errors = 0
        self.last_session = 0.0  # wall-clock time of the last new session
        # A server passively ejected (proxy/balance.py): wall-clock time it gets work
        # again; 0 when it is not. Merged with max: ejected in some worker.
        self.ejected_until = 0.0
        # Sessions per wall-clock second (haproxy's rate, and its most: `rate`, `max_rate`).
        # `open_rows` counts them without a counter of its own (a `+= 1` and a compare
        # per session fewer): the sessions of the second counted last are those since
        # `total_conns` was `_rate_base`, and `_max_rate` the most of the seconds before.
        self._rate_second = 0.0  # the wall-clock second counted (`open_rows`: a whole number)
        self._rate_base = 0
        self._max_rate = 0

    def open(self, now: float | None = None) -> None:
        """A new session (connection or, on a server, a request sent to it)."""
        open_rows(self, None, time.time() if now is None else now)

    def close(self) -> None:
        self.cur_conns -= 1

    def response(self, status: int) -> None:
        self.hrsp[HRSP_SLOT[status] if 0 <= status < 1000 else 5] += 1

    def rate(self, now: float | None = None) -> int:
        """Sessions in the current second (haproxy's `rate`)."""
        t = int(time.time() if now is None else now)
        return self.total_conns - self._rate_base if t == self._rate_second else 0

    @property
    def max_rate(self) -> int:
        """The most sessions in one second (haproxy's `rate_max`)."""
        return max(self._max_rate, self.total_conns - self._rate_base)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        d = dict(zip(_PUBLIC, _get_public(self), strict=True))
        d["hrsp"] = list(self.hrsp)
        d["rate"] = self.rate(now)
        return d


# One C call reads every public field (a snapshot of 100,000 servers is taken often).
_PUBLIC = (*(k for k in Counters.__slots__ if k[0] != "_"), "max_rate")
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


# What a row's fingerprint reads: every counter that can move without another of these
# moving. hrsp moves only with a session's end (cur_conns, or total_conns when another
# began), and the maxima and last_session only with a new session (total_conns).
_fingerprint = attrgetter(
    "total_conns", "cur_conns", "bytes_in", "bytes_out", "lbtot", "req_total",
    "conn_errors", "resp_errors", "retries", "redispatches", "req_errors", "denied_req",
    "denied_resp", "ejected_until", "denied_conn", "queue_cur", "queued")


# Rows a report looks at beyond the busy ones: a fingerprint costs 1-3 µs, so a report
# takes at most ~10-30 ms of a worker's loop however many rows there are (the whole
# snapshot of 110,000 rows took ~1.8 s on the same machine).
SWEEP_ROWS = 10_000


def server_key(backend: str, server: str) -> str:
    """A server row's key in snapshots."""
    return f"{backend}\x00{server}"


class Stats:
    """All counters of one process: per frontend, per backend, per server, and failures by
    reason. Keys: frontend name; backend name; (backend name, server label)."""

    __slots__ = ("_cycle", "_draining", "_gone_backends", "_gone_servers", "_hot", "_pos",
                 "_sent", "backends", "drops", "failures", "frontends", "servers")

    def __init__(self) -> None:
        self.frontends: dict[str, Counters] = {}
        self.backends: dict[str, Counters] = {}
        self.servers: dict[tuple[str, str], Counters] = {}
        self.failures: dict[Failure, int] = {}
        # rows out of the table that still have connections: (backend, server or None)
        self._draining: set[tuple[str, str | None]] = set()
        self._gone_backends: set[str] = set()  # dropped since the last report
        self._gone_servers: set[tuple[str, str]] = set()
        self._sent: dict[tuple[str, str | None], int] = {}  # row -> fingerprint reported
        self._hot: set[tuple[str, str | None]] = set()  # rows reported with a rate > 0
        self._cycle: list[tuple[str, str | None]] = []  # the round of `_to_check`
        self._pos = 0
        # Rows dropped so far (backends' and servers'): a row kept out of these maps (a
        # backend connection's, proxy.http.server) is still the one they hold while this
        # count has not moved since it was looked up.
        self.drops = 0

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
        # The stats thread may take this snapshot while the event loop adds a row (a new
        # server). dict.copy() creates no GC-tracked object, so no collection (and no
        # finalizer, and no switch to the loop's thread) can run in the middle of it;
        # list(d.items()) makes a tuple per item and can (seen once in a full test run).
        now = time.time()
        return {
            "frontends": {k: c.snapshot(now) for k, c in self.frontends.copy().items()},
            "backends": {k: c.snapshot(now) for k, c in self.backends.copy().items()},
            "servers": {f"{b}\x00{s}": c.snapshot(now)
                        for (b, s), c in self.servers.copy().items()},
            "failures": {f.name: n for f, n in self.failures.copy().items()},
        }

    # -- bounded rows -------------------------------------------------------------------

    def prune(self, servers: Iterable[tuple[str, str]], backends: Iterable[str] = (),
              back: Iterable[tuple[str, str]] = ()) -> None:
        """Rows that left the route table: `servers` as (backend, label), whole
        `backends` (with their servers' rows named in `servers`). An idle row is dropped
        now, one with open connections when they have closed (`sweep`). `back`: server
        rows in the table again, no longer to be dropped."""
        if self._draining:
            for b, label in back:
                self._draining.discard((b, label))
        for key in servers:
            row = self.servers.get(key)
            if row is None:
                continue
            if row.cur_conns > 0:
                self._draining.add(key)
            else:
                self._drop_server(key)
        for name in backends:
            row = self.backends.get(name)
            if row is None:
                continue
            if row.cur_conns > 0:
                self._draining.add((name, None))
            else:
                self._drop_backend(name)

    def keep_backend(self, name: str) -> None:
        """A backend is in the table (again): its row is not to be dropped."""
        if self._draining:
            self._draining.discard((name, None))

    def sweep(self) -> None:
        """Drop the rows of `prune` whose last connection has closed."""
        for key in [k for k in self._draining if self._idle(k)]:
            self._draining.discard(key)
            b, label = key
            if label is None:
                self._drop_backend(b)
            else:
                self._drop_server((b, label))

    def _idle(self, key: tuple[str, str | None]) -> bool:
        b, label = key
        row = self.backends.get(b) if label is None else self.servers.get((b, label))
        return row is None or row.cur_conns <= 0

    def _drop_server(self, key: tuple[str, str]) -> None:
        if self.servers.pop(key, None) is not None:
            self._gone_servers.add(key)
            self.drops += 1
        self._sent.pop(key, None)
        self._hot.discard(key)

    def _drop_backend(self, name: str) -> None:
        if self.backends.pop(name, None) is not None:
            self._gone_backends.add(name)
            self.drops += 1
        self._sent.pop((name, None), None)
        self._hot.discard((name, None))

    def _to_check(self, full: bool) -> list[tuple[str, str | None]]:
        """The rows a report looks at: all when `full`; else the rows reported with a
        rate (it falls to 0 with the second) and the next `SWEEP_ROWS` of a round over
        all rows — every row each report up to that many rows, and a round of
        rows / SWEEP_ROWS reports above (100,000 server rows: every 5 s)."""
        if full:
            self._cycle, self._pos = [], 0
            return [(k, None) for k in self.backends] + list(self.servers)
        out: list[tuple[str, str | None]] = list(self._hot)
        budget = SWEEP_ROWS
        wrapped = False
        while budget > 0:
            if self._pos >= len(self._cycle):
                if wrapped:
                    break  # every row once in this report
                wrapped = True
                self._cycle = [(k, None) for k in self.backends]
                self._cycle += self.servers
                self._pos = 0
                if not self._cycle:
                    break
            chunk = self._cycle[self._pos:self._pos + budget]
            self._pos += len(chunk)
            budget -= len(chunk)
            out += chunk
        return out

    def report(self, full: bool = False) -> dict[str, Any]:
        """The rows changed since the last report (every row when `full`), in
        `snapshot()`'s shape, plus `removed_backends`/`removed_servers`: rows dropped
        since. Frontends and failures are few and always whole."""
        self.sweep()
        now = int(time.time())
        out: dict[str, Any] = {
            "frontends": {k: c.snapshot() for k, c in self.frontends.items()},
            "failures": {f.name: n for f, n in self.failures.items()},
        }
        changed_b: dict[str, Any] = {}
        changed_s: dict[str, Any] = {}
        sent, hot, backends, servers = self._sent, self._hot, self.backends, self.servers
        for key in self._to_check(full):
            b, label = key
            c = backends.get(b) if label is None else servers.get((b, label))
            if c is None:
                continue
            fp = hash(_fingerprint(c))
            if not full and sent.get(key) == fp and (key not in hot or c._rate_second == now):
                continue
            sent[key] = fp
            if c._rate_second == now and c.total_conns != c._rate_base:
                hot.add(key)
            else:
                hot.discard(key)
            if label is None:
                changed_b[b] = c.snapshot()
            else:
                changed_s[server_key(b, label)] = c.snapshot()
        out["backends"], out["servers"] = changed_b, changed_s
        # A row dropped and made again since (traffic came back) is reported fresh above;
        # its removal goes first on the controller (fold_report), so either order holds.
        out["removed_backends"] = tuple(self._gone_backends)
        out["removed_servers"] = tuple(server_key(*k) for k in self._gone_servers)
        self._gone_backends, self._gone_servers = set(), set()
        return out


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


def fold_report(snapshot: dict[str, Any], report: dict[str, Any],
                full: bool = False) -> dict[str, Any]:
    """A worker's snapshot brought up to date with its `Stats.report()` (in place; a
    `full` report replaces it)."""
    if full or not snapshot:
        snapshot = {"frontends": {}, "backends": {}, "servers": {}, "failures": {}}
    snapshot["frontends"] = report.get("frontends", {})
    snapshot["failures"] = report.get("failures", {})
    for section in ("backends", "servers"):
        rows = snapshot.setdefault(section, {})
        for k in report.get(f"removed_{section}", ()):
            rows.pop(k, None)
        rows.update(report.get(section, {}))
    return snapshot


# -- bounded state ----------------------------------------------------------------------

class ServerRows(Set[str]):
    """The server keys (`backend\x00label`) of a route table's backends, as a set that is
    not built: `key in rows` looks at that key's backend only (its labels made once, when
    first asked). The stats page asks this of the few rows that have counters; a frozenset
    of every key was 100,000 strings at 10,000 services (~12 MiB, remade per table
    version) and made every server's label, kept on the Server (~6 MiB more). Iterating
    or `len` makes them all (tests, and what a whole CSV needs anyway)."""

    __slots__ = ("_by_name", "_labels")

    def __init__(self, backends: Iterable[Any]) -> None:
        self._by_name = {b.name: b for b in backends}
        self._labels: dict[str, frozenset[str]] = {}

    def _labels_of(self, b: Any) -> frozenset[str]:
        labels = self._labels.get(b.name)
        if labels is None:  # two render threads may both make it: equal sets either way
            labels = self._labels[b.name] = frozenset(s.label for s in b.servers)
        return labels

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        name, sep, label = key.partition("\x00")
        b = self._by_name.get(name)
        return bool(sep) and b is not None and label in self._labels_of(b)

    def __iter__(self) -> Iterator[str]:
        for name, b in self._by_name.items():
            for label in self._labels_of(b):
                yield f"{name}\x00{label}"

    def __len__(self) -> int:
        return sum(len(self._labels_of(b)) for b in self._by_name.values())


def table_rows(backends: Iterable[Any]) -> tuple[frozenset[str], ServerRows]:
    """The backend names and the server keys (`backend\x00label`) of a route table's
    backends: the rows the stats page has a place for."""
    backends = tuple(backends)
    return frozenset(b.name for b in backends), ServerRows(backends)


def prune_to_table(counters: Mapping[str, Any], backends: Set[str],
                   servers: Set[str]) -> dict[str, Any]:
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

    def get(self, table: Any, keys: tuple[frozenset[str], ServerRows]) -> dict[str, Any]:
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


# The wall-clock second `open_rows` counted in last (a whole number, as a float), and the
# next: a time between them is in that second, known without a float floor division
# (`now // 1`, ~500 instructions: fmod) on every call.
_second = 0.0
_next_second = 0.0


def open_rows(a: Counters, b: Counters | None, now: float) -> None:
    """`a.open(now)`, and `b.open(now)` when `b` is given, in one call: an L7 request sent
    to a server opens a session on the server's row and on its backend's (once per
    request: proxy.http.server's `_attach`)."""
    global _second, _next_second
    if now >= _next_second or now < _second:  # (the wall clock may step back)
        _second = now // 1  # the second, as a float: int(now), a type call, costs more
        _next_second = _second + 1.0
    second = _second
    row: Counters | None = a
    while row is not None:
        if second != row._rate_second:  # the row's first session in this second
            total = row.total_conns
            last = total - row._rate_base  # (the sessions of the second counted before)
            if last > row._max_rate:
                row._max_rate = last
            row._rate_second = second
            row._rate_base = total
        row.total_conns += 1
        n = row.cur_conns = row.cur_conns + 1
        if n > row.max_conns:
            row.max_conns = n
        row.last_session = now
        row = b
        b = None
