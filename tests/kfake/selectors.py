"""Label and field selectors: parsing and matching (apimachinery `labels/selector.go`,
`fields/selector.go`). A parse error raises `SelectorError`, which the server answers with 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JsonObj = dict[str, Any]

LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            have = int(value or "")
        except ValueError:
            return False
        want = int(self.values[0])
        return have > want if self.op == "gt" else have < want


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError("unable to parse requirement: unbalanced parenthesis")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise SelectorError("unable to parse requirement: unbalanced parenthesis")
    parts.append("".join(cur))
    return parts


def _check_key(key: str) -> str:
    if not LABEL_KEY_RE.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise SelectorError(
            f'unable to parse requirement: key: Invalid value: "{key}": name part must consist '
            "of alphanumeric characters, '-', '_' or '.'"
        )
    return key


def _check_value(value: str) -> str:
    if not LABEL_VALUE_RE.match(value):
        raise SelectorError(
            f'unable to parse requirement: values[0][]: Invalid value: "{value}": a valid label '
            "must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
        )
    return value


_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")
_CMP_RE = re.compile(r"^\s*([^\s=!<>]+)\s*(==|!=|=|>|<)\s*(\S*)\s*$")


def parse_label_selector(text: str) -> list[Requirement]:
    """`a=b,c!=d,e in (f,g),!h,i` → requirements; empty text selects everything."""
    if not text.strip():
        return []
    reqs: list[Requirement] = []
    for raw in _split_top(text):
        part = raw.strip()
        if not part:
            raise SelectorError("found '', expected: !, identifier, or 'end of string'")
        m = _SET_RE.match(part)
        if m:
            key, op, inner = m.group(1), m.group(2), m.group(3)
            values = tuple(_check_value(v.strip()) for v in inner.split(","))
            reqs.append(Requirement(_check_key(key), op, tuple(sorted(set(values)))))
            continue
        m = _CMP_RE.match(part)
        if m:
            key, op, value = m.group(1), m.group(2), m.group(3)
            if op in (">", "<"):
                if not re.fullmatch(r"-?\d+", value):
                    raise SelectorError(
                        f"unable to parse requirement: for 'Gt', 'Lt' operators, the value "
                        f"must be an integer: {value!r}"
                    )
                reqs.append(Requirement(_check_key(key), "gt" if op == ">" else "lt", (value,)))
            else:
                reqs.append(Requirement(_check_key(key), "!=" if op == "!=" else "=",
                                        (_check_value(value),)))
            continue
        if part.startswith("!"):
            reqs.append(Requirement(_check_key(part[1:].strip()), "!"))
            continue
        if re.fullmatch(r"\S+", part):
            reqs.append(Requirement(_check_key(part), "exists"))
            continue
        raise SelectorError(f"unable to parse requirement: {part!r}")
    return reqs


def labels_match(reqs: list[Requirement], obj: JsonObj) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


# ---- field selectors -----------------------------------------------------------------------

_COMMON_FIELDS = ("metadata.name", "metadata.namespace")
EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "pods": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
             "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
             "status.nominatedNodeName"),
    "events": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
               "involvedObject.uid", "involvedObject.apiVersion",
               "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
               "reportingComponent", "source", "type"),
    "namespaces": ("status.phase",),
    "secrets": ("type",),
}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    op: str  # "=" or "!="
    value: str

    def matches(self, obj: JsonObj) -> bool:
        have = _field_value(obj, self.field)
        return (have == self.value) == (self.op == "=")


def _field_value(obj: JsonObj, path: str) -> str:
    if path == "source":
        return str(((obj.get("source") or {}).get("component")) or "")
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def _split_escaped(text: str, sep: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(text: str, plural: str) -> list[FieldRequirement]:
    if not text.strip():
        return []
    allowed = _COMMON_FIELDS + EXTRA_FIELDS.get(plural, ())
    reqs: list[FieldRequirement] = []
    for part in _split_escaped(text, ","):
        m = re.match(r"^([^=!]+?)\s*(==|!=|=)(.*)$", part.strip())
        if not m:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        key, op, value = m.group(1).strip(), m.group(2), _unescape(m.group(3))
        if key not in allowed:
            raise SelectorError(f'field label not supported: {key}')
        reqs.append(FieldRequirement(key, "!=" if op == "!=" else "=", value))
    return reqs


def fields_match(reqs: list[FieldRequirement], obj: JsonObj) -> bool:
    return all(r.matches(obj) for r in reqs)


Predicate = Callable[[JsonObj], bool]


def predicate(label_selector: str, field_selector: str, plural: str) -> Predicate:
    """One match function for both selectors; raises SelectorError on bad input."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, plural)

    def match(obj: JsonObj) -> bool:
        return labels_match(labels, obj) and fields_match(fields, obj)

    return match
