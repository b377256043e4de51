"""Cross-wired flow control, shared by the L4 splicer (proxy.tcp.proxy) and the L7 router
(proxy.http): one pair of write-buffer watermarks, and reading paused for named reasons.

A proxy reads one side and writes what it read to the other. When the other side's
transport cannot send (its write buffer is above `HIGH_WATER`, asyncio calls
`pause_writing`), reading the first side stops, and starts again when that buffer has
drained below `LOW_WATER` (`resume_writing`): Envoy's cross-wired watermarks
(`tcp_proxy.h`), both marks, not uvicorn's single one.

Reading a side can be stopped for several independent reasons at once (the peer is
full, pipelined requests wait, a body is held while the server is connected, ...). Each
is a bit of `Pause`; reading resumes only when no reason is left (`pause`/`resume`
below keep the bits and call the transport only on the edges). The hot paths keep the
bits in a plain int slot and use the int values (`int(Pause.X)`): an IntFlag's `|` and
`&` are Python calls.

The watermarks. What a stalled peer can make us hold per direction is the high mark
plus the one read that crossed it: uvloop reads up to 256 KiB at once, so 256 KiB + 256
KiB = 512 KiB (tests/hardening/test_slow_clients.py asserts that bound). A high mark
below one read saves little memory (one read still lands whole) and pauses a bulk
transfer more often: each pause/resume is two epoll changes. 256 KiB is also the splice
pipe's size (proxy.tcp.proxy.PIPE_SIZE), so the copy and splice paths hold alike. The
low mark at a quarter of the high one lets a resumed reader move a few reads before it
pauses again (no pause/resume ping-pong on every read), as asyncio's own default pair
(64 KiB / 16 KiB) does.
"""

from __future__ import annotations

import asyncio
import enum

HIGH_WATER = 256 * 1024
LOW_WATER = HIGH_WATER // 4


class Pause(enum.IntFlag):
    PEER = 1  # the other side's write buffer is above the high watermark
    QUEUE = 2  # L7: pipelined requests wait for the exchange before them
    PENDING = 4  # L7: body bytes held while the server is being connected
    UPGRADE = 8  # L7: after an upgrade request, its next bytes wait for the 101 (or not)
    CONNECTING = 16  # L4: bytes held (up to HIGH_WATER) until the server is connected
    # L7: a new connection's whole first request is answered before the client is read
    # again, or until the frontend's next tick (proxy.fdtransport: no epoll registration
    # for a `Connection: close` exchange; haproxy does not watch the client then either)
    ANSWER = 32


def set_limits(transport: asyncio.WriteTransport) -> None:
    transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # (high, low); no kwargs dict


def pause(transport: asyncio.ReadTransport | None, paused: int, why: int) -> int:
    """Stop reading `transport` for `why` too; returns the new reasons."""
    if not paused and transport is not None:
        transport.pause_reading()
    return paused | why


def resume(transport: asyncio.ReadTransport | None, paused: int, why: int) -> int:
    """`why` no longer holds; reading resumes if no other reason is left."""
    if paused & why:
        paused &= ~why
        if not paused and transport is not None and not transport.is_closing():
            transport.resume_reading()
    return paused
