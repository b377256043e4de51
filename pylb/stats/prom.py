"""Prometheus exposition: a custom collector that reads a fresh `StatsView` per scrape.

The data plane never calls prometheus-client: its counters are plain integers merged by
the controller, and this collector turns the view into metric families only when
/metrics is scraped. Each StatsServer has its own CollectorRegistry, so two servers in
one process (tests) never collide and the library's process-global registry stays clean.
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


class _Families:
    """The families of one kind of row (frontend, backend or server)."""

    def __init__(self, prefix: str, what: str, labels: list[str]) -> None:
        self.labels = labels
        self.current = GaugeMetricFamily(
            f"{prefix}_current_sessions", f"Current sessions of the {what}", labels=labels)
        self.max = GaugeMetricFamily(
            f"{prefix}_max_sessions", f"Most sessions at once on the {what}", labels=labels)
        self.total = CounterMetricFamily(
            f"{prefix}_sessions", f"Sessions of the {what}", labels=labels)
        self.bytes_in = CounterMetricFamily(
            f"{prefix}_bytes_in", f"Bytes received by the {what}", labels=labels)
        self.bytes_out = CounterMetricFamily(
            f"{prefix}_bytes_out", f"Bytes sent by the {what}", labels=labels)
        self.responses = CounterMetricFamily(
            f"{prefix}_http_responses", f"HTTP responses of the {what} by status class",
            labels=[*labels, "code"])
        self.requests = CounterMetricFamily(
            f"{prefix}_http_requests", f"HTTP requests of the {what}", labels=labels)
        self.rate_max = GaugeMetricFamily(
            f"{prefix}_max_session_rate", f"Most new sessions in one second on the {what}",
            labels=labels)

    def add(self, row: Row, values: list[str]) -> None:
        self.current.add_metric(values, _f(row.get("scur")))
        self.max.add_metric(values, _f(row.get("smax")))
        self.total.add_metric(values, _f(row.get("stot")))
        self.bytes_in.add_metric(values, _f(row.get("bin")))
        self.bytes_out.add_metric(values, _f(row.get("bout")))
        self.rate_max.add_metric(values, _f(row.get("rate_max")))
        if row.get("req_tot") is not None:
            self.requests.add_metric(values, _f(row.get("req_tot")))
            for cls in _CLASSES:
                self.responses.add_metric([*values, cls], _f(row.get(f"hrsp_{cls}")))

    def families(self) -> list[Metric]:
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
        view = self.pinned if self.pinned is not None else self._view_fn()
        rows = iter_rows(view)
        servers = sum(len(b.servers) for b in view.table.backends)
        per_server = servers <= self.server_series_limit

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

        fe = _Families("pylb_frontend", "frontend", ["frontend"])
        be = _Families("pylb_backend", "backend", ["backend"])
        sv = _Families("pylb_server", "server", ["backend", "server"])
        fe_errors = CounterMetricFamily("pylb_frontend_request_errors",
                                        "Bad or failed client requests", labels=["frontend"])
        fe_denied = CounterMetricFamily("pylb_frontend_denied_requests", "Denied requests",
                                        labels=["frontend"])
        limit = GaugeMetricFamily("pylb_frontend_limit_sessions",
                                  "Session limit (maxconn x workers)", labels=["frontend"])
        be_up = GaugeMetricFamily("pylb_backend_up", "1 when a server can take work",
                                  labels=["backend"])
        be_active = GaugeMetricFamily("pylb_backend_active_servers", "Usable servers",
                                      labels=["backend"])
        sv_up = GaugeMetricFamily("pylb_server_up", "1 when the server takes new work",
                                  labels=["backend", "server"])
        sv_status = GaugeMetricFamily(
            "pylb_server_status", "1 for the server's current status",
            labels=["backend", "server", "state"])
        sv_weight = GaugeMetricFamily("pylb_server_weight", "Server weight",
                                      labels=["backend", "server"])
        errs = {
            k: CounterMetricFamily(f"pylb_{kind}_{k}_errors", text, labels=lbls)
            for kind, lbls in (("backend", ["backend"]),)
            for k, text in (("connection", "Failed connections to servers"),
                            ("response", "Failed or bad server responses"))
        }
        sv_errs = {
            k: CounterMetricFamily(f"pylb_server_{k}_errors", text,
                                   labels=["backend", "server"])
            for k, text in (("connection", "Failed connections to the server"),
                            ("response", "Failed or bad responses of the server"))
        }
        retries = CounterMetricFamily("pylb_backend_retries", "Connection retries",
                                      labels=["backend"])
        redispatches = CounterMetricFamily("pylb_backend_redispatches",
                                           "Retries sent to another server",
                                           labels=["backend"])
        chk_dur = GaugeMetricFamily("pylb_server_check_duration_seconds",
                                    "Duration of the last health check",
                                    labels=["backend", "server"])
        chk_fail = CounterMetricFamily("pylb_server_check_failures",
                                       "Failed health checks", labels=["backend", "server"])
        chk_down = CounterMetricFamily("pylb_server_check_down_transitions",
                                       "UP to DOWN transitions", labels=["backend", "server"])
        downtime = CounterMetricFamily("pylb_server_downtime_seconds",
                                       "Total time spent DOWN", labels=["backend", "server"])
        by_state = GaugeMetricFamily("pylb_backend_servers", "Servers of the backend by "
                                     "status", labels=["backend", "state"])
        states: dict[str, int] = {}

        for row in rows:
            t = row.get("type")
            px = _l(str(row.get("pxname")))
            if t == TYPE_FRONTEND:
                fe.add(row, [px])
                fe_errors.add_metric([px], _f(row.get("ereq")))
                fe_denied.add_metric([px], _f(row.get("dreq")))
                if row.get("slim"):
                    limit.add_metric([px], _f(row.get("slim")))
            elif t == TYPE_BACKEND:
                for state, count in sorted(states.items()):
                    by_state.add_metric([px, state], float(count))
                states.clear()
                be.add(row, [px])
                be_up.add_metric([px], 1.0 if row.get("status") == "UP" else 0.0)
                be_active.add_metric([px], _f(row.get("act")))
                errs["connection"].add_metric([px], _f(row.get("econ")))
                errs["response"].add_metric([px], _f(row.get("eresp")))
                retries.add_metric([px], _f(row.get("wretr")))
                redispatches.add_metric([px], _f(row.get("wredis")))
            else:
                status = str(row.get("status") or "")
                state = status.split(" ")[0] if status != "no check" else "no_check"
                state = state.lower()
                states[state] = states.get(state, 0) + 1
                if not per_server:
                    continue
                labels = [px, _l(str(row.get("svname")))]
                sv.add(row, labels)
                sv_up.add_metric(labels, 1.0 if status.startswith("UP")
                                 or status == "no check" else 0.0)
                sv_status.add_metric([*labels, state], 1.0)
                sv_weight.add_metric(labels, _f(row.get("weight")))
                sv_errs["connection"].add_metric(labels, _f(row.get("econ")))
                sv_errs["response"].add_metric(labels, _f(row.get("eresp")))
                if row.get("check_duration") is not None:
                    chk_dur.add_metric(labels, _f(row["check_duration"]) / 1000.0)
                if row.get("check_status") is not None:
                    chk_fail.add_metric(labels, _f(row.get("chkfail")))
                    chk_down.add_metric(labels, _f(row.get("chkdown")))
                    downtime.add_metric(labels, _f(row.get("downtime")))

        yield from fe.families()
        yield from (fe_errors, fe_denied, limit)
        yield from be.families()
        yield from (be_up, be_active, by_state, errs["connection"], errs["response"],
                    retries, redispatches)
        yield GaugeMetricFamily("pylb_server_series_exported",
                                "1 when per-server series are exported, 0 when the table "
                                "has more servers than the limit",
                                value=1.0 if per_server else 0.0)
        yield from sv.families()
        yield from (sv_up, sv_status, sv_weight, sv_errs["connection"],
                    sv_errs["response"], chk_dur, chk_fail, chk_down, downtime)

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


class Exposition:
    """A private registry with one StatsCollector; `render()` is the /metrics body.

    `render_view(view)` renders a view built by the caller and may run in a worker
    thread (prometheus-client's text writer costs some tens of microseconds a sample:
    a table of thousands of servers takes long enough to stall an event loop)."""

    def __init__(self, view_fn: Callable[[], StatsView],
                 server_series_limit: int = SERVER_SERIES_LIMIT) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = StatsCollector(view_fn, server_series_limit)
        self.registry.register(self._collector)
        self._lock = threading.Lock()

    def render(self) -> bytes:
        with self._lock:
            return bytes(generate_latest(self.registry))

    def render_view(self, view: StatsView) -> bytes:
        with self._lock:
            self._collector.pinned = view
            try:
                return bytes(generate_latest(self.registry))
            finally:
                self._collector.pinned = None
