"""Route matching and target rewriting: pure functions over a table's HTTP routes.

A request matches a route when its path starts with the route's prefix at a segment
boundary (`/foo` matches `/foo`, `/foo/…`, and `/foo?…` since the query is not part of
the path; never `/foobar`), compared case-insensitively for `-i` routes; or when the route
has a host and the request's host (without its port, lower case) equals it. Routes come
sorted longest prefix first from `RouteTable`, so the first match is the longest.

Ingress routes (`match` PREFIX, EXACT, DEFAULT; discovery/ingress.py makes them) match
host AND path, as the Ingress spec says, and come before the legacy routes:

1. the routes of the request's host, exactly; else of its `*.` wildcard (one label:
   `*.example.com` takes `a.example.com`, neither `example.com` nor `a.b.example.com`);
   else the rules without a host — within each, the longest path first and, at the same
   length, Exact before Prefix. A host whose routes take no path falls through to the
   next group (ingress-nginx would answer from its default backend instead);
2. the legacy routes, as above;
3. the defaultBackend of an Ingress, if any.

A Regex path (ingress-nginx's `use-regex`, or any path of an Ingress with
`rewrite-target`) matches as a regular expression anchored at the path's start, in any
case (nginx's `location ~*`), ordered with the others by its length as text. A route
with `rewrite` sends that target instead, `$1`…`$9` replaced by the groups of its path
matched against the request's path (nginx's `rewrite … break`: the whole path is
replaced); the query is kept. A route with `redirect` makes that location the target
(the server answers it with a redirect).

A Prefix path matches element-wise: `/foo` takes `/foo` and `/foo/bar`, never `/foobar`;
the route's prefix comes without its trailing slash (`/foo/` is `/foo`), so `/foo/` also
takes `/foo`, as the spec's table says. Exact compares the whole path, byte for byte.
Other Ingress routes forward the path unchanged.
"""

from __future__ import annotations

import re

from pylb.model import HttpRoute, PathMatch

# An Ingress route to try: (path, exact, route, the path as a regex or None, the rewrite
# template in re.Match.expand's form or None).
_IngressEntry = tuple[bytes, bool, HttpRoute, "re.Pattern[bytes] | None", bytes | None]
_DOLLAR = re.compile(rb"\$([1-9])")


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
    if 0x3F not in target:  # "?" (an int operand: no argument parsing, unlike find)
        return authority, target, b""
    q = target.find(b"?")
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
    if prefix[-1:] == b"/":  # (slices: startswith/endswith parse their arguments)
        prefix = prefix[:-1]
    rest = path[len(prefix):]
    return rest if rest[:1] == b"/" else b"/" + rest


class Router:
    """The routes of one frontend, prepared once per table for matching as bytes."""

    __slots__ = ("_any_host", "_by_host", "_by_parent", "_default", "_entries", "_ingress")

    def __init__(self, routes: tuple[HttpRoute, ...]) -> None:
        legacy = [r for r in routes if r.match is PathMatch.LEGACY]
        self._entries = tuple(
            (r.prefix.encode().lower() if r.case_insensitive else r.prefix.encode(),
             r.case_insensitive,
             r.host.lower().encode() if r.host else None,
             r,
             r.prefix.endswith("/"))
            for r in legacy)
        by_host: dict[bytes, list[_IngressEntry]] = {}
        by_parent: dict[bytes, list[_IngressEntry]] = {}
        any_host: list[_IngressEntry] = []
        self._default: HttpRoute | None = None
        for r in routes:
            if r.match is PathMatch.LEGACY:
                continue
            if r.match is PathMatch.DEFAULT:
                if self._default is None:
                    self._default = r
                continue
            entry = _entry(r)
            if entry is None:
                continue
            if not r.host:
                any_host.append(entry)
            elif r.host.startswith("*."):
                by_parent.setdefault(r.host[2:].lower().encode(), []).append(entry)
            else:
                by_host.setdefault(r.host.lower().encode(), []).append(entry)
        self._by_host = {h: _ingress_order(es) for h, es in by_host.items()}
        self._by_parent = {h: _ingress_order(es) for h, es in by_parent.items()}
        self._any_host = _ingress_order(any_host)
        self._ingress = bool(by_host or by_parent or any_host)

    def match(self, host: bytes, path: bytes) -> HttpRoute | None:
        """`host` is the Host header (any case, maybe with a port); `path` without query."""
        found = self.route(host, path, b"")
        return found[0] if found is not None else None

    def route(self, host: bytes, path: bytes, query: bytes) -> tuple[HttpRoute, bytes] | None:
        """The route for `host` and `path` (longest prefix first, or Host), and the target
        to send to its backend (`rewrite`'s, computed in the same pass)."""
        hostname: bytes | None = None
        if self._ingress:
            hostname = host_without_port(host)
            found = self._ingress_route(hostname, path, query)
            if found is not None:
                return found
        lowered: bytes | None = None
        for prefix, ci, rhost, route, slash in self._entries:
            probe = path
            if ci:
                if lowered is None:
                    lowered = path.lower()
                probe = lowered
            n = len(prefix)
            # prefix_matches(prefix, probe), inline: this loop runs for every request (a
            # slice and ==: startswith parses its arguments, ~4 times the instructions)
            if probe[:n] == prefix and (len(probe) == n or slash or probe[n] == 0x2F):
                if route.strip_prefix:  # the prefix's case does not change its length
                    return route, strip_prefix(prefix, path) + query
                return route, path + query
            if rhost is not None:
                if hostname is None:
                    hostname = host_without_port(host)
                if hostname == rhost:
                    return route, path + query  # matched by Host: the path has no prefix
        if self._default is not None:
            return self._default, path + query
        return None

    def _ingress_route(self, hostname: bytes, path: bytes,
                       query: bytes) -> tuple[HttpRoute, bytes] | None:
        entries = self._by_host.get(hostname)
        if entries is not None:
            found = _first_match(entries, path, query)
            if found is not None:
                return found
        _, dot, parent = hostname.partition(b".")
        if dot:
            entries = self._by_parent.get(parent)
            if entries is not None:
                found = _first_match(entries, path, query)
                if found is not None:
                    return found
        return _first_match(self._any_host, path, query)


def _entry(r: HttpRoute) -> _IngressEntry | None:
    """A route prepared for matching; None when its regex does not compile (discovery
    checks them: a table from elsewhere loses the route, not the router)."""
    regex: re.Pattern[bytes] | None = None
    template: bytes | None = None
    try:
        if r.match is PathMatch.REGEX or r.rewrite is not None:
            regex = re.compile(r.prefix.encode(), re.IGNORECASE)
    except re.error:
        return None
    if r.redirect is not None:
        template = r.redirect.encode()
    elif r.rewrite is not None:
        template = _DOLLAR.sub(rb"\\g<\1>", r.rewrite.encode().replace(b"\\", b"\\\\"))
    return (r.prefix.encode(), r.match is PathMatch.EXACT, r,
            regex if r.match is PathMatch.REGEX or r.rewrite is not None else None, template)


def _ingress_order(entries: list[_IngressEntry]) -> tuple[_IngressEntry, ...]:
    """Longest path first; Exact before Prefix at the same length; then by route name (a
    stable order whatever order the table gives)."""
    return tuple(sorted(entries, key=lambda e: (-len(e[0]), not e[1], e[2].name)))


def _first_match(entries: tuple[_IngressEntry, ...], path: bytes,
                 query: bytes) -> tuple[HttpRoute, bytes] | None:
    for prefix, exact, route, regex, template in entries:
        if exact:
            if path != prefix:
                continue
        elif route.match is PathMatch.REGEX:
            assert regex is not None
            if regex.match(path) is None:
                continue
        elif not path.startswith(prefix):
            continue
        else:
            n = len(prefix)
            # element-wise: the prefix is the whole path, or a "/" follows it (the
            # prefix "/" ends with one and takes every path)
            if not (len(path) == n or path[n] == 0x2F or prefix[-1] == 0x2F):
                continue
        if template is None:
            return route, path + query
        if route.redirect is not None:
            return route, template
        assert regex is not None
        m = regex.match(path)
        if m is None:  # an Exact/Prefix path that, as a regex, does not match itself
            return route, path + query
        try:
            return route, m.expand(template) + query
        except (re.error, IndexError):  # $3 of a path with two groups: nginx sends ""
            return route, _DOLLAR.sub(b"", route.rewrite.encode() if route.rewrite
                                      else b"/") + query
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
