"""A small HTTP/1.1 server on h11 for the stats and health pages (not the hot path).

`SmallHttpServer` reads requests with h11 and hands each to `handler(request) ->
Reply`; it writes the reply whole. Keep-alive is honoured, bounded in requests per
connection, head size (h11's limit) and idle time, so a slow or abusive client costs one
task for a bounded time. The pure helpers — `parse_stats_uri` and `BasicAuth` — hold the
decisions and are tested as tables.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

import h11

from pylb.failures import REASON_PHRASES

log = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_MAX_REQUESTS_PER_CONN = 100
_MAX_BODY = 64 * 1024
_LINGER_TIME = 1.0  # seconds to keep reading after an error reply before closing
_LINGER_BYTES = 256 * 1024  # requests to these pages carry no body; a bigger one is refused
_WRITE_CHUNK = 256 * 1024  # bytes of a reply body written at once


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    # Lower-case names. A repeated field's values are joined with ", " (RFC 9110 5.3),
    # so two Authorization headers make one that is not valid Basic: a client that
    # sends two credentials gets neither.
    headers: dict[str, str]
    peer: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())
    # A big body in pieces, sent after `body`: joining 80 MB into one bytes object (the
    # JSON of 100,000 servers) holds the GIL, and so stalls the event loop, for ~0.1 s.
    parts: tuple[bytes, ...] = field(default=())

    @property
    def length(self) -> int:
        return len(self.body) + sum(len(p) for p in self.parts)


Handler = Callable[[Request], Reply | Awaitable[Reply]]


# -- URI options ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StatsQuery:
    """What a stats URI asks for: format html|csv|json|metrics, `;up`, `;norefresh`,
    and for the HTML page `;scope=text` (haproxy's filter: backends whose name holds
    `text`, case-insensitive) and `;page=N` (pylb's: see page.py)."""

    fmt: str = "html"
    up_only: bool = False
    norefresh: bool = False
    scope: str = ""
    page: int = 1


MAX_SCOPE = 128  # characters of a scope filter (haproxy: 31); longer is cut
MAX_PAGE = 1_000_000


STATS_PATHS = frozenset({"/", "", "/haproxy", "/stats"})


def parse_stats_uri(target: str) -> StatsQuery | None:
    """haproxy's stats URI options, in the path (`/;csv;norefresh`) or the query
    (`/?stats;csv`, `/haproxy?stats;up`); `/metrics` is Prometheus. None: not a stats
    page (404). An absolute-form target (`http://host/;csv`, which a server must accept,
    RFC 9112 3.2.2) means its path."""
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
        target = rest[min(ends):] if ends else "/"
        if not target.startswith("/"):
            target = "/" + target
    path, _, query = target.partition("?")
    base, _, path_opts = path.partition(";")
    if base == "/metrics" and not path_opts:
        return StatsQuery(fmt="metrics")
    if base not in STATS_PATHS:
        return None
    opts: set[str] = set()
    scope, page = "", 1
    for o in (path_opts + ";" + query.replace("&", ";")).split(";"):
        name, eq, value = o.strip().partition("=")
        name = name.lower()
        if not eq:
            if name:
                opts.add(name)
        elif name == "scope":  # the page's filter form sends ?scope=text
            scope = unquote_plus(value)[:MAX_SCOPE]
        elif name == "page" and value.isascii() and value.isdigit():
            page = max(1, min(MAX_PAGE, int(value[:8])))
    fmt = "csv" if "csv" in opts else "json" if "json" in opts else "html"
    return StatsQuery(fmt=fmt, up_only="up" in opts, norefresh="norefresh" in opts,
                      scope=scope, page=page)


# -- auth -----------------------------------------------------------------------------

class BasicAuth:
    """HTTP Basic auth against one `user:password`.

    The setting is `user:password`, or `@/path/to/file` whose content is `user:password`
    (surrounding whitespace and a final newline dropped) — a Kubernetes secret mounted as
    a file keeps the password off the command line. It is read once, at start-up: a user
    name cannot begin with "@".

    Only a keyed digest of the credential is kept. `check` digests whatever the client
    sent as "user:password" (user and password together, so a wrong user does not exit
    earlier than a wrong password) and compares it with `hmac.compare_digest` exactly
    once, on two 32-byte values, whatever the header held — absent, another scheme, bad
    base64 all digest a fixed stand-in — so neither the length nor a common prefix of
    the user or the password shows in the time an answer takes. The key is random per
    process: the digest is worthless outside it.
    """

    def __init__(self, credential: str) -> None:
        if ":" not in credential:
            raise ValueError("stats auth must be user:password")
        self._key = os.urandom(32)
        self._digest = self._mac(credential.encode("utf-8"))

    def _mac(self, credential: bytes) -> bytes:
        return hmac.digest(self._key, credential, "sha256")

    @classmethod
    def from_setting(cls, setting: str | None) -> BasicAuth | None:
        if not setting:
            return None
        if setting.startswith("@"):
            path = setting[1:]
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read(4096).strip()
            except OSError as e:
                raise ValueError(f"--stats-auth file {path}: {e.strerror or e}") from None
            if ":" not in text:
                raise ValueError(f"--stats-auth file {path}: must hold user:password")
            return cls(text)
        return cls(setting)

    def check(self, header: str | None) -> bool:
        """True when an Authorization header carries the right credential."""
        given = basic_credential(header)
        # A credential always holds ":", so the stand-in cannot be the right one.
        same = hmac.compare_digest(self._mac(b"-" if given is None else given),
                                   self._digest)
        return same and given is not None


def basic_credential(header: str | None) -> bytes | None:
    """The decoded "user:password" of a `Basic` Authorization header (the scheme name is
    case-insensitive, RFC 9110 11.1), or None when the header is absent, of another
    scheme, not strict base64, or holds no ":"."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return given if b":" in given else None


def unauthorized(realm: str) -> Reply:
    return Reply(401, b"401 Unauthorized: this page needs a user name and password.\n",
                 headers=(("WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"'),))


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop what the client still sends (bounded), so that
    closing with unread input does not reset the connection before the client has read
    our error reply (nginx's lingering_close, haproxy's `option nolinger` default off)."""
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
    with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
        async with asyncio.timeout(_LINGER_TIME):
            for _ in range(_LINGER_BYTES // 8192):
                if not await reader.read(8192):
                    break


_MORE_PHRASES = {200: b"OK", 401: b"Unauthorized", 405: b"Method Not Allowed",
                 413: b"Content Too Large"}


def _reason(status: int) -> bytes:
    return REASON_PHRASES.get(status) or _MORE_PHRASES.get(status, b"")


# -- the server -----------------------------------------------------------------------

class SmallHttpServer:
    """asyncio + h11; see the module docstring."""

    def __init__(self, handler: Handler, *, name: str, idle_timeout: float = 10.0,
                 server_header: str = "pylb") -> None:
        self._handler = handler
        self._name = name
        self._idle_timeout = idle_timeout
        self._server_header = server_header
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = await asyncio.start_server(self._serve, host, port, family=family,
                                                  reuse_address=True, backlog=128)
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        peer = writer.get_extra_info("peername")
        try:
            await self._conversation(reader, writer, str(peer[0]) if peer else "")
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _conversation(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, peer: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        for _ in range(_MAX_REQUESTS_PER_CONN):
            try:
                async with asyncio.timeout(self._idle_timeout):
                    request = await self._read_request(conn, reader, peer)
            except h11.RemoteProtocolError as e:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = e.error_status_hint
                    async with asyncio.timeout(self._idle_timeout):
                        await self._send(conn, writer, Reply(
                            status, f"{status} {_reason(status).decode()}\n".encode()),
                            head_only=False, close=True)
                    await _linger(reader, writer)
                return
            if request is None:
                return
            try:
                result = self._handler(request)
                reply = await result if isinstance(result, Awaitable) else result
            except Exception:
                log.exception("%s: handler failed for %s", self._name, request.target)
                reply = Reply(500, b"500 Internal Server Error\n")
            last = "close" in request.headers.get("connection", "").lower()
            async with asyncio.timeout(self._idle_timeout):
                await self._send(conn, writer, reply, head_only=request.method == "HEAD",
                                 close=last)
            if last or conn.our_state is not h11.DONE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader,
                            peer: str) -> Request | None:
        request: h11.Request | None = None
        body = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(8192)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                continue
            if isinstance(event, h11.Data):
                body += len(event.data)
                if body > _MAX_BODY:
                    raise h11.RemoteProtocolError("body too large", error_status_hint=413)
                continue
            if isinstance(event, h11.EndOfMessage) and request is not None:
                headers: dict[str, str] = {}
                for k, v in request.headers:  # h11 gives names lower-cased
                    name, value = k.decode("ascii", "replace"), v.decode("latin-1")
                    headers[name] = f"{headers[name]}, {value}" if name in headers else value
                return Request(
                    method=request.method.decode("ascii", "replace"),
                    target=request.target.decode("ascii", "replace"),
                    headers=headers, peer=peer)
            return None  # ConnectionClosed, or PAUSED

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply,
                    head_only: bool, close: bool) -> None:
        headers = [("Content-Type", reply.content_type),
                   ("Content-Length", str(reply.length)),
                   ("Cache-Control", "no-cache"),
                   ("Server", self._server_header),
                   # No browser may take a CSV or JSON body full of names for HTML.
                   ("X-Content-Type-Options", "nosniff"),
                   *reply.headers]
        if close:
            headers.append(("Connection", "close"))
        out = conn.send(h11.Response(status_code=reply.status, headers=headers,
                                     reason=_reason(reply.status)))
        pieces = () if head_only else (reply.body, *reply.parts)
        if reply.length > _WRITE_CHUNK and not head_only:
            # A big body goes out in slices with a drain between: one write would copy
            # it whole on the event loop (a slice copies 256 KB at a time).
            writer.write(out)
            for piece in pieces:
                for i in range(0, len(piece), _WRITE_CHUNK):
                    writer.write(conn.send(h11.Data(data=piece[i:i + _WRITE_CHUNK])))
                    await writer.drain()
            out = b""
        else:
            for piece in pieces:
                if piece:
                    out += conn.send(h11.Data(data=piece))
        out += conn.send(h11.EndOfMessage())
        writer.write(out)
        await writer.drain()

