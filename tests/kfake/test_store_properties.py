"""Property tests of the store's history: snapshots, replays and pages agree with a model.

A random sequence of creates, label changes and deletes is applied to a Store and to a plain
dict model recorded at every revision. Then, for every revision still in the history: the
snapshot equals the model; replaying the watch backlog from it (with and without a label
selector, through `watch.convert`) reaches the current model; and paging a list started at it
returns the model's keys whatever the page size, even with writes between pages.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.kfake.errors import ApiError
from tests.kfake.selectors import predicate
from tests.kfake.store import Store
from tests.kfake.watch import convert

JsonObj = dict[str, Any]
Model = dict[tuple[str, str], str]  # (namespace, name) -> label value

NAMES = ["a", "b", "c"]
NAMESPACES = ["n1", "n2"]
LABELS = ["x", "y"]

# creates weigh most, so that lists run to several pages
op = st.tuples(st.sampled_from(["create", "create", "create", "relabel", "delete", "other-kind"]),
               st.sampled_from(NAMESPACES), st.sampled_from(NAMES), st.sampled_from(LABELS))


def body(ns: str, name: str, label: str) -> JsonObj:
    return {"metadata": {"name": name, "namespace": ns, "labels": {"l": label}},
            "spec": {"ports": [{"port": 80}]}}


def run(ops: list[tuple[str, str, str, str]], history: int) -> tuple[Store, dict[int, Model]]:
    store = Store(history_size=history)
    model: Model = {}
    seen = {store.rv: dict(model)}
    for kind, ns, name, label in ops:
        key = (ns, name)
        try:
            if kind == "create":
                store.create("services", body(ns, name, label))
                model[key] = label
            elif kind == "relabel":
                obj = store.read("services", ns, name)
                obj["metadata"]["labels"] = {"l": label}
                store.update("services", obj)
                model[key] = label
            elif kind == "delete":
                store.delete("services", ns, name)
                del model[key]
            else:  # moves the global revision without touching services
                store.put("leases", {"metadata": {"name": name, "namespace": ns},
                                     "spec": {"holderIdentity": label}})
        except ApiError as e:
            assert e.code in (404, 409)
            assert (key in model) == (e.code == 409)
        seen[store.rv] = dict(model)
    return store, seen


def project(objs: dict[tuple[str, str], JsonObj]) -> Model:
    return {k: v["metadata"]["labels"]["l"] for k, v in objs.items()}


def model_at(seen: dict[int, Model], rv: int) -> Model:
    return seen[max(r for r in seen if r <= rv)]


@settings(max_examples=100, deadline=None)
@given(st.lists(op, max_size=30), st.integers(min_value=3, max_value=40))
@example([("create", "n1", "a", "y"), ("relabel", "n1", "a", "x"),    # enters the selector
          ("relabel", "n1", "a", "y"), ("delete", "n1", "a", "y")], 10)  # leaves it, goes
@example([("create", "n1", "a", "x"), ("other-kind", "n2", "b", "x"), ("delete", "n1", "a", "x"),
          ("create", "n1", "a", "y")], 3)                                # compaction window
def test_snapshots_and_replays_match_the_model(ops: list[tuple[str, str, str, str]],
                                               history: int) -> None:
    store, seen = run(ops, history)
    res = store.resource("services")
    current = seen[store.rv]
    for rv in range(store.compacted_rv, store.rv + 1):
        past = model_at(seen, rv)
        assert project(store.state_at(res, rv)) == past
        for selector in ("", "l=x"):
            match = predicate(selector, "", "services")
            view = {k: v for k, v in past.items() if not selector or v == "x"}
            sub, backlog = store.subscribe(res, None, rv)
            store.unsubscribe(sub)
            for ch in backlog:
                ev = convert(ch, match)
                if ev is None:
                    continue
                etype, obj = ev
                key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                # ADDED only for what the watcher does not have, the others only for what it has
                assert (key in view) == (etype != "ADDED")
                if etype == "DELETED":
                    del view[key]
                else:
                    view[key] = obj["metadata"]["labels"]["l"]
            assert view == {k: v for k, v in current.items() if not selector or v == "x"}


@settings(max_examples=60, deadline=None)
@given(st.lists(op, min_size=4, max_size=25), st.integers(min_value=1, max_value=3),
       st.lists(op, max_size=6), st.sampled_from([None, "n1"]))
def test_pages_are_a_consistent_snapshot(ops: list[tuple[str, str, str, str]], limit: int,
                                         between: list[tuple[str, str, str, str]],
                                         namespace: str | None) -> None:
    store, seen = run(ops, 1000)
    want = sorted(k for k in seen[store.rv] if namespace is None or k[0] == namespace)
    start_rv, items, token, _ = store.list_page("services", namespace, limit=limit)
    got = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items]
    for i in range(len(want) + 1):
        if not token:
            break
        if i < len(between):  # writes between pages must not show
            kind, ns, name, label = between[i]
            if kind == "create" and store.get("services", ns, name) is None:
                store.create("services", body(ns, name, label))
            elif kind == "delete" and store.get("services", ns, name) is not None:
                store.delete("services", ns, name)
        rv, items, token, _ = store.list_page("services", namespace, limit=limit,
                                              continue_token=token)
        assert rv == start_rv
        got += [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items]
    assert not token
    assert got == want
