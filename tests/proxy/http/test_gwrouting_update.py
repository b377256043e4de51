"""GatewayRouter.updated: a router made from the one before routes every request exactly as
a router made anew from the same listeners, and compiles only the entries it did not have;
on generated listeners and their successors (tests/pylb/gwplans.py)."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.gwrouting import Decision, GatewayRouter, _Vhosts
from pylb.gatewaymodel import Listener, RouteMatch, RuleEntry, WeightedBackend
from tests.pylb.gwplans import edited_listener, listeners

HOSTS = (b"a.example.com", b"A.example.com:8080", b"x.a.example.com", b"y.x.a.example.com",
         b"b.example.com", b"other", b"")
PATHS = (b"/", b"/a", b"/a/b", b"/a/bc", b"/b", b"/c")
QUERIES = (b"", b"?q=1", b"?q=2&q=1")
HEADERS = ((), ((b"X-K", b"1"),), ((b"x-k", b"2"),))

requests = st.tuples(st.sampled_from(HOSTS), st.sampled_from((b"GET", b"POST")),
                     st.sampled_from(PATHS), st.sampled_from(QUERIES),
                     st.sampled_from(HEADERS))


def decide(router: GatewayRouter, req: tuple[bytes, bytes, bytes, bytes,
                                             tuple[tuple[bytes, bytes], ...]],
           seed: int) -> tuple[Decision, object]:
    """The decision, its compiled response edit (an object per router) by its steps."""
    router._rng = random.Random(seed)  # the same weighted pick for both routers
    d = router.route(*req)
    return (dataclasses.replace(d, response=None),
            d.response.steps if d.response is not None else None)


def buckets(v: _Vhosts) -> dict[str, list[tuple[RuleEntry, tuple[object, ...]]]]:
    out = {f"exact {h}": [(c.entry, c.entry.order) for c in b] for h, b in v.exact.items()}
    out.update({f"wild {h}": [(c.entry, c.entry.order) for c in b] for h, b in v.wild.items()})
    out["any"] = [(c.entry, c.entry.order) for c in v.any]
    return out


def endpoint(draw: Any) -> list[Listener]:
    """Listeners of one address:port, as GatewayPlane gives a router."""
    names = draw(st.lists(st.sampled_from(("l0", "l1", "l2")), unique=True, max_size=3))
    return [draw(listeners(name=n, address="127.0.0.1", port=80)) for n in names]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_an_updated_router_routes_as_one_made_anew(data: st.DataObject) -> None:
    lsts = endpoint(data.draw)
    router = GatewayRouter(lsts)
    for _ in range(3):  # each made from the one before, as plan after plan comes
        new = [data.draw(edited_listener(lst)) for lst in lsts]
        if data.draw(st.booleans()):
            new = [*new, *endpoint(data.draw)][:3]
            new = list({lst.name: lst for lst in new}.values())
        before = {id(c.entry): c for v in router._vhosts for c in v.compiled()}
        updated, fresh = router.updated(new), GatewayRouter(new)
        assert [buckets(v) for v in updated._vhosts] == [buckets(v) for v in fresh._vhosts]
        assert [v.listener for v in updated._vhosts] == new
        # an entry it had is not compiled again
        for v in updated._vhosts:
            for c in v.compiled():
                had = before.get(id(c.entry))
                assert had is None or had.entry is not c.entry or had is c
        for i, req in enumerate(data.draw(st.lists(requests, min_size=1, max_size=20))):
            assert decide(updated, req, i) == decide(fresh, req, i), req
        router, lsts = updated, new


def rule(route: str, host: str, path: str, order: int) -> RuleEntry:
    from pylb.gatewaymodel import Filters

    return RuleEntry(host, RouteMatch(path=path), (WeightedBackend(("ns", route, 80), 1),),
                     Filters(), f"ns/{route}", (order,))


def test_a_one_route_change_compiles_one_entry_and_shares_the_other_buckets() -> None:
    rules = tuple(rule(f"r{i}", f"h{i}.example.com", "/", i) for i in range(100))
    lst = Listener("ns/gw", "l", "127.0.0.1", 80, "HTTP", "", rules)
    router = GatewayRouter([lst])
    changed = rule("r50", "h50.example.com", "/x", 50)
    new = dataclasses.replace(lst, rules=(*rules[:50], changed, *rules[51:]))
    updated = router.updated([new])
    (old_v,), (new_v,) = router._vhosts, updated._vhosts
    assert new_v.exact["h50.example.com"][0].entry is changed
    assert all(new_v.exact[h] is b for h, b in old_v.exact.items() if h != "h50.example.com")
    assert router.route(b"h50.example.com", b"GET", b"/", b"", ()).backend == ("ns", "r50", 80)
    assert updated.route(b"h50.example.com", b"GET", b"/", b"", ()).status == 404
    assert updated.route(b"h50.example.com", b"GET", b"/x", b"", ()).backend == \
        ("ns", "r50", 80)


def test_a_bucket_emptied_is_gone_so_the_wildcard_answers() -> None:
    exact = rule("a", "a.example.com", "/", 0)
    wild = rule("w", "*.example.com", "/", 1)
    lst = Listener("ns/gw", "l", "127.0.0.1", 80, "HTTP", "", (exact, wild))
    router = GatewayRouter([lst])
    assert router.route(b"a.example.com", b"GET", b"/", b"", ()).route == "ns/a"
    updated = router.updated([dataclasses.replace(lst, rules=(wild,))])
    assert updated.route(b"a.example.com", b"GET", b"/", b"", ()).route == "ns/w"
