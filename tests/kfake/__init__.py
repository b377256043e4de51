"""A faithful fake Kubernetes API server for the discovery and election tests.

    async with FakeApiServer() as api:
        api.store.create("services", {...})
        cfg = api.configuration()            # kubernetes_asyncio Configuration

The contract it follows is /work/shared/KUBE_API_FAKE.md; `test_contract.py` checks it.
"""

from tests.kfake import faults
from tests.kfake.app import FakeApiServer, RequestRecord
from tests.kfake.errors import ApiError
from tests.kfake.faults import Faults
from tests.kfake.store import Store

__all__ = ["ApiError", "FakeApiServer", "Faults", "RequestRecord", "Store", "faults"]
