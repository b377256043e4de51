"""Which nodes pylb serves from: the host IPs of its ready pods. What a load balancer's
status says to reach it — a Service's `status.loadBalancer.ingress` (election.publish), a
Gateway's `status.addresses` on the node's own address (discovery.gateway) — is this list,
as k3s's ServiceLB does. Pure functions over pod JSON; the callers list the pods.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

#: The label of pylb's own pods (deploy/daemonset.yaml).
POD_SELECTOR = "app=pylb"


def pod_namespace(election_namespace: str) -> str:
    """Where pylb's pods are: $POD_NAMESPACE (the downward API), else the election's
    namespace (where deploy/ puts both)."""
    return os.environ.get("POD_NAMESPACE") or election_namespace


def is_ready(pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [] if isinstance(c, dict))


def node_addresses(pods: Iterable[dict[str, Any]]) -> list[str]:
    """The distinct host IPs of the ready pods, sorted (stable status, no flapping)."""
    ips = set()
    for pod in pods:
        if not isinstance(pod, dict):
            continue
        ip = (pod.get("status") or {}).get("hostIP")
        if is_ready(pod) and isinstance(ip, str) and ip:
            try:
                packed = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
            except OSError:
                continue  # not an IP: nothing a client could reach
            ips.add((":" in ip, packed, ip))
    return [ip for _, _, ip in sorted(ips)]
