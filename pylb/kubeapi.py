"""Talking to the Kubernetes API: the one client factory, the one error type and the one
reading of "wait before trying again" that discovery and election share.

Why here, in pylb's ground layer, and not in discovery with election importing it:
discovery and election are independent peers (the import-linter contracts in
pyproject.toml), and neither owns "how to reach the API server". Putting it under one of
them would make election depend on a package that grows with every watched kind. So it
sits beside the model and the settings, and is the third module (after discovery and
election) allowed to import kubernetes-asyncio; proxy and the application layer may not.

The client. kubernetes-asyncio keeps module-level state (`Configuration.set_default`, and
KUBECONFIG read once at import time); nothing here touches it. Every call builds its own
`Configuration` and `ApiClient`, so two clients (two clusters, or a test and the app)
never share anything. The caller owns the client and must `await client.close()`.
In-cluster, the service-account token is reread whenever the kubelet rotates it.

Errors. Every failed call, HTTP or transport, is an `ApiError` carrying the HTTP status
(0 when no answer came), the Status's reason and message, the wait the server asked for
(`Retry-After` or `details.retryAfterSeconds`) and whether our resourceVersion is ahead of
the server's. `backoff_delay` is the full-jitter exponential backoff between attempts.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from pylb.config import Settings

log = logging.getLogger("pylb.kubernetes")

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


# --- errors and waiting -------------------------------------------------------------------

class ApiError(Exception):
    """A call that did not succeed: `status` is the HTTP code, or 0 when the request never
    got an answer (connection refused, reset, timeout, garbage); `reason` and `message`
    come from the Status object the server sent (or the body's text).

    `retry_after`: seconds the server asked us to wait, or None. `too_large`: the server has
    not reached our resourceVersion (504, cause `ResourceVersionTooLarge`): it lost data
    (etcd restored from a backup) or is lagging; resuming from that version may never work,
    so, as client-go does, a watcher relists.
    """

    def __init__(self, status: int, reason: str, message: str, *,
                 retry_after: float | None = None, too_large: bool = False) -> None:
        text = f"{reason}: {message}" if reason else message
        super().__init__(f"{status} {text}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.too_large = too_large

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: a stale resourceVersion (Conflict) or an existing name (AlreadyExists)."""
        return self.status == 409


def parse_status(body: bytes) -> dict[str, Any] | None:
    """A Kubernetes `Status` object from an error body, or None (APF's 429 is plain text)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        return doc
    return None


def retry_after(headers: Mapping[str, str], status: Mapping[str, Any] | None,
                now: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or an HTTP date, counted from `now`, the
    wall clock in epoch seconds: callers with an injected clock pass it; None reads
    time.time()), else from the Status's `details.retryAfterSeconds`; None when neither
    says."""
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - (time.time() if now is None else now))
    if status:
        details = status.get("details") or {}
        seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
        if isinstance(seconds, int) and seconds > 0:
            return float(seconds)
    return None


def is_too_large(status: Mapping[str, Any] | None) -> bool:
    """A Status saying our resourceVersion is ahead of the server's (apiserver
    `storage/errors.go`: cause ResourceVersionTooLarge, "Too large resource version")."""
    if not status:
        return False
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else ():
        if isinstance(cause, dict) and cause.get("reason") == "ResourceVersionTooLarge":
            return True
    return str(status.get("message", "")).startswith("Too large resource version")


def error_from_status(code: int, status: Mapping[str, Any] | None, *,
                      headers: Mapping[str, str] | None = None, text: str = "",
                      now: float | None = None) -> ApiError:
    """The `ApiError` for an answer with HTTP `code` (or a watch's ERROR event), from its
    parsed Status when there is one, else from the body's `text`."""
    if status is not None:
        reason, message = str(status.get("reason", "")), str(status.get("message") or text)
    else:
        reason, message = "", text
    return ApiError(code, reason, message, retry_after=retry_after(headers or {}, status, now),
                    too_large=is_too_large(status))


def backoff_delay(failures: int, base: float, cap: float, rnd: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(failures-1))). `rnd` in [0, 1)."""
    if failures <= 0:
        return 0.0
    return rnd * min(cap, base * 2.0 ** min(failures - 1, 62))


# --- the client ---------------------------------------------------------------------------

class ClientSetupError(kconfig.ConfigException):
    """No usable cluster configuration (the message says which and why)."""


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


def kubeconfig_path(kubeconfig: str | None, environ: Mapping[str, str] | None = None) -> str:
    """`--kubeconfig`, else $KUBECONFIG (read now, not at import time; `:`-separated files
    are merged), else ~/.kube/config."""
    env = os.environ if environ is None else environ
    return kubeconfig or env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


async def make_api_client(
    *,
    in_cluster: bool | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
    serviceaccount_dir: str = SERVICEACCOUNT_DIR,
) -> ApiClient:
    """An `ApiClient`: in-cluster (the pod's service account) when `in_cluster`, else the
    kubeconfig (`kubeconfig`, else $KUBECONFIG, else ~/.kube/config) and its `context`.
    `in_cluster` None: in-cluster when no kubeconfig is named and the pod environment
    ($KUBERNETES_SERVICE_HOST) is there (pylb.cli's `use_cluster_service` rule).

    Plain `http://` servers work from a kubeconfig; in-cluster is always https. The
    kubeconfig file is never written back (`persist_config=False`). Raises
    `ClientSetupError` naming where it looked.
    """
    env = os.environ if environ is None else environ
    if in_cluster is None:
        in_cluster = kubeconfig is None and "KUBERNETES_SERVICE_HOST" in env
    path = kubeconfig_path(kubeconfig, env)
    try:
        if in_cluster:
            cfg = incluster_configuration(env, serviceaccount_dir)
            log.info("kubernetes: in-cluster, %s", cfg.host)
        else:
            if not any(os.path.exists(os.path.expanduser(p)) for p in path.split(":") if p):
                raise kconfig.ConfigException(f"kubeconfig not found: {path}")
            cfg = type.__call__(Configuration)
            await kconfig.load_kube_config(config_file=path, context=context,
                                           client_configuration=cfg, persist_config=False)
            log.info("kubernetes: kubeconfig %s, %s", path, cfg.host)
    except (kconfig.ConfigException, OSError, ValueError) as exc:
        where = "in-cluster service account" if in_cluster else f"kubeconfig {path}"
        raise ClientSetupError(f"cannot configure the Kubernetes client from the {where}: "
                               f"{exc}") from exc
    return _client(cfg)


async def client_for(settings: Settings, **kw: Any) -> ApiClient:
    """`make_api_client` as `pylb run`'s flags say (--use-kubernetes-cluster-service,
    --kubeconfig, --context): the one client set-up of discovery and of the election."""
    return await make_api_client(in_cluster=settings.use_cluster_service,
                                 kubeconfig=settings.kubeconfig, context=settings.context, **kw)


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


JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


async def call(api: ApiClient, method: str, path: str, *,
               params: dict[str, str] | None = None, query: dict[str, str] | None = None,
               body: Any = None,
               content_type: str = JSON) -> Any:
    """`method path` (with `{name}` placeholders filled from `params`, URL-quoted), JSON
    body in, decoded JSON out."""
    headers = {"Accept": JSON, "Content-Type": content_type}
    try:
        resp = await api.call_api(
            path, method, path_params=params or None,
            query_params=list(query.items()) if query else None, header_params=headers,
            body=body, auth_settings=["BearerToken"], _preload_content=False)
        try:
            data = await resp.read()
            status = int(resp.status)
        finally:
            resp.release()
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise ApiError(0, type(exc).__name__, str(exc) or type(exc).__name__) from exc
    if not 200 <= status <= 299:
        raise error_from_status(status, parse_status(data), headers=resp.headers,
                                text=data.decode("utf-8", "replace")[:500])
    try:
        return json.loads(data) if data else None
    except ValueError as exc:
        raise ApiError(0, "BadResponse", f"{method} {path}: response is not JSON") from exc
