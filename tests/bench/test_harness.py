"""The benchmark harness's plumbing, in a tiny configuration: no timing assertion, so the
harness cannot rot without a test failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import procs, report, wrk
from bench.run import SCENARIOS, Case, Run, Scenario, run

WRK_OUT = """Running 2s test @ http://127.0.0.1:8080/svc/small
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   420.50us  100.00us   5.02ms   90.00%
    Req/Sec    50.14k     1.00k   52.00k    70.00%
  Latency Distribution
     50%  412.00us
     75%  500.00us
     90%    1.10ms
     99%    5.02ms
  100286 requests in 2.00s, 23.43MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  50143.00
Transfer/sec:     11.71MB
"""


def test_wrk_output_is_parsed() -> None:
    r = wrk.parse(WRK_OUT)
    assert r.requests == 100286
    assert r.seconds == 2.0
    assert r.rps == 50143.0
    assert r.latency_ms == pytest.approx({"50%": 0.412, "75%": 0.5, "90%": 1.1, "99%": 5.02})
    assert r.socket_errors == {"connect": 0, "read": 3, "write": 0, "timeout": 1}
    assert r.non_2xx == 7
    assert r.errors == 11
    assert round(r.mb_per_s, 2) == 11.71


def test_wrk_garbage_is_an_error() -> None:
    with pytest.raises(ValueError):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused")


def test_cpu_and_rss_accounting_covers_the_process_tree() -> None:
    code = "import os,time\nif os.fork()==0:\n  t=time.process_time()\n" \
           "  while time.process_time()-t<0.3: sum(range(20000))\n" \
           "  time.sleep(5)\nelse: time.sleep(5)\n"
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while procs.cpu_seconds(p.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(procs.tree(p.pid)) == 2
        assert procs.cpu_seconds(p.pid) >= 0.25  # the child's spin counts for the parent
        user, system = procs.cpu_split(p.pid)
        assert user >= 0.2 > system  # a pure-Python spin is user time
        assert procs.rss_kib(p.pid) > 1000
    finally:
        for pid in procs.tree(p.pid)[::-1]:
            os.kill(pid, 9)
        p.wait()


def _case(proxy: str, rps: float, cpu: float, kernel: float = 0.0) -> Case:
    return Case("l7-keepalive", proxy, [Run(rps, 1.0, 0.4, 2.0, cpu, 20.0, 0, 1000, kernel)])


def test_report_ratios_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    cases = [_case("direct", 100.0, 0.0), _case("haproxy", 50.0, 10.0),
             _case("pylb-httptools", 40.0, 16.0, kernel=6.5)]
    md = report.markdown(cases, {"date": "d", "cores": 2, "cpu": "x", "python": "3.11"}, 1, 1)
    row = next(line for line in md.splitlines() if line.startswith("| pylb-httptools"))
    assert "1.60×" in row  # CPU per request vs haproxy
    assert "| 9.5 / 6.5 |" in row  # user / kernel µs of the 16
    hap = next(line for line in md.splitlines() if line.startswith("| haproxy"))
    assert hap.count("|") == row.count("|") == 12  # 11 columns; no split known: "–"
    assert "0.40×" in row  # throughput vs direct
    assert "62,500" in row  # per-core req/s = 1e6 / 16
    files = report.plots(cases, tmp_path)
    assert [f.name for f in files] == ["cpu_per_request.png", "latency_p99.png"]
    assert all(f.stat().st_size > 1000 for f in files)


def test_scenarios_cover_what_the_issue_lists() -> None:
    names = {s.name for s in SCENARIOS}
    for n in ("l7-keepalive", "l7-newconn", "l7-64k", "l7-1m", "l4-keepalive", "l4-newconn",
              "l4-bulk", "tls-handshake-rsa", "tls-handshake-ecdsa", "tls-keepalive",
              "workers-1", "workers-2"):
        assert n in names


@pytest.mark.needs_tool
@pytest.mark.timeout(120)
def test_tiny_live_run(tmp_path: Path) -> None:
    """direct, haproxy and pylb, one 1-second run each, through the real harness."""
    for tool in ("wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    sc = Scenario("l7-keepalive", "tiny", connections=4,
                  proxies=("direct", "haproxy", "pylb-h11"))
    cases = run([sc], runs=1, seconds=1, out=tmp_path, progress=lambda m: None)
    assert (tmp_path / "results.json").exists()
    by = {c.proxy: c for c in cases}
    assert not by["haproxy"].skipped, by["haproxy"].skipped
    assert not by["pylb-h11"].skipped, by["pylb-h11"].skipped
    for c in cases:
        assert c.runs[0].requests > 0
        assert c.runs[0].errors == 0
    assert by["pylb-h11"].runs[0].cpu_us_per_req > 0
    assert by["pylb-h11"].runs[0].peak_rss_mib > 0
