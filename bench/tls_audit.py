"""Audit pylb's TLS listener with testssl.sh (Debian package `testssl.sh`).

Starts pylb's TLS frontend (`proxy.http.HttpProxy` with `proxy.tls.TlsStore`'s context) on
127.0.0.1 in front of a tiny HTTP backend — an ECDSA P-256 default certificate and an
RSA-2048 one picked by SNI, both from a CA made here — runs testssl against each (HTTP
checks included: HSTS, headers), and prints its findings: offered protocols, ciphers,
vulnerabilities, and every finding at severity LOW or above. Exits non-zero when a protocol
below TLS 1.2 or a weak cipher is offered. It takes a few minutes, so it is not in tests/.

    python -m bench.tls_audit [--full] [--json-out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trustme
import uvloop

from proxy.balance import Balancers
from proxy.http import HttpProxy
from proxy.tls import TlsStore
from pylb.config import Settings, TlsSettings
from pylb.counters import Stats
from pylb.model import Backend, HttpRoute, RouteTable, Server

SEVERITIES = ("OK", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL")
_OLD_PROTOCOLS = ("SSLv2", "SSLv3", "TLS1", "TLS1_1")
# testssl 3.0's cipher categories below "STRONG" (3.2 renames AVERAGE to OBSOLETED).
_WEAK_CIPHERS = ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                 "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_OBSOLETED")


class _Backend(asyncio.Protocol):
    """Answers 200 to each GET/HEAD request head; enough for testssl's HTTP checks."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            body = b"" if head.startswith(b"HEAD ") else b"ok\n"
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                b"Cache-Control: no-store\r\n\r\n" + body)


def _write_certs(root: Path) -> tuple[Path, Path]:
    """Certificates shaped like real ones (90 days, as ACME issues them) so testssl judges
    the TLS set-up and not test artefacts; the CA is handed to testssl with --add-ca."""
    ca = trustme.CA()
    d = root / "certs"
    d.mkdir()
    now = dt.datetime.now(dt.UTC)
    for fname, name, kt in (("00-ecdsa.pem", "ecdsa.example", trustme.KeyType.ECDSA),
                            ("10-rsa.pem", "rsa.example", trustme.KeyType.RSA)):
        ca.issue_cert(name, common_name=name, key_type=kt, not_before=now - dt.timedelta(1),
                      not_after=now + dt.timedelta(days=89)) \
            .private_key_and_cert_chain_pem.write_to_path(str(d / fname))
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return d, ca_file


async def _testssl(port: int, sni: str, ca_file: Path, json_path: Path,
                   full: bool) -> list[dict[str, str]]:
    tool = shutil.which("testssl") or shutil.which("testssl.sh")
    assert tool is not None
    checks = [] if full else ["--protocols", "--std", "--server-defaults", "--vulnerable",
                              "--fs", "--headers"]
    proc = await asyncio.create_subprocess_exec(
        tool, "--quiet", "--color", "0", "--warnings", "batch", "--jsonfile", str(json_path),
        "--ip", "127.0.0.1", "--sneaky", "--add-ca", str(ca_file), *checks,
        f"https://{sni}:{port}/app/",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "LC_ALL": "C"})
    await asyncio.wait_for(proc.wait(), 900)
    data: list[dict[str, str]] = json.loads(json_path.read_text())
    return data


def _report(findings: list[dict[str, str]]) -> list[str]:
    problems: list[str] = []
    for f in findings:
        fid, sev, text = f.get("id", ""), f.get("severity", ""), f.get("finding", "")
        offered = "not offered" not in text and "not vulnerable" not in text
        if (fid in _OLD_PROTOCOLS or fid in _WEAK_CIPHERS) and offered:
            problems.append(f"{fid}: {text}")
        show = sev in SEVERITIES[2:] or fid in (
            "SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "cipher_order",
            "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
            "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_OBSOLETED",
            "cipherlist_STRONG", "PFS", "FS", "ALPN", "cert_chain_of_trust", "HSTS_time",
            "BREACH", "service", "ROBOT",
            "TLS_session_ticket", "sessionresumption_ticket",
            "secure_renego", "secure_client_renego", "overall_grade")
        if show:
            print(f"  {sev:8} {fid:28} {text}")
    return problems


async def main(full: bool, json_out: Path | None) -> int:
    with tempfile.TemporaryDirectory(prefix="pylb-tls-audit-") as tmp:
        cert_dir, ca_file = _write_certs(Path(tmp))
        settings = Settings(tls=TlsSettings(cert=str(cert_dir)))
        store = TlsStore(settings.tls)
        loop = asyncio.get_running_loop()
        backend = await loop.create_server(_Backend, "127.0.0.1", 0)
        backend_port = backend.sockets[0].getsockname()[1]
        proxy = HttpProxy(settings, Stats(), Balancers(settings.limits), frontend="https",
                          tls=True, ssl_context=store.server_context())
        _, port = await proxy.start("127.0.0.1", 0)
        be = Backend("default/app:443", (Server("127.0.0.1", backend_port),))
        proxy.set_table(RouteTable(https=(HttpRoute("app", "/app", be.name, tls=True),),
                                   backends=(be,)))
        problems: list[str] = []
        try:
            for sni in ("ecdsa.example", "rsa.example"):
                out = (json_out or Path(tmp)) / f"testssl-{sni}.json"
                out.unlink(missing_ok=True)
                t0 = time.monotonic()
                findings = await _testssl(port, sni, ca_file, out, full)
                print(f"testssl against pylb's TLS frontend, {sni} (127.0.0.1:{port}), "
                      f"{time.monotonic() - t0:.0f} s:")
                problems += [f"{sni}: {p}" for p in _report(findings)]
        finally:
            await proxy.shutdown(1.0)
            backend.close()
            await backend.wait_closed()
    for p in problems:
        print("PROBLEM", p)
    print("no protocol below TLS 1.2, no weak cipher" if not problems else
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every testssl check")
    parser.add_argument("--json-out", type=Path, default=None)
    ns = parser.parse_args()
    sys.exit(uvloop.run(main(ns.full, ns.json_out)))
