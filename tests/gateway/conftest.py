"""Fixtures of the Gateway tests, and a loop-side guard for their timeouts.

pytest-timeout's `signal` method cannot stop a test that waits in uvloop: SIGALRM's
exception never reaches the awaiting test, which then hangs past its timeout for good
(seen: a `@pytest.mark.timeout(2)` test awaiting `asyncio.sleep(3600)` runs until killed).
That is how a slow live run, once over its timeout, "stalled" instead of failing. So the
loop itself cancels the test's tasks shortly before the pytest timeout: the test fails with
CancelledError, its fixtures' teardowns (all bounded: tests/gateway/live.py) run, and the
session goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.kfake.conftest import kube_api, no_proxy_env

# Seconds before the pytest timeout at which the loop cancels the test (its teardown runs
# after, outside the pytest timeout, which has fired by then or never will).
MARGIN = 5.0


@pytest.fixture(autouse=True)
async def loop_deadline(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else \
        float(request.config.getini("timeout") or 0)
    if limit <= MARGIN:
        yield
        return
    loop = asyncio.get_running_loop()
    fixture_task = asyncio.current_task()

    def expire() -> None:
        for task in asyncio.all_tasks(loop):
            if task is not fixture_task:
                task.cancel(f"over its {limit:g} s timeout")
    handle = loop.call_later(limit - MARGIN, expire)
    yield
    handle.cancel()


__all__ = ["kube_api", "loop_deadline", "no_proxy_env"]
