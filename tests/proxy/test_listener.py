"""The accept loop: pauses at maxconn and resumes below it; survives EMFILE."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from proxy.listener import ConnectionLimit, Listener, bind_socket
from tests.conftest import until


class Counted(asyncio.Protocol):
    """Echoes; gives its slot back when its connection ends."""

    open: set[Counted] = set()

    def __init__(self, limit: ConnectionLimit) -> None:
        self.limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        Counted.open.add(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        Counted.open.discard(self)
        self.limit.release()



async def test_accepting_pauses_at_maxconn_and_resumes_below() -> None:
    Counted.open = set()
    limit = ConnectionLimit(3)
    sock = bind_socket("127.0.0.1", 0)
    lst = Listener(sock, lambda: Counted(limit), limit=limit)
    lst.start()
    port = lst.address[1]
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    try:
        await until(lambda: len(Counted.open) == 3)
        await asyncio.sleep(0.1)
        assert len(Counted.open) == 3 and limit.current == 3 and not lst.accepting
        # the two others wait in the backlog, connected but not accepted: no echo
        r4, w4 = clients[3]
        w4.write(b"ping")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(r4.read(10), 0.3)
        # one closes: exactly one more is accepted, and the waiting client is served
        clients[0][1].close()
        await until(lambda: limit.current == 3 and len(Counted.open) == 3 and
                    lst.accepting is False)
        assert await asyncio.wait_for(r4.readexactly(4), 2) == b"ping"
        assert limit.refusals >= 1
    finally:
        for _, w in clients:
            w.close()
        lst.close()
        await until(lambda: not Counted.open)


class _Overloaded:
    """A listening socket whose accept fails with EMFILE `fails` times."""

    def __init__(self, real: socket.socket, fails: int) -> None:
        self.real, self.fails = real, fails

    def _fail(self) -> None:
        if self.fails:
            self.fails -= 1
            raise OSError(errno.EMFILE, "Too many open files")

    def accept(self) -> tuple[socket.socket, Any]:
        self._fail()
        return self.real.accept()

    def _accept(self) -> tuple[int, Any]:  # what Listener calls for TCP (no enum work)
        self._fail()
        return self.real._accept()  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_emfile_pauses_then_recovers() -> None:
    Counted.open = set()
    limit = ConnectionLimit(100)
    real = bind_socket("127.0.0.1", 0)
    fake: Any = _Overloaded(real, fails=2)
    lst = Listener(fake, lambda: Counted(limit), limit=limit)
    lst.start()
    r, w = await asyncio.open_connection("127.0.0.1", real.getsockname()[1])
    try:
        w.write(b"hello")
        assert await asyncio.wait_for(r.readexactly(5), 5) == b"hello"
        assert lst.overloads == 2
        assert lst.accepting
    finally:
        w.close()
        lst.close()
        await until(lambda: not Counted.open)


def test_real_fd_exhaustion_recovers_in_a_subprocess() -> None:
    """With RLIMIT_NOFILE lowered, connections past the limit make accept fail with EMFILE;
    once clients close, the server accepts again and serves."""
    code = textwrap.dedent('''
        import asyncio, resource, socket, sys
        sys.path.insert(0, %r)
        from proxy.listener import Listener, ConnectionLimit, bind_socket

        class Echo(asyncio.Protocol):
            def __init__(self, limit): self.limit = limit
            def connection_made(self, t): self.t = t
            def data_received(self, d): self.t.write(d)
            def connection_lost(self, e): self.limit.release()

        async def main():
            limit = ConnectionLimit(10_000)
            lst = Listener(bind_socket("127.0.0.1", 0), lambda: Echo(limit), limit=limit)
            lst.start()
            port = lst.address[1]
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            import os
            used = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (used + 40, hard))
            clients = []
            for _ in range(30):  # each costs 2 fds here (client + accepted)
                try:
                    s = socket.create_connection(("127.0.0.1", port))
                except OSError:
                    break
                s.setblocking(False)
                clients.append(s)
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.3)
            assert lst.overloads > 0, "never hit EMFILE"
            for s in clients:
                s.close()
            await asyncio.sleep(0.5)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"alive")
            data = await asyncio.wait_for(r.readexactly(5), 5)
            w.close()
            lst.close()
            print("OK", data.decode(), lst.overloads)

        asyncio.run(main())
    ''') % (str(__import__("pathlib").Path(__file__).resolve().parents[2]),)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("OK alive")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_accepted_connections_are_whole_sockets(host: str) -> None:
    """Connections are made from the accepted descriptor directly (not socket.accept()):
    IPv4 and IPv6 both give transports with the right family and addresses."""
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    Counted.open = set()
    limit = ConnectionLimit(10)
    try:
        sock = bind_socket(host, 0)
    except OSError:
        pytest.skip(f"cannot bind {host}")
    lst = Listener(sock, lambda: Counted(limit), limit=limit)
    lst.start()
    r, w = await asyncio.open_connection(host, lst.address[1])
    try:
        w.write(b"ping")
        assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
        (conn,) = Counted.open
        t = conn.transport
        assert t.get_extra_info("socket").family == sock.family
        assert t.get_extra_info("peername")[:2] == w.get_extra_info("sockname")[:2]
        assert t.get_extra_info("sockname")[:2] == w.get_extra_info("peername")[:2]
    finally:
        w.close()
        lst.close()
        await until(lambda: not Counted.open)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_protocol_factory_sees_the_accepted_peer(host: str) -> None:
    """`Listener.peer` is the address accept() gave, while the factory runs (the HTTP
    frontend takes the client address from it instead of asking the transport)."""
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    Counted.open = set()
    limit = ConnectionLimit(10)
    try:
        sock = bind_socket(host, 0)
    except OSError:
        pytest.skip(f"cannot bind {host}")
    seen: list[Any] = []

    def factory() -> Counted:
        seen.append(lst.peer)
        return Counted(limit)

    lst = Listener(sock, factory, limit=limit)
    lst.start()
    writers = []
    try:
        for _ in range(3):
            r, w = await asyncio.open_connection(host, lst.address[1])
            writers.append(w)
            w.write(b"ping")
            assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
        assert [p[:2] for p in seen] == [w.get_extra_info("sockname")[:2] for w in writers]
    finally:
        for w in writers:
            w.close()
        lst.close()
        await until(lambda: not Counted.open)


class _CountingAccepts:
    """A listening socket that counts its accept calls and those that found nothing."""

    def __init__(self, real: socket.socket) -> None:
        self.real, self.calls, self.empty = real, 0, 0

    def _accept(self) -> tuple[int, Any]:
        self.calls += 1
        try:
            return self.real._accept()  # type: ignore[attr-defined,no-any-return]
        except BlockingIOError:
            self.empty += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="Linux's TCP_INFO")
async def test_accepts_what_is_queued_without_an_accept_that_finds_nothing() -> None:
    """A readiness callback takes exactly the connections in the accept queue (Linux tells
    their number): no last accept failing with EAGAIN, the costliest part of accepting."""
    import struct

    def queued() -> int:
        info = real.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 28)
        return int(struct.unpack("=24xI", info)[0])

    Counted.open = set()
    limit = ConnectionLimit(100)
    real = bind_socket("127.0.0.1", 0)
    fake: Any = _CountingAccepts(real)
    lst = Listener(fake, lambda: Counted(limit), limit=limit)
    clients = [socket.create_connection(real.getsockname()[:2]) for _ in range(3)]
    try:
        await until(lambda: queued() == 3)
        lst.start()
        lst._on_readable()  # (before the loop's own call, which would then find none)
        assert (fake.calls, fake.empty) == (3, 0)
        assert queued() == 0
        await until(lambda: len(Counted.open) == 3)
        lst._on_readable()  # readable or not, a callback that finds none tries once
        assert (fake.calls, fake.empty) == (4, 1)
    finally:
        for c in clients:
            c.close()
        lst.close()
        await until(lambda: not Counted.open)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux's /proc")
async def test_uvloop_hand_over_makes_no_socket_object_and_leaks_no_descriptor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On uvloop an accepted connection goes to connect_accepted_socket without a
    socket.socket (proxy.listener._HandOver); each descriptor is closed once its
    connection ends, and one whose protocol factory failed (never handed to libuv) is
    closed by the listener, its slot given back."""
    import proxy.listener as listener_mod

    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")

    class NoSocket(socket.socket):
        def __init__(self, *args: Any) -> None:
            raise AssertionError("a socket object was made for an accepted connection")

    monkeypatch.setattr(listener_mod, "_Accepted4", NoSocket)
    Counted.open = set()
    limit = ConnectionLimit(10)
    sock = bind_socket("127.0.0.1", 0)
    fail = [False]

    def factory() -> Counted:
        if fail[0]:
            raise RuntimeError("factory failed")
        return Counted(limit)

    lst = Listener(sock, factory, limit=limit)
    lst.start()
    port = lst.address[1]
    try:
        before = 0
        for i in range(6):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"ping")
            assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
            w.close()
            await until(lambda: not Counted.open and limit.current == 0)
            if i == 0:  # (the first open_connection leaves the loop a descriptor of its own)
                await asyncio.sleep(0.05)
                before = _open_fds()
        await until(lambda: _open_fds() == before)
        fail[0] = True
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r.read(10), 5) == b""  # closed at once
        w.close()
        await until(lambda: limit.current == 0 and _open_fds() == before)
    finally:
        lst.close()
        await until(lambda: not Counted.open)


async def test_uvloop_hand_over_keeps_nothing_for_an_open_connection() -> None:
    """uvloop keeps what it was given for a socket (proxy.listener._HandOver) for the
    connection's life: once handed over it must hold neither the finished
    connect_accepted_socket coroutine nor the listener (~100 bytes an idle connection,
    bench/memory.py)."""
    import gc

    import proxy.listener as listener_mod

    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    # connections of earlier tests in this process may be alive still: not counted (held
    # meanwhile, so that no new object can take the address of one that goes)
    earlier = [o for o in gc.get_objects() if isinstance(o, listener_mod._HandOver)]
    earlier_ids = {id(o) for o in earlier}
    Counted.open = set()
    limit = ConnectionLimit(10)
    lst = Listener(bind_socket("127.0.0.1", 0), lambda: Counted(limit), limit=limit)
    lst.start()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", lst.address[1])
        w.write(b"ping")
        assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
        kept = [(o.coro, o.listener) for o in gc.get_objects()
                if isinstance(o, listener_mod._HandOver) and id(o) not in earlier_ids]
        w.close()
        await until(lambda: not Counted.open)
    finally:
        lst.close()
    assert kept == [(None, None)]  # (uvloop's file object for the open connection)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux's TCP_QUICKACK")
@pytest.mark.parametrize("with_listener", [True, False])
async def test_http_listeners_let_the_answer_carry_the_first_ack(with_listener: bool) -> None:
    """HTTP(S) frontends start their connections in delayed-ACK mode (as haproxy's HTTP
    frontends do): no bare ACK for the request, the response carries it. Linux reports
    TCP_QUICKACK 0 on the listening socket and on what it accepts; a TCP service's
    listener keeps the kernel's default (1)."""
    from proxy.balance import Balancers
    from proxy.http import HttpProxy
    from pylb.config import Settings
    from pylb.counters import Stats

    quickack = socket.TCP_QUICKACK
    plain = bind_socket("127.0.0.1", 0)
    try:
        assert plain.getsockopt(socket.IPPROTO_TCP, quickack) == 1
    finally:
        plain.close()
    settings = Settings()
    stats = Stats()
    proxy = HttpProxy(settings, stats, Balancers(settings.limits, stats=stats),
                      limit=ConnectionLimit(10) if with_listener else None)
    _, port = await proxy.start("127.0.0.1", 0)
    try:
        listening = proxy._listener.sock if proxy._listener is not None else \
            proxy._server.sockets[0]  # type: ignore[union-attr]
        assert listening.getsockopt(socket.IPPROTO_TCP, quickack) == 0
        _, w = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: proxy.conns)
        (conn,) = proxy.conns
        accepted = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert accepted.getsockopt(socket.IPPROTO_TCP, quickack) == 0
        w.close()
    finally:
        await proxy.shutdown(0.5)
