"""proxy/http's modules import each other without a circle, counting imports made only
for type checking too: each concern sits below the ones that use it (the order is
printed on failure)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import proxy.http

PACKAGE = Path(proxy.http.__file__).parent


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "proxy.http":
                found.update(f"proxy.http.{a.name}" for a in node.names)
            elif node.module.startswith("proxy.http."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("proxy.http."))
    return found


def test_no_import_circle_in_proxy_http() -> None:
    graph = {f"proxy.http.{p.stem}": _imports(p) - {f"proxy.http.{p.stem}"}
             for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert len(graph) >= 10
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import circle: {e.args[1]}") from None
    # the layering this file guards, bottom to top
    for low, high in (("exchange", "server"), ("parser", "upstream"), ("upstream", "server"),
                      ("upstream", "pool"), ("frontend", "server"), ("server", "proxy")):
        assert order.index(f"proxy.http.{low}") < order.index(f"proxy.http.{high}")
