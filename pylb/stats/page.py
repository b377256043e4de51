"""The HTML stats page: haproxy's layout and legend, inline CSS, no script, no asset.

One pure function, `render_html(view, up_only, refresh)`. Every name that comes from the
cluster (service, server, pod, leader, certificate, check detail) passes through `_e` here
and nowhere else is HTML written: `visible` first shows control, bidi and zero-width
characters as escapes (`\u202e`), so a name cannot reorder or hide text on the page, then
`html.escape` makes it text. Odd figures (NaN, infinities, dates past 9999) show as "?":
one bad value never costs the whole page.
"""

from __future__ import annotations

import html
import math
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote_plus

from pylb.model import Backend
from pylb.stats.formats import process_info
from pylb.stats.view import (
    TYPE_BACKEND,
    TYPE_FRONTEND,
    Row,
    StatsView,
    stat_rows,
    status_class,
)

_CSS = """
:root { --ink:#1d2330; --muted:#5b6475; --line:#c9ced8; --px:#8a1538; --pxink:#fff6c2;
  --head:#2aa6a6; --fe:#efeee2; --be:#e3e1cc; --up:#c0ffc0; --gd:#ffffa0; --gu:#ffd020;
  --down:#ff9090; --nolb:#20a0ff; --nochk:#e0e0e0; --maint:#c07820; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px 40px; color: var(--ink); background: #fafbfc;
  font: 12px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial,
  sans-serif; }
header.top { display: flex; align-items: baseline; gap: 14px; border-bottom: 2px solid
  var(--px); padding-bottom: 6px; margin-bottom: 12px; }
header.top h1 { margin: 0; font-size: 22px; color: var(--px); letter-spacing: .02em; }
header.top .sub { color: var(--muted); font-size: 13px; }
header.top nav { margin-left: auto; font-size: 12px; }
header.top nav a { color: #1a5fb4; text-decoration: none; margin-left: 12px; }
header.top nav a:hover { text-decoration: underline; }
.panels { display: flex; flex-wrap: wrap; gap: 14px; margin-bottom: 14px; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 12px; min-width: 240px; }
.panel h2 { margin: 0 0 6px; font-size: 12px; text-transform: uppercase;
  letter-spacing: .06em; color: var(--muted); }
.panel table td { padding: 1px 10px 1px 0; vertical-align: top; }
.panel table td:first-child { color: var(--muted); white-space: nowrap; }
.legend td { padding: 1px 6px 1px 0; white-space: nowrap; }
.legend .sw { display: inline-block; width: 14px; height: 11px; border: 1px solid #888;
  vertical-align: -1px; margin-right: 5px; }
.bad { color: #b00020; font-weight: 600; }
.warn { color: #9a6700; font-weight: 600; }
.ok { color: #1a7f37; font-weight: 600; }
section.px { margin: 0 0 14px; }
table.tbl { border-collapse: collapse; background: #fff; width: 100%; }
table.tbl .nm { display: block; width: 150px; overflow: hidden; text-overflow: ellipsis; }
table.tbl th, table.tbl td { border: 1px solid var(--line); padding: 2px 3px;
  white-space: nowrap; font-size: 11px; }
table.tbl td { text-align: right; font-variant-numeric: tabular-nums; }
table.tbl td.name { text-align: left; font-weight: 600; }
table.tbl td.st { text-align: center; }
table.tbl th { background: var(--head); color: #fff; font-weight: 600; }
table.tbl th.pxname { background: var(--px); color: var(--pxink); text-align: left;
  font-size: 13px; padding: 4px 8px; border-color: var(--px); }
table.tbl th.pxname a { color: var(--pxink); text-decoration: none; }
table.tbl th.pxname .mode { font-weight: 400; opacity: .85; margin-left: 8px; }
table.tbl th.desc { background: transparent; border: none; color: var(--muted);
  font-weight: 400; text-align: left; }
table.tbl tr.frontend td, table.tbl tr.backend td { background: var(--fe);
  font-weight: 600; }
table.tbl tr.backend td { background: var(--be); }
tr.up td { background: var(--up); }
tr.going-down td { background: var(--gd); }
tr.going-up td { background: var(--gu); }
tr.down td { background: var(--down); }
tr.drain td { background: var(--nolb); }
tr.maint td { background: var(--maint); }
tr.no-check td { background: var(--nochk); }
.pager { margin: 0 0 12px; }
.pager form { display: inline; }
table.tbl tr.empty td { text-align: left; color: var(--muted); font-style: italic;
  background: #fff; }
footer { margin-top: 18px; color: var(--muted); font-size: 11px; }
@media (prefers-color-scheme: dark) {
  :root { --ink:#e6e8ec; --muted:#9aa3b2; --line:#3a404c; --px:#a3264f; --pxink:#ffe9a8;
    --head:#1b7f7f; --fe:#2a2f38; --be:#323844; --up:#1f5d2a; --gd:#66661a;
    --gu:#8a6d00; --down:#7a1f1f; --nolb:#1b5c99; --nochk:#3a3f47; --maint:#7a4a10; }
  body { background: #15181d; }
  .panel, table.tbl, table.tbl tr.empty td { background: #1d2128; }
  header.top nav a { color: #7fb2ff; }
  header.top h1 { color: #ff7aa2; }
  .bad { color: #ff7b7b; } .warn { color: #f0c050; } .ok { color: #6fdc8c; }
}
"""

_LEGEND = (
    ("up", "UP", "var(--up)"),
    ("going-down", "UP, going down", "var(--gd)"),
    ("going-up", "DOWN, going up", "var(--gu)"),
    ("down", "DOWN", "var(--down)"),
    ("no-check", "not checked", "var(--nochk)"),
    ("maint", "MAINT (not ready)", "var(--maint)"),
    ("drain", "DRAIN (terminating)", "var(--nolb)"),
)

# (group title, [(column title, field or special)])
_COLUMNS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Queue", (("Cur", "qcur"), ("Max", "qmax"), ("Limit", "qlimit"))),
    ("Session rate", (("Cur", "rate"), ("Max", "rate_max"), ("Limit", "rate_lim"))),
    ("Sessions", (("Cur", "scur"), ("Max", "smax"), ("Limit", "slim"), ("Total", "stot"),
                  ("LbTot", "lbtot"), ("Last", "lastsess"))),
    ("Bytes", (("In", "bin"), ("Out", "bout"))),
    ("Denied", (("Req", "dreq"), ("Resp", "dresp"))),
    ("Errors", (("Req", "ereq"), ("Conn", "econ"), ("Resp", "eresp"))),
    ("Warnings", (("Retr", "wretr"), ("Redis", "wredis"))),
    ("Server", (("Status", "status"), ("LastChk", "lastchk"), ("Wght", "weight"),
                ("Act", "act"), ("Bck", "bck"), ("Chk", "chkfail"), ("Dwn", "chkdown"),
                ("Dwntme", "downtime"), ("Thrtle", "throttle"))),
)
_NCOLS = 1 + sum(len(cols) for _, cols in _COLUMNS)


# Control (Cc), format (Cf: bidi marks, zero-width, BOM), line/paragraph separator
# (Zl, Zp) characters and lone surrogates (Cs) are invisible or move text around.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


class _Escapes(dict[int, str]):
    """str.translate's table, filled on first sight of each code point (then C speed)."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        out = (ch.encode("unicode_escape").decode("ascii")
               if unicodedata.category(ch) in _HIDDEN else ch)
        if len(self) < 65536:  # bounded: a page of random code points cannot grow it
            self[cp] = out
        return out


_ESCAPES = _Escapes()


def visible(s: str) -> str:
    """`s` with every invisible or text-moving character written as its escape."""
    # isprintable() is False for every category in _HIDDEN (and for a few more, like
    # no-break space, which translate leaves alone): names of printable text cost nothing.
    return s if s.isprintable() else s.translate(_ESCAPES)


def _e(s: object) -> str:
    return html.escape(visible(str(s)), quote=True)


def _tip(s: str) -> str:
    """A title attribute's text, made by `_cell_title`: its line breaks are meant."""
    return html.escape(s, quote=True)


def _date(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(t))
    except (ValueError, OverflowError, OSError):
        return "?"


def human_duration(seconds: float | None) -> str:
    """haproxy's compact durations: 42s, 3m12s, 5h03m, 2d4h."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h}h"


def _num(v: object) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return _e(v)


def _cell(row: Row, field: str) -> str:
    v = row.get(field)
    if field == "lastsess":
        return "" if v is None else human_duration(int(v) if isinstance(v, int) else -1)
    if field == "downtime":
        return "" if v is None else human_duration(float(v or 0))
    if field == "status":
        text = _e(v or "")
        lastchg = row.get("lastchg")
        if isinstance(lastchg, int) and lastchg >= 0 and row.get("type") == 2:
            text = f"{human_duration(lastchg)} {text}"
        return text
    if field == "lastchk":
        st = row.get("check_status")
        if not st:
            return ""
        dur = row.get("check_duration")
        code = row.get("check_code")
        text = f"{st}/{code}" if code else str(st)
        if dur is not None and st != "INI":
            text += f" in {dur}ms"
        return _e(text)
    if field == "act" and row.get("type") == TYPE_FRONTEND:
        return ""
    return _num(v)


def _cell_title(row: Row, field: str) -> str:
    """A hover text (title attribute) with what haproxy shows in its tooltips."""
    if field == "stot" and row.get("hrsp_2xx") is not None:
        parts = [f"{k}: {row.get('hrsp_' + k)}" for k in
                 ("1xx", "2xx", "3xx", "4xx", "5xx", "other")]
        text = "HTTP requests: " + str(row.get("req_tot")) + "\n" + "\n".join(
            f"  {p}" for p in parts)
        if row.get("h2_total_connections"):
            text += (f"\nHTTP/2 connections: {row.get('h2_open_connections')} open, "
                     f"{row.get('h2_total_connections')} total; "
                     f"streams: {row.get('h2_headers_rcvd')}")
        return text
    if field == "lastchk" and row.get("check_desc"):
        return visible(str(row.get("check_desc")))
    if field == "status" and row.get("check_rise"):
        return (f"rise {row.get('check_rise')}, fall {row.get('check_fall')}, "
                f"health {row.get('check_health')}")
    return ""


_MORE = -1  # the type of the "N more servers" line of a collapsed backend


def _row_html(row: Row) -> str:
    t = row.get("type")
    if t == _MORE:
        return (f'<tr class="empty"><td colspan="{_NCOLS}">… and {int(row["more"] or 0):,} '
                "more servers (the CSV and /metrics list every one)</td></tr>")
    if t == TYPE_FRONTEND:
        cls = "frontend"
    elif t == TYPE_BACKEND:
        cls = "backend"
    else:
        cls = status_class(str(row.get("status") or ""))
    name = "Frontend" if t == TYPE_FRONTEND else "Backend" if t == TYPE_BACKEND else str(
        row.get("svname"))
    title = f' title="{_e(row["addr"])}"' if t == 2 and row.get("addr") else ""
    cells = [f'<td class="name"{title}><span class="nm">{_e(name)}</span></td>']
    for _, cols in _COLUMNS:
        for _, field in cols:
            tip = _cell_title(row, field)
            attr = f' title="{_tip(tip)}"' if tip else ""
            klass = ' class="st"' if field in ("status", "lastchk") else ""
            cells.append(f"<td{klass}{attr}>{_cell(row, field)}</td>")
    return f'<tr class="{cls}">' + "".join(cells) + "</tr>"


def _table(rows: list[Row], title: str, mode: str, anchor: str) -> str:
    head1 = "".join(f'<th colspan="{len(cols)}">{_e(g)}</th>' for g, cols in _COLUMNS)
    head2 = "".join(f"<th>{_e(c)}</th>" for _, cols in _COLUMNS for c, _ in cols)
    body = [_row_html(r) for r in rows]
    if not any(r.get("type") == 2 for r in rows) and rows and rows[-1].get("type") == 1:
        body.insert(0, f'<tr class="empty"><td colspan="{_NCOLS}">no servers</td></tr>')
    return (
        f'<section class="px" id="{_e(anchor)}"><table class="tbl">'
        f'<tr><th class="pxname" colspan="{_NCOLS}"><a href="#{_e(anchor)}">{_e(title)}'
        f'</a><span class="mode">{_e(mode)}</span></th></tr>'
        f'<tr><th rowspan="2"></th>{head1}</tr><tr>{head2}</tr>'
        + "".join(body) + "</table></section>"
    )


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + \
        "</table>"


def _uri(up: bool, norefresh: bool, fmt: str = "", scope: str = "", page: int = 1) -> str:
    return "/" + "".join(f";{o}" for o, on in
                         ((fmt, bool(fmt)), ("up", up), ("norefresh", norefresh),
                          (f"scope={quote_plus(scope)}", bool(scope)),
                          (f"page={page}", page > 1)) if on)


# -- paging -----------------------------------------------------------------------------
#
# haproxy's page shows every server of every proxy. At 10,000 services of 10 servers
# that is 110,000 rows, 74 MB of HTML and 8 s of rendering (bench/stats_scale.py): no
# browser shows it usefully and the controller spends seconds on it at every refresh.
# So the HTML page shows one page of backends at a time — whole backends, as many as
# fit in PAGE_ROWS server rows (at least one) — with links to the others and haproxy's
# scope filter (backends whose name holds the text). A backend with more than
# BACKEND_ROWS servers shows its first BACKEND_ROWS and says how many more there are;
# its BACKEND row still counts them all. The CSV, the JSON and /metrics stay complete:
# tools scrape them and a tool can filter. A cluster of up to PAGE_ROWS servers sees
# haproxy's page unchanged.
PAGE_ROWS = 1000
BACKEND_ROWS = 500


@dataclass(frozen=True, slots=True)
class Paging:
    backends: tuple[Backend, ...]  # those to show
    page: int  # 1-based, clamped into 1..pages
    pages: int
    first: int  # index of the first shown backend among those matching, 0-based
    matching: int  # backends matching the scope


def paginate(backends: Sequence[Backend], scope: str = "", page: int = 1,
             page_rows: int = PAGE_ROWS) -> Paging:
    """The backends of page `page` among those whose name holds `scope` (any case):
    consecutive whole backends, as many as fit in `page_rows` server rows, at least one.
    A page past the last is the last."""
    needle = scope.casefold()
    chosen = [b for b in backends if needle in b.name.casefold()] if needle else backends
    starts = [0]
    rows = 0
    for i, b in enumerate(chosen):
        n = min(len(b.servers), BACKEND_ROWS) + 1
        if rows and rows + n > page_rows:
            starts.append(i)
            rows = 0
        rows += n
    page = max(1, min(page, len(starts)))
    lo = starts[page - 1]
    hi = starts[page] if page < len(starts) else len(chosen)
    return Paging(tuple(chosen[lo:hi]), page, len(starts), lo, len(chosen))


def _pager(p: Paging, up_only: bool, refresh: int, scope: str) -> str:
    """The filter form and the page links (no script: a GET form and plain links)."""
    def link(page: int, text: str) -> str:
        return f'<a href="{_e(_uri(up_only, not refresh, "", scope, page))}">{_e(text)}</a>'

    parts = [f'<form method="get" action="/" class="scope"><label>Scope '
             f'<input name="scope" value="{_e(scope)}" size="24" maxlength="128"></label>'
             f' <button type="submit">filter</button></form>']
    if scope:
        parts.append(f'{p.matching:,} backend(s) match · '
                     f'<a href="{_e(_uri(up_only, not refresh))}">clear filter</a>')
    if p.pages > 1:
        shown = f"backends {p.first + 1:,}–{p.first + len(p.backends):,} of {p.matching:,}"
        nav = [link(1, "« first")] if p.page > 2 else []
        if p.page > 1:
            nav.append(link(p.page - 1, "‹ previous"))
        nav.append(f"page {p.page:,} of {p.pages:,} ({shown})")
        if p.page < p.pages:
            nav.append(link(p.page + 1, "next ›"))
        if p.page < p.pages - 1:
            nav.append(link(p.pages, "last »"))
        parts.append(" · ".join(nav))
    return '<div class="pager">' + " &nbsp; ".join(parts) + "</div>"


def _ago(now: float, t: float | None) -> str:
    return "never" if not t else f"{human_duration(now - t)} ago"


def render_html(view: StatsView, up_only: bool = False, refresh: int = 0,
                scope: str = "", page: int = 1) -> str:
    """The page. `refresh` > 0 adds a meta refresh (no script needed). `scope` and
    `page` choose the backends shown (see `paginate`)."""
    info = process_info(view)
    now = view.now
    process = [
        ("version", _e(view.version)),
        ("pid", _e(view.pid)),
        ("uptime", _e(human_duration(view.uptime))),
        ("workers", f"{view.workers} (restarts: {view.worker_restarts})"),
        ("current conns", f"{info['current_connections']:,}; maxconn = "
                          f"{view.maxconn:,} per worker"),
        ("route table", f"v{view.table_version}, "
                        + (f"applied {human_duration(view.table_age)} ago"
                           if view.table_age is not None else "not applied yet")),
        ("backends", f"{info['backends']} with {info['servers']} servers"),
    ]
    if view.table.skipped:
        process.append(("skipped", f'<span class="warn">{len(view.table.skipped)} '
                                   f"service(s)</span>"))
    synced = ('<span class="ok">synced</span>' if view.discovery_synced
              else '<span class="bad">not synced</span>')
    if view.discovery_last_sync:
        synced += f", last sync {_ago(now, view.discovery_last_sync)}"
    cluster = [("discovery", synced)]
    for k, v in sorted(view.discovery_metrics.items()):
        cluster.append((_e(k.replace("_", " ")), _e(v)))
    leader = view.leader_info
    if leader is None:
        cluster.append(("leader", "no election"))
    else:
        who = _e(leader.name) if leader.name else '<span class="warn">none</span>'
        if leader.is_self:
            who += " (this pod)"
        since = f", since {_ago(now, leader.since)}" if leader.since else ""
        cluster.append(("leader", f"{who}{since}; {leader.transitions} transition(s)"))
    for c in view.certs:
        klass = "ok" if c.days_left >= 30 else "warn" if c.days_left >= 7 else "bad"
        expiry = _date(c.not_after)
        cluster.append((f"cert {_e(c.name)}",
                        f'<span class="{klass}">{c.days_left:.0f} days</span> '
                        f"(until {expiry})"))
    failures = view.counters.get("failures", {})
    fail_rows = [(_e(k.lower().replace("_", " ")), f"{int(n):,}")
                 for k, n in sorted(failures.items()) if n]

    legend = "".join(
        f'<tr><td><span class="sw" style="background:{color}"></span>{_e(text)}</td></tr>'
        for _, text, color in _LEGEND)
    opts = [
        (_uri(not up_only, not refresh, "", scope, page), "Show all servers" if up_only
         else "Hide 'DOWN' servers"),
        (_uri(up_only, bool(refresh), "", scope, page), "Enable refresh" if not refresh
         else "Disable refresh"),
        (_uri(up_only, not refresh, "", scope, page), "Refresh now"),
        (_uri(False, False, "csv"), "CSV export"),
        (_uri(False, False, "json"), "JSON export"),
        ("/metrics", "Prometheus metrics"),
    ]
    nav = "".join(f'<a href="{_e(h)}">{_e(t)}</a>' for h, t in opts)

    panels = [
        f'<div class="panel"><h2>Process</h2>{_kv(process)}</div>',
        f'<div class="panel"><h2>Cluster</h2>{_kv(cluster)}</div>',
    ]
    if fail_rows:
        panels.append(f'<div class="panel"><h2>Failures</h2>{_kv(fail_rows)}</div>')
    panels.append(f'<div class="panel legend"><h2>Legend</h2><table>{legend}</table></div>')

    paging = paginate(view.table.backends, scope, page)
    whole = paging.pages == 1 and not scope
    rows = stat_rows(view, up_only, None if whole else paging.backends)
    sections: list[str] = []
    i = 0
    while i < len(rows):
        r = rows[i]
        if r.get("type") == TYPE_FRONTEND:
            sections.append(_table([r], str(r["pxname"]), f"frontend · {r.get('mode')}",
                                   f"fe-{r['pxname']}"))
            i += 1
            continue
        j = i
        while rows[j].get("type") != TYPE_BACKEND:
            j += 1
        group = rows[i:j + 1]
        be = rows[j]
        if len(group) > BACKEND_ROWS + 1:
            more = len(group) - 1 - BACKEND_ROWS
            group = [*group[:BACKEND_ROWS], {"type": _MORE, "more": more}, be]
        sections.append(_table(group, str(be["pxname"]),
                               f"backend · {be.get('mode')} · {be.get('algo')}",
                               f"be-{be['pxname']}"))
        i = j + 1

    meta = (f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else "")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"{meta}<title>pylb statistics</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head><body>"
        '<header class="top"><h1>pylb statistics</h1>'
        f'<span class="sub">pid {_e(view.pid)} · up {_e(human_duration(view.uptime))}'
        f' · {_e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)))}'
        + (f" · refresh every {int(refresh)}s" if refresh > 0 else "")
        + f"</span><nav>{nav}</nav></header>"
        f'<div class="panels">{"".join(panels)}</div>'
        + (_pager(paging, up_only, refresh, scope) if not whole or scope
           or len(view.table.backends) > 20 else "")
        + "".join(sections)
        + f"<footer>pylb {_e(view.version)} · statistics in haproxy's layout · "
        "CSV fields as haproxy 2.6</footer></body></html>\n"
    )
