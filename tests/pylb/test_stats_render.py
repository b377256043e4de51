"""The stats page's renderings as pure functions over a known view: CSV columns after a
known load, escaping, `;up`, JSON, HTML, Prometheus text, and the small decision tables."""

from __future__ import annotations

import csv
import io
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.check import L4CON, L4OK, Probe, advance, initial
from pylb.config import CheckSettings
from pylb.model import Server
from pylb.stats import CSV_FIELDS, StatsView, render_csv, render_html, render_json
from pylb.stats.http import BasicAuth, StatsQuery, parse_stats_uri
from pylb.stats.page import human_duration
from pylb.stats.prom import Exposition
from pylb.stats.view import hidden_by_up, server_status, status_class
from tests.pylb.stats_fixtures import (
    BAD,
    BYTES_IN,
    BYTES_OUT,
    DB,
    EMPTY,
    EVIL,
    N_BAD,
    N_REQ,
    NOW,
    WEB,
    known_view,
)


def csv_rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    header = lines[0][2:].split(",")
    assert header[-1] == ""
    out = {}
    for rec in csv.reader(io.StringIO("\n".join(lines[1:]) + "\n")):
        assert len(rec) == len(header)
        assert rec[-1] == ""
        row = dict(zip(header[:-1], rec[:-1], strict=True))
        out[(row["pxname"], row["svname"])] = row
    return out


def test_csv_header_is_haproxys_field_list() -> None:
    text = render_csv(known_view())
    assert text.splitlines()[0] == "# " + ",".join(CSV_FIELDS) + ","
    assert len(CSV_FIELDS) == len(set(CSV_FIELDS)) == 128
    assert CSV_FIELDS[:18] == ("pxname", "svname", "qcur", "qmax", "scur", "smax", "slim",
                               "stot", "bin", "bout", "dreq", "dresp", "ereq", "econ",
                               "eresp", "wretr", "wredis", "status")
    assert all(line.endswith(",") for line in text.splitlines())


def test_csv_counters_land_in_their_columns_after_a_known_load() -> None:
    rows = csv_rows(render_csv(known_view()))
    fe = rows[("http", "FRONTEND")]
    assert {k: fe[k] for k in ("stot", "bin", "bout", "ereq", "req_tot", "hrsp_2xx",
                               "hrsp_5xx", "hrsp_4xx", "status", "type", "slim", "scur",
                               "smax", "mode", "econ", "lbtot")} == {
        "stot": str(N_REQ), "bin": str(BYTES_IN), "bout": str(BYTES_OUT),
        "ereq": str(N_BAD), "req_tot": str(N_REQ), "hrsp_2xx": "8", "hrsp_5xx": "2",
        "hrsp_4xx": "0", "status": "OPEN", "type": "0", "slim": "40000", "scur": "0",
        "smax": "1", "mode": "http", "econ": "", "lbtot": ""}
    s1 = rows[(WEB.name, "web-1")]
    assert {k: s1[k] for k in ("stot", "lbtot", "bin", "bout", "status", "type",
                               "check_status", "check_code", "check_duration", "addr",
                               "weight", "act", "bck", "lastsess", "chkfail",
                               "check_desc")} == {
        "stot": "10", "lbtot": "10", "bin": "1000", "bout": "5000", "status": "UP",
        "type": "2", "check_status": "L7OK", "check_code": "200", "check_duration": "1",
        "addr": "10.0.0.1:8080", "weight": "1", "act": "1", "bck": "0", "lastsess": "21",
        "chkfail": "0", "check_desc": "Layer7 check passed"}
    s2 = rows[(WEB.name, "web-2")]
    assert (s2["econ"], s2["wretr"], s2["status"], s2["chkfail"], s2["check_status"],
            s2["check_code"], s2["lastsess"]) == ("1", "1", "UP 2/3", "1", "L7STS", "500",
                                                  "-1")
    assert rows[(WEB.name, "web-3")]["status"] == "DRAIN"
    assert rows[(WEB.name, "web-4")]["status"] == "MAINT"
    be = rows[(WEB.name, "BACKEND")]
    assert (be["stot"], be["lbtot"], be["econ"], be["wretr"], be["status"], be["act"],
            be["weight"], be["type"], be["algo"], be["cookie"], be["hrsp_5xx"]) == (
        "10", "10", "1", "1", "UP", "2", "2", "1", "roundrobin", "SERVERID", "2")
    m0 = rows[(DB.name, "mysql-0")]
    assert (m0["scur"], m0["smax"], m0["stot"], m0["bin"], m0["status"], m0["chkdown"],
            m0["downtime"], m0["mode"], m0["hrsp_2xx"]) == (
        "2", "4", "4", "1600", "DOWN 1/2", "1", "60", "tcp", "")
    assert rows[("mysql", "FRONTEND")]["mode"] == "tcp"
    assert rows[(EMPTY.name, "BACKEND")]["status"] == "DOWN"
    assert rows[(EMPTY.name, "BACKEND")]["act"] == "0"


def test_csv_quotes_hostile_names() -> None:
    rows = csv_rows(render_csv(known_view()))
    assert (BAD.name, EVIL) in rows
    assert rows[(BAD.name, EVIL)]["addr"] == "10.0.2.1:80"


def test_csv_row_order_is_frontends_then_servers_then_backend() -> None:
    order = [(r[0], r[1]) for r in csv.reader(io.StringIO(render_csv(known_view())))][1:]
    assert order[:2] == [("http", "FRONTEND"), ("mysql", "FRONTEND")]
    web = [sv for px, sv in order if px == WEB.name]
    assert web == ["web-1", "web-2", "web-3", "web-4", "BACKEND"]


def test_up_option_hides_down_and_maint_servers() -> None:
    rows = csv_rows(render_csv(known_view(), up_only=True))
    assert (WEB.name, "web-4") not in rows  # MAINT
    assert (DB.name, "mysql-0") not in rows  # DOWN 1/2
    assert {(WEB.name, "web-1"), (WEB.name, "web-2"), (WEB.name, "web-3"),
            (DB.name, "mysql-1"), (DB.name, "BACKEND")} <= set(rows)
    assert rows[(DB.name, "BACKEND")]["stot"] == "4"  # the backend keeps its totals


def test_json_has_the_same_rows_and_process_facts() -> None:
    doc = json.loads(render_json(known_view()))
    assert doc["pylb"]["pid"] == 4242 and doc["pylb"]["workers"] == 2
    assert doc["pylb"]["current_connections"] == 2
    assert doc["leader"]["name"] == "lb-node-1"
    assert doc["discovery"]["synced"] is True
    assert doc["failures"] == {"BAD_REQUEST": N_BAD, "CONNECT_FAILED": 1}
    assert doc["certificates"][0]["days_left"] == 20.0
    by = {(r["pxname"], r["svname"]): r for r in doc["stats"]}
    assert by[("http", "FRONTEND")]["bin"] == BYTES_IN
    assert by[(WEB.name, "web-2")]["status"] == "UP 2/3"
    assert "qlimit" not in by[(WEB.name, "web-2")]
    assert (BAD.name, EVIL) in by


def test_html_escapes_every_name_and_shows_the_load() -> None:
    page = render_html(known_view(), refresh=10)
    assert "<script>" not in page and "alert(&quot;x&quot;)" in page
    assert "&lt;script&gt;" in page
    assert '<meta http-equiv="refresh" content="10">' in page
    assert "lb-node-1" in page and "synced" in page and "example.com" in page
    assert '<tr class="going-down">' in page and '<tr class="going-up">' in page
    assert '<tr class="drain">' in page and '<tr class="maint">' in page
    assert '<tr class="up">' in page and "L7STS/500 in 2ms" in page
    assert "1,000" in page and "5,000" in page
    assert "no servers" in page
    assert 'href="/;csv"' in page and 'href="/metrics"' in page


def test_html_norefresh_and_up() -> None:
    page = render_html(known_view(), up_only=True, refresh=0)
    assert "http-equiv" not in page
    assert "mysql-0" not in page and "web-4" not in page and "web-3" in page
    assert 'href="/;norefresh">Show all servers' in page
    assert 'href="/;up">Enable refresh' in page


def test_html_without_leader_or_sync() -> None:
    page = render_html(known_view(leader=None, discovery_synced=False,
                                  certificates=(), table_age=None))
    assert "no election" in page and "not synced" in page and "not applied yet" in page


def test_empty_view_renders_everywhere() -> None:
    v = StatsView(version="x", pid=1, started=NOW, now=NOW)
    assert "Frontend" in render_html(v)
    assert csv_rows(render_csv(v)).keys() == {("http", "FRONTEND")}
    assert json.loads(render_json(v))["stats"][0]["status"] == "OPEN"
    Exposition(lambda: v).render()


def test_prometheus_text_parses_with_the_known_load() -> None:
    text = Exposition(known_view).render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in fams.values() for s in f.samples}
    assert samples[("pylb_frontend_sessions_total", (("frontend", "http"),))] == N_REQ
    assert samples[("pylb_frontend_bytes_in_total", (("frontend", "http"),))] == BYTES_IN
    assert samples[("pylb_frontend_http_responses_total",
                    (("code", "5xx"), ("frontend", "http")))] == 2
    assert samples[("pylb_frontend_request_errors_total", (("frontend", "http"),))] == N_BAD
    assert samples[("pylb_failures_total", (("reason", "bad_request"),))] == N_BAD
    assert samples[("pylb_failures_total", (("reason", "no_route"),))] == 0
    sv = (("backend", WEB.name), ("server", "web-1"))
    assert samples[("pylb_server_up", sv)] == 1
    assert samples[("pylb_server_check_duration_seconds", sv)] == pytest.approx(0.001)
    assert samples[("pylb_server_up", (("backend", DB.name), ("server", "mysql-0")))] == 0
    assert samples[("pylb_server_status", (*sv[:1], ("server", "web-1"),
                                           ("state", "up")))] == 1
    assert samples[("pylb_backend_connection_errors_total", (("backend", WEB.name),))] == 1
    assert samples[("pylb_backend_up", (("backend", EMPTY.name),))] == 0
    assert samples[("pylb_certificate_expiry_days", (("name", "example.com"),))] == 20
    assert samples[("pylb_election_is_leader", ())] == 1
    assert samples[("pylb_election_leader", (("name", "lb-node-1"),))] == 1
    assert samples[("pylb_discovery_synced", ())] == 1
    assert samples[("pylb_discovery_metric", (("name", "watch_restarts"),))] == 3
    assert samples[("pylb_workers", ())] == 2
    assert samples[("pylb_route_table_version", ())] == 7
    evil = (("backend", BAD.name), ("server", EVIL))
    assert samples[("pylb_server_up", evil)] == 1


# -- decision tables ------------------------------------------------------------------

P = CheckSettings(rise=2, fall=3)
UP = advance(initial(P, 0), Probe(L4OK), 1)
DOWN = advance(initial(P, 0), Probe(L4CON), 1)


@pytest.mark.parametrize(("server", "check", "status", "klass", "hidden"), [
    (Server("a", 1), None, "no check", "no-check", False),
    (Server("a", 1), UP, "UP", "up", False),
    (Server("a", 1), advance(UP, Probe(L4CON), 2), "UP 2/3", "going-down", False),
    (Server("a", 1), DOWN, "DOWN", "down", True),
    (Server("a", 1), advance(DOWN, Probe(L4OK), 2), "DOWN 1/2", "going-up", True),
    (Server("a", 1, terminating=True), UP, "DRAIN", "drain", False),
    (Server("a", 1, terminating=True, ready=False), DOWN, "DRAIN", "drain", False),
    (Server("a", 1, weight=0), UP, "DRAIN", "drain", False),
    (Server("a", 1, ready=False, serving=False), UP, "MAINT", "maint", True),
])
def test_server_status(server: Server, check: object, status: str, klass: str,
                       hidden: bool) -> None:
    got = server_status(server, check)  # type: ignore[arg-type]
    assert (got, status_class(got), hidden_by_up(got)) == (status, klass, hidden)


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "?"), (-1, "?"), (0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"),
    (3600, "1h00m"), (86399, "23h59m"), (86400, "1d0h"), (200000, "2d7h"),
])
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(("target", "query"), [
    ("/", StatsQuery()),
    ("/;csv", StatsQuery("csv")),
    ("/;csv;norefresh", StatsQuery("csv", norefresh=True)),
    ("/?stats;csv", StatsQuery("csv")),
    ("/haproxy?stats;csv;norefresh", StatsQuery("csv", norefresh=True)),
    ("/haproxy?stats", StatsQuery()),
    ("/;json", StatsQuery("json")),
    ("/;up", StatsQuery(up_only=True)),
    ("/;up;norefresh", StatsQuery(up_only=True, norefresh=True)),
    ("/;NoRefresh", StatsQuery(norefresh=True)),
    ("/metrics", StatsQuery("metrics")),
    ("/metrics;csv", None),
    ("/favicon.ico", None),
    ("/other;csv", None),
])
def test_parse_stats_uri(target: str, query: StatsQuery | None) -> None:
    assert parse_stats_uri(target) == query


def _basic(cred: bytes) -> str:
    import base64
    return "Basic " + base64.b64encode(cred).decode()


@pytest.mark.parametrize(("header", "ok"), [
    (None, False),
    ("", False),
    (_basic(b"admin:s3cret"), True),
    ("basic " + _basic(b"admin:s3cret")[6:], True),
    (_basic(b"admin:s3cre"), False),
    (_basic(b"admin:s3cret "), False),
    (_basic(b"Admin:s3cret"), False),
    (_basic(b"admin"), False),
    ("Bearer " + _basic(b"admin:s3cret")[6:], False),
    ("Basic !!!notbase64", False),
])
def test_basic_auth(header: str | None, ok: bool) -> None:
    auth = BasicAuth.from_setting("admin:s3cret")
    assert auth is not None
    assert auth.check(header) is ok


def test_basic_auth_from_file(tmp_path: object) -> None:
    from pathlib import Path
    p = Path(str(tmp_path)) / "auth"
    p.write_text("ops:pa:ss\n")
    auth = BasicAuth.from_setting(f"@{p}")
    assert auth is not None and auth.check(_basic(b"ops:pa:ss"))
    p.write_text("no colon here\n")
    with pytest.raises(ValueError, match="user:password"):
        BasicAuth.from_setting(f"@{p}")
    with pytest.raises(ValueError, match="missing"):
        BasicAuth.from_setting(f"@{p}.missing")
    assert BasicAuth.from_setting(None) is None
    with pytest.raises(ValueError):
        BasicAuth.from_setting("nocolon")


def test_view_takes_the_electors_dict_and_the_tls_stores_certificates() -> None:
    import datetime as dt

    from proxy.certs import CertInfo as TlsCert
    not_after = dt.datetime.fromtimestamp(NOW + 3 * 86400, tz=dt.UTC)
    tls = TlsCert(path="/etc/tls/a.pem", names=("a.example", "b.example"), subject="CN=a",
                  issuer="CN=ca", not_before=not_after - dt.timedelta(days=90),
                  not_after=not_after, days_left=3, key_type="EC-secp256r1",
                  fingerprint_sha256="00", self_signed=False, chain_length=2)
    v = known_view(leader={"name": "node-<b>", "transitions": 4}, certificates=[tls])
    page = render_html(v)
    assert "node-&lt;b&gt;" in page and "4 transition(s)" in page
    assert 'cert a.example, b.example</td><td><span class="bad">3 days' in page
    doc = json.loads(render_json(v))
    assert doc["leader"]["name"] == "node-<b>"
    assert doc["certificates"] == [{"name": "a.example, b.example",
                                    "not_after": NOW + 3 * 86400, "days_left": 3.0}]
    text = Exposition(lambda: v).render().decode()
    assert 'pylb_certificate_expiry_days{name="a.example, b.example"} 3.0' in text


def test_two_workers_counters_add_up_on_the_page() -> None:
    from pylb.counters import merge_snapshots
    from tests.pylb.stats_fixtures import known_stats

    a, b = known_stats(), known_stats()
    b.frontend("http").open(NOW)  # one more session, still open, on the second worker
    v = known_view(counters=merge_snapshots([a.snapshot(), b.snapshot()]))
    rows = csv_rows(render_csv(v))
    fe = rows[("http", "FRONTEND")]
    assert (fe["stot"], fe["scur"], fe["smax"], fe["bin"], fe["ereq"], fe["hrsp_2xx"]) == (
        str(2 * N_REQ + 1), "1", "1", str(2 * BYTES_IN), str(2 * N_BAD), "16")
    assert rows[(DB.name, "BACKEND")]["scur"] == "4"  # 2 open on each worker
    assert rows[(DB.name, "BACKEND")]["smax"] == "4"  # a maximum, not a sum
    assert json.loads(render_json(v))["failures"]["BAD_REQUEST"] == 2 * N_BAD
