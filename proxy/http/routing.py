"""Route matching and target rewriting: pure functions over a table's HTTP routes.

A request matches a route when its path starts with the route's prefix at a segment
boundary (`/foo` matches `/foo`, `/foo/…`, and `/foo?…` since the query is not part of
the path; never `/foobar`), compared case-insensitively for `-i` routes; or when the route
has a host and the request's host (without its port, lower case) equals it. Routes come
sorted longest prefix first from `RouteTable`, so the first match is the longest.
"""

from __future__ import annotations

from pylb.model import HttpRoute


def split_target(target: bytes) -> tuple[bytes, bytes, bytes]:
    """(authority, path, query-with-'?') of a request target. The absolute form
    (`http://host/p?q`) yields its authority, which then overrides the Host header
    (RFC 9112 §3.2.2); the origin form yields b"" for it."""
    authority = b""
    if target[:1] != b"/":
        if target == b"*":
            return b"", b"*", b""
        scheme_end = target.find(b"://")
        if scheme_end >= 0:
            rest = target[scheme_end + 3:]
            slash = rest.find(b"/")
            q = rest.find(b"?")
            cut = min(x for x in (slash, q, len(rest)) if x >= 0)
            authority = rest[:cut]
            target = rest[cut:]
            if not target.startswith(b"/"):
                target = b"/" + target
    q = target.find(b"?")
    if q < 0:
        return authority, target, b""
    return authority, target[:q], target[q:]


def host_without_port(host: bytes) -> bytes:
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[:end + 1] if end > 0 else host
    colon = host.rfind(b":")
    return host[:colon] if colon >= 0 else host


def prefix_matches(prefix: bytes, path: bytes) -> bool:
    """`prefix` is a prefix of `path` ending at a segment boundary."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith(b"/") or path[len(prefix)] == 0x2F


def strip_prefix(prefix: bytes, path: bytes) -> bytes:
    """`/name/a` → `/a`, `/name` → `/`; a prefix ending in `/` keeps that slash."""
    if prefix.endswith(b"/"):
        prefix = prefix[:-1]
    rest = path[len(prefix):]
    return rest if rest.startswith(b"/") else b"/" + rest


class Router:
    """The routes of one frontend, prepared once per table for matching as bytes."""

    __slots__ = ("_entries",)

    def __init__(self, routes: tuple[HttpRoute, ...]) -> None:
        self._entries = tuple(
            (r.prefix.encode().lower() if r.case_insensitive else r.prefix.encode(),
             r.case_insensitive,
             r.host.lower().encode() if r.host else None,
             r)
            for r in routes)

    def match(self, host: bytes, path: bytes) -> HttpRoute | None:
        """`host` is the Host header (any case, maybe with a port); `path` without query."""
        found = self.route(host, path, b"")
        return found[0] if found is not None else None

    def route(self, host: bytes, path: bytes, query: bytes) -> tuple[HttpRoute, bytes] | None:
        """The route for `host` and `path` (longest prefix first, or Host), and the target
        to send to its backend (`rewrite`'s, computed in the same pass)."""
        hostname: bytes | None = None
        lowered: bytes | None = None
        for prefix, ci, rhost, route in self._entries:
            probe = path
            if ci:
                if lowered is None:
                    lowered = path.lower()
                probe = lowered
            n = len(prefix)
            # prefix_matches(prefix, probe), inline: this loop runs for every request
            if probe.startswith(prefix) and (len(probe) == n or prefix.endswith(b"/")
                                             or probe[n] == 0x2F):
                if route.strip_prefix:  # the prefix's case does not change its length
                    return route, strip_prefix(prefix, path) + query
                return route, path + query
            if rhost is not None:
                if hostname is None:
                    hostname = host_without_port(host)
                if hostname == rhost:
                    return route, path + query  # matched by Host: the path has no prefix
        return None


def slash_redirect(route: HttpRoute, path: bytes, query: bytes) -> bytes | None:
    """The 301 location for a route's bare prefix (`/web?q` → `/web/?q`) when the route
    asks for it (lb.slash-redirect) and strips its prefix; else None. Only the exact
    prefix, as the client spelt it: `/web/…` and Host-only matches are forwarded."""
    if not route.slash_redirect or not route.strip_prefix:
        return None
    prefix = route.prefix.encode()
    if prefix.endswith(b"/") or len(path) != len(prefix):
        return None
    if path != prefix and not (route.case_insensitive and path.lower() == prefix.lower()):
        return None
    return path + b"/" + query


def rewrite(route: HttpRoute, path: bytes, query: bytes) -> bytes:
    """The target sent to the backend: the prefix stripped unless the route keeps it (and
    only when the path carries it: a route matched by Host alone forwards the path)."""
    if route.strip_prefix:
        prefix = route.prefix.encode()
        probe = path.lower() if route.case_insensitive else path
        if prefix_matches(prefix.lower() if route.case_insensitive else prefix, probe):
            path = strip_prefix(prefix, path)
    return path + query
