"""What an HTTP/1.1 request (proxy.http.server) and an HTTP/2 stream (proxy.http.h2server)
share on the way to a server of a protected backend: the per-client rate limit
(proxy.ratelimit) and the per-server slot or place in the queue (proxy.queue), with their
counters. Each caller keeps what differs — how it answers (an HTTP/1.1 response, h2
frames, a gRPC status) — and calls these only when the backend has a limiter or a gate, so
a backend without limits costs neither caller a call.

A request holds `Server | Ticket | None` (its slot, its place in the queue, or nothing);
`free` gives back whichever it holds.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

from proxy.balance import Balancer, normalize_client_ip
from proxy.queue import Key, Ticket, Waiter
from proxy.ratelimit import Limiter, retry_after
from pylb.counters import Counters, Stats
from pylb.failures import Failure
from pylb.model import Server


def rate_limited(limiter: Limiter, client_ip: str, fe: Counters, stats: Stats,
                 backend: str) -> int:
    """lb.rate-limit at a request's start: 0 when `client_ip` may go; else the
    Retry-After seconds to answer 429 with, the refusal counted in dreq (frontend and
    backend)."""
    wait = limiter.check(normalize_client_ip(client_ip))
    if not wait:
        return 0
    fe.denied_req += 1
    stats.backend(backend).denied_req += 1
    return retry_after(wait)


def admit(owner: Waiter, balancer: Balancer, server: Server | None, client_ip: str,
          exclude: Collection[Key], stats: Stats, backend: str
          ) -> Server | Ticket | Failure | None:
    """`balancer.gate` (set) on the server `pick` chose: that server, its slot taken; a
    Ticket (the owner's `queue_granted` or `queue_expired` comes later); a refusal to
    answer (a Failure, counted already); or None: no server to wait for (the caller
    answers as for no server)."""
    gate = balancer.gate
    assert gate is not None
    got = gate.admit(owner, balancer, server, client_ip,
                     cast("frozenset[Key] | set[Key] | tuple[()]", exclude))
    if type(got) is Failure:
        if got is Failure.NO_SERVER:
            return None
        refused(stats, backend, got)
    return got


def refused(stats: Stats, backend: str, failure: Failure) -> None:
    """Count a request the queue refused (full, timed out, its backend gone)."""
    stats.fail(failure)
    stats.backend(backend).conn_errors += 1


def free(balancer: Balancer | None, held: Server | Ticket | None) -> None:
    """Give back a request's slot (the next waiter gets it now) or its place in the
    queue."""
    gate = balancer.gate if balancer is not None else None
    if gate is None or held is None or balancer is None:
        return
    if type(held) is Ticket:
        gate.cancel(held)
    else:
        gate.release(cast(Server, held), balancer)
