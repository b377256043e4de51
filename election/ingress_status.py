"""What the leader writes back for Ingresses (with `--ingress-class`): their load-balancer
status, and Events saying why (a part of) one is not served.

- **status.loadBalancer.ingress** of every Ingress that has a route in the table: the
  same addresses as a class-pylb Service gets (the ready pylb pods' nodes, see
  election/publish.py), so `kubectl get ingress` shows an ADDRESS. An Ingress of ours that
  no longer has a route gets an empty list again (one that never had one is left alone:
  it may be another controller's).
- **Events** (core/v1, involvedObject an `networking.k8s.io/v1` Ingress): Warning
  `NotServed` with the translation's reasons (SkippedService of kind "Ingress": a bad
  path, a Secret not found, a refused annotation…), once per distinct message, named as
  the Service events are (uid + message), so a new leader moves an old event's
  lastTimestamp rather than adding a duplicate.

The decisions (`served_ingresses`, `ingress_reasons`) are pure functions of the table;
`publish_ingresses` only lists, posts and patches. Idempotent, like the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient

from election import kapi
from election.decide import format_time
from election.objects import COMPONENT, ServiceEvent, event_name, ingress_patch
from pylb.model import PathMatch, RouteTable

log = logging.getLogger("pylb.election.publish")

REASON_NOT_SERVED = "NotServed"
KIND = "Ingress"
INGRESSES = "/apis/networking.k8s.io/v1/ingresses"
NAMESPACED_INGRESSES = "/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses"
INGRESS_STATUS = "/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses/{name}/status"

Key = tuple[str, str]
Lister = Callable[[str, dict[str, str], dict[str, str]], Awaitable[list[dict[str, Any]]]]


def served_ingresses(table: RouteTable) -> set[Key]:
    """The Ingresses with a route in the table (route names are `namespace/ingress`)."""
    out: set[Key] = set()
    for r in table.http + table.https:
        if r.match is not PathMatch.LEGACY:
            ns, _, name = r.name.partition("/")
            out.add((ns, name))
    return out


def ingress_reasons(table: RouteTable) -> dict[Key, str]:
    """Per Ingress with skipped parts, the event message that says why."""
    why: dict[Key, list[str]] = {}
    for s in table.skipped:
        if s.kind == KIND and s.reason not in why.setdefault((s.namespace, s.name), []):
            why[(s.namespace, s.name)].append(s.reason)
    return {k: "not served by pylb: " + "; ".join(v) for k, v in why.items()}


async def list_ingresses(list_: Lister, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    if not namespaces:
        return await list_(INGRESSES, {}, {})
    out: list[dict[str, Any]] = []
    for ns in namespaces:
        out += await list_(NAMESPACED_INGRESSES, {"namespace": ns}, {})
    return out


async def publish_ingresses(api: ApiClient, table: RouteTable,
                            ingresses: list[dict[str, Any]], addresses: list[str],
                            sent: dict[tuple[str, str, str], str], instance: str,
                            now: datetime) -> None:
    """Patch the status of our Ingresses and send the events not sent yet (`sent`: event
    key → message last sent, kept by the caller across passes)."""
    served = served_ingresses(table)
    reasons = ingress_reasons(table)
    for ing in ingresses:
        meta = ing.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        current = ((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        if key in served or current:
            patch = ingress_patch(ing, addresses, key in served)
            if patch is not None:
                try:
                    await kapi.call(api, "PATCH", INGRESS_STATUS,
                                    params={"namespace": key[0], "name": key[1]}, body=patch,
                                    content_type=kapi.MERGE_PATCH)
                except kapi.ApiError as exc:
                    log.warning("status of ingress %s/%s failed: %s", *key, exc)
                else:
                    log.info("ingress %s/%s: load balancer ingress %s", *key,
                             [i["ip"] for i in patch["status"]["loadBalancer"]["ingress"]])
        message = reasons.get(key)
        event = ServiceEvent(key[0], key[1], "Warning", REASON_NOT_SERVED, message or "")
        ekey = (key[0], f"ingress/{key[1]}", REASON_NOT_SERVED)
        if message is None:
            sent.pop(ekey, None)
            continue
        if sent.get(ekey) == message:
            continue
        try:
            await _send(api, ing, event, instance, now)
        except kapi.ApiError as exc:
            log.warning("event on ingress %s/%s failed: %s", *key, exc)
            continue
        sent[ekey] = message


async def _send(api: ApiClient, ing: dict[str, Any], event: ServiceEvent, instance: str,
                now: datetime) -> None:
    stamp = format_time(now)
    uid = str((ing.get("metadata") or {}).get("uid") or "")
    name = event_name(event.name, uid, event)
    params = {"namespace": event.namespace, "name": name}
    body = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": event.namespace},
        "involvedObject": {"apiVersion": "networking.k8s.io/v1", "kind": KIND,
                           "namespace": event.namespace, "name": event.name, "uid": uid},
        "reason": event.reason, "message": event.message[:1024], "type": event.type,
        "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
        "reportingInstance": instance, "firstTimestamp": stamp, "lastTimestamp": stamp,
        "count": 1,
    }
    events = "/api/v1/namespaces/{namespace}/events"
    try:
        await kapi.call(api, "POST", events, params=params, body=body)
        return
    except kapi.ApiError as exc:
        if not exc.conflict:
            raise
    await kapi.call(api, "PATCH", events + "/{name}", params=params,
                    body={"lastTimestamp": stamp, "reportingInstance": instance},
                    content_type=kapi.MERGE_PATCH)
