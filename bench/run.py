"""The benchmark harness: pylb side by side with haproxy, nginx and a direct connection.

Every proxy gets the same pinned core and the same backend (nginx serving static files);
wrk runs pinned on the other core. On a 2-core machine wrk and the backend saturate their
core before a fast proxy saturates its own, so requests/s understate the fast proxies: the
figure that compares is the proxy's own CPU time per request (utime+stime of its whole
process tree ÷ requests completed, from /proc). 10⁶ ÷ that is what one fully busy core of
this machine would carry. Requests/s, latency and peak RSS stand beside it. The proxies
of a scenario are measured in rounds (`run_scenario`): one run of each, then the next
round, so a drift of the host's speed moves them alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import procs, wrk
from pylb.demo import service_manifest, slice_manifest

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
BODY_SIZES = {"small": 13, "64k": 64 * 1024, "1m": 1024 * 1024}
NGINX_STREAM_MODULES = ("/usr/lib/nginx/modules/ngx_stream_module.so",
                        "/usr/share/nginx/modules/ngx_stream_module.so")


@dataclass
class Scenario:
    name: str
    title: str
    path: str = "/svc/small"
    layer: str = "l7"  # l7 | l4 | tls
    close: bool = False  # a new connection per request
    connections: int = 32
    metric: str = "rps"  # rps | mbps
    proxies: tuple[str, ...] = ("direct", "haproxy", "nginx", "pylb-httptools", "pylb-h11")
    workers: int = 1
    key: str = "rsa"  # TLS certificate type


SCENARIOS = [
    Scenario("l7-keepalive", "L7, keep-alive, 13-byte responses"),
    Scenario("l7-newconn", "L7, a new client connection per request", close=True,
             connections=16),
    Scenario("l7-64k", "L7, 64 KiB responses", path="/svc/64k", metric="mbps"),
    Scenario("l7-1m", "L7, 1 MiB responses", path="/svc/1m", metric="mbps", connections=8),
    Scenario("l4-keepalive", "L4, keep-alive HTTP through a TCP frontend", layer="l4",
             path="/small", proxies=("direct", "haproxy", "nginx", "pylb")),
    Scenario("l4-newconn", "L4, a new connection per request", layer="l4", path="/small",
             close=True, connections=16, proxies=("direct", "haproxy", "nginx", "pylb")),
    Scenario("l4-bulk", "L4, 1 MiB responses (bulk MB/s)", layer="l4", path="/1m",
             metric="mbps", connections=8, proxies=("direct", "haproxy", "nginx", "pylb")),
    # wrk offers its previous session on every reconnect: both servers resume it (haproxy
    # from its cache, pylb from each worker's) — true full handshakes are measured by
    # bench/tls_handshakes.py (openssl s_time -new) and bench/instructions.py --case tls-rsa.
    Scenario("tls-handshake-rsa",
             "TLS, a new connection per request (RSA-2048; wrk offers its last session)",
             layer="tls", close=True, connections=16, proxies=("haproxy", "pylb-httptools")),
    Scenario("tls-handshake-ecdsa",
             "TLS, a new connection per request (ECDSA P-256; wrk offers its last session)",
             layer="tls", close=True, connections=16, key="ecdsa",
             proxies=("haproxy", "pylb-httptools")),
    Scenario("tls-keepalive", "TLS keep-alive, 13-byte responses", layer="tls",
             proxies=("haproxy", "pylb-httptools")),
    Scenario("workers-1", "pylb 1 worker (unpinned), keep-alive", proxies=("pylb-httptools",)),
    Scenario("workers-2", "pylb 2 workers (unpinned), keep-alive", proxies=("pylb-httptools",),
             workers=2),
]


@dataclass
class Run:
    rps: float
    mbps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    peak_rss_mib: float
    errors: int
    requests: int
    sys_us_per_req: float = 0.0  # of cpu_us_per_req, the kernel's (the rest is user time)


@dataclass
class Case:
    scenario: str
    proxy: str
    runs: list[Run] = field(default_factory=list)
    skipped: str = ""

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs) if self.runs else 0.0

    def spread(self, attr: str) -> tuple[float, float]:
        vals = [getattr(r, attr) for r in self.runs]
        return (min(vals), max(vals)) if vals else (0.0, 0.0)


# -- set-up ------------------------------------------------------------------------------


def _cpus() -> tuple[str | None, str | None, str | None]:
    """(proxy cpus, load cpus, unpinned) — proxy alone on the last core."""
    n = len(os.sched_getaffinity(0))
    if n < 2:
        return None, None, None
    return str(n - 1), ",".join(str(i) for i in range(n - 1)), None


def _make_root(tmp: Path) -> Path:
    root = tmp / "www"
    root.mkdir()
    (root / "small").write_bytes(b"hello world!\n")
    for name, size in BODY_SIZES.items():
        if name != "small":
            (root / name).write_bytes(os.urandom(size))
    return root


def _render(template: str, out: Path, **values: Any) -> Path:
    text = (CONFIGS / template).read_text()
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    out.write_text(text)
    return out


def _make_pem(tmp: Path, key_type: str) -> Path:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key: Any = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                if key_type == "rsa" else ec.generate_private_key(ec.SECP256R1()))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("bench.local")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem = tmp / f"{key_type}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return pem


def _manifests(backend_port: int, ssl_term: bool) -> list[dict[str, Any]]:
    ann = {"serviceloadbalancer/lb.sslTerm": "true"} if ssl_term else {}
    docs: list[dict[str, Any]] = []
    for name in ("svc", "tsvc"):
        docs.append(service_manifest(name, 80, backend_port,
                                     annotations=ann if name == "svc" else None))
        docs.append(slice_manifest(f"{name}-1", name, backend_port, ["127.0.0.1"]))
    return docs


@contextmanager
def backend(tmp: Path, cpus: str | None) -> Iterator[int]:
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (Debian package nginx)")
    port = procs.free_port()
    conf = _render("nginx-backend.conf", tmp / "nginx-backend.conf", port=port,
                   root=_make_root(tmp), tmp=tmp)
    with procs.group() as g:
        g.add(procs.start("nginx-backend", ["nginx", "-c", str(conf), "-e", "stderr"],
                          cpus=cpus, logdir=tmp))
        procs.wait_port(port)
        yield port


@contextmanager
def proxy(name: str, sc: Scenario, tmp: Path, backend_port: int,
          cpus: str | None) -> Iterator[tuple[procs.Proc | None, int]]:
    """Start one proxy for a scenario; yields (process or None for direct, port)."""
    if name == "direct":
        yield None, backend_port
        return
    port = procs.free_port()
    with procs.group() as g:
        if name == "haproxy":
            if shutil.which("haproxy") is None:
                raise FileNotFoundError("haproxy")
            template = {"l7": "haproxy-http.cfg", "l4": "haproxy-tcp.cfg",
                        "tls": "haproxy-https.cfg"}[sc.layer]
            pem = _make_pem(tmp, sc.key) if sc.layer == "tls" else ""
            conf = _render(template, tmp / "haproxy.cfg", port=port,
                           backend_port=backend_port, pem=pem)
            p = g.add(procs.start("haproxy", ["haproxy", "-db", "-f", str(conf)],
                                  cpus=cpus, logdir=tmp))
            procs.wait_port(port)
        elif name == "nginx":
            module = next((m for m in NGINX_STREAM_MODULES if os.path.exists(m)), None)
            if sc.layer == "l4" and module is None:
                raise FileNotFoundError("nginx stream module (libnginx-mod-stream)")
            http_port, tcp_port = (procs.free_port(), port) if sc.layer == "l4" else (
                port, procs.free_port())
            conf = _render("nginx-proxy.conf", tmp / "nginx-proxy.conf", port=http_port,
                           tcp_port=tcp_port, backend_port=backend_port, tmp=tmp,
                           stream_module=module or "")
            if module is None:
                text = conf.read_text()
                conf.write_text(text.split("stream {")[0].replace("load_module ;", ""))
            p = g.add(procs.start("nginx-proxy", ["nginx", "-c", str(conf), "-e", "stderr"],
                                  cpus=cpus, logdir=tmp))
            procs.wait_port(port)
        else:
            parser = name.split("-", 1)[1] if "-" in name else "auto"
            manifests = tmp / "cluster.yaml"
            manifests.write_text(yaml.safe_dump_all(
                _manifests(backend_port, ssl_term=sc.layer == "tls")))
            http_port = port if sc.layer == "l7" else procs.free_port()
            https_port = port if sc.layer == "tls" else procs.free_port()
            tcp_port = port if sc.layer == "l4" else procs.free_port()
            argv = [sys.executable, "-m", "pylb.cli", "run", f"--source=file:{manifests}",
                    "--bind=127.0.0.1", f"--http-port={http_port}",
                    f"--https-port={https_port}", f"--tcp-services=tsvc:{tcp_port}",
                    f"--stats-port={procs.free_port()}",
                    f"--health-port={procs.free_port()}", f"--workers={sc.workers}",
                    f"--http-parser={parser}", "--log-level=warning"]
            if sc.layer == "tls":
                argv.append(f"--ssl-cert={_make_pem(tmp, sc.key)}")
            p = g.add(procs.start("pylb", argv, cpus=None if sc.workers > 1 else cpus,
                                  logdir=tmp))
            procs.wait_port(port, timeout=30)
            _wait_routed(sc, port)
        yield p, port


def _wait_routed(sc: Scenario, port: int, timeout: float = 15.0) -> None:
    """pylb listens before its first table is applied: wait until the route answers 200."""
    import http.client
    import ssl

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sc.layer == "tls":
                ctx = ssl._create_unverified_context()
                c: http.client.HTTPConnection = http.client.HTTPSConnection(
                    "127.0.0.1", port, timeout=2, context=ctx)
            else:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", sc.path)
            status = c.getresponse().status
            c.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"pylb did not route {sc.path} within {timeout}s")


# -- running -------------------------------------------------------------------------------


def run_scenario(sc: Scenario, *, runs: int, seconds: float,
                 progress: Callable[[str], None]) -> list[Case]:
    """Every proxy of `sc`, in rounds: all are started (each pinned to the proxy core,
    each with its warm-up), then each round measures them one after another, so the
    ratios of a round compare proxies measured within seconds of each other. A host
    whose speed drifts over minutes (the shared machines these numbers come from) moves
    every proxy of a round alike, where measuring one proxy's runs, then the next's,
    charged the drift to the ratio."""
    cases = {name: Case(sc.name, name) for name in sc.proxies}
    proxy_cpus, load_cpus, _ = _cpus()
    headers = ("Connection: close",) if sc.close else ()
    with tempfile.TemporaryDirectory(prefix="pylb-bench-") as t, \
            contextlib.ExitStack() as stack:
        tmp = Path(t)
        tmp.chmod(0o755)  # nginx workers run as www-data and must read the files
        try:
            bport = stack.enter_context(backend(tmp, load_cpus))
        except (FileNotFoundError, TimeoutError, RuntimeError) as e:
            for case in cases.values():
                case.skipped = f"backend: {e}"
            return list(cases.values())
        ready: dict[str, tuple[procs.Proc | None, str]] = {}
        for name in sc.proxies:
            d = tmp / name  # (each proxy's files and logs apart)
            d.mkdir()
            d.chmod(0o755)
            try:
                proc, port = stack.enter_context(proxy(name, sc, d, bport, proxy_cpus))
                scheme = "https" if sc.layer == "tls" else "http"
                path = sc.path if (sc.layer != "l7" or name != "direct") else \
                    sc.path.removeprefix("/svc")
                url = f"{scheme}://127.0.0.1:{port}{path}"
                wrk.run(url, seconds=1, connections=sc.connections, headers=headers,
                        cpus=load_cpus)  # warm-up
                ready[name] = (proc, url)
            except FileNotFoundError as e:
                cases[name].skipped = f"{e} not installed"
            except (TimeoutError, RuntimeError) as e:
                logs = " | ".join(f"{f.name}: {f.read_text()[-300:]!r}" for f in d.glob("*.log"))
                cases[name].skipped = f"failed: {e}; {logs}"
                progress(f"{sc.name} / {name}: {cases[name].skipped}")
        for i in range(runs):
            for name, (proc, url) in list(ready.items()):
                progress(f"{sc.name} / {name}: run {i + 1} of {runs}")
                try:
                    cases[name].runs.append(_measure(proc, url, sc, headers, seconds,
                                                     load_cpus))
                except (TimeoutError, RuntimeError) as e:
                    cases[name].skipped = f"failed: {e}"
                    progress(f"{sc.name} / {name}: {cases[name].skipped}")
                    del ready[name]
    return list(cases.values())


def _measure(proc: procs.Proc | None, url: str, sc: Scenario, headers: tuple[str, ...],
             seconds: float, load_cpus: str | None) -> Run:
    """One run: wrk for `seconds`, and the proxy's CPU time meanwhile."""
    user0, sys0 = proc.cpu_split() if proc else (0.0, 0.0)
    r = wrk.run(url, seconds=seconds, connections=sc.connections, headers=headers,
                cpus=load_cpus)
    user1, sys1 = proc.cpu_split() if proc else (0.0, 0.0)
    cpu = (user1 - user0) + (sys1 - sys0)
    return Run(
        rps=r.rps, mbps=r.mb_per_s, p50_ms=r.latency_ms.get("50%", 0.0),
        p99_ms=r.latency_ms.get("99%", 0.0),
        cpu_us_per_req=(cpu / r.requests * 1e6) if r.requests and proc else 0.0,
        peak_rss_mib=(proc.peak_rss_kib() / 1024) if proc else 0.0,
        errors=r.errors, requests=r.requests,
        sys_us_per_req=((sys1 - sys0) / r.requests * 1e6) if r.requests and proc else 0.0)


def run(scenarios: list[Scenario], *, runs: int, seconds: float, out: Path,
        progress: Callable[[str], None] = print) -> list[Case]:
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for sc in scenarios:
        cases.extend(run_scenario(sc, runs=runs, seconds=seconds, progress=progress))
    (out / "results.json").write_text(json.dumps({
        "machine": machine(), "runs": runs, "seconds": seconds,
        "cases": [asdict(c) for c in cases]}, indent=1))
    return cases


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": len(os.sched_getaffinity(0)), "cpu": model,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                     time.gmtime())}
