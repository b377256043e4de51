"""Route matching and rewriting as tables (pure functions, no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.routing import (
    Router,
    host_without_port,
    rewrite,
    slash_redirect,
    split_target,
)
from pylb.model import HttpRoute, RouteTable


def table_routes(*routes: HttpRoute) -> tuple[HttpRoute, ...]:
    from pylb.model import Backend
    names = {r.backend for r in routes}
    return RouteTable(http=routes, backends=tuple(Backend(n) for n in names)).http


ROUTES = table_routes(
    HttpRoute("foo", "/foo", "foo"),
    HttpRoute("foo:8080", "/foo:8080", "foo8080"),
    HttpRoute("foobar", "/foo/bar", "foobar"),
    HttpRoute("ci", "/Case", "ci", case_insensitive=True),
    HttpRoute("acl", "/static/", "static", strip_prefix=False),
    HttpRoute("hosted", "/hosted", "hosted", host="www.example.com"),
)

MATCH = [
    # (host, path, expected route name or None)
    (b"x", b"/foo", "foo"),
    (b"x", b"/foo/", "foo"),
    (b"x", b"/foo/a/b", "foo"),
    (b"x", b"/foobar", None),
    (b"x", b"/fo", None),
    (b"x", b"/foo/bar", "foobar"),
    (b"x", b"/foo/bar/baz", "foobar"),
    (b"x", b"/foo/barbaz", "foo"),
    (b"x", b"/foo:8080/x", "foo:8080"),
    (b"x", b"/FOO", None),
    (b"x", b"/case/x", "ci"),
    (b"x", b"/CASE", "ci"),
    (b"x", b"/cases", None),
    (b"x", b"/static/a.css", "acl"),
    (b"x", b"/static", None),
    (b"www.example.com", b"/anything", "hosted"),
    (b"WWW.Example.com:8080", b"/anything", "hosted"),
    (b"other.example.com", b"/hosted/x", "hosted"),
    (b"other.example.com", b"/anything", None),
    (b"www.example.com", b"/foo/bar/x", "foobar"),  # longest prefix first; host OR path
    (b"www.example.com", b"/foo/x", "hosted"),
    (b"x", b"*", None),
]


@pytest.mark.parametrize(("host", "path", "name"), MATCH)
def test_match(host: bytes, path: bytes, name: str | None) -> None:
    route = Router(ROUTES).match(host, path)
    assert (route.name if route else None) == name


def test_root_prefix_matches_everything() -> None:
    router = Router(table_routes(HttpRoute("root", "/", "r"), HttpRoute("a", "/a", "a")))
    assert router.match(b"h", b"/a/x").name == "a"  # type: ignore[union-attr]
    assert router.match(b"h", b"/b").name == "root"  # type: ignore[union-attr]
    assert router.match(b"h", b"/").name == "root"  # type: ignore[union-attr]


REWRITE = [
    (HttpRoute("n", "/name", "b"), b"/name/a", b"?b", b"/a?b"),
    (HttpRoute("n", "/name", "b"), b"/name", b"", b"/"),
    (HttpRoute("n", "/name", "b"), b"/name", b"?x=1", b"/?x=1"),
    (HttpRoute("n", "/name", "b"), b"/name/", b"", b"/"),
    (HttpRoute("n", "/name:81", "b"), b"/name:81/x", b"", b"/x"),
    (HttpRoute("n", "/Name", "b", case_insensitive=True), b"/NAME/x", b"", b"/x"),
    (HttpRoute("n", "/static/", "b", strip_prefix=False), b"/static/a", b"?v", b"/static/a?v"),
    (HttpRoute("n", "/p/", "b"), b"/p/a", b"", b"/a"),
    (HttpRoute("h", "/h", "b", host="x.com"), b"/other", b"", b"/other"),
]


@pytest.mark.parametrize(("route", "path", "query", "out"), REWRITE)
def test_rewrite(route: HttpRoute, path: bytes, query: bytes, out: bytes) -> None:
    assert rewrite(route, path, query) == out


SPLIT = [
    (b"/a/b?c=d", (b"", b"/a/b", b"?c=d")),
    (b"/", (b"", b"/", b"")),
    (b"http://h.com:81/x?y", (b"h.com:81", b"/x", b"?y")),
    (b"http://h.com", (b"h.com", b"/", b"")),
    (b"http://h.com?q", (b"h.com", b"/", b"?q")),
    (b"*", (b"", b"*", b"")),
]


@pytest.mark.parametrize(("target", "parts"), SPLIT)
def test_split_target(target: bytes, parts: tuple[bytes, bytes, bytes]) -> None:
    assert split_target(target) == parts


@pytest.mark.parametrize(("host", "out"), [
    (b"a.com", b"a.com"), (b"A.com:80", b"a.com"), (b"[::1]:80", b"[::1]"), (b"[::1]", b"[::1]"),
    (b" a.com ", b"a.com"),
])
def test_host_without_port(host: bytes, out: bytes) -> None:
    assert host_without_port(host) == out


_SEGMENTS = st.sampled_from([b"", b"foo", b"FOO", b"bar", b"foo:8080", b"static", b"Case",
                             b"hosted", b"a.css", b"\xc3\xa9"])


@settings(max_examples=300, deadline=None)
@given(host=st.sampled_from([b"x", b"www.example.com", b"WWW.EXAMPLE.COM:80", b"[::1]:8"]),
       segments=st.lists(_SEGMENTS, max_size=4), slash=st.booleans(),
       query=st.sampled_from([b"", b"?", b"?a=/foo"]))
def test_route_is_match_then_rewrite(host: bytes, segments: list[bytes], slash: bool,
                                     query: bytes) -> None:
    """The one-pass `Router.route` the server calls agrees with `match` + `rewrite`."""
    path = b"/" + b"/".join(segments) + (b"/" if slash else b"")
    for routes in (ROUTES, table_routes(HttpRoute("root", "/", "r"),
                                        HttpRoute("ci", "/foo/", "c", case_insensitive=True))):
        router = Router(routes)
        route = router.match(host, path)
        expected = None if route is None else (route, rewrite(route, path, query))
        assert router.route(host, path, query) == expected


@pytest.mark.parametrize(("route", "path", "query", "expected"), [
    (HttpRoute("w", "/web", "b", slash_redirect=True), b"/web", b"", b"/web/"),
    (HttpRoute("w", "/web", "b", slash_redirect=True), b"/web", b"?a=1", b"/web/?a=1"),
    (HttpRoute("w", "/web", "b", slash_redirect=True), b"/web/", b"", None),
    (HttpRoute("w", "/web", "b", slash_redirect=True), b"/web/x", b"", None),
    (HttpRoute("w", "/web", "b", slash_redirect=True), b"/", b"", None),  # Host match
    (HttpRoute("w", "/web", "b", slash_redirect=True), b"/WEB", b"", None),
    (HttpRoute("w", "/web", "b", case_insensitive=True, slash_redirect=True), b"/WEB", b"",
     b"/WEB/"),
    (HttpRoute("w", "/web", "b"), b"/web", b"", None),  # the 2015 rule: forwarded as /
    (HttpRoute("w", "/web", "b", strip_prefix=False, slash_redirect=True), b"/web", b"",
     None),
])
def test_slash_redirect(route: HttpRoute, path: bytes, query: bytes,
                        expected: bytes | None) -> None:
    assert slash_redirect(route, path, query) == expected
