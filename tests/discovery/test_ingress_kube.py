"""Ingresses end to end through discovery: the real kubernetes-asyncio client against the
fake API server (tests/kfake) — Ingress, IngressClass and kubernetes.io/tls Secret watched,
an ingress-nginx manifest set served unchanged, a Secret rotated, an Ingress deleted."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from discovery.ingress import CONTROLLER
from pylb.model import PathMatch, RouteTable
from tests.discovery.test_kube import eslice, running, service, settings, source_for
from tests.kfake import FakeApiServer


@pytest.fixture
async def kube_api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeApiServer]:
    for var in ("NO_PROXY", "no_proxy"):  # aiohttp honours *_PROXY: keep loopback direct
        monkeypatch.setenv(var, "127.0.0.1,localhost,::1")
    async with FakeApiServer(bookmark_interval=0.2, bookmark_before_deadline=0.0) as api:
        yield api


MANIFESTS = Path(__file__).parent / "manifests" / "ingress-nginx-shop.yaml"


def ingress_class() -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "pylb"}, "spec": {"controller": CONTROLLER}}


def tls_secret(ca: trustme.CA, name: str, *hosts: str) -> dict[str, Any]:
    leaf = ca.issue_cert(*hosts)
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "default"},
            "data": {"tls.crt": base64.b64encode(chain).decode(),
                     "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode()}}


def routes(table: RouteTable, tls: bool = False) -> set[tuple[str | None, str, str, str]]:
    return {(r.host, r.prefix, r.match.value, r.backend)
            for r in (table.https if tls else table.http) if r.match is not PathMatch.LEGACY}


def load(api: FakeApiServer) -> None:
    store = api.store
    store.create("ingressclasses.networking.k8s.io", ingress_class())
    store.create("services", service("storefront", port=80, target=8080))
    store.create("endpointslices", eslice("storefront", ["127.0.0.11"]))
    api_svc = service("api", port=8000, target=8000)
    api_svc["spec"]["ports"].append({"name": "admin", "port": 9000, "targetPort": 9000,
                                     "protocol": "TCP"})
    store.create("services", api_svc)
    store.create("endpointslices", eslice("api", ["127.0.0.12"], port=8000))
    for doc in yaml.safe_load_all(MANIFESTS.read_text()):
        store.create("ingresses.networking.k8s.io", doc)


async def test_ingress_nginx_manifests_served_and_secret_rotated(
        kube_api: FakeApiServer) -> None:
    ca = trustme.CA()
    load(kube_api)
    # a Secret of another type in the same namespace: never listed (field selector)
    kube_api.store.create("secrets", {"apiVersion": "v1", "kind": "Secret",
                                      "metadata": {"name": "db", "namespace": "default"},
                                      "type": "Opaque", "data": {"password": "aHVudGVyMg=="}})
    source = source_for(kube_api, settings(ingress_class="pylb"))
    async with running(source) as pub:
        table = await pub.until(lambda t: bool(routes(t)))
        shop = {
            ("shop.example.com", "/", "prefix", "default/storefront:80"),
            ("shop.example.com", "/api", "prefix", "default/api:8000"),
            ("shop.example.com", "/healthz", "exact", "default/api:8000"),
            ("www.shop.example.com", "/", "prefix", "default/storefront:80"),
        }
        assert shop <= routes(table)
        assert ("*.blog.example.com", "/", "prefix", "default/storefront:80") in routes(table)
        assert (None, "/", "default", "default/storefront:80") in routes(table)
        (admin,) = [r for r in table.http if r.host == "admin.example.com"]
        assert (admin.prefix, admin.match, admin.rewrite) == (
            "/admin(/|$)(.*)", PathMatch.REGEX, "/$2")
        own = table.backend(admin.backend)
        assert admin.backend == "default/api:9000@default/admin"
        assert (own.affinity.value, own.cookie_name) == ("cookie", "ADMIN")
        assert shop <= routes(table, tls=True)
        assert all(r.ssl_redirect for r in table.http if r.host in ("shop.example.com",
                                                                     "www.shop.example.com"))
        assert [s.address for s in table.backend("default/api:8000").servers] == ["127.0.0.12"]
        # the Secret is not there yet: a reason, and no certificate
        assert table.certs == ()
        assert any(s.kind == "Ingress" and s.name == "shop" and "Secret not found" in s.reason
                   for s in table.skipped)
        assert source.metrics()["objects_secrets"] == 0.0  # the Opaque one is not listed

        kube_api.store.create("secrets", tls_secret(ca, "shop-tls", "shop.example.com"))
        table = await pub.until(lambda t: bool(t.certs))
        (cert,) = table.certs
        assert (cert.source, cert.hosts) == ("default/shop-tls",
                                             ("shop.example.com", "www.shop.example.com"))
        assert not any("Secret not found" in s.reason for s in table.skipped)

        rotated = tls_secret(ca, "shop-tls", "shop.example.com", "www.shop.example.com")
        kube_api.store.put("secrets", rotated)
        table = await pub.until(lambda t: bool(t.certs) and t.certs[0].chain != cert.chain)
        assert table.certs[0].hosts == cert.hosts

        kube_api.store.delete("ingresses.networking.k8s.io", "default", "shop")
        table = await pub.until(lambda t: not t.certs)
        assert not any(r.host == "shop.example.com" for r in table.http)
        assert ("*.blog.example.com", "/", "prefix", "default/storefront:80") in routes(table)


async def test_class_changes_are_seen(kube_api: FakeApiServer) -> None:
    store = kube_api.store
    store.create("services", service("web"))
    store.create("endpointslices", eslice("web", ["127.0.0.21"]))
    store.create("ingresses.networking.k8s.io", {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "noclass", "namespace": "default"},
        "spec": {"rules": [{"host": "a.test", "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
    source = source_for(kube_api, settings(ingress_class="pylb"))
    async with running(source) as pub:
        table = await pub.until(lambda t: t.get_backend("default/web:80") is not None)
        assert routes(table) == set()  # no class, and pylb's is not the default
        cls = ingress_class()
        cls["metadata"]["annotations"] = {"ingressclass.kubernetes.io/is-default-class":
                                          "true"}
        store.create("ingressclasses.networking.k8s.io", cls)
        table = await pub.until(lambda t: bool(routes(t)))
        assert routes(table) == {("a.test", "/", "prefix", "default/web:80")}
