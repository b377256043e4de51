"""The Gateway controller's discovery loop: watches the Gateway API kinds (and the Services
and Namespaces routes refer to) through the same `Informer` as the Service source,
translates them on every change (`discovery.gateway.incremental`: what the change touches,
the rest reused), publishes the plan to the data plane, and — on the leader only — writes
the plan's status back. EndpointSlices are not watched here: an endpoint change reaches the
Gateway listeners' backends through the Service source's table, never through a plan.

Status writes are merge patches of `…/status`, made only when what pylb would write
differs from what the object carries (conditions compared without lastTransitionTime, which
is kept from the object while a condition's status and reason stay). A route's (HTTPRoute,
TLSRoute, TCPRoute) `status.parents` entries of other controllers are kept as they are.

Work per change, not per cluster: each plan turn hands the translator the informers' change
sets (`Informer.take_changes()`), and each status pass looks only at the objects that may
need a write — those whose informer entry changed, and those whose planned status the
translator made again (`GatewayTranslator.take_status_changes()`), both gathered per plan in
`_status_todo` — so a route change, and its status write coming back as a watch event, cost
the controller what that one route costs. A full pass (every object of every kind) is the
safety net: a new leader's first pass, the pass after a translator that failed and started
afresh, and one turn every RESYNC seconds (the wake-up after RESYNC seconds without a
change, or the first turn RESYNC seconds after the last full one under steady churn), whose
build is given no change sets either: every store compared by identity and route_key. A
write that failed is looked at again on the next pass, as is every object the failed pass
had not reached.

A cluster without the TLSRoute/TCPRoute CRDs (OPTIONAL) is served all the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient

from discovery.gateway.incremental import GatewayTranslator
from discovery.gateway.incremental import inputs_from as inputs_from
from discovery.gateway.nodes import ReadyNodes
from discovery.gateway.secrets import valid_tls_secret
from discovery.gateway.translate import GatewaySettings
from discovery.informer import SERVICES, TLS_SECRETS, Informer, Kind, custom_kind
from discovery.secrets import by_ident
from pylb import collector
from pylb import kubeapi as kapi
from pylb.config import Settings
from pylb.gatewaymodel import GatewayPlan, JsonObj
from pylb.kubeapi import client_for
from pylb.nodes import pod_namespace

log = logging.getLogger("pylb.gateway")

NAMESPACES = Kind("namespaces", "core", "list_namespace", "list_namespace")
# (the group spelled out: tests/deploy reads these calls to check the RBAC rules)
KINDS = {
    "gatewayclasses": custom_kind("gateway.networking.k8s.io", "v1", "gatewayclasses",
                                  namespaced=False),
    "gateways": custom_kind("gateway.networking.k8s.io", "v1", "gateways"),
    "httproutes": custom_kind("gateway.networking.k8s.io", "v1", "httproutes"),
    "tlsroutes": custom_kind("gateway.networking.k8s.io", "v1", "tlsroutes"),
    "tcproutes": custom_kind("gateway.networking.k8s.io", "v1", "tcproutes"),
    "referencegrants": custom_kind("gateway.networking.k8s.io", "v1", "referencegrants"),
    "services": SERVICES,
    "namespaces": NAMESPACES,
}
STATUS_PATH = {
    "gatewayclasses": "/apis/gateway.networking.k8s.io/v1/gatewayclasses/{name}/status",
    "gateways":
        "/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/gateways/{name}/status",
    "httproutes":
        "/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/httproutes/{name}/status",
    "tlsroutes":
        "/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/tlsroutes/{name}/status",
    "tcproutes":
        "/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/tcproutes/{name}/status",
}
ROUTES = ("httproutes", "tlsroutes", "tcproutes")  # status.parents, shared with others
STATUS_KINDS = ("gatewayclasses", "gateways", *ROUTES)  # in the order a pass writes them
# By plural, the keys a status pass looks at (None: every object of that kind)
StatusTodo = dict[str, set[tuple[str, str]] | None]
# Kinds a cluster may not serve (their CRDs are installed apart from the standard ones): a
# list answered 404 counts as synced and empty, so that Gateways and HTTPRoutes are served
# meanwhile; the informer keeps listing, and the kind joins when its CRD does.
OPTIONAL = frozenset({"tlsroutes", "tcproutes"})
# Coalescing (`_loop`): a change that finds the loop idle is built at once, after one turn
# of the event loop (the events already read join it). A change that came while a plan was
# being built and published is part of a burst: the next plan waits as long as that turn
# took, at most DEBOUNCE, so that a burst against a large plan (5,000 routes created at once)
# spends at most about half its time building and publishing, in few plans. The fixed
# 50 ms wait before every plan that this replaces was most of a route change's latency.
DEBOUNCE = 0.05  # seconds: the longest a plan waits for more events to join it
# Seconds between status passes without a change (a write that failed), and at most
# between two full turns (see the module's docstring): at 10,000 routes a full turn costs
# the controller ~12 ms CPU (bench.gateway_translate --turns), ~0.1 % of a core
RESYNC = 10.0
# After this many watch events since the last time, the plan loop settles the heap
# (collector.settle: gc.freeze, malloc_trim) once no event has come for SETTLE_QUIET s.
# Objects that arrive one event at a time are never frozen by the informer (only big
# lists are): the leader's first status pass alone brings every route back as a MODIFIED
# event, and with the translator's per-route state that is, at 10,000 routes, ~300,000
# objects each full collection walks again — measured: gen-2 collections of 130-170 ms in
# the controller every few changes, holding route changes back as long.
SETTLE_CHURN = 1_000
SETTLE_QUIET = 1.0

# publish(plan) may return (or resolve to) the (address, port) the data plane could not
# bind: the next plan's status says so (PortUnavailable), and binding is retried with it
Publish = Callable[[GatewayPlan], Awaitable[Any] | Any]
ApiClientFactory = Callable[[], Awaitable[ApiClient]]


def _all() -> StatusTodo:
    return dict.fromkeys(STATUS_KINDS)


def _merge(into: StatusTodo, more: StatusTodo) -> None:
    """`more`'s keys joined to `into`'s (None, all, wins)."""
    for plural, keys in more.items():
        have = into.get(plural, set())
        if have is None:
            continue
        if keys is None:
            into[plural] = None
        else:
            have.update(keys)
            into[plural] = have


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _settle(old: list[Any], new: list[JsonObj]) -> list[JsonObj]:
    """`new` conditions keeping `old`'s lastTransitionTime where type and status agree."""
    before = {c.get("type"): c for c in old if isinstance(c, dict)}
    out = []
    for c in new:
        prev = before.get(c["type"])
        if prev is not None and prev.get("status") == c["status"] and \
                prev.get("lastTransitionTime"):
            c = {**c, "lastTransitionTime": prev["lastTransitionTime"]}
        out.append(c)
    return out


def settled_status(plural: str, current: JsonObj, planned: JsonObj | None,
                   controller: str) -> JsonObj | None:
    """The status to write over `current` (the object's), or None when nothing changes.
    `planned` None: pylb has nothing to say of this object any more (only routes: their
    parents entries of pylb are dropped)."""
    if plural in ROUTES:
        parents = [p for p in current.get("parents") or []
                   if isinstance(p, dict) and p.get("controllerName") != controller]
        old_mine = {repr(sorted(p.get("parentRef", {}).items())): p
                    for p in current.get("parents") or []
                    if isinstance(p, dict) and p.get("controllerName") == controller}
        if planned is None and not old_mine:
            return None  # not ours, and never was
        for p in (planned or {}).get("parents", []):
            prev = old_mine.get(repr(sorted(p["parentRef"].items())), {})
            parents.append({**p, "conditions": _settle(prev.get("conditions") or [],
                                                       p["conditions"])})
        want: JsonObj = {**current, "parents": parents}
    else:
        if planned is None:
            return None
        want = dict(planned)
        want["conditions"] = _settle(current.get("conditions") or [], planned["conditions"])
        if "listeners" in planned:
            prev_l = {lst.get("name"): lst for lst in current.get("listeners") or []
                      if isinstance(lst, dict)}
            want["listeners"] = [
                {**lst, "conditions": _settle(
                    (prev_l.get(lst["name"]) or {}).get("conditions") or [],
                    lst["conditions"])} for lst in planned["listeners"]]
    return None if want == current else want


class GatewaySource:
    """Publishes a `GatewayPlan` for the cluster's Gateway API objects, and a new one on each
    change; writes status when `is_leader()` says so."""

    def __init__(self, settings: Settings, api_client_factory: ApiClientFactory | None = None,
                 *, is_leader: Callable[[], bool] = lambda: True,
                 node_address: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.settings = settings
        gw = settings.gateway
        self.gw_settings = GatewaySettings(
            controller_name=gw.controller_name, address_pool=gw.address_pool,
            node_address=node_address or settings.bind, l4=True)
        self._factory = api_client_factory or (lambda: client_for(settings))
        self._is_leader = is_leader
        # the leader's: status.addresses of Gateways on the node's address
        self.nodes = ReadyNodes(pod_namespace(settings.election_namespace))
        self._informers: dict[str, Informer] = {}
        self._secrets: list[Informer] = []  # TLS Secrets, per watched namespace
        self._dirty = asyncio.Event()
        self.plan: GatewayPlan | None = None
        self._status_plan: GatewayPlan | None = None  # the newest, for _status_loop
        self._status_due = asyncio.Event()
        self.translator = GatewayTranslator()
        self._tls_ok: dict[tuple[str, str], tuple[JsonObj, bool]] = {}  # valid_tls_secret
        self.plans_built = 0  # turns of the plan loop that built a plan
        self.plans_published = 0  # … and sent it to the data plane
        self._clock = clock
        self._sleep = sleep
        self._turn = 0.0  # seconds the last plan took to build and publish
        # by plural, (ns, name) → (object, planned status) found settled by a pass
        self._settled: dict[str, dict[tuple[str, str], tuple[JsonObj, JsonObj | None]]] = {
            p: {} for p in STATUS_KINDS}
        # what the status pass must look at: gathered by build() for the plan it made
        # (_built_todo), handed over with that plan (_status_todo); full at first
        self._built_todo: StatusTodo = _all()
        self._status_todo: StatusTodo = _all()
        self._full_at = clock()  # when the last full turn began
        self._compare_all = False  # this turn's build: no change sets
        self.status_looked = 0  # objects the status passes looked at (tests, bench)
        self.status_writes = 0
        self.status_errors = 0
        self.last_latency: float | None = None
        self._dirty_since: float | None = None
        self.unavailable: frozenset[tuple[str, int]] = frozenset()
        self._churn = 0  # watch events since the heap was last settled
        self.settles = 0

    @property
    def synced(self) -> bool:
        return bool(self._informers) and all(
            i.synced or (i.absent and plural in OPTIONAL)
            for plural, i in (*self._informers.items(), *(("", i) for i in self._secrets)))

    def _changed(self) -> None:
        self._churn += 1
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self._dirty.set()

    async def run(self, publish: Publish) -> None:
        client = await self._factory()
        try:
            self._informers = {
                plural: Informer(client, kind, None, self.settings.kube, self._changed)
                for plural, kind in KINDS.items()}
            # HTTPS listeners' certificates: kubernetes.io/tls Secrets, listed with that
            # field selector in the namespaces pylb watches (--namespace; all when empty),
            # as for Ingress TLS: RBAC can then grant them per namespace (a Role), and a
            # certificateRef elsewhere is InvalidCertificateRef, "Secret not found"
            namespaces = tuple(dict.fromkeys(self.settings.namespaces)) or (None,)
            self._secrets = [Informer(client, TLS_SECRETS, ns, self.settings.kube,
                                      self._changed) for ns in namespaces]
            async with asyncio.TaskGroup() as tg:
                for plural, informer in self._informers.items():
                    tg.create_task(informer.run(), name=f"gateway informer {plural}")
                for informer in self._secrets:
                    tg.create_task(informer.run(), name="gateway informer secrets")
                tg.create_task(self._status_loop(client), name="gateway status")
                tg.create_task(self._nodes_loop(client), name="gateway nodes")
                await self._loop(client, publish)
        finally:
            await client.close()

    def build(self) -> GatewayPlan:
        """The plan of the informers' objects: incremental (GatewayTranslator), the last
        plan itself when nothing translate reads changed (a route's status or
        resourceVersion, e.g. the leader's own status writes coming back)."""
        objects = {p: i.objects for p, i in self._informers.items()}
        changes = {p: i.take_changes() for p, i in self._informers.items()}
        if self._compare_all:  # (taken all the same: they are covered)
            changes = dict.fromkeys(changes)
        secrets = by_ident(obj for i in self._secrets for obj in i.objects.values())
        if len(self._tls_ok) > len(secrets):  # Secrets deleted: forget them
            self._tls_ok = {k: v for k, v in self._tls_ok.items() if k in secrets}
        settings = dataclasses.replace(self.gw_settings, now=_now(),
                                       node_addresses=self.nodes.addresses)
        valid = frozenset(k for k, obj in secrets.items() if self._valid_tls(k, obj))
        try:
            plan = self.translator.build(objects, settings=settings, changes=changes,
                                         secrets=valid, secret_objects=secrets,
                                         unavailable=self.unavailable)
        except Exception:  # a bug in what it keeps must not end the source: start afresh
            log.exception("gateway: the incremental translation failed; translating "
                          "everything again")
            self.translator = GatewayTranslator()  # (its status changes: all)
            plan = self.translator.build(objects, settings=settings, secrets=valid,
                                         secret_objects=secrets, unavailable=self.unavailable)
        todo: StatusTodo = {p: changes.get(p) for p in STATUS_KINDS}
        remade = self.translator.take_status_changes()
        if remade is None:
            todo = _all()
        else:
            for plural, ns, name in remade:
                keys = todo.get(plural)
                if keys is not None:
                    keys.add((ns, name))
        _merge(self._built_todo, todo)
        return plan

    def _valid_tls(self, key: tuple[str, str], obj: JsonObj) -> bool:
        """valid_tls_secret (which parses the certificate and the key) once per object."""
        known = self._tls_ok.get(key)
        if known is None or known[0] is not obj:
            known = self._tls_ok[key] = (obj, valid_tls_secret(obj))
        return known[1]

    async def _loop(self, client: ApiClient, publish: Publish) -> None:
        while True:
            burst = self._dirty.is_set()  # events came while the last plan was made
            settle = self._churn >= SETTLE_CHURN
            resync = False
            try:
                async with asyncio.timeout(SETTLE_QUIET if settle else RESYNC):
                    await self._dirty.wait()
            except TimeoutError:
                if settle:  # quiet after many events: see SETTLE_CHURN
                    self._churn = 0
                    collector.settle()
                    self.settles += 1
                    continue
                resync = True  # a full turn
            await asyncio.sleep(0)  # the events already read join this plan
            if burst and self._turn > 0:
                await self._sleep(min(DEBOUNCE, self._turn))
            self._dirty.clear()
            started, self._dirty_since = self._dirty_since, None
            if not self.synced:
                continue
            turn = self._clock()
            if self._is_leader() and not self.nodes.tried:
                # the first plan's Gateway status with the nodes already (no status write
                # to take back); later lists are _nodes_loop's, off the plan's way
                await self.nodes.refresh(client)
            full = resync or turn - self._full_at >= RESYNC
            if full:
                self._full_at = turn
            self._compare_all = full
            t = time.process_time()
            plan = self.build()
            self.plans_built += 1
            log.debug("gateway: plan built in %.1f ms (CPU)", (time.process_time() - t) * 1e3)
            # an address:port that could not be bound is retried at every turn (every
            # RESYNC seconds at the latest), so the plan goes out again while one is down
            if plan != self.plan or self.unavailable:
                if plan != self.plan:
                    for line in plan.skipped:
                        log.info("gateway: %s", line)
                self.plan = plan
                result = publish(plan)
                if isinstance(result, Awaitable):
                    result = await result
                if isinstance(result, frozenset) and result != self.unavailable:
                    self.unavailable = result
                    self._dirty.set()  # a plan whose status says which ports are down
                if started is not None:
                    self.last_latency = time.monotonic() - started
                self.plans_published += 1
                log.debug("gateway: plan published, %.1f ms from build to the workers' "
                          "answer", (self._clock() - turn) * 1e3)
            self._turn = self._clock() - turn
            self._status_plan = plan  # (its status may differ where its listeners do not)
            built, self._built_todo = self._built_todo, {}
            _merge(self._status_todo, _all() if full else built)
            self._status_due.set()

    async def _nodes_loop(self, client: ApiClient) -> None:
        """The leader's list of the ready pylb nodes (Gateway status only), every
        `nodes.interval` seconds, apart from the plan loop: a route change never waits
        for that API call (nor for an API server slow to answer it)."""
        while True:
            await asyncio.sleep(self.nodes.interval)
            if self._is_leader() and await self.nodes.refresh(client):
                self._changed()  # a plan turn: the Gateways' status.addresses

    async def _status_loop(self, client: ApiClient) -> None:
        """The leader's status writes, apart from the plan loop: a pass over thousands of
        routes (the first one: thousands of PATCHes) never holds the next plan back from
        traffic. Each pass writes the newest plan's status; a plan made meanwhile gets
        another pass. A follower forgets what changed: its first pass as the leader is a
        full one."""
        while True:
            await self._status_due.wait()
            self._status_due.clear()
            plan = self._status_plan
            if plan is None or not self._is_leader():
                self._status_todo = _all()
                continue
            todo, self._status_todo = self._status_todo, {}
            try:
                await self.write_status(client, plan, todo)
            except kapi.ApiError as e:
                self.status_errors += 1
                log.warning("gateway status: %s (retrying)", e)
                await asyncio.sleep(1.0)
                self._dirty.set()  # a new plan, then its status again

    async def write_status(self, client: ApiClient, plan: GatewayPlan,
                           todo: StatusTodo | None = None) -> None:
        """Write `plan`'s status where it differs from the object's: of the objects `todo`
        names (by plural, the keys that may need a write; None for a plural, or `todo`
        None: every object of the kind). On an error the objects not yet looked at go
        back to `_status_todo`, for the next pass."""
        controller = self.gw_settings.controller_name
        todo = _all() if todo is None else todo
        for i, plural in enumerate(STATUS_KINDS):
            keys = todo.get(plural, set())
            store = self._informers[plural].objects
            was = self._settled[plural]
            items: list[tuple[tuple[str, str], JsonObj | None]]
            if keys is None:  # all: those deleted leave the settled with this pass
                settled: dict[tuple[str, str], tuple[JsonObj, JsonObj | None]] = {}
                self._settled[plural] = settled
                items = list(store.items())  # (the store changes while we write)
            else:
                settled = was
                items = [(key, store.get(key)) for key in keys]
            for j, (key, obj) in enumerate(items):
                if obj is None:  # deleted: its status goes with it
                    settled.pop(key, None)
                    continue
                ns, name = key
                planned = plan.status.get((plural, ns, name))
                if planned is None and plural not in ROUTES:
                    continue
                self.status_looked += 1
                # the same object against the same planned status (a reused plan) was
                # found settled before: 5,000 routes, 30-50 ms saved per full pass
                done = was.get(key)
                if done is not None and done[0] is obj and done[1] is planned:
                    settled[key] = done
                    continue
                want = settled_status(plural, obj.get("status") or {}, planned, controller)
                if want is None:
                    settled[key] = (obj, planned)
                    continue
                settled.pop(key, None)
                params = {"name": name, **({"namespace": ns} if ns else {})}
                try:
                    await kapi.call(client, "PATCH", STATUS_PATH[plural], params=params,
                                    body={"status": want},
                                    content_type="application/merge-patch+json")
                except kapi.ApiError as e:
                    if e.status == 404:
                        continue  # deleted meanwhile: its status goes with it
                    rest: StatusTodo = {plural: {k for k, _ in items[j:]}}
                    rest.update((p, todo.get(p, set())) for p in STATUS_KINDS[i + 1:])
                    _merge(self._status_todo, rest)
                    raise
                self.status_writes += 1
