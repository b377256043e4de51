"""The resources the fake serves: one row per REST resource, with its strategy.

A row says where the resource lives (group, version, plural), what the registry strategy
allows (status subresource, create-on-PUT, unconditional PUT), and how objects are defaulted
and validated. Validators return field errors (`Cause`); the store turns them into 422s.
Sources: kubernetes `pkg/registry/*/strategy.go`, `pkg/apis/*/validation`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.kfake.errors import (
    Cause,
    forbidden,
    invalid,
    not_supported,
    required,
    too_long,
)
from tests.kfake.selectors import LABEL_KEY_RE, LABEL_VALUE_RE

JsonObj = dict[str, Any]
Validator = Callable[[JsonObj, "JsonObj | None"], list[Cause]]
Defaulter = Callable[[JsonObj, "JsonObj | None", "Allocator"], None]
Converter = Callable[[JsonObj], JsonObj]

MICROTIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
RFC3339_LAYOUT = "2006-01-02T15:04:05Z07:00"
_MICROTIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")

ENDPOINTS_WARNING = (
    '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"'
)


_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"({_OCTET}\.){{3}}{_OCTET}")


def ip_version(text: Any) -> int:
    """4 or 6 for a valid address, 0 otherwise (a regex first: ipaddress is slow in bulk)."""
    if not isinstance(text, str):
        return 0
    if _IPV4_RE.fullmatch(text):
        return 4
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "dns1035": (_DNS1035, 63,
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character "
                "(e.g. 'my-name',  or 'abc-123', regex used for validation is "
                "'[a-z]([-a-z0-9]*[a-z0-9])?')"),
    "label": (_DNS1123_LABEL, 63,
              "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
              "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
              "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"),
    "subdomain": (_DNS1123_SUBDOMAIN, 253,
                  "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                  "characters, '-' or '.', and must start and end with an alphanumeric character "
                  "(e.g. 'example.com', regex used for validation is "
                  "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
}
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def validate_meta(res: Resource, obj: JsonObj) -> list[Cause]:
    """ObjectMeta rules shared by every kind: the name's format, label and annotation keys."""
    causes: list[Cause] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    pattern, limit, message = _NAME_RULES[res.name_rule]
    if name and (len(name) > limit or not pattern.fullmatch(name)):
        causes.append(invalid("metadata.name", name, message))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return [*causes, invalid("metadata.labels", labels, "must be a map of strings")]
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
            causes.append(invalid("metadata.labels", key, "name part must consist of "
                                  "alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE_RE.match(value):
            causes.append(invalid("metadata.labels", value, _LABEL_VALUE_MSG))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        return [*causes, invalid("metadata.annotations", annotations, "must be a map")]
    for key, value in annotations.items():
        if not LABEL_KEY_RE.match(key):
            causes.append(invalid("metadata.annotations", key, "name part must consist of "
                                  "alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(value, str):
            causes.append(invalid("metadata.annotations", value, "must be a string"))
    return causes


class DecodeError(ValueError):
    """A body the server cannot decode into the type (a 400, not a 422)."""


class Allocator:
    """Cluster IPs and node ports handed out to Services, as the real allocators do."""

    def __init__(self) -> None:
        self._next_ip = 10
        self._next_port = 30000

    def cluster_ip(self) -> str:
        n = self._next_ip  # 10.96.0.0/12, as kubeadm's default service CIDR
        self._next_ip += 1
        return f"10.{96 + (n >> 16) % 16}.{(n >> 8) & 255}.{n & 255}"

    def node_port(self) -> int:
        p = self._next_port
        self._next_port += 1
        return p


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    has_status: bool = False
    create_on_update: bool = False
    unconditional_update: bool = True
    generation: bool = False
    return_deleted: bool = False  # DELETE answers the object (else a Success Status)
    name_rule: str = "subdomain"  # "dns1035" (services), "label" (namespaces), "subdomain"
    initial_status: str = "{}"  # JSON of the status a create starts with (PrepareForCreate)
    # A second version of another resource: its objects live in that resource's storage
    # (`storage`, a lookup key) and are converted on the way in and out.
    storage: str = ""
    to_storage: Converter | None = field(default=None, compare=False, hash=False)
    from_storage: Converter | None = field(default=None, compare=False, hash=False)
    time_fields: tuple[tuple[str, ...], ...] = ()
    microtime_fields: tuple[tuple[str, ...], ...] = ()
    warning: str | None = None
    validate: Validator | None = field(default=None, compare=False, hash=False)
    default: Defaulter | None = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def key(self) -> str:
        """`services`, `leases.coordination.k8s.io`: the name tests use with the store."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


# ---- time formats --------------------------------------------------------------------------


def check_times(res: Resource, obj: JsonObj) -> None:
    """Decode-time checks: MicroTime is strict (6 digits, a zone), Time is RFC 3339."""
    for path in res.microtime_fields:
        value = _dig(obj, path)
        if value is None:
            continue
        if not isinstance(value, str) or not _MICROTIME_RE.match(value):
            raise DecodeError(
                f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                f'parsing time "{value}" as "{MICROTIME_LAYOUT}": cannot parse '
                f'"{_tail_after_seconds(value)}" as ".000000"'
            )
    for path in res.time_fields:
        value = _dig(obj, path)
        if value is None:
            continue
        if not isinstance(value, str) or not _RFC3339_RE.match(value):
            raise DecodeError(
                f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                f'parsing time "{value}" as "{RFC3339_LAYOUT}": cannot parse '
                f'"{_tail_after_seconds(value)}" as "Z07:00"'
            )


def _tail_after_seconds(value: Any) -> str:
    return str(value)[19:] if isinstance(value, str) else str(value)


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def is_microtime(value: str) -> bool:
    return bool(_MICROTIME_RE.match(value))


# ---- services ------------------------------------------------------------------------------

_SERVICE_TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
_PROTOCOLS = ["SCTP", "TCP", "UDP"]


def _default_service(obj: JsonObj, old: JsonObj | None, alloc: Allocator) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    stype = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    old_spec = (old or {}).get("spec", {}) or {}
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "targetPort" not in port and "port" in port:
                port["targetPort"] = port["port"]
    if stype == "ExternalName":
        return
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if "clusterIP" not in spec:
        spec["clusterIP"] = old_spec.get("clusterIP") or alloc.cluster_ip()
    if spec["clusterIP"] != "None":
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    if stype in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
        old_ports = {p.get("port"): p.get("nodePort") for p in old_spec.get("ports") or []
                     if isinstance(p, dict)}
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and "nodePort" not in port:
                port["nodePort"] = old_ports.get(port.get("port")) or alloc.node_port()


def _validate_port_number(path: str, value: Any) -> list[Cause]:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        return [invalid(path, value, "must be between 1 and 65535, inclusive")]
    return []


def _validate_service(obj: JsonObj, old: JsonObj | None) -> list[Cause]:
    causes: list[Cause] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    stype = spec.get("type")
    if stype not in _SERVICE_TYPES:
        causes.append(not_supported("spec.type", stype, _SERVICE_TYPES))
    ports = spec.get("ports") or []
    if stype == "ExternalName":
        if not spec.get("externalName"):
            causes.append(required("spec.externalName"))
    elif not ports and spec.get("clusterIP") != "None":
        causes.append(required("spec.ports"))
    names: set[str] = set()
    for i, port in enumerate(ports):
        p = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            causes.append(invalid(p, port, "must be an object"))
            continue
        causes += _validate_port_number(f"{p}.port", port.get("port"))
        if port.get("protocol") not in _PROTOCOLS:
            causes.append(not_supported(f"{p}.protocol", port.get("protocol"), _PROTOCOLS))
        name = port.get("name", "")
        if len(ports) > 1 and not name:
            causes.append(required(f"{p}.name"))
        if name in names:
            causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {name!r}", f"{p}.name"))
        names.add(name)
    causes += _validate_lb_status(obj)
    return causes


def _validate_lb_status(obj: JsonObj) -> list[Cause]:
    causes: list[Cause] = []
    lb = ((obj.get("status") or {}).get("loadBalancer") or {})
    for i, ing in enumerate(lb.get("ingress") or []):
        p = f"status.loadBalancer.ingress[{i}]"
        if not isinstance(ing, dict):
            causes.append(invalid(p, ing, "must be an object"))
            continue
        ip = ing.get("ip")
        if ip:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                causes.append(invalid(f"{p}.ip", ip, "must be a valid IP address"))
        host = ing.get("hostname")
        if host:
            try:
                ipaddress.ip_address(host)
                causes.append(
                    invalid(f"{p}.hostname", host, "must be a DNS name, not an IP address"))
            except ValueError:
                pass
        mode = ing.get("ipMode")
        if mode is not None:
            if not ip:
                causes.append(forbidden(f"{p}.ipMode", "may not be specified when `ip` is not set"))
            elif mode not in ("VIP", "Proxy"):
                causes.append(not_supported(f"{p}.ipMode", mode, ["Proxy", "VIP"]))
    return causes


# ---- endpoints and endpoint slices ---------------------------------------------------------


def _validate_endpoints(obj: JsonObj, old: JsonObj | None) -> list[Cause]:
    causes: list[Cause] = []
    for i, subset in enumerate(obj.get("subsets") or []):
        p = f"subsets[{i}]"
        if not isinstance(subset, dict):
            causes.append(invalid(p, subset, "must be an object"))
            continue
        for key in ("addresses", "notReadyAddresses"):
            for j, addr in enumerate(subset.get(key) or []):
                ip = addr.get("ip") if isinstance(addr, dict) else None
                if not ip:
                    causes.append(required(f"{p}.{key}[{j}].ip"))
                    continue
                try:
                    ipaddress.ip_address(ip)
                except ValueError:
                    causes.append(invalid(f"{p}.{key}[{j}].ip", ip, "must be a valid IP address"))
        for k, port in enumerate(subset.get("ports") or []):
            causes += _validate_port_number(f"{p}.ports[{k}].port", (port or {}).get("port"))
    return causes


def _default_endpoints(obj: JsonObj, old: JsonObj | None, alloc: Allocator) -> None:
    for subset in obj.get("subsets") or []:
        for port in (subset or {}).get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


_ADDRESS_TYPES = ["FQDN", "IPv4", "IPv6"]


def _default_slice(obj: JsonObj, old: JsonObj | None, alloc: Allocator) -> None:
    # `endpoints` and `ports` have no omitempty: an empty slice is written as null.
    if not obj.get("endpoints"):
        obj["endpoints"] = None
    if not obj.get("ports"):
        obj["ports"] = None
    for port in obj.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _validate_slice(obj: JsonObj, old: JsonObj | None) -> list[Cause]:
    causes: list[Cause] = []
    at = obj.get("addressType")
    if not at:
        causes.append(required("addressType"))
    elif at not in _ADDRESS_TYPES:
        causes.append(not_supported("addressType", at, _ADDRESS_TYPES))
    if old is not None and old.get("addressType") != at:
        causes.append(invalid("addressType", at, "field is immutable"))
    for i, ep in enumerate(obj.get("endpoints") or []):
        p = f"endpoints[{i}]"
        addrs = ep.get("addresses") if isinstance(ep, dict) else None
        if not addrs:
            causes.append(required(f"{p}.addresses", "must contain at least 1 address"))
            continue
        if len(addrs) > 100:
            causes.append(too_long(f"{p}.addresses", addrs, 100))
        for j, addr in enumerate(addrs):
            if at in ("IPv4", "IPv6"):
                version = ip_version(addr)
                if version == 0:
                    causes.append(
                        invalid(f"{p}.addresses[{j}]", addr, "must be a valid IP address"))
                elif (version == 4) != (at == "IPv4"):
                    causes.append(invalid(f"{p}.addresses[{j}]", addr, f"must be an {at} address"))
        cond = ep.get("conditions") or {}
        for c in ("ready", "serving", "terminating"):
            if c in cond and cond[c] is not None and not isinstance(cond[c], bool):
                causes.append(invalid(f"{p}.conditions.{c}", cond[c], "must be a boolean"))
    for k, port in enumerate(obj.get("ports") or []):
        if isinstance(port, dict) and port.get("port") is not None:
            causes += _validate_port_number(f"ports[{k}].port", port.get("port"))
    return causes


# ---- leases --------------------------------------------------------------------------------


def _default_lease(obj: JsonObj, old: JsonObj | None, alloc: Allocator) -> None:
    # strategy and preferredHolder are dropped while the CoordinatedLeaderElection gate is
    # off, its default (kubernetes `pkg/registry/coordination/lease/strategy.go`).
    spec = obj.get("spec")
    if isinstance(spec, dict):
        spec.pop("strategy", None)
        spec.pop("preferredHolder", None)


def _validate_lease(obj: JsonObj, old: JsonObj | None) -> list[Cause]:
    causes: list[Cause] = []
    spec = obj.get("spec") or {}
    lds = spec.get("leaseDurationSeconds")
    if lds is not None and (not isinstance(lds, int) or lds <= 0):
        causes.append(invalid("spec.leaseDurationSeconds", lds, "must be greater than 0"))
    lt = spec.get("leaseTransitions")
    if lt is not None and (not isinstance(lt, int) or lt < 0):
        causes.append(invalid("spec.leaseTransitions", lt, "must be greater than or equal to 0"))
    return causes


# ---- events --------------------------------------------------------------------------------

_EVENT_TYPES = ["Normal", "Warning"]


def _validate_core_event(obj: JsonObj, old: JsonObj | None) -> list[Cause]:
    if old is not None:
        return []  # `ValidateEventUpdate` for core/v1 checks only the metadata
    causes: list[Cause] = []
    ns = (obj.get("metadata") or {}).get("namespace", "")
    involved = obj.get("involvedObject") or {}
    if obj.get("eventTime") is None:
        if involved.get("namespace", "") != ns and involved.get("namespace"):
            causes.append(invalid("involvedObject.namespace", involved.get("namespace"),
                                  "does not match event.namespace"))
    else:
        for f in ("reportingController", "reportingInstance", "action", "reason"):
            if not obj.get(f):
                causes.append(required(f))
        inst = obj.get("reportingInstance") or ""
        if len(inst) > 128:
            causes.append(too_long("reportingInstance", inst, 128))
    etype = obj.get("type")
    if etype and etype not in _EVENT_TYPES:
        causes.append(not_supported("type", etype, _EVENT_TYPES))
    return causes


def _default_core_event(obj: JsonObj, old: JsonObj | None, alloc: Allocator) -> None:
    # core/v1 Event fields without omitempty, or structs omitempty cannot drop, are written
    # as zero values: {} for references and sources, null for unset times, "" for strings.
    obj.setdefault("involvedObject", {})
    obj.setdefault("source", {})
    for f in ("firstTimestamp", "lastTimestamp", "eventTime"):
        obj.setdefault(f, None)
    obj.setdefault("reportingComponent", "")
    obj.setdefault("reportingInstance", "")


# events.k8s.io/v1 name → core/v1 name (kubernetes `pkg/apis/events/v1/conversion.go`)
_EVENTS_V1_TO_CORE = {
    "regarding": "involvedObject", "related": "related", "note": "message",
    "reason": "reason", "type": "type", "eventTime": "eventTime", "series": "series",
    "action": "action", "reportingController": "reportingComponent",
    "reportingInstance": "reportingInstance", "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp", "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
}


def events_v1_to_core(obj: JsonObj) -> JsonObj:
    core: JsonObj = {"apiVersion": "v1", "kind": "Event", "metadata": obj.get("metadata", {})}
    for new, old in _EVENTS_V1_TO_CORE.items():
        if obj.get(new) not in (None, "", {}, 0):
            core[old] = obj[new]
    _default_core_event(core, None, Allocator())
    return core


def core_to_events_v1(obj: JsonObj) -> JsonObj:
    ev: JsonObj = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
                   "metadata": obj.get("metadata", {})}
    for new, old in _EVENTS_V1_TO_CORE.items():
        if obj.get(old) not in (None, "", {}, 0):
            ev[new] = obj[old]
    # the zero values events.k8s.io/v1 writes (fields without omitempty, or structs)
    ev.setdefault("eventTime", None)
    ev.setdefault("regarding", {})
    ev.setdefault("deprecatedSource", {})
    ev.setdefault("deprecatedFirstTimestamp", None)
    ev.setdefault("deprecatedLastTimestamp", None)
    return ev


_EVENTS_V1_IMMUTABLE = ("regarding", "reason", "action", "reportingController",
                        "reportingInstance", "eventTime")


def _validate_events_v1(obj: JsonObj, old: JsonObj | None) -> list[Cause]:
    if old is not None:
        # `ValidateEventUpdate` for events.k8s.io: what the event is about cannot change
        return [invalid(f, obj.get(f), "field is immutable") for f in _EVENTS_V1_IMMUTABLE
                if obj.get(f) != old.get(f)]
    causes: list[Cause] = []
    if obj.get("eventTime") is None:
        causes.append(required("eventTime"))
    etype = obj.get("type")
    if not etype:
        causes.append(required("type"))
    elif etype not in _EVENT_TYPES:
        causes.append(not_supported("type", etype, _EVENT_TYPES))
    for f in ("reportingController", "reportingInstance", "action", "reason", "regarding"):
        if not obj.get(f):
            causes.append(required(f))
    inst = obj.get("reportingInstance") or ""
    if len(inst) > 128:
        causes.append(too_long("reportingInstance", inst, 128))
    note = obj.get("note") or ""
    if len(note.encode()) > 1024:
        causes.append(too_long("note", note, 1024))
    for f in ("deprecatedSource", "deprecatedFirstTimestamp", "deprecatedLastTimestamp",
              "deprecatedCount"):
        if obj.get(f):
            causes.append(forbidden(f, "must be unset"))
    series = obj.get("series")
    if series is not None:
        if not isinstance(series.get("count"), int) or series["count"] < 2:
            causes.append(invalid("series.count", series.get("count"),
                                  "should be at least 2"))
        if not series.get("lastObservedTime"):
            causes.append(required("series.lastObservedTime"))
    return causes


# ---- networking.k8s.io/v1 Ingress and IngressClass, v1 Secret ----------------------------
# (kubernetes `pkg/apis/networking/validation/validation.go`, `pkg/apis/core/validation`)

_PATH_TYPES = ["Exact", "ImplementationSpecific", "Prefix"]


def _validate_backend(b: Any, p: str) -> list[Cause]:
    if not isinstance(b, dict):
        return [required(p)]
    svc, res = b.get("service"), b.get("resource")
    if (svc is None) == (res is None):
        return [invalid(p, "", "cannot set both service and resource backends")
                if svc is not None else required(p, "one of service or resource")]
    if svc is None:
        return [] if isinstance(res, dict) and res.get("kind") and res.get("name") else [
            required(f"{p}.resource.kind")]
    causes: list[Cause] = []
    if not isinstance(svc, dict) or not svc.get("name"):
        return [required(f"{p}.service.name")]
    port = svc.get("port") if isinstance(svc.get("port"), dict) else {}
    number, name = port.get("number"), port.get("name")
    if number is not None and name:
        causes.append(invalid(f"{p}.service.port", port,
                              "cannot set both port name & port number"))
    elif number is None and not name:
        causes.append(required(f"{p}.service.port", "port name or number is required"))
    elif number is not None and not (isinstance(number, int) and 0 < number < 65536):
        causes.append(invalid(f"{p}.service.port.number", number,
                              "must be between 1 and 65535, inclusive"))
    return causes


def _validate_ingress(obj: JsonObj, old: JsonObj | None) -> list[Cause]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes: list[Cause] = []
    rules = spec.get("rules") or []
    if not rules and spec.get("defaultBackend") is None:
        causes.append(invalid("spec", "", "either `defaultBackend` or `rules` must be "
                                          "specified"))
    if spec.get("defaultBackend") is not None:
        causes += _validate_backend(spec["defaultBackend"], "spec.defaultBackend")
    for i, rule in enumerate(rules):
        p = f"spec.rules[{i}]"
        host = rule.get("host") if isinstance(rule, dict) else None
        if host:
            bare = host[2:] if host.startswith("*.") else host
            if "*" in bare or not _DNS1123_SUBDOMAIN.fullmatch(bare):
                causes.append(invalid(f"{p}.host", host, "a wildcard DNS-1123 subdomain "
                                      "must start with '*.', followed by a valid DNS subdomain"))
        http = rule.get("http") if isinstance(rule, dict) else None
        if http is None:
            continue
        paths = http.get("paths") if isinstance(http, dict) else None
        if not paths:
            causes.append(required(f"{p}.http.paths"))
            continue
        for j, path in enumerate(paths):
            pp = f"{p}.http.paths[{j}]"
            ptype = path.get("pathType")
            if not ptype:
                causes.append(required(f"{pp}.pathType", "pathType must be specified"))
            elif ptype not in _PATH_TYPES:
                causes.append(not_supported(f"{pp}.pathType", ptype, _PATH_TYPES))
            value = path.get("path") or ""
            if ptype in ("Exact", "Prefix") and not value.startswith("/"):
                causes.append(invalid(f"{pp}.path", value, "must be an absolute path"))
            causes += _validate_backend(path.get("backend"), f"{pp}.backend")
    for i, tls in enumerate(spec.get("tls") or []):
        for j, host in enumerate((tls or {}).get("hosts") or []):
            bare = host[2:] if isinstance(host, str) and host.startswith("*.") else host
            if not isinstance(bare, str) or not _DNS1123_SUBDOMAIN.fullmatch(bare):
                causes.append(invalid(f"spec.tls[{i}].hosts[{j}]", host,
                                      "a wildcard DNS-1123 subdomain must start with '*.', "
                                      "followed by a valid DNS subdomain"))
    name = spec.get("ingressClassName")
    if name is not None and not _DNS1123_SUBDOMAIN.fullmatch(str(name)):
        causes.append(invalid("spec.ingressClassName", name, "a lowercase RFC 1123 subdomain"))
    return causes


def _validate_ingress_class(obj: JsonObj, old: JsonObj | None) -> list[Cause]:
    controller = (obj.get("spec") or {}).get("controller")
    if not controller:
        return [required("spec.controller")]
    if old is not None and (old.get("spec") or {}).get("controller") != controller:
        return [invalid("spec.controller", controller, "field is immutable")]
    return []


_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _validate_secret(obj: JsonObj, old: JsonObj | None) -> list[Cause]:
    causes: list[Cause] = []
    data = obj.get("data") or {}
    for k, v in data.items():
        if not isinstance(v, str) or len(v) % 4 or not _B64.fullmatch(v):
            causes.append(invalid(f"data[{k}]", "<secret contents redacted>",
                                  "illegal base64 data"))
    if obj.get("type") == "kubernetes.io/tls":
        for k in ("tls.crt", "tls.key"):
            if k not in data:
                causes.append(required(f"data[{k}]"))
    if old is not None and old.get("type") != obj.get("type"):
        causes.append(invalid("type", obj.get("type"), "field is immutable"))
    return causes


def _default_secret(obj: JsonObj, old: JsonObj | None, alloc: Allocator) -> None:
    obj.setdefault("type", "Opaque")


# ---- Gateway API --------------------------------------------------------------------------

GATEWAY_GROUP = "gateway.networking.k8s.io"
_GATEWAY_KINDS = (
    ("gatewayclasses", "GatewayClass", False, True),
    ("gateways", "Gateway", True, True),
    ("httproutes", "HTTPRoute", True, True),
    ("tlsroutes", "TLSRoute", True, True),
    ("tcproutes", "TCPRoute", True, True),
    ("referencegrants", "ReferenceGrant", True, False),
)


# ---- the table -----------------------------------------------------------------------------

RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "services", "Service", has_status=True, return_deleted=True,
             name_rule="dns1035", initial_status='{"loadBalancer": {}}',
             validate=_validate_service, default=_default_service),
    Resource("", "v1", "endpoints", "Endpoints", warning=ENDPOINTS_WARNING,
             create_on_update=True, validate=_validate_endpoints, default=_default_endpoints),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", generation=True,
             validate=_validate_slice, default=_default_slice),
    Resource("coordination.k8s.io", "v1", "leases", "Lease",
             create_on_update=True, unconditional_update=False,
             microtime_fields=(("spec", "acquireTime"), ("spec", "renewTime")),
             validate=_validate_lease, default=_default_lease),
    Resource("", "v1", "events", "Event",
             time_fields=(("firstTimestamp",), ("lastTimestamp",)),
             microtime_fields=(("eventTime",), ("series", "lastObservedTime")),
             validate=_validate_core_event, default=_default_core_event),
    # one storage for both Event APIs, as the real server has
    Resource("events.k8s.io", "v1", "events", "Event",
             time_fields=(("deprecatedFirstTimestamp",), ("deprecatedLastTimestamp",)),
             microtime_fields=(("eventTime",), ("series", "lastObservedTime")),
             validate=_validate_events_v1, storage="events",
             to_storage=events_v1_to_core, from_storage=core_to_events_v1),
    Resource("", "v1", "pods", "Pod", has_status=True, generation=True, return_deleted=True,
             initial_status='{"phase": "Pending", "qosClass": "BestEffort"}'),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, has_status=True,
             return_deleted=True, name_rule="label", initial_status='{"phase": "Active"}'),
    Resource("networking.k8s.io", "v1", "ingresses", "Ingress", has_status=True,
             generation=True, initial_status='{"loadBalancer": {}}',
             validate=_validate_ingress),
    Resource("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False,
             generation=True, validate=_validate_ingress_class),
    Resource("", "v1", "secrets", "Secret", validate=_validate_secret,
             default=_default_secret),
    # Gateway API (gateway.networking.k8s.io, standard channel v1): CRDs with a status
    # subresource, whose spec changes bump metadata.generation (status writes do not).
    *(Resource(GATEWAY_GROUP, "v1", plural, kind, namespaced=namespaced, has_status=status,
               generation=True, return_deleted=True)
      for plural, kind, namespaced, status in _GATEWAY_KINDS),
)

_BY_KEY = {r.key: r for r in RESOURCES}
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}


def lookup(key: str) -> Resource:
    """A resource by `plural` (core) or `plural.group`, e.g. `leases.coordination.k8s.io`.

    The short forms `endpointslices` and `leases` are accepted too.
    """
    if key in _BY_KEY:
        return _BY_KEY[key]
    matches = [r for r in RESOURCES if r.plural == key]
    if len(matches) == 1:
        return matches[0]
    raise KeyError(key)


def by_path(group: str, version: str, plural: str) -> Resource | None:
    return _BY_PATH.get((group, version, plural))


def for_object(obj: JsonObj) -> Resource:
    """The resource of an object carrying `apiVersion` and `kind`."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    for r in RESOURCES:
        if r.api_version == api_version and r.kind == kind:
            return r
    raise KeyError(f"{api_version} {kind}")
