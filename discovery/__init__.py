"""Sources of truth: Kubernetes watches, a file of manifests, and their translation into
the route model."""

from discovery import kubelean

# Before any module here imports kubernetes-asyncio: its ~1,300 generated API and model
# modules (38 MiB) load only if something asks for them (discovery.kubelean).
kubelean.install()
