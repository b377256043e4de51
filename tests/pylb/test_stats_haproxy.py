"""pylb's CSV against the real haproxy's: same header, same status strings and types.

Runs Debian's haproxy with a stats listener on a loopback port, a frontend and a backend
with one checked server on a closed port (it goes DOWN, L4CON) and one unchecked.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.check import L4CON, Probe, advance, initial
from pylb.config import CheckSettings
from pylb.model import Backend, HttpRoute, RouteTable, Server
from pylb.stats import StatsView, render_csv
from tests.conftest import free_ports

pytestmark = [
    pytest.mark.needs_tool,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed"),
]

CONFIG = """
global
    maxconn 100
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
listen stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /
frontend fe
    bind 127.0.0.1:{fe}
    default_backend be
backend be
    server s1 127.0.0.1:{dead} check inter 100 rise 2 fall 3
    server s2 127.0.0.1:{dead}
"""


def _fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.fixture(scope="module")
def haproxy_csv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[list[str]]]:
    d: Path = tmp_path_factory.mktemp("haproxy")
    stats, fe, dead = free_ports(3)
    cfg = d / "haproxy.cfg"
    cfg.write_text(CONFIG.format(stats=stats, fe=fe, dead=dead))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        rows: list[list[str]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            text = _fetch(f"http://127.0.0.1:{stats}/;csv")
            if text is not None:
                rows = list(csv.reader(io.StringIO(text)))
                if any(r[:2] == ["be", "s1"] and r[17] == "DOWN" for r in rows):
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert rows, "haproxy's stats page never answered"
        yield rows
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def _pylb_rows() -> list[list[str]]:
    p = CheckSettings(rise=2, fall=3)
    now = time.time()
    down = advance(initial(p, now), Probe(L4CON, None, 0.1, "Connection refused"), now)
    table = RouteTable(http=(HttpRoute("be", "/", "be"),), backends=(Backend("be", (
        Server("127.0.0.1", 1, name="s1"), Server("127.0.0.1", 2, name="s2"))),))
    view = StatsView(version="t", pid=1, started=now, now=now, table=table,
                     checks={("127.0.0.1", 1): down}, maxconn=100)
    return list(csv.reader(io.StringIO(render_csv(view))))


def test_header_is_haproxys(haproxy_csv: list[list[str]]) -> None:
    assert _pylb_rows()[0] == haproxy_csv[0]


def test_rows_have_as_many_cells_as_haproxys(haproxy_csv: list[list[str]]) -> None:
    assert {len(r) for r in _pylb_rows()} == {len(haproxy_csv[0])}
    assert {len(r) for r in haproxy_csv} == {len(haproxy_csv[0])}


def test_status_strings_and_types_match(haproxy_csv: list[list[str]]) -> None:
    fields = [f.removeprefix("# ") for f in haproxy_csv[0]]

    def pick(rows: list[list[str]], px: str, sv: str) -> dict[str, str]:
        row = next(r for r in rows if r[0] == px and r[1] == sv)
        return dict(zip(fields, row, strict=True))
    theirs = {sv: pick(haproxy_csv, "fe" if sv == "FRONTEND" else "be", sv)
              for sv in ("FRONTEND", "s1", "s2", "BACKEND")}
    ours = {sv: pick(_pylb_rows(), "http" if sv == "FRONTEND" else "be", sv)
            for sv in ("FRONTEND", "s1", "s2", "BACKEND")}
    same = ("status", "type", "check_status", "act", "bck", "weight", "mode", "qcur",
            "chkdown", "check_rise", "check_fall", "check_health", "sid", "-", "dreq")
    for sv in theirs:
        for f in same:
            if (sv, f) == ("BACKEND", "chkdown"):
                # haproxy counts the backend's own UP→DOWN transitions; pylb does not
                # track them and leaves the cell empty.
                assert ours[sv][f] == ""
                continue
            assert (sv, f, ours[sv][f]) == (sv, f, theirs[sv][f])
    # Fields haproxy leaves empty on a frontend, pylb leaves empty too.
    for f in ("qcur", "qmax", "econ", "eresp", "wretr", "weight", "act", "check_status"):
        assert theirs["FRONTEND"][f] == "" == ours["FRONTEND"][f]
