"""The fake serves the Gateway API kinds as a real cluster with the CRDs installed does:
status subresource, generation bumped by spec changes only, list/watch with resourceVersions,
through the real client's CustomObjectsApi."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes_asyncio import client, watch

from tests.kfake import FakeApiServer

G, V = "gateway.networking.k8s.io", "v1"


def gateway(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "infra"},
            "spec": {"gatewayClassName": "pylb",
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}


async def test_gateway_status_and_generation(kube_api: FakeApiServer) -> None:
    async with client.ApiClient(kube_api.configuration()) as ac:
        api = client.CustomObjectsApi(ac)
        made = await api.create_namespaced_custom_object(G, V, "infra", "gateways",
                                                         gateway("gw"))
        assert made["metadata"]["generation"] == 1
        made["status"] = {"conditions": [{"type": "Accepted", "status": "True"}]}
        after = await api.replace_namespaced_custom_object_status(G, V, "infra", "gateways",
                                                                  "gw", made)
        assert after["metadata"]["generation"] == 1
        assert after["status"]["conditions"][0]["type"] == "Accepted"
        after["spec"]["listeners"][0]["port"] = 8080
        after["status"] = {}
        changed = await api.replace_namespaced_custom_object(G, V, "infra", "gateways", "gw",
                                                             after)
        assert changed["metadata"]["generation"] == 2
        assert changed["status"]["conditions"][0]["type"] == "Accepted"  # spec PUT keeps it


async def test_cluster_scoped_class_and_watch(kube_api: FakeApiServer) -> None:
    async with client.ApiClient(kube_api.configuration()) as ac:
        api = client.CustomObjectsApi(ac)
        await api.create_cluster_custom_object(G, V, "gatewayclasses", {
            "apiVersion": f"{G}/{V}", "kind": "GatewayClass", "metadata": {"name": "pylb"},
            "spec": {"controllerName": "pylb.io/gateway-controller"}})
        listed = await api.list_cluster_custom_object(G, V, "gatewayclasses")
        assert [o["metadata"]["name"] for o in listed["items"]] == ["pylb"]
        rv = listed["metadata"]["resourceVersion"]
        kube_api.store.create("httproutes.gateway.networking.k8s.io", {
            "metadata": {"name": "r", "namespace": "infra"},
            "spec": {"parentRefs": [{"name": "gw"}]}})
        w = watch.Watch()
        events = []
        async with w.stream(api.list_namespaced_custom_object, G, V, "infra", "httproutes",
                            resource_version=rv, timeout_seconds=2) as stream:
            async for ev in stream:
                events.append((ev["type"], ev["object"]["metadata"]["name"]))
                break
        assert events == [("ADDED", "r")]
        await asyncio.sleep(0)
