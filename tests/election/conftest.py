"""Election tests get the fake API server (tests/kfake) and a client of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.kfake import FakeApiServer
from tests.kfake.conftest import kube_api, no_proxy_env

__all__ = ["api_client", "kube_api", "no_proxy_env"]


@pytest.fixture
async def api_client(kube_api: FakeApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(kube_api.configuration()) as api:
        yield api
