"""Connecting to the Kubernetes API: an `ApiClient` in-cluster or from a kubeconfig.

kubernetes-asyncio keeps module-level state (`Configuration.set_default`, and KUBECONFIG
read once at import time); nothing here touches it. Every call builds its own
`Configuration` and `ApiClient`, so two clients (two clusters, or a test and the app) never
share anything. The caller owns the client and must `await client.close()`.

election/ needs the same set-up but may not import discovery/: it keeps its own copy of
these few lines (or takes an `ApiClient` handed to it by pylb.app).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from pylb.config import Settings

log = logging.getLogger(__name__)

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class _TokenFile:
    """`Configuration.refresh_api_key_hook` that rereads the service-account token whenever
    the file changes.

    The kubelet rotates projected tokens (hourly by default) by swapping a symlink, so a
    changed (inode, mtime, size) means a new token. A stat per request is cheap: discovery
    makes a request per list page or watch, not per event. If the file vanishes or is
    empty for a moment (mid-swap), the previous token stays in use.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._signature: tuple[int, int, int] | None = None

    def __call__(self, configuration: Any, *args: Any) -> None:
        try:
            st = os.stat(self._path)
        except OSError:
            return
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature == self._signature:
            return
        try:
            token = Path(self._path).read_text().strip()
        except OSError:
            return
        if token:
            configuration.api_key["BearerToken"] = "Bearer " + token
            self._signature = signature


def incluster_configuration(
    environ: Mapping[str, str] | None = None,
    serviceaccount_dir: str = SERVICEACCOUNT_DIR,
) -> Configuration:
    """The pod's service account: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
    the CA in `ca.crt`, the token in `token` (reread when it rotates). Raises
    `kubernetes_asyncio.config.ConfigException` outside a pod."""
    token_path = os.path.join(serviceaccount_dir, "token")
    cfg: Configuration = type.__call__(Configuration)  # bypass the metaclass's shared default
    loader = InClusterConfigLoader(
        token_filename=token_path,
        cert_filename=os.path.join(serviceaccount_dir, "ca.crt"),
        try_refresh_token=False,
        environ=dict(os.environ if environ is None else environ),
    )
    loader.load_and_set(cfg)
    hook = _TokenFile(token_path)
    hook(cfg)
    cfg.refresh_api_key_hook = hook
    return cfg


def pod_namespace(serviceaccount_dir: str = SERVICEACCOUNT_DIR) -> str | None:
    """The namespace this pod runs in (the service account's `namespace` file), or None
    outside a pod. kubernetes-asyncio does not read it."""
    try:
        ns = Path(serviceaccount_dir, "namespace").read_text().strip()
    except OSError:
        return None
    return ns or None


def kubeconfig_path(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """`--kubeconfig`, else $KUBECONFIG (read now, not at import time; `:`-separated files
    are merged), else ~/.kube/config."""
    env = os.environ if environ is None else environ
    return settings.kubeconfig or env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


async def make_api_client(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    serviceaccount_dir: str = SERVICEACCOUNT_DIR,
) -> ApiClient:
    """An `ApiClient` for `settings`: in-cluster when `settings.use_cluster_service`, else
    the kubeconfig (`settings.kubeconfig` / $KUBECONFIG) and `settings.context`.

    Plain `http://` servers work from a kubeconfig; in-cluster is always https. The
    kubeconfig file is never written back (`persist_config=False`).
    """
    if settings.use_cluster_service:
        cfg = incluster_configuration(environ, serviceaccount_dir)
        log.info("kubernetes: in-cluster, %s", cfg.host)
    else:
        path = kubeconfig_path(settings, environ)
        if not any(os.path.exists(os.path.expanduser(p)) for p in path.split(":") if p):
            raise kconfig.ConfigException(f"kubeconfig not found: {path}")
        cfg = type.__call__(Configuration)
        await kconfig.load_kube_config(config_file=path, context=settings.context,
                                       client_configuration=cfg, persist_config=False)
        log.info("kubernetes: kubeconfig %s, %s", path, cfg.host)
    return _client(cfg)


def _client(cfg: Configuration) -> ApiClient:
    # Each watch holds a connection for its whole life (two kinds per namespace), so
    # kubernetes-asyncio's default cap of 100 connections would stall the 51st namespace.
    cfg.connection_pool_maxsize = 0  # aiohttp: 0 = no limit
    return ApiClient(configuration=cfg)


async def api_client_from_dict(kubeconfig: Mapping[str, Any],
                               context: str | None = None) -> ApiClient:
    """An `ApiClient` from a kubeconfig already parsed (tests, embedders)."""
    cfg: Configuration = type.__call__(Configuration)
    await kconfig.load_kube_config_from_dict(dict(kubeconfig), context=context,
                                             client_configuration=cfg)
    return _client(cfg)
