"""Responses pylb writes itself: error pages and redirects (complete HTTP/1.1 messages)."""

from __future__ import annotations

from http import HTTPStatus

from pylb.failures import REASON_PHRASES

_PAGE = b"<html><body><h1>%d %s</h1>\n%s\n</body></html>\n"
_TEXT: dict[int, bytes] = {
    400: b"Your browser sent an invalid request.",
    403: b"Request forbidden by administrative rules.",
    404: b"The requested URL was not found on this server.",
    408: b"Your browser didn't send a complete request in time.",
    414: b"The requested URL is too long.",
    429: b"Too many requests: slow down.",
    431: b"The request header fields are too large.",
    500: b"An internal server error occurred.",
    502: b"The server returned an invalid or incomplete response.",
    503: b"No server is available to handle this request.",
    504: b"The server didn't respond in time.",
}


def reason(status: int) -> bytes:
    phrase = REASON_PHRASES.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b"Unknown"
    return phrase


def error_response(status: int, body: bytes | None = None, *, close: bool = True,
                   head_only: bool = False, extra: bytes = b"") -> bytes:
    """A complete response. `body` is an operator's page: when it is itself a whole HTTP
    response (haproxy's errorfile format, starting `HTTP/`), it is sent as is; otherwise
    it is the HTML body. `extra` is more header lines, each ending in CRLF."""
    if body is not None and body.startswith(b"HTTP/"):
        return body
    if body is None:
        phrase = reason(status)
        body = _PAGE % (status, phrase, _TEXT.get(status, phrase))
    head = b"HTTP/1.1 %d %s\r\ncontent-type: text/html\r\ncontent-length: %d\r\n" \
           b"cache-control: no-cache\r\n%s%s\r\n" % (
               status, reason(status), len(body), extra,
               b"connection: close\r\n" if close else b"")
    return head if head_only else head + body


def redirect_response(location: bytes, *, close: bool = False, status: int = 301) -> bytes:
    """`status` (301: the plain frontend's answer for ssl-redirect routes; an Ingress's
    permanent-redirect or app-root, 301 or 302; a Gateway RequestRedirect's
    301/302/303/307/308) to `location`."""
    return b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nlocation: %s\r\n" \
           b"cache-control: no-cache\r\n%s\r\n" % (
               status, reason(status), location, b"connection: close\r\n" if close else b"")
