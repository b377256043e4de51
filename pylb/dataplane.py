"""What one worker runs: the data plane.

`DataPlane` holds the HTTP and HTTPS routers and the TCP splicer of one process over one
set of balancers, one connection limit and one set of counters. `apply(table)` makes a
new RouteTable the one new connections use, touching only what changed (pylb.delta);
`set_health*` takes the controller's active-check verdicts; `reload` (SIGHUP) rereads
certificates and the error page; `shutdown` drains. The controller (pylb.app) runs one
in-process with `--workers 1`; otherwise each worker process (pylb.workers) runs its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from proxy.balance import BACK_BY_CHECK, Balancers
from proxy.http import HttpProxy
from proxy.listener import ConnectionLimit
from proxy.tcp import TcpProxy
from pylb.config import Settings, TlsSettings
from pylb.counters import Stats
from pylb.delta import Delta, diff
from pylb.model import RouteTable, Server
from pylb.preflight import FlagError, StartupError, load_error_page

if TYPE_CHECKING:
    from proxy.http.gwplane import GatewayPlane
    from proxy.tcp.gwl4 import GatewayL4Plane
    from proxy.tls import TlsStore
    from pylb.gatewaymodel import GatewayPlan

log = logging.getLogger("pylb")

# Backends applied per turn of the loop in a big table change (~10,000 servers, ~30 ms
# on the reference machine): see DataPlane._apply_backends.
APPLY_SLICE = 1000


# proxy.tls and proxy.certs are imported where TLS is set up, not at the top: they load
# cryptography (~8 MiB and ~0.1 s of start-up a worker), which a worker without a TLS
# frontend never uses.


def make_tls_store(tls: TlsSettings, need_tls: bool,
                   self_signed_pem: bytes | None = None) -> TlsStore:
    from proxy.certs import CertificateError
    from proxy.tls import TlsStore

    try:
        return TlsStore(tls, need_tls=need_tls, self_signed_pem=self_signed_pem)
    except CertificateError as e:
        raise StartupError(str(e)) from None


def gateway_node_address(settings: Settings) -> str:
    """The address of Gateways that neither spec.addresses nor the pool place: $NODE_IP
    (the downward API's status.hostIP, deploy/gateway) when set, else --bind."""
    return os.environ.get("NODE_IP") or settings.bind


def make_self_signed(settings: Settings) -> bytes | None:
    """Without --ssl-cert, the certificate a TLS frontend falls back to: made once by the
    controller so that every worker serves the same one."""
    if settings.tls.cert:
        return None
    from proxy.certs import generate_self_signed
    from proxy.tls import self_signed_names

    return generate_self_signed(self_signed_names())


class DataPlane:
    """One worker's listeners. `apply(table)` is atomic for new connections."""

    def __init__(self, settings: Settings, *, reuse_port: bool = False,
                 tls_store: TlsStore | None = None,
                 self_signed_pem: bytes | None = None) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.stats = Stats()
        self.balancers = Balancers(settings.limits, on_eject=self._ejected,
                                   stats=self.stats)
        # --maxconn counts every frontend's connections together, as haproxy's global
        # maxconn does.
        self.limit = ConnectionLimit(settings.limits.maxconn)
        self.http = HttpProxy(settings, self.stats, self.balancers, frontend="http",
                              limit=self.limit)
        self.https: HttpProxy | None = None
        self.tls_store = tls_store
        self.self_signed_pem = self_signed_pem
        self.tcp = TcpProxy(settings, self.stats, self.balancers, host=settings.bind,
                            reuse_port=reuse_port, limit=self.limit)
        self.table = RouteTable()
        self.addresses: dict[str, tuple[str, int]] = {}
        self._tls_watch: asyncio.Task[None] | None = None
        self._https_blocked = settings.https_port in {p for _, p in settings.tcp_services}
        self.gateways: GatewayPlane | None = None  # --gateway-api: see attach_gateways
        self.gateways_l4: GatewayL4Plane | None = None  # its TLS Passthrough and TCP ones
        self._https_warned = False
        # Told the address of each server this plane ejects: the controller then asks its
        # checker for the next passing probe of it, which ends the ejection (pylb.app).
        self.on_ejection: Callable[[tuple[str, int]], None] | None = None

    def _ejected(self, backend: str, server: Server, fails: int,
                 down_for: float | None) -> None:
        """A server passively ejected (`down_for` seconds) or back (None): one log line
        each, and its stats row shows it (pylb.stats.view)."""
        sc = self.stats.server(backend, server.label)
        if down_for is None:
            sc.ejected_until = 0.0
            log.info("server %s/%s is back %s", backend, server.label,
                     "after a passing check" if fails == BACK_BY_CHECK
                     else "after its ejection")
        else:
            sc.ejected_until = time.time() + down_for
            log.warning("server %s/%s ejected for %gs: %d failed connects in a row "
                        "(error-limit; still used while too few servers are left)",
                        backend, server.label, down_for, fails)
            if self.on_ejection is not None:
                self.on_ejection(server.key)

    async def start(self) -> None:
        s = self.settings
        self.addresses["http"] = await self.http.start(s.bind, s.http_port,
                                                       reuse_port=self.reuse_port)
        if s.tls.cert:
            await self._open_https()

    async def _open_https(self) -> None:
        if self.tls_store is None:
            self.tls_store = make_tls_store(self.settings.tls, need_tls=True,
                                            self_signed_pem=self.self_signed_pem)
        self.https = HttpProxy(self.settings, self.stats, self.balancers, frontend="https",
                               tls=True, ssl_context=self.tls_store.server_context(),
                               limit=self.limit)
        self.https.set_table(self.table)
        if self.table.certs:
            self.tls_store.set_sni_certificates(self.table.certs)
        self.addresses["https"] = await self.https.start(
            self.settings.bind, self.settings.https_port, reuse_port=self.reuse_port)
        self._tls_watch = asyncio.get_running_loop().create_task(self.tls_store.watch())

    def attach_gateways(self, node_address: str) -> GatewayPlane:
        """--gateway-api: this plane's Gateway listeners (bound as its other frontends are,
        with SO_REUSEPORT in a worker), fed plans by `apply_gateway_plan`: the HTTP and
        HTTPS ones by `GatewayPlane`, TLS Passthrough and TCP by `GatewayL4Plane`."""
        from proxy.http.gwplane import GatewayPlane  # only with --gateway-api
        from proxy.tcp.gwl4 import GatewayL4Plane

        if self.gateways_l4 is None:
            self.gateways_l4 = GatewayL4Plane(self.settings, self.stats, self.balancers,
                                              self.limit, node_address=node_address,
                                              reuse_port=self.reuse_port)
        if self.gateways is None:
            self.gateways = GatewayPlane(self.settings, self.stats, self.balancers,
                                         self.limit, node_address=node_address,
                                         reuse_port=self.reuse_port,
                                         self_signed_pem=self.self_signed_pem)
            self.gateways.set_table(self.table)
        return self.gateways

    async def apply_gateway_plan(self, plan: GatewayPlan) -> frozenset[tuple[str, int]]:
        """Serve a Gateway plan (after `attach_gateways`): the (address, port) of its
        listeners that could not be bound."""
        assert self.gateways is not None and self.gateways_l4 is not None
        reserved = {self.settings.http_port, *(f.port for f in self.table.tcp)}
        if self.https is not None:
            reserved.add(self.settings.https_port)
        down = await self.gateways.apply_plan(plan, reserved)
        return down | await self.gateways_l4.apply_plan(plan, reserved)

    async def apply(self, table: RouteTable, delta: Delta | None = None) -> None:
        """Serve `table` from now on. Incremental: `delta` is the change from the table
        served so far (a worker gets it from the controller); without it, or when it is
        not from this table's version, it is worked out here (`diff`, cheap when the new
        table shares unchanged backends with the old). Only changed backends' balancers
        and counters are touched, a router only when its routes changed, the TCP
        listeners only when TCP frontends changed."""
        old = self.table
        if delta is None or delta.base != old.version:
            delta = diff(old, table)
        self.table = table
        left = await self._apply_backends(delta)
        self._prune_counters(old, delta)
        self.http.set_table(table, delta, left)
        if self.https is not None:
            self.https.set_table(table, delta, left)
            if delta.certs is not None and self.tls_store is not None:
                self.tls_store.set_sni_certificates(table.certs)  # Secrets (Ingress TLS)
        elif table.https and self._https_blocked:
            if not self._https_warned:
                self._https_warned = True
                log.error("services need the TLS frontend, but --https-port %d is a TCP "
                          "service's port", self.settings.https_port)
        elif table.https:
            try:
                await self._open_https()
            except (StartupError, OSError) as e:
                log.error("cannot open the TLS frontend on :%d: %s",
                          self.settings.https_port, e)
        await self.tcp.set_table(table, delta)
        if self.gateways is not None:
            self.gateways.set_table(table, delta, left)

    async def _apply_backends(self, delta: Delta) -> set[tuple[str, int]]:
        """The balancers brought up to `delta`; returns the server addresses no backend
        lists any more. A big change (a whole table of a big cluster: the first, or after a
        worker lagged) is taken in slices of APPLY_SLICE backends with the loop let in
        between, so that the controller's loop in `--workers 1` keeps answering /readyz
        and the stats page (10,000 backends in one go held it ~0.4 s). Routers still point
        at the old table meanwhile, and every backend's balancer changes whole, so a
        request in between is served by the old table or the new, per backend; removals
        come last, once nothing routes to them."""
        changed = delta.backends
        if len(changed) <= APPLY_SLICE:
            return self.balancers.apply(changed, delta.removed)
        left: set[tuple[str, int]] = set()
        for i in range(0, len(changed), APPLY_SLICE):
            left |= self.balancers.apply(changed[i:i + APPLY_SLICE], ())
            await asyncio.sleep(0)
        left |= self.balancers.apply((), delta.removed)
        live = self.balancers.live_keys
        return {k for k in left if k not in live}

    def _prune_counters(self, old: RouteTable, delta: Delta) -> None:
        """Counter rows follow the table: rows of servers and backends that left go (when
        their connections have closed: pylb.counters.Stats.prune)."""
        stats = self.stats
        if not stats.servers and not stats.backends:
            return
        gone: list[tuple[str, str]] = []
        back: list[tuple[str, str]] = []
        for name in delta.removed:
            ob = old.get_backend(name)
            if ob is not None:
                gone.extend((name, s.label) for s in ob.servers)
        for b in delta.backends:
            stats.keep_backend(b.name)
            ob = old.get_backend(b.name)
            labels = {s.label for s in b.servers}
            back.extend((b.name, label) for label in labels)
            if ob is not None:
                gone.extend((b.name, s.label) for s in ob.servers if s.label not in labels)
        stats.prune(gone, delta.removed, back)

    def set_health(self, key: tuple[str, int], up: bool) -> None:
        self.balancers.set_health(key, up)

    def set_health_many(self, verdicts: Iterable[tuple[tuple[str, int], bool]],
                        full: bool = False) -> None:
        """A batch of active-check verdicts; `full`: the whole map (pylb.messages.Health)."""
        if full:
            self.balancers.reset_health(dict(verdicts))
            return
        for key, up in verdicts:
            self.balancers.set_health(key, up)

    def reload(self) -> None:
        """SIGHUP: reread the certificate files and the error page. A file that cannot be
        read or checked is refused with a log line; what was loaded stays."""
        if self.tls_store is not None:
            self.tls_store.reload_if_changed()
        if self.settings.error_page:
            try:
                page = load_error_page(self.settings.error_page)
            except FlagError as e:
                log.error("SIGHUP: keeping the old error page: %s", e)
                return
            for proxy in (self.http, self.https):
                if proxy is not None:
                    proxy.error_page = page

    @property
    def connections(self) -> int:
        n = self.http.connections + self.tcp.connections
        if self.gateways_l4 is not None:
            n += self.gateways_l4.connections
        return n + (self.https.connections if self.https is not None else 0)

    async def shutdown(self, grace: float) -> None:
        if self._tls_watch is not None:
            self._tls_watch.cancel()
        parts = [self.http.shutdown(grace), self.tcp.shutdown(grace)]
        if self.https is not None:
            parts.append(self.https.shutdown(grace))
        if self.gateways is not None:
            parts.append(self.gateways.shutdown(grace))
        if self.gateways_l4 is not None:
            parts.append(self.gateways_l4.shutdown(grace))
        await asyncio.gather(*parts, return_exceptions=True)
