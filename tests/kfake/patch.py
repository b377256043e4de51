"""PATCH bodies: JSON patch (RFC 6902), merge patch (RFC 7386) and strategic merge patch.

Strategic merge patch is merge patch plus, for the lists the Go types tag with
`patchStrategy:"merge"`, a merge of list items by their `patchMergeKey`, and the `$patch`
directives (`replace`, `delete`). Lists without a merge key are replaced whole (so
`status.loadBalancer.ingress` is). The merge keys below are those of the types the fake serves
(kubernetes `staging/src/k8s.io/api/core/v1/types.go`, `meta/v1/types.go`).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch  # type: ignore[import-untyped]

from tests.kfake import errors
from tests.kfake.resources import Resource

JsonObj = dict[str, Any]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# path of the list (keys, '*' for list items) → merge key; '' merges a list of primitives.
_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("metadata", "ownerReferences"): "uid",
    ("metadata", "finalizers"): "",
    ("spec", "ports"): "port",
    ("status", "conditions"): "type",
    ("spec", "containers"): "name",
    ("spec", "initContainers"): "name",
    ("spec", "containers", "*", "ports"): "containerPort",
    ("spec", "containers", "*", "env"): "name",
    ("spec", "containers", "*", "volumeMounts"): "mountPath",
    ("spec", "volumes"): "name",
    ("spec", "tolerations"): "",
    ("status", "podIPs"): "ip",
    ("status", "hostIPs"): "ip",
}
# ports of a Service merge by port; those of a pod's containers by containerPort.
_SERVICE_ONLY = {("spec", "ports")}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any, res: Resource,
                          path: tuple[str, ...] = ()) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive is not None:
        raise errors.bad_request(f"Unknown patch type: {directive}")
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key == "$retainKeys":
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            drop = set(value or [])
            out[field] = [v for v in out.get(field) or [] if v not in drop]
            continue
        sub = (*path, key)
        if value is None:
            out.pop(key, None)
            continue
        merge_key = _merge_key(sub, res)
        if isinstance(value, list) and merge_key is not None:
            out[key] = _merge_list(out.get(key), value, merge_key, res, sub)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(out.get(key), value, res, sub)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_key(path: tuple[str, ...], res: Resource) -> str | None:
    generic = tuple("*" if p.isdigit() else p for p in path)
    if generic in _SERVICE_ONLY and res.plural != "services":
        return None
    return _MERGE_KEYS.get(generic)


def _merge_list(current: Any, patch: list[Any], key: str, res: Resource,
                path: tuple[str, ...]) -> list[Any]:
    items = list(current) if isinstance(current, list) else []
    if key == "":
        for v in patch:
            if v not in items:
                items.append(copy.deepcopy(v))
        return items
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch
                if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise errors.bad_request(f"map: {item} does not contain declared merge key: {key}")
        idx = next((i for i, cur in enumerate(items)
                    if isinstance(cur, dict) and cur.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                items.pop(idx)
            continue
        if idx is None:
            items.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            items[idx] = strategic_merge_patch(items[idx], item, res, (*path, str(idx)))
    return items


def apply_patch(res: Resource, obj: JsonObj, patch: Any, content_type: str) -> Any:
    """The patched object; the caller then stores it as an update (with its preconditions)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == JSON_PATCH:
        if not isinstance(patch, list):
            raise errors.bad_request(
                "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            return jsonpatch.apply_patch(obj, patch)
        except jsonpatch.JsonPatchTestFailed as e:
            raise errors.invalid_object("", "", "", [
                errors.invalid("patch", patch, str(e))]) from None
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
            raise errors.invalid_object("", "", "", [
                errors.invalid("patch", patch, str(e))]) from None
    if ctype in (MERGE_PATCH, STRATEGIC_PATCH):
        if not isinstance(patch, dict):
            raise errors.bad_request(
                "json: cannot unmarshal array into Go value of type map[string]interface {}")
        if ctype == MERGE_PATCH:
            return merge_patch(obj, patch)
        return strategic_merge_patch(obj, patch, res)
    raise errors.unsupported_media_type(content_type)
