"""The fake's networking.k8s.io/v1 Ingress and IngressClass and v1 Secret, as the real
kubernetes-asyncio client sees them: validation (pkg/apis/networking/validation), the
status subresource, cluster-scoped classes, the Secret `type` field selector."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kfake import ApiError, FakeApiServer


@pytest.fixture
async def api_client(kube_api: FakeApiServer) -> AsyncIterator[client.ApiClient]:
    cfg = kube_api.configuration()
    async with client.ApiClient(cfg) as ac:
        yield ac


def ingress(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def backend(port: dict[str, Any]) -> dict[str, Any]:
    return {"service": {"name": "web", "port": port}}


GOOD_RULES = [{"host": "*.a.test", "http": {"paths": [
    {"path": "/", "pathType": "Prefix", "backend": backend({"number": 80})}]}}]


@pytest.mark.parametrize(("spec", "field"), [
    ({}, "spec"),
    ({"rules": [{"http": {"paths": [{"path": "/", "backend": backend({"number": 80})}]}}]},
     "pathType"),
    ({"rules": [{"http": {"paths": [{"path": "/", "pathType": "Regex",
                                     "backend": backend({"number": 80})}]}}]}, "pathType"),
    ({"rules": [{"http": {"paths": [{"path": "x", "pathType": "Exact",
                                     "backend": backend({"number": 80})}]}}]}, "path"),
    ({"defaultBackend": backend({"number": 80, "name": "http"})}, "port"),
    ({"defaultBackend": backend({})}, "port"),
    ({"rules": [{"host": "a.*.test", "http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": backend({"number": 80})}]}}]}, "host"),
])
def test_invalid_ingresses_are_422(kube_api: FakeApiServer, spec: dict[str, Any],
                                   field: str) -> None:
    with pytest.raises(ApiError) as info:
        kube_api.store.create("ingresses.networking.k8s.io", ingress("bad", **spec))
    assert info.value.code == 422
    assert field in str(info.value.body)


async def test_ingress_class_list_and_ingress_status(kube_api: FakeApiServer,
                                                     api_client: client.ApiClient) -> None:
    store = kube_api.store
    store.create("ingressclasses.networking.k8s.io", {
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "pylb"}, "spec": {"controller": "pylb.io/ingress-controller"}})
    store.create("ingresses.networking.k8s.io", ingress("web", rules=GOOD_RULES))
    net = client.NetworkingV1Api(api_client)
    classes = await net.list_ingress_class()
    assert [c.spec.controller for c in classes.items] == ["pylb.io/ingress-controller"]
    got = await net.list_ingress_for_all_namespaces()
    assert [i.spec.rules[0].host for i in got.items] == ["*.a.test"]
    await net.patch_namespaced_ingress_status("web", "default", {
        "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.5"}]}}})
    one = await net.read_namespaced_ingress("web", "default")
    assert one.status.load_balancer.ingress[0].ip == "127.0.0.5"
    assert one.spec.rules[0].host == "*.a.test"


async def test_secret_type_field_selector(kube_api: FakeApiServer,
                                          api_client: client.ApiClient) -> None:
    store = kube_api.store
    store.create("secrets", {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                             "metadata": {"name": "t", "namespace": "default"},
                             "data": {"tls.crt": "eA==", "tls.key": "eA=="}})
    store.create("secrets", {"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "o", "namespace": "default"},
                             "data": {"p": "eA=="}})
    v1 = client.CoreV1Api(api_client)
    got = await v1.list_namespaced_secret("default", field_selector="type=kubernetes.io/tls")
    assert [s.metadata.name for s in got.items] == ["t"]
    assert (await v1.read_namespaced_secret("o", "default")).type == "Opaque"
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_secret("default", {
            "metadata": {"name": "bad"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}})
    assert info.value.status == 422
