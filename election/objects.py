"""What pylb writes into Kubernetes objects it does not own: the status.loadBalancer patch
and the Events on Services (election/publish.py) and on Ingresses (election/ingress_status.py).
Pure functions and values; the two publishers share them from here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

COMPONENT = "pylb"


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    namespace: str
    name: str
    type: str  # Normal or Warning
    reason: str
    message: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.reason)


def ingress_patch(service: dict[str, Any], addresses: list[str],
                  exposed: bool) -> dict[str, Any] | None:
    """The status patch that brings the service's ingress to what it should be, or None
    when it already is."""
    desired = [{"ip": ip} for ip in addresses] if exposed else []
    current = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    if current == desired:
        return None
    return {"status": {"loadBalancer": {"ingress": desired}}}


def event_name(service_name: str, uid: str, event: ServiceEvent) -> str:
    digest = hashlib.sha256(f"{uid}\0{event.reason}\0{event.message}".encode()).hexdigest()
    return f"{service_name}.pylb-{digest[:12]}"
