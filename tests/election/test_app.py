"""`pylb run --election`: the wiring the app calls (election.app.run_election)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from election.app import identity_of, run_election
from pylb.config import Settings
from tests.election.test_publish_fake import TABLE, events, ingress, populate
from tests.kfake import FakeApiServer


async def wait_for(condition: object, seconds: float = 10.0) -> None:
    assert callable(condition)
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


async def test_leader_publishes_and_reports(kube_api: FakeApiServer, api_client: ApiClient,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "lb")
    populate(kube_api)
    settings = Settings(election="pylb", election_namespace="default", election_id="pylb-a",
                        namespaces=("shop", "data"))
    seen: list[tuple[str | None, dict[str, Any]]] = []
    task = asyncio.create_task(run_election(settings, lambda n, i: seen.append((n, i)),
                                            lambda: TABLE, api=api_client))
    try:
        await wait_for(lambda: len(ingress(kube_api, "shop", "web")) == 2)
        await wait_for(lambda: len(events(kube_api)) == 3)
        name, info = seen[-1]
        assert name == "pylb-a" and info["is_self"] is True and info["transitions"] == 0
        assert isinstance(info["since"], float)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lease = kube_api.store.read("leases", "default", "pylb")
    assert lease["spec"]["holderIdentity"] == ""  # released on the way out
    assert seen[-1] == (None, {"is_self": False, "since": None, "transitions": 0})


async def test_follower_reports_the_leader_and_writes_nothing(
        kube_api: FakeApiServer, api_client: ApiClient, tmp_path: Path) -> None:
    populate(kube_api)
    lease = {"metadata": {"name": "pylb", "namespace": "default"},
             "spec": {"holderIdentity": "pylb-z", "leaseDurationSeconds": 15,
                      "acquireTime": "2026-11-21T22:00:00.000000Z",
                      "renewTime": "2026-11-21T22:00:00.000000Z", "leaseTransitions": 2}}
    kube_api.store.create("leases", lease)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps(kube_api.kubeconfig_dict()))
    settings = Settings(election="pylb", election_namespace="default", election_id="pylb-a",
                        namespaces=("shop",), kubeconfig=str(kubeconfig),
                        use_cluster_service=False)
    seen: list[tuple[str | None, dict[str, Any]]] = []
    task = asyncio.create_task(run_election(settings, lambda n, i: seen.append((n, i)),
                                            lambda: TABLE))
    try:
        await wait_for(lambda: bool(seen))
        name, info = seen[-1]
        assert name == "pylb-z" and info["is_self"] is False and info["transitions"] == 2
        assert info["since"] == 1795298400.0
        await asyncio.sleep(0.1)
        assert events(kube_api) == [] and ingress(kube_api, "shop", "web") == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert kube_api.store.read("leases", "default", "pylb")["spec"]["holderIdentity"] == "pylb-z"


def test_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "pylb-7x2")
    assert identity_of(Settings(election_id="me")) == "me"
    assert identity_of(Settings()) == "pylb-7x2"


async def test_needs_an_election_name() -> None:
    with pytest.raises(ValueError, match="--election"):
        await run_election(Settings(), lambda n, i: None, lambda: None)
