"""A known view for the stats tests: a route table, counters from a known load, checks."""

from __future__ import annotations

from proxy.check import L4CON, L4OK, L7OK, L7STS, Probe, advance, initial
from pylb.config import CheckSettings
from pylb.counters import Stats, merge_snapshots
from pylb.failures import Failure
from pylb.model import Affinity, Backend, HttpRoute, RouteTable, Server, TcpFrontend
from pylb.stats import CertInfo, LeaderInfo, StatsView

NOW = 1_800_000_000.0
EVIL = '<script>alert("x")</script>,"q'

WEB = Backend("default/web:80", (
    Server("10.0.0.1", 8080, name="web-1"),
    Server("10.0.0.2", 8080, name="web-2"),
    Server("10.0.0.3", 8080, name="web-3", terminating=True, ready=False),
    Server("10.0.0.4", 8080, name="web-4", ready=False, serving=False),
), affinity=Affinity.COOKIE, check_path="/healthz")
DB = Backend("default/mysql:3306", (Server("10.0.1.1", 3306, name="mysql-0"),
                                    Server("10.0.1.2", 3306, name="mysql-1")))
BAD = Backend(f"default/{EVIL}:80", (Server("10.0.2.1", 80, name=EVIL),))
EMPTY = Backend("default/empty:80")

TABLE = RouteTable(
    http=(HttpRoute("web", "/web", WEB.name), HttpRoute("bad", "/bad", BAD.name),
          HttpRoute("empty", "/empty", EMPTY.name)),
    tcp=(TcpFrontend("mysql", 3306, DB.name),),
    backends=(WEB, DB, BAD, EMPTY),
    version=7,
)

# The known load: 10 requests through `http` to web-1 (8 of 200, 2 of 503), 1000 bytes in,
# 5000 out, 3 bad requests, 1 connect failure and a retry on web-2; 4 TCP connections
# on mysql (2 still open), 400 bytes each way.
N_REQ, BYTES_IN, BYTES_OUT, N_BAD = 10, 1000, 5000, 3


def known_stats() -> Stats:
    st = Stats()
    fe = st.frontend("http")
    be = st.backend(WEB.name)
    sv = st.server(WEB.name, "web-1")
    for i in range(N_REQ):
        t = NOW - 30 + i
        fe.open(t)
        be.open(t)
        sv.open(t)
        be.lbtot += 1
        sv.lbtot += 1
        fe.req_total += 1
        be.req_total += 1
        sv.req_total += 1
        status = 200 if i < 8 else 503
        for c in (fe, be, sv):
            c.response(status)
            c.close()
    fe.bytes_in, fe.bytes_out = BYTES_IN, BYTES_OUT
    be.bytes_in = sv.bytes_in = BYTES_IN
    be.bytes_out = sv.bytes_out = BYTES_OUT
    fe.req_errors += N_BAD
    for _ in range(N_BAD):
        st.fail(Failure.BAD_REQUEST)
    s2 = st.server(WEB.name, "web-2")
    s2.conn_errors += 1
    be.conn_errors += 1
    be.retries += 1
    s2.retries += 1
    st.fail(Failure.CONNECT_FAILED)
    tfe = st.frontend("mysql")
    tbe = st.backend(DB.name)
    tsv = st.server(DB.name, "mysql-0")
    for i in range(4):
        for c in (tfe, tbe, tsv):
            c.open(NOW - 5 + i)
    for c in (tfe, tbe, tsv):
        c.close()
        c.close()
        c.bytes_in = c.bytes_out = 1600
    tbe.lbtot = tsv.lbtot = 4
    return st


def known_checks() -> dict[tuple[str, int], object]:
    p = CheckSettings(rise=2, fall=3)
    up = advance(initial(p, NOW - 100, http=True), Probe(L7OK, 200, 1.4), NOW - 2)
    going_down = advance(advance(initial(p, NOW - 100, http=True), Probe(L7OK, 200, 1.0),
                                 NOW - 10), Probe(L7STS, 500, 2.0, "HTTP status 500"), NOW - 1)
    down = advance(initial(p, NOW - 100), Probe(L4CON, None, 0.2, "Connection refused"),
                   NOW - 60)
    going_up = advance(down, Probe(L4OK, None, 0.3), NOW - 1)
    return {
        ("10.0.0.1", 8080): up,
        ("10.0.0.2", 8080): going_down,
        ("10.0.1.1", 3306): going_up,
        ("10.0.1.2", 3306): advance(initial(p, NOW - 50), Probe(L4OK, None, 0.1), NOW - 3),
    }


def known_view(**kw: object) -> StatsView:
    base: dict[str, object] = dict(
        version="0.1.0", pid=4242, started=NOW - 3725, now=NOW, table=TABLE,
        counters=merge_snapshots([known_stats().snapshot()]),
        checks=known_checks(), workers=2, worker_restarts=1,
        leader=LeaderInfo("lb-node-1", since=NOW - 600, transitions=2, is_self=True),
        discovery_synced=True, discovery_last_sync=NOW - 4,
        discovery_metrics={"watch_restarts": 3, "events": 120},
        certificates=(CertInfo("example.com", NOW + 20 * 86400, 20.0),),
        table_version=7, table_age=12.0, maxconn=20000,
    )
    base.update(kw)
    return StatsView(**base)  # type: ignore[arg-type]
