"""The HTTP face of the fake: aiohttp routes for /api and /apis, and `FakeApiServer`.

A request is parsed into (resource, namespace, name, subresource, verb), passed through the
fault rules and the bearer-token check, and handed to the store; `ApiError`s become Status
responses. Query parameters are decoded as the real server does: booleans are true unless
"0" or "false" (kubernetes-asyncio sends "True"), list options are validated into 422
`ListOptions` errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import ssl
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.kfake import errors
from tests.kfake import rv as rvcodec
from tests.kfake.errors import ApiError, Cause
from tests.kfake.faults import Faults, Forbid, Hang, Plan, Reset, Status, Text, abort
from tests.kfake.patch import APPLY_PATCH, JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH
from tests.kfake.resources import RESOURCES, Resource, by_path
from tests.kfake.selectors import SelectorError, predicate
from tests.kfake.store import Store
from tests.kfake.tls import TestPKI
from tests.kfake.watch import WatchRequest, WatchSettings, serve_watch

JsonObj = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PLAN = web.RequestKey("kfake.plan", Plan)
log = logging.getLogger("tests.kfake")

SERVER_VERSION = {
    "major": "1", "minor": "34", "gitVersion": "v1.34.0-kfake", "gitCommit": "kfake",
    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0",
    "compiler": "gc", "platform": "linux/amd64",
}


def parse_bool(values: list[str]) -> bool:
    """apimachinery `Convert_Slice_string_To_bool`: anything but "0"/"false" is true."""
    if not values:
        return False
    return not (values[0] == "0" or values[0].lower() == "false")


@dataclass(frozen=True)
class Target:
    res: Resource
    namespace: str | None  # None: all namespaces (or a cluster-scoped resource)
    name: str
    subresource: str

    def verb(self, method: str, watch: bool) -> str:
        if method == "GET":
            if self.name:
                return "get"
            return "watch" if watch else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if self.name else "deletecollection"}.get(method, method)


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    verb: str
    authorization: str
    content_type: str


def parse_path(path: str) -> Target | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    res = by_path(group, version, rest[0])
    if res is None or (namespace is not None and not res.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if res.namespaced and name and namespace is None:
        return None
    return Target(res, namespace, name, sub)


Pairs = list[tuple[str, str]]


def error_response(err: ApiError, extra: Pairs | None = None) -> web.Response:
    resp = web.Response(status=err.code, text=json.dumps(err.body),
                        content_type="application/json", headers=err.headers)
    for k, v in extra or []:
        resp.headers.add(k, v)
    return resp


def json_response(obj: Any, code: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=code, text=json.dumps(obj, separators=(",", ":")),
                        content_type="application/json", headers=headers)


def _list_option_causes(q: Any, watch: bool, gate: bool) -> list[Cause]:
    """apimachinery `ValidateListOptions` / `validateWatchOptions`, check for check."""
    causes: list[Cause] = []
    rv = q.get("resourceVersion", "")
    match = q.get("resourceVersionMatch", "")
    sie_given = "sendInitialEvents" in q
    rvm = "resourceVersionMatch"
    if watch:
        if sie_given:
            if match != "NotOlderThan":
                causes.append(errors.forbidden(
                    rvm, "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"))
            if not gate:
                causes.append(errors.forbidden(
                    "sendInitialEvents",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature "
                    "gate is enabled"))
        if match:
            if not sie_given:
                causes.append(errors.forbidden(
                    rvm, "resourceVersionMatch is forbidden for watch unless sendInitialEvents "
                    "is provided"))
            if match != "NotOlderThan":
                causes.append(errors.not_supported(rvm, match, ["NotOlderThan"]))
            if q.get("continue"):
                causes.append(errors.forbidden(
                    rvm, "resourceVersionMatch is forbidden when continue is provided"))
        return causes
    if match:
        if not rv:
            causes.append(errors.forbidden(
                rvm, "resourceVersionMatch is forbidden unless resourceVersion is provided"))
        if q.get("continue"):
            causes.append(errors.forbidden(
                rvm, "resourceVersionMatch is forbidden when continue is provided"))
        if match not in ("Exact", "NotOlderThan"):
            causes.append(errors.not_supported(rvm, match, ["Exact", "NotOlderThan", ""]))
        if match == "Exact" and rv == "0":
            causes.append(errors.forbidden(
                rvm, 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'))
    if sie_given:
        causes.append(errors.forbidden("sendInitialEvents",
                                       "sendInitialEvents is forbidden for list"))
    return causes


def _int_param(q: Any, key: str) -> int:
    raw = q.get(key, "")
    if raw == "":
        return 0
    try:
        return int(raw)
    except ValueError:
        raise errors.bad_request(f'strconv.ParseInt: parsing "{raw}": invalid syntax') from None


def _strip_type(obj: JsonObj) -> JsonObj:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class FakeApiServer:
    """A Kubernetes API server on loopback, faithful where pylb depends on it.

    `store` and `faults` are for tests to drive directly; `tokens`, when set, is the set of
    bearer tokens accepted (else any request is let in); `requests` records what came in.
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        bookmark_interval: float = 60.0,
        history_size: int = 1000,
        send_initial_events: bool = False,
        bookmark_before_deadline: float = 2.0,
        min_request_timeout: float = 1800.0,
        host: str = "127.0.0.1",
        continue_ttl: float = 300.0,
        tokens: set[str] | None = None,
        opaque_rv: bool = False,
        port: int = 0,
    ) -> None:
        self.tls = tls
        self.host = host
        self.watch_list_gate = send_initial_events
        self.settings = WatchSettings(bookmark_interval, bookmark_before_deadline,
                                      min_request_timeout)
        self.store = Store(history_size, continue_ttl=continue_ttl)
        self.faults = Faults()
        self.tokens = tokens
        self.opaque_rv = opaque_rv
        self.requests: deque[RequestRecord] = deque(maxlen=10_000)
        self.request_total = 0  # every request ever received (`requests` keeps the last 10 k)
        self.port = port
        self.pki: TestPKI | None = TestPKI() if tls else None
        self._tmpdir: str | None = None
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self._up = asyncio.Event()
        self._down = False

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024**2)
        app.router.add_get("/version", self._version)
        app.router.add_get("/version/", self._version)
        for probe in ("/healthz", "/readyz", "/livez"):
            app.router.add_get(probe, self._ok)
        app.router.add_get("/api", self._api_versions)
        app.router.add_get("/apis", self._api_groups)
        app.router.add_route("*", "/api/{tail:.*}", self._resource)
        app.router.add_route("*", "/apis/{tail:.*}", self._resource)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None,
                               handler_cancellation=True)
        await runner.setup()
        ssl_ctx = self.pki.server_context() if self.pki is not None else None
        if ssl_ctx is not None:
            ssl_ctx.sni_callback = self._tls_hello
        site = web.TCPSite(runner, self.host, self.port, ssl_context=ssl_ctx,
                           reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        self._release = asyncio.Event()
        self._runner = runner
        self._down = False

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_watches(self) -> int:
        """End every open watch cleanly (and release hung requests); returns how many."""
        self._release.set()
        self._release = asyncio.Event()  # later hangs wait for the next drop
        return self.store.close_watchers()

    async def restart(self, down_for: float = 0.0, *, wipe: bool = False) -> None:
        """Drop all connections, refuse new ones for `down_for` s, come back on the same port.

        The outage ends early when `bring_up()` is called (so a test can hold the server down
        with a long `down_for` and release it once it has seen what it wanted); `is_down` says
        whether the listener is closed. `wipe=True` comes back with an empty store whose
        revision restarts low, so a client resuming from an old resourceVersion gets "too
        large" (504) answers.
        """
        self._down = True
        self._up = asyncio.Event()
        self.drop_watches()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if down_for > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), down_for)
        if wipe:
            old = self.store
            self.store = Store(old.history_size, continue_ttl=old.continue_ttl)
        await self.start()

    def bring_up(self) -> None:
        """End a `restart()` outage now."""
        self._up.set()

    @property
    def is_down(self) -> bool:
        return self._down and self._runner is None

    # ---- client configuration ------------------------------------------------------------

    def _dir(self) -> str:
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="kfake-")
        return self._tmpdir

    def ca_file(self) -> str:
        if self.pki is None:
            raise RuntimeError("the fake runs plain HTTP; start it with tls=True")
        path = os.path.join(self._dir(), "ca.crt")
        if not os.path.exists(path):
            self.pki.write_ca(path)
        return path

    def kubeconfig_dict(self, token: str = "t", namespace: str = "default", *,
                        client_cert: bool = False) -> JsonObj:
        """A kubeconfig for `config.new_client_from_config_dict`: a bearer token, or with
        `client_cert=True` (TLS only) a client certificate and key instead."""
        cluster: JsonObj = {"server": self.url}
        user: JsonObj = {"token": token}
        if self.pki is not None:
            cluster["certificate-authority-data"] = self.pki.ca_b64
            if client_cert:
                user = {"client-certificate-data": self.pki.client_cert_b64,
                        "client-key-data": self.pki.client_key_b64}
        elif client_cert:
            raise RuntimeError("client certificates need the fake started with tls=True")
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kfake", "cluster": cluster}],
            "users": [{"name": "kfake", "user": user}],
            "contexts": [{"name": "kfake", "context": {"cluster": "kfake", "user": "kfake",
                                                        "namespace": namespace}}],
            "current-context": "kfake",
            "preferences": {},
        }

    def configuration(self, token: str = "t") -> Any:
        """A kubernetes_asyncio Configuration pointing at this server."""
        from kubernetes_asyncio.client import Configuration

        cfg = Configuration(host=self.url)
        cfg.api_key = {"BearerToken": f"Bearer {token}"}
        if self.pki is not None:
            cfg.ssl_ca_cert = self.ca_file()
            cfg.verify_ssl = True
        return cfg

    def write_incluster(self, tmpdir: str | os.PathLike[str], token: str = "t",
                        namespace: str = "default") -> dict[str, str]:
        """Service-account files in `tmpdir` and the environment in-cluster config reads.

        Returns KUBERNETES_SERVICE_HOST/PORT plus `token_filename`, `cert_filename` and
        `namespace_filename` (for `InClusterConfigLoader(token_filename=..., ...)`).
        """
        if self.pki is None:
            raise RuntimeError("in-cluster config is always https; start the fake with tls=True")
        d = Path(tmpdir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "token").write_text(token)
        (d / "namespace").write_text(namespace)
        self.pki.write_ca(d / "ca.crt")
        return {
            "KUBERNETES_SERVICE_HOST": self.host,
            "KUBERNETES_SERVICE_PORT": str(self.port),
            "token_filename": str(d / "token"),
            "cert_filename": str(d / "ca.crt"),
            "namespace_filename": str(d / "namespace"),
        }

    # ---- request handling ----------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        target = parse_path(request.path)
        watch = parse_bool(request.query.getall("watch", []))
        verb = target.verb(request.method, watch) if target else request.method.lower()
        self.request_total += 1
        self.requests.append(RequestRecord(
            request.method, request.path, request.query_string, verb,
            request.headers.get("Authorization", ""), request.headers.get("Content-Type", "")))
        plan = self.faults.plan(request.method, request.path, verb)
        request[PLAN] = plan
        extra: Pairs = list(plan.headers)
        if plan.delay > 0:
            await asyncio.sleep(plan.delay)
        act = plan.terminal
        if isinstance(act, Status):
            return error_response(act.error, extra)
        if isinstance(act, Text):
            text = web.Response(status=act.code, body=act.body.encode(), headers={
                "Content-Type": act.content_type, "X-Content-Type-Options": "nosniff"})
            if act.retry_after > 0:
                text.headers["Retry-After"] = str(act.retry_after)
            for k, v in extra:
                text.headers.add(k, v)
            return text
        if isinstance(act, Hang):
            await self._release.wait()
            raise asyncio.CancelledError()
        if isinstance(act, Reset):
            abort(request.transport)
            raise asyncio.CancelledError()
        if self.tokens is not None and not self._authenticated(request):
            return error_response(errors.unauthorized(), extra)
        if isinstance(act, Forbid):
            if target is None:
                return error_response(errors.status(403, "Forbidden", "forbidden"), extra)
            return error_response(errors.forbidden_request(
                act.user, verb, target.res.plural, target.res.group, target.namespace or ""),
                extra)
        try:
            resp = await handler(request)
        except ApiError as e:
            warn = target.res.warning if target else None
            return error_response(e, ([("Warning", warn)] if warn else []) + extra)
        except web.HTTPException as e:
            # aiohttp's own answers (unknown path, wrong method) as the real server's Status.
            reason = {404: "NotFound", 405: "MethodNotAllowed"}.get(e.status, "")
            message = ("the server could not find the requested resource" if e.status == 404
                       else e.reason)
            return error_response(errors.status(e.status, reason, message), extra)
        except Exception as e:  # a bug in the fake: log it, answer as the real server would
            log.exception("kfake: unhandled error for %s %s", request.method, request.path)
            return error_response(errors.internal_error(repr(e)), extra)
        if not resp.prepared:
            for k, v in plan.headers:
                resp.headers.add(k, v)
            if plan.cut_body and isinstance(resp, web.Response):
                await self._cut(request, resp)
        return resp

    async def _cut(self, request: web.Request, resp: web.Response) -> None:
        body = resp.body if isinstance(resp.body, bytes) else b""
        out = web.StreamResponse(status=resp.status, headers=resp.headers)
        out.content_length = len(body)
        await out.prepare(request)
        await out.write(body[: len(body) // 2])
        abort(request.transport)
        raise asyncio.CancelledError()

    def _authenticated(self, request: web.Request) -> bool:
        """A bearer token in `tokens`, or a client certificate the TLS layer verified."""
        assert self.tokens is not None
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.tokens:
            return True
        transport = request.transport
        return transport is not None and bool(transport.get_extra_info("peercert"))

    def _tls_hello(self, sock: Any, server_name: str | None, ctx: Any) -> int | None:
        # Called for every ClientHello, with or without SNI (clients send none for an IP).
        if self.faults.take_tls_failure():
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        return None

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _version(self, request: web.Request) -> web.Response:
        return json_response(SERVER_VERSION)

    async def _api_versions(self, request: web.Request) -> web.Response:
        return json_response({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": f"{self.host}:{self.port}"}],
        })

    async def _api_groups(self, request: web.Request) -> web.Response:
        groups: dict[str, list[str]] = {}
        for r in RESOURCES:
            if r.group and r.version not in groups.setdefault(r.group, []):
                groups[r.group].append(r.version)
        return json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
            for g, vs in sorted(groups.items())]})

    def _resource_list(self, group: str, version: str) -> web.Response | None:
        rows = [r for r in RESOURCES if r.group == group and r.version == version]
        if not rows:
            return None
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        out = []
        for r in rows:
            out.append({"name": r.plural, "singularName": r.kind.lower(),
                        "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs})
            if r.has_status:
                out.append({"name": f"{r.plural}/status", "singularName": "",
                            "namespaced": r.namespaced, "kind": r.kind,
                            "verbs": ["get", "patch", "update"]})
        gv = f"{group}/{version}" if group else version
        return json_response({"kind": "APIResourceList", "apiVersion": "v1",
                              "groupVersion": gv, "resources": out})

    async def _resource(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET" and parts[0] == "api" and len(parts) == 2:
            found = self._resource_list("", parts[1])
            if found is not None:
                return found
        if request.method == "GET" and parts[0] == "apis" and len(parts) == 3:
            found = self._resource_list(parts[1], parts[2])
            if found is not None:
                return found
        target = parse_path(request.path)
        if target is None:
            raise errors.status(404, "NotFound", "the server could not find the requested resource")
        res = target.res
        headers = {"Warning": res.warning} if res.warning else {}
        q = request.query
        store = self.store
        ns = target.namespace if res.namespaced else ""
        if request.method == "GET" and not target.name:
            if parse_bool(q.getall("watch", [])):
                return await self._watch(request, target, headers)
            return self._list(target, q, headers)
        if not target.name:
            if request.method == "POST":
                body = await self._body(request, json_only=True)
                created = store.create(res, body, ns or None) if res.namespaced else \
                    store.create(res, body, "")
                return json_response(self._out(created), 201, headers)
            raise errors.method_not_allowed(f"{request.method} is not supported on collections")
        if target.subresource and (target.subresource != "status" or not res.has_status):
            raise errors.status(404, "NotFound", "the server could not find the requested resource")
        assert ns is not None
        if request.method == "GET":
            return json_response(self._out(store.read(res, ns, target.name)), 200, headers)
        if request.method == "PUT":
            body = await self._body(request, json_only=True)
            existed = store.get(res, ns, target.name) is not None
            out = store.update(res, body, ns, name=target.name, subresource=target.subresource)
            return json_response(self._out(out),
                                 200 if existed or target.subresource else 201, headers)
        if request.method == "PATCH":
            ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if ctype not in (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH):
                if ctype == APPLY_PATCH:
                    raise errors.status(415, "UnsupportedMediaType",
                                        "the fake does not implement server-side apply")
                raise errors.unsupported_media_type(ctype)
            patch = await self._body(request, json_only=False)
            out = store.patch(res, ns, target.name, patch, ctype, subresource=target.subresource)
            return json_response(self._out(out), 200, headers)
        if request.method == "DELETE":
            body = await self._body(request, json_only=False, optional=True)
            pre = body.get("preconditions") if isinstance(body, dict) else None
            out = store.delete(res, ns, target.name, preconditions=pre)
            if res.return_deleted:
                return json_response(self._out(out), 200, headers)
            details: JsonObj = {"name": target.name, "group": res.group, "kind": res.plural,
                                "uid": out["metadata"]["uid"]}
            if not res.group:
                del details["group"]
            return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Success", "details": details}, 200, headers)
        raise errors.method_not_allowed(f"{request.method} is not supported")

    def _out(self, obj: JsonObj) -> JsonObj:
        return rvcodec.obj_out(obj) if self.opaque_rv else obj

    def _rv_param(self, q: Any) -> str:
        rv = str(q.get("resourceVersion", ""))
        return rvcodec.decode(rv) if self.opaque_rv else rv

    async def _body(self, request: web.Request, *, json_only: bool,
                    optional: bool = False) -> Any:
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if json_only and ctype not in ("application/json", ""):
            raise errors.unsupported_media_type(ctype)
        if "dryRun" in request.query:
            raise errors.bad_request("the fake does not implement dryRun")
        raw = await request.read()
        if not raw.strip():
            if optional:
                return None
            raise errors.bad_request("the body of the request was empty")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise errors.bad_request(
                f"couldn't get version/kind; json parse error: {e}") from None
        return rvcodec.body_in(body) if self.opaque_rv else body

    def _list(self, target: Target, q: Any, headers: dict[str, str]) -> web.Response:
        res = target.res
        causes = _list_option_causes(q, False, self.watch_list_gate)
        if causes:
            raise errors.invalid_list_options(causes)
        cont = q.get("continue", "")
        rv = self._rv_param(q)
        if cont and rv:
            raise errors.bad_request(
                "specifying resource version is not allowed when using continue")
        limit = _int_param(q, "limit")
        match, selected = self._predicate(target, q)
        list_rv, items, token, remaining = self.store.list_page(
            res, target.namespace if res.namespaced else None, match=match,
            resource_version=rv, exact=q.get("resourceVersionMatch") == "Exact",
            limit=max(0, limit), continue_token=cont, selector_used=selected)
        meta: JsonObj = {"resourceVersion": rvcodec.encode(list_rv) if self.opaque_rv
                         else str(list_rv)}
        if token:
            meta["continue"] = token
            if remaining is not None:
                meta["remainingItemCount"] = remaining
        return json_response({"kind": res.list_kind, "apiVersion": res.api_version,
                              "metadata": meta,
                              "items": [_strip_type(self._out(o)) for o in items]},
                             200, headers)

    def _predicate(self, target: Target, q: Any) -> tuple[Callable[[JsonObj], bool], bool]:
        ls, fs = q.get("labelSelector", ""), q.get("fieldSelector", "")
        try:
            return predicate(ls, fs, target.res.plural), bool(ls.strip() or fs.strip())
        except SelectorError as e:
            raise errors.bad_request(str(e)) from None

    async def _watch(self, request: web.Request, target: Target,
                     headers: dict[str, str]) -> web.StreamResponse:
        q = request.query
        causes = _list_option_causes(q, True, self.watch_list_gate)
        if causes:
            raise errors.invalid_list_options(causes)
        rv = self._rv_param(q)
        if rv not in ("", "0"):
            try:
                if int(rv) < 0:
                    raise ValueError(rv)
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {rv}") from None
        match, _ = self._predicate(target, q)
        sie = parse_bool(q.getall("sendInitialEvents", [])) if "sendInitialEvents" in q else None
        opts = WatchRequest(rv, parse_bool(q.getall("allowWatchBookmarks", [])),
                            max(0, _int_param(q, "timeoutSeconds")), sie)
        plan = request[PLAN]
        return await serve_watch(request, self.store, target.res,
                                 target.namespace if target.res.namespaced else None, match,
                                 opts, self.settings, plan.watch,
                                 list(headers.items()) + plan.headers, render=self._out,
                                 view=lambda obj: Store.view(target.res, obj))
