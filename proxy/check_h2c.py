"""The health check of an h2c (gRPC) server: one HTTP/2 exchange with prior knowledge, on
the h2 library, for `proxy.check`'s probe of a backend whose servers speak h2c.

Two kinds, chosen by the check path (`lb.check-path`):
- `/grpc.health.v1.Health/Check`, optionally `?service=NAME`: the gRPC health checking
  protocol (grpc/grpc doc/health-checking.md), as Envoy's `grpc_health_check` and
  Kubernetes' `grpc:` probes speak it: a unary call with a HealthCheckRequest for
  `NAME` (empty: the server as a whole); it passes when the call ends with
  `grpc-status: 0` and the response's status is SERVING.
- any other path: `GET path` over h2c, passing on 2xx and 3xx, as an HTTP/1.1 check does
  (haproxy's `option httpchk` with `check-proto h2`; Envoy's `http_health_check` with
  `codec_client_type: HTTP2`).

Sans-IO apart from the one reader/writer pair it is handed: `exchange` returns what the
server said, and `proxy.check` turns it into haproxy's check statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs

import h2.config
import h2.connection
import h2.events
import h2.exceptions

GRPC_HEALTH = "/grpc.health.v1.Health/Check"
SERVING = 1  # grpc.health.v1.HealthCheckResponse.ServingStatus
_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_MAX_BODY = 4096  # a health response is a few bytes; more is not a health response


class BadResponse(Exception):
    """The server's answer is not HTTP/2 or not the protocol asked for (L7RSP)."""


def health_request(service: str) -> bytes:
    """A gRPC message (length-prefixed) holding HealthCheckRequest{service}."""
    name = service.encode()
    msg = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def health_status(body: bytes) -> int:
    """The `status` of the HealthCheckResponse in a gRPC response body; raises
    BadResponse. Fields other than 1 are skipped, as protobuf's rules say."""
    if len(body) < 5 or body[0] != 0:
        raise BadResponse("not an uncompressed gRPC message")
    n = int.from_bytes(body[1:5], "big")
    msg = body[5:5 + n]
    if len(msg) != n:
        raise BadResponse("truncated gRPC message")
    pos, status = 0, 0
    while pos < len(msg):
        tag, pos = _read_varint(msg, pos)
        kind = tag & 7
        if kind == 0:
            value, pos = _read_varint(msg, pos)
            if tag >> 3 == 1:
                status = value
        elif kind == 2:
            size, pos = _read_varint(msg, pos)
            pos += size
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise BadResponse("bad protobuf wire type")
    if pos != len(msg):
        raise BadResponse("truncated protobuf field")
    return status


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise BadResponse("bad varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   authority: str, path: str) -> tuple[bool, int | None, str]:
    """One check over a fresh connection: (passed, HTTP status, detail when it failed).
    Raises BadResponse (L7RSP); the caller bounds the time."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    conn.initiate_connection()
    grpc = path == GRPC_HEALTH or path.startswith(GRPC_HEALTH + "?")
    headers = [(b":method", b"POST" if grpc else b"GET"), (b":scheme", b"http"),
               (b":authority", authority.encode()),
               (b":path", (GRPC_HEALTH if grpc else path).encode()),
               (b"user-agent", b"pylb-check")]
    sid = 1
    if grpc:
        query = path.partition("?")[2]
        service = parse_qs(query).get("service", [""])[0]
        headers += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        conn.send_headers(sid, headers)
        conn.send_data(sid, health_request(service), end_stream=True)
    else:
        conn.send_headers(sid, headers, end_stream=True)
    writer.write(conn.data_to_send())
    status: int | None = None
    fields: dict[bytes, bytes] = {}
    body = b""
    while True:
        data = await reader.read(65536)
        if not data:
            raise BadResponse("connection closed")
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            raise BadResponse(f"HTTP/2 protocol error: {e}") from e
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                hs = dict(ev.headers or [])
                with contextlib.suppress(KeyError, ValueError):
                    status = int(hs[b":status"])
                if status is None:
                    raise BadResponse("no :status")
                if status < 200:
                    status = None  # informational: the final response is to come
                    continue
                fields.update(hs)
                if not grpc:  # the status line is the verdict, as for HTTP/1.1
                    passed = 200 <= status < 400
                    return passed, status, "" if passed else f"HTTP status {status}"
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                body += ev.data or b""
                if len(body) > _MAX_BODY:
                    raise BadResponse("health response too large")
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                fields.update(ev.headers or [])
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                return _grpc_verdict(status, fields, body)
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                raise BadResponse(f"stream reset ({ev.error_code})")
            elif isinstance(ev, h2.events.ConnectionTerminated):
                raise BadResponse(f"GOAWAY ({ev.error_code})")
        out = conn.data_to_send()
        if out:
            writer.write(out)


def _grpc_verdict(status: int | None, fields: dict[bytes, bytes],
                  body: bytes) -> tuple[bool, int | None, str]:
    if status != 200:
        return False, status, f"HTTP status {status}"
    code = fields.get(b"grpc-status")
    if code is None:
        raise BadResponse("no grpc-status")
    if code != b"0":
        message = fields.get(b"grpc-message", b"").decode("utf-8", "replace")
        return False, status, f"grpc-status {code.decode('latin-1')} {message}".strip()
    serving = health_status(body)
    if serving != SERVING:
        return False, status, _STATUS_NAMES.get(serving, f"status {serving}")
    return True, status, ""
