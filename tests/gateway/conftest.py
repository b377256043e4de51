"""Fixtures of the Gateway tests.

Their timeouts: a live run over its pytest timeout has its loop's tasks cancelled, and a
teardown that outlives the grace after that ends the run (tests/timeouts.py), so every wait
in the live harness's teardown is bounded well inside that grace (tests/gateway/live.py).
"""

from __future__ import annotations

from tests.kfake.conftest import kube_api, no_proxy_env

__all__ = ["kube_api", "no_proxy_env"]
