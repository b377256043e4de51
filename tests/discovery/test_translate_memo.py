"""translate()'s per-service memo never changes a result: a table built with the memo warm
equals one built cold, and a new resourceVersion of a service or of its endpoints is seen."""

from __future__ import annotations

import copy
from typing import Any

import discovery.translate as tr
from discovery.translate import KubeObjects, translate
from pylb.config import Settings


def svc(name: str, rv: str, **ann: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": rv,
                         "annotations": {f"serviceloadbalancer/{k}": v for k, v in ann.items()}},
            "spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"},
                               {"port": 53, "protocol": "UDP"}]}}


def eps(service: str, rv: str, *ips: str, ready: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": f"{service}-x", "namespace": "default",
                         "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips]}


def cold(objects: KubeObjects, settings: Settings) -> Any:
    tr._memo = {}
    return translate(objects, settings)


def test_warm_equals_cold_and_new_versions_are_seen() -> None:
    s = Settings()
    objs = KubeObjects(services=(svc("a", "1"), svc("b", "2", **{"lb.algorithm": "bogus"}),
                                 svc("c", "3")),
                       endpointslices=(eps("a", "4", "10.0.0.1"), eps("b", "5", "10.0.0.2"),
                                       eps("c", "6", "not-an-ip")))
    first = cold(objects=objs, settings=s)
    warm = translate(objs, s)
    assert warm == first and warm.render() == first.render()
    assert len(tr._memo) == 3
    # a new endpoint version (and content) is seen through the memo
    changed = KubeObjects(services=objs.services,
                          endpointslices=(eps("a", "7", "10.0.0.9"), *objs.endpointslices[1:]))
    warm2 = translate(changed, s)
    assert warm2 == cold(changed, s)
    assert "10.0.0.9" in warm2.render() and "10.0.0.1" not in warm2.render()
    # a new service version too, and other settings never reuse an entry
    changed2 = KubeObjects(services=(svc("a", "8", **{"lb.algorithm": "leastconn"}),
                                     *objs.services[1:]), endpointslices=objs.endpointslices)
    assert translate(changed2, s) == cold(changed2, s)
    other = Settings(forward_services=True)
    assert translate(changed2, other) == cold(changed2, other)


def test_objects_without_versions_are_not_memoised() -> None:
    s = Settings()
    a = svc("a", "1")
    del a["metadata"]["resourceVersion"]
    objs = KubeObjects(services=(a,), endpointslices=(eps("a", "2", "10.0.0.1"),))
    tr._memo = {}
    translate(objs, s)
    assert tr._memo == {}
    mutated = copy.deepcopy(objs)
    mutated.endpointslices[0]["endpoints"][0]["addresses"] = ["10.0.0.5"]
    assert "10.0.0.5" in translate(mutated, s).render()
