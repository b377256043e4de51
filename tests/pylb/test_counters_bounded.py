"""pylb.counters: rows pruned to the table (draining rows kept until their last connection
closes), reports that carry only changed rows, and the controller's fold of them equal to
the whole snapshot."""

from __future__ import annotations

import random

import pytest

from pylb import counters
from pylb.counters import (
    HRSP_SLOT,
    Counters,
    Stats,
    fold_report,
    merge_snapshots,
    open_rows,
)


def test_idle_rows_that_leave_are_dropped_and_draining_rows_when_they_close() -> None:
    st = Stats()
    st.server("b", "s1").open()
    st.server("b", "s1").close()
    busy = st.server("b", "s2")
    busy.open()
    st.backend("b").open()
    st.prune([("b", "s1"), ("b", "s2")], ["b"])
    assert ("b", "s1") not in st.servers
    assert ("b", "s2") in st.servers and "b" in st.backends  # draining
    st.sweep()
    assert ("b", "s2") in st.servers
    busy.close()
    st.backend("b").close()
    st.sweep()
    assert st.servers == {} and st.backends == {}


def test_a_draining_row_that_comes_back_is_kept() -> None:
    st = Stats()
    st.server("b", "s1").open()
    st.prune([("b", "s1")], [])
    st.prune([], [], back=[("b", "s1")])
    st.server("b", "s1").close()
    st.sweep()
    assert ("b", "s1") in st.servers


def test_reports_carry_changed_rows_only_and_fold_to_the_snapshot() -> None:
    rng = random.Random(5)
    st = Stats()
    folded: dict = {}
    first = True
    for step in range(60):
        for _ in range(rng.randrange(5)):
            c = st.server(f"b{rng.randrange(3)}", f"s{rng.randrange(20)}")
            c.open()
            c.bytes_in += rng.randrange(100)
            if rng.random() < 0.7:
                c.close()
        if rng.random() < 0.3:
            st.backend(f"b{rng.randrange(3)}").conn_errors += 1
        if rng.random() < 0.1:
            st.prune([k for k in list(st.servers) if rng.random() < 0.3],
                     [b for b in list(st.backends) if rng.random() < 0.3])
        report = st.report(full=first)
        if not first and step % 7 == 3:
            assert len(report["servers"]) < len(st.servers) or not st.servers
        folded = fold_report(folded, report, full=first)
        first = False
        snap = st.snapshot()
        for section in ("servers", "backends"):
            assert {k: {f: v for f, v in row.items() if f != "rate"}
                    for k, row in folded[section].items()} == \
                   {k: {f: v for f, v in row.items() if f != "rate"}
                    for k, row in snap[section].items()}, step
    # nothing changed: nothing but the few frontends and failures is sent
    quiet = st.report()
    quiet = st.report()
    assert quiet["servers"] == {} and quiet["backends"] == {}
    assert merge_snapshots([folded]) == merge_snapshots([fold_report(folded, quiet)])


def test_a_row_dropped_and_made_again_between_reports_is_reported_fresh() -> None:
    st = Stats()
    st.server("b", "s").open()
    st.server("b", "s").close()
    folded = fold_report({}, st.report(full=True), full=True)
    st.prune([("b", "s")])
    st.server("b", "s").open()
    folded = fold_report(folded, st.report())
    assert folded["servers"]["b\x00s"]["cur_conns"] == 1


def test_beyond_the_sweep_budget_every_change_arrives_within_a_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pylb.counters

    monkeypatch.setattr(pylb.counters, "SWEEP_ROWS", 7)
    st = Stats()
    for i in range(40):
        st.server("b", f"s{i}").total_conns += 1
    folded = fold_report({}, st.report(full=True), full=True)
    for i in range(0, 40, 3):
        st.server("b", f"s{i}").bytes_in += 5
    sizes = []
    for _ in range(6):  # 40 rows / 7 per report: one round
        report = st.report()
        sizes.append(len(report["servers"]))
        folded = fold_report(folded, report)
    assert max(sizes) <= 7
    assert folded["servers"] == st.snapshot()["servers"]


def test_server_rows_answer_membership_without_making_every_label() -> None:
    from pylb.counters import ServerRows, table_rows
    from pylb.model import Backend, Server

    backends = [Backend(f"ns/s{i}:80", (Server(f"127.8.0.{i}", 80),
                                        Server(f"127.8.1.{i}", 81, name=f"pod-{i}")))
                for i in range(50)]
    names, rows = table_rows(backends)
    assert isinstance(rows, ServerRows) and names == {b.name for b in backends}
    assert "ns/s3:80\x00127.8.0.3:80" in rows and "ns/s3:80\x00pod-3" in rows
    assert "ns/s3:80\x00127.8.1.3:81" not in rows  # named: its label is the name
    assert "ns/s3:80\x00pod-4" not in rows and "ns/gone:80\x00x" not in rows
    assert "ns/s3:80" not in rows and 7 not in rows
    # only backend 3's servers got their labels made
    made = [b.name for b in backends for s in b.servers if s._label is not None
            and s.name == ""]
    assert made == ["ns/s3:80"]
    every = {f"{b.name}\x00{s.label}" for b in backends for s in b.servers}
    assert rows == every and len(rows) == 100 and set(rows) == every


def test_sessions_are_counted_per_wall_clock_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """`open_rows` counts a row's sessions per second of `now` (haproxy's rate): the count
    starts again in the next second, `max_rate` keeps the most, and `rate` and a report
    read the current second's count."""
    srv, be = Counters(), Counters()
    for now in (100.0, 100.25, 100.999):
        open_rows(srv, be, now)
    assert srv.rate(100.5) == be.rate(100.5) == 3 and srv.max_rate == 3
    assert srv.rate(101.0) == 0
    open_rows(srv, be, 101.5)
    assert srv.rate(101.7) == 1 and srv.max_rate == be.max_rate == 3
    assert srv.total_conns == 4 and srv.cur_conns == 4 and srv.last_session == 101.5
    monkeypatch.setattr(counters.time, "time", lambda: 1000.4)
    st = Stats()
    row = st.server("b", "s")
    row.open()  # now: reported as busy (its rate is this second's)
    st.report(full=True)
    assert ("b", "s") in st._hot and row.snapshot()["rate"] == 1


def test_a_clock_step_back_counts_in_the_earlier_second() -> None:
    """`open_rows` remembers the second it counted in last (no division per call): a
    wall clock that steps back, into an earlier second or a whole day back, is counted
    in that second, as `now // 1` says, and forward again in its own."""
    row = Counters()
    for now in (200.5, 199.75, 199.9, 200.1, 200.2, 113.0, 201.0):
        open_rows(row, None, now)
        assert row._rate_second == now // 1
    assert row.max_rate == 2 and row.rate(201.5) == 1 and row.total_conns == 7


def test_a_snapshot_reports_the_most_sessions_in_a_second_counted_so_far() -> None:
    """`max_rate` in a snapshot (the stats page's rate_max) is the most of the seconds
    before and of the one being counted, as `Counters.max_rate` says."""
    row = Counters()
    for now in (300.1, 300.2, 301.5):
        open_rows(row, None, now)
    snap = row.snapshot(301.6)
    assert snap["max_rate"] == 2 and snap["rate"] == 1 and snap["total_conns"] == 3
    for now in (301.7, 301.8):
        open_rows(row, None, now)
    snap = row.snapshot(301.9)
    assert snap["max_rate"] == snap["rate"] == 3
    assert row.snapshot(302.5)["max_rate"] == 3 and row.snapshot(302.5)["rate"] == 0


@pytest.mark.parametrize("status", [-1, 0, 99, 100, 101, 199, 200, 204, 299, 301, 404, 499,
                                    500, 503, 599, 600, 999, 1000, 4040])
def test_a_status_counts_in_its_class_or_other(status: int) -> None:
    """hrsp: 1xx..5xx, and "other" for anything else; the table the data path indexes
    (HRSP_SLOT, statuses below 1000) says the same as the arithmetic."""
    c = Counters()
    c.response(status)
    want = [0] * 6
    want[status // 100 - 1 if 100 <= status < 600 else 5] = 1
    assert c.hrsp == want
    if 0 <= status < 1000:
        assert HRSP_SLOT[status] == want.index(1)
