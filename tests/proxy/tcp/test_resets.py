"""A close on either side reaches the other at once, and frees the connection (issue #22,
item 1), on every data path (the `h` fixture: splice from the first byte, switched to
splice mid-stream, copy only).

The peer that closes is a blocking socket in a thread, so its timing is exact: it moves N
bytes (past the splice threshold), waits while the other side sends two bytes it never
reads, sends BYE and closes. With bytes unread, the kernel sends a reset instead of a FIN
(postgres's `pg_ctl stop -m fast` does the same): the data and the error arrive together.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import pytest

from pylb.failures import Failure
from pylb.model import Server
from tests.proxy.tcp.conftest import Harness, table

N = 400_000  # past every path's splice threshold (0, and 100,000 for the switch)
WAIT = 5.0  # for what must come at once: generous for a loaded machine


def _close_wait_to(port: int) -> int:
    """Sockets in CLOSE-WAIT whose peer is 127.0.0.1:`port` (the proxy's side of a server
    connection the server closed, if the proxy never closed it)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "08" and int(fields[2].split(":")[1], 16) == port:
                n += 1
    return n


class Peer(threading.Thread):
    """A backend on a blocking socket that plays one script on its first connection."""

    def __init__(self, script: str) -> None:
        super().__init__(daemon=True)
        self.script = script
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen()
        self.ls.settimeout(WAIT)
        self.port = self.ls.getsockname()[1]
        self.outcome = ""

    def run(self) -> None:
        try:
            s, _ = self.ls.accept()
        except OSError:
            return
        s.settimeout(WAIT)
        try:
            if self.script in ("reset", "fin"):
                s.sendall(b"x" * N)
                if self.script == "reset":
                    time.sleep(0.4)  # the client's two bytes arrive, unread
                else:
                    got = b""
                    while len(got) < 2:
                        got += s.recv(2 - len(got))
                s.sendall(b"BYE")
                s.close()
            else:  # the client sends N bytes and closes; what does the server see?
                got = 0
                while got < N:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                s.sendall(b"zz")  # never read by the client: its close resets
                rest = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        self.outcome = f"eof {rest!r}"
                        break
                    rest += chunk
        except ConnectionResetError:
            self.outcome = "reset"
        except OSError as e:
            self.outcome = f"error {e!r}"
        finally:
            s.close()
            self.ls.close()


async def _read_to_end(r: asyncio.StreamReader) -> tuple[bytes, str]:
    got = b""
    try:
        while chunk := await asyncio.wait_for(r.read(65536), WAIT):
            got += chunk
    except ConnectionResetError:
        return got, "reset"
    return got, "eof"


@pytest.mark.parametrize("script", ["reset", "fin"])
async def test_server_close_after_bulk_reaches_client(h: Harness, script: str) -> None:
    peer = Peer(script)
    peer.start()
    p = h.proxy()
    await p.set_table(table(Server("127.0.0.1", peer.port)))
    r, w = await h.connect(p)
    assert len(await asyncio.wait_for(r.readexactly(N), WAIT)) == N
    w.write(b"zz")
    got, how = await _read_to_end(r)
    assert (got, how) == (b"BYE", "reset" if script == "reset" else "eof")
    await asyncio.to_thread(peer.join, WAIT)
    w.close()
    for _ in range(200):  # the proxy frees it in the same loop turn; let the loop run
        if p.connections == 0 and _close_wait_to(peer.port) == 0:
            break
        await asyncio.sleep(0.01)
    assert p.connections == 0
    assert _close_wait_to(peer.port) == 0
    assert len(p.poller) == 0
    if script == "reset":
        assert p.stats.failures == {Failure.BACKEND_RESET: 1}


@pytest.mark.parametrize("how", ["reset", "fin"])
async def test_client_close_after_bulk_reaches_server(h: Harness, how: str) -> None:
    peer = Peer("client")
    peer.start()
    p = h.proxy()
    await p.set_table(table(Server("127.0.0.1", peer.port)))
    r, w = await h.connect(p)
    w.write(b"y" * N)
    await w.drain()
    assert await asyncio.wait_for(r.readexactly(2), WAIT) == b"zz"
    if how == "reset":
        # Bytes the client never reads make its close a reset, as on the server side.
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
        w.write(b"BYE")
        await w.drain()
        w.transport.abort()
    else:
        w.write(b"BYE")
        w.write_eof()
    await asyncio.to_thread(peer.join, WAIT)
    assert peer.outcome == ("reset" if how == "reset" else "eof b'BYE'")
    if how == "fin":
        w.close()
    for _ in range(200):
        if p.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert p.connections == 0
    assert len(p.poller) == 0
