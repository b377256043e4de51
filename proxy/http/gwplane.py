"""Gateway listeners in the data plane: one `HttpProxy` per (address, port) a
`GatewayPlan` binds, routing with `GatewayRouter` instead of the Service router.

They share the data plane's balancers, stats and connection limit with its other
frontends: a backendRef to Service port `ns/svc:port` is served by the table's backend of
that name (the same servers, health checks and counters as the Service's own route). A
listener that cannot be bound (address not on this node, port taken, or a port pylb's own
frontends hold on `--bind`: never shared) is logged once per plan and left out.

An (address, port) with HTTPS listeners terminates TLS there: one `TlsStore` per endpoint
(proxy.tls: the TLS frontend's versions, ciphers and session-ticket setting), serving each
listener's certificate (from its certificateRefs' Secret) for the listener's hostname by
SNI, and a listener without hostname's for any other name. A handshake no listener's certificate
covers gets the self-signed fallback certificate (its request is then answered 404, as no
listener matches its host). A changed Secret is served from the next handshake on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from proxy.http.gwrouting import GatewayRouter, apply_header_ops
from pylb.config import Settings
from pylb.failures import Failure
from pylb.gatewaymodel import GatewayPlan, HeaderOps
from pylb.model import HttpRoute, RouteTable

if TYPE_CHECKING:
    from proxy.http.parser import RequestHead
    from proxy.http.proxy import HttpProxy
    from proxy.http.server import ClientProtocol
    from proxy.tls import TlsStore

log = logging.getLogger("pylb.gateway")


class GatewayDispatch:
    """`HttpProxy.gateway` of a Gateway listener: called by `ClientProtocol.on_head` (and
    `H2Stream.start`) with the request head; answers 404/500/redirects itself (returning
    None), else gives the connection (stream) the route's response filters as
    `response_edit` (proxy.http.gwfilters) and returns the (route, target) to forward, as
    `Router.route` does, with the head to forward: a copy with the request filters
    applied, or the head itself (heads are shared: parser._READS; never changed)."""

    __slots__ = ("_routes", "router")

    def __init__(self, router: GatewayRouter) -> None:
        self.router = router
        self._routes: dict[tuple[str, str, int], HttpRoute] = {}

    def route(self, client: ClientProtocol, head: RequestHead, host: bytes, path: bytes,
              query: bytes) -> tuple[HttpRoute, bytes, RequestHead] | None:
        d = self.router.route(host, head.method, path, query, head.headers)
        if d.status:
            if d.location is not None:
                client._redirect(d.location, d.status)
            else:
                client._local(d.status, None,
                              Failure.NO_ROUTE if d.status == 404 else Failure.NO_SERVER)
            return None
        ops = d.request_headers
        if d.host is not None:
            ops += (HeaderOps(set=(("Host", d.host.decode("latin-1")),)),)
        if ops:
            head = head.replaced(apply_header_ops(list(head.headers), ops))
        client.response_edit = d.response
        assert d.backend is not None
        route = self._routes.get(d.backend)
        if route is None:  # once per backend: the table's name of that Service port
            ns, svc, port = d.backend
            name = f"{ns}/{svc}:{port}"
            route = self._routes[d.backend] = HttpRoute(name, "/", name, strip_prefix=False)
        return route, d.target, head


class GatewayPlane:
    """The Gateway listeners of one data plane."""

    def __init__(self, settings: Settings, stats: Any, balancers: Any,
                 limit: Any = None, node_address: str | None = None, *,
                 reuse_port: bool = False, self_signed_pem: bytes | None = None) -> None:
        """`node_address`: the address Gateways get when neither spec.addresses nor the
        pool gives one; their listeners bind `--bind` (it is the node's, seen from
        outside a pod). `reuse_port`: bound with SO_REUSEPORT, as a worker binds its
        other frontends (every worker serves every Gateway listener)."""
        self.reuse_port = reuse_port
        self.self_signed_pem = self_signed_pem  # made on first need when None
        self.tls: dict[tuple[str, int], TlsStore] = {}  # the endpoints that terminate TLS
        self.settings = settings
        self.stats = stats
        self.balancers = balancers
        self.limit = limit
        self.proxies: dict[tuple[str, int], HttpProxy] = {}
        self.bound: dict[tuple[str, int], tuple[str, int]] = {}  # listener → bound address
        self.table = RouteTable()
        self.plan = GatewayPlan()
        self._port_map = dict(settings.gateway.port_map)
        self._node_address = node_address or settings.bind
        self._closing: set[asyncio.Task[None]] = set()
        self.unavailable: frozenset[tuple[str, int]] = frozenset()

    def bind_port(self, port: int) -> int:
        return self._port_map.get(port, port)

    def host_of(self, address: str) -> str:
        return self.settings.bind if address == self._node_address else address

    async def apply_plan(self, plan: GatewayPlan, reserved: Collection[int] = ()
                         ) -> frozenset[tuple[str, int]]:
        """Serve `plan`; the (address, port) that could not be bound (retried with the
        next plan), for the listeners' status. `reserved`: ports the data plane's other
        frontends hold on `--bind` — with SO_REUSEPORT (workers) a second socket there
        would bind all the same and silently share the port's connections with the
        `--http-port`/`--https-port` frontend, so a listener there is refused instead
        (PortUnavailable), as proxy.tcp.gwl4 refuses its own."""
        from proxy.http.proxy import HttpProxy

        self.plan = plan
        wanted = plan.by_endpoint()
        refused = {key for key in wanted if self.host_of(key[0]) == self.settings.bind
                   and self.bind_port(key[1]) in reserved}
        unavailable: set[tuple[str, int]] = set()
        def https(lsts: tuple[Any, ...]) -> bool:
            return any(lst.protocol == "HTTPS" for lst in lsts)

        for key in [k for k in self.proxies if k not in wanted or k in refused
                    or https(wanted[k]) != (k in self.tls)]:
            gone = self.proxies.pop(key)
            self.bound.pop(key, None)
            self.tls.pop(key, None)
            # open exchanges finish in the background; the port is closed at once
            task = asyncio.get_running_loop().create_task(
                gone.shutdown(self.settings.grace_period))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        for key, listeners in wanted.items():
            if key in refused:
                if key not in self.unavailable:
                    log.error("gateway listener %s:%d (bound at :%d): the port of one of "
                              "pylb's own frontends on %s; not shared", *key,
                              self.bind_port(key[1]), self.settings.bind)
                unavailable.add(key)
                continue
            proxy = self.proxies.get(key)
            store = self.tls.get(key)
            if https(listeners):
                if store is None:
                    store = self._tls_store()
                store.set_sni_certificates(tuple(
                    c for lst in listeners for c in lst.certificates))
            if proxy is None:
                address, port = key
                proxy = HttpProxy(self.settings, self.stats, self.balancers,
                                  frontend=f"gateway {address}:{port}", limit=self.limit,
                                  tls=store is not None,
                                  ssl_context=store.server_context() if store else None)
                # no Strict-Transport-Security of --hsts: a Gateway's responses carry
                # what its routes say (ResponseHeaderModifier), nothing unasked
                proxy.hsts = None
                proxy.set_table(self.table)
                try:
                    self.bound[key] = await proxy.start(self.host_of(address),
                                                        self.bind_port(port),
                                                        reuse_port=self.reuse_port)
                except OSError as e:
                    if key not in self.unavailable:
                        log.error("gateway listener %s:%d (bound at :%d): %s", address, port,
                                  self.bind_port(port), e.strerror or e)
                    unavailable.add(key)
                    continue
                self.proxies[key] = proxy
                if store is not None:
                    self.tls[key] = store
            # the router made from the one before: only what changed is compiled again
            had = proxy.gateway
            proxy.gateway = GatewayDispatch(had.router.updated(listeners)
                                            if isinstance(had, GatewayDispatch)
                                            else GatewayRouter(listeners))
        self.unavailable = frozenset(unavailable)
        return self.unavailable

    def _tls_store(self) -> TlsStore:
        # imported here, as in pylb.dataplane: cryptography only where TLS is set up
        from proxy.certs import generate_self_signed
        from proxy.tls import TlsStore, self_signed_names

        if self.self_signed_pem is None:
            self.self_signed_pem = generate_self_signed(self_signed_names())
        # the certificates are the Secrets'; no client certificates (--ssl-ca-cert is the
        # TLS frontend's: a Gateway asks for them with frontendValidation, not served)
        return TlsStore(dataclasses.replace(self.settings.tls, cert=None,
                                                    ca_cert=None), need_tls=True,
                        self_signed_pem=self.self_signed_pem)

    def set_table(self, table: RouteTable, delta: Any = None,
                  left: Collection[Any] = ()) -> None:
        self.table = table
        for proxy in self.proxies.values():
            proxy.set_table(table, delta, left)

    async def shutdown(self, grace: float) -> None:
        await asyncio.gather(*(p.shutdown(grace) for p in self.proxies.values()),
                             *self._closing, return_exceptions=True)
        self.proxies.clear()
