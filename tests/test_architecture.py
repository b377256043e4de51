"""docs/ARCHITECTURE.md draws the layers that pyproject.toml's import-linter contracts
enforce: the two must say the same thing."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _doc_layers() -> list[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_documented_layers_are_the_enforced_ones() -> None:
    (layers,) = [c["layers"] for c in _contracts()
                 if c["type"] == "layers" and "containers" not in c]
    assert _doc_layers() == layers


def test_every_pylb_layer_is_in_the_whole_picture() -> None:
    """The exhaustive contract over pylb names the same modules, in the same order."""
    (inner,) = [c["layers"] for c in _contracts() if c.get("containers") == ["pylb"]]
    whole = [layer for layer in _doc_layers() if layer.startswith("pylb.")]
    assert [" : ".join(f"pylb.{m.strip()}" for m in str(layer).split(":"))
            for layer in inner] == whole
