"""The httptools request parser remembers whole reads that were one bodiless request,
the second time they come (`parser._READS`, `parser._ONCE`): the same bytes fed to a
parser at rest give the same callbacks, with the very head made before, without llhttp;
any other read goes through llhttp and gives what a parser that never saw it gives."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httptools
import pytest

from proxy.http import parser
from proxy.http.gwplane import GatewayDispatch
from proxy.http.gwrouting import GatewayRouter
from proxy.http.parser import HttptoolsRequestParser, ParseError, RequestHead
from pylb.config import HttpParser, Limits
from pylb.failures import Failure
from pylb.gatewaymodel import (
    Filters,
    HeaderOps,
    Listener,
    RouteMatch,
    RuleEntry,
    WeightedBackend,
)
from tests.proxy.http.test_parser import Sink

READ = b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
LIMITS = Limits()


def forget_last_read() -> None:
    """Forget the read `known_request` met last (it holds after `_READS` is emptied)."""
    parser._known_read, parser._known = b"", None


@pytest.fixture(autouse=True)
def _empty_memo() -> Iterator[None]:
    parser._READS.clear()
    parser._ONCE.clear()
    forget_last_read()
    yield
    parser._READS.clear()
    parser._ONCE.clear()
    forget_last_read()


class _NoLlhttp:
    """In place of a parser's llhttp object: proves a read did not reach it."""

    def feed_data(self, data: bytes) -> None:
        raise AssertionError(f"llhttp was fed {data!r}")


def head_summary(head: RequestHead) -> tuple[Any, ...]:
    return (head.method, head.target, head.version, head.content_length, head.chunked,
            head.keep_alive, head.upgrade, head.expect_continue, head.host, head.connection,
            head.idempotent, head.raw, head.kept, head.drops, head.xff, tuple(head.headers))


def summary(sink: Sink) -> list[Any]:
    return [(k, head_summary(v) if k == "head" else v) for k, v in sink.events]


def outcome(data: bytes, limits: Limits = LIMITS,
            p: HttptoolsRequestParser | None = None, sink: Sink | None = None
            ) -> tuple[str, Any]:
    sink = sink or Sink()
    if p is None:
        p = HttptoolsRequestParser(sink, limits)
    try:
        p.feed(data)
    except ParseError as e:
        return "error", (e.failure, summary(sink))
    return "ok", (summary(sink), p.at_rest())


def fresh(data: bytes, limits: Limits = LIMITS) -> tuple[str, Any]:
    """What a parser makes of `data` with nothing remembered."""
    saved, once = dict(parser._READS), set(parser._ONCE)
    last = parser._known_read, parser._known
    parser._READS.clear()
    parser._ONCE.clear()
    forget_last_read()
    try:
        return outcome(data, limits)
    finally:
        parser._READS.clear()
        parser._READS.update(saved)
        parser._ONCE.clear()
        parser._ONCE.update(once)
        parser._known_read, parser._known = last


def remembered(data: bytes, limits: Limits = LIMITS) -> RequestHead:
    """`data` fed twice (remembered the second time): the head remembered."""
    for _ in range(2):
        assert outcome(data, limits)[0] == "ok"
    seen = parser._READS[data]
    assert seen[0] is limits
    return seen[1]


def test_the_same_read_again_goes_through_the_memo() -> None:
    sink = Sink()
    p = HttptoolsRequestParser(sink, LIMITS)
    p.feed(READ)  # seen once
    assert READ not in parser._READS and not sink.events[0][1].remembered
    p.feed(READ)  # twice: remembered
    first = sink.events[2][1]
    assert sink.kinds() == ["head", "end"] * 2 and p.at_rest()
    assert parser._READS[READ] == (LIMITS, first) and first.remembered
    # again, on the same connection and on another one: no llhttp, the same head
    other_sink = Sink()
    other = HttptoolsRequestParser(other_sink, LIMITS)
    for q, s in ((p, sink), (other, other_sink)):
        q._p = _NoLlhttp()  # type: ignore[assignment]
        q.feed(bytes(READ))  # an equal read, not the same object
        assert s.events[-2][1] is first and s.kinds()[-2:] == ["head", "end"]
        assert q.at_rest()
    assert outcome(READ) == fresh(READ)


def test_a_parser_makes_llhttp_only_for_a_read_it_must_see() -> None:
    """A new connection's first read, when remembered, needs no llhttp parser (one is
    made for the first read that must go through it; after a chunked body, again)."""
    head = remembered(READ)
    sink = Sink()
    p = HttptoolsRequestParser(sink, LIMITS)
    p.feed(READ)
    assert p._p is None and sink.events[0][1] is head
    p.feed(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert p._p is None  # llhttp read that head; the body is BodyFramer's, and the
    p.feed(b"0\r\n\r\n")  # next request will get a new llhttp parser if it needs one
    assert p._p is None
    p.feed(READ)
    assert p._p is None and sink.kinds() == ["head", "end", "head", "end", "head", "end"]
    p.feed(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert p._p is not None and sink.events[-2][1].target == b"/x"


def test_a_hit_leaves_the_parser_at_rest_for_what_follows() -> None:
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
    remembered(READ)
    sink = Sink()
    p = HttptoolsRequestParser(sink, LIMITS)
    for data in (READ, READ, post, READ, post[:20], post[20:], READ):
        p.feed(data)
    get, post_ = ["head", "end"], ["head", "body", "end"]
    assert sink.kinds() == get + get + post_ + get + post_ + get
    heads = [v for k, v in sink.events if k == "head"]
    assert heads[0] is heads[1] is heads[3] is heads[5] is parser._READS[READ][1]
    assert heads[2].target == heads[4].target == b"/p" and sink.body() == b"xyzxyz"


def test_a_parser_knows_its_last_remembered_read_without_the_memo() -> None:
    """The read last met in `_READS` (or put there) is known without the memo: the same
    read again is that head, without llhttp, even once `_READS` has been emptied (as
    when it is full), to the parser that met it, to any other parser and to
    `known_request` alike; any other read is the memo's or llhttp's, as before; and a
    parser under other limits judges the read itself."""
    sink = Sink()
    p = HttptoolsRequestParser(sink, LIMITS)
    p.feed(READ)
    p.feed(READ)  # remembered by this parser
    head = parser._READS[READ][1]
    parser._READS.clear()
    llhttp, p._p = p._p, _NoLlhttp()  # type: ignore[assignment]
    p.feed(bytes(READ))  # an equal read, not the same object
    assert sink.events[-2][1] is head and sink.kinds()[-2:] == ["head", "end"]
    assert p.at_rest() and not parser._READS
    other_sink = Sink()
    q = HttptoolsRequestParser(other_sink, LIMITS)
    q._p = _NoLlhttp()  # type: ignore[assignment]
    q.feed(bytes(READ))
    assert other_sink.events[0][1] is head and other_sink.kinds() == ["head", "end"]
    assert parser.known_request(HttpParser.HTTPTOOLS, bytes(READ), LIMITS) is head
    p._p = llhttp
    other = b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n"
    p.feed(other)  # another read: llhttp's
    assert sink.events[-2][1].target == b"/other" and sink.events[-2][1] is not head
    # ...but only under its limits: a parser with others judges the read itself
    strict = Limits(max_headers=2)
    assert outcome(READ, strict)[1][0] is Failure.HEADERS_TOO_LARGE
    # a read met in the memo is known from then on, too
    forget_last_read()
    head = remembered(READ)
    remembered(other)  # the last one put in the memo
    again = HttptoolsRequestParser(Sink(), LIMITS)
    again.feed(READ)  # met in the memo
    parser._READS.clear()
    again_sink = Sink()
    fresh_parser = HttptoolsRequestParser(again_sink, LIMITS)
    fresh_parser._p = _NoLlhttp()  # type: ignore[assignment]
    fresh_parser.feed(READ)
    assert again_sink.events[0][1] is head


def test_known_request_knows_its_last_read_without_the_memo() -> None:
    """`known_request` (a connection with no parser) keeps the read it met last in
    `_READS`: the same read again, an equal object, is that head even once `_READS` has
    been emptied; under other limits it is not, nor is another read; and a read the memo
    holds under other limits than the last one's is the memo's."""
    kind = HttpParser.HTTPTOOLS
    head = remembered(READ)
    assert parser.known_request(kind, READ, LIMITS) is head
    parser._READS.clear()
    assert parser.known_request(kind, bytes(READ), LIMITS) is head
    assert parser.known_request(kind, READ, Limits()) is None
    assert parser.known_request(kind, READ.replace(b"/a", b"/b"), LIMITS) is None
    assert parser.known_request(HttpParser.H11, READ, LIMITS) is None
    strict = Limits(max_uri=100)
    other = remembered(READ, strict)
    assert parser.known_request(kind, READ, strict) is other
    assert parser.known_request(kind, READ, LIMITS) is None  # the memo's is strict's


def test_reads_one_byte_apart_are_parsed_anew() -> None:
    """Each one-byte change of a remembered read: the outcome of a parser that never saw
    the read (a refusal with the same failure, or the same callbacks), never the
    remembered head."""
    first = remembered(READ)
    for i in range(len(READ)):
        for b in (0x20, 0x61, 0x0A, 0x00, READ[i] ^ 0x01):
            data = READ[:i] + bytes((b,)) + READ[i + 1:]
            if data == READ:
                continue
            want = fresh(data)
            for _ in range(2):  # (twice: remembered, if it is to be)
                sink = Sink()
                got = outcome(data, sink=sink)
                assert got == want, data
            assert all(v is not first for k, v in sink.events if k == "head"), data
            assert parser._READS[READ][1] is first


@pytest.mark.parametrize("data", [
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab",  # a body
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    READ + READ,  # two requests in one read
    READ + b"GET /b HTTP/1.1\r\n",  # and the start of the next
    b"\r\n" + READ,  # an empty line before it
    READ.replace(b"Host: h", b"Host: h\r\nConnection: close") + READ,  # and one after
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\n",  # refused
    b"GET / HTTP/1.1\r\nHost: h\r\n",  # not whole
], ids=["body", "chunked", "pipelined", "pipelined-partial", "empty-line",
        "close-and-more", "upgrade", "expect", "refused", "partial"])
def test_other_reads_are_not_remembered(data: bytes) -> None:
    want = fresh(data)
    for _ in range(3):
        assert outcome(data) == want
    assert data not in parser._READS
    sink = Sink()
    outcome(data, sink=sink)
    assert not any(v.remembered for k, v in sink.events if k == "head")


@pytest.mark.parametrize("data", [
    READ.replace(b"Host: h", b"Host: h\r\nConnection: close"),
    b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",  # 1.0: closes
], ids=["close", "http-1.0"])
def test_a_closing_request_remembered_ignores_what_follows(data: bytes) -> None:
    """A request that closes the connection: the same callbacks, and then, as llhttp
    would have it, nothing more is taken from the connection."""
    want = fresh(data)
    assert want[0] == "ok" and not want[1][1]  # not at rest: closed
    remembered(data)
    assert outcome(data) == want
    for more in (b"", READ, b"garbage\r\n\r\n"):
        sink = Sink()
        p = HttptoolsRequestParser(sink, LIMITS)
        p._p = _NoLlhttp()  # type: ignore[assignment]
        p.feed(data)
        assert sink.events[0][1] is parser._READS[data][1]
        p.feed(more)  # ignored
        p.feed(data)  # ignored too
        assert sink.kinds() == ["head", "end"] and not p.at_rest()


def test_a_body_in_a_read_of_its_own_is_not_remembered() -> None:
    head = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
    sink = Sink()
    p = HttptoolsRequestParser(sink, LIMITS)
    for _ in range(3):
        p.feed(head)
        p.feed(b"xyz")
    assert sink.kinds() == ["head", "body", "end"] * 3 and not parser._READS
    assert outcome(b"xyz")[1][0] is Failure.BAD_REQUEST


class _Verdicts:
    """llhttp, but for its verdicts on upgrade and keep-alive."""

    def __init__(self, p: Any, upgrade: bool, keep_alive: bool) -> None:
        self.p, self.upgrade, self.keep_alive = p, upgrade, keep_alive

    def feed_data(self, data: bytes) -> None:
        self.p.feed_data(data)

    def get_method(self) -> bytes:
        return bytes(self.p.get_method())

    def should_upgrade(self) -> bool:
        return self.upgrade

    def should_keep_alive(self) -> bool:
        return self.keep_alive


@pytest.mark.parametrize(("upgrade", "keep_alive"), [(True, True), (False, False)])
def test_a_read_llhttp_judges_otherwise_is_not_remembered(upgrade: bool,
                                                           keep_alive: bool) -> None:
    """Were llhttp to take a read as an upgrade, or as closing the connection, where the
    analysis does not (no such read is known), the read would not come to it again."""
    for _ in range(3):
        p = HttptoolsRequestParser(Sink(), LIMITS)
        p._p = _Verdicts(httptools.HttpRequestParser(p), upgrade,  # type: ignore[assignment]
                         keep_alive)
        p.feed(READ)
    assert not parser._READS
    remembered(READ)


def test_a_request_split_across_reads_is_remembered_whole() -> None:
    """The bytes of one request that came in several reads are remembered as one (a
    read of them all is the same request); a read that completes it is not."""
    for cut in (1, 10, len(READ) - 2, len(READ) - 1):
        parser._READS.clear()
        parser._ONCE.clear()
        sink = Sink()
        p = HttptoolsRequestParser(sink, LIMITS)
        for _ in range(2):
            p.feed(READ[:cut])
            p.feed(READ[cut:])
        assert sink.kinds() == ["head", "end"] * 2 and p.at_rest()
        assert list(parser._READS) == [READ]
        p._p = _NoLlhttp()  # type: ignore[assignment]
        p.feed(READ)
        assert sink.events[-2][1] is sink.events[2][1]
    assert outcome(READ) == fresh(READ)


def test_a_request_llhttp_takes_leniently_is_remembered_as_sent() -> None:
    data = READ.replace(b"GET /a", b"GET  /a")  # a double space: llhttp skips it
    want = fresh(data)
    assert want[0] == "ok"
    remembered(data)
    assert outcome(data) == want
    # a remembered read that comes mid-request is taken by llhttp as the bytes they are
    sink = Sink()
    p = HttptoolsRequestParser(sink, LIMITS)
    p.feed(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(READ))
    p.feed(READ)
    assert sink.kinds() == ["head", "body", "end"] and sink.body() == READ


def test_other_limits_never_share_an_entry() -> None:
    remembered(READ)
    assert fresh(READ, Limits(max_headers=2)) == outcome(READ, Limits(max_headers=2))
    assert outcome(READ, Limits(max_headers=2))[1][0] is Failure.HEADERS_TOO_LARGE
    assert outcome(READ, Limits(max_uri=4))[1][0] is Failure.URI_TOO_LONG
    # equal limits, another object: judged again (and remembered with them, in place)
    limits = Limits()
    assert outcome(READ, limits) == fresh(READ, limits)
    assert parser._READS[READ][0] is limits


def test_the_memo_is_bounded() -> None:
    for i in range(parser._SCANS_MAX + 5):
        remembered(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
    assert 0 < len(parser._READS) <= parser._SCANS_MAX
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX: %s\r\n\r\n" % (b"x" * parser._READ_MAX)
    for _ in range(3):
        outcome(big)
    assert big not in parser._READS


def test_reads_seen_once_are_not_remembered() -> None:
    """A client that never repeats a read fills no entry of `_READS` (one read that
    comes between two others' is not lost for them), and what counts sightings is
    bounded."""
    head = remembered(READ)
    for i in range(parser._ONCE_MAX + 5):
        outcome(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
    assert list(parser._READS) == [READ] and parser._READS[READ][1] is head
    assert 0 < len(parser._ONCE) <= parser._ONCE_MAX


class _Client:
    response_edit: Any = None


def test_gateway_request_filters_change_a_copy() -> None:
    """A Gateway route's request header filters apply to a copy of the head: the head
    the parser made (and may give again for the same bytes) stays as it was."""
    ops = HeaderOps(set=(("X-Added", "1"),), remove=("accept",))
    entry = RuleEntry("", RouteMatch(), (WeightedBackend(("ns", "svc", 80), 1),),
                      Filters(request_headers=ops), "ns/r", (0,))
    dispatch = GatewayDispatch(GatewayRouter(
        [Listener("ns/gw", "l", "127.0.0.1", 80, "HTTP", "", (entry,))]))
    head = remembered(READ)
    before = head_summary(head)
    found = dispatch.route(_Client(), head, b"h", b"/a", b"?b=c")  # type: ignore[arg-type]
    assert found is not None
    route, target, sent = found
    assert target == b"/a?b=c" and route.backend == "ns/svc:80"
    assert head_summary(head) == before and head.raw is not None
    assert sent is not head and sent.raw is None
    assert (b"X-Added", b"1") in sent.headers
    assert all(k.lower() != b"accept" for k, _ in sent.headers)
    assert (sent.method, sent.target, sent.host, sent.keep_alive, sent.xff) == \
        (head.method, head.target, head.host, head.keep_alive, head.xff)
    # no filters: the head itself
    plain = RuleEntry("", RouteMatch(), (WeightedBackend(("ns", "svc", 80), 1),),
                      Filters(), "ns/r", (0,))
    dispatch = GatewayDispatch(GatewayRouter(
        [Listener("ns/gw", "l", "127.0.0.1", 80, "HTTP", "", (plain,))]))
    found = dispatch.route(_Client(), head, b"h", b"/a", b"?b=c")  # type: ignore[arg-type]
    assert found is not None and found[2] is head
