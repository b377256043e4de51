"""An ApiClient for the sidecar (inside `pylb run` the app passes its own client in).

election does not import discovery (the layers do not cross), so this is the sidecar's own
small set-up: in-cluster (service account) or a kubeconfig file.
"""

from __future__ import annotations

import os

from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration


class ClientSetupError(Exception):
    """No usable cluster configuration (the message says which and why)."""


async def make_api_client(*, kubeconfig: str | None = None, in_cluster: bool | None = None,
                          context: str | None = None) -> ApiClient:
    """In-cluster when `in_cluster` is true, a kubeconfig (the file given, else
    $KUBECONFIG, else ~/.kube/config) when false. None chooses in-cluster when no
    kubeconfig is given and the pod environment ($KUBERNETES_SERVICE_HOST) is there."""
    if in_cluster is None:
        in_cluster = kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
    cfg = Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(  # type: ignore[no-untyped-call]  # KA is untyped
                client_configuration=cfg)
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
            await config.load_kube_config(config_file=path, context=context,
                                          client_configuration=cfg, persist_config=False)
    except (config.ConfigException, OSError, ValueError) as exc:
        where = "in-cluster service account" if in_cluster else (
            f"kubeconfig {kubeconfig or '(default)'}")
        raise ClientSetupError(f"cannot configure the Kubernetes client from the {where}: "
                               f"{exc}") from exc
    return ApiClient(configuration=cfg)
