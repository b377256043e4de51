"""Run the fake API server as its own process (benchmarks, manual runs).

    python -m tests.kfake --port 0 --services 10000 --endpoints 10 --kubeconfig /tmp/kc.yaml

Endpoint addresses are in 127.1.0.0 onwards (loopback, nothing listens there): a load
balancer pointed at this fake may probe them without sending a packet off the machine.
With `--namespaces N` the services are spread round-robin over namespaces ns-0 … ns-(N-1)
(names stay unique cluster-wide: svc-0, svc-1, …).

Loads the objects, writes the kubeconfig (if asked), prints one JSON line
{"url", "kubeconfig", "rv", "load_seconds"} on stdout once it serves, and runs until SIGINT or
SIGTERM. Changes go through its API like any client's (e.g. a PUT of an EndpointSlice).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import yaml

from tests.kfake.app import FakeApiServer

JsonObj = dict[str, Any]


def namespace_of(i: int, namespace: str, namespaces: int = 1) -> str:
    """Service i's namespace: `namespace` itself, or one of ns-0 … ns-(namespaces-1)."""
    return namespace if namespaces <= 1 else f"ns-{i % namespaces}"


def services(n: int, namespace: str, namespaces: int = 1) -> Iterator[JsonObj]:
    for i in range(n):
        yield {"metadata": {"name": f"svc-{i}", "namespace": namespace_of(i, namespace,
                                                                           namespaces),
                            "labels": {"app": f"svc-{i}"}},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def slices(n: int, per_service: int, namespace: str, namespaces: int = 1) -> Iterator[JsonObj]:
    for i in range(n):
        base = i * per_service
        yield {
            "metadata": {"name": f"svc-{i}-a", "namespace": namespace_of(i, namespace,
                                                                          namespaces),
                         "labels": {"kubernetes.io/service-name": f"svc-{i}",
                                    "endpointslice.kubernetes.io/managed-by": "kfake"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [_ip(base + j)], "conditions": {"ready": True}}
                          for j in range(per_service)] or None,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }


GATEWAY_CONTROLLER = "pylb.io/gateway-controller"


def gateway_objects(routes: int, n_services: int, namespace: str, namespaces: int = 1,
                    address: str = "127.0.0.1") -> dict[str, list[JsonObj]]:
    """A GatewayClass of pylb's, one Gateway ("gw", one HTTP listener on port 80 at
    `address`, routes from every namespace) and `routes` HTTPRoutes: route-i, hostname
    r-i.bench, one rule to svc-(i mod n_services):80, in that Service's namespace."""
    gw_ns = namespace_of(0, namespace, namespaces)
    gw = {"metadata": {"name": "gw", "namespace": gw_ns},
          "spec": {"gatewayClassName": "pylb",
                   "addresses": [{"type": "IPAddress", "value": address}],
                   "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                                  "allowedRoutes": {"namespaces": {"from": "All"}}}]}}
    out: dict[str, list[JsonObj]] = {
        "gatewayclasses": [{"metadata": {"name": "pylb"},
                            "spec": {"controllerName": GATEWAY_CONTROLLER}}],
        "gateways": [gw], "httproutes": []}
    for i in range(routes):
        svc = i % max(1, n_services)
        out["httproutes"].append({
            "metadata": {"name": f"route-{i}",
                         "namespace": namespace_of(svc, namespace, namespaces)},
            "spec": {"parentRefs": [{"name": "gw", "namespace": gw_ns}],
                     "hostnames": [f"r-{i}.bench"],
                     "rules": [{"backendRefs": [{"name": f"svc-{svc}", "port": 80}]}]}})
    return out


def _ip(n: int) -> str:
    """The n-th fake endpoint address: unique, in 127.1.0.0-127.254.255.255 (loopback,
    never 127.0.0.x where real test servers listen), so nothing outside this host is ever
    probed or sent traffic."""
    if not 0 <= n < 254 << 16:
        raise ValueError(f"endpoint {n}: only {254 << 16} fake addresses in 127.1/8")
    return f"127.{1 + (n >> 16)}.{n >> 8 & 255}.{n & 255}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.kfake", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--token", default="t", help="bearer token accepted and put in the kubeconfig")
    p.add_argument("--kubeconfig", help="write a kubeconfig for this server here")
    p.add_argument("--namespace", default="default")
    p.add_argument("--namespaces", type=int, default=1,
                   help="spread the services over this many namespaces ns-0, ns-1, … "
                        "(1: all in --namespace)")
    p.add_argument("--services", type=int, default=0, help="Services to load")
    p.add_argument("--endpoints", type=int, default=0,
                   help="endpoints per service, in one EndpointSlice each")
    p.add_argument("--httproutes", type=int, default=0,
                   help="also load a GatewayClass of pylb's, one Gateway (HTTP, port 80, at "
                        "127.0.0.1) and this many HTTPRoutes, each to one of the Services")
    p.add_argument("--bookmark-interval", type=float, default=60.0)
    p.add_argument("--history-size", type=int, default=10_000)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    api = FakeApiServer(tls=args.tls, host=args.host, port=args.port,
                        bookmark_interval=args.bookmark_interval,
                        history_size=args.history_size, tokens={args.token})
    t0 = time.perf_counter()
    api.store.load("services", services(args.services, args.namespace, args.namespaces))
    if args.endpoints:
        api.store.load("endpointslices", slices(args.services, args.endpoints, args.namespace,
                                                  args.namespaces))
    if args.httproutes:
        for plural, objs in gateway_objects(args.httproutes, args.services, args.namespace,
                                            args.namespaces).items():
            api.store.load(plural, objs)
    loaded = time.perf_counter() - t0
    await api.start()
    try:
        if args.kubeconfig:
            with open(args.kubeconfig, "w") as f:
                yaml.safe_dump(api.kubeconfig_dict(args.token, args.namespace), f)
        print(json.dumps({"url": api.url, "kubeconfig": args.kubeconfig, "rv": api.store.rv,
                          "load_seconds": round(loaded, 3)}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await api.stop()
        if args.kubeconfig and os.path.exists(args.kubeconfig):
            os.unlink(args.kubeconfig)


def main(argv: list[str] | None = None) -> int:
    import uvloop

    uvloop.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
