"""Parsing the protection limits written in annotations and flags (`lb.maxconn`,
`lb.rate-limit`, `--server-maxconn`, `--rate-limit`): shared by pylb.cli and
discovery.translate, so both read the same syntax.

Rate limit syntax: `RATE[/s|/m][,burst=N]`, e.g. `10/s`, `100/m,burst=20`, `5,burst=50`.
RATE is requests (L7) or new connections (L4) per second (`/s`, the default) or per minute
(`/m`) per client address; `burst` is how many may come at once after a quiet spell
(nginx's `limit_req ... burst`), by default one second's worth (at least 1).
"""

from __future__ import annotations

import math
import re

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*([sm]))?\s*(?:,\s*burst\s*=\s*(\d+)\s*)?",
                   re.IGNORECASE)
MAX_MAXCONN = 1_000_000


def parse_rate_limit(text: str) -> tuple[float, int]:
    """`RATE[/s|/m][,burst=N]` → (per second, burst). ValueError with the reason."""
    m = _RATE.fullmatch(text)
    if m is None:
        raise ValueError(f"expected RATE[/s|/m][,burst=N] (e.g. 10/s,burst=20), got {text!r}")
    rate = float(m.group(1))
    if (m.group(2) or "s").lower() == "m":
        rate /= 60.0
    if not 0 < rate <= 1e9 or not math.isfinite(rate):
        raise ValueError(f"rate must be above 0, got {text!r}")
    burst = int(m.group(3)) if m.group(3) is not None else max(1, math.ceil(rate))
    if not 1 <= burst <= 1_000_000_000:
        raise ValueError(f"burst must be at least 1, got {text!r}")
    return rate, burst


def parse_maxconn(text: str) -> int:
    """A per-server connection limit: a whole number, 0 for none."""
    s = text.strip()
    if not s.isdigit() or int(s) > MAX_MAXCONN:
        raise ValueError(f"expected a whole number from 0 to {MAX_MAXCONN}, got {text!r}")
    return int(s)
