"""Fixtures: `kube_api`, a started FakeApiServer with fast bookmarks.

Other test directories get it with `from tests.kfake.conftest import kube_api` (re-exported
in their own conftest.py) or by building `FakeApiServer` themselves.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.kfake import FakeApiServer


@pytest.fixture
def no_proxy_env() -> Iterator[None]:
    """aiohttp runs with trust_env=True: keep proxies away from loopback."""
    saved = {k: os.environ.get(k) for k in ("NO_PROXY", "no_proxy")}
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
async def kube_api(no_proxy_env: None) -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(bookmark_interval=0.2, bookmark_before_deadline=0.0) as api:
        yield api


@pytest.fixture
async def kube_api_tls(no_proxy_env: None) -> AsyncIterator[FakeApiServer]:
    """The same over HTTPS with a fresh test CA (`configuration()`, `kubeconfig_dict()` and
    `write_incluster()` carry the CA)."""
    async with FakeApiServer(tls=True, bookmark_interval=0.2,
                             bookmark_before_deadline=0.0) as api:
        yield api
