"""Election inside `pylb run --election NAME`: every pod serves traffic; the leader alone
writes service events and load-balancer status (election.publish), as leader-only work
that is cancelled when leadership is lost. Election gives no fencing (see
election.elector): what the leader writes is idempotent, so a brief overlap is harmless.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient

from election.decide import Timing
from election.elector import Elector
from election.lock import make_lock
from election.publish import StatusPublisher
from pylb.config import Settings
from pylb.kubeapi import client_for
from pylb.model import RouteTable
from pylb.nodes import POD_SELECTOR
from pylb.nodes import pod_namespace as pod_namespace_of

#: The label of pylb's own pods (deploy/daemonset.yaml); their nodes become the ingress.
DEFAULT_POD_SELECTOR = POD_SELECTOR

LeaderCallback = Callable[[str | None, dict[str, Any]], None]


def identity_of(settings: Settings) -> str:
    """--id, else the pod name (POD_NAME, from the downward API), else the hostname."""
    return settings.election_id or os.environ.get("POD_NAME") or socket.gethostname()


async def run_election(settings: Settings, on_leader: LeaderCallback,
                       get_table: Callable[[], RouteTable | None], *,
                       api: ApiClient | None = None, pod_namespace: str | None = None,
                       pod_selector: str = DEFAULT_POD_SELECTOR, lock: str = "leases",
                       timing: Timing | None = None) -> None:
    """Run until cancelled (then release the lease if held).

    `on_leader(name, info)` is called at every change: `name` is the leader (None while
    nobody holds the lease), `info` has `is_self`, `since` (the leader's acquireTime,
    epoch seconds, or None) and `transitions`. `get_table` returns the current route
    table. `api`: a client to use (tests); when None one is made as discovery makes its
    own, pylb.kubeapi.client_for (and closed at the end). `pod_namespace` defaults to
    $POD_NAMESPACE, else the election namespace (where deploy/ puts both).
    """
    if not settings.election:
        raise ValueError("run_election needs --election")
    own = api is None
    client = api or await client_for(settings)
    try:
        me = identity_of(settings)
        publisher = StatusPublisher(
            client, pod_namespace=pod_namespace or pod_namespace_of(settings.election_namespace),
            pod_selector=pod_selector,
            namespaces=settings.namespaces, instance=me,
            ingresses=settings.ingress_class is not None)
        elector: Elector

        def report(*_: object) -> None:
            st = elector.status()
            on_leader(st.leader or None, {
                "is_self": st.is_leader,
                "since": st.leader_since.timestamp() if st.leader_since else None,
                "transitions": st.transitions,
            })

        async def lead() -> None:
            report()
            await publisher.run(get_table)

        elector = Elector(make_lock(lock, client, settings.election_namespace,
                                    settings.election),
                          me, timing, on_started_leading=lead, on_stopped_leading=report,
                          on_new_leader=report)
        await elector.run()
    finally:
        if own:
            await client.close()
