"""Hypothesis strategies for Gateway plans and their changes, shared by the plan delta's
tests (test_gatewaydelta.py) and the router update's (tests/proxy/http/test_gwrouting_update.py).

Plans are drawn from a small universe (a few routes, hostnames, matches, orders) so that
two plans overlap much, and a plan's successor is drawn as edits of it, the way the
translation makes one: unchanged entries kept as the very objects, or as equal copies (a
translation without reuse), some routes' entries replaced, removed, added or moved, an
entry's `order` alone changed, listeners added, dropped, reordered or changed otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

from pylb.gatewaymodel import (
    Filters,
    GatewayPlan,
    HeaderOps,
    L4Route,
    Listener,
    Redirect,
    RouteMatch,
    RuleEntry,
    WeightedBackend,
)

ROUTES = tuple(f"ns/r{i}" for i in range(6))
HOSTNAMES = ("", "a.example.com", "*.example.com", "x.a.example.com", "*.a.example.com")
LISTENER_HOSTS = ("", "a.example.com", "*.example.com")
PATHS = ("/", "/a", "/a/b", "/b")

matches = st.builds(
    RouteMatch, st.sampled_from(("Exact", "PathPrefix")), st.sampled_from(PATHS),
    st.sampled_from(((), (("x-k", "1"),))), st.sampled_from(((), (("q", "1"),))),
    st.sampled_from((None, "GET")))
backends = st.sampled_from((
    (WeightedBackend(("ns", "s1", 80), 1),),
    (WeightedBackend(("ns", "s2", 80), 1),),
    (WeightedBackend(("ns", "s1", 80), 1), WeightedBackend(("ns", "s2", 8080), 3)),
    (WeightedBackend(None, 1),),
    (WeightedBackend(("ns", "s1", 80), 0),),
    (WeightedBackend(("ns", "s2", 80), 1, Filters(request_headers=HeaderOps(
        set=(("x-b", "2"),)))),),
))
filters = st.sampled_from((
    Filters(), Filters(redirect=Redirect(scheme="https", status=301)),
    Filters(response_headers=HeaderOps(add=(("x-r", "1"),))),
))
orders = st.tuples(st.integers(0, 3), st.sampled_from(ROUTES))  # ties on purpose


@st.composite
def entries(draw: Any, route: str | None = None) -> RuleEntry:
    return RuleEntry(draw(st.sampled_from(HOSTNAMES)), draw(matches), draw(backends),
                     draw(filters), route or draw(st.sampled_from(ROUTES)), draw(orders))


def l4_routes() -> Any:
    return st.lists(st.builds(L4Route, st.sampled_from(("", "t.example.com")),
                              backends, st.sampled_from(ROUTES), orders), max_size=2)


@st.composite
def listeners(draw: Any, name: str | None = None, address: str | None = None,
              port: int | None = None) -> Listener:
    return Listener(
        "ns/gw", name or draw(st.sampled_from(("l0", "l1", "l2", "l3"))),
        address or draw(st.sampled_from(("127.0.0.1", "127.0.0.2"))),
        port or draw(st.sampled_from((80, 8080))), draw(st.sampled_from(("HTTP", "HTTPS"))),
        draw(st.sampled_from(LISTENER_HOSTS)), tuple(draw(st.lists(entries(), max_size=12))))


@st.composite
def plans(draw: Any) -> GatewayPlan:
    lsts = draw(st.lists(listeners(), max_size=4, unique_by=lambda x: x.name))
    l4 = draw(st.lists(st.builds(Listener, st.just("ns/gw"), st.sampled_from(("t0", "t1")),
                                 st.just("127.0.0.1"), st.just(9000), st.just("TCP"),
                                 st.just(""), l4_routes=l4_routes().map(tuple)),
                       max_size=2))
    return GatewayPlan(tuple(lsts), {("httproutes", "ns", "r0"): {"parents": []}},
                       tuple(draw(st.lists(st.sampled_from(("a", "b")), max_size=2))),
                       tuple(l4))


def _copy(e: RuleEntry) -> RuleEntry:
    """An equal entry that is another object (a translation that reuses nothing)."""
    return dataclasses.replace(e)


@st.composite
def edited_rules(draw: Any, rules: tuple[RuleEntry, ...]) -> tuple[RuleEntry, ...]:
    """`rules` after a few edits of the kinds a new translation makes."""
    out = list(rules)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("replace", "remove", "add", "move", "copy", "reorder",
                                   "copy_all")))
        route = draw(st.sampled_from(ROUTES))
        if op == "replace":  # a route's entries, in place, changed
            out = [draw(entries(route)) if e.route == route else e for e in out]
        elif op == "remove":
            out = [e for e in out if e.route != route]
        elif op == "add":
            for _ in range(draw(st.integers(1, 3))):
                out.insert(draw(st.integers(0, len(out))), draw(entries(route)))
        elif op == "move" and out:  # an entry goes elsewhere (its precedence changed)
            e = out.pop(draw(st.integers(0, len(out) - 1)))
            out.insert(draw(st.integers(0, len(out))), e)
        elif op == "copy" and out:
            i = draw(st.integers(0, len(out) - 1))
            out[i] = _copy(out[i])
        elif op == "reorder" and out:  # only its order: equal by ==, not the same
            i = draw(st.integers(0, len(out) - 1))
            out[i] = dataclasses.replace(out[i], order=draw(orders))
        elif op == "copy_all":
            out = [_copy(e) for e in out]
    return tuple(out)


@st.composite
def edited_listener(draw: Any, lst: Listener) -> Listener:
    how = draw(st.sampled_from(("same", "rules", "rules", "rules", "equal", "head")))
    if how == "same":
        return lst
    if how == "equal":  # equal, another object
        return dataclasses.replace(lst, rules=tuple(_copy(e) for e in lst.rules))
    if how == "head":
        lst = dataclasses.replace(lst, hostname=draw(st.sampled_from(LISTENER_HOSTS)),
                                  address=draw(st.sampled_from(("127.0.0.1", "127.0.0.3"))))
    return dataclasses.replace(lst, rules=draw(edited_rules(lst.rules)))


@st.composite
def successors(draw: Any, plan: GatewayPlan) -> GatewayPlan:
    """A plan the translation could make after `plan`."""
    lsts = [draw(edited_listener(lst)) for lst in plan.listeners]
    if lsts and draw(st.booleans()):
        lsts.pop(draw(st.integers(0, len(lsts) - 1)))
    if draw(st.booleans()):
        lsts.insert(draw(st.integers(0, len(lsts))), draw(listeners(name="l9")))
    if draw(st.booleans()):
        lsts = draw(st.permutations(lsts))
    l4 = plan.l4_listeners
    if l4 and draw(st.booleans()):
        l4 = (dataclasses.replace(l4[0], l4_routes=tuple(
            dataclasses.replace(r, order=draw(orders)) for r in l4[0].l4_routes)), *l4[1:])
    skipped = plan.skipped if draw(st.booleans()) else (*plan.skipped, "c")
    return GatewayPlan(tuple(lsts), {}, skipped, l4)
