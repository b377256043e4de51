"""Stats security (issue #12): with --stats-auth set, nothing is served without it, over
every path, query form, method and odd Authorization header, on a real socket; the
credential is compared in one fixed-length step; the health port serves readiness and
nothing of the stats; a malformed request gets its 400 and the next client is served;
and no name from the cluster can inject HTML, break the CSV, the JSON or /metrics.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from discovery.translate import KubeObjects, translate
from proxy.certs import CertInfo, check_pem_bytes
from pylb.config import Settings
from pylb.demo import service_manifest, slice_manifest
from pylb.health import HealthServer
from pylb.stats import CertInfo as ViewCert
from pylb.stats import StatsServer, render_csv, render_html, render_json
from pylb.stats.http import BasicAuth, unauthorized
from pylb.stats.page import visible
from pylb.stats.prom import Exposition
from pylb.stats.server import REALM
from pylb.stats.view import StatsView
from tests.hardening._stats_evil import (
    EVIL,
    Roles,
    assert_page_is_clean,
    build_view,
    label_values,
    read_csv,
    read_json,
    read_metrics,
    read_page,
)
from tests.proxy.http.client import RawClient, Response

USER, PASSWORD = "admin", "s3:cr=t wörd"  # a ':' and a non-ASCII letter in the password
CRED = f"{USER}:{PASSWORD}"
# What the view holds that a refused client must never see.
SECRETS = Roles(http_backend="secret-ns/secret-web:80", tcp_backend="secret-ns/db:3306",
                http_server="secret-pod-7f9c", tcp_server="secret-db-0",
                tcp_frontend="secret-fe", leader="secret-leader", cert="secret.example")
SECRET_WORDS = (b"secret", b"FRONTEND", b"BACKEND", b"pxname", b"pylb_", b"20000")
REFUSED = unauthorized(REALM).body


def basic(credential: bytes | str) -> str:
    raw = credential.encode() if isinstance(credential, str) else credential
    return "Basic " + base64.b64encode(raw).decode()


def request(method: str, target: str, *headers: str, body: bytes = b"",
            version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"]
    if version == "HTTP/1.1":
        lines.append("Host: lb.example")
    lines += headers
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


async def exchange(port: int, data: bytes, method: str = "GET") -> Response:
    client = await RawClient.connect(port)
    try:
        await client.send(data)
        return await client.read_response(method)
    finally:
        await client.close()


@pytest.fixture
async def stats() -> AsyncIterator[int]:
    view = build_view(SECRETS)
    srv = StatsServer(Settings(stats_auth=CRED, stats_refresh=5), lambda: view)
    _, port = await srv.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await srv.close()


def assert_refused(resp: Response, method: str = "GET") -> None:
    assert resp.status == 401, resp.raw_head
    assert resp.header("WWW-Authenticate") == f'Basic realm="{REALM}", charset="UTF-8"'
    assert resp.header("Content-Type") == "text/plain; charset=utf-8"
    assert resp.header("Content-Length") == str(len(REFUSED))
    assert resp.body == (b"" if method == "HEAD" else REFUSED)
    for word in SECRET_WORDS:
        assert word not in resp.raw_head + resp.body


# -- every path, query form and method, without the credential and with a wrong one ------

FORMS: list[tuple[str, str]] = [
    ("GET", "/"), ("GET", "/;csv"), ("GET", "/;json"), ("GET", "/;up"),
    ("GET", "/;norefresh"), ("GET", "/;csv;norefresh"), ("GET", "/;up;csv;norefresh"),
    ("GET", "/metrics"), ("GET", "/metrics;csv"), ("GET", "/haproxy?stats"),
    ("GET", "/haproxy?stats;csv"), ("GET", "/?stats;json"), ("GET", "/stats"),
    ("GET", "/nope"), ("GET", "/favicon.ico"), ("GET", "/../;csv"), ("GET", "/..%2f;csv"),
    ("GET", "/%3Bcsv"), ("GET", "/%3bjson"), ("GET", "//;csv"), ("GET", "/;CSV"),
    ("GET", "http://lb.example/;csv"), ("GET", "HTTP://lb.example:1936/metrics"),
    ("GET", "https://lb.example/haproxy?stats;json"), ("GET", "/?" + "a" * 4000),
    ("HEAD", "/"), ("HEAD", "/;csv"), ("HEAD", "/metrics"), ("POST", "/;csv"),
    ("POST", "/metrics"), ("PUT", "/"), ("DELETE", "/"), ("PATCH", "/;json"),
    ("OPTIONS", "*"), ("OPTIONS", "/"), ("TRACE", "/"), ("CONNECT", "lb.example:443"),
    ("PROPFIND", "/"), ("GETX", "/;csv"), ("get", "/;csv"),
]


@pytest.mark.parametrize(("method", "target"), FORMS)
async def test_every_form_is_refused_without_the_credential(stats: int, method: str,
                                                            target: str) -> None:
    body = b"x=1" if method in ("POST", "PUT", "PATCH") else b""
    for extra in ((), (f"Authorization: {basic(USER + ':wrong')}",)):
        resp = await exchange(stats, request(method, target, *extra, body=body), method)
        assert_refused(resp, method)


async def test_http10_and_upgrade_requests_are_refused(stats: int) -> None:
    assert_refused(await exchange(stats, request("GET", "/;csv", version="HTTP/1.0")))
    assert_refused(await exchange(stats, request(
        "GET", "/metrics", "Connection: Upgrade", "Upgrade: websocket",
        "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")))


# -- every odd Authorization -----------------------------------------------------------

BAD_AUTH: list[tuple[str, list[bytes]]] = [
    ("wrong password", [basic(USER + ":wrong").encode()]),
    ("password prefix", [basic(CRED[:-1]).encode()]),
    ("password plus a byte", [basic(CRED + "x").encode()]),
    ("wrong user", [basic("root:" + PASSWORD).encode()]),
    ("user of another case", [basic("Admin:" + PASSWORD).encode()]),
    ("empty user", [basic(":" + PASSWORD).encode()]),
    ("user only", [basic(USER).encode()]),
    ("user and colon", [basic(USER + ":").encode()]),
    ("password only", [basic(PASSWORD).encode()]),
    ("split at the password's colon", [basic("admin:s3").encode()]),
    ("latin-1 password", [basic(f"{USER}:{PASSWORD}".encode("latin-1")).encode()]),
    ("non-UTF-8 credential", [basic(b"admin:\xff\xfe\x00").encode()]),
    ("empty Basic", [b"Basic"]),
    ("Basic and a space", [b"Basic "]),
    ("bad base64", [b"Basic !!!not-base64!!!"]),
    ("base64 without padding", [basic(CRED).rstrip("=").encode() + b"@"]),
    ("base64 with junk after", [basic(CRED).encode() + b" junk"]),
    ("raw credential, not base64", [f"Basic {CRED}".encode()]),
    ("non-UTF-8 bytes in the header", [b"Basic \xff\xfe\xfd"]),
    ("Bearer", [b"Bearer " + base64.b64encode(CRED.encode())]),
    ("Digest", [b'Digest username="admin", realm="pylb statistics"']),
    ("lowercase basic, wrong", [basic(USER + ":wrong").lower().encode()]),
    ("no scheme", [base64.b64encode(CRED.encode())]),
    ("empty header", [b""]),
    ("right then wrong", [basic(CRED).encode(), basic(USER + ":wrong").encode()]),
    ("wrong then right", [basic(USER + ":wrong").encode(), basic(CRED).encode()]),
    ("right twice", [basic(CRED).encode(), basic(CRED).encode()]),
    ("huge", [b"Basic " + base64.b64encode(b"admin:" + b"p" * 9000)]),
]


@pytest.mark.parametrize(("why", "values"), BAD_AUTH, ids=[w for w, _ in BAD_AUTH])
async def test_every_odd_authorization_is_refused(stats: int, why: str,
                                                  values: list[bytes]) -> None:
    for target in ("/;csv", "/metrics", "/"):
        head = request("GET", target)[:-2]
        head += b"".join(b"Authorization: " + v + b"\r\n" for v in values) + b"\r\n"
        assert_refused(await exchange(stats, head))


async def test_a_head_past_the_limit_is_refused_without_stats(stats: int) -> None:
    resp = await exchange(stats, request("GET", "/;csv", f"Authorization: {basic(CRED)}",
                                         "X-Pad: " + "p" * 64_000))
    assert resp.status == 431
    assert not any(word in resp.body for word in SECRET_WORDS)


# -- with the credential: the right thing ----------------------------------------------

GOOD: list[tuple[str, str, int, str]] = [
    # method, target, status, what the body is
    ("GET", "/", 200, "html"), ("GET", "/;up", 200, "html"), ("GET", "/;norefresh", 200,
                                                                "html"),
    ("GET", "/haproxy?stats", 200, "html"), ("GET", "/stats", 200, "html"),
    ("GET", "/;csv", 200, "csv"), ("GET", "/;csv;norefresh", 200, "csv"),
    ("GET", "/haproxy?stats;csv", 200, "csv"), ("GET", "/;CSV", 200, "csv"),
    ("GET", "/;json", 200, "json"), ("GET", "/?stats;json", 200, "json"),
    ("GET", "/metrics", 200, "metrics"),
    ("GET", "http://lb.example/;csv", 200, "csv"),
    ("GET", "HTTP://lb.example:1936/metrics", 200, "metrics"),
    ("GET", "https://lb.example/haproxy?stats;json", 200, "json"),
    ("GET", "http://lb.example", 200, "html"),
    ("HEAD", "/;csv", 200, ""), ("HEAD", "/", 200, ""),
    ("GET", "/nope", 404, ""), ("GET", "/../;csv", 404, ""), ("GET", "/%3Bcsv", 404, ""),
    ("GET", "/metrics;csv", 404, ""),
    ("POST", "/;csv", 405, ""), ("DELETE", "/", 405, ""), ("OPTIONS", "*", 405, ""),
]


@pytest.mark.parametrize(("method", "target", "status", "kind"), GOOD)
async def test_with_the_credential_each_form_gets_the_right_answer(
        stats: int, method: str, target: str, status: int, kind: str) -> None:
    resp = await exchange(stats, request(method, target, f"Authorization: {basic(CRED)}"),
                          method)
    assert resp.status == status, resp.raw_head
    assert resp.header("X-Content-Type-Options") == "nosniff"
    text = resp.body.decode()
    if kind == "html":
        assert resp.header("Content-Type") == "text/html; charset=utf-8"
        assert "default-src 'none'" in (resp.header("Content-Security-Policy") or "")
        assert SECRETS.http_server in text
        assert_page_is_clean(text)
    elif kind == "csv":
        assert (SECRETS.http_backend, SECRETS.http_server) in {
            (r["pxname"], r["svname"]) for r in read_csv(text)}
    elif kind == "json":
        assert resp.header("Content-Type") == "application/json"
        assert read_json(text)["leader"]["name"] == SECRETS.leader
    elif kind == "metrics":
        assert SECRETS.http_server in label_values(read_metrics(text), "pylb_server_up",
                                                   "server")
    else:
        assert not any(word in resp.body for word in SECRET_WORDS)
    if status == 405:
        assert resp.header("Allow") == "GET, HEAD"


async def test_lowercase_scheme_and_keep_alive_after_a_refusal(stats: int) -> None:
    client = await RawClient.connect(stats)
    try:
        await client.send(request("GET", "/;json", f"Authorization: {basic('x:y')}"))
        assert_refused(await client.read_response())
        token = base64.b64encode(CRED.encode()).decode()
        await client.send(request("GET", "/;json", f"authorization: basic {token}"))
        resp = await client.read_response()
        assert resp.status == 200 and read_json(resp.body.decode())["stats"]
    finally:
        await client.close()


# -- malformed requests -------------------------------------------------------------------

MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /;csv HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"GET /;csv HTTP/1.1\r\nHost: x\r\nX-Bare: a\rb\r\n\r\n",
    b"GET /;csv HTTP/1.1\r\nHost: x\r\nBad : space\r\n\r\n",
    b"GET /;c\x00sv HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /;csv HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /;csv HTTP/1.1\r\n\r\n",  # no Host
    b"POST /;csv HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"GET /a b/;csv HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32) + b"\r\n\r\n",  # TLS hello
]


@pytest.mark.parametrize("data", MALFORMED)
async def test_malformed_gets_400_and_the_next_client_is_served(stats: int,
                                                                data: bytes) -> None:
    cred = f"Authorization: {basic(CRED)}\r\n".encode()
    client = await RawClient.connect(stats)
    try:
        await client.send(data.replace(b"Host: x\r\n", b"Host: x\r\n" + cred, 1))
        resp = await client.read_response()
        assert 400 <= resp.status < 500 and resp.status != 401, resp.raw_head
        assert not any(word in resp.body for word in SECRET_WORDS)
        assert await client.at_eof()
    finally:
        await client.close()
    resp = await exchange(stats, request("GET", "/;csv", cred.decode().strip()))
    assert resp.status == 200 and read_csv(resp.body.decode())


# -- the health port ---------------------------------------------------------------------

async def test_the_health_port_serves_readiness_and_nothing_of_the_stats() -> None:
    srv = HealthServer(Settings(stats_auth=CRED), lambda: True, lambda: True)
    _, port = await srv.start("127.0.0.1", 0)
    allowed = {b"ok\n", b"ready\n", b"default backend - 404\n"}
    try:
        for method, target in [*FORMS, ("GET", "/healthz"), ("GET", "/readyz")]:
            if method not in ("GET", "HEAD"):
                continue
            for extra in ((), (f"Authorization: {basic(CRED)}",)):
                resp = await exchange(port, request(method, target, *extra), method)
                assert resp.status in (200, 404), (target, resp.raw_head)
                assert method == "HEAD" or resp.body in allowed, (target, resp.body)
                assert resp.header("Content-Type") == "text/plain; charset=utf-8"
                assert resp.header("WWW-Authenticate") is None
    finally:
        await srv.close()


# -- the credential is compared in one fixed-length step ---------------------------------

def test_one_compare_of_two_fixed_length_digests_whatever_is_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module pylb.stats.http uses
    auth = BasicAuth(CRED)
    headers: list[str | None] = [
        None, "", "Bearer x", "Basic", "Basic !!!", basic("root:" + PASSWORD),
        basic("admin:"), basic(USER), basic(":"), basic(USER + ":" + "p" * 10_000),
        basic(CRED[:-1]), basic(CRED[:3]), basic(CRED + "x"), basic(CRED)]
    headers += [basic(f"{USER}:{PASSWORD[:n]}") for n in range(len(PASSWORD))]
    for header in headers:
        calls.clear()
        assert auth.check(header) is (header == basic(CRED))
        assert len(calls) == 1, header  # no early exit, no second comparison
        given, expected = calls[0]
        assert isinstance(given, bytes) and isinstance(expected, bytes)
        assert len(given) == len(expected) == 32, header
        assert CRED.encode() not in (given, expected)
    # Only a keyed digest is kept: the password is nowhere in the object.
    assert PASSWORD.encode() not in b"".join(
        v for v in vars(auth).values() if isinstance(v, bytes))
    assert not any(PASSWORD in v for v in vars(auth).values() if isinstance(v, str))


def test_the_check_is_case_blind_only_in_the_scheme() -> None:
    auth = BasicAuth(CRED)
    token = base64.b64encode(CRED.encode()).decode()
    assert auth.check(f"Basic {token}") and auth.check(f"basic {token}")
    assert auth.check(f"BASIC  {token} ")
    assert not auth.check(f"Basic {base64.b64encode(CRED.upper().encode()).decode()}")


# -- nothing from the cluster injects HTML or breaks a format ----------------------------

def _cert_info(common_name: str) -> CertInfo:
    """proxy.certs's CertInfo of a real certificate whose subject is `common_name`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return check_pem_bytes(pem, [key_pem], "evil.pem").info


ROLES = [f.name for f in Roles.__dataclass_fields__.values()]


def _formats(view: StatsView) -> tuple[str, str, str, str]:
    return (render_html(view, refresh=5), render_csv(view), render_json(view),
            Exposition(lambda: view).render().decode())


@pytest.mark.parametrize("evil", EVIL, ids=[f"evil{i}" for i in range(len(EVIL))])
def test_each_hostile_string_in_each_place_is_only_text(evil: str) -> None:
    for role in ROLES:
        roles = replace(Roles(), **{role: evil})
        assert roles.usable()
        view = build_view(roles)
        page, text_csv, text_json, text_metrics = _formats(view)
        shown = assert_page_is_clean(page)
        assert shown.shape == read_page(render_html(build_view(roles.placeholders()),
                                                    refresh=5)).shape
        if role not in ("skip_namespace", "skip_name", "skip_reason", "failure",
                        "metric"):
            assert any(visible(evil) in s for s in shown.strings()), role
        rows = read_csv(text_csv)
        doc = read_json(text_json)
        metrics = read_metrics(text_metrics)
        if role.endswith("_server"):
            assert evil in {r["svname"] for r in rows}
            assert evil in {r["svname"] for r in doc["stats"]}
            assert evil in label_values(metrics, "pylb_server_up", "server")
        if role.endswith("_backend"):
            assert evil in {r["pxname"] for r in rows}
            assert evil in label_values(metrics, "pylb_backend_up", "backend")
        if role.endswith("frontend"):
            assert evil in label_values(metrics, "pylb_frontend_current_sessions",
                                        "frontend")
        if role == "leader":
            assert label_values(metrics, "pylb_election_leader", "name") == {evil}
        if role.startswith("skip_"):
            assert evil in doc["pylb"]["skipped_services"][0]


@pytest.mark.parametrize("evil", EVIL[:5], ids=[f"evil{i}" for i in range(5)])
def test_a_real_certificates_subject_and_the_electors_leader_are_only_text(
        evil: str) -> None:
    view = replace(build_view(Roles()), certificates=(_cert_info(evil),),
                   leader={"name": evil, "since": None, "transitions": 1, "leading": False})
    page, _, text_json, text_metrics = _formats(view)
    strings = list(assert_page_is_clean(page).strings())
    assert any(f"cert {visible(evil.lower())}" in s for s in strings)
    assert any(visible(evil) in s for s in strings)
    assert json.loads(text_json)["leader"]["name"] == evil
    metrics = read_metrics(text_metrics)
    assert label_values(metrics, "pylb_certificate_expiry_days", "name") == {evil.lower()}


async def test_all_of_it_end_to_end_and_a_lone_surrogate_costs_no_page() -> None:
    # A manifest's "\ud800" escape gives a string UTF-8 cannot carry: each format still
    # answers (the character becomes U+FFFD or its escape) instead of a 500.
    names = list(EVIL[:Roles.count() - 1])
    names.insert(2, "bad\ud800name")  # the HTTP backend's server
    roles = Roles.of(names)
    view = build_view(roles)
    srv = StatsServer(Settings(stats_auth=CRED), lambda: view)
    _, port = await srv.start("127.0.0.1", 0)
    try:
        for target in ("/", "/;csv", "/;json", "/metrics"):
            resp = await exchange(port, request("GET", target,
                                                f"Authorization: {basic(CRED)}"))
            assert resp.status == 200, target
            text = resp.body.decode("utf-8")
            if target == "/":
                assert_page_is_clean(text)
            elif target == "/;csv":
                assert "bad\ufffdname" in {r["svname"] for r in read_csv(text)}
            elif target == "/;json":
                assert "bad\ud800name" in {r["svname"] for r in read_json(text)["stats"]}
            else:
                assert "bad\ufffdname" in label_values(read_metrics(text),
                                                       "pylb_server_up", "server")
            assert_refused(await exchange(port, request("GET", target)))
    finally:
        await srv.close()


def test_a_dual_stack_pod_gives_two_distinct_rows_and_series() -> None:
    """One pod behind an IPv4 and an IPv6 EndpointSlice is two servers of one name:
    each row and each Prometheus series must still be one of a kind (a duplicate series
    is a scrape error in Prometheus)."""
    v4 = slice_manifest("web-v4", "web", 8080, ["10.0.0.7"])
    v6 = slice_manifest("web-v6", "web", 8080, ["fd00::7"])
    v6["addressType"] = "IPv6"
    for s in (v4, v6):
        s["endpoints"][0]["targetRef"] = {"kind": "Pod", "name": "web-7f9c"}
    table = translate(KubeObjects(services=(service_manifest("web", 80, 8080),),
                                  endpointslices=(v4, v6)), Settings())
    [backend] = table.backends
    assert [s.label for s in backend.servers] == ["web-7f9c", "web-7f9c"]
    view = replace(build_view(Roles()), table=table)
    _, text_csv, text_json, text_metrics = _formats(view)
    names = {"web-7f9c@10.0.0.7:8080", "web-7f9c@[fd00::7]:8080"}
    assert {r["svname"] for r in read_csv(text_csv) if r["pxname"] == backend.name} == \
        names | {"BACKEND"}
    assert {r["svname"] for r in read_json(text_json)["stats"]
            if r["pxname"] == backend.name} == names | {"BACKEND"}
    assert label_values(read_metrics(text_metrics), "pylb_server_up", "server") == names


def test_twin_certificates_and_failure_reasons_make_one_series_each() -> None:
    """Two certificates for one name (RSA and ECDSA side by side) and a reason from a
    worker of another version that lower-cases onto a known one: /metrics still holds
    one series a label set — the certificate that expires first, the reasons summed."""
    view = build_view(Roles())
    soon, late = view.now + 3 * 86400, view.now + 90 * 86400
    view = replace(view, certificates=(ViewCert("www.example", late, 90.0),
                                       ViewCert("www.example", soon, 3.0)),
                   counters={**view.counters,
                             "failures": {"BAD_REQUEST": 2, "bad_request": 3, "Odd": 1,
                                          "ODD": 4}})
    metrics = read_metrics(Exposition(lambda: view).render().decode())
    assert metrics["pylb_certificate_expiry_days"] == [({"name": "www.example"}, 3.0)]
    reasons = {labels["reason"]: v for labels, v in metrics["pylb_failures"]}
    assert reasons["bad_request"] == 5 and reasons["odd"] == 5
    page = render_html(view)
    assert page.count("cert www.example") == 2  # the page lists both
