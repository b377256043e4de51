"""`pylb run --ingress-class=pylb` as a user runs it, against the fake API server: an
Ingress with TLS from a Secret is served by the workers — the Secret's certificate by SNI,
the redirect from http, the request routed by host and path — and a rotated Secret is
served to new connections while an open one goes on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from cryptography import x509

from pylb.demo import service_manifest, slice_manifest, start_name_server
from tests.conftest import free_port, free_ports
from tests.kfake import FakeApiServer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer() as server:
        yield server


def tls_secret(ca: trustme.CA, *hosts: str) -> dict[str, Any]:
    leaf = ca.issue_cert(*hosts)
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "shop-tls", "namespace": "default"},
            "data": {"tls.crt": base64.b64encode(chain).decode(),
                     "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode()}}


INGRESS = {
    "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
    "metadata": {"name": "shop", "namespace": "default"},
    "spec": {"ingressClassName": "pylb",
             "tls": [{"hosts": ["shop.test"], "secretName": "shop-tls"}],
             "rules": [{"host": "shop.test", "http": {"paths": [
                 {"path": "/cart", "pathType": "Prefix", "backend": {
                     "service": {"name": "web", "port": {"number": 80}}}}]}}]}}


async def exchange(r: asyncio.StreamReader, w: asyncio.StreamWriter, path: str,
                   host: str = "shop.test") -> tuple[int, dict[str, str], bytes]:
    w.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await asyncio.wait_for(r.readexactly(int(headers.get("content-length", "0"))), 5)
    return int(lines[0].split()[1]), headers, body


def serial(w: asyncio.StreamWriter) -> int:
    der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def test_ingress_tls_from_secret_served_and_rotated(
        api: FakeApiServer, tmp_path: Path) -> None:
    ca = trustme.CA()
    web = await start_name_server("one")
    port = web.sockets[0].getsockname()[1]
    api.store.create("ingressclasses.networking.k8s.io", {
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "pylb"}, "spec": {"controller": "pylb.io/ingress-controller"}})
    api.store.create("services", service_manifest("web", 80, 8080))
    api.store.create("endpointslices", slice_manifest("web-a", "web", port, ["127.0.0.1"]))
    api.store.create("secrets", tls_secret(ca, "shop.test"))
    api.store.create("ingresses.networking.k8s.io", INGRESS)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(api.kubeconfig_dict()))
    http_port, https_port = free_ports(2)
    log = tmp_path / "pylb.log"
    client = ssl.create_default_context(cafile=None)
    ca.configure_trust(client)
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pylb", "run", "--source=kubernetes",
            "--use-kubernetes-cluster-service=false", f"--kubeconfig={kubeconfig}",
            "--ingress-class=pylb", "--bind=127.0.0.1", f"--http-port={http_port}",
            f"--https-port={https_port}", f"--stats-port={free_port()}",
            f"--health-port={free_port()}", "--workers=2",
            env={"NO_PROXY": "127.0.0.1,localhost", "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.DEVNULL, stderr=fh)
    try:
        deadline = time.monotonic() + 30
        while True:  # until a worker serves the Secret's certificate (verified by the CA)
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError,
                                     asyncio.IncompleteReadError, ValueError):
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", https_port, ssl=client, server_hostname="shop.test"), 5)
                status, _, body = await exchange(r, w, "/cart/1")
                if status == 200:
                    break
                w.close()
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        assert b'"server": "one"' in body
        first = serial(w)

        # plain http: the TLS host is redirected; another host has no route
        pr, pw = await asyncio.open_connection("127.0.0.1", http_port)
        status, headers, _ = await exchange(pr, pw, "/cart/x?y=1")
        assert status == 301 and headers["location"] == "https://shop.test/cart/x?y=1"
        status, _, _ = await exchange(pr, pw, "/cart", host="other.test")
        assert status == 404
        pw.close()

        # rotation: new connections get the new certificate, the open one goes on
        api.store.put("secrets", tls_secret(ca, "shop.test"))
        deadline = time.monotonic() + 30
        while True:
            r2, w2 = await asyncio.open_connection("127.0.0.1", https_port, ssl=client,
                                                   server_hostname="shop.test")
            rotated = serial(w2) != first
            status, _, _ = await exchange(r2, w2, "/cart")
            w2.close()
            assert status == 200
            if rotated:
                break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        status, _, body = await exchange(r, w, "/cart/2")  # the connection opened before
        assert status == 200 and b'"server": "one"' in body
        assert serial(w) == first
        w.close()
    finally:
        proc.terminate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 20)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        web.close()
        await web.wait_closed()
