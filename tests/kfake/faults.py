"""Fault injection: rules matched per request (method, path, verb), applied once, N times or
always. Terminal actions answer the request themselves (a Status, a plain-text body, a hang, a
reset); `Delay` and `Headers` add to a normal answer; `WatchFault` shapes a watch stream
(EOF or reset after N events, a truncated line, a delay before each event, an empty body).
See KUBE_API_FAKE.md section 6 for the catalogue these reproduce.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.kfake import errors
from tests.kfake.errors import ApiError

ALWAYS: int | None = None

APF_429_BODY = "Too many requests, please try again later.\n"


@dataclass(frozen=True)
class Status:
    """Answer with an error (a JSON Status; Retry-After when it says so)."""

    error: ApiError


@dataclass(frozen=True)
class Text:
    """Answer with a non-JSON body, e.g. API Priority and Fairness's plain-text 429."""

    code: int = 429
    body: str = APF_429_BODY
    retry_after: int = 1
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Forbid:
    """Answer 403 Forbidden, worded for the request's verb and resource as RBAC words it."""

    user: str = "system:serviceaccount:default:pylb"


@dataclass(frozen=True)
class Delay:
    """Sleep before answering normally (delayed headers)."""

    seconds: float


@dataclass(frozen=True)
class Hang:
    """Accept the request and never send a byte (until the server stops or drops watches)."""


@dataclass(frozen=True)
class Reset:
    """Abort the connection (RST) without an answer.

    aiohttp's client (and so kubernetes-asyncio) retries an idempotent request (GET, PUT,
    DELETE) once on a reset or disconnect, as RFC 9112 allows: a reset with `count=1` is
    invisible to those; use `count=2` or more to see an error.
    """


@dataclass(frozen=True)
class Headers:
    """Add headers (e.g. `Warning`) to the normal answer."""

    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class WatchFault:
    """Shape a watch stream: after `after` events, end it the given way.

    `end`: "eof" (clean end), "truncate" (half a line, then a clean end), "reset" (abort).
    `event_delay` sleeps before each event. `after=0` with "eof" is an empty 200.
    `cut_after` ends the stream cleanly after that many seconds, whatever `timeoutSeconds`
    said and with no bookmark before it (a proxy's idle or age limit).
    """

    after: int | None = None
    end: str = "eof"
    event_delay: float = 0.0
    cut_after: float | None = None


@dataclass(frozen=True)
class CutBody:
    """Send the headers and half the body of a normal (non-watch) answer, then reset."""


Action = Status | Text | Forbid | Delay | Hang | Reset | Headers | WatchFault | CutBody


def abort(transport: Any) -> None:
    """Close with RST rather than FIN (SO_LINGER 0), as a crashed peer or middlebox does."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# ---- builders, for readable tests -----------------------------------------------------------


def http(code: int, message: str = "", retry_after: int | None = None) -> Status | Forbid:
    """The JSON Status the real server sends for `code` (401, 403, 429, 500, 503, 504...)."""
    if code == 403:
        return Forbid()
    if code == 401:
        err = errors.unauthorized()
    elif code == 429:
        err = errors.too_many_requests(1 if retry_after is None else retry_after)
    elif code == 500:
        err = errors.internal_error(message or "fake failure")
    elif code == 503:
        err = errors.service_unavailable(message or "apiserver is shutting down")
    elif code == 504:
        err = errors.timeout(message or errors.REQUEST_TIMEOUT)
    else:
        err = errors.status(code, "", message or f"fake error {code}")
    if retry_after is not None and code != 429:
        err = errors.status(code, err.body.get("reason", ""), err.body["message"],
                            retry_after=retry_after)
    return Status(err)


def text429(retry_after: int = 1) -> Text:
    return Text(429, APF_429_BODY, retry_after)


def delay(seconds: float) -> Delay:
    return Delay(seconds)


def hang() -> Hang:
    return Hang()


def reset() -> Reset:
    return Reset()


def warning(text: str) -> Headers:
    return Headers((("Warning", f'299 - "{text}"'),))


def eof_after(n: int) -> WatchFault:
    return WatchFault(after=n, end="eof")


def truncate_after(n: int) -> WatchFault:
    return WatchFault(after=n, end="truncate")


def reset_after(n: int) -> WatchFault:
    return WatchFault(after=n, end="reset")


def event_delay(seconds: float) -> WatchFault:
    return WatchFault(event_delay=seconds)


def cut_after(seconds: float) -> WatchFault:
    return WatchFault(cut_after=seconds)


def cut_body() -> CutBody:
    return CutBody()


# ---- the rule engine ------------------------------------------------------------------------


@dataclass
class Rule:
    action: Action
    method: str | None = None
    path_re: str | None = None
    verb: str | None = None
    watch: bool | None = None
    count: int | None = 1
    hits: int = 0

    def matches(self, method: str, path: str, verb: str) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.verb is not None and self.verb != verb:
            return False
        if self.watch is not None and self.watch != (verb == "watch"):
            return False
        return self.path_re is None or re.search(self.path_re, path) is not None

    @property
    def spent(self) -> bool:
        return self.count is not None and self.hits >= self.count


@dataclass
class Plan:
    """What the rules decided for one request."""

    terminal: Action | None = None
    delay: float = 0.0
    headers: list[tuple[str, str]] = field(default_factory=list)
    watch: WatchFault | None = None
    cut_body: bool = False


class Faults:
    """Ordered fault rules. `add()` one; every matching rule with hits left fires.

    `tls_failures`: how many coming TLS handshakes to fail (with a handshake_failure alert;
    a TLS server only).
    """

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.tls_failures = 0

    def add(
        self,
        action: Action,
        *,
        method: str | None = None,
        path_re: str | None = None,
        verb: str | None = None,
        watch: bool | None = None,
        count: int | None = 1,
    ) -> Rule:
        """`verb` is get/list/watch/create/update/patch/delete; `count=None` is always."""
        rule = Rule(action, method, path_re, verb, watch, count)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()
        self.tls_failures = 0

    def take_tls_failure(self) -> bool:
        if self.tls_failures > 0:
            self.tls_failures -= 1
            return True
        return False

    def plan(self, method: str, path: str, verb: str) -> Plan:
        plan = Plan()
        for rule in self.rules:
            if plan.terminal is not None:
                break
            if isinstance(rule.action, WatchFault) and verb != "watch":
                continue
            if isinstance(rule.action, CutBody) and verb == "watch":
                continue
            if not rule.matches(method, path, verb):
                continue
            rule.hits += 1
            act: Any = rule.action
            if isinstance(act, Delay):
                plan.delay += act.seconds
            elif isinstance(act, Headers):
                plan.headers.extend(act.headers)
            elif isinstance(act, WatchFault):
                plan.watch = act
            elif isinstance(act, CutBody):
                plan.cut_body = True
            else:
                plan.terminal = act
        return plan
