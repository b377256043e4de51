"""The long fuzz runs of issue #12: `python -m bench.fuzz --target http|translate|proxyproto|
sni|all --seconds N [--out DIR]`.

With atheris installed (`pip install -e '.[fuzz]'`) each target runs coverage-guided
(libFuzzer) in a child process of its own, with pylb's packages (and h11, yaml) instrumented;
the child's libFuzzer statistics give the inputs executed and the coverage (`cov`: edges,
`ft`: features). A crash — an exception out of the target, i.e. a property of
tests/hardening/_fuzzing.py broken or an unexpected error — is saved by libFuzzer under
`<out>/crashes/<target>/`, and the target is restarted for the time left (the corpus in
`<out>/corpus/<target>/` keeps what was learnt). Without atheris, hypothesis runs the same
checks on the same generators, in rounds of `--examples`, until the time is up.

The properties are exactly the CI tests' (tests/hardening/test_fuzz_*.py): the targets
below only turn fuzzer bytes into their inputs. Each prints one line per target and
writes `<out>/fuzz-<time>.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGETS = ("http", "translate", "proxyproto", "sni")
_INSTRUMENT = ["proxy", "discovery", "pylb", "h11", "yaml", "tests.hardening._fuzzing"]


# -- the targets: fuzzer bytes → the checks of tests/hardening/_fuzzing.py ----------------


def _seeded(data: bytes) -> random.Random:
    return random.Random(int.from_bytes(data[:8].ljust(8, b"\0"), "little"))


def target(name: str) -> Callable[[bytes], None]:
    """The function of one input for `name` (imports the checks lazily: atheris must
    instrument the modules before they are first imported)."""
    from tests.hardening import _fuzzing as fz

    if name == "http":
        def http(data: bytes) -> None:
            if not data:
                return
            mode, data = data[0] % 3, data[1:]
            style = fz.BACKEND_STYLES[data[0] % len(fz.BACKEND_STYLES)] if data else "length"
            if mode == 0:  # raw bytes, cut where the next bytes say
                cuts = sorted({c % (len(data) + 1) for c in data[1:5]})
                body = data[5:]
                chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)],
                                                    strict=True)]
                fz.check_http_differential([c for c in chunks if c] or [b""], True, style)
            elif mode == 1:  # structured requests from a seed
                chunks, eof, style = fz.http_case(_seeded(data))
                fz.check_http_differential(chunks, eof, style)
            else:  # a structured request, then the fuzzer's bytes
                rng = _seeded(data)
                stream = fz.build_request(rng) + data[8:]
                fz.check_http_differential(fz.split(rng, stream), rng.random() < 0.7, style)
        return http
    if name == "translate":
        def translate(data: bytes) -> None:
            if not data:
                return
            mode, data = data[0] % 3, data[1:]
            if mode == 0:
                good, bad = fz.translate_case(_seeded(data))
                fz.check_translate(good, bad)
            elif mode == 1:
                fz.check_yaml(data.decode("utf-8", "replace"))
            else:
                fz.check_yaml(fz.yaml_case(_seeded(data)))
        return translate
    if name == "proxyproto":
        def proxyproto(data: bytes) -> None:
            if data[:1] == b"\xff" and len(data) >= 13:  # a round trip of addresses
                import ipaddress

                def addr(raw: bytes, v6: bool) -> str:
                    if v6:
                        return str(ipaddress.IPv6Address(raw.ljust(16, b"\0")[:16]))
                    return str(ipaddress.IPv4Address(raw.ljust(4, b"\0")[:4]))
                src = (addr(data[2:18], bool(data[1] & 1)), int.from_bytes(data[-4:-2], "big"))
                dst = (addr(data[18:34], bool(data[1] & 2)), int.from_bytes(data[-2:], "big"))
                fz.check_proxyproto_roundtrip(src, dst, data[34:40])
            else:
                fz.check_proxyproto(data)
        return proxyproto
    if name == "sni":
        names = ("www.example.com", "a.b", None, "x" * 63 + ".example.org")

        def sni(data: bytes) -> None:
            if not data:
                return
            mode, data = data[0] % 3, data[1:]
            if mode == 0:
                fz.check_sni(data)
            elif mode == 1:  # a real hello, mutated
                rng = _seeded(data)
                hello = fz.client_hello(names[rng.randrange(len(names))])
                fz.check_sni(fz.mutate(rng, hello, rng.randrange(1, 9)))
            else:  # a real hello for a name made of the fuzzer's bytes
                label = re.sub(rb"[^a-z0-9]", b"", data.lower())[:40].decode() or "x"
                name = f"{label}.example"
                fz.check_sni_hello(fz.client_hello(name), name, _seeded(data))
        return sni
    raise ValueError(f"unknown target {name!r}")


# -- engines ----------------------------------------------------------------------------


def have_atheris() -> bool:
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


def atheris_child(name: str, argv: list[str]) -> None:
    """In the child process: instrument, then let libFuzzer run `name`."""
    import atheris

    with atheris.instrument_imports(include=_INSTRUMENT):
        fn = target(name)
    atheris.Setup([sys.argv[0], *argv], fn)
    atheris.Fuzz()


_STAT = re.compile(r"^#(\d+)\s+(\w+)\s+(?:cov: (\d+) ft: (\d+))?", re.M)
_DONE = re.compile(r"Done (\d+) runs in (\d+) second", re.M)
# libFuzzer also writes `slow-unit-*` files (the slowest input so far): not failures.
_CRASH = re.compile(r"Test unit written to (\S*(?:crash|timeout|oom|leak)-\S+)")


def seeds(name: str) -> list[bytes]:
    """A starting corpus: valid inputs of each target's modes (libFuzzer mutates them;
    from nothing it would take long to grow a whole request or ClientHello)."""
    from tests.hardening import _fuzzing as fz
    from tests.hardening.test_fuzz_http import REGRESSIONS

    if name == "http":
        reqs = [b"GET /a/x?y=1 HTTP/1.1\r\nHost: h\r\n\r\n",
                b"POST /svc:8080/p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
                b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;a=b\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
                b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhi",
                b"GET http://h.example/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                b"HEAD /r/x HTTP/1.1\r\nHost: h\r\n\r\n"]
        reqs += [b"".join(chunks) for chunks, _ in REGRESSIONS]
        return [bytes([0, i, 0, 0, 0, 0]) + r for i, r in enumerate(reqs)] + [
            bytes([1]) + i.to_bytes(8, "little") for i in range(8)]
    if name == "translate":
        return [b"\x01" + fz.EXAMPLE_CLUSTER.read_bytes()] + [
            bytes([m]) + i.to_bytes(8, "little") for m in (0, 2) for i in range(4)]
    if name == "proxyproto":
        from proxy.tcp import proxyproto as pp

        pairs = [(("10.0.0.1", 1234), ("192.0.2.1", 80)), (("2001:db8::1", 1), ("::1", 443)),
                 (None, None)]
        return [enc(s, d) for s, d in pairs for enc in (pp.encode_v1, pp.encode_v2)]
    return [b"\x00" + fz.client_hello(n) for n in ("www.example.com", None)] + [
        b"\x01" + i.to_bytes(8, "little") for i in range(4)] + [b"\x02shop"]


def run_atheris(name: str, seconds: float, out: Path) -> dict[str, Any]:
    corpus = out / "corpus" / name
    crashes = out / "crashes" / name
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for i, seed in enumerate(seeds(name)):
            (corpus / f"seed-{i}").write_bytes(seed)
    deadline = time.monotonic() + seconds
    runs = 0
    cov = ft = 0
    found: list[str] = []
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for attempt in range(50):  # a restart after each crash, for the time left
        left = int(deadline - time.monotonic())
        if left < 1:
            break
        log = logs / f"{name}-{attempt}.log"
        cmd = [sys.executable, "-m", "bench.fuzz", "--child", name, "--",
               f"-max_total_time={left}", "-timeout=30", "-rss_limit_mb=3072",
               "-max_len=8192", "-len_control=10",
               f"-artifact_prefix={crashes}/", "-print_final_stats=1", str(corpus)]
        returncode = 0
        # libFuzzer's clock starts after the instrumented imports: allow for them. A child
        # killed at the timeout has its statistics so far in the log.
        with open(log, "w") as f, contextlib.suppress(subprocess.TimeoutExpired):
            returncode = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False,
                                        cwd=HERE.parent, timeout=left + 600).returncode
        text = log.read_text(errors="replace")
        stats = _STAT.findall(text)
        done = _DONE.search(text)
        runs += int(done.group(1)) if done else max((int(s[0]) for s in stats), default=0)
        covs = [(int(s[2]), int(s[3])) for s in stats if s[2]]
        if covs:
            cov, ft = max(cov, covs[-1][0]), max(ft, covs[-1][1])
        crash = _CRASH.search(text)
        if crash:
            found.append(crash.group(1))
        elif returncode != 0:
            found.append(f"exit {returncode}, see {log}")
            break
        else:
            break
    return {"target": name, "engine": "atheris (libFuzzer, coverage-guided)",
            "inputs": runs, "cov": cov, "ft": ft, "crashes": found,
            "corpus": len(list(corpus.iterdir())), "seconds": seconds}


class _TimeUp(Exception):
    pass


def run_hypothesis(name: str, seconds: float, out: Path, examples: int) -> dict[str, Any]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    fn = target(name)
    count = 0
    crashes: list[str] = []
    crash_dir = out / "crashes" / name
    deadline = time.monotonic() + seconds

    # No shrinking: a failing input is saved as it came, and the next round goes on.
    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=600))
    def one(data: bytes) -> None:
        nonlocal count
        if time.monotonic() > deadline:
            raise _TimeUp
        count += 1
        try:
            fn(data)
        except Exception as e:
            crash_dir.mkdir(parents=True, exist_ok=True)
            path = crash_dir / f"hypothesis-{count}"
            path.write_bytes(data)
            path.with_suffix(".txt").write_text(f"{type(e).__name__}: {e}\n")
            crashes.append(str(path))
            raise

    for _ in range(100_000):
        if time.monotonic() > deadline:
            break
        try:
            one()
        except _TimeUp:
            break
        except Exception:  # saved above; a new round goes on
            continue
    return {"target": name, "engine": f"hypothesis (random, {examples} examples a round)",
            "inputs": count, "cov": None, "ft": None, "crashes": crashes, "corpus": None,
            "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        name = argv[1]
        rest = argv[3:] if argv[2:3] == ["--"] else argv[2:]
        atheris_child(name, rest)
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    p.add_argument("--seconds", type=float, default=60.0, help="per target")
    p.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    p.add_argument("--examples", type=int, default=5000, help="hypothesis: per round")
    p.add_argument("--out", type=Path, default=HERE / "out" / "fuzz")
    a = p.parse_args(argv)
    engine = a.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "hypothesis"
    if engine == "atheris" and not have_atheris():
        p.error("atheris is not installed: pip install -e '.[fuzz]'")
    a.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    results = []
    for name in TARGETS if a.target == "all" else (a.target,):
        t0 = time.monotonic()
        r = (run_atheris(name, a.seconds, a.out) if engine == "atheris"
             else run_hypothesis(name, a.seconds, a.out, a.examples))
        r["wall"] = round(time.monotonic() - t0, 1)
        results.append(r)
        cov = f" cov={r['cov']} ft={r['ft']}" if r["cov"] is not None else ""
        where = ": " + ", ".join(r["crashes"]) if r["crashes"] else ""
        print(f"{name:10} {r['engine']}: {r['inputs']} inputs in {r['wall']} s{cov}, "
              f"{len(r['crashes'])} crash(es){where}", flush=True)
    path = a.out / f"fuzz-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")
    return 1 if any(r["crashes"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
