"""The L4 TCP splicer: TCP frontends (`--tcp-services`), TLS passthrough by SNI, PROXY
protocol towards backends, and a zero-copy os.splice path on Linux."""

from proxy.tcp.proxy import DEFAULT_SPLICE_THRESHOLD, TcpProxy

__all__ = ["DEFAULT_SPLICE_THRESHOLD", "TcpProxy"]
