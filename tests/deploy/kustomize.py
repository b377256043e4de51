"""The part of kustomize that deploy/ uses, in Python, so that the overlays are checked
where no kubectl is installed: `resources` (files and directories), `patches` (JSON 6902,
inline, by kind and name) and `images` (newName, newTag). Anything else in a
kustomization.yaml is refused, so this cannot quietly render something kubectl would not.
Where kubectl is installed, test_manifests.py compares the two."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

KNOWN = {"apiVersion", "kind", "resources", "patches", "images"}

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    """The objects of a manifest file (every YAML document)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def build(root: Path) -> list[Doc]:
    """What `kubectl kustomize root` outputs, in resource order."""
    k = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN
    assert not unknown, f"{root}: kustomization fields this renderer lacks: {unknown}"
    assert k["kind"] == "Kustomization", root
    docs: list[Doc] = []
    for r in k.get("resources", []):
        p = (root / r).resolve()
        docs += build(p) if p.is_dir() else load(p)
    docs = copy.deepcopy(docs)
    for patch in k.get("patches", []):
        target = patch["target"]
        ops = jsonpatch.JsonPatch(yaml.safe_load(patch["patch"]))
        hits = [i for i, d in enumerate(docs) if _matches(d, target)]
        assert hits, f"{root}: patch target {target} matches nothing"
        for i in hits:
            docs[i] = ops.apply(docs[i])
    for image in k.get("images", []):
        for d in docs:
            for c in _containers(d):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return docs


def _matches(doc: Doc, target: dict[str, str]) -> bool:
    return all(doc.get("kind") == v if k == "kind" else doc["metadata"].get(k) == v
               for k, v in target.items())


def _containers(doc: Doc) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))
