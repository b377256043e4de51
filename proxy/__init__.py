"""The data plane: listeners, the L4 TCP splicer, the L7 HTTP router, TLS, balancing."""
