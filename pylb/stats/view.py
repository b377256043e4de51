"""What the stats page shows, as plain data, and its rows in haproxy's CSV vocabulary.

`StatsView` is a frozen snapshot the controller builds for each render (route table,
merged counters, check results, process, election, discovery and certificate facts).
Its counters may be a `LazyCounters`: the controller's merge of 100,000 server rows then
runs in the render thread, not on the event loop. `stat_rows(view)` turns the view into
haproxy's rows — a FRONTEND row per frontend, then per backend a row per server and a
BACKEND row — each a dict keyed by haproxy's CSV field names; `iter_rows` yields the
same one backend at a time, so a writer never holds every row at once. The HTML page,
the CSV, the JSON and the Prometheus text all read these rows, so a counter lands in the
same column everywhere. A server the table no longer has but that still holds sessions
(counters.prune_to_table puts it in the counters' "removed" section) gets a DRAIN row
in its backend, said to be removed; a backend gone from the table keeps a section while
such a server does. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.check import CheckResult
from pylb.counters import ServerRows, table_rows
from pylb.model import Backend, RouteTable, Server, format_hostport

# haproxy 2.6's `show stat` header, in order (doc/management.txt section 9.1). pylb
# writes every field; those with no meaning in pylb stay empty, as haproxy leaves them.
CSV_FIELDS: tuple[str, ...] = (
    "pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot", "bin", "bout",
    "dreq", "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "status", "weight", "act",
    "bck", "chkfail", "chkdown", "lastchg", "downtime", "qlimit", "pid", "iid", "sid",
    "throttle", "lbtot", "tracked", "type", "rate", "rate_lim", "rate_max", "check_status",
    "check_code", "check_duration", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx",
    "hrsp_5xx", "hrsp_other", "hanafail", "req_rate", "req_rate_max", "req_tot", "cli_abrt",
    "srv_abrt", "comp_in", "comp_out", "comp_byp", "comp_rsp", "lastsess", "last_chk",
    "last_agt", "qtime", "ctime", "rtime", "ttime", "agent_status", "agent_code",
    "agent_duration", "check_desc", "agent_desc", "check_rise", "check_fall",
    "check_health", "agent_rise", "agent_fall", "agent_health", "addr", "cookie", "mode",
    "algo", "conn_rate", "conn_rate_max", "conn_tot", "intercepted", "dcon", "dses", "wrew",
    "connect", "reuse", "cache_lookups", "cache_hits", "srv_icur", "src_ilim", "qtime_max",
    "ctime_max", "rtime_max", "ttime_max", "eint", "idle_conn_cur", "safe_conn_cur",
    "used_conn_cur", "need_conn_est", "uweight", "agg_server_status",
    "agg_server_check_status", "agg_check_status", "-", "ssl_sess", "ssl_reused_sess",
    "ssl_failed_handshake", "h2_headers_rcvd", "h2_data_rcvd", "h2_settings_rcvd",
    "h2_rst_stream_rcvd", "h2_goaway_rcvd", "h2_detected_conn_protocol_errors",
    "h2_detected_strm_protocol_errors", "h2_rst_stream_resp", "h2_goaway_resp",
    "h2_open_connections", "h2_backend_open_streams", "h2_total_connections",
    "h2_backend_total_streams", "h1_open_connections", "h1_open_streams",
    "h1_total_connections", "h1_total_streams", "h1_bytes_in", "h1_bytes_out",
    "h1_spliced_bytes_in", "h1_spliced_bytes_out",
)

TYPE_FRONTEND, TYPE_BACKEND, TYPE_SERVER = 0, 1, 2

Value = str | int | float | None
Row = dict[str, Value]


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """Who leads (election), if elections run."""

    name: str | None
    since: float | None = None  # wall time the current leader was first observed
    transitions: int = 0
    is_self: bool = False

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> LeaderInfo:
        return cls(name=d.get("name"), since=d.get("since"),
                   transitions=int(d.get("transitions", 0) or 0),
                   is_self=bool(d.get("is_self", d.get("leading", False))))


class CertLike(Protocol):
    """What proxy.certs.CertInfo offers (the TLS store's certificates, as they are)."""

    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def subject(self) -> str: ...
    @property
    def not_after(self) -> dt.datetime: ...
    @property
    def days_left(self) -> int: ...


@dataclass(frozen=True, slots=True)
class CertInfo:
    """A served certificate: its name (DNS names or subject), expiry, days left."""

    name: str
    not_after: float  # wall time
    days_left: float

    @classmethod
    def of(cls, c: CertInfo | CertLike) -> CertInfo:
        if isinstance(c, CertInfo):
            return c
        return cls(name=", ".join(c.names) or c.subject,
                   not_after=c.not_after.timestamp(), days_left=float(c.days_left))


@dataclass(frozen=True)
class StatsView:
    """Everything the stats page, its CSV/JSON and /metrics show. Wall-clock seconds."""

    version: str
    pid: int
    started: float
    now: float
    table: RouteTable = field(default_factory=RouteTable)
    counters: Mapping[str, Any] = field(default_factory=dict)  # counters.merge_snapshots
    checks: Mapping[tuple[str, int], CheckResult] = field(default_factory=dict)
    workers: int = 1
    worker_restarts: int = 0
    leader: LeaderInfo | Mapping[str, Any] | None = None  # a mapping: the elector's dict
    discovery_synced: bool = False
    discovery_last_sync: float | None = None
    discovery_metrics: Mapping[str, float] = field(default_factory=dict)
    certificates: Sequence[CertInfo | CertLike] = ()
    table_version: int = 0
    table_age: float | None = None  # seconds since the table was applied
    maxconn: int = 0  # per worker (Limits.maxconn)
    queue_limit: int = 0  # per backend and worker (Limits.queue_limit); 0: none
    # Frontend name → mode ("http" or "tcp"), when the caller knows better than the table.
    frontend_modes: Mapping[str, str] = field(default_factory=dict)

    @property
    def leader_info(self) -> LeaderInfo | None:
        if self.leader is None or isinstance(self.leader, LeaderInfo):
            return self.leader
        return LeaderInfo.from_mapping(self.leader)

    @property
    def certs(self) -> tuple[CertInfo, ...]:
        return tuple(CertInfo.of(c) for c in self.certificates)

    @property
    def uptime(self) -> float:
        return max(0.0, self.now - self.started)

    @property
    def frontend_limit(self) -> int:
        return self.maxconn * max(1, self.workers)

    def qlimit(self, backend: Backend) -> int | None:
        """The Queue Limit cell: the node's --queue-limit (every worker's), where a
        backend has a queue at all (a per-server limit); else empty, as haproxy's."""
        if not backend.maxconn or not self.queue_limit:
            return None
        return self.queue_limit * max(1, self.workers)


def _qtime(c: Mapping[str, Any]) -> int:
    """haproxy's qtime: the mean time requests spent in the queue, in ms, counting those
    that did not wait as 0 (haproxy averages its last 1024 requests; pylb since start, so
    that every worker's row adds up exactly)."""
    try:
        n = int(c.get("lbtot", 0))
        mean = float(c.get("queue_time", 0.0)) * 1000 / n if n > 0 else 0.0
    except (TypeError, ValueError, OverflowError):  # a worker's report is data, not law
        return 0
    return int(mean) if math.isfinite(mean) and mean >= 0 else 0


class LazyCounters(Mapping[str, Any]):
    """Counters (merge_snapshots' shape) computed on first use, once.

    The controller hands one to the StatsView it builds on the event loop, so that
    merging 100,000 server rows runs in the render thread, not on the loop that answers
    /readyz, discovery and checks. `fn` must be callable from another thread: it may
    read the loop's dicts (a C-level copy is atomic under the GIL) but must not iterate
    one in Python while the loop adds to it; a RuntimeError ("changed size during
    iteration") is retried twice.
    """

    __slots__ = ("_fn", "_lock", "_value")

    def __init__(self, fn: Callable[[], Mapping[str, Any]]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._value: Mapping[str, Any] | None = None

    def _get(self) -> Mapping[str, Any]:
        with self._lock:
            if self._value is None:
                for attempt in range(3):
                    try:
                        self._value = self._fn()
                        break
                    except RuntimeError:
                        if attempt == 2:
                            raise
            assert self._value is not None
            return self._value

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


# -- status ---------------------------------------------------------------------------

def server_status(server: Server, check: CheckResult | None) -> str:
    """haproxy's status string for a server row.

    A terminating endpoint (Kubernetes keeps it serving while it drains) and a weight of
    zero are DRAIN; an endpoint Kubernetes does not call ready is MAINT (withdrawn by the
    orchestrator, not by a failed check); else the check decides (UP, UP 1/3, DOWN,
    DOWN 1/2), and a server with no check result yet is "no check".
    """
    if server.terminating or (server.ready and server.weight == 0):
        return "DRAIN"
    if not server.ready:
        return "MAINT"
    if check is None:
        return "no check"
    return check.status_text()


def status_class(status: str) -> str:
    """The CSS class (haproxy's legend) of a status string."""
    if status in ("OPEN", "UP"):
        return "up"
    if status.startswith("UP "):
        return "going-down"
    if status.startswith("DOWN "):
        return "going-up"
    if status == "DOWN":
        return "down"
    if status == "DRAIN":
        return "drain"
    if status == "MAINT":
        return "maint"
    return "no-check"


def server_usable(status: str) -> bool:
    """A server that may get new work (counted in its backend's `act`)."""
    return status == "no check" or status.startswith("UP")


def hidden_by_up(status: str) -> bool:
    """`;up` hides what haproxy's "Hide 'DOWN' servers" hides: DOWN (also on its way up)
    and MAINT; a DRAIN server still holds connections and stays."""
    return status.startswith("DOWN") or status == "MAINT"


# -- rows -----------------------------------------------------------------------------

def frontends(view: StatsView) -> list[tuple[str, str]]:
    """(name, mode) of every frontend: http (always), https when it has routes or
    counters, each TCP frontend, then any name only the counters know."""
    out: dict[str, str] = {"http": "http"}
    counters = view.counters.get("frontends", {})
    if view.table.https or "https" in counters:
        out["https"] = "http"
    for f in view.table.tcp:
        out[f.name] = "tcp"
    for name in sorted(counters):
        out.setdefault(name, "tcp")
    for name, mode in view.frontend_modes.items():
        if name in out:
            out[name] = mode
    return list(out.items())


def backend_mode(table: RouteTable, name: str) -> str:
    return "http" if name in _http_backends(table) else "tcp"


def _http_backends(table: RouteTable) -> frozenset[str]:
    return frozenset(r.backend for r in table.http + table.https)


def _since(now: float, t: float | None) -> int:
    """Seconds since t, or -1 when never (haproxy's `lastsess`)."""
    if not t:
        return -1
    return max(0, int(now - t))


def _counter_cells(c: Mapping[str, Any], now: float) -> Row:
    hrsp = list(c.get("hrsp", (0, 0, 0, 0, 0, 0)))
    return {
        "scur": int(c.get("cur_conns", 0)),
        "smax": int(c.get("max_conns", 0)),
        "stot": int(c.get("total_conns", 0)),
        "bin": int(c.get("bytes_in", 0)),
        "bout": int(c.get("bytes_out", 0)),
        "dreq": int(c.get("denied_req", 0)),
        "dresp": int(c.get("denied_resp", 0)),
        "qcur": int(c.get("queue_cur", 0)),
        "qmax": int(c.get("queue_max", 0)),
        "rate": int(c.get("rate", 0)),
        "rate_max": int(c.get("max_rate", 0)),
        "hrsp_1xx": hrsp[0], "hrsp_2xx": hrsp[1], "hrsp_3xx": hrsp[2],
        "hrsp_4xx": hrsp[3], "hrsp_5xx": hrsp[4], "hrsp_other": hrsp[5],
        "req_tot": int(c.get("req_total", 0)),
        "lastsess": _since(now, c.get("last_session")),
    }


def _frontend_row(view: StatsView, name: str, mode: str, iid: int) -> Row:
    c = view.counters.get("frontends", {}).get(name, {})
    row: Row = {"pxname": name, "svname": "FRONTEND", **_counter_cells(c, view.now)}
    row.update({
        "slim": view.frontend_limit or None,
        "ereq": int(c.get("req_errors", 0)),
        "status": "OPEN", "pid": 1, "iid": iid, "sid": 0, "type": TYPE_FRONTEND,
        "mode": mode, "dcon": int(c.get("denied_conn", 0)),
        "conn_rate": row["rate"], "conn_rate_max": row["rate_max"], "conn_tot": row["stot"],
        # haproxy's h2 mux counters, as its frontends report them
        "h2_open_connections": int(c.get("h2_cur", 0)),
        "h2_total_connections": int(c.get("h2_tot", 0)),
        "h2_headers_rcvd": int(c.get("h2_streams", 0)),
        "h2_rst_stream_rcvd": int(c.get("h2_resets", 0)),
        "h2_detected_strm_protocol_errors": int(c.get("h2_strm_errors", 0)),
        "h2_detected_conn_protocol_errors": int(c.get("h2_conn_errors", 0)),
    })
    del row["lastsess"], row["qcur"], row["qmax"]  # a frontend has no queue
    if mode != "http":
        for k in ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other",
                  "req_tot"):
            row[k] = None
    return row


_NOT_HTTP = {k: None for k in ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx",
                                "hrsp_5xx", "hrsp_other", "req_tot")}
REMOVED = "removed from the route table"


def _server_row(view: StatsView, backend: Backend, server: Server, mode: str, iid: int,
                sid: int, svname: str, c: Mapping[str, Any]) -> Row:
    # One dict literal: this runs once per server (100,000 on a big cluster).
    check = view.checks.get(server.key)
    g = c.get
    http = mode == "http"
    hrsp = g("hrsp") or _NO_HRSP
    row: Row = {
        "pxname": backend.name, "svname": svname,
        "qcur": int(g("queue_cur", 0)), "qmax": int(g("queue_max", 0)),
        "qlimit": view.qlimit(backend), "qtime": _qtime(c),
        "slim": backend.maxconn or None,
        "scur": int(g("cur_conns", 0)),
        "smax": int(g("max_conns", 0)),
        "stot": int(g("total_conns", 0)),
        "bin": int(g("bytes_in", 0)),
        "bout": int(g("bytes_out", 0)),
        "dreq": None,  # servers deny nothing; haproxy leaves the cell empty too
        "dresp": int(g("denied_resp", 0)),
        "rate": int(g("rate", 0)),
        "rate_max": int(g("max_rate", 0)),
        "hrsp_1xx": hrsp[0] if http else None, "hrsp_2xx": hrsp[1] if http else None,
        "hrsp_3xx": hrsp[2] if http else None, "hrsp_4xx": hrsp[3] if http else None,
        "hrsp_5xx": hrsp[4] if http else None, "hrsp_other": hrsp[5] if http else None,
        "req_tot": int(g("req_total", 0)) if http else None,
        "lastsess": _since(view.now, g("last_session")),
        "econ": int(g("conn_errors", 0)),
        "eresp": int(g("resp_errors", 0)),
        "wretr": int(g("retries", 0)),
        "wredis": int(g("redispatches", 0)),
        "status": server_status(server, check),
        "weight": server.weight, "uweight": server.weight,
        "act": 1, "bck": 0,
        "pid": 1, "iid": iid, "sid": sid, "type": TYPE_SERVER,
        "lbtot": int(g("lbtot", 0)),
        "addr": format_hostport(server.address, server.port),
        "mode": mode,
    }
    ejected = float(g("ejected_until", 0) or 0)
    if ejected > view.now and server_usable(str(row["status"])):
        # Passively ejected (failed connects: haproxy's observe layer4 marks it DOWN).
        row["status"] = "DOWN"
        row["act"] = 0
    if check is not None:
        row.update({
            "chkfail": check.failures,
            "chkdown": check.downs,
            "lastchg": _since(view.now, check.last_change),
            "downtime": int(check.total_downtime(view.now)),
            "check_status": check.status if check.checked_at is not None else "INI",
            "check_code": check.code,
            "check_duration": (round(check.duration_ms) if check.duration_ms is not None
                               and math.isfinite(check.duration_ms) else None),
            "last_chk": check.detail or None,
            "check_desc": check.description,
            "check_rise": check.rise, "check_fall": check.fall,
            "check_health": check.health,
        })
    if ejected > view.now and row["status"] == "DOWN" and not row["act"]:
        row["check_desc"] = row["last_chk"] = (
            f"ejected: failed connects (error-limit), back in {ejected - view.now:.0f}s "
            "(used anyway while too few servers are left)")
    return row


_NO_HRSP = (0, 0, 0, 0, 0, 0)


def _removed_row(view: StatsView, backend: str, label: str, mode: str, iid: int, sid: int,
                 c: Mapping[str, Any]) -> Row:
    """A server the table no longer has that still holds sessions: DRAIN (no new work,
    haproxy's word for it), weight 0, said to be removed. It goes with its last session
    (counters.prune_to_table)."""
    row: Row = {"pxname": backend, "svname": label, **_counter_cells(c, view.now)}
    row.update({
        "econ": int(c.get("conn_errors", 0)),
        "eresp": int(c.get("resp_errors", 0)),
        "wretr": int(c.get("retries", 0)),
        "wredis": int(c.get("redispatches", 0)),
        "status": "DRAIN", "weight": 0, "uweight": 0, "act": 0, "bck": 0,
        "pid": 1, "iid": iid, "sid": sid, "type": TYPE_SERVER,
        "lbtot": int(c.get("lbtot", 0)),
        "mode": mode, "dreq": None, "check_desc": REMOVED, "last_chk": REMOVED,
    })
    if mode != "http":
        row.update(_NOT_HTTP)
    return row


def server_names(backend: Backend) -> list[str]:
    """Each server's name in its backend's rows: its label, unless another server of the
    backend has the same (one pod behind an IPv4 and an IPv6 address): then
    `label@address:port`, so that each row, and each Prometheus series, stays one of a
    kind. (The data plane counts by label: such servers show the same counters.)"""
    seen = Counter(s.label for s in backend.servers)
    return [f"{s.label}@{format_hostport(s.address, s.port)}" if seen[s.label] > 1
            else s.label for s in backend.servers]


def _backend_row(view: StatsView, backend: Backend, mode: str, iid: int,
                 servers: list[Row], removed: bool = False) -> Row:
    c = view.counters.get("backends", {}).get(backend.name, {})
    usable = [r for r in servers if server_usable(str(r["status"]))]
    row: Row = {"pxname": backend.name, "svname": "BACKEND", **_counter_cells(c, view.now),
                "qlimit": view.qlimit(backend), "qtime": _qtime(c)}
    row.update({
        "econ": int(c.get("conn_errors", 0)),
        "eresp": int(c.get("resp_errors", 0)),
        "wretr": int(c.get("retries", 0)),
        "wredis": int(c.get("redispatches", 0)),
        "status": "DRAIN" if removed else "UP" if usable else "DOWN",
        "weight": sum(int(r["weight"] or 0) for r in usable),
        "uweight": sum(int(r["weight"] or 0) for r in usable),
        "act": len(usable), "bck": 0,
        "pid": 1, "iid": iid, "sid": 0, "type": TYPE_BACKEND,
        "lbtot": int(c.get("lbtot", 0)),
        "mode": mode, "algo": backend.algorithm.value,
        "cookie": backend.cookie_name if backend.affinity.value == "cookie" else None,
    })
    if mode != "http":
        row.update(_NOT_HTTP)
    if removed:
        row["check_desc"] = REMOVED
    return row


def stat_rows(view: StatsView, up_only: bool = False,
              backends: Sequence[Backend] | None = None) -> list[Row]:
    """haproxy's rows for `view`; `up_only` drops DOWN and MAINT servers (`;up`).
    `backends`: only these (a page of the HTML view); default every backend of the
    table, then any the table no longer has that still hold sessions."""
    return list(iter_rows(view, up_only, backends))


def iter_rows(view: StatsView, up_only: bool = False,
              backends: Sequence[Backend] | None = None) -> Iterator[Row]:
    """`stat_rows`, one backend's rows at a time: a writer that consumes them as they
    come never holds 100,000 rows (about 2 KB each) at once."""
    for row in _rows(view, up_only, backends):
        row["-"] = "-"  # haproxy's marker between its own fields and its modules' fields
        yield row


def removed_servers(view: StatsView) -> dict[str, list[tuple[str, Mapping[str, Any]]]]:
    """Per backend name, the (label, counters) of servers the table no longer has that
    still hold sessions: counters.prune_to_table put them in the "removed" section."""
    out: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for key, c in view.counters.get("removed", {}).items():
        if c.get("cur_conns", 0) > 0:
            backend, _, label = key.partition("\x00")
            out.setdefault(backend, []).append((label, c))
    return out


_keys_cache: list[tuple[RouteTable, tuple[frozenset[str], ServerRows]]] = []


def table_keys(table: RouteTable) -> tuple[frozenset[str], ServerRows]:
    """counters.table_rows of `table`, kept for the last table (computed once per table
    version, not once per render)."""
    cached = _keys_cache[0] if _keys_cache else None
    if cached is not None and cached[0] is table:
        return cached[1]
    keys = table_rows(table.backends)
    _keys_cache[:] = [(table, keys)]
    return keys


def _rows(view: StatsView, up_only: bool, only: Sequence[Backend] | None) -> Iterator[Row]:
    iid = 0
    for name, mode in frontends(view):
        iid += 1
        yield _frontend_row(view, name, mode, iid)
    http_backends = _http_backends(view.table)
    removed = removed_servers(view)
    counters = view.counters.get("servers", {})
    table = view.table.backends
    if only is None:
        chosen: Sequence[tuple[int, Backend]] = list(enumerate(table, start=iid + 1))
    else:  # a backend keeps its iid (its place in the whole table) on any page
        place = {b.name: n for n, b in enumerate(table, start=iid + 1)}
        chosen = [(place[b.name], b) for b in only if b.name in place]
    for iid, backend in chosen:
        mode = "http" if backend.name in http_backends else "tcp"
        servers = [_server_row(view, backend, s, mode, iid, sid, name,
                               counters.get(f"{backend.name}\x00{s.label}", _EMPTY))
                   for sid, (s, name) in enumerate(
                       zip(backend.servers, server_names(backend), strict=True), start=1)]
        sid = len(servers)
        for label, c in removed.pop(backend.name, ()):
            sid += 1
            servers.append(_removed_row(view, backend.name, label, mode, iid, sid, c))
        be = _backend_row(view, backend, mode, iid, servers)
        if up_only:
            servers = [r for r in servers if not hidden_by_up(str(r["status"]))]
        yield from servers
        yield be
    if only is None:
        iid = chosen[-1][0] if chosen else iid
        backend_rows = view.counters.get("backends", {})
        for name, gone in sorted(removed.items()):
            iid += 1
            mode = "http" if backend_rows.get(name, _EMPTY).get("req_total") else "tcp"
            servers = [_removed_row(view, name, label, mode, iid, sid, c)
                       for sid, (label, c) in enumerate(gone, start=1)]
            yield from servers
            yield _backend_row(view, Backend(name), mode, iid, servers, removed=True)


_EMPTY: Mapping[str, Any] = {}
