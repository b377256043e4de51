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

Hygiene. A connection without streams for `idle_timeout` seconds (the HTTP/1.1 pool's
`Timeouts.backend_idle`: the same resource, an idle connection to a server, under the
same rule: closed before the server's own idle timeout would close it under a stream we
are about to open) is closed with GOAWAY NO_ERROR by one sweep per pool, every half
`idle_timeout` while any connection is open (a timestamp per connection, no timer per
stream). At most `per_server` connections are open or dialled to one server
(`Limits.pool_per_server`, the HTTP/1.1 pool's bound on connections kept per server);
a stream finding them all full waits for a stream of one to end, at most
`connect_timeout` (it fails then as a connect timeout would, without blaming the
server). A backend's `lb.maxconn` bounds its streams before they come here (the
admission gate counts h2 streams as HTTP/1.1 requests), and so the connections too.

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
        self.idle_since = 0.0  # when its last stream ended (0: has streams, or none yet)
        self.settled = False  # the server's first SETTINGS received
        # What the owners' calls make the engine send is written once per turn of the
        # loop (one read of a client's connection opens, feeds and ends a stream: one
        # write, not three); in our own `data_received`, once at its end.
        self._flush_due = False
        self._reading = False
        self._buf = b""  # an incomplete frame (`_sift`)
        self._goaways: list[tuple[int, int]] = []  # (last stream id, error code)

    @property
    def usable(self) -> bool:
        # Until the server's SETTINGS come, one stream: its MAX_CONCURRENT_STREAMS is not
        # known (the engine assumes 100), and a server allowing fewer would refuse the
        # rest; the streams waiting go on it when they come (`H2Pool.serve`).
        return (not self.closed and not self.draining and self.transport is not None
                and len(self.streams) < (self.h2.remote_settings.max_concurrent_streams
                                         if self.settled else 1))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        flow.set_limits(self.transport)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._write_out()

    def flush(self) -> None:
        if not self._flush_due and not self._reading:
            self._flush_due = True
            self.pool.loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_due = False
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
        self.idle_since = 0.0
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
        if self.draining:
            if not self.streams and self.transport is not None:
                self._write_out()  # (a last RST_STREAM, before the FIN)
                self.transport.close()
            return
        if not self.streams:
            self.idle_since = self.pool.loop.time()
        if self.pool.full:
            self.pool.serve(self.key)

    def close_idle(self) -> None:
        """Idle too long: GOAWAY NO_ERROR (no stream is open to finish), then close."""
        self.draining = True
        if self.transport is not None and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self._write_out()
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
            self._write_out()
            self._fail_all(Failure.BAD_RESPONSE)
            if self.transport is not None:
                self.transport.close()
            return
        self._reading = True
        try:
            self._events(events)
        finally:
            self._reading = False
        self._write_out()
        goaways = self._goaways
        while goaways:
            self._goaway(*goaways.pop(0))

    def _events(self, events: list[h2.events.Event]) -> None:
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
                if not self.settled:
                    self.settled = True
                    self.pool.serve(self.key)

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
            self._write_out()
            self.transport.close()


class H2Pool:
    """Every h2c connection to each server, the dials under way, and the streams
    waiting for room."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connect_timeout: float,
                 idle_timeout: float = 30.0, per_server: int = 64) -> None:
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.per_server = max(1, per_server)
        self.conns: dict[Key, list[H2Upstream]] = {}
        self.dialing: set[Key] = set()
        # Streams waiting for a stream of a server's connections (being dialled, not
        # settled, or all full and `per_server` of them): (owner, its give-up timer),
        # first come first served.
        self.full: dict[Key, list[tuple[UpOwner, asyncio.TimerHandle]]] = {}
        self._dials: set[Dial] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def _usable(self, key: Key) -> H2Upstream | None:
        for conn in self.conns.get(key, ()):
            if conn.usable:
                return conn
        return None

    def get(self, key: Key, owner: UpOwner) -> None:
        """Hand `owner` a connection to `key` (now, or when one is made or has room)
        through its `up_ready`."""
        conn = self._usable(key)
        if conn is not None and key not in self.full:
            owner.up_ready(conn, None, False)
            return
        timer = self.loop.call_later(self.connect_timeout, self._gave_up, key, owner)
        self.full.setdefault(key, []).append((owner, timer))
        self.serve(key)

    def serve(self, key: Key) -> None:
        """Streams waiting for `key` take the room there is, in order; dial another
        connection for the rest if the bound allows (and none is being dialled or
        settling: it may have room for them all)."""
        waiting = self.full.get(key)
        while waiting:
            conn = self._usable(key)
            if conn is None:
                break
            owner, timer = waiting.pop(0)
            timer.cancel()
            owner.up_ready(conn, None, False)
        if not waiting:
            self.full.pop(key, None)
            return
        conns = self.conns.get(key, ())
        if key in self.dialing or len(conns) >= self.per_server \
                or any(not c.settled and not c.closed and not c.draining for c in conns):
            return
        self.dialing.add(key)
        self._dial(key)

    def _gave_up(self, key: Key, owner: UpOwner) -> None:
        waiting = self.full.get(key)
        if waiting is None:
            return
        for i, (o, _) in enumerate(waiting):
            if o is owner:
                if key in self.dialing:  # the dial's own connect timeout decides
                    waiting[i] = (owner, self.loop.call_later(
                        self.connect_timeout, self._gave_up, key, owner))
                    return
                del waiting[i]
                break
        else:
            return
        if not waiting:
            del self.full[key]
        # (local: the server did nothing wrong, it is not marked failed)
        owner.up_ready(None, Failure.CONNECT_TIMEOUT, True)

    def cancel(self, key: Key, owner: UpOwner) -> None:
        """`owner` no longer waits (its stream ended)."""
        waiting = self.full.get(key)
        if waiting:
            for i, (o, timer) in enumerate(waiting):
                if o is owner:
                    timer.cancel()
                    del waiting[i]
                    break
            if not waiting:
                del self.full[key]

    def _dial(self, key: Key) -> None:
        done: Callable[[Dial], None] = lambda d: self._dialed(d, key)  # noqa: E731
        dial = Dial(self.loop, lambda: H2Upstream(key, self), key[0], key[1], done)
        self._dials.add(dial)
        dial.start(self.connect_timeout)

    def _dialed(self, dial: Dial, key: Key) -> None:
        self._dials.discard(dial)
        self.dialing.discard(key)
        if dial.failure is None:
            conn = cast(H2Upstream, dial.protocol)
            self.conns.setdefault(key, []).append(conn)
            self._schedule()
            self.serve(key)
            return
        # The streams waiting for this server share the dial's failure (they would
        # wait for the same dead address otherwise).
        waiting = self.full.pop(key, [])
        for owner, timer in waiting:
            timer.cancel()
            owner.up_ready(None, dial.failure, dial.local)

    def _sweep(self) -> None:
        self._sweeper = None
        stale = self.loop.time() - self.idle_timeout
        for conns in list(self.conns.values()):
            for conn in [c for c in conns if not c.streams and 0 < c.idle_since <= stale]:
                self.remove(conn)
                conn.close_idle()
        self._schedule()

    def _schedule(self) -> None:
        if self._sweeper is None and self.conns:
            self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._sweep)

    def remove(self, conn: H2Upstream) -> None:
        conns = self.conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.conns[conn.key]
            if conn.key in self.full:
                self.serve(conn.key)  # room for a new connection

    def retain(self, keys: Container[Key]) -> None:
        """Servers not in `keys` left the table: their connections take no new stream
        and close when their streams are done (a GOAWAY-like drain, ours)."""
        for key in [k for k in self.conns if k not in keys]:
            for conn in self.conns.pop(key):
                conn.draining = True
                conn.drain()

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for waiting in self.full.values():
            for _, timer in waiting:
                timer.cancel()
        self.full.clear()
        for dial in list(self._dials):
            dial.cancel()
        for conns in list(self.conns.values()):
            for conn in list(conns):
                conn.close()
        self.conns.clear()
