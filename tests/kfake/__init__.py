"""A faithful fake Kubernetes API server for the discovery and election tests.

Real HTTP(S) on loopback, driven by the real kubernetes_asyncio client; the contract it follows
is /work/shared/KUBE_API_FAKE.md and `test_contract.py` checks it clause by clause.

    async with FakeApiServer(bookmark_interval=0.2) as api:      # or the `kube_api` fixture
        api.store.create("services", {"metadata": {"name": "web"}, "spec": {...}})
        async with ApiClient(api.configuration()) as ac: ...    # or kubeconfig_dict()

Server (`app.FakeApiServer`): `start()/stop()`, `url`, `port`, `store`, `faults`, `tokens`
(None accepts anyone; a set demands one of those bearer tokens or a client certificate),
`requests` (what came in: method, path, query, verb, authorization; the last 10,000),
`request_total` (how many ever came in), `drop_watches()`,
`restart(down_for, wipe=False)` + `bring_up()` + `is_down`, `configuration(token)`,
`kubeconfig_dict(token, namespace, client_cert=False)`, `write_incluster(tmpdir)`.
Options: `tls`, `bookmark_interval`, `bookmark_before_deadline` (2 s, as the real cache),
`min_request_timeout` (watch length without timeoutSeconds), `history_size` (the 410
window), `continue_ttl`, `send_initial_events` (the WatchList gate), `opaque_rv`, `host`.

Store (`store.Store`), for tests to write as a controller would, by resource name
("services", "endpoints", "endpointslices", "leases", "events", "events.events.k8s.io",
"pods", "namespaces"): `create(res, obj)`, `update(res, obj)` (CAS when the body has an RV),
`update_status`, `put` (create or replace, spec and status), `patch(res, ns, name, patch,
content_type)`, `delete(res, ns, name)`, `get`/`read`/`items`, `compact(rv=None)`,
`load(res, objs)` (bulk, for benchmarks), `rv`, `compacted_rv`, `watcher_count`. Every write
goes through the same registry rules as a request does.

Faults (`faults`): `api.faults.add(action, method=, path_re=, verb=, watch=, count=1|N|None)`
with `http(code)`, `text429()`, `delay(s)`, `hang()`, `reset()`, `warning(text)`,
`eof_after(n)`, `truncate_after(n)`, `reset_after(n)`, `event_delay(s)`, `cut_after(s)`,
`cut_body()`; `api.faults.tls_failures = n`. Note that aiohttp retries an idempotent request
once after a reset before any answer, so a `reset()` needs `count=2` to surface.

As its own process (benchmarks): `python -m tests.kfake --services N --endpoints M
--kubeconfig PATH` loads N Services with one M-endpoint EndpointSlice each and prints a JSON
line with its url once it serves.

Known differences from a real server: no server-side apply (415), no dryRun (400), no
finalizers or graceful deletion, namespaces need not exist, managedFields are absent, field
selectors of events.k8s.io/v1 use the core/v1 field names. core/v1 and events.k8s.io/v1
Events share one storage, converted both ways, as on a real server.
"""

from tests.kfake import faults
from tests.kfake.app import FakeApiServer, RequestRecord
from tests.kfake.errors import ApiError
from tests.kfake.faults import Faults
from tests.kfake.store import Store

__all__ = ["ApiError", "FakeApiServer", "Faults", "RequestRecord", "Store", "faults"]
