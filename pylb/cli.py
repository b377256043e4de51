"""The command line: `pylb run`, `pylb demo`, `pylb elect`.

`pylb run` keeps every flag of the 2015 service-loadbalancer with its name and meaning
(`--tcp-services`, `--namespace`, `--target-service`, `--forward-services`, `--http-port`,
`--stats-port`, `--ssl-cert`, `--ssl-ca-cert`, `--error-page`, `--default-return-code`,
`--balance-algorithm`, `--use-kubernetes-cluster-service`, `--dry`, `--syslog`). Go's flag
package accepted `--flag=false` for booleans, so ours do too. Flags become one frozen
`Settings`; a bad value stops start-up with one line that names the flag. Before anything
starts (`--dry` included) `main` also checks what the flags point at: the files it will
load (check_files), the cluster it will watch (check_cluster) and, for a real run, the
ports it will listen on (check_ports).
"""

from __future__ import annotations

import argparse
import enum
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from pylb import __version__, app, gatewayflags
from pylb.config import (
    CheckScope,
    CheckSettings,
    HttpParser,
    Limits,
    MetricsAuth,
    Settings,
    SslVerify,
    Timeouts,
    TlsSettings,
    default_check_scope,
)
from pylb.demo import DemoPorts, run_demo
from pylb.limits import parse_maxconn, parse_rate_limit
from pylb.logs import setup_logging
from pylb.model import Algorithm
from pylb.preflight import (
    FlagError,
    StartupError,
    check_cluster,
    check_files,
    check_ports,
    listeners,
    load_error_page,
)

log = logging.getLogger("pylb")
E = TypeVar("E", bound=enum.Enum)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (the flag, what is wrong, where to look)
    instead of the whole usage block above it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _one_of(kind: type[E], what: str) -> Callable[[str], E]:
    """An argparse type for an enum whose error lists the valid values."""

    def convert(value: str) -> E:
        try:
            return kind(value.strip().lower())
        except ValueError:
            valid = ", ".join(m.value for m in kind)
            raise argparse.ArgumentTypeError(f"unknown {what} {value!r} (valid: {valid})")\
                from None

    convert.__name__ = what
    return convert


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "t", "true", "yes", "on"):
        return True
    if v in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _check_scope(value: str) -> CheckScope:
    """`--checks`: all, annotated or off; the boolean forms it had before mean all/off."""
    v = value.strip().lower()
    try:
        return CheckScope(v)
    except ValueError:
        pass
    try:
        return CheckScope.ALL if _bool(v) else CheckScope.OFF
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected all, annotated or off, got {value!r}") from None


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {n}")
    return n


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {n}")
    return n


def _rate_limit(value: str) -> tuple[float, int]:
    try:
        return parse_rate_limit(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _maxconn(value: str) -> int:
    try:
        return parse_maxconn(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_float(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not n > 0 or n == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {value!r}")
    return n


def _duration(value: str) -> float:
    """Seconds, with haproxy/Go style units: `500ms`, `5s`, `1m`, `1h`, or a bare number."""
    v = value.strip().lower()
    number, mult = v, 1.0
    for suffix, unit in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if v.endswith(suffix):
            number, mult = v[: -len(suffix)], unit
            break
    try:
        seconds = float(number) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (e.g. 5s, 500ms, 1h)")\
            from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
    return seconds


def _status_code(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an HTTP status code: {value!r}") from None
    if not 200 <= n <= 599:
        raise argparse.ArgumentTypeError(f"not an HTTP status code (200-599): {n}")
    return n


def parse_tcp_services(value: str) -> tuple[tuple[str, int], ...]:
    """`mysql:3306,nginxsvc:443` → (("mysql", 3306), ("nginxsvc", 443)).

    Several services may name one port (`pt1:9443,pt2:9443`): the translation lets them
    share it when each is TLS passthrough with `lb.host` (routed by the ClientHello's
    server name), and skips the others with the reason."""
    out: list[tuple[str, int]] = []
    for item in filter(None, (p.strip() for p in value.split(","))):
        name, sep, port_s = item.rpartition(":")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected name:port, got {item!r}")
        port = _port(port_s)
        if port == 0:
            raise argparse.ArgumentTypeError(f"port 0 in {item!r}")
        if (name, port) in out:
            raise argparse.ArgumentTypeError(f"{name}:{port} listed twice")
        out.append((name, port))
    return tuple(out)


def _ingress_class(value: str) -> str:
    """An IngressClass name: a DNS subdomain (RFC 1123), as the API requires."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an IngressClass name (lower-case DNS subdomain)")
    return value


def _namespaces(value: str) -> tuple[str, ...]:
    """One namespace, a comma-separated list, or empty for all namespaces."""
    return tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))


def _source(value: str) -> str:
    if value == "kubernetes" or (value.startswith("file:") and len(value) > 5):
        return value
    raise argparse.ArgumentTypeError(f"expected 'kubernetes' or 'file:PATH', got {value!r}")


def default_workers() -> int:
    """Usable cores, from the CPU affinity mask (a container's cpuset), not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# The same words in `pylb run --help` and `pylb elect --help`: one rule for both.
CLUSTER_SERVICE_HELP = (
    "use the pod's in-cluster service account; false: the kubeconfig (--kubeconfig, else "
    "$KUBECONFIG, else ~/.kube/config). Default: true in a pod ($KUBERNETES_SERVICE_HOST "
    "set) unless --kubeconfig is given, else false")


def use_cluster_service(flag: bool | None, kubeconfig: str | None,
                        environ: Mapping[str, str] | None = None) -> bool:
    """The value of --use-kubernetes-cluster-service when it is not given: in-cluster in a
    pod, unless a kubeconfig is named (CLUSTER_SERVICE_HELP)."""
    if flag is not None:
        return flag
    env = os.environ if environ is None else environ
    return kubeconfig is None and "KUBERNETES_SERVICE_HOST" in env


def _add_kube_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument("--use-kubernetes-cluster-service", type=_bool, nargs="?", const=True,
                   default=None, metavar="BOOL", help=CLUSTER_SERVICE_HELP)
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG)")
    p.add_argument("--context", default=None, help="kubeconfig context")


def build_parser() -> argparse.ArgumentParser:
    limits, timeouts, tls, checks = Limits(), Timeouts(), TlsSettings(), CheckSettings()
    parser = Parser(
        prog="pylb",
        description="A pure-Python load balancer for bare-metal Kubernetes: HTTP routing by "
                    "/service path and Host, TCP services, TLS termination, a stats page.")
    parser.add_argument("--version", action="version", version=f"pylb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="serve traffic (the main job)",
                         description="Serve HTTP, HTTPS and TCP services from Kubernetes "
                                     "Services or a file of manifests.")
    g = run.add_argument_group("source (2015 flags kept)")
    g.add_argument("--source", type=_source, default="kubernetes",
                   help="'kubernetes' (default) or 'file:PATH' (Service/EndpointSlice YAML, "
                        "reread on change; no cluster needed)")
    g.add_argument("--namespace", type=_namespaces, default=("default",),
                   help="namespace to watch; a comma-separated list; empty for all "
                        "(default: default)")
    g.add_argument("--target-service", default=None,
                   help="restrict the load balancer to this one service")
    g.add_argument("--forward-services", type=_bool, nargs="?", const=True, default=False,
                   metavar="BOOL", help="send to the service's clusterIP instead of endpoints")
    g.add_argument("--endpoints-api", choices=("endpointslices", "endpoints"),
                   default="endpointslices",
                   help="read EndpointSlices (default) or legacy Endpoints")
    g.add_argument("--ingress-class", type=_ingress_class, default=None, metavar="NAME",
                   help="also serve networking.k8s.io/v1 Ingresses of this IngressClass "
                        "(its controller: pylb.io/ingress-controller), those annotated "
                        "kubernetes.io/ingress.class: NAME, and those without a class when "
                        "it is the default class (default: Ingresses not served)")
    _add_kube_flags(g)
    gatewayflags.add_flags(run)
    g = run.add_argument_group("frontends")
    g.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    g.add_argument("--http-port", type=_port, default=80, help="HTTP frontend port (80)")
    g.add_argument("--https-port", type=_port, default=443,
                   help="TLS frontend port for lb.sslTerm services (443)")
    g.add_argument("--tcp-services", type=parse_tcp_services, default=(),
                   metavar="NAME:PORT,...",
                   help="services exposed as TCP on their own port, e.g. mysql:3306")
    g.add_argument("--stats-port", type=_port, default=1936, help="stats page port (1936)")
    g.add_argument("--health-port", type=_port, default=8081,
                   help="/healthz and /readyz port (8081)")
    g = run.add_argument_group("behaviour")
    g.add_argument("--balance-algorithm", type=_one_of(Algorithm, "algorithm"),
                   default=Algorithm.ROUNDROBIN, metavar="ALGO",
                   help="default algorithm: roundrobin (default), leastconn, first, source")
    g.add_argument("--default-return-code", type=_status_code, default=404,
                   help="status for requests no route matches (404)")
    g.add_argument("--error-page", default=None,
                   help="body for the default return code: a file path or file:// URL")
    g.add_argument("--http-parser", type=_one_of(HttpParser, "parser"),
                   default=HttpParser.AUTO, metavar="PARSER",
                   help="auto (httptools when installed), h11, httptools")
    g.add_argument("--h2c", action="store_true",
                   help="accept HTTP/2 with prior knowledge (h2c) on the plain HTTP port "
                        "(off; TLS negotiates h2 by ALPN always)")
    g.add_argument("--maxconn", type=_positive_int, default=limits.maxconn,
                   help=f"connections per worker ({limits.maxconn})")
    g.add_argument("--retries", type=int, default=limits.retries,
                   help="connect retries, as haproxy's `retries` with `option redispatch`: the "
                        "same server a second apart (or --timeout-connect, if shorter), "
                        f"another server on the last retry ({limits.retries})")
    g.add_argument("--error-limit", type=int, default=limits.passive_fall, metavar="N",
                   help="failed connects in a row that eject a server for --error-down-for "
                        "(haproxy's observe layer4 + error-limit; 0: never; per service: "
                        f"lb.error-limit) ({limits.passive_fall})")
    g.add_argument("--error-down-for", type=_duration, default=limits.passive_down_for,
                   metavar="DUR",
                   help="how long an ejected server gets no new work, unless a connect in "
                        "panic or a passing active check brings it back first "
                        f"({limits.passive_down_for:g})")
    g.add_argument("--panic-threshold", type=int, default=limits.panic_threshold,
                   metavar="PERCENT",
                   help="ejections apply only while this share of a backend's servers is "
                        "not ejected; below, all are used (Envoy's panic threshold) "
                        f"({limits.panic_threshold})")
    for name, default, what in (
        ("http-request", timeouts.http_request, "whole request head"),
        ("connect", timeouts.connect, "connect to a server"),
        ("client", timeouts.client, "client inactivity"),
        ("server", timeouts.server, "server inactivity"),
        ("tunnel", timeouts.tunnel, "WebSocket and TCP tunnels"),
        ("keep-alive", timeouts.keep_alive, "idle client keep-alive"),
    ):
        g.add_argument(f"--timeout-{name}", type=_duration, default=default, metavar="DUR",
                       help=f"{what} ({default:g}s)")
    g = run.add_argument_group("protecting backends (haproxy: server maxconn, timeout "
                               "queue, stick-table rate limits)")
    g.add_argument("--server-maxconn", type=_maxconn, default=0, metavar="N",
                   help="requests (L7) or connections (L4) in flight per server for "
                        "services without lb.maxconn; more wait in the backend's queue; "
                        "divided among the workers (0: no limit)")
    g.add_argument("--queue-limit", type=_maxconn, default=0, metavar="N",
                   help="requests waiting in one backend's queue, per worker; more get "
                        "503 (0: only --maxconn bounds it)")
    g.add_argument("--timeout-queue", type=_duration, default=None, metavar="DUR",
                   help="longest wait in a queue, then 503 (default: --timeout-connect)")
    g.add_argument("--rate-limit", type=_rate_limit, default=None,
                   metavar="RATE[/s|/m][,burst=N]",
                   help="per client address, for services without lb.rate-limit: HTTP "
                        "requests over it get 429, TCP connections a reset (default: none)")
    g.add_argument("--rate-limit-table-size", type=_positive_int,
                   default=limits.rate_table_size, metavar="N",
                   help="client addresses remembered per rate-limited backend and worker, "
                        f"least recently seen dropped first ({limits.rate_table_size})")
    g.add_argument("--timeout-request-body", type=_duration, default=None, metavar="DUR",
                   help="whole request body from its head, then 408 (a slow POST); "
                        "default: off, the body is bounded by --timeout-client inactivity")
    g = run.add_argument_group("active health checks")
    g.add_argument("--check-interval", type=_duration, default=checks.interval, metavar="DUR",
                   help=f"between checks of one server ({checks.interval:g}s; haproxy inter)")
    g.add_argument("--check-rise", type=_positive_int, default=checks.rise,
                   help=f"successes to mark a server up ({checks.rise})")
    g.add_argument("--check-fall", type=_positive_int, default=checks.fall,
                   help=f"failures to mark a server down ({checks.fall})")
    g.add_argument("--check-timeout", type=_duration, default=None, metavar="DUR",
                   help="deadline of one check (default: --timeout-connect)")
    g.add_argument("--checks", type=_check_scope, nargs="?", const=CheckScope.ALL,
                   default=None, metavar="all|annotated|off",
                   help="which backends get active checks: all, those annotated "
                        "lb.check or lb.check-path, or none (true/false mean all/off). "
                        "Default: annotated with --source kubernetes (the kubelet's "
                        "readiness is in the EndpointSlices), all with a file source")
    g.add_argument("--check-rate", type=_positive_float, default=checks.rate, metavar="N",
                   help=f"probes started per second, all servers together ({checks.rate:g}); "
                        "more servers than rate x interval stretch the interval")
    g.add_argument("--check-max-inflight", type=_positive_int, default=checks.max_inflight,
                   metavar="N", help=f"probes open at once ({checks.max_inflight}; "
                                     "also at most a quarter of RLIMIT_NOFILE)")
    g = run.add_argument_group("TLS")
    g.add_argument("--ssl-cert", default=None,
                   help="PEM with chain and key, or a directory of them (SNI)")
    g.add_argument("--ssl-ca-cert", default=None,
                   help="CA for client certificates (then they are requested)")
    g.add_argument("--ssl-verify", type=_one_of(SslVerify, "mode"),
                   default=SslVerify.REQUIRED, metavar="MODE",
                   help="with --ssl-ca-cert: required (default) or optional")
    g.add_argument("--hsts", default=tls.hsts,
                   help="Strict-Transport-Security value on TLS responses; '' disables")
    g = run.add_argument_group("processes")
    g.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes (default: usable cores)")
    g.add_argument("--grace-period", type=_duration, default=30.0, metavar="DUR",
                   help="on SIGTERM, time for open connections to finish (30s)")
    g = run.add_argument_group("stats")
    g.add_argument("--stats-auth", default=None,
                   help="user:password for the stats page, or @FILE holding it")
    g.add_argument("--stats-bind", default=None, help="address of the stats page (--bind)")
    g.add_argument("--stats-refresh", type=_positive_int, default=10,
                   help="stats page auto-refresh seconds (10)")
    g.add_argument("--metrics-auth", type=_one_of(MetricsAuth, "mode"),
                   default=MetricsAuth.STATS, metavar="MODE",
                   help="who may read /metrics when --stats-auth is set: stats (default: the "
                        "same user:password) or none (open, for Prometheus scraping over the "
                        "pod network; the page, CSV and JSON keep the password)")
    g = run.add_argument_group("election")
    g.add_argument("--election", default=None,
                   help="Lease name: the leader writes service status and events")
    g.add_argument("--election-namespace", default="default",
                   help="namespace of the election's Lease (default: default)")
    g.add_argument("--id", dest="election_id", default=None,
                   help="this pod's identity in the election (hostname)")
    g = run.add_argument_group("output")
    g.add_argument("--dry", action="store_true",
                   help="print the route table that would be served, and exit")
    g.add_argument("--syslog", type=_bool, nargs="?", const=True, default=False,
                   metavar="BOOL", help="write the access log to stdout (2015 meaning)")
    g.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"),
                   help="info (default), or warning with --dry")

    demo = sub.add_parser("demo", help="run backends and pylb on loopback, and show what "
                                       "to curl (no cluster, no root)")
    demo.add_argument("--port", type=_port, default=8080, help="HTTP port (8080)")
    demo.add_argument("--stats-port", type=_port, default=1936, help="stats page port (1936)")
    demo.add_argument("--health-port", type=_port, default=8082,
                      help="/healthz and /readyz port (8082: 8081 is pylb run's default)")
    demo.add_argument("--tcp-port", type=_port, default=7000,
                      help="port of the TCP echo service (7000)")
    demo.add_argument("--duration", type=_duration, default=None, metavar="DUR",
                      help="stop after this long (default: until Ctrl-C)")

    sub.add_parser("elect", help="the leader-election sidecar (2016 leader-elector flags)",
                   add_help=False)
    return parser


def settings_from_args(ns: argparse.Namespace) -> Settings:
    """Turn parsed `pylb run` flags into Settings. Raises FlagError naming the flag."""
    error_page_body = load_error_page(ns.error_page) if ns.error_page else None
    for flag, path in (("--ssl-cert", ns.ssl_cert), ("--ssl-ca-cert", ns.ssl_ca_cert),
                       ("--kubeconfig", ns.kubeconfig)):
        if path and not os.path.exists(path):
            raise FlagError(f"{flag}: {path} does not exist")
    if ns.source.startswith("file:") and not os.path.exists(ns.source[5:]):
        raise FlagError(f"--source: {ns.source[5:]} does not exist")
    stats_auth = ns.stats_auth
    if stats_auth and stats_auth.startswith("@"):
        try:
            stats_auth = Path(stats_auth[1:]).read_text().strip()
        except OSError as e:
            raise FlagError(f"--stats-auth: cannot read {stats_auth[1:]}: {e.strerror}")\
                from None
    if stats_auth is not None and (":" not in stats_auth or stats_auth.startswith(":")):
        raise FlagError("--stats-auth: expected user:password")
    ports = {("--http-port", ns.http_port), ("--stats-port", ns.stats_port),
             ("--health-port", ns.health_port)}
    # The seed itself ran `--tcp-services=nginxsvc:443` (TLS passed through at L4): the
    # https port clashes only when pylb must terminate TLS there (--ssl-cert given).
    if ns.ssl_cert:
        ports.add(("--https-port", ns.https_port))
    by_port: dict[int, list[str]] = {}
    for n, p in ns.tcp_services:
        by_port.setdefault(p, []).append(n)
    ports |= {(f"--tcp-services {'+'.join(names)}", p) for p, names in by_port.items()}
    seen: dict[int, str] = {}
    for flag, port in sorted(ports):
        if port and port in seen:
            raise FlagError(f"{flag}: port {port} is also used by {seen[port]}")
        seen[port] = flag
    if ns.retries < 0:
        raise FlagError("--retries: must be 0 or more")
    if ns.error_down_for <= 0:
        raise FlagError("--error-down-for: must be more than 0")
    if ns.error_limit < 0:
        raise FlagError("--error-limit: must be 0 or more")
    if not 0 <= ns.panic_threshold <= 100:
        raise FlagError("--panic-threshold: must be a percentage, 0 to 100")
    if ns.gateway_api and not ns.source == "kubernetes":
        raise FlagError("--gateway-api: needs --source kubernetes")
    return Settings(
        source=ns.source,
        namespaces=ns.namespace,
        target_service=ns.target_service or None,
        forward_services=ns.forward_services,
        use_cluster_service=use_cluster_service(ns.use_kubernetes_cluster_service,
                                                ns.kubeconfig),
        kubeconfig=ns.kubeconfig,
        context=ns.context,
        endpoints_api=ns.endpoints_api,
        ingress_class=ns.ingress_class,
        bind=ns.bind,
        http_port=ns.http_port,
        https_port=ns.https_port,
        stats_port=ns.stats_port,
        health_port=ns.health_port,
        tcp_services=ns.tcp_services,
        balance_algorithm=ns.balance_algorithm,
        default_return_code=ns.default_return_code,
        error_page=ns.error_page,
        error_page_body=error_page_body,
        http_parser=ns.http_parser,
        h2c=ns.h2c,
        timeouts=Timeouts(
            http_request=ns.timeout_http_request, connect=ns.timeout_connect,
            client=ns.timeout_client, server=ns.timeout_server, tunnel=ns.timeout_tunnel,
            keep_alive=ns.timeout_keep_alive, http_body=ns.timeout_request_body),
        limits=Limits(maxconn=ns.maxconn, retries=ns.retries, passive_fall=ns.error_limit,
                      passive_down_for=ns.error_down_for,
                      panic_threshold=ns.panic_threshold,
                      server_maxconn=ns.server_maxconn, queue_limit=ns.queue_limit,
                      queue_timeout=ns.timeout_queue if ns.timeout_queue is not None
                      else ns.timeout_connect,
                      rate_limit=ns.rate_limit, rate_table_size=ns.rate_limit_table_size),
        tls=TlsSettings(cert=ns.ssl_cert, ca_cert=ns.ssl_ca_cert, verify=ns.ssl_verify,
                        hsts=ns.hsts),
        checks=CheckSettings(interval=ns.check_interval, rise=ns.check_rise,
                             fall=ns.check_fall, timeout=ns.check_timeout,
                             scope=ns.checks or default_check_scope(ns.source),
                             rate=ns.check_rate, max_inflight=ns.check_max_inflight),
        workers=ns.workers or default_workers(),
        grace_period=ns.grace_period,
        stats_auth=stats_auth,
        stats_bind=ns.stats_bind or ns.bind,
        stats_refresh=ns.stats_refresh,
        metrics_auth=ns.metrics_auth,
        election=ns.election,
        election_namespace=ns.election_namespace,
        election_id=ns.election_id,
        gateway=gatewayflags.from_args(ns),
        syslog=ns.syslog,
        log_level=ns.log_level or ("warning" if ns.dry else "info"),
        dry=ns.dry,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "elect":
        # Here, not at the top: the sidecar pulls in kubernetes-asyncio (~0.6 s of CPU),
        # which `pylb run` on a file source and `pylb demo` never need.
        from election.sidecar import main as elect_main

        return elect_main(args[1:])
    parser = build_parser()
    ns = parser.parse_args(args)
    if ns.command is None:
        parser.print_help()
        return 2
    if ns.command == "demo":
        setup_logging("info")
        return run_demo(DemoPorts(http=ns.port, stats=ns.stats_port, health=ns.health_port,
                                  tcp=ns.tcp_port), duration=ns.duration)
    try:
        settings = settings_from_args(ns)
        check_cluster(settings, explicit=ns.use_kubernetes_cluster_service is not None)
    except FlagError as e:
        parser.exit(2, f"pylb run: error: {e}\n")
    setup_logging(settings.log_level, access_log=settings.syslog)
    try:
        check_files(settings)
        if not settings.dry:
            check_ports(listeners(settings))
    except FlagError as e:
        parser.exit(2, f"pylb run: error: {e}\n")
    try:
        return app.main(settings)
    except StartupError as e:
        print(f"pylb run: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
