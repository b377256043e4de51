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

# Re-exported (`kapi.ApiError`, `kapi.call`): election's callers use these names. The call
# itself lives in pylb.kubeapi, where discovery's Gateway status writer finds it too.
from pylb.kubeapi import JSON as JSON
from pylb.kubeapi import MERGE_PATCH as MERGE_PATCH
from pylb.kubeapi import ApiError as ApiError
from pylb.kubeapi import call as call

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
