from tests.kfake.conftest import kube_api, no_proxy_env

__all__ = ["kube_api", "no_proxy_env"]
