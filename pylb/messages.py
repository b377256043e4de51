"""Messages between the controller and its worker processes, and how they travel.

Theory of operation. Each worker is joined to the controller by one Unix stream socket
(a socketpair made before the worker is spawned). Both ends hand their socket to their own
event loop as a transport (`loop.connect_accepted_socket`) driven by a `Channel`, so:

- a write never blocks and is never cut: `Channel.send` gives the transport one whole
  frame and the transport keeps what the kernel did not take, writing it as the peer reads
  (a multiprocessing `Connection.send` on a socket the loop made non-blocking failed with
  EAGAIN mid-message, leaving a cut message on the stream);
- the sender sees the peer falling behind: `pause_writing`/`resume_writing` fire when its
  write buffer crosses the high / low watermarks, and the sender decides what not to pile
  up (pylb.workers: a worker that lags gets the newest whole table when it drains, not
  every delta in between);
- the reader takes bytes as they come and hands out whole messages (`FrameReader`, which
  does no I/O and is tested on bytes split at every position).

A frame is a 4-byte big-endian length and that many bytes of payload. The payload is a
pickle (protocol 5) of one of the frozen dataclasses below. Pickle, because both ends are
the same code in processes the controller spawned, the socket is private to the pair
(nobody else can write to it), and the payload is mostly `RouteTable`s: frozen dataclasses
that pickle handles without a schema to keep in step with the model (packed into plain
tuples first: pylb.delta's wire form, several times cheaper to pickle). A whole table is
the one big message — 4.7 MB at 10,000 services of 10 servers — and goes to a worker on
start, after a lag, or on request; every other change is a `Delta` of a few hundred bytes
per changed backend (a whole table is made in steps of bounded work, `table_frame`, so
that making it does not hold the controller's loop; it is still one frame). As defence
in depth against a bug rather than an attacker, the reader
only resolves classes and functions of pylb's own message, delta and model modules and a
few builtins (`_Unpickler`). With --gateway-api the controller also sends each worker the
Gateway listeners to bind (`Gateways`: the whole plan on start, after a lag or on request
(`NeedGateways`); else `GatewaysDelta`, the change from the plan sent before), and each
worker says which it could not bind (`GatewaysBound`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import pickle
import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, cast

from pylb.delta import (
    PACKABLE,
    Delta,
    pack_backends,
    pack_routes,
    pack_table,
    unpack_backends,
    unpack_table,
)
from pylb.gatewaydelta import PlanDelta
from pylb.gatewaymodel import GatewayPlan
from pylb.model import Backend, HttpRoute, RouteTable

log = logging.getLogger("pylb.workers")

Key = tuple[str, int]

HEADER = struct.Struct("!I")
# Largest frame accepted: a whole table of 100,000 services is ~60 MB. A longer length is
# a corrupt stream (the channel is closed: the worker is restarted, or exits).
MAX_FRAME = 1 << 30
# Write-buffer watermarks. Above HIGH the sender is paused: a worker stops sending stats,
# the controller stops sending deltas to that worker. 1 MiB holds thousands of deltas or
# health verdicts; a whole table is written even above it (once: see pylb.workers).
HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18


# -- controller → worker ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """The whole table: the worker replaces what it has."""

    table: RouteTable

    def __reduce__(self) -> tuple[Any, ...]:
        if not PACKABLE:
            return (Table, (self.table,))
        return (_unpack_table_message, (pack_table(self.table),))


def _unpack_table_message(packed: tuple[Any, ...]) -> Table:
    return Table(unpack_table(packed))


# A whole table made into a frame a step at a time (`table_frame`): each step packs and
# pickles about this many servers (a backend counts as one more) or routes — ~8 ms of the
# controller's loop on the reference machine, where the whole 10,000-service table in one
# go took ~230 ms of it (and /readyz, served on that loop, waited as long).
TABLE_STEP = 10_000


class _TableParts:
    """The pickled form of a `Table` made by `table_frame`: its routes and backends as
    pickles of their packed parts (pylb.delta's wire form), each made in its own step."""

    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpack_table_parts, self.args)


def _load_part(blob: bytes) -> Any:
    return _Unpickler(io.BytesIO(blob)).load()  # as restricted as the frame itself


def _unpack_table_parts(http: tuple[bytes, ...], https: tuple[bytes, ...], tcp: Any,
                        backends: tuple[bytes, ...], skipped: Any, version: int,
                        certs: Any) -> Table:
    # A part at a time: its packed tuples are garbage before the next part is read (all
    # of them at once were ~29 MiB more at a worker's peak at 10,000 services, and left
    # the heap holed once freed).
    def routes(parts: tuple[bytes, ...]) -> tuple[HttpRoute, ...]:
        return tuple(HttpRoute(*r) for blob in parts for r in _load_part(blob))

    ports: dict[int, int] = {}
    made = tuple(b for blob in backends for b in unpack_backends(_load_part(blob), ports))
    return Table(RouteTable(routes(http), routes(https), tcp, made, skipped, certs,
                            version=version))


def table_frame(table: RouteTable, step: int = TABLE_STEP) -> Generator[None, None, bytes]:
    """The frame of `Table(table)`, made in steps of about `step` servers or routes each:
    the caller runs one step per `next()` (pylb.workers lets its loop run in between) and
    gets the frame as the generator's return value. It decodes to the same message as
    `encode(Table(table))`; only the encoding is cut, never the frame, which the caller
    writes whole."""
    if not PACKABLE:
        return encode(Table(table))

    def route_parts(routes: tuple[HttpRoute, ...]) -> Generator[None, None, tuple[bytes, ...]]:
        out: list[bytes] = []
        for i in range(0, len(routes), step):
            if out:
                yield
            out.append(pickle.dumps(pack_routes(routes[i:i + step]), protocol=5))
        return tuple(out)

    http = yield from route_parts(table.http)
    https = yield from route_parts(table.https)
    backends: list[bytes] = []
    chunk: list[Backend] = []
    size = 0
    for b in table.backends:
        chunk.append(b)
        size += 1 + len(b.servers)
        if size >= step:
            yield
            backends.append(pickle.dumps(pack_backends(tuple(chunk)), protocol=5))
            chunk, size = [], 0
    if chunk:
        yield
        backends.append(pickle.dumps(pack_backends(tuple(chunk)), protocol=5))
    payload = pickle.dumps(_TableParts(http, https, table.tcp, tuple(backends),
                                       table.skipped, table.version, table.certs), protocol=5)
    return HEADER.pack(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class Health:
    """Active-check verdicts, coalesced: the latest per server address since the last
    batch. `full`: this is the whole map (a worker's first, or after it lagged), and
    addresses not in it have no verdict."""

    verdicts: tuple[tuple[Key, bool], ...]
    full: bool = False


@dataclass(frozen=True, slots=True)
class Gateways:
    """--gateway-api: the Gateway listeners to serve (the plan without its status, which
    only the controller writes). `seq` numbers the plans; the worker answers each with
    `GatewaysBound`."""

    seq: int
    plan: GatewayPlan


@dataclass(frozen=True, slots=True)
class GatewaysDelta:
    """--gateway-api: Gateway plan `seq` as the change from plan `base`, which the worker
    was sent last (pylb.gatewaydelta). A worker that does not hold `base` asks for the
    whole plan (`NeedGateways`) and takes no delta until it has it."""

    seq: int
    base: int
    delta: PlanDelta


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Stop accepting, let open connections finish for up to `grace` seconds, exit."""

    grace: float


# -- worker → controller ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker has bound its listeners."""

    index: int


@dataclass(frozen=True, slots=True)
class Error:
    """The worker cannot start (e.g. its port is in use)."""

    message: str


@dataclass(frozen=True, slots=True)
class GatewaysBound:
    """The worker serves Gateway plan `seq`; `unavailable`: the (address, port) it could
    not bind (the listeners' status says PortUnavailable)."""

    seq: int
    unavailable: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class NeedTable:
    """A delta did not apply to the worker's table (`have` is its version): send the
    whole table."""

    have: int


@dataclass(frozen=True, slots=True)
class NeedGateways:
    """A Gateway plan delta was not from the plan the worker holds (`have`: its seq, -1
    for none): send the whole plan."""

    have: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Counter rows changed since the worker's last report (all of them when `full`), in
    pylb.counters' snapshot shape, and the rows the worker dropped since."""

    frontends: dict[str, dict[str, Any]] = field(default_factory=dict)
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    removed_backends: tuple[str, ...] = ()
    removed_servers: tuple[str, ...] = ()
    full: bool = False


@dataclass(frozen=True, slots=True)
class Ejected:
    """The worker ejected the server at `key` (failed connects): the controller's next
    passing check of it is sent back as a verdict, which ends the ejection. One per
    ejection, so at most one per server per --error-down-for."""

    key: Key


Message = (Table | Delta | Health | Gateways | GatewaysDelta | Shutdown | Ready | Error
           | GatewaysBound | NeedTable | NeedGateways | Stats | Ejected)


# -- framing ------------------------------------------------------------------------------


class FrameError(Exception):
    """The stream is not a sequence of valid frames."""


def encode(msg: Message) -> bytes:
    """One frame: length, then the pickled message."""
    payload = pickle.dumps(msg, protocol=5)
    return HEADER.pack(len(payload)) + payload


_ALLOWED = {
    "pylb.messages": None,
    "pylb.delta": None,
    "pylb.model": None,
    "pylb.gatewaymodel": None,
    "pylb.gatewaydelta": None,
    "builtins": frozenset({"tuple", "list", "dict", "set", "frozenset", "str", "int",
                           "float", "bool", "bytes", "NoneType"}),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get(module, frozenset())
        if allowed is not None and name not in allowed:
            raise FrameError(f"unexpected class {module}.{name} in a message")
        return super().find_class(module, name)


def decode(payload: bytes) -> Message:
    try:
        msg = _Unpickler(io.BytesIO(payload)).load()
    except FrameError:
        raise
    except Exception as e:
        raise FrameError(f"undecodable message: {e}") from None
    if not isinstance(msg, Table | Delta | Health | Gateways | GatewaysDelta | Shutdown
                      | Ready | Error | GatewaysBound | NeedTable | NeedGateways | Stats
                      | Ejected):
        raise FrameError(f"not a message: {type(msg).__name__}")
    return msg


class FrameReader:
    """Bytes in, whole messages out. Keeps the bytes of an unfinished frame."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Message]:
        """The messages completed by `data`, in order. FrameError: the stream is corrupt
        (too long a frame, or a payload that is not a message); drop the stream."""
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (n,) = HEADER.unpack_from(buf, pos)
            if n > self._max:
                raise FrameError(f"frame of {n} bytes (at most {self._max})")
            if end - pos - 4 < n:
                break
            with memoryview(buf) as view:
                payload = bytes(view[pos + 4:pos + 4 + n])
            out.append(decode(payload))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame."""
        return len(self._buf)


# -- the channel --------------------------------------------------------------------------


class Channel(asyncio.Protocol):
    """One end of a controller↔worker stream: frames out through the loop's buffered
    transport, messages in to `on_message`, flow control to `on_pause`/`on_resume`."""

    def __init__(self, on_message: Callable[[Message], None],
                 on_lost: Callable[[BaseException | None], None],
                 on_pause: Callable[[], None] | None = None,
                 on_resume: Callable[[], None] | None = None, *,
                 high: int = HIGH_WATER, low: int = LOW_WATER, name: str = "") -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._high, self._low = high, low
        self._reader = FrameReader()
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.closed = False
        self._lost: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        self.transport.set_write_buffer_limits(high=self._high, low=self._low)

    def data_received(self, data: bytes) -> None:
        try:
            msgs = self._reader.feed(data)
        except FrameError as e:
            log.error("%s: corrupt message stream: %s", self.name, e)
            self.abort()
            return
        for msg in msgs:
            if self.closed:
                return
            try:
                self._on_message(msg)
            except Exception:  # one bad message must not end the stream
                log.exception("%s: handling %s failed", self.name, type(msg).__name__)

    def eof_received(self) -> bool:
        return False  # the peer is gone: close our end too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.transport = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._on_lost(exc)

    def pause_writing(self) -> None:
        self.paused = True
        if self._on_pause is not None:
            self._on_pause()

    def resume_writing(self) -> None:
        self.paused = False
        if self._on_resume is not None:
            self._on_resume()

    def send(self, msg: Message) -> bool:
        """Queue one message; False when the stream is closed."""
        return self.send_frame(encode(msg))

    def send_frame(self, frame: bytes) -> bool:
        """Queue one frame made by `encode` (to send one message to several peers)."""
        t = self.transport
        if self.closed or t is None or t.is_closing():
            return False
        t.write(frame)
        return True

    @property
    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        t = self.transport
        return t.get_write_buffer_size() if t is not None else 0

    def close(self) -> None:
        """Close after the buffered frames are written."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        if self.closed:
            return
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._lost)


async def open_channel(sock: Any, channel: Channel) -> Channel:
    """Drive `sock` (one end of the socketpair) with `channel` on the running loop."""
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: channel, sock)
    return channel
