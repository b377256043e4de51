"""The informer's pure decisions, as tables: backoff, Retry-After, error bodies, watch lines,
store updates; and ExternalName address handling."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from discovery.dns import ExternalNames, addresses, external_names
from discovery.informer import (
    ApiError,
    Gone,
    StreamError,
    apply_event,
    backoff_delay,
    decode_event,
    error_from_response,
    parse_status,
    retry_after,
    same_object,
    slim,
)


@pytest.mark.parametrize(("failures", "rnd", "expected"), [
    (0, 0.9, 0.0),
    (1, 0.0, 0.0),
    (1, 0.5, 0.25),  # base 0.5 → window [0, 0.5)
    (2, 0.5, 0.5),  # window [0, 1)
    (3, 0.5, 1.0),
    (7, 0.999, 0.999 * 30),  # 0.5 * 64 = 32 > cap 30
    (10_000, 0.5, 15.0),  # no overflow
])
def test_backoff_full_jitter(failures: int, rnd: float, expected: float) -> None:
    assert backoff_delay(failures, 0.5, 30.0, rnd) == pytest.approx(expected)


def _status(code: int, reason: str, message: str, **details: Any) -> bytes:
    doc: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure", "message": message, "reason": reason,
                           "code": code}
    if details:
        doc["details"] = details
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("headers", "body", "expected"), [
    ({"Retry-After": "3"}, b"Too many requests, please try again later.\n", 3.0),
    ({}, _status(429, "TooManyRequests", "slow down", retryAfterSeconds=2), 2.0),
    ({"Retry-After": "1"}, _status(503, "ServiceUnavailable", "shutting down",
                                   retryAfterSeconds=7), 1.0),  # the header wins
    ({}, b"oops", None),
    ({}, _status(500, "InternalError", "boom"), None),
    ({"Retry-After": "soon"}, b"", None),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"", 0.0),  # a date in the past
])
def test_retry_after(headers: dict[str, str], body: bytes, expected: float | None) -> None:
    assert retry_after(headers, parse_status(body)) == expected


def test_retry_after_date_counts_from_the_given_clock() -> None:
    """An HTTP-date Retry-After is read against the caller's wall clock, not time.time()."""
    date = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}  # 1445412480 epoch seconds
    assert retry_after(date, None, now=1445412480.0 - 12.5) == 12.5
    assert retry_after(date, None, now=1445412480.0 + 5) == 0.0
    err = error_from_response(503, date, b"", now=1445412480.0 - 3)
    assert isinstance(err, ApiError) and err.retry_after == 3.0


@pytest.mark.parametrize(("code", "headers", "body", "kind", "status", "wait"), [
    (410, {}, _status(410, "Expired", "continue token expired"), Gone, None, None),
    (429, {"Retry-After": "2"}, b"Too many requests, please try again later.", ApiError,
     429, 2.0),
    (429, {}, _status(429, "TooManyRequests", "x", retryAfterSeconds=1), ApiError, 429, 1.0),
    (500, {}, _status(500, "InternalError", "Internal error occurred: x"), ApiError, 500,
     None),
    (503, {"Retry-After": "1"}, _status(503, "ServiceUnavailable", "shutting down"),
     ApiError, 503, 1.0),
    (504, {}, _status(504, "Timeout", "request did not complete", retryAfterSeconds=1),
     ApiError, 504, 1.0),
    (403, {}, _status(403, "Forbidden", "no"), ApiError, 403, None),
])
def test_error_from_response(code: int, headers: dict[str, str], body: bytes, kind: type,
                             status: int | None, wait: float | None) -> None:
    err = error_from_response(code, headers, body)
    assert type(err) is kind
    if isinstance(err, ApiError):
        assert err.status == status
        assert err.retry_after == wait


def _line(etype: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": etype, "object": obj}).encode() + b"\n"


SVC = {"kind": "Service", "apiVersion": "v1",
       "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"}}


@pytest.mark.parametrize(("line", "outcome"), [
    (_line("ADDED", SVC), "ADDED"),
    (_line("BOOKMARK", {"kind": "Service", "metadata": {"resourceVersion": "9"}}), "BOOKMARK"),
    (_line("ERROR", json.loads(_status(410, "Expired", "too old resource version: 5 (10)"))),
     Gone),
    (_line("ERROR", json.loads(_status(500, "InternalError", "x"))), ApiError),
    (b"Too many requests, please try again later.\n", StreamError),
    (b'{"type": "ADDED"}\n', StreamError),
    (b'["ADDED"]\n', StreamError),
    (_line("SNAPSHOT", SVC), StreamError),
])
def test_decode_event(line: bytes, outcome: str | type) -> None:
    if isinstance(outcome, str):
        assert decode_event(line)[0] == outcome
    else:
        with pytest.raises(outcome):
            decode_event(line)


def test_apply_event_table() -> None:
    store: dict[tuple[str, str], dict[str, Any]] = {}
    other = {"metadata": {"name": "web", "namespace": "prod", "resourceVersion": "8"}}
    steps: list[tuple[str, dict[str, Any], bool, int]] = [
        ("ADDED", SVC, True, 1),
        ("ADDED", other, True, 2),  # same name, other namespace: another object
        ("MODIFIED", SVC, True, 2),
        ("BOOKMARK", {"metadata": {"resourceVersion": "10"}}, False, 2),
        ("DELETED", SVC, True, 1),
        ("DELETED", SVC, False, 1),  # already gone
    ]
    for etype, obj, changed, size in steps:
        assert apply_event(store, etype, obj) is changed, etype
        assert len(store) == size, etype
    assert store == {("prod", "web"): other}


def test_slim_drops_managed_fields_without_touching_the_input() -> None:
    obj = {"metadata": {"name": "a", "managedFields": [{"manager": "kubectl"}]}, "spec": {}}
    assert slim(obj) == {"metadata": {"name": "a"}, "spec": {}}
    assert "managedFields" in obj["metadata"]


def test_slim_keeps_only_the_metadata_pylb_reads() -> None:
    meta = {"name": "a", "namespace": "n", "resourceVersion": "7", "uid": "u-1",
            "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 3,
            "labels": {"app": "a"}, "ownerReferences": [{"kind": "Service"}],
            "annotations": {"serviceloadbalancer/lb.host": "h",
                            "kubectl.kubernetes.io/last-applied-configuration": "{...}"}}
    obj = {"metadata": meta, "spec": {"ports": []}}
    out = slim(obj)
    assert out == {"metadata": {"name": "a", "namespace": "n", "resourceVersion": "7",
                                "labels": {"app": "a"},
                                "annotations": {"serviceloadbalancer/lb.host": "h"}},
                   "spec": {"ports": []}}
    assert out["spec"] is obj["spec"]
    assert obj["metadata"] is meta and "uid" in meta and len(meta["annotations"]) == 2
    lean = {"metadata": {"name": "b", "labels": {}}, "spec": {}}
    assert slim(lean) is lean  # nothing to leave out: the very object


def test_addresses_dedupe_and_order() -> None:
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.10", 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", 0)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", 0, 0, 2)),
    ]
    assert addresses(infos) == ("10.0.0.2", "10.0.0.10", "::1", "fe80::1")


def test_external_names_only_externalname_services() -> None:
    services = [
        {"spec": {"type": "ExternalName", "externalName": "db.example.com"}},
        {"spec": {"type": "ClusterIP", "externalName": "ignored.example.com"}},
        {"spec": {"type": "ExternalName"}},
        {"spec": {"type": "ExternalName", "externalName": "  "}},
        {},
    ]
    assert external_names(services) == {"db.example.com"}


async def test_external_names_keep_last_good_answer() -> None:
    answers: dict[str, tuple[str, ...] | Exception] = {"a.example": ("10.0.0.1",),
                                                       "b.example": OSError("NXDOMAIN")}

    async def fake(name: str) -> tuple[str, ...]:
        answer = answers[name]
        if isinstance(answer, Exception):
            raise answer
        return answer

    names = ExternalNames(fake, timeout=1.0)
    assert await names.ensure({"a.example", "b.example"})
    assert names.snapshot() == {"a.example": ("10.0.0.1",), "b.example": ()}
    assert not await names.ensure({"a.example", "b.example"})  # nothing new to look up
    answers["a.example"] = OSError("SERVFAIL")
    answers["b.example"] = ("10.0.0.2",)
    assert await names.refresh({"a.example", "b.example"})
    assert names.snapshot() == {"a.example": ("10.0.0.1",), "b.example": ("10.0.0.2",)}
    assert await names.ensure({"b.example"})  # a.example no longer wanted
    assert names.snapshot() == {"b.example": ("10.0.0.2",)}
    assert names.failures == 2


async def test_resolve_localhost() -> None:
    from discovery.dns import resolve

    found = await resolve("localhost")
    assert "127.0.0.1" in found or "::1" in found


@pytest.mark.parametrize(("body", "too_large"), [
    (_status(504, "Timeout", "Too large resource version: 90, current: 12",
             causes=[{"reason": "ResourceVersionTooLarge",
                      "message": "Too large resource version"}], retryAfterSeconds=1), True),
    (_status(504, "Timeout", "Too large resource version: 90, current: 12"), True),
    (_status(504, "Timeout", "request did not complete within 60s"), False),
    (b"Gateway Timeout", False),
])
def test_too_large_resource_version_asks_for_a_relist(body: bytes, too_large: bool) -> None:
    err = error_from_response(504, {}, body)
    assert isinstance(err, ApiError)
    assert err.too_large is too_large
    if parse_status(body) is not None:
        with pytest.raises(ApiError) as info:
            decode_event(_line("ERROR", json.loads(body)))
        assert info.value.too_large is too_large


async def test_slow_lookup_does_not_hold_back_ensure() -> None:
    release = asyncio.Event()
    updates: list[str] = []

    async def slow(name: str) -> tuple[str, ...]:
        await release.wait()
        return ("192.0.2.7",)

    names = ExternalNames(slow, timeout=30.0, on_update=lambda: updates.append("update"))
    assert not await names.ensure({"slow.example"}, wait=0.01)  # gave up waiting
    assert names.snapshot() == {}
    release.set()
    async with asyncio.timeout(10):
        while not updates:
            await asyncio.sleep(0.01)
    assert names.snapshot() == {"slow.example": ("192.0.2.7",)}
    await names.close()


async def test_close_cancels_pending_lookups() -> None:
    started = asyncio.Event()

    async def never(name: str) -> tuple[str, ...]:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    names = ExternalNames(never, timeout=30.0)
    await names.ensure({"a.example"}, wait=0)
    await started.wait()
    await names.ensure({"b.example"}, wait=0)  # a.example no longer wanted: cancelled
    await names.close()
    assert names.snapshot() == {}


async def test_a_resolver_bug_costs_only_its_name() -> None:
    async def buggy(name: str) -> tuple[str, ...]:
        if name == "bad.example":
            raise RuntimeError("resolver bug")
        return ("192.0.2.1",)

    names = ExternalNames(buggy, timeout=1.0)
    assert await names.ensure({"bad.example", "good.example"})
    assert names.snapshot() == {"bad.example": (), "good.example": ("192.0.2.1",)}
    assert names.failures == 1


def _o(rv: str | None, spec: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "a"}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {"metadata": meta, "spec": spec}


@pytest.mark.parametrize(("old", "new", "same"), [
    (_o("5", 1), _o("5", 2), True),  # one version names one content: trusted, not compared
    (_o("5", 1), _o("6", 1), False),  # a write, even one that changed nothing we read
    (_o(None, 1), _o(None, 1), True),  # no versions (files): compared
    (_o(None, 1), _o(None, 2), False),
    (_o("", 1), _o("", 2), False),
])
def test_same_object_table(old: dict[str, Any], new: dict[str, Any], same: bool) -> None:
    assert same_object(old, new) is same


def _slice(n: int, ready: bool) -> dict[str, Any]:
    return {"metadata": {"name": f"s{n}", "namespace": "d"}, "addressType": "IPv4",
            "endpoints": [{"addresses": [f"127.4.0.{i}"],
                           "conditions": {"ready": ready, "serving": True}}
                          for i in range(3)]}


def test_slim_shares_equal_endpoint_conditions_between_slices() -> None:
    a, b, c = slim(_slice(1, True)), slim(_slice(2, True)), slim(_slice(3, False))
    conds = [ep["conditions"] for s in (a, b) for ep in s["endpoints"]]
    assert all(x is conds[0] for x in conds)  # one dict for all equal ones
    assert conds[0] == {"ready": True, "serving": True}
    assert c["endpoints"][0]["conditions"] == {"ready": False, "serving": True}
    assert c["endpoints"][0]["conditions"] is not conds[0]
    assert a == _slice(1, True)  # the object is equal to what came in


def test_slim_leaves_odd_conditions_alone() -> None:
    odd = {"metadata": {"name": "s", "namespace": "d"}, "addressType": "IPv4",
           "endpoints": [{"addresses": ["127.4.0.1"], "conditions": {"ready": ["x"]}},
                         {"addresses": ["127.4.0.2"], "conditions": "bad"}, "bad"]}
    assert slim(odd) == {"metadata": {"name": "s", "namespace": "d"}, "addressType": "IPv4",
                         "endpoints": [{"addresses": ["127.4.0.1"],
                                        "conditions": {"ready": ["x"]}},
                                       {"addresses": ["127.4.0.2"], "conditions": "bad"},
                                       "bad"]}


def test_a_crd_kind_keeps_generation_and_age() -> None:
    """Gateway API objects keep metadata.generation (their status's observedGeneration)
    and creationTimestamp (the spec's oldest-wins tie-break); built-in kinds do not."""
    from discovery.informer import custom_kind

    obj = {"metadata": {"name": "r", "namespace": "d", "generation": 2, "uid": "u",
                        "creationTimestamp": "2026-01-01T00:00:00Z"}}
    kind = custom_kind("gateway.networking.k8s.io", "v1", "httproutes")
    assert slim(obj, kind.more_metadata)["metadata"] == {
        "name": "r", "namespace": "d", "generation": 2,
        "creationTimestamp": "2026-01-01T00:00:00Z"}
    assert slim(obj)["metadata"] == {"name": "r", "namespace": "d"}
