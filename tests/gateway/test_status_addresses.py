"""Gateway status.addresses: a Gateway with its own address (spec.addresses, or one of
--gateway-address-pool) says that address; one bound on the node's own address says the
ready pylb nodes' IPs (the host IPs of pylb's ready pods), as a Service's
status.loadBalancer does. Written by the leader only; against the fake API server with
the real kubernetes-asyncio client."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from discovery.gateway.source import GatewaySource
from discovery.gateway.translate import GatewaySettings, translate
from pylb.config import GatewayApi, Settings
from pylb.gatewaymodel import GatewayPlan
from pylb.kubeapi import api_client_from_dict
from tests.election.test_publish_fake import add_pod, set_ready
from tests.gateway.harness import INFRA, POOL, Cluster
from tests.gateway.test_source import G, load, until
from tests.kfake import FakeApiServer

BASE = ("same-namespace", "all-namespaces", "backend-namespaces")


def own_gateway(address: str) -> dict[str, Any]:
    return {"apiVersion": f"{G}/v1", "kind": "Gateway",
            "metadata": {"name": "own", "namespace": INFRA, "generation": 1,
                         "creationTimestamp": "2026-02-01T00:00:00Z"},
            "spec": {"gatewayClassName": "pylb", "addresses": [{"value": address}],
                     "listeners": [{"name": "http", "port": 8000, "protocol": "HTTP"}]}}


def addresses(plan: GatewayPlan, gateway: str) -> list[str]:
    return [a["value"] for a in plan.status[("gateways", INFRA, gateway)]["addresses"]]


@pytest.mark.parametrize(("pool", "nodes", "want"), [
    ((), ("10.0.0.1", "10.0.0.2"), ["10.0.0.1", "10.0.0.2"]),  # the ready nodes
    ((), (), ["192.0.2.9"]),  # none known (yet): the node's own address
    (POOL, ("10.0.0.1",), None),  # its own pool address
])
def test_status_addresses_by_where_the_gateway_is_bound(
        pool: tuple[str, ...], nodes: tuple[str, ...], want: list[str] | None) -> None:
    cluster = Cluster.load()
    cluster.objects.append(own_gateway("127.0.10.50"))
    plan = translate(cluster.inputs(), GatewaySettings(
        address_pool=pool, node_address="192.0.2.9", node_addresses=nodes))
    for gw in BASE:
        got = addresses(plan, gw)
        if want is None:
            assert len(got) == 1 and got[0] in pool, got
        else:
            assert got == want
    # spec.addresses: that address, whatever the nodes are
    assert addresses(plan, "own") == ["127.0.10.50"]
    # the listeners are bound where they were (the nodes' list is status only)
    assert {lst.address for lst in plan.listeners if lst.gateway.endswith("/own")} == \
        {"127.0.10.50"}
    if want == ["10.0.0.1", "10.0.0.2"]:
        assert {lst.address for lst in plan.listeners
                if lst.gateway == f"{INFRA}/same-namespace"} == {"192.0.2.9"}


async def test_the_leader_writes_the_ready_nodes(kube_api: FakeApiServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    load(kube_api)
    own = own_gateway("127.0.10.50")
    del own["metadata"]["creationTimestamp"], own["metadata"]["generation"]
    kube_api.store.create(f"gateways.{G}", own)
    add_pod(kube_api, "pylb-a", "10.0.0.11")
    add_pod(kube_api, "pylb-b", "10.0.0.10")
    add_pod(kube_api, "pylb-c", "10.0.0.12", ready=False)
    add_pod(kube_api, "web", "10.0.0.13", labels={"app": "web"})  # not pylb's
    leader = False

    async def factory() -> ApiClient:
        return await api_client_from_dict(kube_api.kubeconfig_dict())

    def status_addresses(name: str) -> list[str]:
        gw = kube_api.store.get(f"gateways.{G}", INFRA, name) or {}
        return [a["value"] for a in (gw.get("status") or {}).get("addresses") or []]

    plans: list[GatewayPlan] = []
    s = Settings(namespaces=(), election_namespace="lb",  # where add_pod puts the pods
                 gateway=GatewayApi(enabled=True))
    source = GatewaySource(s, factory, is_leader=lambda: leader, node_address="127.0.0.1")
    source.nodes.interval = 0.1  # (RESYNC, 10 s, in a deployment)
    task = asyncio.create_task(source.run(plans.append))
    try:
        await until(lambda: plans)
        await asyncio.sleep(0.3)  # a follower lists no pods and writes nothing
        assert source.nodes.addresses == () and source.status_writes == 0
        assert status_addresses("same-namespace") == []
        leader = True
        source._changed()
        await until(lambda: status_addresses("same-namespace") == ["10.0.0.10", "10.0.0.11"])
        for gw in BASE:
            assert status_addresses(gw) == ["10.0.0.10", "10.0.0.11"]
        assert status_addresses("own") == ["127.0.10.50"]
        # a node whose pylb pod is no longer ready leaves the status (within RESYNC: the
        # loop's turn comes at the latest every RESYNC seconds, here on a change)
        set_ready(kube_api, kube_api.store.read("pods", "lb", "pylb-a"), "10.0.0.11", False)
        set_ready(kube_api, kube_api.store.read("pods", "lb", "pylb-c"), "10.0.0.12", True)
        await asyncio.sleep(0.15)
        source._changed()
        await until(lambda: status_addresses("same-namespace") == ["10.0.0.10", "10.0.0.12"])
        # the listeners stay bound where they were: the nodes' list is status only
        assert {lst.address for lst in plans[-1].listeners} == {"127.0.0.1", "127.0.10.50"}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_hanging_pods_list_holds_no_plan_back(kube_api: FakeApiServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader lists pylb's pods (Gateway status.addresses) every `nodes.interval` in
    its own task: an API server that never answers that list holds no route change back
    (it did when the list ran inside the plan turn)."""
    from tests.kfake import faults

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    load(kube_api)
    add_pod(kube_api, "pylb-a", "10.0.0.11")

    async def factory() -> ApiClient:
        return await api_client_from_dict(kube_api.kubeconfig_dict())

    plans: list[GatewayPlan] = []
    s = Settings(namespaces=(), election_namespace="lb", gateway=GatewayApi(enabled=True))
    source = GatewaySource(s, factory, node_address="127.0.0.1")
    source.nodes.interval = 0.1

    def pods_lists() -> int:
        return sum(1 for r in list(kube_api.requests) if r.path.endswith("/pods"))

    task = asyncio.create_task(source.run(plans.append))
    try:
        await until(lambda: plans and source.nodes.addresses == ("10.0.0.11",))
        kube_api.faults.add(faults.hang(), path_re=r"/pods$", count=None)
        before = pods_lists()
        await until(lambda: pods_lists() > before)  # a list is hanging now …
        await asyncio.sleep(0.3)  # … past the next interval too
        kube_api.store.create(f"gateways.{G}", own_gateway("127.0.10.50"))
        await until(lambda: any(lst.gateway.endswith("/own") for lst in plans[-1].listeners))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
