"""Stats views full of hostile names, and strict readers of every stats format.

`Roles` names each place a string from outside pylb reaches the stats page (a backend, a
server, a TCP frontend, the election's leader, a certificate, an error detail, ...);
`build_view(roles, nums)` puts them there. The readers parse each format the way a
consumer would — html.parser, the csv module, a JSON parser that refuses NaN, and
prometheus_client's parser — and hand back what they found, so a test compares
structures and values instead of matching strings.
"""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from html.parser import HTMLParser
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from proxy.check import L4CON, L7OK, Probe, advance, initial
from pylb.config import CheckSettings
from pylb.model import Backend, HttpRoute, RouteTable, Server, SkippedService, TcpFrontend
from pylb.stats import CSV_FIELDS, CertInfo, LeaderInfo, StatsView

NOW = 1_800_000_000.0

# One of each kind of trouble: markup, attribute breaking, table breaking, entities,
# bidi and zero-width characters, length, line breaks, CSV and label syntax, controls.
EVIL: tuple[str, ...] = (
    "<script>alert(1)</script>",
    "\"'><img src=x onerror=alert(1)>",
    "</td></tr></table><h1>x</h1>",
    "a & b &amp; &lt;c&gt; &#60;",
    "admin\u202egnp.exe\u202c \u200b\u200d\u2066x\u2069\ufeff",
    "long-" + "x" * 5000,
    "line1\nline2\r\nline3\rend\u2028\u0085",
    "carriage\rreturn",
    'tab\there, comma, "quote", back\\slash',
    "\x00nul \x07bell \x1b[31mred\x7f\x9b",
    "javascript:alert(1)//",
    '{name="x"} 1\n# TYPE evil counter',
)

# Frontend names the page itself uses: a TCP frontend of that name would merge with it.
_RESERVED = frozenset({"http", "https"})


@dataclass(frozen=True)
class Roles:
    """Every place an outside string reaches the stats page (each must differ)."""

    http_backend: str = "default/web:80"
    tcp_backend: str = "default/db:3306"
    http_server: str = "web-1"
    tcp_server: str = "db-0"
    tcp_frontend: str = "mysql"
    counter_frontend: str = "old-frontend"  # known only to the counters
    leader: str = "lb-node-1"
    cert: str = "example.com"
    metric: str = "watch_restarts"
    failure: str = "UNKNOWN_REASON"  # a reason this version does not know
    skip_namespace: str = "default"
    skip_name: str = "broken"
    skip_reason: str = "bad annotation"
    check_detail: str = "HTTP status 500"

    @classmethod
    def of(cls, values: Sequence[str]) -> Roles:
        names = [f.name for f in fields(cls)]
        return cls(**dict(zip(names, values, strict=False)))

    @classmethod
    def count(cls) -> int:
        return len(fields(cls))

    def placeholders(self) -> Roles:
        """Harmless, distinct names in the same order as these (tables are sorted by
        name): the page of the same view with them is the reference shape."""
        rank = {v: i for i, v in enumerate(sorted(self.values()))}
        return Roles.of([f"n{rank[v]:03d}" for v in self.values()])

    def values(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]

    def usable(self) -> bool:
        vals = self.values()
        return (len(set(vals)) == len(vals) and not _RESERVED & set(vals)
                and all(vals[:8]))  # names a table or the counters key on are not empty


@dataclass(frozen=True)
class Numbers:
    """The figures of the view: counters, durations, times (any may be odd)."""

    counter: int = 7
    hrsp: tuple[int, int, int, int, int, int] = (0, 8, 0, 0, 2, 0)
    table_age: float | None = 12.0
    metric_value: float = 3.0
    days_left: float = 20.0
    not_after: float = NOW + 20 * 86400
    check_ms: float = 1.5
    leader_since: float | None = NOW - 600
    up: bool = True


def _counters(n: Numbers) -> dict[str, Any]:
    c = n.counter
    return {"cur_conns": c, "max_conns": c, "total_conns": c, "bytes_in": c,
            "bytes_out": c, "denied_req": c, "denied_resp": c, "rate": c, "max_rate": c,
            "hrsp": list(n.hrsp), "req_total": c, "last_session": NOW - 5,
            "req_errors": c, "conn_errors": c, "resp_errors": c, "retries": c,
            "redispatches": c, "lbtot": c}


def build_view(r: Roles, n: Numbers = Numbers()) -> StatsView:
    """A view with both kinds of frontend and backend, one server each, a checked
    server, a leader, a certificate, a skipped service and the counters of them all."""
    web = Backend(r.http_backend, (Server("10.0.0.1", 8080, name=r.http_server),))
    db = Backend(r.tcp_backend, (Server("fd00::1", 3306, name=r.tcp_server),))
    table = RouteTable(
        http=(HttpRoute("web", "/web", web.name),),
        tcp=(TcpFrontend(r.tcp_frontend, 3306, db.name),),
        backends=(web, db),
        skipped=(SkippedService(r.skip_namespace, r.skip_name, r.skip_reason),),
        version=3)
    p = CheckSettings(rise=2, fall=3)
    start = initial(p, NOW - 100, http=True)
    probe = (Probe(L7OK, 200, n.check_ms, r.check_detail) if n.up
             else Probe(L4CON, None, n.check_ms, r.check_detail))
    check = advance(start, probe, NOW - 1)
    counters = {
        "frontends": {"http": _counters(n), r.tcp_frontend: _counters(n),
                      r.counter_frontend: _counters(n)},
        "backends": {web.name: _counters(n), db.name: _counters(n)},
        "servers": {f"{web.name}\x00{r.http_server}": _counters(n),
                    f"{db.name}\x00{r.tcp_server}": _counters(n)},
        "failures": {"BAD_REQUEST": n.counter, r.failure: n.counter},
    }
    return StatsView(
        version="0.1.0", pid=4242, started=NOW - 3725, now=NOW, table=table,
        counters=counters, checks={("10.0.0.1", 8080): check}, workers=2,
        leader=LeaderInfo(r.leader, since=n.leader_since, transitions=2, is_self=True),
        discovery_synced=True, discovery_last_sync=NOW - 4,
        discovery_metrics={r.metric: n.metric_value},
        certificates=(CertInfo(r.cert, n.not_after, n.days_left),),
        table_version=3, table_age=n.table_age, maxconn=20000)


# -- HTML -------------------------------------------------------------------------------

# Every element and attribute the page may hold; anything else was injected.
PAGE_TAGS = frozenset({"html", "head", "meta", "title", "link", "style", "body", "header",
                       "h1", "h2", "span", "nav", "a", "div", "table", "tr", "td", "th",
                       "section", "footer"})
PAGE_ATTRS = frozenset({"lang", "charset", "http-equiv", "content", "rel", "href", "class",
                        "id", "title", "colspan", "rowspan", "style"})


@dataclass
class Page:
    """What a browser's parser sees in the page."""

    shape: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    attrs: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, name, value)

    def strings(self) -> Iterator[str]:
        yield from self.texts
        yield from (v for _, _, v in self.attrs)


class _Reader(HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.page.shape.append(("<", tag, tuple(k for k, _ in attrs)))
        self.page.attrs.extend((tag, k, v or "") for k, v in attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self.page.shape.append((">", tag, ()))

    def handle_data(self, data: str) -> None:
        self.page.texts.append(data)

    def handle_comment(self, data: str) -> None:
        self.page.shape.append(("!--", data, ()))

    def handle_pi(self, data: str) -> None:
        self.page.shape.append(("?", data, ()))

    def unknown_decl(self, data: str) -> None:
        self.page.shape.append(("!", data, ()))


def read_page(text: str) -> Page:
    page = Page()
    reader = _Reader(page)
    reader.feed(text)
    reader.close()
    return page


_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def assert_page_is_clean(text: str) -> Page:
    """No element, attribute or comment but the page's own; no event handler, no script,
    no URL but the page's own links; no control, bidi or zero-width character."""
    page = read_page(text)
    tags = {tag for kind, tag, _ in page.shape if kind in ("<", ">")}
    assert tags <= PAGE_TAGS, tags - PAGE_TAGS
    assert not [s for s in page.shape if s[0] not in ("<", ">")], "comment or declaration"
    names = {k for _, k, _ in page.attrs}
    assert names <= PAGE_ATTRS, names - PAGE_ATTRS
    for s in page.strings():  # nothing hidden, nothing that reorders the text around it
        odd = {c for c in s if unicodedata.category(c) in _HIDDEN and c not in "\n\t"}
        assert not odd, sorted(odd)
    for tag, k, v in page.attrs:
        if k == "href":
            assert v.startswith(("/", "#", "data:,")), v
        if k == "style":
            assert tag == "span" and v.startswith("background:var(--"), v
        if k == "http-equiv":
            assert v == "refresh"
    return page


# -- CSV ----------------------------------------------------------------------------------

def read_csv(text: str) -> list[dict[str, str]]:
    """The rows, each checked to hold exactly haproxy's 128 fields and the final comma."""
    head, sep, body = text.partition("\n")
    assert sep and head == "# " + ",".join(CSV_FIELDS) + ","
    rows = []
    for rec in csv.reader(io.StringIO(body, newline="")):
        assert len(rec) == len(CSV_FIELDS) + 1, len(rec)
        assert rec[-1] == ""
        rows.append(dict(zip(CSV_FIELDS, rec[:-1], strict=True)))
    return rows


# -- JSON ---------------------------------------------------------------------------------

def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_json(text: str) -> Any:
    """json.loads as strict as RFC 8259: NaN and Infinity are refused."""
    return json.loads(text, parse_constant=_no_constant)


# -- Prometheus ---------------------------------------------------------------------------

def read_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Family name → [(labels, value)], each sample's label set unique in its family."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in seen, f"duplicate series {key}"
            seen.add(key)
            out.setdefault(fam.name, []).append((dict(s.labels), float(s.value)))
    return out


def label_values(metrics: dict[str, list[tuple[dict[str, str], float]]], family: str,
                 label: str) -> set[str]:
    return {labels[label] for labels, _ in metrics.get(family, [])}


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def with_numbers(view: StatsView, **kw: Any) -> StatsView:
    return replace(view, **kw)
