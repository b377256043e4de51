"""Fixtures for the TLS tests: a CA, and pylb's TLS frontend (HttpProxy + TlsStore) in
front of a test backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from proxy.balance import Balancers
from proxy.http import HttpProxy
from proxy.listener import ConnectionLimit
from proxy.tls import TlsStore
from pylb.config import Settings, TlsSettings
from pylb.counters import Stats
from pylb.model import Backend, HttpRoute, RouteTable, Server
from tests.proxy.http.backends import HttpBackend
from tests.proxy.tls.helpers import Front, write_leaf


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def front_factory(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Front] = []

    async def start(**tls_kw: Any) -> Front:
        d = tmp_path / "certs"
        if not d.exists():
            d.mkdir()
            write_leaf(ca, d / "00-default.pem", "default.example")
            write_leaf(ca, d / "10-www.pem", "www.example.com", key_type=trustme.KeyType.RSA)
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        settings = Settings(tls=TlsSettings(cert=str(d), **tls_kw))
        store = TlsStore(settings.tls)
        backend = await HttpBackend("b0").start()
        proxy = HttpProxy(settings, Stats(), Balancers(settings.limits), frontend="https",
                          tls=True, ssl_context=store.server_context(),
                          # as `pylb run` makes it (proxy.listener, proxy.tlstransport)
                          limit=ConnectionLimit(settings.limits.maxconn))
        _, port = await proxy.start("127.0.0.1", 0)
        be = Backend("default/app:443", (Server("127.0.0.1", backend.port, name="b0"),))
        proxy.set_table(RouteTable(https=(HttpRoute("app", "/app", be.name, tls=True),),
                                   backends=(be,)))
        front = Front(store, proxy, port, backend, ca_file, tmp_path)
        started.append(front)
        return front

    yield start
    for f in started:
        await f.proxy.shutdown(0.5)
        await f.backend.stop()


