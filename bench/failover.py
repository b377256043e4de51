"""Failover time of `pylb elect` processes against the fake API server (not a test).

    python -m bench.failover [--ttl 10s] [--rounds 3] [--candidates 3]

Starts the fake API server and N sidecar processes, then, round after round, kills the
leader with SIGKILL (no release: the others wait out the lease) or stops it with SIGTERM
(it releases: the others take over at their next attempt), and measures the time from
the signal to the Lease naming a new holder. The killed process is restarted after each
round. Expected, with lease = ttl and retry = ttl/4 jittered up to 2.2 x:
kill -9 → about ttl .. ttl + 2.2 x ttl/4; SIGTERM → at most 2.2 x ttl/4.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from election.sidecar import parse_duration
from tests.kfake import FakeApiServer

ROOT = Path(__file__).resolve().parents[1]
NAME = "bench"


async def spawn(kubeconfig: str, ident: str, ttl: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(ROOT)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from election.sidecar import main; sys.exit(main())",
        f"--election={NAME}", f"--id={ident}", f"--ttl={ttl}", f"--kubeconfig={kubeconfig}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env, cwd=ROOT)


def holder(kube: FakeApiServer) -> str:
    obj = kube.store.get("leases", "default", NAME)
    return str(obj["spec"].get("holderIdentity", "")) if obj else ""


async def wait_holder(kube: FakeApiServer, not_in: set[str], limit: float) -> tuple[str, float]:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        h = holder(kube)
        if h and h not in not_in:
            return h, time.monotonic()
        await asyncio.sleep(0.005)
    raise TimeoutError(f"no new holder within {limit}s")


async def bench(ttl: str, rounds: int, n: int) -> dict[str, list[float]]:
    seconds = parse_duration(ttl)
    results: dict[str, list[float]] = {"SIGKILL": [], "SIGTERM": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeApiServer() as kube:
            kubeconfig = str(Path(tmp) / "kubeconfig")
            Path(kubeconfig).write_text(json.dumps(kube.kubeconfig_dict()))
            procs = {f"pod-{i}": await spawn(kubeconfig, f"pod-{i}", ttl) for i in range(n)}
            try:
                await wait_holder(kube, set(), 30 + 3 * seconds)
                for r in range(rounds):
                    for sig in (signal.SIGKILL, signal.SIGTERM):
                        leader = holder(kube)
                        # Let followers see at least one renewal first.
                        await asyncio.sleep(seconds / 2)
                        procs[leader].send_signal(sig)
                        sent = time.monotonic()
                        new, at = await wait_holder(kube, {leader}, 5 * seconds + 30)
                        results[sig.name].append(at - sent)
                        print(f"round {r + 1} {sig.name}: {leader} -> {new} "
                              f"in {at - sent:.2f}s", flush=True)
                        await procs[leader].wait()
                        procs[leader] = await spawn(kubeconfig, leader, ttl)
            finally:
                for p in procs.values():
                    if p.returncode is None:
                        p.terminate()
                for p in procs.values():
                    await p.wait()
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ttl", default="10s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=3)
    args = ap.parse_args()
    results = asyncio.run(bench(args.ttl, args.rounds, args.candidates))
    ttl = parse_duration(args.ttl)
    print(f"\nttl={args.ttl} (lease {ttl:g}s, renew {ttl / 2:g}s, retry {ttl / 4:g}s), "
          f"{args.candidates} candidates")
    for how, xs in results.items():
        print(f"{how:8s} failover: min {min(xs):.2f}s  median {statistics.median(xs):.2f}s  "
              f"max {max(xs):.2f}s  (n={len(xs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
