"""The stats page's Queue and Denied columns, and their /metrics series, as haproxy fills
them: qcur/qmax on the backend (requests waiting for any server) and on servers (waiting
for that server), qlimit, qtime (mean ms in the queue per request), slim (the per-server
limit), dreq (HTTP 429s) and dcon (TCP resets) — from two workers' counters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pylb.counters import Stats, merge_snapshots
from pylb.model import Backend, HttpRoute, RouteTable, Server, TcpFrontend
from pylb.stats import StatsView, render_csv, render_html
from pylb.stats.prom import Exposition
from tests.pylb.test_stats_render import csv_rows

NOW = 1_800_000_000.0
APP = Backend("default/app:80", (Server("10.0.0.1", 80, name="app-1"),
                                 Server("10.0.0.2", 80, name="app-2")), maxconn=10)
OPEN = Backend("default/open:80", (Server("10.0.0.3", 80, name="open-1"),))
DB = Backend("default/db:3306", (Server("10.0.1.1", 3306, name="db-0"),),
             rate_limit=(1.0, 2))
TABLE = RouteTable(http=(HttpRoute("app", "/app", APP.name), HttpRoute("o", "/o", OPEN.name)),
                   tcp=(TcpFrontend("db", 3306, DB.name),), backends=(APP, OPEN, DB))


def worker(queued_any: int, queued_app1: int, peak: int) -> Stats:
    st = Stats()
    be = st.backend(APP.name)
    s1 = st.server(APP.name, "app-1")
    be.queue_cur, be.queue_max = queued_any, peak
    s1.queue_cur, s1.queue_max = queued_app1, queued_app1
    be.lbtot, be.queued, be.queue_time = 100, 40, 5.0  # 5 s over 100 requests: 50 ms
    s1.lbtot, s1.queued, s1.queue_time = 50, 20, 2.5
    be.denied_req = 3
    st.frontend("http").denied_req = 3
    st.frontend("db").denied_conn = 2
    st.backend(DB.name).denied_conn = 2
    return st


def view() -> StatsView:
    counters = merge_snapshots([worker(7, 1, 9).snapshot(), worker(5, 2, 12).snapshot()])
    return StatsView(version="t", pid=1, started=NOW - 10, now=NOW, table=TABLE,
                     counters=counters, workers=2, maxconn=100, queue_limit=50)


def test_csv_queue_and_denied_columns() -> None:
    rows = csv_rows(render_csv(view()))
    be = rows[(APP.name, "BACKEND")]
    assert (be["qcur"], be["qmax"], be["qlimit"], be["qtime"]) == ("12", "12", "100", "50")
    assert be["dreq"] == "6"
    s1 = rows[(APP.name, "app-1")]
    assert (s1["qcur"], s1["qmax"], s1["qlimit"], s1["qtime"], s1["slim"]) == \
        ("3", "2", "100", "50", "10")
    s2 = rows[(APP.name, "app-2")]
    assert (s2["qcur"], s2["qmax"], s2["qtime"], s2["slim"]) == ("0", "0", "0", "10")
    # No per-server limit: no queue, so no limit, as haproxy leaves the cells empty.
    o = rows[(OPEN.name, "open-1")]
    assert (o["qlimit"], o["slim"]) == ("", "")
    assert rows[("http", "FRONTEND")]["dreq"] == "6"
    assert rows[("db", "FRONTEND")]["dcon"] == "4"
    assert rows[("http", "FRONTEND")]["qcur"] == ""  # a frontend has no queue


def test_html_shows_the_queue() -> None:
    html = render_html(view())
    assert "Queue" in html and ">12<" in html


def test_metrics_queue_and_denied_series() -> None:
    text = Exposition(view).render().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    app = (("backend", APP.name),)
    assert samples[("pylb_backend_queue_current", app)] == 12
    assert samples[("pylb_backend_queue_max", app)] == 12
    assert samples[("pylb_backend_queue_time_average_seconds", app)] == 0.05
    assert samples[("pylb_backend_denied_requests_total", app)] == 6
    s1 = (("backend", APP.name), ("server", "app-1"))
    assert samples[("pylb_server_queue_current", s1)] == 3
    assert samples[("pylb_server_limit_sessions", s1)] == 10
    assert ("pylb_server_queue_current", (("backend", OPEN.name), ("server", "open-1"))) \
        not in samples  # no limit, no queue series
    assert samples[("pylb_frontend_denied_connections_total", (("frontend", "db"),))] == 4
