"""Status objects as the real API server writes them (apimachinery `api/errors/errors.go`).

Every builder returns an `ApiError`, an exception carrying the HTTP code, the Status body and
any extra headers; `app.py` turns it into a response. `details.kind` is the plural resource
for NotFound/AlreadyExists/Conflict and the Kind for Invalid, and `group` is left out for the
core group, as `omitempty` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

JsonObj = dict[str, Any]


@dataclass(frozen=True)
class Cause:
    """One `details.causes[]` entry: a field error (`field.Error` in apimachinery)."""

    type: str
    message: str
    field: str

    def as_json(self) -> JsonObj:
        out: JsonObj = {}
        if self.type:
            out["reason"] = self.type
        if self.message:
            out["message"] = self.message
        if self.field:
            out["field"] = self.field
        return out

    def error_string(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def fmt_value(value: Any) -> str:
    """How `field.Invalid` prints a bad value: strings quoted, numbers bare."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def invalid(path: str, value: Any, detail: str) -> Cause:
    return Cause("FieldValueInvalid", f"Invalid value: {fmt_value(value)}: {detail}", path)


def required(path: str, detail: str = "") -> Cause:
    msg = "Required value" + (f": {detail}" if detail else "")
    return Cause("FieldValueRequired", msg, path)


def forbidden(path: str, detail: str) -> Cause:
    return Cause("FieldValueForbidden", f"Forbidden: {detail}", path)


def too_long(path: str, value: Any, limit: int) -> Cause:
    return Cause(
        "FieldValueTooLong", f"Too long: may not be more than {limit} bytes", path
    )


def not_supported(path: str, value: Any, valid: list[str]) -> Cause:
    options = ", ".join(json.dumps(v) for v in valid)
    return Cause(
        "FieldValueNotSupported",
        f"Unsupported value: {fmt_value(value)}: supported values: {options}",
        path,
    )


@dataclass
class ApiError(Exception):
    """An error response: HTTP code, Status body, extra headers."""

    code: int
    body: JsonObj
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.body.get('reason')}: {self.body.get('message')}"


def status(
    code: int,
    reason: str,
    message: str,
    *,
    name: str = "",
    group: str = "",
    kind: str = "",
    causes: list[Cause] | None = None,
    retry_after: int = 0,
) -> ApiError:
    """A failure Status; fields empty in Go are left out (`omitempty`)."""
    body: JsonObj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:
        body["reason"] = reason
    details: JsonObj = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:
        details["kind"] = kind
    if causes:
        details["causes"] = [c.as_json() for c in causes]
    if retry_after > 0:
        details["retryAfterSeconds"] = retry_after
    if details:
        body["details"] = details
    body["code"] = code
    headers = {"Retry-After": str(retry_after)} if retry_after > 0 else {}
    return ApiError(code, body, headers)


def qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return status(
        404, "NotFound", f'{qualified(plural, group)} "{name}" not found',
        name=name, group=group, kind=plural,
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return status(
        409, "AlreadyExists", f'{qualified(plural, group)} "{name}" already exists',
        name=name, group=group, kind=plural,
    )


def conflict(plural: str, group: str, name: str) -> ApiError:
    msg = (
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": the object has '
        "been modified; please apply your changes to the latest version and try again"
    )
    return status(409, "Conflict", msg, name=name, group=group, kind=plural)


def conflict_uid(plural: str, group: str, name: str, want: str, have: str) -> ApiError:
    msg = (
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": '
        f"Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
    )
    return status(409, "Conflict", msg, name=name, group=group, kind=plural)


def invalid_object(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    """422 Invalid; the message aggregates the field errors like `errs.ToAggregate()`."""
    gk = f"{kind}.{group}" if group else kind
    parts = [c.error_string() for c in causes]
    agg = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return status(
        422, "Invalid", f'{gk} "{name}" is invalid: {agg}',
        name=name, group=group, kind=kind, causes=causes,
    )


def bad_request(message: str) -> ApiError:
    return status(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return status(410, "Expired", message)


def expired_status_json(message: str) -> JsonObj:
    """The object of a watch ERROR event for a compacted resourceVersion."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Expired",
        "code": 410,
    }


def too_large_rv(requested: int, current: int) -> ApiError:
    """504 for a resourceVersion newer than the store (apiserver `storage/errors.go`
    `NewTooLargeResourceVersionError`, a `NewTimeoutError`: hence the "Timeout: " prefix)."""
    err = status(
        504, "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        causes=[Cause("ResourceVersionTooLarge", "Too large resource version", "")],
        retry_after=1,
    )
    return err


def unauthorized() -> ApiError:
    return status(401, "Unauthorized", "Unauthorized")


def forbidden_request(user: str, verb: str, plural: str, group: str, ns: str) -> ApiError:
    where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
    msg = (
        f'{qualified(plural, group)} is forbidden: User "{user}" cannot {verb} resource '
        f'"{plural}" in API group "{group}"{where}'
    )
    return status(403, "Forbidden", msg, group=group, kind=plural)


def too_many_requests(retry_after: int = 1) -> ApiError:
    return status(
        429, "TooManyRequests", "Too many requests, please try again later.",
        retry_after=retry_after,
    )


def internal_error(detail: str = "fake failure") -> ApiError:
    return status(
        500, "InternalError", f"Internal error occurred: {detail}",
        causes=[Cause("", detail, "")],
    )


def service_unavailable(message: str = "apiserver is shutting down") -> ApiError:
    return status(503, "ServiceUnavailable", message, retry_after=1)


REQUEST_TIMEOUT = "Timeout: request did not complete within the allotted timeout"


def timeout(message: str = REQUEST_TIMEOUT) -> ApiError:
    return status(504, "Timeout", message, retry_after=1)


def method_not_allowed(message: str) -> ApiError:
    return status(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    return status(
        415, "UnsupportedMediaType",
        f"the body of the request was in an unknown format ({content_type}) - accepted media "
        "types include: application/json-patch+json, application/merge-patch+json, "
        "application/strategic-merge-patch+json",
    )


def invalid_list_options(causes: list[Cause]) -> ApiError:
    return invalid_object("ListOptions", "meta.k8s.io", "", causes)
