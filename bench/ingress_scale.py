"""CPU time of the incremental translation with and without the Ingress layer: 10,000
services with one endpoint each, then M Ingresses (one host and path each, to one service),
and the time of a build after one EndpointSlice change (best of 20, process time).

    python -m bench.ingress_scale [M]    (default 100)
"""

from __future__ import annotations

import sys
import time
from typing import Any

from discovery.incremental import Translator
from pylb.config import Settings

N = 10_000
CLASS = {"metadata": {"name": "pylb"}, "spec": {"controller": "pylb.io/ingress-controller"}}


def service(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"s{i}", "namespace": "default", "resourceVersion": "1"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def eslice(i: int, ip: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": f"s{i}-a", "namespace": "default", "resourceVersion": str(rv),
                         "labels": {"kubernetes.io/service-name": f"s{i}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [ip]}]}


def ingress(j: int) -> dict[str, Any]:
    backend = {"service": {"name": f"s{j}", "port": {"number": 80}}}
    return {"metadata": {"name": f"i{j}", "namespace": "default", "resourceVersion": "1"},
            "spec": {"ingressClassName": "pylb", "rules": [{"host": f"h{j}.test", "http": {
                "paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]}}


def main() -> None:
    m = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    for cls in (None, "pylb"):
        tr = Translator(Settings(namespaces=(), ingress_class=cls))
        for i in range(N):
            tr.set_service(("default", f"s{i}"), service(i))
            tr.set_slice(("default", f"s{i}-a"), eslice(i, "127.0.0.1", 1))
        if cls:
            tr.set_ingress_class(("", "pylb"), CLASS)
            for j in range(m):
                tr.set_ingress(("default", f"i{j}"), ingress(j))
        t = time.process_time()
        tr.build()
        first = time.process_time() - t
        best = float("inf")
        for k in range(20):
            tr.set_slice(("default", "s5000-a"), eslice(5000, f"127.0.0.{2 + k % 2}", 2 + k))
            t = time.process_time()
            tr.build()
            best = min(best, time.process_time() - t)
        print(f"--ingress-class={cls} ingresses={m if cls else 0}: first build "
              f"{first * 1000:.0f} ms, one-slice change {best * 1000:.2f} ms (CPU)")


if __name__ == "__main__":
    main()
