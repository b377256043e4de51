"""Sources of truth: Kubernetes watches, a file of manifests, and their translation into
the route model."""
