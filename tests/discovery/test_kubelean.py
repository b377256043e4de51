"""discovery.kubelean: discovery imports only the parts of kubernetes-asyncio it uses, and
whoever wants the rest still gets all of it. Each case runs in a fresh interpreter (the
test process has imported kubernetes-asyncio whole already)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(code: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


MODELS = "kubernetes_asyncio.client.models.v1_service"


def test_discovery_loads_no_generated_models_or_apis() -> None:
    r = run(f"""
import json, sys
import discovery.kube, discovery.informer, pylb.kubeapi
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api, DiscoveryV1Api
print(json.dumps({{"models": "{MODELS}" in sys.modules,
                  "apps_api": "kubernetes_asyncio.client.api.apps_v1_api" in sys.modules,
                  "names": [ApiClient.__module__, Configuration.__module__,
                            CoreV1Api.__module__, DiscoveryV1Api.__module__]}}))
""")
    assert r == {"models": False, "apps_api": False, "names": [
        "kubernetes_asyncio.client.api_client", "kubernetes_asyncio.client.configuration",
        "kubernetes_asyncio.client.api.core_v1_api",
        "kubernetes_asyncio.client.api.discovery_v1_api"]}


@pytest.mark.parametrize("ask", [
    "from kubernetes_asyncio.client import V1Service as x",
    "import kubernetes_asyncio.client as c; x = c.V1Service",
    "from kubernetes_asyncio.client.models import V1Service as x",
    "import kubernetes_asyncio; x = kubernetes_asyncio.client.models.V1Service",
])
def test_the_rest_is_still_there(ask: str) -> None:
    r = run(f"""
import json, sys
import discovery.kube
{ask}
import kubernetes_asyncio, kubernetes_asyncio.client as c
from kubernetes_asyncio import watch, config
print(json.dumps({{"cls": x.__module__, "same": x is c.V1Service,
                  "version": kubernetes_asyncio.__version__ == c.__version__,
                  "apps": c.AppsV1Api.__name__, "watch": watch.Watch.__name__}}))
""")
    assert r == {"cls": MODELS, "same": True, "version": True, "apps": "AppsV1Api",
                 "watch": "Watch"}


def test_file_source_imports_no_kubernetes() -> None:
    r = run("""
import json, sys
import discovery.filesource, discovery.translate
from discovery.kubelean import PACKAGES
print(json.dumps({"loaded": [m for m in sys.modules
                             if m.startswith("kubernetes_asyncio") and m not in PACKAGES],
                  "aiohttp": "aiohttp" in sys.modules}))
""")
    assert r == {"loaded": [], "aiohttp": False}


def test_after_a_full_import_nothing_is_replaced() -> None:
    r = run("""
import json, sys
import kubernetes_asyncio
before = sys.modules["kubernetes_asyncio.client"]
from discovery import kubelean
print(json.dumps({"installed": kubelean.install(),
                  "same": sys.modules["kubernetes_asyncio.client"] is before}))
""")
    assert r == {"installed": False, "same": True}
