"""Raw JSON calls to the API server through a kubernetes_asyncio ApiClient.

Election and status publishing read and write plain JSON rather than KA's models: the
models serialize datetimes with `isoformat()` (no fraction when microsecond is 0, which
the API server rejects for MicroTime fields) and re-serialize objects we only want to
pass back unchanged. The ApiClient still supplies the host, TLS, authentication (token
refresh included) and the connection pool.

Every failure, HTTP or transport, comes out as one exception type, pylb.kubeapi's
`ApiError` (the one discovery raises too), with the server's Retry-After when it sent one.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

# Re-exported (`kapi.ApiError`): election's callers catch it by this name.
from pylb.kubeapi import ApiError as ApiError
from pylb.kubeapi import error_from_status, parse_status

#: Every (apiGroup, resource, verb) election/ uses, for deploy/rbac.yaml and its test (the
#: calls go through `call()` with paths, so they cannot be found by scanning for KA methods).
API_CALLS: frozenset[tuple[str, str, str]] = frozenset({
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
    ("", "endpoints", "get"),  # --lock=endpoints
    ("", "endpoints", "create"),
    ("", "endpoints", "update"),
    ("", "events", "create"),  # the leader's StatusPublisher
    ("", "events", "patch"),
    ("", "services", "list"),
    ("", "services/status", "patch"),
    ("", "pods", "list"),
})

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


async def call(api: ApiClient, method: str, path: str, *, params: dict[str, str] | None = None,
               query: dict[str, str] | None = None, body: Any = None,
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
