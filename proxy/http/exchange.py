"""One HTTP exchange (a request and its response) as data: its states, the legal
transitions between them, and the decisions taken along the way. No I/O, no clock, no
parser: an exchange of an HTTP/1.1 connection (proxy.http.server) and, later, of an h2
stream go through the same table.

Rule (h11's `_state.py` rule 1): everything that decides which state an exchange is in,
or what happens at the end of one, lives in this file — the Protocol carries it out.

Theory of operation. An exchange is two halves, the request (read from the client and
forwarded) and the response (from the server, or our own), and its state names where
each half is:

    state      request            response           reading the client
    IDLE       -                  -                  waits for a head (keep-alive)
    REQUEST    being read         none yet           body forwarded as it comes
    WAITING    read whole         none yet           paused: the next request waits
    RESPONSE   read whole         being sent
    EARLY      being read         being sent         the server answered early (RFC 9112
                                                     §9.3: the connection closes after)
    DRAIN      being read         sent whole         the rest of the body is dropped
    DONE       read whole         sent whole         -> IDLE (keep-alive) or CLOSED
    TUNNEL     after a 101, bytes both ways until both sides have closed
    CLOSED     the connection is closing: parser events still coming are ignored
               (every event leaves it CLOSED)

The table `TRANSITIONS` is the whole automaton: (state, event) → next state. A pair not
in it is a bug of ours (the Protocol indexes the table directly — `ON`, the same table
by event — so an illegal step raises KeyError, which ends that connection as an
internal error, never silently).
CLOSE is legal from every state, and CLOSED absorbs every event.

The decisions are pure functions over plain facts, each tested as a table
(tests/proxy/http/test_exchange.py): `keep_alive` (may the connection carry another
request after this response: RFC 9112 §9.3, haproxy's `option http-keep-alive`),
`may_resend` (may this request go to a server again after a failure: RFC 9110 §9.2.2,
haproxy's `retries`/`retry-on conn-failure empty-response`), and `termination` (the
two-letter termination state of haproxy's log for a failure in a state). The status a
client sees for each failure is `pylb.failures.Failure.status`, defined once there.
"""

from __future__ import annotations

import enum

from pylb.failures import Failure


class State(enum.IntEnum):
    # IntEnum, not Enum: hashing an IntEnum member is int's C hash (an Enum's is a Python
    # call), and the Protocol looks the table up a few times per request.
    IDLE = 0
    REQUEST = 1
    WAITING = 2
    RESPONSE = 3
    EARLY = 4
    DRAIN = 5
    DONE = 6
    TUNNEL = 7
    CLOSED = 8


class Event(enum.IntEnum):
    HEAD = 0  # a request head was read (and is being routed)
    REQUEST_END = 1  # the request's last byte was read
    RESPONSE_HEAD = 2  # the server's final (non-1xx) response head
    RESPONSE_END = 3  # the response's last byte went out (or is in the write buffer)
    ANSWER = 4  # we answered in the server's place, whole (local page, error, redirect)
    RETRACT = 5  # a response head not yet sent is taken back (a 502 goes in its place)
    SWITCH = 6  # 101 Switching Protocols: from now on a tunnel
    NEXT = 7  # keep-alive: ready for the next request
    CLOSE = 8  # the connection is closing (from any state)


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.IDLE, E.HEAD): S.REQUEST,
    (S.REQUEST, E.REQUEST_END): S.WAITING,
    (S.REQUEST, E.RESPONSE_HEAD): S.EARLY,
    (S.REQUEST, E.ANSWER): S.DRAIN,
    (S.WAITING, E.RESPONSE_HEAD): S.RESPONSE,
    (S.WAITING, E.ANSWER): S.DONE,
    (S.RESPONSE, E.RESPONSE_END): S.DONE,
    (S.RESPONSE, E.RETRACT): S.WAITING,
    (S.RESPONSE, E.SWITCH): S.TUNNEL,
    (S.EARLY, E.REQUEST_END): S.RESPONSE,
    (S.EARLY, E.RESPONSE_END): S.DRAIN,
    (S.EARLY, E.RETRACT): S.REQUEST,
    (S.EARLY, E.SWITCH): S.TUNNEL,
    (S.DRAIN, E.REQUEST_END): S.DONE,
    (S.DONE, E.NEXT): S.IDLE,
    **{(s, E.CLOSE): S.CLOSED for s in S},
    # CLOSED absorbs every event: a response still arriving for a connection we have
    # closed (or cut) changes nothing; its accounts are closed once, when it goes.
    **{(S.CLOSED, e): S.CLOSED for e in E},
}
del S, E

# The same table by event: `ON[event][state]` is the next state (one dict lookup keyed by
# a state, half the cost of building and hashing a pair; the Protocol's hot path uses it).
ON: dict[Event, dict[State, State]] = {
    e: {s: n for (s, ev), n in TRANSITIONS.items() if ev is e} for e in Event}

# States in which the request has been read whole (a tunnel carries whatever is left of
# it), and those in which the response is whole (sent, or handed to the transport); the
# Protocol asks these instead of keeping a flag for each.
REQUEST_WHOLE = frozenset({State.WAITING, State.RESPONSE, State.DONE, State.TUNNEL})
RESPONSE_WHOLE = frozenset({State.DRAIN, State.DONE, State.TUNNEL})


class IllegalTransition(Exception):
    pass


def step(state: State, event: Event) -> State:
    """The state after `event` in `state` (for callers off the hot path and for tests)."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransition(f"{event.name} in {state.name}") from None


def keep_alive(*, client_keep_alive: bool, request_whole: bool, close_delimited: bool,
               upgrade: bool, must_close: bool, stopping: bool) -> bool:
    """May the client connection carry another request once this response is sent?

    - `client_keep_alive`: the request allows it: HTTP/1.1 without `Connection: close`,
      or HTTP/1.0 with `Connection: keep-alive` (RFC 9112 §9.3, the parser decides).
    - `request_whole`: the request has been read to its end when the response ends. If
      not, the rest of its body would arrive where the next request should: close
      (RFC 9112 §9.3: a server that responds before the whole request "ought to" close;
      haproxy closes too). A local answer to a request with no body counts as whole.
    - `close_delimited`: this response's body ends when the connection closes (an
      HTTP/1.0 client gets no chunked encoding: RFC 9112 §6.3 item 8).
    - `upgrade`: the request asked to switch protocols, or the response is a 101: the
      client's next bytes are not HTTP to us (RFC 9110 §7.8).
    - `must_close`: the connection was already condemned (the client half-closed, a
      timeout, an earlier error).
    - `stopping`: this worker is shutting down (haproxy's soft-stop: `Connection: close`
      on the next response).

    The server's own `Connection: close` is not a reason: it closes its side only, and
    the client's connection stays up (haproxy `option http-keep-alive`, the default).
    """
    return (client_keep_alive and request_whole and not close_delimited and not upgrade
            and not must_close and not stopping)


def may_resend(*, idempotent: bool, body_kept: bool, response_started: bool,
               reused_connection: bool, attempts: int, retries: int) -> bool:
    """May a request whose server connection closed before any response byte be sent
    again, on a new connection?

    Only when it is the keep-alive race (`reused_connection`: the server closed an idle
    pooled connection as the request went; on a new connection the close is an answer),
    nothing of a response has been seen (`response_started`), the method is idempotent
    (RFC 9110 §9.2.2: "a user agent ... can automatically retry" such a request "if the
    underlying connection was closed before the response was received"; RFC 9112 §9.3.1),
    the body is still at hand to replay (`body_kept`), and attempts are left (haproxy's
    `retries`; a connect failure, where nothing was sent, is retried whatever the
    method — that path is the balancer's).
    """
    return (reused_connection and not response_started and idempotent and body_kept
            and attempts < retries)


# The first letter of haproxy's termination state: who (or what) ended the exchange
# (haproxy configuration manual, 8.5 "Session state at disconnection").
_WHO: dict[Failure, str] = {
    Failure.BAD_REQUEST: "P",  # the proxy refused the request
    Failure.URI_TOO_LONG: "P",
    Failure.HEADERS_TOO_LARGE: "P",
    Failure.FORBIDDEN: "P",
    Failure.NO_ROUTE: "P",
    Failure.REQUEST_TIMEOUT: "c",  # the client's timeout expired
    Failure.CLIENT_TIMEOUT: "c",
    Failure.CLIENT_ABORT: "C",  # the client closed or reset
    Failure.NO_SERVER: "S",  # haproxy logs "SC" for no server available
    Failure.QUEUE_TIMEOUT: "s",  # "sQ": expired in the queue (timeout queue)
    Failure.QUEUE_FULL: "S",  # "SQ": refused at the queue's limit
    Failure.RATE_LIMITED: "P",  # "PR": denied by the proxy (a rate limit's 429)
    Failure.BODY_TIMEOUT: "c",  # "cR": the body not whole in --timeout-request-body
    Failure.CONNECT_FAILED: "S",
    Failure.BACKEND_RESET: "S",
    Failure.CONNECT_TIMEOUT: "s",  # the server's (connect) timeout expired
    Failure.BACKEND_TIMEOUT: "s",
    Failure.BAD_RESPONSE: "P",  # the proxy refused the server's response ("PH")
    Failure.INTERNAL: "I",
}

# The second letter: the phase the exchange was in.
_PHASE: dict[State, str] = {
    State.IDLE: "R",  # waiting for a (complete) request
    State.REQUEST: "R",
    State.WAITING: "H",  # waiting for the response headers
    State.RESPONSE: "D",  # sending data
    State.EARLY: "D",
    State.DRAIN: "L",  # the response was sent, the rest of the request was awaited
    State.DONE: "L",
    State.TUNNEL: "D",
    State.CLOSED: "D",
}


def termination(failure: Failure | None, state: State, connecting: bool) -> str:
    """haproxy's two-letter termination state: "--" for an exchange that ended
    normally; else who ended it (`_WHO`) and in which phase ("C" while connecting).

    A failure in the request phase of a request already read in full and being
    connected is a connect-phase failure: "SC" for a refused connection, "sC" for a
    connect timeout, as haproxy logs them."""
    if failure is None:
        return "--"
    if failure is Failure.QUEUE_TIMEOUT or failure is Failure.QUEUE_FULL:
        return _WHO[failure] + "Q"  # it never left the queue for a server
    phase = "C" if connecting or failure.column == "econ" else _PHASE[state]
    if failure.column == "ereq" and failure is not Failure.CLIENT_TIMEOUT \
            and failure is not Failure.CLIENT_ABORT:
        phase = "R"  # a bad or late request is refused in the request phase
    return _WHO[failure] + phase
