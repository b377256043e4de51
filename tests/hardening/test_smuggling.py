"""Issue #12, request smuggling and parsing, end to end over real sockets on both parsers.

Every bad request of `_smuggling.REQUESTS` is written in one send to a fresh pylb in front
of a recording backend: pylb answers it with its status (400, 414 or 431) and closes, the
backend receives zero bytes (or, for a valid request in front of the bad one, exactly that
request), and the frontend's ereq column counts it once. `ACCEPTED` holds odd but valid
requests, which must reach the backend as the table says (so the rejections are not a
parser refusing everything). `RESPONSES`: bad answers of a backend give the client a 502
and the backend connection is not used again.

With haproxy installed, `test_haproxy_reference` runs the same table through haproxy 2.x
and writes pylb's and haproxy's verdicts side by side to tests/artifacts/smuggling.md
(also: `python -m tests.hardening.test_smuggling`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import dataclass

import pytest
import uvloop

from proxy.http import parser
from pylb.config import HttpParser, Limits
from tests.hardening._smuggling import (
    ACCEPTED,
    CHUNKED,
    HAPROXY,
    POST,
    REQUESTS,
    RESPONSES,
    VALID,
    Accepted,
    Case,
    Outcome,
    RecordingBackend,
    haproxy,
    haproxy_version,
    parse_statuses,
    pylb,
    run_pylb,
    send_case,
)
from tests.proxy.http.conftest import PARSERS

ARTIFACT = os.path.join(os.path.dirname(__file__), "..", "artifacts", "smuggling.md")
kinds = pytest.mark.parametrize("kind", PARSERS, ids=lambda k: k.value)


def test_table_size() -> None:
    names = [c.name for c in REQUESTS + RESPONSES] + [a.name for a in ACCEPTED]
    assert len(set(names)) == len(names)
    assert len(REQUESTS) >= 60


@pytest.mark.parametrize(("host", "ok"), [
    (b"example.com", True), (b"example.com:8080", True), (b"EXAMPLE.com", True),
    (b"10.0.0.1:80", True), (b"[::1]", True), (b"[::1]:443", True), (b"a_b~c%41", True),
    (b"a b", False), (b"a@b", False), (b"a/b", False), (b"a:", False), (b":80", False),
    (b"a:123456", False), (b"a:8x", False), (b"a:80:81", False), (b"[::1", False),
    (b"[::g]", False), (b"[]", False), (b"a]", False), (b"[::1]x", False),
    (b"a\x00", False), (b"\xc3\xa9", False), (b"a?b", False), (b"a#b", False),
])
def test_host_syntax(host: bytes, ok: bool) -> None:
    for _ in range(2):  # the second time from the cache of valid hosts
        assert parser._valid_host(host) is ok


@pytest.mark.parametrize(("target", "host", "ok"), [
    (b"http://x/r", b"x", True), (b"http://x:80/r", b"X", True), (b"HTTP://x/r", b"x:80", True),
    (b"https://x:443?q", b"x", True), (b"https://x/r", b"x:80", False),
    (b"http://x/r", b"y", False), (b"http://x:81/r", b"x", False), (b"http://x/r", b"", False),
])
def test_absolute_form_host(target: bytes, host: bytes, ok: bool) -> None:
    headers = [(b"Host", host)]
    if ok:
        assert parser.analyze_request(b"GET", target, b"1.1", headers, Limits()).host == host
    else:
        with pytest.raises(parser.ParseError):
            parser.analyze_request(b"GET", target, b"1.1", headers, Limits())


def _check_bad(case: Case, outcome: Outcome, backend: RecordingBackend,
               ereq: int) -> None:
    assert outcome.statuses == [200] * case.forwarded + [case.status], outcome
    assert outcome.closed, "pylb left the connection open"
    assert ereq == 1
    if not case.forwarded:
        assert backend.received == b""
        return
    # The valid requests in front reached the backend whole, and nothing more did.
    assert len(backend.requests) == case.forwarded
    assert backend.received.count(b" HTTP/1.1\r\n") == case.forwarded
    assert all(t == b"/r" for _, t, _, _ in backend.requests)
    assert not any(c.error for c in backend.conns), [c.error for c in backend.conns]


@kinds
@pytest.mark.parametrize("case", REQUESTS, ids=lambda c: c.name)
async def test_bad_request(kind: HttpParser, case: Case) -> None:
    outcome, p = await run_pylb(kind, case.data)
    fe = p.stats.frontend("http")
    _check_bad(case, outcome, p.backend, fe.req_errors)
    assert fe.hrsp[case.status // 100 - 1] == 1 + (case.status < 300) * case.forwarded


@kinds
@pytest.mark.parametrize("case", ACCEPTED, ids=lambda a: a.name)
async def test_odd_but_valid(kind: HttpParser, case: Accepted) -> None:
    outcome, p = await run_pylb(kind, case.data, responses=1)
    assert outcome.statuses == [200]
    assert p.stats.frontend("http").req_errors == 0
    [(_, target, headers, body)] = p.backend.requests
    assert target == case.target.encode()
    assert [v for k, v in headers if k.lower() == b"host"] == [case.host.encode()]
    assert body == case.body
    lengths = [v for k, v in headers if k.lower() == b"content-length"]
    if case.content_length is not None:
        assert lengths == [case.content_length.encode()]


@kinds
@pytest.mark.parametrize("case", RESPONSES, ids=lambda c: c.name)
async def test_bad_response(kind: HttpParser, case: Case) -> None:
    async with pylb(kind, response=case.data) as p:
        first = await send_case(p.port, VALID, 10.0)
        assert first.statuses == [case.status], first
        # The bad connection is not reused: the next request goes on a new one.
        p.backend.response = None
        second = await send_case(p.port, VALID, 10.0, responses=1)
        assert second.statuses == [200]
        assert p.proxy.pool.idle_count() <= 1
    conns = p.backend.conns
    assert len(conns) == 2
    assert conns[0].data.count(b" HTTP/1.1\r\n") == 1
    assert len(conns[1].requests) == 1
    assert p.stats.backend("default/rec:80").resp_errors == 1


@kinds
async def test_bad_chunk_after_the_head_went(kind: HttpParser) -> None:
    """A chunked body that goes bad in a later read, once the head has been forwarded: the
    client gets its 400 and the close, and the backend never sees a complete request (its
    connection is cut mid-body)."""
    async with pylb(kind) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        try:
            writer.write(POST + CHUNKED + b"\r\n5\r\nhello\r\n")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10.0
            while b"hello" not in p.backend.received and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert b"hello" in p.backend.received
            writer.write(b"5\r\nhelloXX0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 10.0)  # to EOF: pylb closed
        finally:
            writer.transport.abort()
        assert parse_statuses(raw) == [400]
        assert await p.backend.wait_all_closed(10.0)  # pylb cut the backend connection
    assert p.backend.requests == []
    assert b"smuggled" not in p.backend.received
    assert p.stats.frontend("http").req_errors == 1


# -- haproxy as a reference column -------------------------------------------------------------


@dataclass
class Verdict:
    outcome: Outcome
    requests: int  # requests the backend parsed
    size: int  # bytes the backend received

    def cell(self) -> str:
        s = self.outcome.verdict()
        if self.size:
            s += f"; backend got {self.size} B, {self.requests} request(s)"
        return s


async def _haproxy_verdicts(cases: tuple[Case, ...]) -> list[Verdict]:
    backends = [await RecordingBackend().start() for _ in cases]
    try:
        async with haproxy([b.port for b in backends]) as ports:
            outs = await asyncio.gather(*(send_case(port, c.data, 4.0)
                                          for port, c in zip(ports, cases, strict=True)))
        for b in backends:
            await b.wait_all_closed(5.0)
    finally:
        for b in backends:
            await b.stop()
    return [Verdict(o, len(b.requests), len(b.received))
            for o, b in zip(outs, backends, strict=True)]


async def _pylb_verdicts(kind: HttpParser, cases: tuple[Case, ...]) -> list[Verdict]:
    runs = await asyncio.gather(*(run_pylb(kind, c.data) for c in cases))
    return [Verdict(o, len(p.backend.requests), len(p.backend.received)) for o, p in runs]


async def _response_verdicts(cases: tuple[Case, ...], version: str | None
                             ) -> list[list[str]]:
    """Per bad response: pylb's verdicts (both parsers), then haproxy's."""
    out: list[list[str]] = [[] for _ in cases]
    for kind in PARSERS:
        for i, case in enumerate(cases):
            async with pylb(kind, response=case.data) as p:
                out[i].append((await send_case(p.port, VALID, 10.0)).verdict())
    if version:
        backends = [await RecordingBackend(c.data).start() for c in cases]
        try:
            async with haproxy([b.port for b in backends]) as ports:
                outs = await asyncio.gather(*(send_case(port, VALID, 4.0) for port in ports))
        finally:
            for b in backends:
                await b.stop()
        for row, o in zip(out, outs, strict=True):
            row.append(o.verdict())
    return out


def _haproxy_differs(v: Verdict, case: Case) -> bool:
    return v.outcome.statuses[-1:] != [case.status] or _let_through(v, case)


def _let_through(v: Verdict, case: Case) -> bool:
    """More than the valid prefix reached the backend."""
    return v.requests > case.forwarded or (not case.forwarded and v.size > 0)


async def write_report(path: str) -> tuple[list[str], list[str]]:
    """Run the table through pylb (both parsers) and haproxy; write the markdown. Returns
    the cases where a pylb verdict is not the table's, and those where haproxy's differs
    from pylb's with no comment in `HAPROXY`."""
    version = haproxy_version()
    pylb_runs = {k: await _pylb_verdicts(k, REQUESTS) for k in PARSERS}
    hap = await _haproxy_verdicts(REQUESTS) if version else None
    if hap:
        # All cases run at once against one haproxy; now and then (about one run in two,
        # one case in 135, not explained yet) a case's backend is credited with bytes
        # while haproxy answered it 400. A difference with no comment is run again alone
        # before it is reported.
        for i, case in enumerate(REQUESTS):
            if case.name not in HAPROXY and _haproxy_differs(hap[i], case):
                hap[i] = (await _haproxy_verdicts((case,)))[0]
    wrong = []
    uncommented: list[str] = []  # haproxy differs, and the table does not say who is right
    through = 0
    differ = 0
    rows = ["| case | expected | pylb h11 | pylb httptools | haproxy | note |",
            "|---|---|---|---|---|---|"]
    for i, case in enumerate(REQUESTS):
        expected = ",".join(["200"] * case.forwarded + [str(case.status)]) + " closed"
        for k in PARSERS:
            v = pylb_runs[k][i]
            through += _let_through(v, case)
            if v.outcome.verdict() != expected or v.requests != case.forwarded:
                wrong.append(f"{case.name}[{k.value}]")
        h = hap[i].cell() if hap else "(not installed)"
        if hap and _haproxy_differs(hap[i], case):
            differ += 1
            h = f"**{h}**"
            if case.name not in HAPROXY:
                uncommented.append(case.name)
        cells = " | ".join(pylb_runs[k][i].cell() for k in PARSERS)
        note = "; ".join(x for x in (case.note, HAPROXY.get(case.name, "")) if x)
        rows.append(f"| `{case.name}` | {expected} | {cells} | {h} | {note} |")
    n = len(REQUESTS)
    head = [
        "# Request smuggling: pylb and haproxy side by side",
        "",
        "Generated by `python -m tests.hardening.test_smuggling` (the test "
        "`test_haproxy_reference` writes it too). Each case is sent in one write on a "
        "fresh connection to a fresh pylb (`HttpProxy`, in-process) and to haproxy "
        f"{version or '(not installed)'} (`mode http`, one backend), each in front of a "
        "backend that records every byte (and closes without answering what h11 cannot "
        "parse, so a proxy in front says 502). A verdict is the statuses the client got "
        "and whether the server then closed. Bold: haproxy's final status differs from "
        "pylb's, or haproxy let the bad request reach the backend.",
        "",
        f"- bad requests: {n} cases x 2 parsers = {2 * n} tried; rejected by pylb as the "
        f"table expects: {2 * n - len(wrong)}; reached a backend through pylb: {through}",
        f"- haproxy differs on {differ} of {n} cases" if hap else "- haproxy: not installed",
        "",
    ]
    rows += ["", "## Bad responses (backend to proxy)", "",
             "The backend answers a valid GET with these bytes and keeps the connection "
             "open; pylb must answer 502 and not use that connection again "
             "(`test_bad_response` checks the second).", "",
             "| case | expected | pylb h11 | pylb httptools | haproxy |", "|---|---|---|---|---|"]
    for case, verdicts in zip(RESPONSES, await _response_verdicts(RESPONSES, version),
                              strict=True):
        if not version:
            verdicts.append("(not installed)")
        rows.append(f"| `{case.name}` | {case.status} closed | " + " | ".join(verdicts)
                    + " |")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(head + rows) + "\n")
    return wrong, uncommented


@pytest.mark.needs_tool
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
async def test_haproxy_reference() -> None:
    wrong, uncommented = await write_report(ARTIFACT)
    assert wrong == []
    if (haproxy_version() or "").startswith("2.6."):
        # The comments were written against Debian 12's haproxy 2.6: each difference has
        # one (another version may differ elsewhere; the table then still gets written).
        assert uncommented == []
    with open(ARTIFACT) as f:
        text = f.read()
    assert text.count("\n| `") == len(REQUESTS) + len(RESPONSES)


if __name__ == "__main__":
    bad, missing = uvloop.run(write_report(ARTIFACT))
    print(f"wrote {os.path.normpath(ARTIFACT)}; pylb verdicts off the table: {bad or 'none'}; "
          f"haproxy differences without a comment: {missing or 'none'}")
    sys.exit(1 if bad else 0)
