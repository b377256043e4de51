"""Prometheus exposition: a custom collector that reads a fresh `StatsView` per scrape.

The data plane never calls prometheus-client: its counters are plain integers merged by
the controller, and this module turns the view into metric families only when /metrics
is scraped. Each StatsServer has its own CollectorRegistry, so two servers in one
process (tests) never collide and the library's process-global registry stays clean.

Two parts make one scrape. The process-wide families (build info, failures, discovery,
election, certificates: a few dozen samples) come from `StatsCollector` through
prometheus-client's `generate_latest`. The per-row families (frontend, backend, server:
one sample per row and family, 1.7 million at 100,000 servers) are written straight to
text by `_RowFamilies` in the same text format: prometheus-client builds a Sample tuple
and a label dict per sample and formats the labels again for each, which took 37 s and
over a gigabyte at 100,000 servers (bench/stats_scale.py); here a row's label set is
escaped once and shared by all its families.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pylb.failures import Failure
from pylb.stats.view import TYPE_BACKEND, TYPE_FRONTEND, CertInfo, Row, StatsView, iter_rows

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")


def _f(v: object) -> float:
    """A sample value: a number as a float, an int too big for one as +-Inf, else 0."""
    if not isinstance(v, int | float):
        return 0.0
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _l(s: str) -> str:
    """A label value the text format can carry: UTF-8 cannot hold a lone surrogate (a
    bad escape in a manifest gives one), so it becomes U+FFFD, as Go's encoder does."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return s


def _failure_label(name: str) -> str:
    try:
        return Failure[name].label
    except KeyError:
        return name.lower()


def _go(d: float) -> str:
    """A sample value as prometheus-client's floatToGoString writes it (Go's %g-like
    exponents past 1e6)."""
    if d != d:
        return "NaN"
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _esc(v: str) -> str:
    """A label value escaped as the text format wants it (prometheus-client's rules)."""
    return _l(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Text:
    """One family written as text lines: what generate_latest writes for a
    Gauge/CounterMetricFamily (a counter's samples and HELP/TYPE named `_total`)."""

    __slots__ = ("head", "lines", "name")

    def __init__(self, name: str, doc: str, counter: bool = False) -> None:
        self.name = name + "_total" if counter else name
        kind = "counter" if counter else "gauge"
        self.head = f"# HELP {self.name} {doc}\n# TYPE {self.name} {kind}\n"
        self.lines: list[str] = []

    def add(self, labels: str, value: object) -> None:
        """`labels`: the `{k="v",...}` part, escaped, names sorted (see `_labels`)."""
        self.lines.append(f"{self.name}{labels} {_go(_f(value))}\n")

    def text(self) -> str:
        return self.head + "".join(self.lines)


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(kv.items())) + "}"


class _Families:
    """The families of one kind of row (frontend, backend or server)."""

    def __init__(self, prefix: str, what: str) -> None:
        self.current = _Text(f"{prefix}_current_sessions", f"Current sessions of the {what}")
        self.max = _Text(f"{prefix}_max_sessions", f"Most sessions at once on the {what}")
        self.total = _Text(f"{prefix}_sessions", f"Sessions of the {what}", True)
        self.bytes_in = _Text(f"{prefix}_bytes_in", f"Bytes received by the {what}", True)
        self.bytes_out = _Text(f"{prefix}_bytes_out", f"Bytes sent by the {what}", True)
        self.responses = _Text(f"{prefix}_http_responses",
                               f"HTTP responses of the {what} by status class", True)
        self.requests = _Text(f"{prefix}_http_requests", f"HTTP requests of the {what}", True)
        self.rate_max = _Text(f"{prefix}_max_session_rate",
                              f"Most new sessions in one second on the {what}")

    def add(self, row: Row, labels: str) -> None:
        self.current.add(labels, row.get("scur"))
        self.max.add(labels, row.get("smax"))
        self.total.add(labels, row.get("stot"))
        self.bytes_in.add(labels, row.get("bin"))
        self.bytes_out.add(labels, row.get("bout"))
        self.rate_max.add(labels, row.get("rate_max"))
        if row.get("req_tot") is not None:
            self.requests.add(labels, row.get("req_tot"))
            stem = labels[:-1] + ',code="'
            for cls in _CLASSES:
                self.responses.add(f'{stem}{cls}"}}', row.get(f"hrsp_{cls}"))

    def families(self) -> list[_Text]:
        return [self.current, self.max, self.total, self.bytes_in, self.bytes_out,
                self.rate_max, self.requests, self.responses]


# Per-server series (17 families) are exported while the table has at most this many
# servers. 10,000 servers make ~170,000 series (~20 MB a scrape, seconds of
# prometheus-client's writer); 100,000 make 1.7 million (211 MB, 37 s, over 1 GB of
# sample objects: bench/stats_scale.py) — more than one Prometheus target should carry
# and more than the controller's memory budget. Above the limit the per-server families
# are left out (empty), `pylb_backend_servers{backend,state}` still counts every server
# by state, `pylb_server_series_exported` says 0, and the CSV keeps every server row.
SERVER_SERIES_LIMIT = 10_000


class StatsCollector(Collector):
    """prometheus-client collector over `view_fn()`; one view per scrape.

    `pinned`, when set, is the view to use instead (Exposition.render_view sets it so
    that the view is built on the event loop and only the rendering runs elsewhere).
    """

    def __init__(self, view_fn: Callable[[], StatsView],
                 server_series_limit: int = SERVER_SERIES_LIMIT) -> None:
        self._view_fn = view_fn
        self.pinned: StatsView | None = None
        self.server_series_limit = server_series_limit

    def collect(self) -> Iterator[Metric]:
        """The process-wide families (the per-row ones: `row_families`)."""
        view = self.pinned if self.pinned is not None else self._view_fn()
        info = GaugeMetricFamily("pylb_build_info", "pylb version", labels=["version"])
        info.add_metric([_l(view.version)], 1.0)
        yield info
        yield GaugeMetricFamily("pylb_start_time_seconds", "Start time (Unix seconds)",
                                value=view.started)
        yield GaugeMetricFamily("pylb_uptime_seconds", "Seconds since start",
                                value=view.uptime)
        yield GaugeMetricFamily("pylb_workers", "Worker processes", value=view.workers)
        yield CounterMetricFamily("pylb_worker_restarts", "Worker processes restarted",
                                  value=view.worker_restarts)
        yield GaugeMetricFamily("pylb_route_table_version", "Version of the route table",
                                value=view.table_version)
        if view.table_age is not None:
            yield GaugeMetricFamily("pylb_route_table_age_seconds",
                                    "Seconds since the route table was applied",
                                    value=view.table_age)
        yield GaugeMetricFamily("pylb_skipped_services",
                                "Services the translation did not expose",
                                value=len(view.table.skipped))
        servers = sum(len(b.servers) for b in view.table.backends)
        yield GaugeMetricFamily("pylb_server_series_exported",
                                "1 when per-server series are exported, 0 when the table "
                                "has more servers than the limit",
                                value=1.0 if servers <= self.server_series_limit else 0.0)

        failures = CounterMetricFamily("pylb_failures", "Failed requests and connections "
                                       "by reason", labels=["reason"])
        # One sample a label: a reason this version does not know (a worker of another
        # version reported it) may lower-case to a known label, or to another's.
        by_label = {f.label: 0.0 for f in Failure}
        for name, n in sorted(view.counters.get("failures", {}).items()):
            label = _l(_failure_label(name))
            by_label[label] = by_label.get(label, 0.0) + _f(n)
        for label, n in by_label.items():
            failures.add_metric([label], n)
        yield failures

        yield GaugeMetricFamily("pylb_discovery_synced",
                                "1 once discovery has listed the cluster",
                                value=1.0 if view.discovery_synced else 0.0)
        if view.discovery_last_sync:
            yield GaugeMetricFamily("pylb_discovery_last_sync_time_seconds",
                                    "Time of the last successful sync (Unix seconds)",
                                    value=view.discovery_last_sync)
        dm = GaugeMetricFamily("pylb_discovery_metric", "Discovery's own counters",
                               labels=["name"])
        for k, v in sorted(view.discovery_metrics.items()):
            dm.add_metric([_l(k)], _f(v))
        yield dm

        info_leader = view.leader_info
        if info_leader is not None:
            leader = GaugeMetricFamily("pylb_election_leader",
                                       "1 for the current leader's identity",
                                       labels=["name"])
            if info_leader.name:
                leader.add_metric([_l(info_leader.name)], 1.0)
            yield leader
            yield GaugeMetricFamily("pylb_election_is_leader", "1 when this pod leads",
                                    value=1.0 if info_leader.is_self else 0.0)
            yield CounterMetricFamily("pylb_election_transitions",
                                      "Leadership changes observed",
                                      value=info_leader.transitions)

        certs = GaugeMetricFamily("pylb_certificate_expiry_days",
                                  "Days until the certificate expires", labels=["name"])
        certs_t = GaugeMetricFamily("pylb_certificate_not_after_seconds",
                                    "Expiry time of the certificate (Unix seconds)",
                                    labels=["name"])
        # One series a name: of two certificates for one name (RSA and ECDSA, or one
        # being replaced), the one that expires first is the one to alert on.
        first: dict[str, CertInfo] = {}
        for c in view.certs:
            name = _l(c.name)
            if name not in first or c.not_after < first[name].not_after:
                first[name] = c
        for name, c in first.items():
            certs.add_metric([name], c.days_left)
            certs_t.add_metric([name], c.not_after)
        yield certs
        yield certs_t


def row_families(view: StatsView, server_series_limit: int = SERVER_SERIES_LIMIT) -> str:
    """The per-row families of `view` as exposition text (see the module docstring)."""
    return "".join(row_family_texts(view, server_series_limit))


def row_family_texts(view: StatsView,
                     server_series_limit: int = SERVER_SERIES_LIMIT) -> list[str]:
    """`row_families`, one text per family."""
    servers = sum(len(b.servers) for b in view.table.backends)
    per_server = servers <= server_series_limit
    fe = _Families("pylb_frontend", "frontend")
    be = _Families("pylb_backend", "backend")
    sv = _Families("pylb_server", "server")
    fe_errors = _Text("pylb_frontend_request_errors", "Bad or failed client requests", True)
    fe_denied = _Text("pylb_frontend_denied_requests", "Denied requests", True)
    limit = _Text("pylb_frontend_limit_sessions", "Session limit (maxconn x workers)")
    fe_dcon = _Text("pylb_frontend_denied_connections",
                    "TCP connections reset by a per-client rate limit", True)
    # The queue (per-server maxconn) and the rate limits: haproxy's qcur, qmax, qtime,
    # dreq. Server series only for backends with a per-server limit.
    be_qcur = _Text("pylb_backend_queue_current", "Requests waiting for any server")
    be_qmax = _Text("pylb_backend_queue_max", "Most requests waiting at once")
    be_qtime = _Text("pylb_backend_queue_time_average_seconds",
                     "Mean time in the queue per request (0 for those that did not wait)")
    be_denied = _Text("pylb_backend_denied_requests",
                      "Requests (HTTP: 429) denied by a per-client rate limit", True)
    sv_qcur = _Text("pylb_server_queue_current",
                    "Requests waiting for this server (affinity) when it is full")
    sv_limit = _Text("pylb_server_limit_sessions", "Per-server limit (lb.maxconn)")
    sv_qtime = _Text("pylb_server_queue_time_average_seconds",
                     "Mean time in the queue per request sent to the server")
    be_up = _Text("pylb_backend_up", "1 when a server can take work")
    be_active = _Text("pylb_backend_active_servers", "Usable servers")
    by_state = _Text("pylb_backend_servers", "Servers of the backend by status")
    be_conn = _Text("pylb_backend_connection_errors", "Failed connections to servers", True)
    be_resp = _Text("pylb_backend_response_errors", "Failed or bad server responses", True)
    retries = _Text("pylb_backend_retries", "Connection retries", True)
    redispatches = _Text("pylb_backend_redispatches", "Retries sent to another server", True)
    sv_up = _Text("pylb_server_up", "1 when the server takes new work")
    sv_status = _Text("pylb_server_status", "1 for the server's current status")
    sv_weight = _Text("pylb_server_weight", "Server weight")
    sv_conn = _Text("pylb_server_connection_errors", "Failed connections to the server", True)
    sv_resp = _Text("pylb_server_response_errors", "Failed or bad responses of the server",
                    True)
    chk_dur = _Text("pylb_server_check_duration_seconds", "Duration of the last health check")
    chk_fail = _Text("pylb_server_check_failures", "Failed health checks", True)
    chk_down = _Text("pylb_server_check_down_transitions", "UP to DOWN transitions", True)
    downtime = _Text("pylb_server_downtime_seconds", "Total time spent DOWN", True)
    states: dict[str, int] = {}
    px_name, px_labels = "", ""
    for row in iter_rows(view):
        t = row.get("type")
        px = str(row.get("pxname"))
        if px != px_name:
            px_name, px_labels = px, _esc(px)
        if t == TYPE_FRONTEND:
            labels = f'{{frontend="{px_labels}"}}'
            fe.add(row, labels)
            fe_errors.add(labels, row.get("ereq"))
            fe_denied.add(labels, row.get("dreq"))
            fe_dcon.add(labels, row.get("dcon"))
            if row.get("slim"):
                limit.add(labels, row.get("slim"))
        elif t == TYPE_BACKEND:
            labels = f'{{backend="{px_labels}"}}'
            for state, count in sorted(states.items()):
                by_state.add(f'{{backend="{px_labels}",state="{state}"}}', count)
            states.clear()
            be.add(row, labels)
            be_up.add(labels, 1.0 if row.get("status") == "UP" else 0.0)
            be_active.add(labels, row.get("act"))
            be_conn.add(labels, row.get("econ"))
            be_resp.add(labels, row.get("eresp"))
            retries.add(labels, row.get("wretr"))
            redispatches.add(labels, row.get("wredis"))
            be_qcur.add(labels, row.get("qcur"))
            be_qmax.add(labels, row.get("qmax"))
            be_qtime.add(labels, _f(row.get("qtime") or 0) / 1000.0)
            be_denied.add(labels, row.get("dreq"))
        else:
            status = str(row.get("status") or "")
            state = (status.split(" ")[0] if status != "no check" else "no_check").lower()
            states[state] = states.get(state, 0) + 1
            if not per_server:
                continue
            stem = f'backend="{px_labels}",server="{_esc(str(row.get("svname")))}"'
            labels = "{" + stem + "}"
            sv.add(row, labels)
            sv_up.add(labels, 1.0 if status.startswith("UP") or status == "no check"
                      else 0.0)
            sv_status.add(f'{{{stem},state="{_esc(state)}"}}', 1.0)
            sv_weight.add(labels, row.get("weight"))
            sv_conn.add(labels, row.get("econ"))
            sv_resp.add(labels, row.get("eresp"))
            if row.get("slim"):
                sv_limit.add(labels, row.get("slim"))
                sv_qcur.add(labels, row.get("qcur"))
                sv_qtime.add(labels, _f(row.get("qtime") or 0) / 1000.0)
            if row.get("check_duration") is not None:
                chk_dur.add(labels, _f(row["check_duration"]) / 1000.0)
            if row.get("check_status") is not None:
                chk_fail.add(labels, row.get("chkfail"))
                chk_down.add(labels, row.get("chkdown"))
                downtime.add(labels, row.get("downtime"))
    families = [*fe.families(), fe_errors, fe_denied, fe_dcon, limit, *be.families(), be_up,
                be_active, by_state, be_conn, be_resp, retries, redispatches, be_qcur,
                be_qmax, be_qtime, be_denied, *sv.families(), sv_up, sv_status, sv_weight,
                sv_conn, sv_resp, sv_limit, sv_qcur, sv_qtime, chk_dur, chk_fail,
                chk_down, downtime]
    return [f.text() for f in families]


class Exposition:
    """A private registry with one StatsCollector; `render()` is the /metrics body.

    `render_view(view)` renders a view built by the caller and may run in a worker
    thread (prometheus-client's text writer costs some tens of microseconds a sample:
    a table of thousands of servers takes long enough to stall an event loop)."""

    def __init__(self, view_fn: Callable[[], StatsView],
                 server_series_limit: int = SERVER_SERIES_LIMIT) -> None:
        self._view_fn = view_fn
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = StatsCollector(view_fn, server_series_limit)
        self.registry.register(self._collector)
        self._lock = threading.Lock()

    def render(self) -> bytes:
        return self.render_view(self._view_fn())

    def render_view(self, view: StatsView) -> bytes:
        return b"".join(self.render_parts(view))

    def render_parts(self, view: StatsView) -> list[bytes]:
        """The /metrics body in pieces, one per family of rows (see http.Reply.parts)."""
        with self._lock:
            self._collector.pinned = view
            try:
                head = bytes(generate_latest(self.registry))
            finally:
                self._collector.pinned = None
        limit = self._collector.server_series_limit
        return [head, *(t.encode("utf-8") for t in row_family_texts(view, limit))]
