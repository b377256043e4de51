"""The seed's own example: a real MariaDB server behind a pylb TCP frontend, queried with
the `mysql` client through pylb (`show databases;`), on both data paths."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from pylb.model import Server
from tests.conftest import free_port
from tests.proxy.tcp.conftest import Harness, table

pytestmark = pytest.mark.needs_tool

TOOLS = ("mariadb-install-db", "mariadbd", "mysql")


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    missing = [t for t in TOOLS if shutil.which(t) is None
               and shutil.which(t, path="/usr/sbin:/usr/local/sbin") is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian mariadb-server, mariadb-client)")
    base = tmp_path_factory.mktemp("mariadb")
    data = base / "data"
    install = subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        capture_output=True, timeout=60, check=False)
    if install.returncode != 0:
        pytest.skip(f"mariadb-install-db failed: {install.stderr[-500:]!r}")
    port = free_port()
    daemon = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin")
    assert daemon is not None
    log = (base / "mariadbd.log").open("wb")
    proc = subprocess.Popen(
        [daemon, "--no-defaults", f"--datadir={data}", f"--socket={base / 'sock'}",
         f"--port={port}", "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin",
         "--innodb-buffer-pool-size=16M", f"--pid-file={base / 'pid'}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _ready(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("mariadbd did not start: "
                            + (base / "mariadbd.log").read_text(errors="replace")[-500:])
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _ready(port: int) -> bool:
    r = subprocess.run(["mysql", "--protocol=TCP", "-h127.0.0.1", f"-P{port}", "-uroot",
                        "-e", "select 1"], capture_output=True, timeout=10, check=False)
    return r.returncode == 0


async def mysql(port: int, query: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "mysql", "--protocol=TCP", "-h127.0.0.1", f"-P{port}", "-uroot", "--batch", "-e",
        query, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode(errors="replace")
    return out.decode()


async def test_show_databases_through_pylb(h: Harness, mariadb: int) -> None:
    p = h.proxy()
    await p.set_table(table(Server("127.0.0.1", mariadb, name="mariadb-0")))
    port = p.bound_ports()[0][1]
    out = await mysql(port, "show databases;")
    assert out.splitlines()[0] == "Database"
    assert {"information_schema", "mysql"} <= set(out.splitlines()[1:])
    # A result bigger than the splice threshold and the watermarks, byte-exact.
    out = await mysql(port, "select repeat('x', 3000000) as big;")
    assert out == "big\n" + "x" * 3_000_000 + "\n"
    for _ in range(500):
        if p.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert p.connections == 0
    sc = p.stats.server("default/svc:3306", "mariadb-0")
    assert sc.total_conns == 2 and sc.bytes_out > 3_000_000 and sc.conn_errors == 0


