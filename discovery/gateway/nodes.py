"""The ready pylb nodes, for Gateway status: a Gateway bound on the node's own address (no
`spec.addresses`, no `--gateway-address-pool`) is served by every pylb node, so its
`status.addresses` lists their IPs — the host IPs of pylb's ready pods, as a Service's
`status.loadBalancer.ingress` does (election.publish; both use pylb.nodes).

Listed by the leader only (it alone writes status), at most every `interval` seconds, with
the same call and RBAC as election.publish (`list pods`, label `app=pylb`, in the pods'
namespace). A failed list keeps the last answer: status never flaps because the API server
blinked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient

from pylb import kubeapi as kapi
from pylb.nodes import POD_SELECTOR, node_addresses

log = logging.getLogger("pylb.gateway")

PODS = "/api/v1/namespaces/{namespace}/pods"
MAX_PAGES = 100  # 500 pods a page: far more load-balancer nodes than any cluster has


class ReadyNodes:
    """`addresses`: the ready pylb nodes' IPs, sorted; () until listed (or none ready)."""

    def __init__(self, namespace: str, selector: str = POD_SELECTOR, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.namespace = namespace
        self.selector = selector
        self.interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._failed = ""  # the last failure logged (logged once until it changes)
        self.addresses: tuple[str, ...] = ()

    @property
    def tried(self) -> bool:
        """A list was tried (answered or not)."""
        return self._next != float("-inf")

    async def refresh(self, client: ApiClient) -> bool:
        """List the pods if `interval` has passed since the last list; True when the
        addresses changed. Never raises an API error (logged; the last answer stays)."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        try:
            pods = await self._list(client)
        except kapi.ApiError as e:
            if str(e) != self._failed:
                self._failed = str(e)
                log.warning("gateway status: listing pylb's pods (%s in %s) failed: %s",
                            self.selector, self.namespace, e)
            return False
        self._failed = ""
        found = tuple(node_addresses(pods))
        if found == self.addresses:
            return False
        log.info("gateway status: the ready pylb nodes are %s", ", ".join(found) or "none")
        self.addresses = found
        return True

    async def _list(self, client: ApiClient) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        query = {"labelSelector": self.selector, "limit": "500"}
        for _ in range(MAX_PAGES):
            page = await kapi.call(client, "GET", PODS, params={"namespace": self.namespace},
                                   query=query)
            if not isinstance(page, dict):
                raise kapi.ApiError(0, "BadResponse", "GET pods: not a list")
            items += [i for i in page.get("items") or [] if isinstance(i, dict)]
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            query = {**query, "continue": str(token)}
        raise kapi.ApiError(0, "TooManyPages", f"GET pods: more than {MAX_PAGES} pages")
