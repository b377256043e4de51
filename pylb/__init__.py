"""pylb: a pure-Python userspace load balancer for bare-metal Kubernetes."""

__version__ = "0.1.0"
