"""The HTTP/2 attacks of the last years, each on real sockets with the h2 library (or raw
frames) as the client: each refused as RFC 9113 says, none reaching a backend, and the
connection's other streams unaffected where the RFC lets the error be a stream's."""

from __future__ import annotations

import asyncio

import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from proxy.http import h2server
from pylb.config import HttpParser
from tests.proxy.http.conftest import Running, StartProxy
from tests.proxy.http.h2client import H2Client, req_headers

PROTOCOL_ERROR, CANCEL, ENHANCE_YOUR_CALM = 1, 8, 11


@pytest.fixture
def parser_kind() -> HttpParser:
    return HttpParser.AUTO


async def h2c(start_proxy: StartProxy, **kw: object) -> tuple[Running, H2Client]:
    r = await start_proxy(1, h2c=True, **kw)
    return r, await H2Client.open(r.port)


def seen(r: Running) -> list[str]:
    return [s.target for b in r.backends for s in b.seen]


async def still_serves(c: H2Client) -> None:
    status, _, _ = await c.response(await c.get(b"/app/after"))
    assert status == 200


async def test_rapid_reset_gets_enhance_your_calm(start_proxy: StartProxy) -> None:
    r, c = await h2c(start_proxy)
    try:
        for _ in range(10):  # 10 x 100 streams opened and reset at once
            for _ in range(100):
                sid = c.conn.get_next_available_stream_id()
                c.conn.send_headers(sid, req_headers(b"/app/rr"), end_stream=True)
                c.conn.reset_stream(sid, CANCEL)
            await c.flush()
            if c.closed:
                break
        await c.until(lambda: c.goaway() is not None, 10)
        goaway = c.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
        await c.until(lambda: c.closed, 5)
        assert c.closed
    finally:
        await c.close()
    # Bounded work: the budget's worth of streams at most was routed.
    assert r.stats.frontend("http").req_total <= h2server.RESET_BUDGET + 1
    assert len(seen(r)) <= h2server.RESET_BUDGET


async def test_continuation_flood(start_proxy: StartProxy) -> None:
    r, c = await h2c(start_proxy)
    try:
        block = hpack.Encoder().encode(req_headers(b"/app/cont"))
        c.raw(HeadersFrame(1, data=block[:5]).serialize())  # no END_HEADERS
        for _ in range(200):
            c.raw(ContinuationFrame(1, data=b"\x40\x01a\x01b").serialize())
            if c.writer.is_closing():
                break
        c.raw(ContinuationFrame(1, data=block[5:], flags=["END_HEADERS"]).serialize())
        await c.until(lambda: c.closed, 10)
        assert c.closed
        goaway = c.goaway()
        assert goaway is not None and goaway.error_code in (PROTOCOL_ERROR, ENHANCE_YOUR_CALM)
    finally:
        await c.close()
    assert seen(r) == []


async def test_hpack_bomb(start_proxy: StartProxy) -> None:
    r, c = await h2c(start_proxy)
    try:
        enc = hpack.Encoder()
        block = enc.encode(req_headers(b"/app/bomb"))
        block += enc.encode([(b"x-bomb", b"a" * 4000)])  # into the dynamic table
        block += b"\xbe" * 3000  # index 62, 3000 times: 12 MB decoded from 3 KB
        c.raw(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        await c.until(lambda: c.closed, 10)
        goaway = c.goaway()
        assert goaway is not None and goaway.error_code != 0
    finally:
        await c.close()
    assert seen(r) == []


@pytest.mark.parametrize("kind", ["settings", "ping", "window_update"])
async def test_control_frame_floods(start_proxy: StartProxy, kind: str) -> None:
    r, c = await h2c(start_proxy)
    frame = {
        "settings": SettingsFrame(0, settings={4: 65535}),
        "ping": PingFrame(0, opaque_data=b"12345678"),
        "window_update": WindowUpdateFrame(0, window_increment=1),
    }[kind].serialize()
    try:
        for _ in range(50):
            c.raw(frame * 100)
            await asyncio.sleep(0)
            if c.writer.is_closing():
                break
        # Not reading meanwhile; now read what came back.
        await c.until(lambda: bool(c.goaway_codes) or c.closed, 10)
        await c.until(lambda: c.closed, 10)
        assert c.goaway_codes == [ENHANCE_YOUR_CALM]
    finally:
        await c.close()
    assert seen(r) == []


async def test_zero_initial_window_stall(start_proxy: StartProxy) -> None:
    """A client that announces a zero window and never opens it: the stream is reset
    after timeout client, the backend connection let go; the connection lives on."""
    r = await start_proxy(1, h2c=True, timeouts={"client": 1.0})
    c = await H2Client.open(r.port)
    try:
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        await c.flush()
        sid = await c.get(b"/app/big?n=1000000")
        await c.until(lambda: c.ended(sid), 8)
        assert c.reset_code(sid) == CANCEL
        assert not c.of(sid, h2.events.DataReceived)
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        await c.flush()
        await still_serves(c)
    finally:
        await c.close()


@pytest.mark.parametrize("ids", [(2,), (5, 3)], ids=["even", "decreasing"])
async def test_stream_id_misuse(start_proxy: StartProxy, ids: tuple[int, ...]) -> None:
    r, c = await h2c(start_proxy)
    try:
        enc = hpack.Encoder()
        for sid in ids:
            c.raw(HeadersFrame(sid, data=enc.encode(req_headers(b"/app/id%d" % sid)),
                               flags=["END_HEADERS", "END_STREAM"]).serialize())
        await c.until(lambda: c.closed, 10)
        goaway = c.goaway()
        assert goaway is not None and goaway.error_code == PROTOCOL_ERROR
    finally:
        await c.close()
    assert "/id2" not in seen(r) and "/id3" not in seen(r)


SMUGGLING = {
    "path-space": req_headers(b"/app/a HTTP/1.1\r\nX: y"),
    "path-crlf": req_headers(b"/app/a\r\nTransfer-Encoding: chunked"),
    "path-space-only": req_headers(b"/app/a b"),
    "value-crlf": req_headers(extra=[(b"x-a", b"1\r\nTransfer-Encoding: chunked")]),
    "value-nul": req_headers(extra=[(b"x-a", b"1\x00")]),
    "transfer-encoding": req_headers(extra=[(b"transfer-encoding", b"chunked")]),
    "connection": req_headers(extra=[(b"connection", b"close")]),
    "keep-alive": req_headers(extra=[(b"keep-alive", b"5")]),
    "upgrade": req_headers(extra=[(b"upgrade", b"websocket")]),
    "te-gzip": req_headers(extra=[(b"te", b"gzip")]),
    "upper-name": req_headers(extra=[(b"X-Upper", b"1")]),
    "name-colon": req_headers(extra=[(b"x:a", b"1")]),
    "authority-space": req_headers(authority=b"a b"),
    "host-mismatch": req_headers(extra=[(b"host", b"other.example")]),
    "pseudo-after-regular": [*req_headers(extra=[(b"x-a", b"1")]), (b":path", b"/app/2")],
    "unknown-pseudo": [*req_headers(), (b":protocol", b"websocket")],
    "no-path": [h for h in req_headers() if h[0] != b":path"],
    "connect": req_headers(method=b"CONNECT"),
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
async def test_malformed_headers_reset_the_stream_only(start_proxy: StartProxy,
                                                       case: str) -> None:
    r, c = await h2c(start_proxy)
    try:
        ok = await c.get(b"/app/before?delay=0.3")  # under way on the same connection
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, SMUGGLING[case], end_stream=True)
        await c.flush()
        await c.until(lambda: c.ended(sid), 10)
        assert c.reset_code(sid) == PROTOCOL_ERROR  # RFC 9113 §8.1.1: a stream error
        status, _, _ = await c.response(ok)
        assert status == 200
        await still_serves(c)
        assert c.goaway() is None
    finally:
        await c.close()
    assert sorted(seen(r)) == ["/after", "/before?delay=0.3"]


@pytest.mark.parametrize(("length", "sent"), [(b"10", 3), (b"10", 12), (b"1,1", 1)],
                         ids=["short", "long", "not-a-number"])
async def test_content_length_mismatching_data(start_proxy: StartProxy, length: bytes,
                                               sent: int) -> None:
    r, c = await h2c(start_proxy)
    try:
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, req_headers(b"/app/cl", b"POST",
                                             extra=[(b"content-length", length)]))
        c.conn.send_data(sid, b"x" * sent, end_stream=True)
        await c.flush()
        await c.until(lambda: c.ended(sid) or c.closed, 10)
        # A stream error, or (the h2 engine's own check) a connection error: either
        # way RFC 9113 §8.1.1 is kept and nothing reaches the backend whole.
        assert c.reset_code(sid) == PROTOCOL_ERROR or c.goaway_codes == [PROTOCOL_ERROR]
    finally:
        await c.close()
    await asyncio.sleep(0.1)
    assert "/cl" not in seen(r)


async def test_reset_of_a_stream_under_way_spares_the_others(start_proxy: StartProxy) -> None:
    r, c = await h2c(start_proxy)
    try:
        slow = await c.get(b"/app/hang")
        ok = await c.get(b"/app/ok?delay=0.2")
        await asyncio.sleep(0.1)
        c.conn.reset_stream(slow, CANCEL)
        await c.flush()
        status, _, _ = await c.response(ok)
        assert status == 200
        be = r.stats.backend("default/app:80")
        for _ in range(100):  # the reset stream's backend connection is let go
            if be.cur_conns == 0:
                break
            await asyncio.sleep(0.02)
        assert be.cur_conns == 0
        await still_serves(c)
    finally:
        await c.close()


async def test_data_on_a_closed_stream(start_proxy: StartProxy) -> None:
    r, c = await h2c(start_proxy)
    try:
        sid = await c.get(b"/app/x")
        await c.response(sid)
        c.raw(DataFrame(sid, data=b"late").serialize())
        await c.until(lambda: c.goaway() is not None or c.ended(sid), 5)
        # STREAM_CLOSED (a stream error, or a connection error, RFC 9113 §5.1): no crash
        await asyncio.sleep(0.1)
    finally:
        await c.close()
    assert seen(r) == ["/x"]
