"""Gateway API (gateway.networking.k8s.io/v1): pylb as a Gateway controller.

`model` holds what the translation produces (listeners, compiled HTTPRoute rules and the
status each object should carry); `translate` builds it from the API objects as pure
functions; `proxy.http.gwrouting` matches requests against it.
"""
