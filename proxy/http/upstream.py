"""The backend side of the L7 router: one asyncio Protocol per connection to a server.

An `UpstreamProtocol` belongs either to the pool or to the client connection that keeps
it between requests (idle, no owner: its `pool`), or to one client connection's exchange
(`owner`). While owned, it counts the response bytes (`got_bytes`,
which the owner reads when it lets go) and feeds them to a response parser whose
callbacks are the owner's; a read that leaves the exchange under way ends with
`owner.upstream_read()` (the server's activity, for its timer). It relays flow control:
when its own write buffer is full it pauses the client's reading, and the owner pauses
this one's reading when the client's write buffer is full. After a 101 it becomes a byte
tunnel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol, cast

from proxy import flow
from proxy.balance import Key
from proxy.http.parser import ParseError, ResponseParser, ResponseSink, response_parser
from pylb.config import HttpParser
from pylb.failures import Failure

if TYPE_CHECKING:
    from pylb.counters import Counters
    from pylb.model import Server

log = logging.getLogger("pylb.http")


class Owner(ResponseSink, Protocol):
    """What an UpstreamProtocol calls on the exchange that owns it (server.ClientProtocol):
    the response parser's callbacks, flow control and the tunnel."""

    def pause_reading(self, why: int) -> None: ...
    def resume_reading(self, why: int) -> None: ...
    def upstream_read(self) -> None:
        """A read of the server's connection has ended, the exchange still under way (the
        server was active; the connection counts its bytes, `got_bytes`)."""
    def upstream_failed(self, up: UpstreamProtocol, failure: Failure) -> None: ...
    def upstream_lost(self, up: UpstreamProtocol) -> None: ...
    def start_tunnel(self, upstream_rest: bytes) -> None: ...
    def tunnel_from_upstream(self, data: bytes) -> None: ...
    def tunnel_upstream_eof(self) -> bool | None: ...
    def flush(self) -> None: ...


class Holder(Protocol):
    """Where an idle connection waits: the pool (pool.Pool), or the client connection
    that keeps it for its next request (server.ClientProtocol)."""

    def remove(self, conn: UpstreamProtocol) -> None: ...

_PEER = int(flow.Pause.PEER)  # why the owner stops reading its client when we are full


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "closed",
        "eof",
        "got_bytes",
        "idle_since",
        "key",
        "kind",
        "owner",
        "parser",
        "pool",
        "rows",
        "transport",
        "tunnel",
        "uses",
    )

    def __init__(self, key: Key, kind: HttpParser) -> None:
        self.key = key
        self.kind = kind
        self.transport: asyncio.Transport | None = None
        self.owner: Owner | None = None
        self.parser: ResponseParser | None = None
        self.idle_since = 0.0
        self.pool: Holder | None = None  # the pool it idles in (Pool sets and clears it)
        self.closed = False
        self.eof = False
        self.got_bytes = 0  # the server's bytes read in the current exchange
        self.tunnel = False
        self.uses = 0
        # The counter rows its last exchange was counted in (the server's, its backend's),
        # with that server, its backend's name and Stats.drops then: the next exchange
        # for the same server of the same backend takes them as they are while no row has
        # been dropped since (kept by the owner: server.ClientProtocol's `_attach`)
        self.rows: tuple[Server, str, int, Counters, Counters] | None = None

    # -- pool bookkeeping ---------------------------------------------------------------

    @property
    def usable(self) -> bool:
        t = self.transport
        return not self.closed and not self.eof and t is not None and not t.is_closing()

    def leave_pool(self) -> None:
        self.pool = None

    def begin(self, owner: Owner, method: bytes, upgrade: bool) -> None:
        """Start an exchange: the next bytes from the server are `owner`'s response."""
        self.owner = owner
        self.got_bytes = 0
        self.uses += 1
        parser = self.parser
        if parser is None or not parser.reset(owner, method, upgrade):
            self.parser = response_parser(self.kind, owner, method, upgrade)

    def detach(self) -> None:
        self.owner = None

    def close(self) -> None:
        self.closed = True
        self.leave_pool()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.leave_pool()
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        # TCP_NODELAY: uvloop and asyncio set it on TCP transports already.
        flow.set_limits(transport)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            self.close()  # an idle connection has nothing to say
            return
        self.got_bytes += len(data)
        if self.tunnel:
            owner.tunnel_from_upstream(data)
            return
        parser = self.parser
        assert parser is not None
        try:
            parser.feed(data)
        except ParseError as e:
            owner.upstream_failed(self, e.failure)
            return
        except Exception:
            log.exception("internal error on a backend connection to %s", self.key)
            owner.upstream_failed(self, Failure.INTERNAL)
            return
        if self.owner is owner:
            rest = parser.upgrade_rest
            if rest is not None:
                self.tunnel = True
                owner.start_tunnel(rest)
            owner.upstream_read()

    def eof_received(self) -> bool | None:
        self.eof = True
        owner = self.owner
        if owner is None:
            return None
        if self.tunnel:
            return owner.tunnel_upstream_eof()
        if not self.got_bytes:
            # Closed before a byte of the response: on a reused connection this is the
            # keep-alive race (the server timed it out as the request went), a reset by
            # another name, and the owner may retry it as one.
            owner.upstream_lost(self)
            return None
        parser = self.parser
        assert parser is not None
        try:
            parser.feed_eof()
        except ParseError as e:
            owner.upstream_failed(self, e.failure)
            return None
        if self.owner is owner:
            owner.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pool is not None:
            self.pool.remove(self)
        self.leave_pool()
        owner = self.owner
        if owner is not None:
            owner.upstream_lost(self)
        # Never fed again: freed now rather than by the cyclic GC (the httptools parser
        # is in a cycle, which would hold the client connection it served until then).
        parser = self.parser
        if parser is not None:
            self.parser = None
            parser.drop()

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_reading(_PEER)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_reading(_PEER)
