"""Control-plane benchmark: a big cluster in the fake API server, pylb's Kubernetes source
and data plane in this process.

    python -m bench.controlplane [--services 10000] [--endpoints 10] [--changes 20]

Measures the time from start to the first route table, the process's RSS with the whole
cluster held, and — the figure a user feels — the time from an endpoint change written to
the API to live traffic reaching the new endpoint: a `probe` service moves between two
real backends on loopback while a client polls it through pylb's HTTP frontend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pylb.config import Settings
from pylb.demo import service_manifest, slice_manifest, start_name_server


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _probe(port: int) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(b"GET /probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()


async def run(services: int, endpoints: int, changes: int) -> dict[str, Any]:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    from discovery.kube import KubeSource
    from discovery.kubeclient import api_client_from_dict
    from pylb.app import DataPlane
    from tests.conftest import free_port
    from tests.kfake import FakeApiServer

    one, two = await start_name_server("one"), await start_name_server("two")
    ports = [s.sockets[0].getsockname()[1] for s in (one, two)]
    async with FakeApiServer(history_size=100_000) as api:
        api.store.load("services", (service_manifest(f"svc-{i}", 80, 8080)
                                    for i in range(services)))
        api.store.load("endpointslices", (
            slice_manifest(f"svc-{i}-a", f"svc-{i}", 8080,
                   [f"10.{(i >> 8) & 255}.{i & 255}.{j}" for j in range(endpoints)])
            for i in range(services)))
        api.store.create("services", service_manifest("probe", 80, 8080))
        api.store.create("endpointslices",
                         slice_manifest("probe-a", "probe", ports[0], ["127.0.0.1"]))
        settings = Settings(bind="127.0.0.1", http_port=free_port(), namespaces=("default",),
                            workers=1)
        plane = DataPlane(settings)
        await plane.start()
        first = asyncio.get_running_loop().create_future()
        tables: asyncio.Queue[Any] = asyncio.Queue()

        def publish(table: Any) -> None:
            tables.put_nowait(table)
            if not first.done():
                first.set_result(time.monotonic())

        async def apply_loop() -> None:
            while True:
                await plane.apply(await tables.get())

        kubeconfig = api.kubeconfig_dict()
        source = KubeSource(settings, lambda: api_client_from_dict(kubeconfig))
        rss0 = rss_mib()
        t0 = time.monotonic()
        tasks = [asyncio.create_task(source.run(publish)), asyncio.create_task(apply_loop())]
        try:
            t_first = await asyncio.wait_for(first, 600) - t0
            while b"one" not in await _probe(settings.http_port):
                await asyncio.sleep(0.01)
            rss = rss_mib()
            latencies: list[float] = []
            for c in range(changes):
                target = ports[(c + 1) % 2]
                name = b"two" if target == ports[1] else b"one"
                t = time.monotonic()
                api.store.put("endpointslices", slice_manifest("probe-a", "probe", target,
                                                                ["127.0.0.1"]))
                while name not in await _probe(settings.http_port):
                    await asyncio.sleep(0.002)
                latencies.append(time.monotonic() - t)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await plane.shutdown(0)
            for s in (one, two):
                s.close()
    latencies.sort()
    return {
        "services": services, "endpoints_per_service": endpoints,
        "endpoints": services * endpoints, "changes": changes,
        "first_table_s": round(t_first, 3),
        "rss_mib": round(rss, 1), "rss_before_sync_mib": round(rss0, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "change_to_traffic_p50_s": round(statistics.median(latencies), 3),
        "change_to_traffic_p99_s": round(latencies[min(len(latencies) - 1,
                                                       int(len(latencies) * 0.99))], 3),
        "change_to_traffic_max_s": round(latencies[-1], 3),
        "note": "fake API server, pylb's source and data plane in one process (RSS includes "
                "the fake's copy of the cluster)",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.controlplane")
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args(argv)
    import uvloop

    result = uvloop.run(run(ns.services, ns.endpoints, ns.changes))
    text = json.dumps(result, indent=1)
    print(text)
    if ns.json:
        ns.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
