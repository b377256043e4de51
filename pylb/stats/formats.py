"""The stats page's machine formats: haproxy's CSV (`;csv`) and JSON (`;json`).

The CSV is haproxy's, byte for byte in its shape: a `# ` header naming every field of
haproxy 2.6 in its order, one line per row, every line ending with a comma, empty cells
where a field has no value. Cells go through the csv module, so a name holding a comma or
a quote cannot shift the columns. The JSON is pylb's own, simpler than haproxy's typed
`show stat json`: the process facts, then the same rows as the CSV as objects with the
empty fields left out.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from pylb.stats.view import CSV_FIELDS, Row, StatsView, stat_rows


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def render_csv(view: StatsView, up_only: bool = False) -> str:
    buf = io.StringIO()
    buf.write("# " + ",".join(CSV_FIELDS) + ",\n")
    writer = csv.writer(buf, lineterminator="\n")
    for row in stat_rows(view, up_only):
        writer.writerow([_cell(row.get(f)) for f in CSV_FIELDS] + [""])
    return buf.getvalue()


def process_info(view: StatsView) -> dict[str, Any]:
    """The header facts of the page, as plain data."""
    fronts = view.counters.get("frontends", {})
    return {
        "version": view.version,
        "pid": view.pid,
        "started": view.started,
        "now": view.now,
        "uptime": round(view.uptime, 3),
        "workers": view.workers,
        "worker_restarts": view.worker_restarts,
        "maxconn": view.maxconn,
        "current_connections": sum(int(c.get("cur_conns", 0)) for c in fronts.values()),
        "table_version": view.table_version,
        "table_age": view.table_age,
        "backends": len(view.table.backends),
        "servers": sum(len(b.servers) for b in view.table.backends),
        "skipped_services": [s.render() for s in view.table.skipped],
    }


def render_json(view: StatsView, up_only: bool = False) -> str:
    rows: list[Row] = stat_rows(view, up_only)
    leader = view.leader_info
    doc: dict[str, Any] = {
        "pylb": process_info(view),
        "leader": None if leader is None else {
            "name": leader.name, "since": leader.since,
            "transitions": leader.transitions, "is_self": leader.is_self},
        "discovery": {"synced": view.discovery_synced,
                      "last_sync": view.discovery_last_sync,
                      "metrics": dict(view.discovery_metrics)},
        "certificates": [{"name": c.name, "not_after": c.not_after,
                          "days_left": c.days_left} for c in view.certs],
        "failures": dict(view.counters.get("failures", {})),
        "stats": [{f: row[f] for f in CSV_FIELDS if row.get(f) is not None}
                  for row in rows],
    }
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"
