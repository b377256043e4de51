"""The router's Ingress matching: host AND path, Exact/Prefix, and their precedence, as a
table of (routes, request) → route."""

from __future__ import annotations

import pytest

from proxy.http.routing import Router
from pylb.model import HttpRoute, PathMatch

E, P, D, L = PathMatch.EXACT, PathMatch.PREFIX, PathMatch.DEFAULT, PathMatch.LEGACY


def r(name: str, path: str, host: str | None = None, match: PathMatch = P) -> HttpRoute:
    return HttpRoute(name, path, "b", host, strip_prefix=match is L, match=match)


ROUTES = (
    r("exact-host-root", "/", "foo.example.com"),
    r("exact-host-api", "/api", "foo.example.com"),
    r("exact-host-api-exact", "/api", "foo.example.com", E),
    r("wild-root", "/", "*.example.com"),
    r("wild-deep", "/a/b/c", "*.example.com"),
    r("any-host-docs", "/docs", None),
    r("any-host-docs-exact-slash", "/docs/", None, E),
    r("legacy-svc", "/svc", None, L),
    r("default", "/", None, D),
)

# (host, path, expected route name or None)
CASES = [
    # exact host before wildcard, whatever the paths' lengths
    ("foo.example.com", "/a/b/c", "exact-host-root"),
    ("bar.example.com", "/a/b/c", "wild-deep"),
    ("bar.example.com", "/a/b/c/d", "wild-deep"),
    ("bar.example.com", "/a/b/cd", "wild-root"),  # element-wise: /a/b/c does not take cd
    # Exact before Prefix at the same length; longest path first
    ("foo.example.com", "/api", "exact-host-api-exact"),
    ("foo.example.com", "/api/", "exact-host-api"),
    ("foo.example.com", "/api/v1", "exact-host-api"),
    ("foo.example.com", "/apis", "exact-host-root"),
    # host case and port do not matter
    ("FOO.Example.COM:8080", "/api/v1", "exact-host-api"),
    # a wildcard is one label: not the apex, not two labels
    ("example.com", "/docs/x", "any-host-docs"),
    ("a.b.example.com", "/docs", "any-host-docs"),
    ("a.b.example.com", "/zzz", "default"),
    # rules without a host, then legacy routes, then the default backend
    ("other.test", "/docs", "any-host-docs"),
    ("other.test", "/docs/", "any-host-docs-exact-slash"),
    ("other.test", "/docsx", "default"),
    ("other.test", "/svc/x", "legacy-svc"),
    ("other.test", "/", "default"),
]


@pytest.mark.parametrize(("host", "path", "want"), CASES)
def test_precedence(host: str, path: str, want: str | None) -> None:
    found = Router(ROUTES).route(host.encode(), path.encode(), b"?q=1")
    assert found is not None
    route, target = found
    assert route.name == want
    if route.match is not L:
        assert target == path.encode() + b"?q=1"  # Ingress routes forward the path as is


def test_order_of_table_does_not_matter() -> None:
    for routes in (ROUTES, tuple(reversed(ROUTES))):
        router = Router(routes)
        for host, path, want in CASES:
            found = router.route(host.encode(), path.encode(), b"")
            assert found is not None and found[0].name == want, (host, path)


def test_no_default_no_match() -> None:
    router = Router((r("a", "/a", "a.test"),))
    assert router.route(b"a.test", b"/b", b"") is None
    assert router.route(b"b.test", b"/a", b"") is None
    assert router.route(b"a.test", b"/a/x", b"") is not None


def test_prefix_root_and_exact_root() -> None:
    router = Router((r("root", "/", "h.test", E), r("all", "/", "h.test")))
    assert router.match(b"h.test", b"/").name == "root"  # type: ignore[union-attr]
    assert router.match(b"h.test", b"/x").name == "all"  # type: ignore[union-attr]


def test_legacy_only_tables_route_as_before() -> None:
    router = Router((r("svc", "/svc", None, L), HttpRoute("h", "/h", "b", "h.test")))
    found = router.route(b"x", b"/svc/a", b"?z")
    assert found is not None and found[1] == b"/a?z"
    found = router.route(b"h.test", b"/other", b"")
    assert found is not None and found[0].name == "h"
    assert router.route(b"x", b"/nothing", b"") is None


X = PathMatch.REGEX

REWRITES = [
    # (route path, match, rewrite, request path, query, expected target)
    ("/admin(/|$)(.*)", X, "/$2", b"/admin/users/1", b"?a=1", b"/users/1?a=1"),
    ("/admin(/|$)(.*)", X, "/$2", b"/admin", b"", b"/"),
    ("/admin(/|$)(.*)", X, "/$2", b"/ADMIN/x", b"", b"/x"),  # nginx ~*: any case
    ("/api/v1/(.*)", X, "/v2/$1/$1", b"/api/v1/a", b"", b"/v2/a/a"),
    ("/old", X, "/", b"/old/deep/path", b"?q", b"/?q"),  # the whole path replaced
    ("/x", E, "/y", b"/x", b"", b"/y"),
    ("/g/(.*)", X, "/$3", b"/g/a", b"", b"/"),  # no third group: dropped, as nginx does
    ("/b/(.*)", X, "/x\\y$1", b"/b/z", b"", b"/x\\yz"),  # a backslash stays one
]


@pytest.mark.parametrize(("path", "match", "rewrite", "req", "query", "want"), REWRITES)
def test_rewrite_target(path: str, match: PathMatch, rewrite: str, req: bytes, query: bytes,
                        want: bytes) -> None:
    route = HttpRoute("i", path, "b", "h.test", strip_prefix=False, match=match,
                      rewrite=rewrite)
    found = Router((route,)).route(b"h.test", req, query)
    assert found == (route, want)


def test_regex_does_not_match_elsewhere_and_bad_regex_is_dropped() -> None:
    good = HttpRoute("i", "/a[0-9]+", "b", None, strip_prefix=False, match=X)
    bad = HttpRoute("j", "/(", "b", None, strip_prefix=False, match=X)
    router = Router((good, bad))
    assert router.match(b"h", b"/a12/x") is good
    assert router.match(b"h", b"/x/a12") is None  # anchored at the start
    assert router.match(b"h", b"/(") is None


def test_redirect_routes_make_the_location_the_target() -> None:
    moved = HttpRoute("i", "/", "b", "old.test", strip_prefix=False, match=P,
                      redirect="https://new.test/", redirect_code=301)
    root = HttpRoute("i", "/", "b", "app.test", strip_prefix=False, match=E,
                     redirect="/app", redirect_code=302)
    app = HttpRoute("i", "/", "b", "app.test", strip_prefix=False, match=P)
    router = Router((moved, root, app))
    assert router.route(b"old.test", b"/any/thing", b"?x") == (moved, b"https://new.test/")
    assert router.route(b"app.test", b"/", b"") == (root, b"/app")
    assert router.route(b"app.test", b"/app/x", b"") == (app, b"/app/x")
