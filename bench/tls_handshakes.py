"""Full TLS handshakes per second: pylb's TLS listener (ssl on uvloop) next to haproxy.

Each server gets core 0 and one process/thread; `openssl s_time -new` (a new session for
every connection: a full handshake, no resumption) runs on core 1. The client often
saturates its core first (it verifies the signature, and an ECDSA verify costs more than
the sign), so the figure that compares the servers is their own CPU time per handshake
(utime+stime from /proc): `per core` = handshakes / server CPU seconds, what one fully busy
core of this machine would carry. Both certificate types (RSA-2048, ECDSA P-256) and both
protocol versions are measured in the same run.

The machine is shared with whatever else runs; each case runs `--repeat` times and the
median run (by server CPU per handshake) is reported.

    python -m bench.tls_handshakes [--seconds 5] [--repeat 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import trustme

from bench import procs

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
defaults
    mode http
    timeout connect 5s
    timeout client 50s
    timeout server 50s
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1
    http-request return status 200 content-type text/plain string ok
"""


@dataclass
class Result:
    server: str
    key: str
    version: str
    handshakes: int
    seconds: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.handshakes / self.seconds if self.seconds else 0.0

    @property
    def per_core(self) -> float:
        return self.handshakes / self.server_cpu if self.server_cpu else 0.0


def serve(pem: str, port: int) -> None:
    """The pylb side: a TlsStore listener on uvloop that echoes (handshakes only, here)."""
    import uvloop

    from proxy.tls import TlsStore
    from pylb.config import TlsSettings

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    async def main() -> None:
        store = TlsStore(TlsSettings(cert=pem))
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", port,
                                          ssl=store.server_context(), backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def s_time(port: int, version: str, seconds: int) -> int:
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
            "-time", str(seconds), f"-{version}"]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "1", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"^(\d+) connections in [\d.]+ real seconds", out, re.MULTILINE)
    if m is None:
        m = re.search(r"^(\d+) connections in ", out, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"s_time said: {out[-500:]}")
    return int(m.group(1))


def measure(name: str, proc: procs.Proc, port: int, key: str, version: str,
            seconds: int) -> Result:
    procs.wait_port(port)
    s_time(port, version, 1)  # warm-up
    cpu0, t0 = proc.cpu(), time.monotonic()
    n = s_time(port, version, seconds)
    t1, cpu1 = time.monotonic(), proc.cpu()
    return Result(name, key, version, n, t1 - t0, cpu1 - cpu0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; median shown")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--serve", nargs=2, metavar=("PEM", "PORT"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve:
        serve(ns.serve[0], int(ns.serve[1]))
        return 0
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pylb-tls-bench-") as tmp:
        root = Path(tmp)
        ca = trustme.CA()
        for key, kt in (("RSA-2048", trustme.KeyType.RSA), ("ECDSA-P256", trustme.KeyType.ECDSA)):
            pem = root / f"{key}.pem"
            ca.issue_cert("bench.example", common_name="bench.example", key_type=kt) \
                .private_key_and_cert_chain_pem.write_to_path(str(pem))
            servers: list[tuple[str, list[str], int]] = []
            port = procs.free_port()
            servers.append(("pylb", [sys.executable, "-m", "bench.tls_handshakes", "--serve",
                                     str(pem), str(port)], port))
            if shutil.which("haproxy"):
                port = procs.free_port()
                cfg = root / f"haproxy-{key}.cfg"
                cfg.write_text(HAPROXY_CFG.format(port=port, pem=pem))
                servers.append(("haproxy", ["haproxy", "-f", str(cfg)], port))
            for name, argv, port in servers:
                with procs.group() as g:
                    proc = g.add(procs.start(f"{name}-{key}", argv, cpus="0",
                                             logdir=root / "logs"))
                    for version in ("tls1_3", "tls1_2"):
                        runs = sorted((measure(name, proc, port, key, version, ns.seconds)
                                       for _ in range(ns.repeat)), key=lambda r: r.per_core)
                        r = runs[len(runs) // 2]  # the median run, by server CPU per handshake
                        results.append(r)
                        print(f"{name:8} {key:10} {version:7} {r.rate:8.0f} handshakes/s "
                              f"(client-bound)  {r.per_core:8.0f} per server core-second",
                              flush=True)
    print()
    print("ratio pylb / haproxy, handshakes per server core-second:")
    for key in ("RSA-2048", "ECDSA-P256"):
        for version in ("tls1_3", "tls1_2"):
            pair = {r.server: r for r in results if r.key == key and r.version == version}
            if "pylb" in pair and "haproxy" in pair and pair["haproxy"].per_core:
                ratio = pair["pylb"].per_core / pair["haproxy"].per_core
                print(f"  {key:10} {version:7} {ratio:.2f}")
    if ns.json:
        ns.json.write_text(json.dumps([asdict(r) | {"rate": r.rate, "per_core": r.per_core}
                                       for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
