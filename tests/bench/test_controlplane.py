"""bench.controlplane's plumbing at a tiny size: the report has its fields, the process tree
is gone afterwards, and the loopback guard refuses what it must. No timing is asserted."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from bench import controlplane as cp


def test_only_loopback_endpoints_pass_the_guard() -> None:
    def slices(*addresses: str) -> dict[str, object]:
        return {"items": [{"endpoints": [{"addresses": [a]} for a in addresses]},
                          {"endpoints": None}]}

    assert cp.non_loopback_addresses(slices("127.1.0.1", "127.255.0.9")) == []
    assert cp.non_loopback_addresses(slices("127.1.0.1", "10.0.0.1", "192.168.1.1",
                                            "::1", "example.com")) == \
        ["10.0.0.1", "192.168.1.1", "::1", "example.com"]


@pytest.mark.parametrize(("raw", "status", "body"), [
    (b"HTTP/1.1 200 OK\r\nX-Backend: one\r\nContent-Length: 2\r\n\r\nhi", 200, b"hi"),
    (b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", 503, b"abcde"),
])
def test_responses_are_parsed(raw: bytes, status: int, body: bytes) -> None:
    got_status, headers, got_body = cp.parse_response(raw)
    assert (got_status, got_body) == (status, body)
    assert all(k == k.lower() for k in headers)


def test_a_garbage_response_is_an_error() -> None:
    with pytest.raises(ValueError):
        cp.parse_response(b"SSH-2.0-OpenSSH\r\n")


@pytest.mark.timeout(240)
def test_a_tiny_run_reports_every_field(tmp_path: Path) -> None:
    cfg = cp.Config(services=20, workers=1, namespaces=3, changes=5, first_timeout=90,
                    change_timeout=10, changes_budget=60, out=tmp_path)
    result = asyncio.run(cp.run(cfg))
    for key in ("services", "endpoints", "workers", "api_load_s", "pylb_argv",
                "first_traffic_s", "nothing_served", "rss_mib_max", "readyz", "stats_page",
                "sigterm", "worker_restarts", "unreachable_lines", "emfile_lines"):
        assert key in result, key
    assert result["endpoints"] == 200
    for key in ("--namespace=", "--workers 1", "--use-kubernetes-cluster-service=false"):
        assert key in result["pylb_argv"]
    if not result["nothing_served"]:  # a machine too busy to serve in 90 s still reports
        assert result["changes_done"] + result["changes_missed"] >= 1
        assert len(result["change_ms"]) == result["changes_done"] + result["changes_missed"]
        for key in ("change_p50_ms", "change_p99_ms", "change_max_ms"):
            assert key in result
    for key in ("n", "p50_ms", "p99_ms", "max_ms", "timeouts"):
        assert key in result["readyz"] and key in result["stats_page"]
    assert set(result["sigterm"]) >= {"started_s", "not_ready_s", "tree_gone_s",
                                      "within_grace"}
    written = json.loads((tmp_path / "controlplane-20-w1.json").read_text())
    assert written["pylb_argv"] == result["pylb_argv"]
    table = cp.markdown([result]).splitlines()
    assert len(table) == 3 and table[2].startswith("| 20 / 200 | 1 |")
    # nothing of the run is left: pylb's tree and the fake API server
    pylb_log = Path(result["log"])
    assert pylb_log.exists()
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                cmd = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            assert str(tmp_path).encode() not in cmd, (pid_dir.name, cmd)
    assert os.path.exists(tmp_path / "controlplane-20-w1" / "kfake.log")
