"""Gateway TLS (Passthrough) and TCP listeners in the data plane: the `l4_listeners` of a
`GatewayPlan`, served by the L4 splicer (proxy/tcp/proxy.py) over the data plane's own
balancers, stats and connection limit.

One `TcpProxy` per address a Gateway is bound to (its `spec.addresses`, the pool's, or the
node's — `--bind`, as for the HTTP listeners in proxy/http/gwplane.py); each of its
(address, port) is one `TcpFrontend` (`gateway_frontend`, a pure function):
- TLS Passthrough: the ClientHello's server name picks the route, among all the
  listeners on that port (exact name, then the nearest `*.` ancestor; a route without
  hostname under a listener without hostname takes any other name); a name no route
  covers is refused (reset), as the upstream TLSRoute tests expect.
- TCP: the oldest attached TCPRoute (the spec's tie-break); no route: refused.
A route's backendRefs become its backend when there is one, else a weighted choice made per
connection (proxy/tcp/choice.py); an unresolved ref's share is refused. A backendRef to
Service port `ns/svc:port` is served by the table's backend of that name, as in gwplane.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable
from typing import Any

from proxy.tcp.proxy import TcpProxy
from pylb.config import Settings
from pylb.gatewaymodel import GatewayPlan, L4Route, Listener
from pylb.model import TcpFrontend


def backend_name(service: tuple[str, str, int] | None) -> str:
    """The table's backend of a Service port ("" for an unresolved reference)."""
    if service is None:
        return ""
    ns, svc, port = service
    return f"{ns}/{svc}:{port}"


def _target(route: L4Route, choices: dict[str, tuple[tuple[str, int], ...]]) -> str:
    """The backend a route's connections go to: one Service's, or a weighted choice."""
    options: dict[str, int] = {}
    for b in route.backends:
        if b.weight > 0:
            name = backend_name(b.service)
            options[name] = options.get(name, 0) + b.weight
    if len(options) == 1:
        return next(iter(options))  # one Service (or refused): no choice to make
    if not options:
        return ""
    key = f"{route.route} {' '.join(f'{n}*{w}' for n, w in options.items())}"
    choices[key] = tuple(options.items())
    return key


def gateway_frontend(name: str, port: int, listeners: Iterable[Listener]) -> TcpFrontend:
    """The L4 frontend of the Gateway listeners sharing one (address, port)."""
    choices: dict[str, tuple[tuple[str, int], ...]] = {}
    sni: dict[str, str] = {}
    default = ""
    tls = False
    for lst in listeners:
        tls = tls or lst.protocol == "TLS"
        for route in lst.l4_routes:  # oldest first: the first for a name keeps it
            target = _target(route, choices)
            if route.hostname:
                sni.setdefault(route.hostname, target)
            elif not default:
                default = target
    return TcpFrontend(name, port, default, tuple(sni.items()) if tls else (),
                       weighted=tuple(choices.items()), gateway=True)


class GatewayL4Plane:
    """The TLS Passthrough and TCP Gateway listeners of one data plane."""

    def __init__(self, settings: Settings, stats: Any, balancers: Any,
                 limit: Any = None, node_address: str | None = None, *,
                 reuse_port: bool = False) -> None:
        self.settings = settings
        self.stats = stats
        self.balancers = balancers
        self.limit = limit
        self.reuse_port = reuse_port
        self._node_address = node_address or settings.bind
        self._port_map = dict(settings.gateway.port_map)
        self.proxies: dict[str, TcpProxy] = {}  # by the host bound
        self.unavailable: frozenset[tuple[str, int]] = frozenset()

    def bind_port(self, port: int) -> int:
        return self._port_map.get(port, port)

    def host_of(self, address: str) -> str:
        return self.settings.bind if address == self._node_address else address

    async def apply_plan(self, plan: GatewayPlan, reserved: Collection[int] = ()
                         ) -> frozenset[tuple[str, int]]:
        """Serve `plan.l4_listeners`; the (address, port) that could not be bound (retried
        with the next plan), for the listeners' status. `reserved`: ports the data plane's
        other frontends hold on `--bind` — with SO_REUSEPORT a second socket there would
        bind all the same and silently share the port's connections, so a Gateway listener
        bound there is refused instead (PortUnavailable)."""
        grouped: dict[tuple[str, int], list[Listener]] = {}
        for lst in plan.l4_listeners:
            grouped.setdefault((lst.address, lst.port), []).append(lst)
        per_host: dict[str, dict[int, tuple[str, int]]] = {}  # bound port → endpoint
        frontends: dict[str, list[TcpFrontend]] = {}
        for (address, port), lsts in grouped.items():
            host, bport = self.host_of(address), self.bind_port(port)
            per_host.setdefault(host, {})[bport] = (address, port)
            if host == self.settings.bind and bport in reserved:
                continue
            frontends.setdefault(host, []).append(
                gateway_frontend(f"gateway {address}:{port}", bport, lsts))
        unavailable: set[tuple[str, int]] = set()
        for host in set(self.proxies) | set(per_host):
            proxy = self.proxies.get(host)
            if proxy is None:
                proxy = self.proxies[host] = TcpProxy(
                    self.settings, self.stats, self.balancers, host=host,
                    reuse_port=self.reuse_port, limit=self.limit, gateway=True)
            await proxy.set_frontends(tuple(frontends.get(host, ())))
            bound = proxy.bound_ports()
            unavailable.update(ep for bport, ep in per_host.get(host, {}).items()
                               if bport not in bound)
        self.unavailable = frozenset(unavailable)
        return self.unavailable

    @property
    def connections(self) -> int:
        return sum(p.connections for p in self.proxies.values())

    async def shutdown(self, grace: float) -> None:
        await asyncio.gather(*(p.shutdown(grace) for p in self.proxies.values()),
                             return_exceptions=True)
        self.proxies.clear()


__all__ = ["GatewayL4Plane", "backend_name", "gateway_frontend"]
