"""The L7 HTTP router: `HttpProxy` serves one HTTP frontend (plain or TLS)."""

from proxy.http.proxy import HttpProxy

__all__ = ["HttpProxy"]
