"""Where the election record lives: a coordination.k8s.io/v1 Lease, or (for fleets that
still run the 2016 leader-elector sidecar) the `control-plane.alpha.kubernetes.io/leader`
annotation of an Endpoints object.

A lock remembers the object it last read or wrote, so `update` is a compare-and-swap on
that object's resourceVersion: a 409 means someone else wrote in between. Fields the lock
does not own (labels, other annotations, a Lease's `strategy`) are passed back unchanged.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Protocol

from kubernetes_asyncio.client import ApiClient

from election import kapi
from election.decide import Record, format_microtime, format_time, parse_time

LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"

_LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
_ENDPOINTS = "/api/v1/namespaces/{namespace}/endpoints"


class Lock(Protocol):
    """A record store with compare-and-swap. Errors are `kapi.ApiError`."""

    @property
    def description(self) -> str: ...

    async def get(self) -> Record | None:
        """The current record, or None when the lock object does not exist."""
        ...

    async def create(self, record: Record) -> None: ...

    async def update(self, record: Record) -> None:
        """Write `record` over the object last read or written (409 if it moved on)."""
        ...


class _ObjectLock:
    """The compare-and-swap I/O both locks share: GET, POST, and PUT over the object last
    read or written. Subclasses say where the record sits in their object."""

    _collection = ""  # the list URL, with {namespace}
    _noun = ""

    def __init__(self, api: ApiClient, namespace: str, name: str) -> None:
        self._api = api
        self._params = {"namespace": namespace, "name": name}
        self._object: dict[str, Any] | None = None

    @property
    def description(self) -> str:
        return f"{self._noun} {self._params['namespace']}/{self._params['name']}"

    async def get(self) -> Record | None:
        try:
            obj = await kapi.call(self._api, "GET", self._collection + "/{name}",
                                  params=self._params)
        except kapi.ApiError as exc:
            if exc.not_found:
                return None
            raise
        self._object = _as_dict(obj)
        return self._read(self._object)

    async def create(self, record: Record) -> None:
        body = self._new_body(record)
        self._object = _as_dict(await kapi.call(self._api, "POST", self._collection,
                                                params=self._params, body=body))

    async def update(self, record: Record) -> None:
        if self._object is None:
            raise kapi.ApiError(0, "NotRead",
                                f"{self._noun} not read yet; get or create it first")
        body = copy.deepcopy(self._object)
        self._write(body, record)
        self._object = _as_dict(await kapi.call(
            self._api, "PUT", self._collection + "/{name}", params=self._params, body=body))

    def _read(self, obj: dict[str, Any]) -> Record:
        raise NotImplementedError

    def _new_body(self, record: Record) -> dict[str, Any]:
        raise NotImplementedError

    def _write(self, body: dict[str, Any], record: Record) -> None:
        raise NotImplementedError


class LeaseLock(_ObjectLock):
    """The record in a Lease's spec; times as MicroTime."""

    _collection = _LEASES
    _noun = "lease"

    def _read(self, obj: dict[str, Any]) -> Record:
        return lease_spec_to_record(_as_dict(obj.get("spec")))

    def _new_body(self, record: Record) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._params["name"], "namespace": self._params["namespace"]},
            "spec": record_to_lease_spec(record),
        }

    def _write(self, body: dict[str, Any], record: Record) -> None:
        spec = _as_dict(body.get("spec"))
        for key in ("acquireTime", "renewTime"):
            spec.pop(key, None)
        spec.update(record_to_lease_spec(record))
        body["spec"] = spec


class EndpointsLock(_ObjectLock):
    """The record as JSON in an Endpoints annotation; times in whole seconds, field
    `leaderTransitions` — byte-compatible with client-go's EndpointsLock (removed in
    2021) and the 2016 leader-elector sidecar built on it."""

    _collection = _ENDPOINTS
    _noun = "endpoints"

    def _read(self, obj: dict[str, Any]) -> Record:
        annotations = _as_dict(_as_dict(obj.get("metadata")).get("annotations"))
        # An Endpoints without the annotation (the sidecar pre-creates an empty one) holds
        # an empty record: nobody leads, anyone may take it.
        return annotation_to_record(annotations.get(LEADER_ANNOTATION, ""))

    def _new_body(self, record: Record) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": self._params["name"],
                "namespace": self._params["namespace"],
                "annotations": {LEADER_ANNOTATION: record_to_annotation(record)},
            },
        }

    def _write(self, body: dict[str, Any], record: Record) -> None:
        metadata = _as_dict(body.get("metadata"))
        annotations = _as_dict(metadata.get("annotations"))
        annotations[LEADER_ANNOTATION] = record_to_annotation(record)
        metadata["annotations"] = annotations
        body["metadata"] = metadata


LOCK_KINDS = ("leases", "endpoints")


def make_lock(kind: str, api: ApiClient, namespace: str, name: str) -> Lock:
    """`leases` (the default) or `endpoints` (the 2016 sidecar's annotation lock)."""
    if kind == "endpoints":
        return EndpointsLock(api, namespace, name)
    if kind == "leases":
        return LeaseLock(api, namespace, name)
    raise ValueError(f"unknown election lock {kind!r}: use one of {', '.join(LOCK_KINDS)}")


def record_to_lease_spec(record: Record) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.lease_seconds,
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time is not None:
        spec["acquireTime"] = format_microtime(record.acquire_time)
    if record.renew_time is not None:
        spec["renewTime"] = format_microtime(record.renew_time)
    return spec


def lease_spec_to_record(spec: dict[str, Any]) -> Record:
    return Record(
        holder=_str(spec.get("holderIdentity")),
        lease_seconds=_int(spec.get("leaseDurationSeconds")),
        acquire_time=parse_time(spec.get("acquireTime")),
        renew_time=parse_time(spec.get("renewTime")),
        transitions=_int(spec.get("leaseTransitions")),
    )


def record_to_annotation(record: Record) -> str:
    value = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.lease_seconds,
        "acquireTime": format_time(record.acquire_time) if record.acquire_time else None,
        "renewTime": format_time(record.renew_time) if record.renew_time else None,
        "leaderTransitions": record.transitions,
    }
    return json.dumps(value, separators=(",", ":"))


def annotation_to_record(text: object) -> Record:
    """The annotation's record; an absent or unreadable one reads as the empty record
    (client-go would fail the round on bad JSON; an empty record lets the election repair
    the annotation instead of stalling forever)."""
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        value = {}
    if not isinstance(value, dict):
        value = {}
    return Record(
        holder=_str(value.get("holderIdentity")),
        lease_seconds=_int(value.get("leaseDurationSeconds")),
        acquire_time=parse_time(value.get("acquireTime")),
        renew_time=parse_time(value.get("renewTime")),
        transitions=_int(value.get("leaderTransitions")),
    )


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
