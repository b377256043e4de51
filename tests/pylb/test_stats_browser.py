"""The stats page in a real browser: headless Chromium loads it with and without auth.

Screenshots land in tests/artifacts/ (gitignored) for a human to look at:
stats-open.png (no auth configured, the whole page) and stats-auth.png (credentials in
the URL, first screenful).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pylb.config import Settings
from pylb.stats import StatsServer
from tests.pylb.stats_fixtures import known_view

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.needs_tool,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed"),
]


async def chromium(url: str, *args: str) -> str:
    """Run headless Chromium on `url` with `args`; its stdout."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="pylb-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", *args, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 45)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return out.decode(errors="replace")


async def screenshot(url: str, name: str, height: int = 900) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    await chromium(url, f"--screenshot={path}", f"--window-size=1400,{height}",
                   "--hide-scrollbars")
    assert path.stat().st_size > 10_000  # a rendered page, not an empty canvas
    return path


@pytest.fixture
async def servers() -> AsyncIterator[tuple[str, str]]:
    open_srv = StatsServer(Settings(stats_refresh=0), known_view)
    auth_srv = StatsServer(Settings(stats_auth="admin:s3cret"), known_view)
    h1, p1 = await open_srv.start("127.0.0.1", 0)
    h2, p2 = await auth_srv.start("127.0.0.1", 0)
    try:
        yield f"{h1}:{p1}", f"{h2}:{p2}"
    finally:
        await open_srv.close()
        await auth_srv.close()


async def test_page_in_chromium(servers: tuple[str, str]) -> None:
    open_addr, auth_addr = servers
    dom = await chromium(f"http://{open_addr}/", "--dump-dom")
    assert "pylb statistics" in dom and "web-1" in dom
    assert "&lt;script&gt;alert" in dom  # the hostile name stayed text
    await screenshot(f"http://{open_addr}/", "stats-open.png", height=1300)

    dom = await chromium(f"http://admin:s3cret@{auth_addr}/;norefresh", "--dump-dom")
    assert "pylb statistics" in dom and "mysql-0" in dom
    await screenshot(f"http://admin:s3cret@{auth_addr}/;norefresh", "stats-auth.png")

    dom = await chromium(f"http://{auth_addr}/", "--dump-dom")
    assert "pylb statistics" not in dom and "web-1" not in dom
