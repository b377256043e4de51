"""The README's conformance table says exactly what is ported: one row per upstream test of
the GATEWAY-HTTP profile (core, and the Gateway and HTTPRoute extended tests), "pass" in
the router column exactly when test_conformance_http.py names that test, "pass" in the real
sockets column exactly when test_gateway_e2e.py does, and a reason for every test ported
nowhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent

# The ShortNames of conformance/tests/*.go at tests/gateway/conformance/UPSTREAM_COMMIT whose
# features are Gateway, HTTPRoute and ReferenceGrant only (core) or add a Gateway/HTTPRoute
# extended feature; GRPCRoute, TLSRoute, TCPRoute, UDPRoute, Mesh, BackendTLSPolicy and
# ListenerSet tests belong to other profiles.
CORE = [
    "GatewayClassObservedGenerationBump", "GatewayInvalidParametersRef",
    "GatewayInvalidRouteKind", "GatewayInvalidTLSConfiguration",
    "GatewayListenerUnsupportedProtocol", "GatewayModifyListeners", "GatewayNameMaximumLength",
    "GatewayObservedGenerationBump", "GatewaySecretInvalidReferenceGrant",
    "GatewaySecretMissingReferenceGrant", "GatewaySecretReferenceGrantAllInNamespace",
    "GatewaySecretReferenceGrantSpecific", "GatewayWithAttachedRoutes",
    "HTTPRouteCrossNamespace", "HTTPRouteExactPathMatching", "HTTPRouteHTTPSListener",
    "HTTPRouteHeaderMatching", "HTTPRouteHostnameIntersection",
    "HTTPRouteInvalidBackendRefUnknownKind", "HTTPRouteInvalidCrossNamespaceBackendRef",
    "HTTPRouteInvalidCrossNamespaceParentRef", "HTTPRouteInvalidNonExistentBackendRef",
    "HTTPRouteInvalidParentRefNotMatchingSectionName", "HTTPRouteInvalidReferenceGrant",
    "HTTPRouteListenerHostnameMatching", "HTTPRouteMatching", "HTTPRouteMatchingAcrossRoutes",
    "HTTPRouteMultipleGateways", "HTTPRouteNoBackendRefs", "HTTPRouteObservedGenerationBump",
    "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant", "HTTPRoutePathMatchOrder",
    "HTTPRouteRedirectHostAndStatus", "HTTPRouteReferenceGrant",
    "HTTPRouteRequestHeaderModifier", "HTTPRouteServiceTypes", "HTTPRouteSimpleSameNamespace",
    "HTTPRouteWeight",
]
EXTENDED = [
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayFrontendInvalidDefaultClientCertificateValidation", "GatewayHTTPListenerIsolation",
    "GatewayInfrastructure", "GatewayInvalidFrontendClientCertificateValidation",
    "GatewayOptionalAddressValue", "GatewayStaticAddresses",
    "GatewayWithAttachedRoutesWithPort8080", "HTTPRoute303Redirect", "HTTPRoute307Redirect",
    "HTTPRoute308Redirect", "HTTPRouteBackendProtocolH2C", "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModifier", "HTTPRouteBackendRequestRedirect",
    "HTTPRouteBackendURLRewrite", "HTTPRouteCORS",
    "HTTPRouteHTTPSListenerDetectMisdirectedRequests",
    "HTTPRouteInvalidParentRefNotMatchingListenerPort",
    "HTTPRouteInvalidParentRefSectionNameNotMatchingPort", "HTTPRouteListenerPortMatching",
    "HTTPRouteMethodMatching", "HTTPRouteNamedRule", "HTTPRouteQueryParamMatching",
    "HTTPRouteRedirectPath", "HTTPRouteRedirectPort", "HTTPRouteRedirectPortAndScheme",
    "HTTPRouteRedirectScheme", "HTTPRouteRequestHeaderModifierBackendWeights",
    "HTTPRouteRequestMirror", "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror", "HTTPRouteResponseHeaderModifier", "HTTPRouteRetry",
    "HTTPRouteRetryConnectionError", "HTTPRouteRetryWithTimeouts", "HTTPRouteRewriteHost",
    "HTTPRouteRewritePath", "HTTPRouteTimeoutBackendRequest", "HTTPRouteTimeoutRequest",
]


def names(text: str, name: str) -> bool:
    """`name` appears whole (not as the start of a longer name) in `text`."""
    return re.search(rf"(?<![A-Za-z0-9]){name}(?![A-Za-z0-9])", text) is not None


def readme_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| upstream test | profile | router | real sockets | note |")
    rows: dict[str, list[str]] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 5 and cells[0] not in rows, line
        rows[cells[0]] = cells[1:]
    return rows


def test_the_readme_conformance_table_is_what_the_tests_port() -> None:
    rows = readme_rows()
    assert list(rows) == CORE + EXTENDED  # every upstream test, once, in this order
    router = (HERE / "test_conformance_http.py").read_text()
    live = (HERE / "test_gateway_e2e.py").read_text()
    for name, (profile, by_router, by_sockets, note) in rows.items():
        assert profile == ("core" if name in CORE else "extended"), name
        assert by_router == ("pass" if names(router, name) else "—"), name
        assert by_sockets == ("pass" if names(live, name) else "—"), name
        if by_router == by_sockets == "—":
            assert note.startswith("skipped: "), name  # and says why
        else:
            assert "skipped" not in note, name
    # every core test is ported somewhere
    assert not [n for n in CORE if rows[n][1] == rows[n][2] == "—"]
