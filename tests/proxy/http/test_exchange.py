"""The exchange's automaton and decisions, as tables to check against RFC 9112/9110 and
haproxy's documented behaviour (proxy.http.exchange)."""

from __future__ import annotations

import pytest

from proxy.http.exchange import (
    REQUEST_WHOLE,
    RESPONSE_WHOLE,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    keep_alive,
    may_resend,
    step,
    termination,
)
from pylb.failures import Failure

S, E = State, Event

# Every path an exchange can take, event by event, from IDLE.
PATHS = [
    # a GET answered by the server, keep-alive
    ("GET, 200", [E.HEAD, E.REQUEST_END, E.RESPONSE_HEAD, E.RESPONSE_END, E.NEXT],
     S.IDLE),
    # a POST whose body is still coming when the server answers (RFC 9112 §9.3); the
    # response ends first: the rest of the body is dropped, then the connection closes
    ("early answer, ends first", [E.HEAD, E.RESPONSE_HEAD, E.RESPONSE_END, E.CLOSE],
     S.CLOSED),
    ("early answer, body ends first", [E.HEAD, E.RESPONSE_HEAD, E.REQUEST_END,
                                       E.RESPONSE_END], S.DONE),
    # no route: our 404 goes out before the parser reports the end of a GET
    ("local answer", [E.HEAD, E.ANSWER, E.REQUEST_END, E.NEXT], S.IDLE),
    # no server after the request was read whole: 503
    ("503 after the request", [E.HEAD, E.REQUEST_END, E.ANSWER, E.NEXT], S.IDLE),
    # a bad chunk in a response not yet sent: taken back, a 502 in its place
    ("retracted", [E.HEAD, E.REQUEST_END, E.RESPONSE_HEAD, E.RETRACT, E.ANSWER],
     S.DONE),
    ("websocket", [E.HEAD, E.REQUEST_END, E.RESPONSE_HEAD, E.SWITCH, E.CLOSE], S.CLOSED),
    ("client gone mid-request", [E.HEAD, E.CLOSE], S.CLOSED),
]


@pytest.mark.parametrize(("name", "events", "end"), PATHS, ids=[p[0] for p in PATHS])
def test_paths(name: str, events: list[Event], end: State) -> None:
    state = S.IDLE
    for ev in events:
        state = step(state, ev)
    assert state is end


ILLEGAL = [
    (S.IDLE, E.REQUEST_END),  # an end without a head
    (S.IDLE, E.RESPONSE_HEAD),  # a response nobody asked for
    (S.REQUEST, E.HEAD),  # a pipelined head waits in the queue, it never starts here
    (S.WAITING, E.HEAD),
    (S.RESPONSE, E.HEAD),
    (S.RESPONSE, E.ANSWER),  # a response under way cannot be replaced (it is cut)
    (S.WAITING, E.RESPONSE_END),  # an end without a head
    (S.DONE, E.HEAD),  # NEXT first: the exchange's accounts are closed before
    (S.TUNNEL, E.HEAD),  # after 101 the bytes are not HTTP
    (S.DRAIN, E.RESPONSE_HEAD),
]


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_illegal(state: State, event: Event) -> None:
    assert (state, event) not in TRANSITIONS
    with pytest.raises(IllegalTransition):
        step(state, event)


def test_close_from_everywhere_and_every_state_reachable() -> None:
    assert all(TRANSITIONS[s, E.CLOSE] is S.CLOSED for s in S)
    assert all(TRANSITIONS[S.CLOSED, e] is S.CLOSED for e in E)  # absorbing
    reached = {S.IDLE} | set(TRANSITIONS.values())
    assert reached == set(S)


def test_whole_sets_follow_the_table() -> None:
    # The request is whole exactly where REQUEST_END can no longer come.
    for s in S:
        if s in (S.TUNNEL, S.CLOSED, S.IDLE):  # a tunnel carries the rest
            continue
        assert (s in REQUEST_WHOLE) == ((s, E.REQUEST_END) not in TRANSITIONS), s
    # The response is whole where neither a head nor an end can come any more.
    for s in (S.REQUEST, S.WAITING, S.RESPONSE, S.EARLY, S.DRAIN, S.DONE):
        can = (s, E.RESPONSE_END) in TRANSITIONS or (s, E.RESPONSE_HEAD) in TRANSITIONS \
            or (s, E.ANSWER) in TRANSITIONS
        assert (s in RESPONSE_WHOLE) == (not can), s


K = dict(client_keep_alive=True, request_whole=True, close_delimited=False, upgrade=False,
         must_close=False, stopping=False)
KEEP_ALIVE = [
    # (what differs from a plain HTTP/1.1 GET answered with a length, keep-alive?)
    ({}, True),  # RFC 9112 §9.3: HTTP/1.1 persists by default
    ({"client_keep_alive": False}, False),  # Connection: close, or HTTP/1.0 without
    ({"request_whole": False}, False),  # answered before the body ended (§9.3)
    ({"close_delimited": True}, False),  # body ends at close (§6.3 item 8)
    ({"upgrade": True}, False),  # 101, or an Upgrade request (RFC 9110 §7.8)
    ({"must_close": True}, False),  # half-closed client, timeout, earlier error
    ({"stopping": True}, False),  # soft-stop: haproxy says close on the next response
]


@pytest.mark.parametrize(("diff", "keep"), KEEP_ALIVE)
def test_keep_alive(diff: dict[str, bool], keep: bool) -> None:
    assert keep_alive(**{**K, **diff}) is keep


R = dict(idempotent=True, body_kept=True, response_started=False, reused_connection=True,
         attempts=0, retries=3)
RESEND = [
    ({}, True),  # the keep-alive race on a GET: send again (RFC 9110 §9.2.2)
    ({"reused_connection": False}, False),  # a new connection's close is an answer
    ({"response_started": True}, False),  # part of a response came: never twice
    ({"idempotent": False}, False),  # POST: the server may have acted on it
    ({"body_kept": False}, False),  # the body is too big to keep for a replay
    ({"attempts": 3}, False),  # retries spent (haproxy `retries`)
    ({"attempts": 2}, True),
]


@pytest.mark.parametrize(("diff", "ok"), RESEND)
def test_may_resend(diff: dict[str, object], ok: bool) -> None:
    assert may_resend(**{**R, **diff}) is ok  # type: ignore[arg-type]


TERMINATION = [
    # haproxy manual 8.5: who ended it, then in which phase
    (None, S.DONE, False, "--"),
    (Failure.BAD_REQUEST, S.IDLE, False, "PR"),
    (Failure.HEADERS_TOO_LARGE, S.REQUEST, False, "PR"),
    (Failure.REQUEST_TIMEOUT, S.IDLE, False, "cR"),
    (Failure.NO_ROUTE, S.REQUEST, False, "PR"),
    (Failure.NO_SERVER, S.REQUEST, False, "SC"),  # haproxy's 503 "SC--"
    (Failure.CONNECT_FAILED, S.WAITING, True, "SC"),
    (Failure.CONNECT_TIMEOUT, S.WAITING, True, "sC"),
    (Failure.BACKEND_TIMEOUT, S.WAITING, False, "sH"),  # haproxy's 504 "sH--"
    (Failure.BACKEND_RESET, S.WAITING, False, "SH"),
    (Failure.BACKEND_RESET, S.RESPONSE, False, "SD"),
    (Failure.BAD_RESPONSE, S.WAITING, False, "PH"),  # haproxy's invalid response "PH--"
    (Failure.CLIENT_TIMEOUT, S.REQUEST, False, "cR"),
    (Failure.CLIENT_TIMEOUT, S.RESPONSE, False, "cD"),
    (Failure.CLIENT_ABORT, S.RESPONSE, False, "CD"),
    (Failure.CLIENT_ABORT, S.WAITING, False, "CH"),
    (Failure.INTERNAL, S.RESPONSE, False, "ID"),
    (Failure.QUEUE_TIMEOUT, S.WAITING, False, "sQ"),  # haproxy's "sQ": expired in queue
    (Failure.QUEUE_FULL, S.REQUEST, False, "SQ"),
    (Failure.RATE_LIMITED, S.REQUEST, False, "PR"),  # a deny: "PR--"
    (Failure.BODY_TIMEOUT, S.REQUEST, False, "cR"),
]


@pytest.mark.parametrize(("failure", "state", "connecting", "code"), TERMINATION)
def test_termination(failure: Failure | None, state: State, connecting: bool,
                     code: str) -> None:
    assert termination(failure, state, connecting) == code


def test_every_failure_has_a_termination() -> None:
    for f in Failure:
        assert len(termination(f, S.RESPONSE, False)) == 2
