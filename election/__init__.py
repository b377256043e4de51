"""Leader election on coordination.k8s.io/v1 Leases, and the `pylb elect` sidecar."""
