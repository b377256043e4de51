"""The :8081 health server: /healthz, /readyz, and the default backend's answer."""

from __future__ import annotations

import aiohttp
import pytest

from pylb.config import Settings
from pylb.health import HealthServer


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


@pytest.mark.parametrize(("alive", "ready", "healthz", "readyz"), [
    (True, True, 200, 200),
    (True, False, 200, 503),
    (False, False, 503, 503),
])
async def test_probes(alive: bool, ready: bool, healthz: int, readyz: int) -> None:
    srv = HealthServer(Settings(), lambda: alive, lambda: ready)
    host, port = await srv.start("127.0.0.1", 0)
    try:
        assert (await get(f"http://{host}:{port}/healthz"))[0] == healthz
        assert (await get(f"http://{host}:{port}/readyz"))[0] == readyz
        assert (await get(f"http://{host}:{port}/healthz?verbose"))[0] == healthz
    finally:
        await srv.close()


async def test_readiness_follows_the_function() -> None:
    state = {"ready": False}
    srv = HealthServer(Settings(), lambda: True, lambda: state["ready"])
    host, port = await srv.start("127.0.0.1", 0)
    try:
        assert (await get(f"http://{host}:{port}/readyz"))[0] == 503
        state["ready"] = True
        assert (await get(f"http://{host}:{port}/readyz")) == (200, "ready\n")
    finally:
        await srv.close()


async def test_a_raising_probe_is_a_failure() -> None:
    def boom() -> bool:
        raise RuntimeError("listener table broken")
    srv = HealthServer(Settings(), boom, boom)
    host, port = await srv.start("127.0.0.1", 0)
    try:
        assert (await get(f"http://{host}:{port}/healthz"))[0] == 503
    finally:
        await srv.close()


@pytest.mark.parametrize(("settings", "status", "body"), [
    (Settings(), 404, "default backend - 404\n"),
    (Settings(default_return_code=503), 503, "default backend - 503\n"),
    (Settings(default_return_code=404, error_page_body=b"<h1>gone fishing</h1>"), 404,
     "<h1>gone fishing</h1>"),
])
async def test_anything_else_is_the_default_backend(settings: Settings, status: int,
                                                    body: str) -> None:
    srv = HealthServer(settings, lambda: True, lambda: True)
    host, port = await srv.start("127.0.0.1", 0)
    try:
        assert await get(f"http://{host}:{port}/some/where") == (status, body)
        assert (await get(f"http://{host}:{port}/"))[0] == status
    finally:
        await srv.close()
