"""h2c to backends (gRPC): one asyncio Protocol per connection to a server, carrying many
streams at once, and the pool of those connections per server.

Theory of operation. An `H2Upstream` is an h2 client connection (prior knowledge, no
TLS) whose streams belong to client streams of `h2server` (their `UpOwner` side). It
turns the engine's events into calls on the owning stream (`up_headers`, `up_data`,
`up_trailers`, `up_end`, `up_reset`) and writes what the engine has to send once per
read or per call. The pool (`H2Pool`) keeps every open connection to a server and hands
out the first with a free stream (the server's MAX_CONCURRENT_STREAMS); streams that
find none wait for one connection being dialled for them all, so a burst of calls to a
new server makes one connection, not one each (Envoy's HTTP/2 connection pool does the
same). A GOAWAY from the server lets its streams up to the last one named finish, makes
the rest fail as refused (the owner sends them again, RFC 9113 §8.7), and takes the
connection out of the pool; GOAWAY frames are taken out of the bytes before the engine
sees them (`_sift`), since the engine would close its side and drop the frames of the
streams still finishing.

Flow control: response DATA is acknowledged to the server only as the client stream has
room for it (the owner calls `ack`); request DATA is sent as the server's windows allow,
what does not fit waiting in the owner, which stops acknowledging its client meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Container
from typing import Protocol, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from proxy import flow
from proxy.connect import Dial
from pylb.failures import Failure

log = logging.getLogger("pylb.http")

Key = tuple[str, int]
Headers = list[tuple[bytes, bytes]]
CONNECTION_WINDOW = 1024 * 1024


class UpOwner(Protocol):
    """What an H2Upstream calls on the client stream that owns one of its streams."""

    def up_headers(self, headers: Headers, ended: bool) -> None: ...
    def up_data(self, data: bytes, flow_len: int) -> None: ...
    def up_trailers(self, headers: Headers) -> None: ...
    def up_end(self) -> None: ...
    def up_reset(self, failure: Failure, refused: bool) -> None: ...
    def up_window(self) -> None: ...
    def up_ready(self, conn: H2Upstream | None, failure: Failure | None,
                 local: bool) -> None: ...


class H2Upstream(asyncio.Protocol):
    def __init__(self, key: Key, pool: H2Pool) -> None:
        self.key = key
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False,
                                        validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.streams: dict[int, UpOwner] = {}
        self.closed = False
        self.draining = False  # GOAWAY received, or failed: no new streams
        self._buf = b""  # an incomplete frame (`_sift`)
        self._goaways: list[tuple[int, int]] = []  # (last stream id, error code)

    @property
    def usable(self) -> bool:
        return (not self.closed and not self.draining and self.transport is not None
                and len(self.streams) < self.h2.remote_settings.max_concurrent_streams)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        flow.set_limits(self.transport)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def flush(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            data = self.h2.data_to_send()
            if data:
                t.write(data)

    # -- the owners' calls -------------------------------------------------------------------

    def open(self, owner: UpOwner, headers: Headers, end: bool) -> int:
        sid: int = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=end)
        self.streams[sid] = owner
        self.flush()
        return sid

    def window(self, sid: int) -> int:
        if sid not in self.streams:
            return 0
        try:
            return min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            return 0

    def send(self, sid: int, data: bytes, end: bool) -> None:
        self.h2.send_data(sid, data, end_stream=end)
        self.flush()

    def trailers(self, sid: int, headers: Headers) -> None:
        self.h2.send_headers(sid, headers, end_stream=True)
        self.flush()

    def end(self, sid: int) -> None:
        self.h2.end_stream(sid)
        self.flush()

    def ack(self, sid: int, n: int) -> None:
        if n and not self.closed:
            try:
                self.h2.acknowledge_received_data(n, sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return
            self.flush()

    def reset(self, sid: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if self.streams.pop(sid, None) is not None and not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.h2.reset_stream(sid, code)
            self.flush()
        self._maybe_idle()

    def forget(self, sid: int) -> None:
        """The owner is done with a stream that ended both ways."""
        self.streams.pop(sid, None)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.draining and not self.streams and self.transport is not None:
            self.transport.close()

    # -- the server's frames -------------------------------------------------------------------

    def _sift(self, data: bytes) -> bytes:
        """Take GOAWAY frames out of the server's bytes and act on them here: the h2
        engine closes its side on one (its state CLOSED refuses every later frame), which
        would lose the streams the server still finishes."""
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        out: list[bytes] = []
        start = 0
        while end - pos >= 9:
            n = int.from_bytes(buf[pos:pos + 3], "big")
            if end - pos < 9 + n:
                break
            if buf[pos + 3] == 7:  # GOAWAY
                out.append(buf[start:pos])
                last = int.from_bytes(buf[pos + 9:pos + 13], "big") & 0x7FFFFFFF
                code = int.from_bytes(buf[pos + 13:pos + 17], "big")
                self._goaways.append((last, code))
                start = pos + 9 + n
            pos += 9 + n
        self._buf = buf[pos:]
        if not out:
            return buf[:pos] if self._buf else buf
        out.append(buf[start:pos])
        return b"".join(out)

    def _goaway(self, last: int, code: int) -> None:
        self.draining = True
        self.pool.remove(self)
        for s, o in list(self.streams.items()):
            if s > last or code:
                self.streams.pop(s, None)
                o.up_reset(Failure.BACKEND_RESET, s > last)
        self._maybe_idle()

    def data_received(self, data: bytes) -> None:
        data = self._sift(data)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            log.warning("h2c connection to %s:%d: protocol error from the server", *self.key)
            self.flush()
            self._fail_all(Failure.BAD_RESPONSE)
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            sid = getattr(ev, "stream_id", 0)
            owner = self.streams.get(sid) if sid else None
            if isinstance(ev, h2.events.ResponseReceived) and owner is not None:
                owner.up_headers(list(ev.headers), ev.stream_ended is not None)
            elif isinstance(ev, h2.events.DataReceived):
                if owner is not None:
                    owner.up_data(ev.data or b"", ev.flow_controlled_length)
                else:
                    self.ack(sid, ev.flow_controlled_length)
            elif isinstance(ev, h2.events.TrailersReceived) and owner is not None:
                owner.up_trailers(list(ev.headers))
            elif isinstance(ev, h2.events.StreamEnded) and owner is not None:
                owner.up_end()
            elif isinstance(ev, h2.events.StreamReset) and owner is not None:
                self.streams.pop(sid, None)
                owner.up_reset(Failure.BACKEND_RESET,
                               ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM)
            elif isinstance(ev, h2.events.WindowUpdated):
                targets = list(self.streams.values()) if sid == 0 \
                    else [owner] if owner is not None else []
                for o in targets:
                    o.up_window()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                for o in list(self.streams.values()):
                    o.up_window()
        self.flush()
        goaways = self._goaways
        while goaways:
            self._goaway(*goaways.pop(0))

    def _fail_all(self, failure: Failure) -> None:
        self.draining = True
        self.pool.remove(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for o in streams:
            o.up_reset(failure, False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(Failure.BACKEND_RESET)

    def pause_writing(self) -> None:
        pass  # the windows bound what we write; the server's reading shows in them

    def resume_writing(self) -> None:
        pass

    def drain(self) -> None:
        """No new stream; close once the open ones are done."""
        self.draining = True
        self._maybe_idle()

    def close(self) -> None:
        self.draining = True
        if self.transport is not None:
            self.transport.close()


class H2Pool:
    """Every h2c connection to each server, and the dials under way."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connect_timeout: float) -> None:
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.conns: dict[Key, list[H2Upstream]] = {}
        self.dialing: dict[Key, list[UpOwner]] = {}
        self._dials: set[Dial] = set()

    def get(self, key: Key, owner: UpOwner) -> None:
        """Hand `owner` a connection to `key` (now, or when one is made) through its
        `up_ready`."""
        for conn in self.conns.get(key, ()):
            if conn.usable:
                owner.up_ready(conn, None, False)
                return
        waiting = self.dialing.get(key)
        if waiting is not None:
            waiting.append(owner)
            return
        self.dialing[key] = [owner]
        self._dial(key)

    def _dial(self, key: Key) -> None:
        done: Callable[[Dial], None] = lambda d: self._dialed(d, key)  # noqa: E731
        dial = Dial(self.loop, lambda: H2Upstream(key, self), key[0], key[1], done)
        self._dials.add(dial)
        dial.start(self.connect_timeout)

    def _dialed(self, dial: Dial, key: Key) -> None:
        self._dials.discard(dial)
        waiting = self.dialing.pop(key, [])
        if dial.failure is None:
            conn = cast(H2Upstream, dial.protocol)
            self.conns.setdefault(key, []).append(conn)
            for owner in waiting:
                if conn.usable:
                    owner.up_ready(conn, None, False)
                else:  # more calls than the server takes at once: another connection
                    self.get(key, owner)
        else:
            for owner in waiting:
                owner.up_ready(None, dial.failure, dial.local)

    def remove(self, conn: H2Upstream) -> None:
        conns = self.conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.conns[conn.key]

    def retain(self, keys: Container[Key]) -> None:
        """Servers not in `keys` left the table: their connections take no new stream
        and close when their streams are done (a GOAWAY-like drain, ours)."""
        for key in [k for k in self.conns if k not in keys]:
            for conn in self.conns.pop(key):
                conn.draining = True
                conn.drain()

    def close_all(self) -> None:
        for dial in list(self._dials):
            dial.cancel()
        for conns in list(self.conns.values()):
            for conn in list(conns):
                conn.close()
        self.conns.clear()
