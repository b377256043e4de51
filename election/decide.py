"""The election's decision step: pure functions over plain data, no I/O, no clock.

This is client-go's `tryAcquireOrRenew` (tools/leaderelection/leaderelection.go) with the
network calls lifted out. The driver (election.elector) reads the lock, hands the record
it got to `decide` together with the local monotonic time, and writes whatever record
`decide` returns. Everything that makes the algorithm safe lives here:

- A lease is judged expired only by the *local* clock: `observed_at` is when this process
  last saw the record change, and the holder is presumed alive until `observed_at +
  leaseDurationSeconds`. The holder's `renewTime` is never compared with our clock, so
  clocks may disagree by any amount between pods (what must hold is that they run at
  about the same *rate*: the leader gives up after RenewDeadline, followers wait the
  longer LeaseDuration).
- An empty `holderIdentity` (a released lease) may be taken at once.
- `leaseTransitions` counts changes of holder and `acquireTime` is when the current holder
  got the lease; a leader renewing keeps both.

Times written into records are wall-clock UTC datetimes supplied by the caller. No
function here reads a clock; `utcnow` is the wall clock the callers (election.elector,
election.publish) inject by default, kept beside the time formats it feeds.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime

# client-go's defaults (leaderelection.go, and kube-controller-manager's flags): a
# follower waits 15 s after the last change it saw; a leader that cannot renew for 10 s
# gives up; attempts every 2 s, acquisition jittered by up to 1.2 x that.
DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_DEADLINE = 10.0
DEFAULT_RETRY_PERIOD = 2.0
JITTER_FACTOR = 1.2


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds. Rejected unless lease_duration > renew_deadline > 1.2 x retry_period, as
    client-go rejects them: the leader must give up before any follower may take over,
    and must get more than one (jittered) attempt before it gives up."""

    lease_duration: float = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD

    def __post_init__(self) -> None:
        for name in ("lease_duration", "renew_deadline", "retry_period"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"election {name.replace('_', ' ')} must be > 0, got {value}")
        if self.lease_duration < 1:
            # leaseDurationSeconds is a whole number of seconds in both lock formats.
            raise ValueError(f"election lease duration must be >= 1s, got {self.lease_duration}")
        if not self.lease_duration > self.renew_deadline:
            raise ValueError(
                f"election lease duration ({self.lease_duration}s) must be greater than "
                f"the renew deadline ({self.renew_deadline}s)")
        if not self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise ValueError(
                f"election renew deadline ({self.renew_deadline}s) must be greater than "
                f"{JITTER_FACTOR} x the retry period ({self.retry_period}s)")

    @classmethod
    def from_ttl(cls, ttl: float) -> Timing:
        """The 2016 leader-elector sidecar's mapping of --ttl: lease = ttl, renew
        deadline = ttl/2, retry = ttl/4."""
        return cls(lease_duration=ttl, renew_deadline=ttl / 2, retry_period=ttl / 4)

    @property
    def lease_seconds(self) -> int:
        """What goes in leaseDurationSeconds: whole seconds, rounded up so followers never
        wait less than configured (client-go truncates, which can break the margin over
        the renew deadline: lease 1.5 s, renew 1.2 s would make followers wait 1 s)."""
        return math.ceil(self.lease_duration)


@dataclass(frozen=True, slots=True)
class Record:
    """A leader election record, whichever lock stores it (Lease spec or the legacy
    Endpoints annotation)."""

    holder: str = ""
    lease_seconds: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0


@dataclass(frozen=True, slots=True)
class Observation:
    """The last record this process saw, and when (local monotonic seconds) it saw it
    change."""

    record: Record
    observed_at: float

    def valid_at(self, now: float) -> bool:
        """Whether the holder is presumed alive at local time `now`."""
        return self.observed_at + self.record.lease_seconds > now


class Verdict(enum.Enum):
    CREATE = "create"  # no lock object: create it with us as holder
    ACQUIRE = "acquire"  # take over (expired, released) with an update
    RENEW = "renew"  # we hold it: update renewTime
    FOLLOW = "follow"  # someone else holds a valid lease: do nothing


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    observation: Observation | None  # what to remember (None only for CREATE)
    write: Record | None  # the record to create or update; None for FOLLOW


def observe(previous: Observation | None, record: Record, now: float) -> Observation:
    """Remember `record`; the observation time moves only when the record changed."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def decide(current: Record | None, previous: Observation | None, now: float,
           wall: datetime, identity: str, timing: Timing) -> Decision:
    """Steps 2-5 of tryAcquireOrRenew, given the record just read (None: not found)."""
    if current is None:
        return Decision(Verdict.CREATE, None, Record(
            holder=identity, lease_seconds=timing.lease_seconds, acquire_time=wall,
            renew_time=wall, transitions=0))
    seen = observe(previous, current, now)
    if current.holder and current.holder != identity and seen.valid_at(now):
        return Decision(Verdict.FOLLOW, seen, None)
    if current.holder == identity:
        write = replace(current, lease_seconds=timing.lease_seconds, renew_time=wall)
        return Decision(Verdict.RENEW, seen, write)
    return Decision(Verdict.ACQUIRE, seen, Record(
        holder=identity, lease_seconds=timing.lease_seconds, acquire_time=wall,
        renew_time=wall, transitions=current.transitions + 1))


def fast_renew(observed: Observation | None, now: float, wall: datetime, identity: str,
               timing: Timing) -> Record | None:
    """Step 1: a leader whose lease is still valid by its own clock renews from its cached
    record without reading first. None means: take the slow path (read, then decide)."""
    if observed is None or observed.record.holder != identity or not observed.valid_at(now):
        return None
    return replace(observed.record, lease_seconds=timing.lease_seconds, renew_time=wall)


def release(current: Record, identity: str, wall: datetime) -> Record | None:
    """The record that gives the lease up (empty holder, 1 s), or None when we do not hold
    it. Transitions are kept; the next holder increments them."""
    if current.holder != identity:
        return None
    return Record(holder="", lease_seconds=1, acquire_time=wall, renew_time=wall,
                  transitions=current.transitions)


def utcnow() -> datetime:
    """The default wall clock of the callers (never read by the decisions above)."""
    return datetime.now(UTC)


def format_microtime(t: datetime) -> str:
    """metav1.MicroTime as the API server parses it: six fractional digits and a zone."""
    return _utc(t).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_time(t: datetime) -> str:
    """metav1.Time (RFC 3339, whole seconds, UTC), as the legacy Endpoints lock wrote it."""
    return _utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime | None:
    """RFC 3339 with or without a fraction; None for a missing or unreadable time (times
    are carried along, never used to decide, so a bad one is not fatal)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        return None
    return t.astimezone(UTC)


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("election times must carry a zone")
    return t.astimezone(UTC)
