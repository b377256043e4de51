"""TLS termination: server contexts, SNI certificate selection, and reload from disk.

Theory of operation
-------------------
The listener is created once with one `ssl.SSLContext`, the *front* context that
`TlsStore.server_context()` returns; it never changes, so the listener never has to be
rebuilt. The certificates live in a *generation*: one context per certificate file, an
index of their names (exact and `*.` wildcard), and the default (the first file). The
front context's `sni_callback` runs for every ClientHello, with or without a server name,
and moves the connection onto the context of the current generation that fits the name
(exact name, then wildcard, then default), as haproxy's `crt <dir>` does.

Reload builds a whole new generation off to the side — read each file once, check it with
`cryptography` (proxy.certs), load those same bytes into fresh contexts — and only then
swaps the one reference the callback reads. A handshake that already ran its callback
holds its own context, and an established connection has copied what it needs from it
(OpenSSL duplicates the certificate into each connection), so open connections never see
a reload; the next handshake sees the new certificate. A new file that fails any check is
refused with an ERROR log and the old generation stays; the same broken state is logged
once, not on every poll. Changes are noticed by `stat()` through symlinks, which catches
Kubernetes' secret-volume update (a new timestamped directory, then an atomic rename of
the `..data` symlink): inode, size and mtime of the files seen through it change. The
client CA file (`--ssl-ca-cert`) is watched and reloaded the same way.

Certificates from Kubernetes Secrets (an Ingress's `spec.tls`, discovery/secrets.py) are a
second, smaller set laid over the files: `set_sni_certificates` checks each (as a file is
checked), builds a context for each new one (an unchanged one keeps its context), and swaps
one reference, so a rotated Secret is served from the next handshake on and open
connections keep theirs. Their hosts are looked up first (exact, then wildcard), then the
files' names, then the default. One that fails a check is logged once and its hosts get
the default certificate.

Sessions are cached on the front context (OpenSSL keeps the cache of the context a
connection started on), one cache per worker: TLS 1.2 resumes by session ID, TLS 1.3 by a
"stateful" ticket that only names the cached session (stateless tickets, which carry the
session encrypted under a ticket key, are off unless asked, as haproxy's `no-tls-tickets`).
A client resuming a session within OpenSSL's 300 s session lifetime after a reload keeps
what it had: the old certificate and the old client verification.

Every context is configured the same way, because after the switch OpenSSL takes the
verify store, ALPN selection and ticket policy from the context switched to: TLS 1.2 and
1.3 only, ECDHE + AEAD ciphers for 1.2 (Mozilla's "intermediate" list without DHE), ALPN
`http/1.1`, no client-initiated renegotiation, no session tickets unless asked (the 2015
template's `no-tls-tickets`), and client certificates per `--ssl-ca-cert` /
`--ssl-verify`. Their connection objects are `DirectSSLObject`s: the event loop's TLS
layer reads and writes records through the C object's own methods, not ssl.py's Python
wrappers of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import attrgetter

from proxy.certs import (
    CertificateError,
    CertInfo,
    LoadedPem,
    check_pem_bytes,
    find_key_file,
    generate_self_signed,
    is_ca_bundle,
    load_pem,
    load_pem_pair,
    utcnow,
)
from pylb.config import SslVerify, TlsSettings
from pylb.model import SniCertificate

__all__ = ["EXPIRY_WARNING_DAYS", "TLS12_CIPHERS", "CertInfo", "CertificateError", "TlsStore",
           "self_signed_names"]

log = logging.getLogger(__name__)

# Mozilla "intermediate" (v5.7) for TLS 1.2, minus the DHE suites: Python sets no DH
# parameters, so they could never be chosen. TLS 1.3 suites are OpenSSL's defaults (all
# AEAD). ECDSA before RSA only orders equal strengths; the certificate's key decides.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
])
ALPN = ("h2", "http/1.1")  # h2 preferred (proxy.http.alpn dispatches)
# cert-manager renews 30 days before expiry and ACME clients at 30 days too; a certificate
# that still has fewer than 14 days left is one whose renewal is failing.
EXPIRY_WARNING_DAYS = 14
# Extra files haproxy loads beside a certificate; never certificates themselves.
_EXTRA_SUFFIXES = (".key", ".ocsp", ".issuer", ".sctl")

Stat = tuple[int, int, int, int] | None
Fingerprint = tuple[tuple[str, Stat], ...]


class DirectSSLObject(ssl.SSLObject):
    """The TLS connection object of our server contexts (`SSLContext.sslobject_class`):
    an `ssl.SSLObject` whose `read`, `write` and `pending` are its C object's own
    methods. uvloop's (and asyncio's) TLS layer takes those three once per connection
    and calls them per record, a few times a request; ssl.SSLObject's are Python methods
    that only pass their arguments on (a frame each). Both layers call `read(n)` or
    `read(n, buffer)`, never with `buffer=None`, the one form the C method refuses."""

    read = property(attrgetter("_sslobj.read"))
    write = property(attrgetter("_sslobj.write"))
    pending = property(attrgetter("_sslobj.pending"))


@dataclass(frozen=True, slots=True)
class _Generation:
    """One consistent set of certificates and the contexts serving them."""

    default: ssl.SSLContext
    exact: dict[str, ssl.SSLContext]
    wildcard: dict[str, ssl.SSLContext]  # "example.com" for a "*.example.com" name
    infos: tuple[CertInfo, ...]
    fingerprint: Fingerprint

    def select(self, server_name: str | None) -> ssl.SSLContext:
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        _, dot, parent = name.partition(".")
        if dot:
            ctx = self.wildcard.get(parent)
            if ctx is not None:
                return ctx
        return self.default


@dataclass(frozen=True, slots=True)
class _SniSet:
    """The certificates from Secrets: contexts by exact host and by wildcard parent."""

    exact: dict[str, ssl.SSLContext]
    wildcard: dict[str, ssl.SSLContext]
    infos: tuple[CertInfo, ...]

    def find(self, name: str) -> ssl.SSLContext | None:
        """By exact name, then wildcard parent, then the host `*` (any name, and none:
        a Gateway listener without hostname) when one is listed."""
        ctx = self.exact.get(name)
        if ctx is None:
            _, dot, parent = name.partition(".")
            if dot:
                ctx = self.wildcard.get(parent)
        return ctx if ctx is not None else self.exact.get("*")


class TlsStore:
    """The certificates of the TLS frontend, and the context the listener uses.

    `settings.cert` is a PEM file (chain + key, haproxy's `crt`) or a directory of them
    (SNI by exact name, then wildcard; the first file by name is the default). Without a
    certificate and with `need_tls`, a self-signed one is generated and a WARNING logged;
    without both, the store is not `enabled` and `server_context()` raises. Any problem at
    start-up raises `CertificateError` naming the file.
    """

    def __init__(self, settings: TlsSettings, *, need_tls: bool = False,
                 clock: Callable[[], dt.datetime] = utcnow,
                 self_signed_pem: bytes | None = None) -> None:
        """`self_signed_pem`: the fallback certificate to serve instead of generating one
        (the controller makes it once with `generate_self_signed` and hands it to every
        worker, so that all connections see the same certificate)."""
        self.settings = settings
        self._clock = clock
        self._front: ssl.SSLContext | None = None
        self._refused: Fingerprint | None = None
        self._gen: _Generation | None = None
        self._warned: dict[str, int] = {}  # fingerprint -> day (ordinal) last warned
        self.self_signed_pem: bytes | None = None  # the fallback in use, if any
        self._sni: _SniSet | None = None  # certificates from Secrets
        # (chain, key) -> (context, info) of those in use; and those refused (logged once)
        self._sni_loaded: dict[tuple[bytes, bytes], tuple[ssl.SSLContext, CertInfo]] = {}
        self._sni_refused: dict[tuple[bytes, bytes], str] = {}
        if settings.cert is not None:
            self._gen = self._build(self._fingerprint())
            for info in self._gen.infos:
                log.info("TLS certificate %s: %s, %d days left", info.path,
                         ", ".join(info.names) or info.subject, info.days_left)
                for w in info.warnings:
                    log.warning("TLS certificate %s: %s", info.path, w)
        elif need_tls:
            self._gen = self._self_signed(self_signed_pem)

    @property
    def enabled(self) -> bool:
        """True when there is a certificate to serve (configured or self-signed)."""
        return self._gen is not None

    def server_context(self) -> ssl.SSLContext:
        """The context for the listener; the same object for the store's whole life."""
        gen = self._gen
        if gen is None:
            raise CertificateError("no TLS certificate: pass --ssl-cert")
        if self._front is None:
            front = self._new_context()
            front.sni_callback = self._on_sni
            self._front = front
        return self._front

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context a handshake naming `server_name` gets (for tests and the stats)."""
        if self._gen is None:
            raise CertificateError("no TLS certificate: pass --ssl-cert")
        sni = self._sni
        if sni is not None and server_name:
            ctx = sni.find(server_name.lower().rstrip("."))
            if ctx is not None:
                return ctx
        return self._gen.select(server_name)

    def certificates(self) -> list[CertInfo]:
        """The certificates in use, `days_left` counted from now."""
        if self._gen is None:
            return []
        now = self._clock()
        sni = self._sni.infos if self._sni is not None else ()
        return [info.at(now) for info in self._gen.infos + sni]

    def set_sni_certificates(self, certs: tuple[SniCertificate, ...]) -> list[tuple[str, str]]:
        """Serve each certificate for its hosts from the next handshake on (open
        connections keep what they have); those before are dropped. Returns (source,
        reason) for each certificate refused — its hosts get the default certificate — and
        logs each refusal once. The first certificate listing a host serves it."""
        now = self._clock()
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        infos: list[CertInfo] = []
        loaded: dict[tuple[bytes, bytes], tuple[ssl.SSLContext, CertInfo]] = {}
        refused: dict[tuple[bytes, bytes], str] = {}
        problems: list[tuple[str, str]] = []
        for cert in certs:
            key = (cert.chain, cert.key)
            found = loaded.get(key) or self._sni_loaded.get(key)
            if found is None:
                reason = refused.get(key) or self._sni_refused.get(key)
                if reason is None:
                    try:
                        pem = load_pem_pair(cert.chain, cert.key, f"secret {cert.source}", now)
                        found = (self._context_for(pem), pem.info)
                        log.info("TLS certificate from secret %s: %s, %d days left",
                                 cert.source, ", ".join(pem.info.names) or pem.info.subject,
                                 pem.info.days_left)
                    except CertificateError as e:
                        reason = str(e)
                        log.error("TLS: not serving %s (its hosts %s get the default "
                                  "certificate): %s", cert.source, ", ".join(cert.hosts),
                                  reason)
                if reason is not None:
                    refused[key] = reason
                    problems.append((cert.source, reason))
                    continue
            assert found is not None
            if key not in loaded:
                loaded[key] = found
                infos.append(found[1])
            for host in cert.hosts:
                if host.startswith("*."):
                    wildcard.setdefault(host[2:], found[0])
                else:
                    exact.setdefault(host, found[0])
        self._sni_loaded, self._sni_refused = loaded, refused
        self._sni = _SniSet(exact, wildcard, tuple(infos)) if loaded else None
        return problems

    def reload_if_changed(self) -> bool:
        """Reload when the files changed on disk; True if a new generation is in use.

        A new state that fails to load is logged at ERROR once and the old one stays.
        """
        if self.settings.cert is None or self._gen is None:
            return False
        fp = self._fingerprint()
        if fp == self._gen.fingerprint or fp == self._refused:
            return False
        try:
            gen = self._build(fp)
        except CertificateError as e:
            self._refused = fp
            log.error("TLS reload refused, keeping the certificates in use: %s", e)
            return False
        self._gen = gen
        self._refused = None
        for info in gen.infos:
            log.info("TLS certificate reloaded %s: %s, %d days left", info.path,
                     ", ".join(info.names) or info.subject, info.days_left)
        return True

    async def watch(self, interval: float = 2.0) -> None:
        """Call `reload_if_changed` every `interval` seconds until cancelled, and warn
        (once a day per certificate) about certificates close to expiry."""
        if self.settings.cert is None:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload_if_changed()
                self.warn_expiring()
            except Exception:  # a bug here must not stop future reloads nor the worker
                log.exception("TLS reload failed")

    def warn_expiring(self) -> list[CertInfo]:
        """Log a WARNING for each certificate with fewer than `EXPIRY_WARNING_DAYS` left,
        at most once per certificate per day; return those certificates."""
        soon = [c for c in self.certificates() if c.days_left < EXPIRY_WARNING_DAYS]
        today = self._clock().date().toordinal()
        for c in soon:
            if self._warned.get(c.fingerprint_sha256) == today:
                continue
            self._warned[c.fingerprint_sha256] = today
            if c.days_left < 0:
                log.warning("TLS certificate %s (%s) has EXPIRED; clients refuse it",
                            c.path, ", ".join(c.names) or c.subject)
            else:
                log.warning("TLS certificate %s (%s) expires in %d days, on %s UTC", c.path,
                            ", ".join(c.names) or c.subject, c.days_left,
                            f"{c.not_after:%Y-%m-%d %H:%M}")
        return soon

    # -- internals ------------------------------------------------------------------

    def _on_sni(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                ctx: ssl.SSLContext) -> None:
        sni = self._sni
        if sni is not None:
            found = (sni.find(server_name.lower().rstrip(".")) if server_name
                     else sni.exact.get("*"))
            if found is not None:
                sslobj.context = found
                return
        gen = self._gen
        if gen is not None:
            sslobj.context = gen.select(server_name)

    def _new_context(self) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.sslobject_class = DirectSSLObject
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.set_alpn_protocols(list(ALPN))
        ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
        if not s.session_tickets:
            # No stateless (RFC 5077) tickets, hence no ticket key to protect or rotate.
            # TLS 1.3 still resumes from this worker's session cache: OpenSSL then sends
            # "stateful" tickets, which only name a cached session (haproxy's
            # `no-tls-tickets` does the same; without it, every TLS 1.3 connection of a
            # returning client paid a full handshake).
            ctx.options |= ssl.OP_NO_TICKET
        if s.ca_cert and s.verify is not SslVerify.NONE:
            try:
                ctx.load_verify_locations(cafile=s.ca_cert)
            except (OSError, ssl.SSLError) as e:
                raise CertificateError(f"{s.ca_cert}: client CA does not load: {e}") from e
            ctx.verify_mode = (ssl.CERT_REQUIRED if s.verify is SslVerify.REQUIRED
                               else ssl.CERT_OPTIONAL)
        return ctx

    def _context_for(self, pem: LoadedPem) -> ssl.SSLContext:
        ctx = self._new_context()
        with _pem_path(pem.pem) as path:
            try:
                ctx.load_cert_chain(path)
            except ssl.SSLError as e:
                raise CertificateError(
                    f"{pem.info.path}: OpenSSL refuses the certificate: {e}") from e
        return ctx

    def _files(self) -> list[str]:
        """The certificate files `settings.cert` names, in default-first order."""
        root = self.settings.cert
        assert root is not None
        if not os.path.isdir(root):
            return [root]
        try:
            names = sorted(os.listdir(root))
        except OSError as e:
            raise CertificateError(f"{root}: cannot list: {e.strerror or e}") from e
        paths = [os.path.join(root, n) for n in names if not n.startswith(".")]
        paths = [p for p in paths if os.path.isfile(p)]
        keys = {k for p in paths if (k := find_key_file(p)) is not None and k != p}
        return [p for p in paths if p not in keys and not p.endswith(_EXTRA_SUFFIXES)]

    def _fingerprint(self) -> Fingerprint:
        root = self.settings.cert
        watched: list[str] = []
        if root is not None:
            watched.append(root)
            try:
                files = self._files()
            except CertificateError:
                files = []
            for f in files:
                watched.append(f)
                k = find_key_file(f)
                if k is not None:
                    watched.append(k)
        if self.settings.ca_cert:
            watched.append(self.settings.ca_cert)
        return tuple((p, _stat(p)) for p in watched)

    def _build(self, fp: Fingerprint) -> _Generation:
        now = self._clock()
        root = self.settings.cert
        assert root is not None
        is_dir = os.path.isdir(root)
        loaded: list[LoadedPem] = []
        for path in self._files():
            if is_dir and is_ca_bundle(path):
                log.info("TLS: %s holds only CA certificates; not a server certificate", path)
                continue
            loaded.append(load_pem(path, now))
        if not loaded:
            raise CertificateError(f"{root}: no certificate file in the directory")
        contexts = [self._context_for(p) for p in loaded]
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for pem, ctx in zip(loaded, contexts, strict=True):
            for name in pem.info.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], ctx)
                else:
                    exact.setdefault(name, ctx)
        return _Generation(default=contexts[0], exact=exact, wildcard=wildcard,
                           infos=tuple(p.info for p in loaded), fingerprint=fp)

    def _self_signed(self, pem: bytes | None) -> _Generation:
        now = self._clock()
        if pem is None:
            pem = generate_self_signed(self_signed_names(), now=now)
        self.self_signed_pem = pem
        key_start = pem.find(b"-----BEGIN PRIVATE KEY-----")
        if key_start < 0:
            raise CertificateError("(self-signed): no PKCS#8 private key in the PEM given")
        loaded = check_pem_bytes(pem[:key_start], [pem[key_start:]], "(self-signed)", now)
        log.warning("TLS: no --ssl-cert given and a service needs TLS; serving a "
                    "self-signed certificate for %s that clients will not trust",
                    ", ".join(loaded.info.names))
        ctx = self._context_for(loaded)
        return _Generation(default=ctx, exact={}, wildcard={}, infos=(loaded.info,),
                           fingerprint=())


def self_signed_names() -> list[str]:
    """The names of the self-signed fallback: localhost and this host's name."""
    return list(dict.fromkeys(["localhost", socket.gethostname().lower()]))


def _stat(path: str) -> Stat:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def _pem_path(pem: bytes) -> Iterator[str]:
    """A path whose content is `pem`, for `load_cert_chain`, which reads only paths.

    On Linux an anonymous memory file: the key never touches a disk. Elsewhere a private
    temporary file, removed at once.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("pylb-cert", os.MFD_CLOEXEC)
        try:
            view = memoryview(pem)
            while view:
                view = view[os.write(fd, view):]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="pylb-cert-", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        yield f.name
