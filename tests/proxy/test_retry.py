"""The retry decision as a table (proxy/retry.py): haproxy's `retries` + `option
redispatch` after a failed connect."""

from __future__ import annotations

import pytest

from proxy.retry import GIVE_UP, REDISPATCH, Next, Retry, after_connect_failure

SAME_1S = Retry(Next.SAME, 1.0)
SAME_NOW = Retry(Next.SAME, 0.0)

# attempts, retries, timed_out, connect_timeout, server_usable, others_usable, sticky → next
CASES = [
    # One server (a database being restarted): the same server, a second apart.
    (1, 3, False, 5.0, True, False, True, SAME_1S),
    (2, 3, False, 5.0, True, False, True, SAME_1S),
    (3, 3, False, 5.0, True, False, True, SAME_1S),  # last retry, nowhere else: same
    (4, 3, False, 5.0, True, False, True, GIVE_UP),  # 1 + 3 attempts made
    # The turn-around is `timeout connect` when shorter, none after a timeout.
    (1, 3, False, 0.2, True, False, True, Retry(Next.SAME, 0.2)),
    (1, 3, True, 5.0, True, False, True, SAME_NOW),
    (1, 3, False, 0.0, True, False, True, SAME_1S),  # no connect timeout: 1 s
    # Sticky choice, others up: the same server until the last retry, then elsewhere.
    (1, 3, False, 5.0, True, True, True, SAME_1S),
    (2, 3, False, 5.0, True, True, True, SAME_1S),
    (3, 3, False, 5.0, True, True, True, REDISPATCH),
    # Round robin without persistence and another usable server: elsewhere at once.
    (1, 3, False, 5.0, True, True, False, REDISPATCH),
    (1, 3, True, 5.0, True, True, False, REDISPATCH),
    # The server was marked down meanwhile: elsewhere at once, or give up.
    (1, 3, False, 5.0, False, True, True, REDISPATCH),
    (1, 3, False, 5.0, False, False, True, GIVE_UP),
    # No retries configured: the first failure is the answer.
    (1, 0, False, 5.0, True, True, False, GIVE_UP),
    # One retry: it is the last, so it redispatches when it can.
    (1, 1, False, 5.0, True, True, True, REDISPATCH),
    (1, 1, False, 5.0, True, False, True, SAME_1S),
    (2, 1, False, 5.0, True, True, True, GIVE_UP),
]


@pytest.mark.parametrize(
    ("attempts", "retries", "timed_out", "connect_timeout", "server_usable",
     "others_usable", "sticky", "expected"), CASES)
def test_after_connect_failure(attempts: int, retries: int, timed_out: bool,
                               connect_timeout: float, server_usable: bool,
                               others_usable: bool, sticky: bool, expected: Retry) -> None:
    assert after_connect_failure(
        attempts=attempts, retries=retries, timed_out=timed_out,
        connect_timeout=connect_timeout, server_usable=server_usable,
        others_usable=others_usable, sticky=sticky) == expected


def test_a_restart_is_waited_for_up_to_retries_turnarounds() -> None:
    """With the defaults (3 retries, timeout connect 5 s) a one-server backend refusing
    connects is retried for 3 s before the client is told."""
    waited, attempts = 0.0, 1
    while True:
        r = after_connect_failure(attempts=attempts, retries=3, timed_out=False,
                                  connect_timeout=5.0, server_usable=True,
                                  others_usable=False, sticky=False)
        if r.next is Next.GIVE_UP:
            break
        waited += r.delay
        attempts += 1
    assert (attempts, waited) == (4, 3.0)
