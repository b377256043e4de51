"""Small HTTP backends for the L7 router's tests, on asyncio streams and h11.

Each answers with its name and echoes the request head as JSON; some paths behave
specially (see `_respond`). It counts connections and requests, so tests can see pooling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import h11


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_len: int
    conn: int
    trailers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class HttpBackend:
    name: str
    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 0
    seen: list[Seen] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    read_delay: float = 0.0  # per body chunk, to make a slow reader

    @property
    def open_connections(self) -> int:
        """Connections from the proxy still open."""
        return len(self._writers)

    async def start(self) -> HttpBackend:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn_id = self.connections
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                if not await self._one(conn, reader, writer, conn_id):
                    break
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stopped by the test; ending normally keeps asyncio's callback quiet
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    continue
                continue
            return ev

    async def _one(self, conn: h11.Connection, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter, conn_id: int) -> bool:
        ev = await self._next(conn, reader)
        if isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
            return False
        assert isinstance(ev, h11.Request), ev
        target = ev.target.decode()
        path, _, query = target.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        headers = [(k.decode(), v.decode()) for k, v in ev.headers.raw_items()]
        if path.endswith("/upgrade"):
            await self._upgrade(conn, writer)
            return False
        if path.endswith("/early"):  # refuse the body without reading it
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n"
                         b"Connection: close\r\n\r\nbig!")
            await writer.drain()
            return False
        if conn.they_are_waiting_for_100_continue and "no100" not in params:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        digest = hashlib.sha256()
        n = 0
        while True:
            ev2 = await self._next(conn, reader)
            if isinstance(ev2, h11.Data):
                n += len(ev2.data)
                digest.update(ev2.data)
                if self.read_delay:
                    await asyncio.sleep(self.read_delay)
            elif isinstance(ev2, h11.EndOfMessage):
                trailers = [(k.decode(), v.decode()) for k, v in ev2.headers.raw_items()]
                break
            else:
                return False
        self.seen.append(Seen(ev.method.decode(), target, headers, n, conn_id, trailers))
        await self._respond(conn, writer, ev, path, params, headers, n, digest.hexdigest(),
                            conn_id)
        return True

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                       req: h11.Request, path: str, params: dict[str, str],
                       headers: list[tuple[str, str]], n: int, sha: str,
                       conn_id: int) -> None:
        extra: list[tuple[str, str]] = []
        if "delay" in params:
            await asyncio.sleep(float(params["delay"]))
        if path.endswith("/status"):
            status = int(params["code"])
            resp_headers = [("X-Backend", self.name)]
            if status not in (204, 304):
                resp_headers.append(("Content-Length", "0"))
            writer.write(conn.send(h11.Response(status_code=status, headers=resp_headers)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            return
        if path.endswith("/big"):
            size = int(params["n"])
            chunked = "chunked" in params
            hs = [("X-Backend", self.name)]
            if not chunked:
                hs.append(("Content-Length", str(size)))
            writer.write(conn.send(h11.Response(status_code=200, headers=hs)))
            block = b"x" * 65536
            left = size
            while left:
                piece = block[:min(left, len(block))]
                writer.write(conn.send(h11.Data(data=piece)))
                left -= len(piece)
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            return
        if path.endswith("/close"):
            extra.append(("Connection", "close"))
        if path.endswith("/hang"):
            await asyncio.sleep(3600)
        if path.endswith("/midway"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            writer.transport.abort()
            raise ConnectionResetError
        if path.endswith("/garbage"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
            await writer.drain()
            raise ConnectionResetError
        if path.endswith("/setcookie"):
            extra.append(("Set-Cookie", "app=1"))
        body = json.dumps({
            "name": self.name, "method": req.method.decode(), "target": req.target.decode(),
            "headers": headers, "body_len": n, "sha256": sha, "conn": conn_id,
        }).encode()
        hs = [("Content-Type", "application/json"), ("X-Backend", self.name), *extra]
        if "chunked" in params:
            writer.write(conn.send(h11.Response(status_code=200, headers=hs)))
            if req.method != b"HEAD":
                writer.write(conn.send(h11.Data(data=body[:10])))
                writer.write(conn.send(h11.Data(data=body[10:])))
        else:
            hs.append(("Content-Length", str(len(body))))
            writer.write(conn.send(h11.Response(status_code=200, headers=hs)))
            if req.method != b"HEAD":
                writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _upgrade(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        """A raw echo after 101 (the WebSocket tests use a real websockets server)."""
        writer.write(conn.send(h11.InformationalResponse(
            status_code=101, headers=[("Connection", "upgrade"), ("Upgrade", "echo")])))
        data, _ = conn.trailing_data
        reader = writer.transport.get_protocol()._stream_reader  # type: ignore[attr-defined]
        if data:
            writer.write(data.upper())
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            writer.write(chunk.upper())
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


def body_json(raw: bytes) -> dict[str, Any]:
    _head, _, body = raw.partition(b"\r\n\r\n")
    return json.loads(body)  # type: ignore[no-any-return]
