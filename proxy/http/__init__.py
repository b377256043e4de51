"""The L7 HTTP router: `HttpProxy` serves one HTTP frontend (plain or TLS) of one worker.

Wiring (pylb.app):

    proxy = HttpProxy(settings, stats, balancers, frontend="http")       # :80
    tls = HttpProxy(settings, stats, balancers, frontend="https", tls=True,
                    ssl_context=ctx)                                     # :443
    proxy.set_table(table)            # at start and on every new RouteTable
    host, port = await proxy.start(settings.bind, settings.http_port, reuse_port=True)
    ...
    await proxy.shutdown(settings.grace_period)

`set_table` also applies the table's backends to the shared `Balancers` (idempotent, so
several frontends may each call it). Access log: one haproxy-httplog-like line per request
on the `pylb.access` logger at INFO (built only when that logger is enabled).

Files: `parser` (the parser interface, h11 and httptools), `routing` and `headers` (pure
functions), `errors` (our own responses), `server` (the client-side Protocol: theory of
operation there), `upstream` (the backend-side Protocol), `pool` (idle backend
connections), `proxy` (HttpProxy).
"""

from proxy.http.proxy import HttpProxy

__all__ = ["HttpProxy"]
