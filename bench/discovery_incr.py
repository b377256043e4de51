"""Micro-benchmark of the Kubernetes source alone: list, first table, one change.

    python -m bench.discovery_incr [--services 10000] [--endpoints 10] [--changes 20]

The fake API server (tests.kfake) runs in its own process with the cluster loaded; this
process runs only `KubeSource` (no data plane, no workers) and measures: the time from
start to every informer synced (the lists), to the first table published, the first
build alone, the RSS of this process once the first table is out, and for `--changes`
endpoint changes written to the API one at a time (a slice's first address moved, within
127.1/8) the time from the write to the table holding it, and the build alone; and how
late a 10 ms timer on the source's loop fires meanwhile (the loop's longest stall).
`--profile FILE` writes a cProfile of the start-up (lists and first table) to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def run(services: int, endpoints: int, changes: int, profile: Path | None,
              page_size: int | None) -> dict[str, Any]:
    from discovery.kube import KubeSource
    from pylb.config import KubeSettings, Settings
    from pylb.kubeapi import api_client_from_dict

    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    fd, kc = tempfile.mkstemp(suffix=".yaml")
    os.close(fd)
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.kfake", "--services", str(services), "--endpoints",
         str(endpoints), "--kubeconfig", kc, "--history-size", "100000"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout is not None
        info = json.loads(await asyncio.to_thread(fake.stdout.readline))
        import yaml

        with open(kc) as f:
            kubeconfig = yaml.safe_load(f)
        kube = KubeSettings() if page_size is None else KubeSettings(page_size=page_size)
        settings = Settings(namespaces=("default",), use_cluster_service=False, kube=kube)
        source = KubeSource(settings, lambda: api_client_from_dict(kubeconfig))
        tables: list[tuple[float, Any]] = []
        published = asyncio.Event()

        def publish(table: Any) -> None:
            tables.append((time.monotonic(), table))
            published.set()

        rss0 = rss_mib()
        stalls: list[tuple[float, float]] = []  # (when, how late a 10 ms timer fired)

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            while True:
                t = loop.time()
                await asyncio.sleep(0.01)
                stalls.append((time.monotonic(), loop.time() - t - 0.01))

        tick = asyncio.create_task(ticker())
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        t0 = time.monotonic()
        task = asyncio.create_task(source.run(publish))
        while not source.synced:
            await asyncio.sleep(0.005)
        t_synced = time.monotonic() - t0
        synced_at = time.monotonic()
        await asyncio.wait_for(published.wait(), 600)
        t_first = tables[0][0] - t0
        if prof:
            prof.disable()
            prof.dump_stats(str(profile))
        await asyncio.sleep(0.5)
        rss = rss_mib()
        write_to_table: list[float] = []
        builds: list[float] = []
        headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(headers=headers) as http:
            for c in range(changes):
                i = (c * 7919) % services
                name = f"svc-{i}-a"
                url = (f"{info['url']}/apis/discovery.k8s.io/v1/namespaces/default/"
                       f"endpointslices/{name}")
                async with http.get(url) as r:
                    body = await r.json()
                address = f"127.254.{c >> 8 & 255}.{c & 255}"
                body["endpoints"][0]["addresses"] = [address]
                n = len(tables)
                published.clear()
                t = time.monotonic()
                async with http.put(url, data=json.dumps(body)) as r:
                    assert r.status == 200, await r.text()
                async with asyncio.timeout(30):
                    while True:
                        await published.wait()
                        published.clear()
                        b = tables[-1][1].get_backend(f"default/svc-{i}:80")
                        if len(tables) > n and b is not None and any(
                                s.address == address for s in b.servers):
                            break
                write_to_table.append(tables[-1][0] - t)
                builds.append(source.metrics().get("last_build_seconds", float("nan")))
        for t in (task, tick):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        m = source.metrics()
        return {
            "services": services, "endpoints": services * endpoints,
            "page_size": settings.kube.page_size,
            "lists_s": round(t_synced, 3), "first_table_s": round(t_first, 3),
            "first_build_s": m.get("first_build_seconds"),
            "rss_mib": round(rss, 1), "rss_before_mib": round(rss0, 1),
            "write_to_table_p50_ms": round(statistics.median(write_to_table) * 1000, 1),
            "write_to_table_p99_ms": round(pct(write_to_table, 0.99) * 1000, 1),
            "build_p50_ms": round(statistics.median(builds) * 1000, 2),
            "build_max_ms": round(max(builds) * 1000, 2),
            "tables": len(tables), "plans": m.get("plans"),
            **{f"loop_stall_{phase}_max_ms": round(max(
                (late for when, late in stalls if lo <= when < hi), default=0.0) * 1000, 1)
               for phase, lo, hi in (("lists", 0.0, synced_at),
                                     ("first_build", synced_at, tables[0][0]),
                                     ("changes", tables[0][0], float("inf")))},
            "loop_stall_p99_ms": round(pct([late for _, late in stalls], 0.99) * 1000, 1),
        }
    finally:
        fake.terminate()
        fake.wait(10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(kc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.discovery_incr")
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--page-size", type=int, default=None)
    p.add_argument("--profile", type=Path, default=None)
    ns = p.parse_args(argv)
    import uvloop

    print(json.dumps(uvloop.run(run(ns.services, ns.endpoints, ns.changes, ns.profile,
                                    ns.page_size))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
