"""tests/timeouts.py on a real pytest session: a test stuck in uvloop fails at its timeout
and the session goes on; one that will not stop ends the session after the grace.

Each case runs `python -m pytest` in a subprocess with this suite's pyproject.toml and its
tests/conftest.py (uvloop, pytest-asyncio auto mode, pytest-timeout), on a file of its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The subprocess's own bound: far over what each case needs (about 2 s), far under the
# 60 s this test has. A session that hangs is killed here and the test fails.
BOUND = 40.0


def run_session(tmp_path: Path, source: str,
                *options: str) -> tuple[subprocess.CompletedProcess[str], float]:
    path = tmp_path / "test_stuck.py"
    path.write_text(textwrap.dedent(source))
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
             "--rootdir", str(tmp_path), "-p", "tests.conftest", "-p", "no:cacheprovider",
             "-q", *options, str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=BOUND)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the session still ran after {BOUND:g} s: {e.stdout!r} {e.stderr!r}")
    return done, time.monotonic() - start


def test_async_test_awaiting_in_uvloop_fails_at_its_timeout_and_the_session_goes_on(
        tmp_path: Path) -> None:
    done, took = run_session(tmp_path, """
        import asyncio

        import pytest


        @pytest.fixture
        async def server():
            server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            yield server
            server.close()  # runs: the test was cancelled, not abandoned
            await server.wait_closed()


        @pytest.mark.timeout(1)
        async def test_forever(server):
            assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
            await asyncio.sleep(3600)


        def test_passes():
            pass
        """)
    assert re.search(r"\b1 failed, 1 passed\b", done.stdout), done.stdout + done.stderr
    assert "CancelledError: Timeout (>1s) from pytest-timeout" in done.stdout, done.stdout
    assert done.returncode == 1, done.stdout + done.stderr
    assert took < BOUND


def test_async_fixture_stuck_in_setup_fails_at_the_timeout(tmp_path: Path) -> None:
    done, _ = run_session(tmp_path, """
        import asyncio

        import pytest


        @pytest.fixture
        async def stuck():
            await asyncio.Event().wait()
            yield


        @pytest.mark.timeout(1)
        async def test_never_runs(stuck):
            pass


        async def test_passes():
            await asyncio.sleep(0)
        """)
    assert re.search(r"\b1 passed, 1 error\b", done.stdout), done.stdout + done.stderr


def test_a_test_that_swallows_the_cancel_ends_the_session_after_the_grace(
        tmp_path: Path) -> None:
    done, took = run_session(tmp_path, """
        import asyncio

        import pytest


        @pytest.mark.timeout(1)
        async def test_will_not_stop():
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass


        def test_never_reached():
            pass
        """, "-o", "timeout_grace=1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "test_will_not_stop: still running 1 s after its 1 s timeout" in done.stdout, \
        done.stdout
    assert "Stack of MainThread" in done.stdout, done.stdout  # where it was stuck
    assert "passed" not in done.stdout
    assert took < BOUND
