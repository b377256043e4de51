"""CheckResults, the checker's column store of per-server results: what goes in comes
out, field for field."""

from __future__ import annotations

from dataclasses import replace

from proxy.check import (
    INI,
    L4CON,
    L7STS,
    CheckResult,
    CheckResults,
    Probe,
    advance,
    initial,
)
from pylb.config import CheckSettings


def test_results_round_trip_every_field() -> None:
    store = CheckResults()
    start = initial(CheckSettings(rise=3, fall=4), 1000.0, http=True)
    assert start.checked_at is None and start.duration_ms is None and start.code is None
    down = advance(start, Probe(L7STS, code=503, duration_ms=1.25, detail="HTTP status 503"),
                   1002.5)
    odd = replace(down, status="L6XYZ", detail="", up=True, failures=7, downs=2,
                  downtime=12.5, http=False, health=1)
    store[("127.0.0.1", 80)] = start
    store[("127.0.0.2", 80)] = down
    store[("127.0.0.3", 81)] = odd
    assert store[("127.0.0.1", 80)] == start
    assert store[("127.0.0.2", 80)] == down
    assert store[("127.0.0.3", 81)] == odd
    assert store[("127.0.0.2", 80)].status_text() == down.status_text()
    assert len(store) == 3 and set(store) == {("127.0.0.1", 80), ("127.0.0.2", 80),
                                              ("127.0.0.3", 81)}
    assert store.get(("127.0.0.9", 80)) is None


def test_results_delete_reuses_the_slot_and_copy_is_a_snapshot() -> None:
    store = CheckResults()
    a, b = CheckResult(status=INI, last_change=1.0), CheckResult(status=L4CON, up=False)
    store[("127.0.0.1", 1)] = a
    store[("127.0.0.1", 2)] = b
    snap = store.copy()
    del store[("127.0.0.1", 1)]
    store[("127.0.0.1", 3)] = b
    store[("127.0.0.1", 2)] = a
    assert dict(store) == {("127.0.0.1", 2): a, ("127.0.0.1", 3): b}
    assert len(store._status) == 2  # the freed slot was taken again
    assert dict(snap) == {("127.0.0.1", 1): a, ("127.0.0.1", 2): b}
    assert CheckResults() == {}


def test_shared_results_cost_no_slot_until_written() -> None:
    store = CheckResults()
    first, later = CheckResult(last_change=1.0), CheckResult(last_change=2.0, http=True)
    for i in range(1, 4):
        store.share(("127.0.0.1", i), first)
    store.share(("127.0.0.2", 1), later)
    assert store[("127.0.0.1", 2)] is first and store[("127.0.0.2", 1)] is later
    assert len(store._status) == 0 and len(store._shared) == 2
    probed = replace(first, status=L4CON, up=False, checked_at=5.0)
    store[("127.0.0.1", 1)] = probed
    del store[("127.0.0.1", 2)]
    store[("127.0.0.2", 1)] = probed  # the last user of `later`: it goes
    assert len(store._status) == 2 and list(store._shared.values()) == [[first, 1]]
    snap = store.copy()
    del store[("127.0.0.1", 3)]
    assert store._shared == {} and dict(store) == {("127.0.0.1", 1): probed,
                                                   ("127.0.0.2", 1): probed}
    assert dict(snap) == {("127.0.0.1", 1): probed, ("127.0.0.1", 3): first,
                          ("127.0.0.2", 1): probed}
