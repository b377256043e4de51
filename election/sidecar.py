"""`pylb elect`: the 2016 leader-elector sidecar, on Leases.

Same flags (`--election`, `--id`, `--election-namespace`, `--ttl`, `--http`), same
answer (`GET /` → `{"name":"<leader>"}`, on any path, as the Go handler on "/" did), same
line `<name> is the leader` on stdout at each change of leader. New: `--lock=endpoints`
keeps the old Endpoints-annotation lock, so pylb can join an election that old sidecars
run (both must use the same lock to see each other), and the client flags of `pylb run`.
On SIGTERM or SIGINT the sidecar releases the lease if it holds it, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import uvloop
from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from election.decide import Timing
from election.elector import Elector
from election.lock import LOCK_KINDS, make_lock
from pylb.kubeapi import ClientSetupError, make_api_client

log = logging.getLogger("pylb.election")


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    election: str
    identity: str
    namespace: str = "default"
    timing: Timing = field(default_factory=lambda: Timing.from_ttl(10.0))  # --ttl=10s
    http: tuple[str, int] | None = None
    lock: str = "leases"
    kubeconfig: str | None = None
    in_cluster: bool | None = None  # None: in-cluster when running in a pod


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (`10s`, `1m30s`, `500ms`) or a bare number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 10s, 1m30s, 500ms)")
    return total


def parse_hostport(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "t", "true", "yes"):
        return True
    if lowered in ("0", "f", "false", "no"):
        return False
    raise ValueError(text)


def _arg(parse: Callable[[str], object], what: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid {what}: {exc}") from None
    convert.__name__ = what
    return convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pylb elect",
        description="Leader election sidecar: serves the leader's name over HTTP.")
    p.add_argument("--election", required=True,
                   help="name of the election (the Lease or Endpoints object)")
    p.add_argument("--id", default=None, help="this candidate's identity (default: hostname)")
    p.add_argument("--election-namespace", default="default",
                   help="namespace of the lock object (default: default)")
    p.add_argument("--ttl", type=_arg(parse_duration, "duration"), default=10.0,
                   help="lease duration, e.g. 10s; renew deadline ttl/2, retry ttl/4")
    p.add_argument("--http", type=_arg(parse_hostport, "host:port"), default=None,
                   help="serve GET / -> {\"name\": leader} on host:port")
    p.add_argument("--lock", choices=LOCK_KINDS, default="leases",
                   help="leases (default), or endpoints to join 2016 leader-elector sidecars")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG)")
    p.add_argument("--use-kubernetes-cluster-service", type=_arg(_parse_bool, "boolean"),
                   nargs="?", const=True, default=None, dest="in_cluster", metavar="BOOL",
                   help="use the pod's in-cluster service account; false: the kubeconfig "
                        "(--kubeconfig, else $KUBECONFIG, else ~/.kube/config). Default: true "
                        "in a pod ($KUBERNETES_SERVICE_HOST set) unless --kubeconfig is "
                        "given, else false")
    return p


def parse_args(argv: list[str] | None) -> SidecarOptions:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not ns.election:
        parser.error("--election must not be empty")
    try:
        timing = Timing.from_ttl(ns.ttl)
    except ValueError as exc:
        parser.error(f"--ttl: {exc}")
    return SidecarOptions(
        election=ns.election,
        identity=ns.id or socket.gethostname(),
        namespace=ns.election_namespace,
        timing=timing,
        http=ns.http,
        lock=ns.lock,
        kubeconfig=ns.kubeconfig,
        in_cluster=ns.in_cluster,
    )


class LeaderView:
    """The leader as the sidecar reports it: printed on change, served over HTTP."""

    def __init__(self, out: TextIO) -> None:
        self.name = ""
        self._out = out

    def on_new_leader(self, name: str) -> None:
        self.name = name
        if name:
            print(f"{name} is the leader", file=self._out, flush=True)

    def body(self) -> bytes:
        return json.dumps({"name": self.name}, separators=(",", ":")).encode()


async def start_http(view: LeaderView, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the HTTP answer; returns the runner (to clean up) and the bound port."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=view.body(), content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    sock = _bind(host, port)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return runner, int(sock.getsockname()[1])


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port ("" = every IPv4 address, as Go's ":port" is)."""
    infos = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def run_sidecar(opts: SidecarOptions, api: ApiClient, *, out: TextIO | None = None,
                      on_http: Callable[[int], None] | None = None) -> None:
    """Run the election and the HTTP answer until cancelled (then release the lease)."""
    view = LeaderView(out or sys.stdout)
    lock = make_lock(opts.lock, api, opts.namespace, opts.election)
    elector = Elector(lock, opts.identity, opts.timing, on_new_leader=view.on_new_leader)
    runner: web.AppRunner | None = None
    try:
        if opts.http is not None:
            runner, port = await start_http(view, *opts.http)
            if on_http is not None:
                on_http(port)
        await elector.run()
    finally:
        if runner is not None:
            await runner.cleanup()


async def _main(opts: SidecarOptions) -> int:
    try:
        api = await make_api_client(kubeconfig=opts.kubeconfig, in_cluster=opts.in_cluster)
    except ClientSetupError as exc:
        print(f"pylb elect: {exc}", file=sys.stderr)
        return 1
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        async with api:
            await run_sidecar(opts, api)
    except asyncio.CancelledError:
        if not stopping:
            raise
    except OSError as exc:
        print(f"pylb elect: --http: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`pylb elect [flags]`; returns the exit status."""
    opts = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_main(opts))


if __name__ == "__main__":
    sys.exit(main())
