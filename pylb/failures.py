"""Why a request or connection failed: one enum, mapped here and only here to what a client
sees (a status code), to the stats page's error columns and to metric labels.

Envoy names upstream failures the same way (ConnectFailed, NoHealthyUpstream, ...).
"""

from __future__ import annotations

import enum


class Failure(enum.Enum):
    # value: (status code for an HTTP client, stats column, metric label)
    BAD_REQUEST = (400, "ereq", "bad_request")
    REQUEST_TIMEOUT = (408, "ereq", "request_timeout")
    URI_TOO_LONG = (414, "ereq", "uri_too_long")
    HEADERS_TOO_LARGE = (431, "ereq", "headers_too_large")
    FORBIDDEN = (403, "dreq", "forbidden")
    NO_ROUTE = (404, "ereq", "no_route")
    NO_SERVER = (503, "econ", "no_server")
    QUEUE_TIMEOUT = (503, "econ", "queue_timeout")  # waited `timeout queue` for a slot
    QUEUE_FULL = (503, "econ", "queue_full")  # the backend's queue at --queue-limit
    RATE_LIMITED = (429, "dreq", "rate_limited")  # a client over lb.rate-limit
    BODY_TIMEOUT = (408, "ereq", "body_timeout")  # body not whole in --timeout-request-body
    CONNECT_FAILED = (502, "econ", "connect_failed")
    CONNECT_TIMEOUT = (504, "econ", "connect_timeout")
    BACKEND_RESET = (502, "eresp", "backend_reset")
    BACKEND_TIMEOUT = (504, "eresp", "backend_timeout")
    BAD_RESPONSE = (502, "eresp", "bad_response")
    CLIENT_TIMEOUT = (408, "ereq", "client_timeout")
    CLIENT_ABORT = (0, "ereq", "client_abort")  # nobody left to answer
    INTERNAL = (500, "eresp", "internal")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def column(self) -> str:
        return self.value[1]

    @property
    def label(self) -> str:
        return self.value[2]


REASON_PHRASES: dict[int, bytes] = {
    301: b"Moved Permanently",
    302: b"Found",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
