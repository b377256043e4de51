"""The access log: one haproxy-httplog-like line per exchange on the `pylb.access` logger
at INFO, built only when that logger is enabled (the Protocol asks it first).

    127.0.0.1:40000 [07/Dec/2026:02:40:00] http default/app/b0 0/0/1/2/3 200 13 -- "GET / HTTP/1.1"

Fields as haproxy's `option httplog`: client address, accept date, frontend,
backend/server, Tq/Tw/Tc/Tr/Tt in ms (-1: that phase never happened), status, bytes to
the client, the two-letter termination state (`proxy.http.exchange.termination`: "--"
for a clean end, else who ended it and in which phase), and the request line. haproxy's
captured cookies and connection counts are not logged.
"""

from __future__ import annotations

import logging
import time

from proxy.http.parser import RequestHead

access_log = logging.getLogger("pylb.access")
NOSRV = "<NOSRV>"


def _ms(t: float, since: float) -> int:
    return int((t - since) * 1000) if t else -1


def line(*, client_ip: str, client_port: int, frontend: str, backend: str, server: str,
         t0: float, t_head: float, t_conn: float, t_resp: float, now: float, status: int,
         nbytes: int, termination: str, req: RequestHead | None, tw: int | None = None) -> str:
    """`t0`: the connection's (or keep-alive request's) start; `t_head`, `t_conn`,
    `t_resp`: when the request head was read, the server connection attached, the
    response head came (0.0: never); all on the loop's clock. `tw`: ms waited in a
    per-server queue (proxy.queue), None when the backend has no limit; it is haproxy's
    Tw, not counted in Tc."""
    t0 = t0 or now
    if tw is None:
        tw = 0 if t_conn else -1
    tc = int((t_conn - t_head) * 1000) - max(tw, 0) if t_conn else -1
    tr = int((t_resp - t_conn) * 1000) if t_resp and t_conn else -1
    return '%s:%d [%s] %s %s/%s %d/%d/%d/%d/%d %d %d %s "%s %s HTTP/%s"' % (  # noqa: UP031
        client_ip, client_port, time.strftime("%d/%b/%Y:%H:%M:%S", time.gmtime()),
        frontend, backend, server, _ms(t_head, t0), tw, tc, tr,
        _ms(now, t0), status, nbytes, termination,
        req.method.decode("latin-1") if req else "<BADREQ>",
        req.target.decode("latin-1") if req else "",
        req.version.decode() if req else "1.1")


def log(text: str) -> None:
    access_log.info(text)
