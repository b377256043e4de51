"""kubernetes-asyncio without the 1,000 modules discovery never uses.

`import kubernetes_asyncio` (or anything under it) runs its package `__init__`s, which
import every API class and every model class the generator produced — ~1,300 modules,
38 MiB of the controller's RSS (measured: 40 MiB with aiohttp and the config loader
alone, 78 MiB with them), and seconds of CPU at start. pylb reads the API's JSON itself
(discovery.informer, election.kapi): it needs `ApiClient`, `Configuration`, the config
loaders and two API classes, which only build authenticated requests.

`install()`, called before anything imports kubernetes-asyncio, puts its four big
packages (`kubernetes_asyncio`, `.client`, `.client.api`, `.client.models`) in
`sys.modules` as modules whose `__init__` has not run, with their real `__path__` and
spec. A submodule imports as usual (`kubernetes_asyncio.client.api_client`); a name the
package would have had is found on first use (`__getattr__`): the names discovery and
election use from the submodule that defines them, and anything else — a model class,
say — by running the package's real `__init__` then, after which the package is exactly
what it would have been. So code that wants all of kubernetes-asyncio still gets it; a
process that only lists and watches never pays for it. Nothing is imported by `install()`
itself: a `--source file:` run imports no kubernetes-asyncio at all, as before.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

ROOT = "kubernetes_asyncio"
PACKAGES = (ROOT, f"{ROOT}.client", f"{ROOT}.client.api", f"{ROOT}.client.models")

# name → the submodule defining it, for the names pylb imports from the packages.
LEAN = {
    f"{ROOT}.client": {
        "ApiClient": "api_client",
        "Configuration": "configuration",
        "ApiException": "exceptions",
        "CoreV1Api": "api.core_v1_api",
        "DiscoveryV1Api": "api.discovery_v1_api",
        "NetworkingV1Api": "api.networking_v1_api",  # Ingress, IngressClass
        "CustomObjectsApi": "api.custom_objects_api",  # the Gateway API's kinds
    },
    f"{ROOT}.client.api": {
        "CoreV1Api": "core_v1_api",
        "DiscoveryV1Api": "discovery_v1_api",
        "NetworkingV1Api": "networking_v1_api",
        "CustomObjectsApi": "custom_objects_api",
    },
}


def install() -> bool:
    """Stand the lean packages in (see the module docstring); False when kubernetes-asyncio
    is imported already or not installed (then nothing changes)."""
    if ROOT in sys.modules:
        return False
    made: list[str] = []
    try:
        for name in PACKAGES:
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None or spec.submodule_search_locations is None:
                raise ImportError(name)
            module = importlib.util.module_from_spec(spec)
            module.__dict__["__getattr__"] = _resolver(module)
            sys.modules[name] = module
            made.append(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)
    except ImportError:
        for name in made:
            sys.modules.pop(name, None)
        return False
    return True


def complete(module: ModuleType) -> None:
    """Run a lean package's real `__init__` (once): it becomes the whole package."""
    if module.__dict__.pop("__getattr__", None) is None:
        return
    spec = module.__spec__
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(module)


def _resolver(module: ModuleType) -> Any:
    lean = LEAN.get(module.__name__, {})

    def __getattr__(name: str) -> Any:
        where = lean.get(name)
        if where is not None:
            value = getattr(importlib.import_module(f"{module.__name__}.{where}"), name)
            setattr(module, name, value)
            return value
        full = f"{module.__name__}.{name}"
        if full in sys.modules:
            return sys.modules[full]
        if importlib.util.find_spec(full) is not None:  # a submodule
            return importlib.import_module(full)
        complete(module)
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}") \
                from None

    return __getattr__
