"""Control-plane faults under load (issue #12): the Kubernetes API server down, hung, silent,
answering 5xx, 429 or 410 — while wrk drives traffic through `pylb run --source kubernetes`
on an HTTP route and a TCP route.

The rig is bench/apifaults.py's (the benchmark runs the same sequence for minutes): the
fake API server in this process, pylb as its own process, nginx backends (pylb.demo's name
servers without nginx; an asyncio load client without wrk). While each fault holds the
endpoints change in the fake's store — `web` gains a server and loses one that stays alive,
`db` moves to another server — so the table after recovery must differ from the last good
one. Discovery's timings are scaled down for the test (`read_timeout` and `backoff_cap` of
2 s instead of 120 s and 30 s) so that each fault can last 3 s.

Readiness: `/readyz` means "discovery has synced once", and stays true while the API server
is away. An LB node that turned unready whenever the control plane blinked would be pulled
out of rotation (by a cloud LB, keepalived, or DNS health checks) exactly when it cannot
learn anything new but is serving correctly — haproxy keeps serving its last config too.
Staleness shows on the stats page instead (`last_sync`, discovery errors).

The one bug this found (the backoff of an informer whose quiet watch never delivers an
event was never forgotten) is pinned with an injected clock in tests/discovery/test_informer.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.apifaults import FAULT_KINDS, HOT_LOOP_RATE, PhaseResult, RigConfig, run

FAULT_SECONDS = 3
INFORMERS = 2  # services and endpointslices in one namespace


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost,::1")


@pytest.mark.timeout(240)
async def test_traffic_survives_every_api_fault_and_the_table_catches_up(
        tmp_path: Path, no_proxy: None) -> None:
    config = RigConfig(workers=1, kube={"read_timeout": 2.0, "backoff_cap": 2.0},
                       connections=4, wrk_timeout=30.0)

    def fail_fast(p: PhaseResult) -> None:  # a broken phase need not wait for the others
        assert (p.http.errors, p.tcp.errors, p.recovery.errors) == (0, 0, 0), p
        assert p.catch_up_s is not None, p

    report = await run(FAULT_KINDS, dict.fromkeys(FAULT_KINDS, FAULT_SECONDS), baseline=2,
                       recovery_slice=1, catch_up_bound=60.0, config=config,
                       workdir=tmp_path, on_phase=fail_fast)
    log = (tmp_path / "pylb.log").read_text(errors="replace")
    summary = f"{report.as_dict()}\n--- pylb log (tail) ---\n{log[-3000:]}"
    assert [p.kind for p in report.phases] == list(FAULT_KINDS)

    # Not one request lost, on either route, during any fault or recovery.
    assert report.load_failures == [], summary
    assert report.baseline_http.requests > 0 and report.baseline_tcp.requests > 0
    assert report.baseline_http.errors == report.baseline_tcp.errors == 0, summary
    for p in report.phases:
        assert p.http.requests > 0 and p.tcp.requests > 0, summary
        assert (p.http.errors, p.tcp.errors, p.recovery.errors) == (0, 0, 0), summary
    assert report.probes > 0 and report.probe_errors == [], summary
    # Ready throughout: synced once stays synced.
    assert report.readyz > 0 and report.not_ready == 0, summary

    by_kind = {p.kind: p for p in report.phases}
    # The last good table served while the API could not be read: not emptied, not
    # partial, not the new one (the change made during the fault was out of reach)...
    for kind in ("down", "hang", "silent", "5xx", "429"):
        assert by_kind[kind].table_kept, (kind, summary)
    # ...except under 410, where the relist (lists still work) rightly brings it in.
    assert by_kind["410"].caught_up_during_fault or by_kind["410"].catch_up_s is not None
    # After each recovery the new table serves on both routes (generous bound: 60 s).
    for p in report.phases:
        assert p.catch_up_s is not None, (p.kind, summary)

    # Backoff, not a hot loop: counts of requests, not timings.
    for p in report.phases:
        assert p.api_rate < HOT_LOOP_RATE, (p.kind, summary)
        assert p.attempt_rate < HOT_LOOP_RATE, (p.kind, summary)
    down = by_kind["down"]
    assert down.api_requests == 0  # the listener really was closed
    assert down.failed_attempts >= 1, summary  # and the controller did retry (its log says)
    # Retry-After: 1 is honoured: at most one request per second per informer, plus the
    # reconnect when its watch was dropped.
    too_many = by_kind["429"]
    assert too_many.api_requests <= INFORMERS * (too_many.seconds + 2), summary
    assert "failures in a row" in log

    assert report.pylb_alive, summary
    assert report.log_tracebacks == 0, summary
