"""A Gateway plan goes to every worker pickled (pylb.workers): it must come back equal, with
every kind of object in it, whatever the fields' order (gatewaymodel pickles the slotted
classes as constructor calls, fields in order)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

from discovery.gateway.translate import GatewaySettings, translate
from pylb import gatewaymodel as gm
from tests.gateway.harness import Cluster

MANIFESTS = Path(__file__).parent / "conformance" / "tests"
SLOTTED = (gm.HeaderOps, gm.PathModifier, gm.Redirect, gm.Rewrite, gm.Filters,
           gm.WeightedBackend, gm.RouteMatch, gm.RuleEntry, gm.L4Route, gm.Listener)


def _kinds(obj: Any, seen: set[type]) -> None:
    if isinstance(obj, tuple | list):
        for x in obj:
            _kinds(x, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        seen.add(type(obj))
        for f in dataclasses.fields(obj):
            _kinds(getattr(obj, f.name), seen)


def test_the_slots_are_the_fields_in_order() -> None:
    for cls in SLOTTED:
        assert cls.__slots__ == tuple(f.name for f in dataclasses.fields(cls)), cls


def test_a_plan_of_every_kind_comes_back_equal() -> None:
    names = sorted(p.name for p in MANIFESTS.glob("*.yaml")
                   if p.name.startswith(("httproute-", "tlsroute-", "tcproute-")))
    pool = tuple(f"127.0.10.{i}" for i in range(1, 40))
    plan = translate(Cluster.load(*names).inputs(), GatewaySettings(l4=True, address_pool=pool))
    sent = dataclasses.replace(plan, status={})  # as pylb.workers sends it
    back = pickle.loads(pickle.dumps(sent, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == sent and back.listeners and back.l4_listeners
    seen: set[type] = set()
    _kinds(back, seen)
    assert set(SLOTTED) - seen == set()
    # compare=False fields (the precedence order) come back too
    assert [r.order for lst in back.listeners for r in lst.rules] == \
        [r.order for lst in sent.listeners for r in lst.rules]
