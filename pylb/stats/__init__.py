"""The stats page on :1936 (haproxy's HTML, CSV, JSON) and Prometheus /metrics.

Only this package imports prometheus-client (in `prom`).
"""

from __future__ import annotations

from pylb.stats.formats import render_csv, render_json
from pylb.stats.page import render_html
from pylb.stats.server import StatsServer
from pylb.stats.view import CSV_FIELDS, CertInfo, LeaderInfo, StatsView, stat_rows

__all__ = [
    "CSV_FIELDS",
    "CertInfo",
    "LeaderInfo",
    "StatsServer",
    "StatsView",
    "render_csv",
    "render_html",
    "render_json",
    "stat_rows",
]
