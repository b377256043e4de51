"""bench/instructions.py's plumbing in a tiny configuration (no figure asserted): the
measuring script stays runnable, and its readers of callgrind and strace output stay
right."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import instructions

CALLGRIND_DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python3.11 -m bench.instructions serve
events: Ir
summary: 449147535
fn=(1) main
5 10
totals: 449147535
"""

STRACE_TABLE = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.004000           2      2000           write
 30.00    0.003000           1      4000      2000 accept4
  0.00    0.000000           0        10           brk
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           1      6010      2000 total
"""


def test_callgrind_totals_are_read(tmp_path: Path) -> None:
    f = tmp_path / "callgrind.4242"
    f.write_text(CALLGRIND_DUMP)
    assert instructions._callgrind_total(f) == 449147535
    f.write_text("events: Ir\n")
    with pytest.raises(RuntimeError):
        instructions._callgrind_total(f)


def test_strace_table_becomes_calls_per_request(tmp_path: Path) -> None:
    f = tmp_path / "strace"
    f.write_text(STRACE_TABLE)
    assert instructions._syscalls(f, 2000) == {"write": 1.0, "accept4": 2.0, "brk": 0.01}


def test_the_measured_interpreter_is_this_one_venv_included() -> None:
    """The proxy under measurement runs in this environment (a venv's packages included);
    realpath(sys.executable) left the venv for the base interpreter."""
    code = "import sys; print(sys.prefix)"
    r = subprocess.run([instructions._python(), "-c", code], capture_output=True, text=True,
                       timeout=60, check=True)
    assert r.stdout.strip() == sys.prefix


@pytest.mark.needs_tool
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["keepalive", "newconn"])
def test_tiny_cpu_mode_run(case: str) -> None:
    """A real pylb worker set-up and nginx, a few requests from the blocking client."""
    if shutil.which("nginx") is None:
        pytest.skip("nginx not installed")
    ns = argparse.Namespace(case=case, proxy="pylb", parser="httptools", mode="cpu",
                            requests=20, warmup=5, keep=None, sort="tottime", top=10)
    out = instructions.measure(ns)
    assert out["requests"] == 20 and out["proxy"] == "pylb-httptools"
    assert out["cpu_us_per_req"] >= 0 and out["page_faults_per_req"] >= 0


def test_concurrent_load_refuses_tls_cases_with_a_connection_per_request(
        capsys: pytest.CaptureFixture[str]) -> None:
    """--concurrent drives the proxy with wrk, whose TLS session resumption is not this
    client's: a TLS case that makes a connection per request is refused before anything
    starts (a bad flag stops with a message naming it); TLS keep-alive is not."""
    with pytest.raises(SystemExit) as e:
        instructions.main(["--case", "newconn", "tls-keepalive", "tls-rsa-resume",
                           "--concurrent", "4", "--mode", "cpu"])
    assert e.value.code == 2
    assert "not tls-rsa-resume" in capsys.readouterr().err


def test_tiny_concurrent_cpu_mode_run() -> None:
    """--concurrent: wrk drives the measured window, and the figures are per request wrk
    completed (not per --requests)."""
    if shutil.which("nginx") is None or shutil.which("wrk") is None:
        pytest.skip("nginx or wrk not installed")
    ns = argparse.Namespace(case="newconn", proxy="pylb", parser="httptools", mode="cpu",
                            requests=10**9, warmup=5, keep=None, sort="tottime", top=10,
                            concurrent=4, seconds=1.0)  # (10**9 sequential: never ends)
    out = instructions.measure(ns)
    assert out["concurrent"] == 4 and 0 < out["requests"] < 10**9  # wrk's count
    assert out["cpu_us_per_req"] > 0


def test_tiny_concurrent_tls_keepalive_run() -> None:
    """TLS keep-alive under wrk: wrk speaks TLS to pylb's TLS frontend."""
    if shutil.which("nginx") is None or shutil.which("wrk") is None:
        pytest.skip("nginx or wrk not installed")
    ns = argparse.Namespace(case="tls-keepalive", proxy="pylb", parser="httptools",
                            mode="cpu", requests=10**9, warmup=5, keep=None,
                            sort="tottime", top=10, concurrent=2, seconds=1.0)
    out = instructions.measure(ns)
    assert out["concurrent"] == 2 and 0 < out["requests"] < 10**9
