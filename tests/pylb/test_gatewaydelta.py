"""pylb.gatewaydelta: a plan delta makes the new plan of the old one, orders included, and
keeps the old plan's objects for what did not change; on generated plans (tests/pylb/
gwplans.py) and on the plans of the conformance manifests."""

from __future__ import annotations

import dataclasses
import itertools
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylb.gatewaydelta import (
    PlanDelta,
    RulesPatch,
    apply_delta,
    patched_rules,
    plan_delta,
    rules_change,
)
from pylb.gatewaymodel import (
    Filters,
    GatewayPlan,
    Listener,
    RouteMatch,
    RuleEntry,
    WeightedBackend,
)
from pylb.messages import GatewaysDelta, decode, encode
from tests.pylb.gwplans import plans, successors


def assert_same_plan(got: GatewayPlan, want: GatewayPlan) -> None:
    """Equal, and the orders (outside RuleEntry's and L4Route's ==) equal too."""
    assert got == want
    for a, b in zip(got.listeners + got.l4_listeners, want.listeners + want.l4_listeners,
                    strict=True):
        assert [e.order for e in a.rules] == [e.order for e in b.rules]
        assert [r.order for r in a.l4_routes] == [r.order for r in b.l4_routes]


def assert_law(old: GatewayPlan, new: GatewayPlan) -> PlanDelta:
    delta = plan_delta(old, new)
    got = apply_delta(old, delta)
    assert_same_plan(got, new)
    # what did not change is the old plan's very objects
    for item, lst in zip(delta.listeners, got.listeners, strict=True):
        if isinstance(item, int):
            assert lst is old.listeners[item]
        elif isinstance(item, RulesPatch):
            was = {id(e) for e in old.listeners[item.listener].rules}
            assert all(id(e) in was for e in lst.rules if e.route not in item.routes)
    # and it travels as the workers get it
    msg = GatewaysDelta(2, 1, delta)
    back = decode(encode(msg)[4:])
    assert isinstance(back, GatewaysDelta)
    assert_same_plan(apply_delta(old, back.delta), new)
    return delta


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_delta_makes_the_new_plan_of_the_old(data: st.DataObject) -> None:
    plan = data.draw(plans())
    for _ in range(3):  # a chain, as a worker applies them
        new = data.draw(successors(plan))
        assert_law(plan, new)
        plan = apply_delta(plan, plan_delta(plan, new))


@settings(max_examples=100, deadline=None)
@given(plans(), plans())
def test_a_delta_between_unrelated_plans_too(old: GatewayPlan, new: GatewayPlan) -> None:
    assert_law(old, new)


def e(route: str, path: str, order: int, host: str = "h") -> RuleEntry:
    return RuleEntry(host, RouteMatch(path=path), (WeightedBackend(("ns", "s", 80), 1),),
                     Filters(), route, (order,))


def listener(rules: tuple[RuleEntry, ...], name: str = "l") -> Listener:
    return Listener("ns/gw", name, "127.0.0.1", 80, "HTTP", "", rules)


def test_a_one_route_change_is_that_route_only() -> None:
    rules = tuple(e(f"ns/r{i}", f"/p{i}", i) for i in range(1000))
    old = GatewayPlan((listener(rules), listener((), "other")))
    changed = e("ns/r500", "/changed", 500)
    new = GatewayPlan((listener((*rules[:500], changed, *rules[501:])), old.listeners[1]))
    delta = assert_law(old, new)
    assert delta.listeners == (RulesPatch(0, ("ns/r500",), (changed,), (500,)), 1)
    assert delta.l4_listeners is None and delta.skipped is None
    assert len(encode(GatewaysDelta(1, 0, delta))) < 1000


def test_an_unchanged_plan_is_references_only() -> None:
    rules = tuple(e(f"ns/r{i}", f"/p{i}", i) for i in range(5))
    old = GatewayPlan((listener(rules),), skipped=("x",))
    copy = GatewayPlan((listener(tuple(dataclasses.replace(r) for r in rules)),),
                       skipped=("x",))
    assert plan_delta(old, copy) == PlanDelta((0,))
    assert plan_delta(old, old) == PlanDelta((0,))


def test_an_order_change_alone_is_a_change() -> None:
    rules = (e("ns/a", "/a", 1), e("ns/b", "/b", 2))
    new_b = dataclasses.replace(rules[1], order=(0,))
    old, new = GatewayPlan((listener(rules),)), GatewayPlan((listener((rules[0], new_b)),))
    delta = assert_law(old, new)
    assert delta.listeners == (RulesPatch(0, ("ns/b",), (new_b,), (1,)),)


def test_other_routes_reordered_send_the_listener_whole() -> None:
    a, b, c = e("ns/a", "/a", 0), e("ns/b", "/b", 0), e("ns/c", "/c", 0)
    old, new = GatewayPlan((listener((a, b, c)),)), GatewayPlan((listener((b, a, c)),))
    assert rules_change(old.listeners[0].rules, new.listeners[0].rules) is None
    delta = assert_law(old, new)
    assert delta.listeners == new.listeners


def test_a_delta_that_does_not_fit_the_plan_is_refused() -> None:
    rules = (e("ns/a", "/a", 1), e("ns/b", "/b", 2))
    old = GatewayPlan((listener(rules),))
    with pytest.raises(ValueError, match="listener 3"):
        apply_delta(old, PlanDelta((3,)))
    with pytest.raises(ValueError, match="rule index 9"):
        apply_delta(old, PlanDelta((RulesPatch(0, ("ns/a",), (rules[0],), (9,)),)))
    with pytest.raises(ValueError, match="does not name"):
        patched_rules(rules, frozenset({"ns/a"}), (rules[1],), (0,))
    with pytest.raises(ValueError, match="2 entries for 1 places"):
        patched_rules(rules, frozenset({"ns/a"}), rules, (0,))
    with pytest.raises(ValueError, match="a str among"):
        apply_delta(old, PlanDelta(("x",)))  # type: ignore[arg-type]


MANIFESTS = Path(__file__).parents[1] / "gateway" / "conformance" / "tests"


@pytest.fixture(scope="module")
def corpus() -> list[GatewayPlan]:
    from discovery.gateway.translate import GatewaySettings, translate
    from tests.gateway.harness import Cluster

    names = sorted(p.name for p in MANIFESTS.glob("*.yaml")
                   if p.name.startswith(("httproute-", "tlsroute-", "tcproute-")))
    pool = tuple(f"127.0.10.{i}" for i in range(1, 40))
    s = GatewaySettings(l4=True, address_pool=pool)
    out = [translate(Cluster.load(*names).inputs(), s)]
    out += [translate(Cluster.load(n).inputs(), s) for n in names]
    return [dataclasses.replace(p, status={}) for p in out]


def test_the_conformance_plans_go_each_to_the_next(corpus: list[GatewayPlan]) -> None:
    everything = corpus[0]
    assert everything.listeners and everything.l4_listeners
    for old, new in itertools.pairwise(corpus):
        assert_law(old, new)
    for plan in corpus[1:]:
        assert_law(everything, plan)
        assert_law(plan, everything)
    # a plan translated again (new objects, equal) is no change; one pickled as the
    # workers get it neither
    again = pickle.loads(pickle.dumps(everything))
    assert plan_delta(everything, again) == PlanDelta(tuple(range(len(everything.listeners))))
