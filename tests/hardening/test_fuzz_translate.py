"""Fuzzing the translation of Kubernetes objects and the file source's YAML (issue #12).

tests/discovery/test_translate.py has random-JSON and near-valid never-raises tests; here
the inputs are structure-aware mutations of valid objects (examples/cluster.yaml and
pylb.demo's manifests: keys deleted, values of the wrong type, lists truncated, subtrees
of random JSON), with one more property: a bad object never changes the routes, TCP
frontends or backends of good services it does not name. And the file source's YAML:
truncated and mutated texts give a table or a FileSourceError, and the poll loop keeps
the last good table. The long run is `python -m bench.fuzz --target translate`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.filesource import FileSource
from discovery.translate import KubeObjects
from pylb.model import RouteTable
from tests.hardening._fuzzing import (
    EXAMPLE_CLUSTER,
    TRANSLATE_SETTINGS,
    Violation,
    check_translate,
    check_yaml,
    good_objects,
    mutate_object,
    random_json,
    translate_case,
    yaml_case,
)


@settings(max_examples=80, deadline=None)
@given(st.randoms(use_true_random=False))
def test_mutated_objects_never_raise_nor_touch_good_services(rng: random.Random) -> None:
    good, bad = translate_case(rng)
    check_translate(good, bad)


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 6))
def test_every_object_mutated_in_place(rng: random.Random, n: int) -> None:
    """The good objects themselves mutated (no isolation to check: they are the good
    services' own objects): a table, never an exception."""
    objs: list[Any] = [mutate_object(rng, o, n) if rng.random() < 0.5 else o
                       for o in good_objects()]
    objs.append(random_json(rng, 5))
    check_translate([], objs)


def test_truncated_lists_and_objects_of_each_good_object() -> None:
    """Deterministic: every good object cut to each prefix of its keys, and each of its
    lists cut to each length."""
    good = good_objects()
    for i, obj in enumerate(good):
        keys = list(obj)
        for n in range(len(keys)):
            cut = {k: obj[k] for k in keys[:n]}
            cut.setdefault("metadata", {"name": f"zz-bad-{i}", "namespace": "zz-bad"})
            check_translate(good, [cut])


def test_isolation_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property is not vacuous: were a bad object to cost a good service its route,
    it would be reported (translate broken on purpose: the longest route dropped)."""
    from tests.hardening import _fuzzing

    real = _fuzzing.translate  # type: ignore[attr-defined]

    def lossy(objects: KubeObjects, settings: Any) -> RouteTable:
        table = real(objects, settings)
        if any("zz-bad" in str(o) for o in objects.services):
            table = dataclasses.replace(table, http=table.http[1:])
        return table

    monkeypatch.setattr(_fuzzing, "translate", lossy)
    bad = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "zz-bad-0", "namespace": "zz-bad"}, "spec": {"ports": []}}
    with pytest.raises(Violation, match="changed good services"):
        check_translate(good_objects(), [bad])


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_yaml_texts_give_a_table_or_a_clear_error(rng: random.Random) -> None:
    check_yaml(yaml_case(rng))


def test_yaml_truncated_at_many_lines() -> None:
    text = EXAMPLE_CLUSTER.read_text()
    cuts = [*[i + 1 for i, c in enumerate(text) if c == "\n"][::7], len(text)]
    tables = [check_yaml(text[:cut]) for cut in cuts]
    assert isinstance(tables[-1], RouteTable) and tables[-1].http
    assert sum(t is None for t in tables) < len(tables)


async def _no_dns(name: str) -> tuple[str, ...]:
    raise OSError("no DNS in this test")


async def test_poll_loop_survives_fuzzed_files_and_keeps_the_last_good_table(
        tmp_path: Path) -> None:
    """The file source's loop, fed a series of fuzzed texts: it never dies, and the table
    it serves after each text is the last good text's (a text that cannot be parsed
    publishes nothing)."""
    good_text = EXAMPLE_CLUSTER.read_text()
    path = tmp_path / "cluster.yaml"
    path.write_text(good_text)
    published: list[RouteTable] = []
    source = FileSource(str(path), TRANSLATE_SETTINGS, poll_interval=0.002, resolver=_no_dns)
    task = asyncio.create_task(source.run(published.append))
    rng = random.Random(12)
    last_good = check_yaml(good_text)

    async def serve(text: str) -> None:
        tmp = tmp_path / "next.yaml"
        tmp.write_text(text)
        os.replace(tmp, path)  # as a ConfigMap swap does: never half-written
        st = os.stat(path)
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        for _ in range(5000):  # bounded: 10 s at most
            if task.done() or (source._signature == sig and published
                               and published[-1] == last_good):
                break
            await asyncio.sleep(0.002)
        assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
        assert published[-1] == last_good

    try:
        await serve(good_text)
        bad_seen = 0
        for _ in range(25):
            text = yaml_case(rng)
            table = check_yaml(text)
            if table is None:
                bad_seen += 1
            else:
                last_good = table
            await serve(text)
        assert bad_seen > 0
        last_good = check_yaml(good_text)
        await serve(good_text + "\n# touched\n")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
