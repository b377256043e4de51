"""The health checker's memory per server, once every server has been probed.

    python -m bench.check_memory [--servers 100000]

In-process and deterministic (no sockets, no timing): a HealthChecker over N servers
(10 per backend, as the fake cluster of bench.controlplane), every server probed once
with a refused connect (the controlplane benchmark's endpoints do not listen, so every
server ends DOWN with its own result), probes driven through the checker's own
`_run_probe` by a fake probe. Prints tracemalloc's figure for what the checker keeps
(index, schedule, results) after the table and after the probes, in MiB and B/server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time
import tracemalloc

from proxy.check import L4CON, HealthChecker, Key, Probe
from pylb.config import Settings
from pylb.model import Backend, RouteTable, Server


def _table(n: int) -> RouteTable:
    servers = tuple(Server(f"127.{1 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 8080)
                    for i in range(n))
    return RouteTable(backends=tuple(
        Backend(f"ns/svc{j:05d}:http", servers[j * 10:(j + 1) * 10])
        for j in range((n + 9) // 10)))


async def _probe(key: Key, path: str | None, timeout: float) -> Probe:
    return Probe(L4CON, duration_ms=round(0.05 + (key[1] % 7) / 1000, 3),
                 detail=sys.intern("Connection refused"))


async def _main(n: int) -> None:
    logging.disable(logging.CRITICAL)
    table = _table(n)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    checker = HealthChecker(Settings(), lambda *a: None, probe=_probe, nofile=None)
    checker.set_table(table)
    gc.collect()
    after_table = tracemalloc.get_traced_memory()[0] - base
    schedule = checker._schedule
    schedule.cap, schedule.rate = n + 1, 1e12
    now = time.monotonic() + 1e6
    for key, target in schedule.take(now):
        await checker._run_probe(key, target, now)
    gc.collect()
    after_probes = tracemalloc.get_traced_memory()[0] - base
    mib = 1024 * 1024
    print(f"{n} servers: after the table {after_table / mib:.1f} MiB "
          f"({after_table / n:.0f} B/server); all probed once (DOWN) "
          f"{after_probes / mib:.1f} MiB ({after_probes / n:.0f} B/server)")
    assert len(checker.results()) == n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, default=100_000)
    args = p.parse_args()
    asyncio.run(_main(args.servers))


if __name__ == "__main__":
    main()
