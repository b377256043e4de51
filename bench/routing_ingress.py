"""CPU time of one `Router.route` call: a legacy-only table (the 2015 routes: what every
existing user has) and a table with Ingress routes (exact host, wildcard, no host).

    python -m bench.routing_ingress [--calls 300000] [--against FILE]

`--against` loads another routing.py (e.g. `git show main:proxy/http/routing.py >
/tmp/old.py`) and times its Router on the legacy table too, to show what the Ingress
matching costs the requests that do not use it. Best of 5 runs of process time (the CPU
this process used), so a busy machine blurs it less than wall time; still, compare runs
made together.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any

from proxy.http import routing
from pylb.model import HttpRoute, PathMatch

LEGACY = (*(HttpRoute(f"s{i}", f"/s{i}", "b") for i in range(20)),
          HttpRoute("h", "/h", "b", "h.test"))
INGRESS = LEGACY + tuple(
    HttpRoute("i", p, "b", h, strip_prefix=False, match=PathMatch.PREFIX)
    for h in ("a.test", "*.w.test", None) for p in ("/", "/api", "/api/v1"))


def ns_per_call(router: Any, host: bytes, path: bytes, calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for _ in range(calls):
            router.route(host, path, b"")
        best = min(best, time.process_time() - t)
    return best / calls * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300_000)
    ap.add_argument("--against", default=None, help="another routing.py to compare")
    args = ap.parse_args()
    other = None
    if args.against:
        spec = importlib.util.spec_from_file_location("routing_other", args.against)
        assert spec is not None and spec.loader is not None
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
    for host, path in ((b"x", b"/s0/a"), (b"x", b"/s10/a"), (b"h.test", b"/zzz")):
        line = f"legacy  {host.decode():9} {path.decode():10} " \
               f"{ns_per_call(routing.Router(LEGACY), host, path, args.calls):7.0f} ns"
        if other is not None:
            line += f"   other: {ns_per_call(other.Router(LEGACY), host, path, args.calls):.0f} ns"
        print(line)
    for host, path in ((b"a.test", b"/api/v1/x"), (b"q.w.test", b"/x"), (b"x", b"/s10/a")):
        print(f"ingress {host.decode():9} {path.decode():10} "
              f"{ns_per_call(routing.Router(INGRESS), host, path, args.calls):7.0f} ns")


if __name__ == "__main__":
    main()
