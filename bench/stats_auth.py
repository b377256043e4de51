"""Does a wrong stats password take as long as any other wrong password? (issue #12)

    python -m bench.stats_auth [--requests 3000] [--calls 200000] [--json out.json]

Two measurements, each over the same classes of Authorization header: right user with a
wrong password of the same length, of length 1, of length 64, sharing all but the last
character of the right one, sharing nothing; a wrong user with the right password; no
header; a header that is not Basic.

1. `check`: `BasicAuth.check` called directly, `--calls` per class in interleaved rounds,
   timed with perf_counter_ns over batches of 100 calls (so the timer's own cost is
   amortised). This is where a timing leak would show first: no network noise.
2. `http`: `--requests` per class against a real StatsServer in a child process, over
   one keep-alive loopback connection per class, the classes interleaved request by
   request so drift (other load on the machine) hits every class alike. Latency is from
   the first byte written to the last byte of the 401 read.

For each class it prints the median, p10 and p90, and a two-sample Kolmogorov-Smirnov
test of that class against the reference class (right user, wrong password of the same
length): D and its asymptotic p-value (scipy's ks_2samp when scipy is installed, else the
same formula written here). "indistinguishable" means p > 0.01. Numbers are for this
machine and this run; a loaded machine widens everything.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import math
import multiprocessing as mp
import os
import random
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

USER, PASSWORD = "admin", "correct-horse-battery-staple-42"
CRED = f"{USER}:{PASSWORD}"


def _basic(s: str) -> str:
    return "Basic " + base64.b64encode(s.encode()).decode()


CLASSES: dict[str, str | None] = {
    # Same length as the right credential: only closeness to the secret differs.
    "wrong pass, same length": _basic(f"{USER}:{'x' * len(PASSWORD)}"),
    "wrong pass, right but last char": _basic(f"{USER}:{PASSWORD[:-1]}X"),
    "wrong pass, right first half": _basic(
        f"{USER}:{PASSWORD[:len(PASSWORD) // 2]}{'x' * (len(PASSWORD) - len(PASSWORD) // 2)}"),
    "wrong user, right pass": _basic(f"adm1n:{PASSWORD}"),
    # Other lengths: the time may follow the length the client itself sent (base64 and
    # the digest read all of it), which tells it nothing it did not know.
    "wrong pass, length 1": _basic(f"{USER}:x"),
    "wrong pass, length 64": _basic(f"{USER}:{'x' * 64}"),
    "wrong pass, right prefix only": _basic(f"{USER}:{PASSWORD[:8]}"),
    "no header": None,
    "Bearer token": "Bearer " + "x" * 40,
}
SAME_LENGTH = frozenset(list(CLASSES)[:4])
REFERENCE = "wrong pass, same length"


# -- statistics ----------------------------------------------------------------------

def _ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of the two-sample KS statistic (Kolmogorov's
    distribution with Stephens' small-sample correction)."""
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = 2 * (-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return min(1.0, max(0.0, total))


def ks_2samp(a: list[float], b: list[float]) -> tuple[float, float]:
    try:
        scipy_stats = importlib.import_module("scipy.stats")
    except ImportError:
        pass
    else:
        r = scipy_stats.ks_2samp(a, b)
        return float(r.statistic), float(r.pvalue)
    xs, ys = sorted(a), sorted(b)
    i = j = 0
    d = 0.0
    while i < len(xs) and j < len(ys):
        v = min(xs[i], ys[j])
        while i < len(xs) and xs[i] == v:
            i += 1
        while j < len(ys) and ys[j] == v:
            j += 1
        d = max(d, abs(i / len(xs) - j / len(ys)))
    return d, _ks_pvalue(d, len(xs), len(ys))


def summary(samples: dict[str, list[float]], unit: str) -> list[dict[str, Any]]:
    ref = samples[REFERENCE]
    out = []
    for name, xs in samples.items():
        q = statistics.quantiles(xs, n=10)
        d, p = (0.0, 1.0) if name == REFERENCE else ks_2samp(xs, ref)
        out.append({"class": name, "n": len(xs), "unit": unit,
                    "median": statistics.median(xs), "p10": q[0], "p90": q[-1],
                    "ks_d": d, "ks_p": p, "indistinguishable": p > 0.01})
    return out


def show(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'class':34} {'n':>7} {'median':>9} {'p10':>9} {'p90':>9}  {'KS D':>6} "
          f"{'p':>7}  vs reference")
    for r in rows:
        verdict = "(reference)" if r["class"] == REFERENCE else (
            "indistinguishable" if r["indistinguishable"] else "DIFFERENT")
        print(f"{r['class']:34} {r['n']:7d} {r['median']:9.3f} {r['p10']:9.3f} "
              f"{r['p90']:9.3f}  {r['ks_d']:6.3f} {r['ks_p']:7.3f}  {verdict}")
    print(f"(times in {rows[0]['unit']})")


# -- 1. the check alone ----------------------------------------------------------------

def bench_check(calls: int, batch: int = 100) -> dict[str, list[float]]:
    from pylb.stats.http import BasicAuth
    auth = BasicAuth(CRED)
    samples: dict[str, list[float]] = {k: [] for k in CLASSES}
    rounds = max(1, calls // batch)
    order = list(CLASSES)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            header = CLASSES[name]
            check: Callable[[str | None], bool] = auth.check
            t0 = time.perf_counter_ns()
            for _ in range(batch):
                check(header)
            samples[name].append((time.perf_counter_ns() - t0) / batch)
    return samples


# -- 2. over HTTP --------------------------------------------------------------------

def _serve(port_out: Any, stop: Any) -> None:
    from pylb.config import Settings
    from pylb.stats import StatsServer
    from pylb.stats.view import StatsView

    async def main() -> None:
        view = StatsView(version="bench", pid=os.getpid(), started=time.time(),
                         now=time.time())
        srv = StatsServer(Settings(stats_auth=CRED), lambda: view)
        _, port = await srv.start("127.0.0.1", 0)
        port_out.send(port)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await srv.close()

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def _request(header: str | None) -> bytes:
    lines = ["GET /;csv HTTP/1.1", "Host: bench"]
    if header is not None:
        lines.append(f"Authorization: {header}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_reply(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("stats server closed the connection")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(4096)
    return head


def bench_http(requests: int) -> dict[str, list[float]]:
    parent, child = mp.Pipe()
    stop = mp.Event()
    proc = mp.Process(target=_serve, args=(child, stop), daemon=True)
    proc.start()
    socks: dict[str, socket.socket] = {}
    try:
        if not parent.poll(30):
            raise RuntimeError("the stats server did not start")
        port = parent.recv()
        samples: dict[str, list[float]] = {k: [] for k in CLASSES}
        payload = {k: _request(h) for k, h in CLASSES.items()}
        for name in CLASSES:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks[name] = s
        order = list(CLASSES)
        for i in range(requests):
            if i and i % 90 == 0:  # the server closes a connection after 100 requests
                for name in order:
                    socks[name].close()
                    socks[name] = socket.create_connection(("127.0.0.1", port), timeout=10)
                    socks[name].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            random.shuffle(order)
            for name in order:
                s = socks[name]
                t0 = time.perf_counter_ns()
                s.sendall(payload[name])
                head = _read_reply(s)
                samples[name].append((time.perf_counter_ns() - t0) / 1000)
                if not head.startswith(b"HTTP/1.1 401 "):
                    raise RuntimeError(f"{name}: expected 401, got {head[:40]!r}")
        return samples
    finally:
        for s in socks.values():
            s.close()
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="HTTP requests per class")
    ap.add_argument("--calls", type=int, default=200_000, help="check() calls per class")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    check_rows = summary(bench_check(args.calls), "ns per check()")
    show(f"BasicAuth.check, {args.calls} calls per class (batches of 100)", check_rows)
    http_rows = summary(bench_http(args.requests), "µs per request")
    show(f"HTTP 401 over loopback, {args.requests} requests per class", http_rows)
    for title, rows in (("check", check_rows), ("http", http_rows)):
        same = [r["class"] for r in rows
                if r["class"] in SAME_LENGTH and not r["indistinguishable"]]
        other = [r["class"] for r in rows
                 if r["class"] not in SAME_LENGTH and not r["indistinguishable"]]
        print(f"{title}: same-length classes "
              + ("indistinguishable from the reference" if not same
                 else "DISTINGUISHABLE: " + ", ".join(same))
              + "; other lengths " + ("too" if not other else
                                      "differing (by the client's own length): "
                                      + ", ".join(other)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"check": check_rows, "http": http_rows}, f, indent=1)


if __name__ == "__main__":
    main()
