"""bench.gateway_delta's plumbing at a tiny size: the plans are what the translation makes
of the fake's objects, the change is one route, and every figure is reported. No timing is
asserted."""

from __future__ import annotations

from bench import gateway_delta as gd


def test_a_tiny_run_reports_every_field() -> None:
    row = gd.measure(30, 1)
    assert row["rules"] == 30
    assert row["delta: bytes"] < row["whole: bytes"]
    assert all(isinstance(v, int | float) and v >= 0 for v in row.values())
    assert {"whole: encode ms", "delta (reused): plan_delta ms", "delta: apply_delta ms",
            "delta: router updated ms", "whole: router made anew ms"} <= row.keys()


def test_the_reused_plan_shares_every_entry_but_the_changed_routes() -> None:
    old, new = gd.plan_of(20, 1), gd.plan_of(20, 2)
    reused = gd.reusing(old, new, "ns-0/route-0")
    assert reused == new
    was = {id(e) for e in old.listeners[0].rules}
    assert [e.route for e in reused.listeners[0].rules if id(e) not in was] == ["ns-0/route-0"]


async def test_the_l4_rebuild_is_measured() -> None:
    row = await gd.l4_rebuild(2)
    (ms,) = row.values()
    assert ms >= 0
