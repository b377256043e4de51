"""Logging for every pylb process: one stream, each line tagged with its worker, and the
access log apart."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, tag: str = "", access_log: bool = True) -> None:
    """One stream (stderr) for every process, each line tagged with its worker. The access
    log (`pylb.access`, one line per request like haproxy's httplog) goes to stdout when
    `access_log` (`--syslog`, its 2015 meaning); otherwise it is off, and the hot path
    skips formatting it entirely."""
    fmt = "%(asctime)s %(levelname)s " + (f"[{tag}] " if tag else "") + "%(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)
    access = logging.getLogger("pylb.access")
    access.propagate = False
    if access_log:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    else:
        access.setLevel(logging.WARNING)
