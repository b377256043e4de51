"""Running wrk and reading what it prints."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

_UNITS_TIME = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_UNITS_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    bytes_read: float = 0.0
    rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # "50%" → ms
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx

    @property
    def mb_per_s(self) -> float:
        return self.bytes_read / 1024**2 / self.seconds if self.seconds else 0.0


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(m.group(1)) * _UNITS_TIME[m.group(2)]


def parse(out: str) -> WrkResult:
    r = WrkResult()
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)(B|KB|MB|GB|TB) read", out)
    if not m:
        raise ValueError(f"unexpected wrk output:\n{out}")
    r.requests = int(m.group(1))
    r.seconds = _ms(m.group(2) + m.group(3)) / 1000.0
    r.bytes_read = float(m.group(4)) * _UNITS_SIZE[m.group(5)]
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r.rps = float(m.group(1)) if m else 0.0
    for pct, val in re.findall(r"^\s+(50%|75%|90%|99%)\s+(\S+)$", out, re.M):
        r.latency_ms[pct] = _ms(val)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r.socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                                   map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r.non_2xx = int(m.group(1)) if m else 0
    return r


def run(url: str, *, seconds: float, connections: int, threads: int = 1,
        headers: tuple[str, ...] = (), cpus: str | None = None,
        timeout_s: float = 5.0) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    argv = [wrk, "--latency", "-t", str(threads), "-c", str(connections),
            "-d", f"{seconds:g}s", "--timeout", f"{timeout_s:g}s"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    if cpus is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus, *argv]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed: {p.stderr or p.stdout}")
    return parse(p.stdout)
