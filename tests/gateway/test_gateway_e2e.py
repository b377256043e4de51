"""Upstream GATEWAY-HTTP core conformance tests over real sockets: the fake API server holds
the manifests, `pylb run --gateway-api` serves them (one process for the whole module, as
the suite runs against one cluster: each test applies its manifests, waits for its
expectations to hold, and removes them), and echo backends say who answered."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.gateway.harness import (
    APP,
    INFRA,
    RESPONSE_HEADER_MODIFIER_CASES,
    WEB,
    echo_set_header,
    joined,
    judge,
    read_manifests,
    tls_secret,
)
from tests.gateway.live import GROUP, Live, Response
from tests.kfake import FakeApiServer

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

V1, V2, V3 = "infra-backend-v1", "infra-backend-v2", "infra-backend-v3"


@pytest.fixture(params=[2])
async def live(request: pytest.FixtureRequest, tmp_path: Path,
               no_proxy_env: None) -> AsyncIterator[Live]:
    async with FakeApiServer(bookmark_interval=0.5) as api:
        lv = Live(api, tmp_path, workers=request.param)
        await lv.start()
        try:
            yield lv
        finally:
            await lv.stop()


def reached(r: Response, backend: str, ns: str = INFRA) -> None:
    assert r.status == 200, (r.status, r.body[:200])
    echo = r.echo
    assert echo["namespace"] == ns and echo["pod"].startswith(backend + "-pod"), echo


def cond(status: dict[str, object], ctype: str) -> tuple[object, object, object]:
    for c in status.get("conditions", []):  # type: ignore[union-attr]
        if c["type"] == ctype:  # type: ignore[index]
            return c["status"], c["reason"], c.get("observedGeneration")  # type: ignore[index]
    raise AssertionError(f"no {ctype} in {status}")


def route_parent(lv: Live, route: str, gateway: str = "same-namespace",
                 ns: str = INFRA) -> dict[str, tuple[object, object, object]]:
    for p in lv.status("HTTPRoute", route, ns).get("parents", []):
        if p["parentRef"]["name"] == gateway:
            return {c["type"]: (c["status"], c["reason"], c.get("observedGeneration"))
                    for c in p["conditions"]}
    raise AssertionError(f"{route} has no parent status for {gateway}")


async def test_gateway_conformance_live(live: Live) -> None:
    # the base: GatewayClass accepted, each Gateway programmed on its own address
    async def base() -> None:
        assert cond(live.status("GatewayClass", "pylb", ""), "Accepted")[:2] == \
            ("True", "Accepted")
        for gw in ("same-namespace", "all-namespaces", "backend-namespaces"):
            st = live.status("Gateway", gw)
            assert cond(st, "Accepted")[:2] == ("True", "Accepted")
            assert cond(st, "Programmed") == ("True", "Programmed", 1)
        addrs = {live.address(g) for g in ("same-namespace", "all-namespaces",
                                           "backend-namespaces")}
        assert len(addrs) == 3
        # every worker (two: pylb's default on a 2-core node) binds every listener
        for a in addrs:
            assert a is not None and live.sockets_listening(a, live.gw_port) == 2, a
    await live.eventually(base, 30)

    # a worker that dies is restarted and binds the Gateway listeners again
    first, *_ = pids = live.worker_pids()
    assert len(pids) == 2
    live.kill_worker(first)

    async def restarted() -> None:
        now = live.worker_pids()
        assert first not in now and len(now) == 2, now
        await base()
    await live.eventually(restarted, 30)

    # HTTPRouteHTTPSListener: TLS terminated with the Secret's certificate (the client
    # trusts only it and checks the name), routes by hostname behind it
    made = await live.apply("httproute-https-listener.yaml")
    https_gw = "same-namespace-with-https-listener"
    ca = base64.b64decode(tls_secret(INFRA, "tls-validity-checks-certificate")["data"]["tls.crt"])

    async def https() -> None:
        for route in ("httproute-https-test", "httproute-https-test-no-hostname"):
            assert route_parent(live, route, https_gw)["Accepted"][:2] == ("True", "Accepted")
            assert route_parent(live, route, https_gw)["ResolvedRefs"][:2] == \
                ("True", "ResolvedRefs")
        r = await live.tls_request(https_gw, "/", "example.org", ca)
        reached(r, V1)
        assert "strict-transport-security" not in r.headers  # --hsts is the TLS frontend's
        assert (await live.tls_request(https_gw, "/", "unknown-example.org", ca)).status == 404
        reached(await live.tls_request(https_gw, "/", "second-example.org", ca), V2)
    await live.eventually(https)
    live.remove(made)

    # GatewayModifyListeners: a listener added to a Gateway serves, one removed stops
    made = await live.apply("gateway-modify-listeners.yaml")

    def listener_status(gw: str) -> dict[str, tuple[bool, bool, int]]:
        st = live.status("Gateway", gw)
        obj = live.api.store.get(f"gateways.{GROUP}", INFRA, gw)
        assert obj is not None
        gen = obj["metadata"]["generation"]
        assert all(c["observedGeneration"] == gen for c in st["conditions"])  # latest
        return {lst["name"]: (cond(lst, "Accepted")[0] == "True",
                              cond(lst, "ResolvedRefs")[0] == "True", lst["attachedRoutes"])
                for lst in st.get("listeners", [])}

    async def before() -> None:
        assert listener_status("gateway-add-listener") == {"https": (True, True, 1)}
        assert listener_status("gateway-remove-listener") == {
            "https": (True, True, 1), "http": (True, True, 1)}
        r = await live.tls_request("gateway-remove-listener", "/", "secure.test.com", ca)
        reached(r, V1)
    await live.eventually(before)
    add = live.api.store.get(f"gateways.{GROUP}", INFRA, "gateway-add-listener")
    assert add is not None
    add["spec"]["listeners"].append({"name": "http", "port": 80, "protocol": "HTTP",
                                     "hostname": "data.test.com",
                                     "allowedRoutes": {"namespaces": {"from": "All"}}})
    live.api.store.update(f"gateways.{GROUP}", add)
    remove = live.api.store.get(f"gateways.{GROUP}", INFRA, "gateway-remove-listener")
    assert remove is not None
    remove["spec"]["listeners"] = [x for x in remove["spec"]["listeners"] if x["name"] == "http"]
    live.api.store.update(f"gateways.{GROUP}", remove)

    async def after() -> None:
        assert listener_status("gateway-add-listener") == {
            "https": (True, True, 1), "http": (True, True, 1)}
        assert listener_status("gateway-remove-listener") == {"http": (True, True, 1)}
        reached(await live.request("gateway-add-listener", "/", host="data.test.com"), V1)
        try:
            await live.tls_request("gateway-remove-listener", "/", "secure.test.com", ca)
        except ConnectionRefusedError:
            return  # the removed listener's port is closed
        raise AssertionError("the removed HTTPS listener still answers")
    await live.eventually(after)
    live.remove(made)

    # SNI picks the listener's own certificate (two Secrets on one port), and a rotated
    # Secret is served from the next handshake on
    a_secret = tls_secret(INFRA, "sni-a", ("a.example",))
    b_secret = tls_secret(INFRA, "sni-b", ("b.example",))
    live.api.store.create("secrets", dict(a_secret))
    live.api.store.create("secrets", dict(b_secret))

    def https_listener(name: str, secret: str) -> dict[str, object]:
        return {"name": name, "port": 443, "protocol": "HTTPS", "hostname": name,
                "tls": {"certificateRefs": [{"name": secret}]}}
    live.api.store.create(f"gateways.{GROUP}", {
        "apiVersion": f"{GROUP}/v1", "kind": "Gateway",
        "metadata": {"name": "sni", "namespace": INFRA},
        "spec": {"gatewayClassName": "pylb",
                 "listeners": [https_listener("a.example", "sni-a"),
                               https_listener("b.example", "sni-b")]}})
    live.api.store.create(f"httproutes.{GROUP}", {
        "apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute",
        "metadata": {"name": "sni", "namespace": INFRA},
        "spec": {"parentRefs": [{"name": "sni"}],
                 "rules": [{"backendRefs": [{"name": V1, "port": 8080}]}]}})

    def crt(secret: dict[str, object]) -> bytes:
        return base64.b64decode(secret["data"]["tls.crt"])  # type: ignore[index]

    async def sni() -> None:
        reached(await live.tls_request("sni", "/", "a.example", crt(a_secret)), V1)
        reached(await live.tls_request("sni", "/", "b.example", crt(b_secret)), V1)
        try:  # a.example's name with b's certificate as the only trusted one: refused
            await live.tls_request("sni", "/", "a.example", crt(b_secret))
        except ssl.SSLCertVerificationError:
            return
        raise AssertionError("a.example was not served a.example's certificate")
    await live.eventually(sni)
    rotated = tls_secret(INFRA, "sni-a", ("a.example", "rotated"))
    current = live.api.store.get("secrets", INFRA, "sni-a")
    assert current is not None
    live.api.store.update("secrets", {**current, "data": rotated["data"]})

    async def rotation() -> None:
        reached(await live.tls_request("sni", "/", "a.example", crt(rotated)), V1)
    took = await live.eventually(rotation)
    print(f"a rotated Secret was served after {took * 1000:.0f} ms")
    live.remove([(f"httproutes.{GROUP}", INFRA, "sni"), (f"gateways.{GROUP}", INFRA, "sni"),
                 ("secrets", INFRA, "sni-a"), ("secrets", INFRA, "sni-b")])

    # HTTPRouteSimpleSameNamespace
    made = await live.apply("httproute-simple-same-namespace.yaml")

    async def simple() -> None:
        assert route_parent(live, "gateway-conformance-infra-test")["Accepted"][:2] == \
            ("True", "Accepted")
        assert route_parent(live, "gateway-conformance-infra-test")["ResolvedRefs"][:2] == \
            ("True", "ResolvedRefs")
        reached(await live.request("same-namespace", "/"), V1)
    await live.eventually(simple)
    live.remove(made)

    # HTTPRouteMatching
    made = await live.apply("httproute-matching.yaml")

    async def matching() -> None:
        reached(await live.request("same-namespace", "/"), V1)
        reached(await live.request("same-namespace", "/example"), V1)
        reached(await live.request("same-namespace", "/", headers={"Version": "one"}), V1)
        reached(await live.request("same-namespace", "/v2"), V2)
        reached(await live.request("same-namespace", "/v2/example"), V2)
        reached(await live.request("same-namespace", "/", headers={"Version": "two"}), V2)
        reached(await live.request("same-namespace", "/v2example"), V1)
        reached(await live.request("same-namespace", "/foo/v2/example"), V1)
    await live.eventually(matching)
    live.remove(made)

    # HTTPRouteExactPathMatching
    made = await live.apply("httproute-exact-path-matching.yaml")

    async def exact() -> None:
        reached(await live.request("same-namespace", "/one"), V1)
        reached(await live.request("same-namespace", "/two"), V2)
        for p in ("/", "/one/example", "/two/", "/Two"):
            assert (await live.request("same-namespace", p)).status == 404, p
    await live.eventually(exact)
    live.remove(made)

    # HTTPRouteCrossNamespace
    made = await live.apply("httproute-cross-namespace.yaml")

    async def cross() -> None:
        reached(await live.request("backend-namespaces", "/"), "web-backend", WEB)
    await live.eventually(cross)
    live.remove(made)

    # HTTPRoutePartiallyInvalidViaInvalidReferenceGrant: 200 for the valid rule, 500 for
    # the one whose backendRef no grant allows
    made = await live.apply("httproute-partially-invalid-via-invalid-reference-grant.yaml")

    async def partial() -> None:
        assert route_parent(live, "invalid-reference-grant")["ResolvedRefs"][:2] == \
            ("False", "RefNotPermitted")
        reached(await live.request("same-namespace", "/"), "app-backend-v1", APP)
        assert (await live.request("same-namespace", "/v2")).status == 500
    await live.eventually(partial)
    live.remove(made)

    # HTTPRouteRequestHeaderModifier (a few of its cases): what the backend received
    made = await live.apply("httproute-request-header-modifier.yaml")

    async def modifier() -> None:
        r = await live.request("same-namespace", "/add",
                               headers={"X-Header-Add": "some-other-value"})
        reached(r, V1)
        assert r.echo["headers"]["X-Header-Add"] == ["some-other-value,add-appends-values"]
        r = await live.request("same-namespace", "/remove", headers={"X-Header-Remove": "v"})
        assert "X-Header-Remove" not in r.echo["headers"]
        r = await live.request("same-namespace", "/set", headers={"X-Header-Set": "x"})
        assert r.echo["headers"]["X-Header-Set"] == ["set-overwrites-values"]
    await live.eventually(modifier)
    live.remove(made)

    # HTTPRouteResponseHeaderModifier (extended): every case of the upstream test, over
    # HTTP/1.1 — what the client received, and in the last case what the backend received
    made = await live.apply("httproute-response-header-modifier.yaml")

    async def response_modifier() -> None:
        for case in RESPONSE_HEADER_MODIFIER_CASES:
            r = await live.request("same-namespace", case.path, headers={
                **case.request, "X-Echo-Set-Header": echo_set_header(case.backend_sets)})
            reached(r, V1)
            judge(r.headers, case.want, case.absent)
            judge(joined((k, ",".join(v)) for k, v in r.echo["headers"].items()),
                  case.want_request, case.absent_request)
    await live.eventually(response_modifier)
    live.remove(made)

    # The same route on an HTTPS listener, with curl: over HTTP/2 (ALPN h2, the HTTP/2
    # stream's response path) and over HTTP/1.1
    route = read_manifests("httproute-response-header-modifier.yaml")[0]
    route["metadata"]["name"] = "response-header-modifier-https"
    route["spec"]["parentRefs"] = [{"name": https_gw, "sectionName": "https"}]
    route["spec"]["hostnames"] = ["example.org"]
    route["spec"]["rules"].append({  # and pylb's own answers over HTTP/2: a redirect
        "matches": [{"path": {"type": "PathPrefix", "value": "/go"}}],
        "filters": [{"type": "RequestRedirect",
                     "requestRedirect": {"hostname": "example.net", "statusCode": 301}}]})
    live.api.store.create(f"httproutes.{GROUP}", route)

    async def response_modifier_h2() -> None:
        for case in RESPONSE_HEADER_MODIFIER_CASES:
            headers = {**case.request, "X-Echo-Set-Header": echo_set_header(case.backend_sets)}
            r = await live.curl(https_gw, case.path, "example.org", ca, headers=headers)
            assert r.version == "HTTP/2", r.version
            reached(r, V1)
            judge(r.headers, case.want, case.absent)
            judge(joined((k, ",".join(v)) for k, v in r.echo["headers"].items()),
                  case.want_request, case.absent_request)
        r = await live.curl(https_gw, "/go/x?y=1", "example.org", ca)
        assert (r.version, r.status, r.headers["location"]) == \
            ("HTTP/2", 301, "https://example.net/go/x?y=1")
        r = await live.curl(https_gw, "/nowhere", "example.org", ca)
        assert (r.version, r.status) == ("HTTP/2", 404)
        r = await live.curl(https_gw, "/multiple", "example.org", ca, http2=False,
                            headers={"X-Echo-Set-Header": "X-Header-Remove-1:v"})
        assert r.version == "HTTP/1.1" and r.headers["x-header-set-1"] == "header-set-1"
        assert "x-header-remove-1" not in r.headers
    await live.eventually(response_modifier_h2)
    live.remove([(f"httproutes.{GROUP}", INFRA, "response-header-modifier-https")])

    # HTTPRouteRedirectHostAndStatus
    made = await live.apply("httproute-redirect-host-and-status.yaml")

    async def redirect() -> None:
        r = await live.request("same-namespace", "/hostname-redirect")
        assert (r.status, r.headers["location"]) == (302, "http://example.org/hostname-redirect")
        r = await live.request("same-namespace", "/host-and-status")
        assert (r.status, r.headers["location"]) == (301, "http://example.org/host-and-status")
    await live.eventually(redirect)
    live.remove(made)

    # HTTPRouteServiceTypes: a Service with manual EndpointSlices, a headless Service with
    # a selector, a headless one with manual slices: all reach infra-backend-v1
    made = await live.apply("httproute-service-types.yaml")

    async def service_types() -> None:
        for path in ("/manual-endpointslices", "/headless",
                     "/headless-manual-endpointslices"):
            reached(await live.request("same-namespace", path), V1)
    await live.eventually(service_types)
    live.remove(made)

    # HTTPRouteReferenceGrant: allowed with the grant, 500 once it is deleted
    made = await live.apply("httproute-reference-grant.yaml")

    async def granted() -> None:
        reached(await live.request("same-namespace", "/"), "web-backend", WEB)
    await live.eventually(granted)
    live.api.store.delete(f"referencegrants.{GROUP}", WEB, "reference-grant")

    async def revoked() -> None:
        assert (await live.request("same-namespace", "/")).status == 500
        assert route_parent(live, "reference-grant")["ResolvedRefs"][:2] == \
            ("False", "RefNotPermitted")
    await live.eventually(revoked)
    live.remove(made)

    # HTTPRouteObservedGenerationBump: a spec change moves every condition's
    # observedGeneration to the new generation; and the changed route reaches traffic
    made = await live.apply("httproute-observed-generation-bump.yaml")

    async def gen1() -> None:
        assert {c[2] for c in route_parent(live, "observed-generation-bump").values()} == {1}
        reached(await live.request("same-namespace", "/"), V1)
    await live.eventually(gen1)
    route = live.api.store.get(f"httproutes.{GROUP}", INFRA, "observed-generation-bump")
    assert route is not None
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = V2
    live.api.store.update(f"httproutes.{GROUP}", route)

    async def gen2() -> None:
        assert {c[2] for c in route_parent(live, "observed-generation-bump").values()} == {2}
        reached(await live.request("same-namespace", "/"), V2)
    took = await live.eventually(gen2)
    print(f"route change reached traffic and status in {took * 1000:.0f} ms")
    # a Service change (its EndpointSlice now names infra-backend-v3's pod) reaches the
    # same Gateway route through the Service table
    v3_port = next(p[3] for p in live.pods if p[1].get("app") == V3)
    eps = live.api.store.get("endpointslices", INFRA, f"{V2}-slice")
    assert eps is not None
    v2_port = eps["ports"][0]["port"]
    eps["ports"][0]["port"] = v3_port
    eps["endpoints"][0]["targetRef"]["name"] = f"{V3}-pod-0"
    live.api.store.update("endpointslices", eps)

    async def service_change() -> None:
        reached(await live.request("same-namespace", "/"), V3)
    took = await live.eventually(service_change)
    print(f"service change reached the Gateway route's traffic in {took * 1000:.0f} ms")
    eps = live.api.store.get("endpointslices", INFRA, f"{V2}-slice")
    assert eps is not None
    eps["ports"][0]["port"] = v2_port
    eps["endpoints"][0]["targetRef"]["name"] = f"{V2}-pod-0"
    live.api.store.update("endpointslices", eps)

    async def restored() -> None:
        reached(await live.request("same-namespace", "/"), V2)
    await live.eventually(restored)
    live.remove(made)

    # HTTPRouteInvalidBackendRefUnknownKind: accepted, ResolvedRefs False, 500
    made = await live.apply("httproute-invalid-backendref-unknown-kind.yaml")

    async def unknown_kind() -> None:
        assert route_parent(live, "invalid-backend-ref-unknown-kind")["ResolvedRefs"][:2] == \
            ("False", "InvalidKind")
        assert (await live.request("same-namespace", "/v2")).status == 500
    await live.eventually(unknown_kind)
    live.remove(made)

    # HTTPRouteRewritePath, HTTPRouteRewriteHost (extended): what the backend received
    made = await live.apply("httproute-rewrite-path.yaml")
    made += await live.apply("httproute-rewrite-host.yaml")

    async def rewrites() -> None:
        r = await live.request("same-namespace", "/prefix/one/two")
        reached(r, V1)
        assert r.echo["path"] == "/one/two"
        r = await live.request("same-namespace", "/strip-prefix")
        assert r.echo["path"] == "/"
        r = await live.request("same-namespace", "/two", host="rewrite.example")
        reached(r, V2)
        assert r.echo["host"] == "example.org"
    await live.eventually(rewrites)
    live.remove(made)

    # HTTPRouteBackendProtocolWebSocket (extended): a WebSocket through the Gateway to the
    # Service port whose appProtocol is kubernetes.io/ws; text and binary frames echoed
    made = await live.apply("httproute-backend-protocol-websocket.yaml")

    async def websocket() -> None:
        address = live.address("same-namespace")
        try:
            async with ws_connect(f"ws://{address}:{live.gw_port}/ws", open_timeout=5,
                                  close_timeout=2,
                                  origin=Origin("ws://gateway/websocket")) as ws:
                await ws.send("Websocket Support!")
                assert await asyncio.wait_for(ws.recv(), 5) == "Websocket Support!"
                await ws.send(bytes([1, 2, 3, 4, 5, 6, 7]))
                assert await asyncio.wait_for(ws.recv(), 5) == bytes([1, 2, 3, 4, 5, 6, 7])
        except InvalidStatus as e:  # e.g. 404 until the route is served: not yet
            raise AssertionError(str(e)) from None
    await live.eventually(websocket)
    live.remove(made)

    # HTTPRouteBackendProtocolH2C (extended): HTTP/2 with prior knowledge to the Gateway
    # (pylb runs with --h2c), h2c to the Service port whose appProtocol is kubernetes.io/h2c
    made = await live.apply("httproute-backend-protocol-h2c.yaml")

    async def h2c() -> None:
        r = await live.curl("same-namespace", "/", "h2c.example", None)
        assert r.version == "HTTP/2", r.version
        reached(r, V1)
        assert r.echo["proto"] == "HTTP/2.0"  # the h2c port answered
    await live.eventually(h2c)
    live.remove(made)

    # HTTPRoute307Redirect, HTTPRouteRedirectPort (extended)
    made = await live.apply("httproute-307-redirect.yaml")
    made += await live.apply("httproute-redirect-port.yaml")

    async def redirects() -> None:
        r = await live.request("same-namespace", "/temporary", host="gw.example")
        assert (r.status, r.headers["location"]) == (307, "http://gw.example/temporary")
        r = await live.request("same-namespace", "/port", host="gw.example")
        assert (r.status, r.headers["location"]) == (302, "http://gw.example:8083/port")
    await live.eventually(redirects)
    live.remove(made)


@pytest.mark.parametrize("live", [1], indirect=True)
async def test_one_worker_serves_gateways_in_the_controller(live: Live) -> None:
    made = await live.apply("httproute-simple-same-namespace.yaml")

    async def simple() -> None:
        address = live.address("same-namespace")
        assert address is not None and live.sockets_listening(address, live.gw_port) == 1
        reached(await live.request("same-namespace", "/"), V1)
    await live.eventually(simple, 30)
    assert live.worker_pids() == []
    live.remove(made)
