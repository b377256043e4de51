"""What the leader writes back to the cluster: Service events and load-balancer status.

Run `StatusPublisher.run()` as the elector's leader-only work; it is cancelled when
leadership is lost. Everything it writes is idempotent, so a brief overlap of two leaders
(election gives no fencing) at worst writes the same status twice or counts an event twice.

- **Events** (core/v1) on a Service, so `kubectl describe svc` says why pylb does not
  expose it (Warning `NotExposed`, with the translation's reason) or that it does (Normal
  `Exposed`, with the routes). One event per change: a state already reported is not
  re-sent with every table. Event names are derived from the service's uid and the
  message, so a new leader that reports a state the old one already reported moves that
  event's lastTimestamp instead of adding a duplicate.
- **status.loadBalancer.ingress** of Services of `type: LoadBalancer` with
  `spec.loadBalancerClass: pylb.io/lb` that pylb exposes: the node addresses
  (`status.hostIP`) of the ready pylb pods (found by a label selector), as k3s's ServiceLB
  does, so `kubectl get svc` shows an EXTERNAL-IP. A class-pylb Service that pylb does
  not expose gets an empty list. Pods and services are re-listed every `resync` seconds
  and whenever `notify()` says a new route table is out.

The decisions (`plan_events`, `node_addresses`, `ingress_patch`) are pure functions over
plain JSON; `StatusPublisher` only lists, posts and patches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient

from election import ingress_status as ing
from election import kapi
from election.decide import format_time, utcnow
from election.objects import COMPONENT, ServiceEvent, event_name, ingress_patch
from pylb.model import RouteTable
from pylb.nodes import node_addresses

log = logging.getLogger("pylb.election.publish")

LB_CLASS = "pylb.io/lb"
REASON_EXPOSED = "Exposed"
REASON_SKIPPED = "NotExposed"
RETRY_AFTER_ERROR = 2.0  # seconds before a failed pass is retried (resync, if shorter)

ServiceKey = tuple[str, str]  # (namespace, name)


def _service_of_backend(backend: str) -> ServiceKey | None:
    """Backend names are `namespace/service:port`."""
    ns, slash, rest = backend.partition("/")
    if not slash:
        return None
    name = rest.rpartition(":")[0] or rest
    return (ns, name)


def exposed_services(table: RouteTable) -> dict[ServiceKey, list[str]]:
    """Each exposed service and how (`http /web`, `https host=x /web`, `tcp :3306`)."""
    out: dict[ServiceKey, list[str]] = {}

    def add(backend: str, how: str) -> None:
        key = _service_of_backend(backend)
        if key is not None and how not in out.setdefault(key, []):
            out[key].append(how)

    for scheme, routes in (("http", table.http), ("https", table.https)):
        for r in routes:
            host = f" host={r.host}" if r.host else ""
            add(r.backend, f"{scheme}{host} {r.prefix}")
    for f in table.tcp:
        if f.backend:
            add(f.backend, f"tcp :{f.port}")
        for sni, backend in f.sni:
            add(backend, f"tcp :{f.port} sni={sni}")
    return out


def plan_events(table: RouteTable) -> dict[tuple[str, str, str], ServiceEvent]:
    """The events that describe `table`, one per service and reason."""
    events: dict[tuple[str, str, str], ServiceEvent] = {}
    for (ns, name), hows in exposed_services(table).items():
        e = ServiceEvent(ns, name, "Normal", REASON_EXPOSED,
                         "exposed by pylb: " + ", ".join(hows))
        events[e.key] = e
    reasons: dict[ServiceKey, list[str]] = {}
    for s in table.skipped:
        if s.kind != "Service":
            continue  # Ingresses: discovery's own events (not written yet), not a Service's
        reasons.setdefault((s.namespace, s.name), []).append(s.reason)
    for (ns, name), why in reasons.items():
        e = ServiceEvent(ns, name, "Warning", REASON_SKIPPED,
                         "not exposed by pylb: " + "; ".join(why))
        events[e.key] = e
    return events


def events_to_send(planned: dict[tuple[str, str, str], ServiceEvent],
                   sent: dict[tuple[str, str, str], str]) -> list[ServiceEvent]:
    """Planned events whose message differs from what was last sent for that key."""
    return [e for k, e in sorted(planned.items()) if sent.get(k) != e.message]


def wants_status(service: dict[str, Any]) -> bool:
    spec = service.get("spec") or {}
    return bool(spec.get("type") == "LoadBalancer" and spec.get("loadBalancerClass") == LB_CLASS)




def retry_delay(exc: BaseException, resync: float) -> float:
    """Seconds before a failed pass is tried again: RETRY_AFTER_ERROR, or longer when the
    server asked for it (Retry-After, read once in pylb.kubeapi), never past the resync."""
    asked = exc.retry_after if isinstance(exc, kapi.ApiError) else None
    return min(resync, max(RETRY_AFTER_ERROR, asked or 0.0))


class StatusPublisher:
    def __init__(self, api: ApiClient, *, pod_namespace: str, pod_selector: str,
                 namespaces: tuple[str, ...] = (), instance: str | None = None,
                 resync: float = 10.0, pass_timeout: float = 30.0,
                 wall_clock: Callable[[], datetime] = utcnow,
                 ingresses: bool = False) -> None:
        """`namespaces`: where pylb exposes services (() = all); `pod_selector`: the label
        selector of pylb's own pods in `pod_namespace` (e.g. `app=pylb`); `resync`: seconds
        between passes without a notify(); `pass_timeout`: a pass that takes longer (a
        hanging API server) is abandoned and retried. `ingresses`: also the status and
        events of Ingresses (--ingress-class; election/ingress_status.py)."""
        self._api = api
        self._pod_namespace = pod_namespace
        self._pod_selector = pod_selector
        self._namespaces = namespaces
        self._instance = (instance or socket.gethostname())[:128]
        self._resync = resync
        self._pass_timeout = pass_timeout
        self._wall = wall_clock
        self._wake = asyncio.Event()
        self._sent: dict[tuple[str, str, str], str] = {}
        self._ingresses = ingresses
        self._ingress_sent: dict[tuple[str, str, str], str] = {}

    def notify(self) -> None:
        """A new route table is out: reconcile now rather than at the next resync."""
        self._wake.set()

    async def run(self, get_table: Callable[[], RouteTable | None],
                  poll: float = 1.0) -> None:
        """Reconcile when the table changes (on notify(), or noticed within `poll`
        seconds), every `resync` seconds, and soon after a failed pass; until cancelled."""
        loop = asyncio.get_running_loop()
        last: RouteTable | None = None
        next_pass = loop.time()
        while True:
            table = get_table()
            due = table is not None and (table is not last or self._wake.is_set()
                                         or loop.time() >= next_pass)
            self._wake.clear()
            if table is not None and due:
                last, next_pass = table, loop.time() + self._resync
                try:
                    async with asyncio.timeout(self._pass_timeout):
                        await self.reconcile(table)
                except (kapi.ApiError, TimeoutError) as exc:
                    next_pass = loop.time() + retry_delay(exc, self._resync)
                    log.warning("publishing status failed (retrying): %s",
                                str(exc) or "timed out")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(poll, self._resync)):
                    await self._wake.wait()

    async def reconcile(self, table: RouteTable) -> None:
        """One pass: list services and pylb pods, then send events and patch statuses."""
        services = await self._list_services()
        by_key = {(_meta(s, "namespace"), _meta(s, "name")): s for s in services}
        await self._publish_events(table, by_key)
        addresses: list[str] | None = None
        if any(wants_status(s) for s in services):
            addresses = await self._addresses()
            await self._publish_status(table, services, addresses)
        if self._ingresses:  # additive: Ingresses' status and events
            ingresses = await ing.list_ingresses(self._list, self._namespaces)
            if ingresses:
                if addresses is None:
                    addresses = await self._addresses()
                await ing.publish_ingresses(self._api, table, ingresses, addresses,
                                            self._ingress_sent, self._instance, self._wall())

    async def _addresses(self) -> list[str]:
        pods = await self._list("/api/v1/namespaces/{namespace}/pods",
                                {"namespace": self._pod_namespace},
                                {"labelSelector": self._pod_selector})
        return node_addresses(pods)

    async def _publish_events(self, table: RouteTable,
                              services: dict[ServiceKey, dict[str, Any]]) -> None:
        planned = plan_events(table)
        for key in [k for k in self._sent if k not in planned]:
            del self._sent[key]
        for event in events_to_send(planned, self._sent):
            service = services.get((event.namespace, event.name))
            if service is None:
                continue  # gone since the table was built; nothing to describe
            try:
                await self._send_event(service, event)
            except kapi.ApiError as exc:
                log.warning("event on service %s/%s failed: %s", event.namespace,
                            event.name, exc)
                continue
            self._sent[event.key] = event.message

    async def _send_event(self, service: dict[str, Any], event: ServiceEvent) -> None:
        now = format_time(self._wall())
        uid = _meta(service, "uid")
        name = event_name(event.name, uid, event)
        params = {"namespace": event.namespace, "name": name}
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": event.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Service",
                               "namespace": event.namespace, "name": event.name, "uid": uid},
            "reason": event.reason,
            "message": event.message,
            "type": event.type,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        events = "/api/v1/namespaces/{namespace}/events"
        try:
            await kapi.call(self._api, "POST", events, params=params, body=body)
            return
        except kapi.ApiError as exc:
            if not exc.conflict:
                raise
        # Reported before (by us or an earlier leader): say it again by moving its
        # lastTimestamp. `count` stays: incrementing it would need a read (RBAC: no `get`
        # on events) and a read-modify-write race between two overlapping leaders.
        patch = {"lastTimestamp": now, "reportingInstance": self._instance}
        await kapi.call(self._api, "PATCH", events + "/{name}", params=params, body=patch,
                        content_type=kapi.MERGE_PATCH)

    async def _publish_status(self, table: RouteTable, services: list[dict[str, Any]],
                              addresses: list[str]) -> None:
        exposed = exposed_services(table)
        for svc in services:
            if not wants_status(svc):
                continue
            key = (_meta(svc, "namespace"), _meta(svc, "name"))
            patch = ingress_patch(svc, addresses, key in exposed)
            if patch is None:
                continue
            try:
                await kapi.call(self._api, "PATCH",
                                "/api/v1/namespaces/{namespace}/services/{name}/status",
                                params={"namespace": key[0], "name": key[1]}, body=patch,
                                content_type=kapi.MERGE_PATCH)
            except kapi.ApiError as exc:
                log.warning("status of service %s/%s failed: %s", *key, exc)
            else:
                log.info("service %s/%s: load balancer ingress %s", *key,
                         [i["ip"] for i in patch["status"]["loadBalancer"]["ingress"]])

    async def _list_services(self) -> list[dict[str, Any]]:
        if not self._namespaces:
            return await self._list("/api/v1/services", {}, {})
        out: list[dict[str, Any]] = []
        for ns in self._namespaces:
            out += await self._list("/api/v1/namespaces/{namespace}/services",
                                    {"namespace": ns}, {})
        return out

    async def _list(self, path: str, params: dict[str, str],
                    query: dict[str, str]) -> list[dict[str, Any]]:
        """All items, page by page (500 a page, as kubectl asks)."""
        items: list[dict[str, Any]] = []
        query = {**query, "limit": "500"}
        for _ in range(10_000):
            page = await kapi.call(self._api, "GET", path, params=params, query=query)
            if not isinstance(page, dict):
                raise kapi.ApiError(0, "BadResponse", f"GET {path}: not a list")
            items += [i for i in page.get("items") or [] if isinstance(i, dict)]
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            query = {**query, "continue": token}
        raise kapi.ApiError(0, "TooManyPages", f"GET {path}: more than 10000 pages")


def _meta(obj: dict[str, Any], field: str) -> str:
    value = (obj.get("metadata") or {}).get(field)
    return value if isinstance(value, str) else ""
