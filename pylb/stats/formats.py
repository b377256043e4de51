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
import re
from collections.abc import Callable, Iterator
from typing import Any

from pylb.stats.view import CSV_FIELDS, StatsView, iter_rows


def _cell(v: object) -> str:
    """One CSV cell as haproxy's csv_enc() writes it: quoted when it holds a comma, a
    quote, a CR or a LF, quotes doubled. (The csv module's writer leaves a lone CR
    unquoted when the line ends in LF, which splits the row for any CSV reader.)"""
    if v is None:
        return ""
    if type(v) is int:  # most cells: no quoting can be needed
        return str(v)
    if isinstance(v, bool):
        return "1" if v else "0"
    s = str(v)
    if _RESERVED.search(s):
        return '"' + s.replace('"', '""') + '"'
    return s


_RESERVED = re.compile('[,"\r\n]')
_POSITION = {f: i for i, f in enumerate(CSV_FIELDS)}
_BLANK = [""] * len(CSV_FIELDS)


def render_csv(view: StatsView, up_only: bool = False) -> str:
    return "".join(csv_chunks(view, up_only))


CHUNK_ROWS = 500  # rows per piece of a streamed format (~100-400 KB)


def csv_chunks(view: StatsView, up_only: bool = False) -> Iterator[str]:
    """The CSV in pieces of CHUNK_ROWS rows (see http.Reply.parts)."""
    # A row sets about a third of haproxy's 130 fields: fill a blank line's cells from
    # the row's own items rather than asking the row for every field (100,000 servers).
    yield "# " + ",".join(CSV_FIELDS) + ",\n"
    out: list[str] = []
    position = _POSITION
    cell = _cell
    for row in iter_rows(view, up_only):
        cells = _BLANK.copy()
        for k, v in row.items():
            if v is not None:
                i = position.get(k)
                if i is not None:  # most cells are ints: no call, no quoting
                    cells[i] = str(v) if type(v) is int else cell(v)
        out.append(",".join(cells) + ",\n")
        if len(out) >= CHUNK_ROWS:
            yield "".join(out)
            out.clear()
    if out:
        yield "".join(out)


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
    """The document, indented, with each row of "stats" on one line: json's C encoder
    writes only unindented text, and 100,000 rows through its Python one take
    seconds."""
    return "".join(json_chunks(view, up_only))


def json_chunks(view: StatsView, up_only: bool = False) -> list[str]:
    """`render_json` in pieces of CHUNK_ROWS rows (see http.Reply.parts)."""
    try:
        return list(_json_chunks(view, up_only, lambda v: v))
    except ValueError:  # NaN or an infinity somewhere: JSON has no word for them
        return list(_json_chunks(view, up_only, _finite))


def _json_chunks(view: StatsView, up_only: bool, clean: Callable[[Any], Any]) -> Iterator[str]:
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
        "stats": [],
    }
    head = json.dumps(clean(doc), indent=1, allow_nan=False)
    tail = '"stats": []\n}'
    assert head.endswith(tail)
    fields = _POSITION
    encode = _ROW_ENCODER.encode
    prefix = head[:-len(tail)] + '"stats": [\n  '
    first = True
    out: list[str] = []
    for row in iter_rows(view, up_only):
        out.append(encode(clean({k: v for k, v in row.items()
                                 if v is not None and k in fields})))
        if len(out) >= CHUNK_ROWS:
            yield (prefix if first else ",\n  ") + ",\n  ".join(out)
            first = False
            out.clear()
    if out:
        yield (prefix if first else ",\n  ") + ",\n  ".join(out)
        first = False
    yield head + "\n" if first else "\n ]\n}\n"


_ROW_ENCODER = json.JSONEncoder(allow_nan=False, separators=(", ", ": "))


def _finite(v: Any) -> Any:
    """`v` with every NaN and infinity replaced by None (null)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v
