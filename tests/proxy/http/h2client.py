"""A raw HTTP/2 client for the tests, on asyncio streams and the h2 library: it sends
what a test asks (valid or not: header validation is off) and collects events."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events

Headers = list[tuple[bytes, bytes]]


def req_headers(path: bytes = b"/app/x", method: bytes = b"GET",
                authority: bytes = b"example.com", extra: Headers | None = None) -> Headers:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", authority),
            (b":path", path), *(extra or [])]


class H2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 **config: Any) -> None:
        self.reader = reader
        self.writer = writer
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False,
                                        validate_inbound_headers=False, **config)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.events: list[h2.events.Event] = []
        self.closed = False
        self.graceful: list[int] = []  # last stream ids of GOAWAY NO_ERROR frames
        self.goaway_codes: list[int] = []  # error codes of every GOAWAY received
        self._buf = b""
        self._preface_seen = False

    @classmethod
    async def open(cls, port: int, ssl_context: ssl.SSLContext | None = None,
                   **config: Any) -> H2Client:
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl_context,
            server_hostname="localhost" if ssl_context is not None else None)
        c = cls(r, w, **config)
        c.conn.initiate_connection()
        await c.flush()
        return c

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)
            try:
                await self.writer.drain()
            except ConnectionError:
                self.closed = True

    def raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_some(self, timeout: float = 5.0) -> bool:
        """Read once and collect events; False when the server closed."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionError, TimeoutError):
            data = b""
        if not data:
            self.closed = True
            return False
        # (a ProtocolError: a GOAWAY or reset we caused; the events say enough)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.events.extend(self.conn.receive_data(self._sift(data)))
        await self.flush()
        return True

    def _sift(self, data: bytes) -> bytes:
        """Take GOAWAY NO_ERROR frames out (the h2 engine would close its side on one,
        and drop the frames of the streams the server still finishes)."""
        buf = self._buf + data
        out = []
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            frame, buf = buf[:9 + n], buf[9 + n:]
            if frame[3] == 7:
                code = int.from_bytes(frame[13:17], "big")
                self.goaway_codes.append(code)
                if code == 0:
                    self.graceful.append(int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF)
                    continue
            out.append(frame)
        self._buf = buf
        return b"".join(out)

    async def until(self, pred: Any, timeout: float = 10.0) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not pred():
            left = end - loop.time()
            if left <= 0 or not await self.read_some(left):
                return bool(pred())
        return True

    def of(self, stream_id: int, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)
                and getattr(e, "stream_id", None) == stream_id]

    def ended(self, stream_id: int) -> bool:
        return bool(self.of(stream_id, h2.events.StreamEnded)
                    or self.of(stream_id, h2.events.StreamReset))

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for e in self.events:
            if isinstance(e, h2.events.ConnectionTerminated):
                return e
        return None

    async def get(self, path: bytes = b"/app/x", body: bytes | None = None,
                  method: bytes | None = None, extra: Headers | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        m = method or (b"POST" if body is not None else b"GET")
        self.conn.send_headers(sid, req_headers(path, m, extra=extra),
                               end_stream=body is None)
        await self.flush()
        if body is not None:
            await self.send_body(sid, body)
        return sid

    async def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        """Send `body` as the windows allow (bounded: gives up after 10 s)."""
        view = memoryview(body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while view and loop.time() < deadline:
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                if not await self.read_some(deadline - loop.time()):
                    return
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            await self.flush()
        if end:
            self.conn.end_stream(sid)
            await self.flush()

    async def response(self, sid: int, timeout: float = 10.0) -> tuple[int, bytes, Headers]:
        await self.until(lambda: self.ended(sid), timeout)
        status = 0
        headers: Headers = []
        for e in self.of(sid, h2.events.ResponseReceived):
            headers = list(e.headers)
            status = int(dict(headers)[b":status"])
        body = b"".join(e.data for e in self.of(sid, h2.events.DataReceived))
        for e in self.of(sid, h2.events.DataReceived):
            self.conn.acknowledge_received_data(e.flow_controlled_length, sid)
        await self.flush()
        return status, body, headers

    def reset_code(self, sid: int) -> int | None:
        r = self.of(sid, h2.events.StreamReset)
        return int(r[0].error_code) if r else None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
