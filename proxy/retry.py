"""What to do after a failed connect to a server: haproxy's `retries` and `option
redispatch`, as one pure decision (no I/O, no clock), used by the L4 and the L7 connect.

haproxy's rules (doc/configuration.txt, `retries` and `option redispatch`; the code is
`back_handle_st_cer` in src/backend.c), which this follows:

- `retries N` is the number of further connect attempts after the first, "on a server
  when a connection either is refused or times out". They go to the SAME server: a
  server being restarted (a database, one nginx) comes back within them.
- Between two attempts on the same server after a refusal, a turn-around delay of one
  second, or `timeout connect` when that is shorter ("to avoid immediate retries on a
  server which is restarting"). After a connect timeout, no delay: the timeout waited.
- `option redispatch` (pylb always has it, as the 2015 template did) moves to another
  server on the LAST retry only (`redispatch -1`, the default). haproxy also redispatches
  at once, on any retry, when the server is no longer usable (marked down), and when the
  choice does not stick a client to a server (round robin, no persistence) and the
  backend has more than one usable server: then "we don't care about this particular
  server", and nobody needs to wait for it.
- When the attempts are used up, the client gets the error (L7: 503; L4: the connection
  is closed).

A redispatch only happens when another usable server is there; otherwise the last retry
goes to the same server (haproxy's redispatch on a one-server backend picks it again), or,
if that server is down too, the client gets the error at once (haproxy: 503, no server).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# haproxy's turn-around delay after a refused connect (src/backend.c: 1000 ms, or
# `timeout connect` if smaller).
TURNAROUND = 1.0


class Next(enum.Enum):
    SAME = "same"  # try the same server again, after `delay`
    REDISPATCH = "redispatch"  # pick another usable server, at once
    GIVE_UP = "give-up"  # attempts used up: the client gets the failure


@dataclass(frozen=True, slots=True)
class Retry:
    next: Next
    delay: float = 0.0


GIVE_UP = Retry(Next.GIVE_UP)
REDISPATCH = Retry(Next.REDISPATCH)


def after_connect_failure(*, attempts: int, retries: int, timed_out: bool,
                          connect_timeout: float, server_usable: bool,
                          others_usable: bool, sticky: bool) -> Retry:
    """The next step after the `attempts`-th connect attempt (1 for the first) failed.

    `retries`: the configured number of retries (`--retries`). `timed_out`: the attempt
    ran into the connect timeout (else it was refused or reset). `server_usable`: the
    server is still up (not marked down by a check or by passive ejection).
    `others_usable`: another usable server is there to redispatch to. `sticky`: the
    choice ties this client to its server (affinity, source hash, leastconn's or
    first's state), so only the last retry may leave it.
    """
    if attempts > retries:
        return GIVE_UP
    last = attempts == retries
    if others_usable and (last or not server_usable or not sticky):
        return REDISPATCH
    if not server_usable:
        return GIVE_UP  # down, and nowhere else to go: haproxy's 503 at once
    if timed_out:
        return Retry(Next.SAME)
    return Retry(Next.SAME, min(TURNAROUND, connect_timeout) if connect_timeout > 0
                 else TURNAROUND)


__all__ = ["GIVE_UP", "REDISPATCH", "TURNAROUND", "Next", "Retry", "after_connect_failure"]
