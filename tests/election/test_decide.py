"""The decision step as tables: record read + what we saw before + local clock → action."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from election.decide import (
    Decision,
    Observation,
    Record,
    Timing,
    Verdict,
    decide,
    fast_renew,
    format_microtime,
    format_time,
    observe,
    parse_time,
    release,
)

T = Timing()  # 15 / 10 / 2
WALL = datetime(2026, 11, 21, 22, 0, 0, tzinfo=UTC)
OLD = datetime(2026, 11, 21, 21, 0, 0, tzinfo=UTC)

HELD_B = Record(holder="b", lease_seconds=15, acquire_time=OLD, renew_time=OLD, transitions=4)
HELD_ME = replace(HELD_B, holder="me")
RELEASED = Record(holder="", lease_seconds=1, acquire_time=OLD, renew_time=OLD, transitions=4)
# b's clock runs an hour ahead (or behind): its renewTime says nothing to us.
SKEW_FUTURE = replace(HELD_B, renew_time=WALL + timedelta(hours=1))
SKEW_PAST = replace(HELD_B, renew_time=WALL - timedelta(days=3))


def seen(record: Record, at: float) -> Observation:
    return Observation(record, at)


# (name, current record, previous observation, local now, verdict, observed_at after)
CASES = [
    ("absent: create", None, None, 100.0, Verdict.CREATE, None),
    ("first sight of a held lease: follow, observed now", HELD_B, None, 100.0,
     Verdict.FOLLOW, 100.0),
    ("unchanged, within duration by our clock", HELD_B, seen(HELD_B, 90.0), 104.9,
     Verdict.FOLLOW, 90.0),
    ("unchanged, exactly at expiry: expired", HELD_B, seen(HELD_B, 90.0), 105.0,
     Verdict.ACQUIRE, 90.0),
    ("unchanged, long after expiry", HELD_B, seen(HELD_B, 90.0), 500.0, Verdict.ACQUIRE, 90.0),
    ("changed since last seen: clock restarts", replace(HELD_B, renew_time=WALL),
     seen(HELD_B, 10.0), 500.0, Verdict.FOLLOW, 500.0),
    ("skew: renewTime in the future is not trusted", SKEW_FUTURE, seen(SKEW_FUTURE, 0.0),
     15.0, Verdict.ACQUIRE, 0.0),
    ("skew: renewTime days old but freshly changed", SKEW_PAST, seen(HELD_B, 0.0), 15.0,
     Verdict.FOLLOW, 15.0),
    ("released (empty holder): take at once", RELEASED, None, 100.0, Verdict.ACQUIRE, 100.0),
    ("released and seen just now", RELEASED, seen(RELEASED, 99.9), 100.0,
     Verdict.ACQUIRE, 99.9),
    ("I hold it: renew", HELD_ME, seen(HELD_ME, 99.0), 100.0, Verdict.RENEW, 99.0),
    ("I hold it though expired by my clock: renew", HELD_ME, seen(HELD_ME, 0.0), 100.0,
     Verdict.RENEW, 0.0),
    ("zero duration record: expired at once", replace(HELD_B, lease_seconds=0), None, 100.0,
     Verdict.ACQUIRE, 100.0),
]


@pytest.mark.parametrize(("current", "previous", "now", "verdict", "observed_at"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_table(current: Record | None, previous: Observation | None, now: float,
                      verdict: Verdict, observed_at: float | None) -> None:
    d = decide(current, previous, now, WALL, "me", T)
    assert d.verdict is verdict
    if observed_at is None:
        assert d.observation is None
    else:
        assert d.observation is not None
        assert d.observation.observed_at == observed_at
        assert d.observation.record == current
    if verdict is Verdict.FOLLOW:
        assert d.write is None
    else:
        assert d.write is not None
        assert d.write.holder == "me"
        assert d.write.renew_time == WALL
        assert d.write.lease_seconds == 15


def test_create_starts_transitions_at_zero() -> None:
    d = decide(None, None, 1.0, WALL, "me", T)
    assert d.write == Record("me", 15, WALL, WALL, 0)


def test_takeover_counts_a_transition_and_sets_acquire_time() -> None:
    d = decide(HELD_B, seen(HELD_B, 0.0), 100.0, WALL, "me", T)
    assert d.write == Record("me", 15, WALL, WALL, 5)


def test_taking_a_released_lease_counts_a_transition() -> None:
    d = decide(RELEASED, None, 0.0, WALL, "me", T)
    assert d.write == Record("me", 15, WALL, WALL, 5)


def test_renew_keeps_acquire_time_and_transitions() -> None:
    d = decide(HELD_ME, seen(HELD_ME, 0.0), 1.0, WALL, "me", T)
    assert d.write == Record("me", 15, OLD, WALL, 4)


def test_renew_rewrites_duration_from_settings() -> None:
    d = decide(replace(HELD_ME, lease_seconds=3), None, 1.0, WALL, "me", T)
    assert d.write is not None and d.write.lease_seconds == 15


def test_follower_waits_the_holders_duration_not_its_own() -> None:
    short = replace(HELD_B, lease_seconds=2)
    assert decide(short, seen(short, 0.0), 1.9, WALL, "me", T).verdict is Verdict.FOLLOW
    assert decide(short, seen(short, 0.0), 2.0, WALL, "me", T).verdict is Verdict.ACQUIRE


def test_observe_moves_only_on_change() -> None:
    first = observe(None, HELD_B, 1.0)
    assert observe(first, HELD_B, 9.0) is first
    assert observe(first, replace(HELD_B, renew_time=WALL), 9.0).observed_at == 9.0


FAST = [
    ("never seen", None, 1.0, False),
    ("someone else holds", seen(HELD_B, 0.0), 1.0, False),
    ("I hold, valid", seen(HELD_ME, 0.0), 14.9, True),
    ("I hold, expired by my clock", seen(HELD_ME, 0.0), 15.0, False),
]


@pytest.mark.parametrize(("observed", "now", "fast"), [c[1:] for c in FAST],
                         ids=[c[0] for c in FAST])
def test_fast_renew_table(observed: Observation | None, now: float, fast: bool) -> None:
    got = fast_renew(observed, now, WALL, "me", T)
    if not fast:
        assert got is None
    else:
        assert got == Record("me", 15, OLD, WALL, 4)


def test_release_table() -> None:
    assert release(HELD_ME, "me", WALL) == Record("", 1, WALL, WALL, 4)
    assert release(HELD_B, "me", WALL) is None
    assert release(RELEASED, "me", WALL) is None


def test_release_then_other_acquires_immediately() -> None:
    released = release(HELD_ME, "me", WALL)
    assert released is not None
    d = decide(released, seen(HELD_ME, 0.0), 0.5, WALL, "b", T)
    assert d == Decision(Verdict.ACQUIRE, Observation(released, 0.5),
                         Record("b", 15, WALL, WALL, 5))


TIMINGS = [
    ((15, 10, 2), None),
    ((1.0, 0.6, 0.2), None),
    ((10, 10, 2), "greater than the renew deadline"),
    ((15, 2.4, 2), "1.2 x the retry period"),
    ((15, 2.41, 2), None),
    ((0.5, 0.2, 0.1), ">= 1s"),
    ((15, 10, 0), "must be > 0"),
    ((float("nan"), 10, 2), "must be > 0"),
]


@pytest.mark.parametrize(("values", "error"), TIMINGS)
def test_timing_validation(values: tuple[float, float, float], error: str | None) -> None:
    if error is None:
        Timing(*values)
    else:
        with pytest.raises(ValueError, match=error):
            Timing(*values)


def test_ttl_mapping() -> None:
    assert Timing.from_ttl(10) == Timing(10, 5, 2.5)
    assert Timing.from_ttl(2.5).lease_seconds == 3
    assert Timing(1.5, 1.2, 0.5).lease_seconds == 2


def test_microtime_has_six_digits_and_a_zone() -> None:
    assert format_microtime(WALL) == "2026-11-21T22:00:00.000000Z"
    plus2 = datetime(2026, 1, 1, 2, 0, 0, 5, tzinfo=UTC).astimezone()
    assert format_microtime(plus2) == "2026-01-01T02:00:00.000005Z"
    assert format_time(WALL.replace(microsecond=7)) == "2026-11-21T22:00:00Z"
    with pytest.raises(ValueError):
        format_microtime(datetime(2026, 1, 1))


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-21T22:00:00.000000Z", WALL),
    ("2026-11-21T22:00:00Z", WALL),
    ("2026-11-21T23:00:00+01:00", WALL),
    ("2026-11-21T22:00:00", None),
    ("yesterday", None),
    (None, None),
    ("", None),
])
def test_parse_time(text: object, expected: datetime | None) -> None:
    assert parse_time(text) == expected
