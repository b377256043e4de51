"""The stats page's machine formats: haproxy's CSV (`;csv`) and JSON (`;json`).

The CSV is haproxy's, byte for byte in its shape: a `# ` header naming every field of
haproxy 2.6 in its order, one record per row, every line ending with a comma, empty cells
where a field has no value. Cells are quoted as haproxy's csv_enc() quotes them, so a name
holding a comma, a quote or a line break cannot shift the columns. The JSON is pylb's
own, simpler than haproxy's typed `show stat json`: the process facts, then the same rows
as the CSV as objects with the empty fields left out; NaN and infinities, which JSON has
no word for, are null.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pylb.stats.view import CSV_FIELDS, Row, StatsView, stat_rows


def _cell(v: object) -> str:
    """One CSV cell as haproxy's csv_enc() writes it: quoted when it holds a comma, a
    quote, a CR or a LF, quotes doubled. (The csv module's writer leaves a lone CR
    unquoted when the line ends in LF, which splits the row for any CSV reader.)"""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    s = str(v)
    if any(c in s for c in _RESERVED):
        return '"' + s.replace('"', '""') + '"'
    return s


_RESERVED = (",", '"', "\r", "\n")


def render_csv(view: StatsView, up_only: bool = False) -> str:
    out = ["# " + ",".join(CSV_FIELDS) + ",\n"]
    for row in stat_rows(view, up_only):
        out.append(",".join([_cell(row.get(f)) for f in CSV_FIELDS]) + ",\n")
    return "".join(out)


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
    try:
        return json.dumps(doc, indent=1, allow_nan=False) + "\n"
    except ValueError:  # NaN or an infinity somewhere: JSON has no word for them
        return json.dumps(_finite(doc), indent=1, allow_nan=False) + "\n"


def _finite(v: Any) -> Any:
    """`v` with every NaN and infinity replaced by None (null)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v
