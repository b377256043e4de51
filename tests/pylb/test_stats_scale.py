"""The stats page at cluster scale (issue #24): bounded rows under pod churn, the HTML
page in pages, /metrics without per-server series past the limit, one render shared by
concurrent requests, and the controller's loop free while counters are merged.

No timing claims here (they live in bench/stats_scale.py): every test asserts what is
shown, how many rows are kept, or that something answered while something else waited.
Server addresses are in 127.0.0.0/8 and nothing connects to them.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pylb.config import Settings
from pylb.counters import Stats, merge_rows, merge_snapshots, prune_to_table, table_rows
from pylb.health import HealthServer
from pylb.model import Backend, HttpRoute, RouteTable, Server
from pylb.stats import StatsServer, StatsView, render_csv, render_html, render_json
from pylb.stats import server as stats_server
from pylb.stats.http import StatsQuery, parse_stats_uri
from pylb.stats.page import BACKEND_ROWS, PAGE_ROWS, paginate
from pylb.stats.prom import Exposition
from pylb.stats.view import REMOVED, LazyCounters, table_keys

NOW = 1_800_000_000.0


def _table(generation: int, services: int = 3, pods: int = 4, version: int = 1) -> RouteTable:
    """`services` backends of `pods` servers each, named for their generation (a
    Deployment rolled once per generation: every pod name is new)."""
    backends = []
    for i in range(services):
        servers = tuple(
            Server(f"127.{1 + i}.{j // 250}.{j % 250 + 1}", 8080,
                   name=f"svc{i}-g{generation}-pod{j}") for j in range(pods))
        backends.append(Backend(f"default/svc{i}:80", servers))
    return RouteTable(http=tuple(HttpRoute(f"svc{i}", f"/svc{i}", b.name)
                                 for i, b in enumerate(backends)),
                      backends=tuple(backends), version=version)


def _view(table: RouteTable, counters: Mapping[str, Any]) -> StatsView:
    return StatsView(version="t", pid=1, started=NOW - 10, now=NOW, table=table,
                     counters=counters, table_version=table.version)


def _csv(text: str) -> list[dict[str, str]]:
    recs = list(csv.reader(io.StringIO(text)))
    header = [f.removeprefix("# ") for f in recs[0]]
    return [dict(zip(header, r, strict=True)) for r in recs[1:]]


# -- merging and pruning ------------------------------------------------------------------

def test_merge_rows_sums_totals_and_takes_maxima() -> None:
    a = {"cur_conns": 1, "total_conns": 5, "max_conns": 3, "last_session": 10.0,
         "max_rate": 2, "hrsp": [0, 1, 0, 0, 2, 0]}
    b = {"cur_conns": 2, "total_conns": 1, "max_conns": 1, "last_session": 20.0,
         "max_rate": 7, "hrsp": [1, 0, 0, 3, 0, 0]}
    assert merge_rows([a, b]) == {"cur_conns": 3, "total_conns": 6, "max_conns": 3,
                                  "last_session": 20.0, "max_rate": 7,
                                  "hrsp": [1, 1, 0, 3, 2, 0]}
    assert a["hrsp"] == [0, 1, 0, 0, 2, 0]  # the inputs are left alone
    assert merge_rows([a]) is a  # one worker's row is shared, not copied


def test_merge_snapshots_of_two_workers() -> None:
    s1, s2 = Stats(), Stats()
    s1.server("b", "x").open(NOW)
    s2.server("b", "x").open(NOW)
    s2.server("b", "y").open(NOW)
    merged = merge_snapshots([s1.snapshot(), s2.snapshot()])
    assert merged["servers"]["b\x00x"]["total_conns"] == 2
    assert merged["servers"]["b\x00y"]["total_conns"] == 1
    assert merge_snapshots([]) == {"frontends": {}, "backends": {}, "servers": {},
                                   "failures": {}}


@pytest.mark.parametrize(("server_rows", "live", "kept", "removed"), [
    # in the table: kept, with or without sessions
    ({"b\x00a": 0, "b\x00b": 2}, {"b\x00a", "b\x00b"}, {"b\x00a", "b\x00b"}, set()),
    # gone and idle: dropped; gone with sessions: moved to "removed"
    ({"b\x00a": 0, "b\x00old": 0, "b\x00busy": 1}, {"b\x00a"}, {"b\x00a"}, {"b\x00busy"}),
    # a row that came back into the table is live again, not removed
    ({"b\x00a": 1}, {"b\x00a"}, {"b\x00a"}, set()),
])
def test_prune_to_table(server_rows: dict[str, int], live: set[str], kept: set[str],
                        removed: set[str]) -> None:
    counters = {"frontends": {"http": {"cur_conns": 0}},
                "backends": {"b": {"cur_conns": 0}, "gone": {"cur_conns": 0},
                             "gone-busy": {"cur_conns": 1}},
                "servers": {k: {"cur_conns": n} for k, n in server_rows.items()},
                "removed": {"b\x00a": {"cur_conns": 1}},
                "failures": {"NO_ROUTE": 3}}
    out = prune_to_table(counters, frozenset({"b"}), frozenset(live))
    assert set(out["servers"]) == kept
    assert set(out["removed"]) == removed
    assert set(out["backends"]) == {"b", "gone-busy"}
    assert out["frontends"] == counters["frontends"]
    assert out["failures"] == {"NO_ROUTE": 3}


def test_a_newer_report_of_a_removed_row_replaces_it() -> None:
    counters = {"servers": {"b\x00gone": {"cur_conns": 0}},
                "removed": {"b\x00gone": {"cur_conns": 1}, "b\x00busy": {"cur_conns": 2}}}
    out = prune_to_table(counters, frozenset({"b"}), frozenset())
    assert out["servers"] == {} and set(out["removed"]) == {"b\x00busy"}


def test_rows_stay_bounded_through_1000_pod_generations() -> None:
    """The controller keeps merged rows across reports (a worker reports the rows it
    touched: the delta protocol) and prunes them to each new table: through 1,000
    generations of pods the rows kept never exceed the table's servers plus the one
    that still holds a session."""
    kept: dict[str, Any] = merge_snapshots([])
    opened: list[tuple[str, str]] = []  # long sessions, one per generation
    for gen in range(1000):
        table = _table(gen, version=gen + 1)
        report = Stats()  # this generation's traffic: every pod served once
        for b in table.backends:
            for s in b.servers:
                c = report.server(b.name, s.label)
                c.open(NOW + gen)
                c.close()
        if len(opened) == 2:  # the session opened two generations ago ends
            report.server(*opened.pop(0)).cur_conns = 0
        first = table.backends[0]
        report.server(first.name, first.servers[0].label).open(NOW + gen)
        opened.append((first.name, first.servers[0].label))
        snap = report.snapshot()
        for section in ("frontends", "backends", "servers"):
            kept[section] = {**kept[section], **snap[section]}
        kept = prune_to_table(kept, *table_rows(table.backends))
        live = table_rows(table.backends)[1]
        assert set(kept["servers"]) == live
        assert len(kept["removed"]) == (1 if gen else 0)  # last generation's busy pod
        if gen % 250 == 0:
            rows = _csv(render_csv(_view(table, kept)))
            assert len(rows) == 1 + len(live) + len(kept["removed"]) + len(table.backends)


def test_a_worker_that_never_prunes_still_gives_bounded_rows() -> None:
    """The worst case for the controller: a worker reports every pod it ever counted."""
    worker = Stats()
    for gen in range(100):
        table = _table(gen, version=gen + 1)
        for b in table.backends:
            for s in b.servers:
                worker.server(b.name, s.label).open(NOW + gen)
                worker.server(b.name, s.label).close()
        merged = prune_to_table(merge_snapshots([worker.snapshot()]),
                                *table_rows(table.backends))
        assert len(merged["servers"]) == 12 and not merged["removed"]
    assert len(worker.servers) == 1200


def test_a_removed_server_with_sessions_shows_as_draining_until_it_has_none() -> None:
    old, new = _table(0), _table(1, version=2)
    st = Stats()
    gone = old.backends[0].servers[0]
    st.server(old.backends[0].name, gone.label).open(NOW)  # still open
    st.server(old.backends[1].name, old.backends[1].servers[0].label).open(NOW)
    st.server(old.backends[1].name, old.backends[1].servers[0].label).close()
    merged = prune_to_table(merge_snapshots([st.snapshot()]), *table_rows(new.backends))
    view = _view(new, merged)
    rows = _csv(render_csv(view))
    drain = [r for r in rows if r["svname"] == gone.label]
    assert len(drain) == 1
    assert drain[0]["status"] == "DRAIN" and drain[0]["scur"] == "1"
    assert drain[0]["pxname"] == old.backends[0].name and drain[0]["check_desc"] == REMOVED
    assert not any(r["svname"] == old.backends[1].servers[0].label for r in rows)
    be = next(r for r in rows if r["pxname"] == old.backends[0].name
              and r["svname"] == "BACKEND")
    assert be["act"] == "4"  # the removed server takes no new work
    doc = json.loads(render_json(view))
    assert any(r["svname"] == gone.label and r["status"] == "DRAIN" for r in doc["stats"])
    assert REMOVED in render_html(view)
    metrics = Exposition(lambda: view).render().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert samples[("pylb_server_status", (("backend", old.backends[0].name),
                                           ("server", gone.label), ("state", "drain")))] == 1
    # its last session closes: the row goes
    st.server(old.backends[0].name, gone.label).close()
    merged = prune_to_table(merge_snapshots([st.snapshot()]), *table_rows(new.backends))
    assert not merged["removed"]
    assert not any(r["svname"] == gone.label for r in _csv(render_csv(_view(new, merged))))


def test_a_removed_backend_with_sessions_keeps_its_section() -> None:
    old, new = _table(0, services=2), _table(1, services=1, version=2)
    st = Stats()
    name = old.backends[1].name
    label = old.backends[1].servers[2].label
    st.backend(name).open(NOW)
    st.server(name, label).open(NOW)
    merged = prune_to_table(merge_snapshots([st.snapshot()]), *table_rows(new.backends))
    rows = _csv(render_csv(_view(new, merged)))
    mine = [(r["svname"], r["status"]) for r in rows if r["pxname"] == name]
    assert mine == [(label, "DRAIN"), ("BACKEND", "DRAIN")]


def test_table_keys_are_computed_once_per_table() -> None:
    t = _table(0)
    assert table_keys(t) is table_keys(t)
    assert table_keys(t) == table_rows(t.backends)


def test_lazy_counters_compute_once_and_retry_a_torn_read() -> None:
    calls = {"n": 0}

    def fn() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return {"servers": {"k": 1}}
    lazy = LazyCounters(fn)
    assert calls["n"] == 0
    assert lazy.get("servers") == {"k": 1}
    assert dict(lazy) == {"servers": {"k": 1}} and len(lazy) == 1
    assert calls["n"] == 2


def test_snapshot_while_another_thread_adds_servers() -> None:
    st = Stats()
    stop = threading.Event()
    errors: list[BaseException] = []

    def snap() -> None:
        try:
            while not stop.is_set():
                st.snapshot()
        except BaseException as e:
            errors.append(e)
    t = threading.Thread(target=snap)
    t.start()
    try:
        for i in range(20_000):
            st.server("b", f"s{i}").open(NOW)
    finally:
        stop.set()
        t.join(10)
    assert not errors


# -- the HTML page in pages ---------------------------------------------------------------

def _big(services: int, pods: int) -> RouteTable:
    return _table(0, services=services, pods=pods)


@pytest.mark.parametrize(("services", "pods"), [(1, 3), (250, 10), (7, 400), (3, 1200)])
def test_pages_cover_every_backend_once(services: int, pods: int) -> None:
    table = _big(services, pods)
    first = paginate(table.backends)
    seen: list[str] = []
    for page in range(1, first.pages + 1):
        p = paginate(table.backends, page=page)
        assert p.page == page and p.backends
        rows = sum(min(len(b.servers), BACKEND_ROWS) + 1 for b in p.backends)
        assert rows <= PAGE_ROWS or len(p.backends) == 1
        seen += [b.name for b in p.backends]
    assert seen == [b.name for b in table.backends]
    assert paginate(table.backends, page=10**6).page == first.pages  # past the end: last


def test_scope_filters_backends_by_name_any_case() -> None:
    table = _big(30, 2)
    p = paginate(table.backends, scope="SVC1")
    assert [b.name for b in p.backends] == [b.name for b in table.backends
                                            if "svc1" in b.name]
    assert paginate(table.backends, scope="nothing-like-it").backends == ()


@pytest.mark.parametrize(("target", "query"), [
    ("/;scope=web", StatsQuery(scope="web")),
    ("/?scope=default%2Fweb", StatsQuery(scope="default/web")),
    ("/;up;page=3", StatsQuery(up_only=True, page=3)),
    ("/;page=0", StatsQuery()),
    ("/;page=-2", StatsQuery()),
    ("/;page=x", StatsQuery()),
    ("/;page=99999999999999", StatsQuery(page=1_000_000)),
    ("/?stats;scope=a+b&page=2", StatsQuery(scope="a b", page=2)),
    ("/;scope=" + "x" * 500, StatsQuery(scope="x" * 128)),
])
def test_parse_scope_and_page(target: str, query: StatsQuery) -> None:
    assert parse_stats_uri(target) == query


def test_big_table_html_shows_one_page_with_links() -> None:
    table = _big(300, 10)  # 3,300 rows: four pages
    view = _view(table, {})
    page1 = render_html(view)
    assert page1.count('<tr class="backend">') == PAGE_ROWS // 11
    assert "page 1 of 4" in page1 and "/;norefresh;page=2" in page1
    page2 = render_html(view, page=2)
    assert table.backends[PAGE_ROWS // 11].name in page2
    assert table.backends[0].name not in page2
    scoped = render_html(view, scope="svc29")
    assert scoped.count('<tr class="backend">') == 11  # svc29, svc290..svc299
    assert "11 backend(s) match" in scoped
    # the machine formats stay whole
    assert len(_csv(render_csv(view))) == 1 + 300 * 11


def test_a_huge_backend_is_collapsed_on_the_page_but_counted_whole() -> None:
    table = _big(1, BACKEND_ROWS + 77)
    html = render_html(_view(table, {}))
    assert "and 77 more servers" in html
    assert html.count('<tr class="no-check">') == BACKEND_ROWS
    rows = _csv(render_csv(_view(table, {})))
    assert next(r for r in rows if r["svname"] == "BACKEND")["act"] == str(BACKEND_ROWS + 77)


def test_a_small_table_shows_haproxys_page_unchanged() -> None:
    html = render_html(_view(_table(0), {}))
    assert 'class="pager"' not in html
    assert html.count('<tr class="backend">') == 3


# -- /metrics -----------------------------------------------------------------------------

def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_past_the_server_limit_leave_out_per_server_series() -> None:
    table = _table(0, services=3, pods=4)
    view = _view(table, {})
    whole = _samples(Exposition(lambda: view, server_series_limit=12).render().decode())
    short = _samples(Exposition(lambda: view, server_series_limit=11).render().decode())
    assert any(k[0] == "pylb_server_up" for k in whole)
    assert not any(k[0].startswith("pylb_server_") and k[0] != "pylb_server_series_exported"
                   for k in short)
    assert whole[("pylb_server_series_exported", ())] == 1
    assert short[("pylb_server_series_exported", ())] == 0
    for samples in (whole, short):
        for b in table.backends:
            assert samples[("pylb_backend_servers",
                            (("backend", b.name), ("state", "no_check")))] == 4
            assert samples[("pylb_backend_active_servers", (("backend", b.name),))] == 4


# -- the server: one render, shared, reused while costly ------------------------------------

async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_concurrent_requests_share_one_render() -> None:
    calls = {"n": 0}
    gate = threading.Event()
    table = _table(0)

    def view() -> StatsView:
        calls["n"] += 1

        def counters() -> dict[str, Any]:
            gate.wait(30)  # the render thread waits here; the loop does not
            return {}
        return _view(table, LazyCounters(counters))
    srv = StatsServer(Settings(), view)
    _, port = await srv.start("127.0.0.1", 0)
    try:
        tasks = [asyncio.create_task(_get(port, "/;csv")) for _ in range(5)]
        async with asyncio.timeout(30):
            while not srv._inflight:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        gate.set()
        bodies = await asyncio.gather(*tasks)
        assert all(b.startswith(b"HTTP/1.1 200 ") for b in bodies)
        assert len({b.split(b"\r\n\r\n", 1)[1] for b in bodies}) == 1
        assert calls["n"] == 1
    finally:
        gate.set()
        await srv.close()


async def test_costly_renders_are_reused_cheap_ones_are_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    table = _table(0)

    def view() -> StatsView:
        calls["n"] += 1
        return _view(table, {})
    srv = StatsServer(Settings(), view)
    _, port = await srv.start("127.0.0.1", 0)
    try:
        monkeypatch.setattr(stats_server, "REUSE_MIN_COST", 1e9)  # nothing is costly
        for _ in range(3):
            await _get(port, "/;json")
        assert calls["n"] == 3
        monkeypatch.setattr(stats_server, "REUSE_MIN_COST", 0.0)  # everything is
        monkeypatch.setattr(stats_server, "REUSE_FACTOR", 1e9)
        for _ in range(3):
            await _get(port, "/;json")
        assert calls["n"] == 4
        await _get(port, "/;csv")  # another format is another render
        await _get(port, "/;page=2")
        assert calls["n"] == 6
        assert len(srv._done) <= stats_server.REUSE_ENTRIES
    finally:
        await srv.close()


async def test_a_failed_render_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_server, "REUSE_MIN_COST", 0.0)
    calls = {"n": 0}

    def view() -> StatsView:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return _view(_table(0), {})
    srv = StatsServer(Settings(), view)
    _, port = await srv.start("127.0.0.1", 0)
    try:
        assert (await _get(port, "/")).startswith(b"HTTP/1.1 500 ")
        assert (await _get(port, "/")).startswith(b"HTTP/1.1 200 ")
    finally:
        await srv.close()


async def test_readyz_answers_while_the_counters_are_being_merged() -> None:
    """The stats render (counters merge included) runs off the loop: /readyz and a cheap
    stats request (another format) are answered while it is stuck."""
    gate = threading.Event()
    table = _table(0)
    blocked = {"first": True}

    def view() -> StatsView:
        def counters() -> dict[str, Any]:
            if blocked.pop("first", False):
                gate.wait(30)
            return {}
        return _view(table, LazyCounters(counters))
    stats = StatsServer(Settings(), view)
    health = HealthServer(Settings(), lambda: True, lambda: True)
    _, sport = await stats.start("127.0.0.1", 0)
    _, hport = await health.start("127.0.0.1", 0)
    try:
        slow = asyncio.create_task(_get(sport, "/;csv"))
        async with asyncio.timeout(30):
            while not stats._inflight:
                await asyncio.sleep(0.01)
        for _ in range(5):
            assert (await _get(hport, "/readyz")).startswith(b"HTTP/1.1 200 ")
        assert not slow.done()  # /readyz did not wait for the render
        gate.set()
        assert (await slow).startswith(b"HTTP/1.1 200 ")
    finally:
        gate.set()
        await stats.close()
        await health.close()


def test_gc_paused_nests_and_restores() -> None:
    import gc

    from pylb import collector

    assert gc.isenabled()
    with collector.paused():
        assert not gc.isenabled()
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector.paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_shown_counters_reuse_a_costly_merge_for_the_same_table(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pylb.counters import ShownCounters

    calls = {"n": 0}

    def merged() -> dict[str, Any]:
        calls["n"] += 1
        return {"servers": {"b\x00a": {"cur_conns": 0}, "b\x00old": {"cur_conns": 0}}}
    shown = ShownCounters(merged)
    t1, t2 = _table(0), _table(1)
    monkeypatch.setattr(ShownCounters, "MIN_COST", 1e9)  # cheap: recomputed each time
    shown.get(t1, table_keys(t1))
    shown.get(t1, table_keys(t1))
    assert calls["n"] == 2
    monkeypatch.setattr(ShownCounters, "MIN_COST", 0.0)  # costly: reused...
    monkeypatch.setattr(ShownCounters, "REUSE", 1e9)
    first = shown.get(t1, table_keys(t1))
    assert shown.get(t1, table_keys(t1)) is first and calls["n"] == 3
    assert first["servers"] == {}  # pruned to the table
    shown.get(t2, table_keys(t2))  # ...but not for another table
    assert calls["n"] == 4


async def test_a_big_reply_arrives_whole() -> None:
    table = _table(0, services=40, pods=200)  # a CSV of about 1 MB: written in slices
    view = _view(table, {})
    srv = StatsServer(Settings(), lambda: view)
    _, port = await srv.start("127.0.0.1", 0)
    try:
        data = await _get(port, "/;csv")
        head, _, body = data.partition(b"\r\n\r\n")
        expected = render_csv(view).encode()
        assert len(expected) > 4 * 256 * 1024
        assert f"content-length: {len(expected)}".encode() in head.lower()
        assert body == expected
    finally:
        await srv.close()


def test_the_controller_view_prunes_in_the_render_thread(tmp_path: Any) -> None:
    """Controller.view() hands a LazyCounters: nothing is merged until a render reads
    it, and what it reads is bounded by the table the view was built with."""
    from pylb.app import Controller

    (tmp_path / "c.yaml").write_text("")
    c = Controller(Settings(source=f"file:{tmp_path / 'c.yaml'}"))
    calls = {"n": 0}
    old, new = _table(0), _table(1, version=2)

    def counters() -> dict[str, Any]:
        calls["n"] += 1
        st = Stats()
        st.server(old.backends[0].name, old.backends[0].servers[0].label).open(NOW)
        st.server(old.backends[1].name, old.backends[1].servers[0].label).open(NOW)
        st.server(old.backends[1].name, old.backends[1].servers[0].label).close()
        st.server(new.backends[0].name, new.backends[0].servers[0].label).open(NOW)
        return merge_snapshots([st.snapshot()])
    c.counters = counters  # type: ignore[method-assign]
    c.table = new
    view = c.view()
    assert isinstance(view.counters, LazyCounters) and calls["n"] == 0
    shown = dict(view.counters)
    assert calls["n"] == 1
    assert set(shown["servers"]) == {f"{new.backends[0].name}\x00"
                                     f"{new.backends[0].servers[0].label}"}
    assert set(shown["removed"]) == {f"{old.backends[0].name}\x00"
                                     f"{old.backends[0].servers[0].label}"}


def test_shown_counters_give_the_last_result_while_another_thread_merges() -> None:
    from pylb.counters import ShownCounters

    gate, entered = threading.Event(), threading.Event()
    calls = {"n": 0}

    def merged() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 2:
            entered.set()
            gate.wait(30)
        return {"servers": {}, "n": calls["n"]}
    shown = ShownCounters(merged)
    t1, t2 = _table(0), _table(1)
    assert shown.get(t1, table_keys(t1))["n"] == 1  # cheap: not reused
    worker = threading.Thread(target=shown.get, args=(t1, table_keys(t1)))
    worker.start()
    try:
        assert entered.wait(30)
        assert shown.get(t1, table_keys(t1))["n"] == 1  # the last one, at once
    finally:
        gate.set()
        worker.join(30)
    assert shown.get(t2, table_keys(t2))["n"] == 3  # another table: computed
