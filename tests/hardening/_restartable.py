"""A backend that goes away and comes back on the same port (a restarted database or
nginx): answers HTTP GETs and echoes anything else. Used by
tests/hardening/test_backend_restart.py and bench/faults.py's restart case."""

from __future__ import annotations

import asyncio
import contextlib

from tests.conftest import free_port

HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class Restartable:
    """Its listener closed while away: connects are refused, as from a stopped server."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.server: asyncio.Server | None = None

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            data = await r.read(65536)
            if data.startswith(b"GET "):
                while b"\r\n\r\n" not in data:
                    more = await r.read(65536)
                    if not more:
                        return
                    data += more
                w.write(HTTP_OK)
            else:
                w.write(data)
            await w.drain()
        w.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                 reuse_address=True)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def outage(self, delay: float, duration: float) -> None:
        await asyncio.sleep(delay)
        self.stop()
        await asyncio.sleep(duration)
        await self.start()
