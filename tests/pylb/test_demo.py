"""`pylb demo`: everything it prints answers, its backends speak proper HTTP/1.1, and a
port in use stops it with one line naming the flag."""

from __future__ import annotations

import asyncio
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylb.demo import DemoPorts, instructions, start_name_server
from tests.conftest import free_ports

ROOT = Path(__file__).resolve().parents[2]


async def test_backends_answer_with_a_reason_phrase() -> None:
    server = await start_name_server("web-1")
    try:
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert await asyncio.wait_for(r.readline(), 10) == b"HTTP/1.1 200 OK\r\n"
        w.close()
        await w.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


def test_the_default_ports() -> None:
    p = DemoPorts()
    assert (p.http, p.stats, p.health, p.tcp) == (8080, 1936, 8082, 7000)
    assert 8081 not in {p.http, p.stats, p.health, p.tcp}  # pylb run's default health port
    text = instructions("/tmp/x.yaml", p, 15.0)
    assert "http://127.0.0.1:1936/" in text and "after 15s" in text


def _ports() -> DemoPorts:
    return DemoPorts(*free_ports(4))


def _argv(p: DemoPorts) -> list[str]:
    return [sys.executable, "-m", "pylb.cli", "demo", f"--port={p.http}",
            f"--stats-port={p.stats}", f"--health-port={p.health}", f"--tcp-port={p.tcp}"]


@pytest.fixture
def demo() -> Iterator[tuple[DemoPorts, str]]:
    """A running demo and what it printed."""
    ports = _ports()
    proc = subprocess.Popen([*_argv(ports), "--duration=50s"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        out = ""
        for _ in range(40):  # the instructions are a few lines, printed at once
            line = proc.stdout.readline()
            out += line
            if not line or line.startswith("It stops"):
                break
        ready = f"http://127.0.0.1:{ports.health}/readyz"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=5) as r:
                    if r.status == 200:
                        break
            except (OSError, urllib.error.HTTPError):
                pass
            assert time.monotonic() < deadline, out
            time.sleep(0.1)
        yield ports, out
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def _get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_every_url_and_command_the_demo_prints_answers(demo: tuple[DemoPorts, str]) -> None:
    ports, out = demo
    urls = 0
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("curl "):
            args = shlex.split(line.split("#")[0])
            headers = dict(h.split(": ", 1) for h in args[2:-1:2] if args[1] == "-H")
            status, body = _get(args[-1], headers)
            # (the comment says 404; a port may hold those digits too: 40469)
            expected = 404 if "404" in line.partition("#")[2] else 200
            assert status == expected, (line, body)
            urls += 1
        elif line.startswith(("stats page:", "health:")):
            for url in re.findall(r"http://\S+", line):
                status, body = _get(url, {})
                assert status == 200, (url, body)
                urls += 1
        elif line.startswith("python3 -c "):
            cmd = shlex.split(line)
            r = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True,
                               timeout=30)
            assert r.stdout.strip() == "b'hi'", r.stderr
            urls += 1
    assert urls == 11, out  # 4 curls, 4 stats URLs, 2 health URLs, the TCP echo
    assert f"http://127.0.0.1:{ports.stats}/" in out


@pytest.mark.parametrize("flag", ["--stats-port", "--port", "--health-port", "--tcp-port"])
def test_a_port_in_use_stops_the_demo_naming_its_flag(flag: str) -> None:
    ports = _ports()
    attr = {"--stats-port": "stats", "--port": "http", "--health-port": "health",
            "--tcp-port": "tcp"}[flag]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", getattr(ports, attr)))
        busy.listen()
        r = subprocess.run([*_argv(ports), "--duration=5s"], capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"pylb demo: error: {flag}: port {getattr(ports, attr)} on 127.0.0.1 is "
                     f"in use by another program; choose another with {flag}"], r.stderr
