"""The client set-up (pylb.kubeapi) as the sidecar uses it, and kapi's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from election import kapi
from pylb.kubeapi import ClientSetupError, make_api_client
from tests.kfake import FakeApiServer


async def test_kubeconfig_file(kube_api: FakeApiServer, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(json.dumps(kube_api.kubeconfig_dict(token="sekret")))
    kube_api.tokens = {"sekret"}
    async with await make_api_client(kubeconfig=str(path)) as api:
        got = await kapi.call(api, "GET", "/api/v1/namespaces/{namespace}/services",
                              params={"namespace": "default"})
        assert got["kind"] == "ServiceList"


async def test_kubeconfig_over_tls(tmp_path: Path, no_proxy_env: None) -> None:
    async with FakeApiServer(tls=True) as kube:
        path = tmp_path / "config"
        path.write_text(json.dumps(kube.kubeconfig_dict()))
        async with await make_api_client(kubeconfig=str(path), in_cluster=False) as api:
            got = await kapi.call(api, "GET", "/apis/coordination.k8s.io/v1/namespaces/"
                                  "{namespace}/leases", params={"namespace": "default"})
            assert got["items"] == []


async def test_in_cluster_outside_a_pod_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(ClientSetupError, match="in-cluster service account"):
        await make_api_client(in_cluster=True)


async def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClientSetupError, match="kubeconfig"):
        await make_api_client(kubeconfig=str(tmp_path / "nope"))


async def test_errors_come_out_as_api_error(kube_api: FakeApiServer, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(json.dumps(kube_api.kubeconfig_dict()))
    async with await make_api_client(kubeconfig=str(path)) as api:
        with pytest.raises(kapi.ApiError) as exc:
            await kapi.call(api, "GET", "/apis/coordination.k8s.io/v1/namespaces/"
                            "{namespace}/leases/{name}", params={"namespace": "default",
                                                                 "name": "nope"})
        assert exc.value.not_found and exc.value.reason == "NotFound"
        await kube_api.stop()
        with pytest.raises(kapi.ApiError) as exc:
            await kapi.call(api, "GET", "/api/v1/namespaces/{namespace}/services",
                            params={"namespace": "default"})
        assert exc.value.status == 0
