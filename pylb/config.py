"""Typed, frozen settings, built once from the command line (pylb.cli) and passed down.

Each default says why it is what it is. The timeouts are those of the 2015
service-loadbalancer's haproxy template, so a user moving from it sees the same behaviour.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pylb.model import Algorithm


class HttpParser(enum.StrEnum):
    AUTO = "auto"  # httptools when installed, else h11
    H11 = "h11"
    HTTPTOOLS = "httptools"


class MetricsAuth(enum.StrEnum):
    """Who may read /metrics on the stats port when --stats-auth is set."""

    STATS = "stats"  # the stats credential, as every stats path (Prometheus sends basic_auth)
    NONE = "none"  # anyone who reaches the port: for scrapes over the pod network


class SslVerify(enum.StrEnum):
    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. haproxy 2015 template: `timeout http-request 5s`, `connect 5s`,
    `client 50s`, `server 50s`, `tunnel 1h`, `http-keep-alive 60s`."""

    http_request: float = 5.0  # whole request head must arrive within this (slowloris)
    connect: float = 5.0
    client: float = 50.0  # client inactivity
    server: float = 50.0  # server inactivity (waiting for a response, or mid-body)
    tunnel: float = 3600.0  # WebSocket / upgraded and L4 tunnels once both sides talk
    keep_alive: float = 60.0  # idle client connection between requests
    # Whole request body, from its head (haproxy's `timeout http-request` with `option
    # http-buffer-request`): a slow POST then holds its server slot this long at most.
    # None: off, as haproxy's default (the body is bounded only by `client` inactivity).
    http_body: float | None = None
    backend_idle: float = 30.0  # pooled idle connection to a backend server; < typical
    # backend keep-alive timeouts (nginx 75s, Go 90s) so we close first and never reuse
    # a connection the server is about to close.


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits, with the precedents they follow."""

    # h11's default max incomplete event size is 16 KiB; nginx's large_client_header_buffers
    # is 4 x 8k; haproxy's tune.bufsize is 16k. A head above this gets 431.
    max_request_head: int = 16 * 1024
    max_headers: int = 100  # haproxy's tune.http.maxhdr default is 101
    max_uri: int = 8 * 1024  # nginx: 8k per line; above this → 414
    maxconn: int = 20000  # per worker; haproxy's 2015 template: maxconn 20000 (defaults)
    retries: int = 3  # haproxy: `retries 3`, with `option redispatch`
    pool_per_server: int = 64  # idle keep-alive connections kept per backend server
    # A server that failed this many connects in a row is ejected (marked down
    # passively) for `passive_down_for` seconds: haproxy's `observe layer4` with
    # `error-limit` (its default is 10; 3 is haproxy's `fall 3`, as quick as the active
    # check) and `on-error mark-down`. 0 never ejects. --error-limit, --error-down-for,
    # and per service serviceloadbalancer/lb.error-limit.
    passive_fall: int = 3
    passive_down_for: float = 10.0
    # Envoy's panic threshold (its default, 50%): ejections apply only while at least
    # this percentage of a backend's servers (those no active check marked down) is not
    # ejected; below, all of them are used: the last servers are never ejected.
    panic_threshold: int = 50
    # Affinity table expiry: haproxy `stick-table type ip size 20k expire 30m`.
    stick_expire: float = 1800.0
    stick_size: int = 20000
    # Per-server connection limit for backends not annotated lb.maxconn (haproxy's server
    # `maxconn`; 0: none, as haproxy's default). Divided among the workers: proxy/queue.py.
    server_maxconn: int = 0
    # Requests waiting in one backend's queue, per worker, at most; 0: only --maxconn
    # bounds it (haproxy's backend queue has no limit of its own, and its per-server
    # `maxqueue` defaults to none).
    queue_limit: int = 0
    # haproxy's `timeout queue`; when not given, the connect timeout (haproxy's rule).
    queue_timeout: float = 5.0
    # Per-client rate limit for backends not annotated lb.rate-limit: (requests or new
    # connections per second, burst), or None.
    rate_limit: tuple[float, int] | None = None
    # Client addresses a rate-limited backend remembers per worker (haproxy's stick-table
    # `size`); the least recently seen goes first. ~200 bytes each: 100k ≈ 20 MiB.
    rate_table_size: int = 100_000
    # (this worker's index, workers): per-server limits are divided among the workers.
    worker: tuple[int, int] = (0, 1)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert: str | None = None  # PEM file (chain + key) or a directory of them (SNI)
    ca_cert: str | None = None  # client CA: client certificates requested
    verify: SslVerify = SslVerify.REQUIRED  # used when ca_cert is set
    hsts: str = "max-age=15768000"  # empty disables; six months, as in haproxy's docs
    session_tickets: bool = False  # 2015 template: no-tls-tickets


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """How discovery talks to the Kubernetes API. Seconds unless named otherwise."""

    # client-go's reflector asks for 5-10 min; the server's own default is 30-60 min.
    # Under 5 min keeps each watch well inside proxies' idle limits and spreads
    # reconnects; the real server ends it cleanly and we resume from the last version.
    watch_timeout: int = 290
    # A watch that sends nothing (no event, no bookmark) for this long is presumed dead
    # and reopened from its last resourceVersion. Real servers send a bookmark about
    # every 60 s (kube-apiserver's defaultBookmarkFrequency), so twice that.
    read_timeout: float = 120.0
    connect_timeout: float = 10.0
    list_timeout: float = 60.0  # whole list page, headers to last byte
    page_size: int = 500  # client-go's pager default (`limit=500`)
    # Full-jitter exponential backoff after errors (AWS architecture blog's "full jitter";
    # client-go backs its reflector off from 800 ms to 30 s).
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    # Bursts of events (a rollout touches many slices) become one table: publish once the
    # stream has been quiet for `coalesce_window`, and at most `coalesce_max_delay` after
    # the first event of the burst. 10 ms: the quiet time is added to every change's
    # latency, and a burst cut into several tables costs little since tables are built
    # incrementally and go to the workers as deltas (50 ms before: change→traffic p50 at
    # 10,000 services ~70 ms, of which 50 were this wait).
    coalesce_window: float = 0.01
    coalesce_max_delay: float = 0.5
    # ExternalName services: DNS is re-resolved this often (30 s ≈ a common TTL), each
    # lookup bounded by `dns_timeout` (glibc's default resolver timeout is 5 s).
    dns_interval: float = 30.0
    dns_timeout: float = 5.0


class CheckScope(enum.StrEnum):
    """Which backends get active checks (`--checks`)."""

    ALL = "all"  # every backend; haproxy's `check` on every server line
    ANNOTATED = "annotated"  # services annotated lb.check: "true" (or with lb.check-path)
    OFF = "off"


def default_check_scope(source: str) -> CheckScope:
    """`--checks` when not given, by source. Kubernetes already reports readiness in its
    EndpointSlices (kubelet probes every pod), and every pylb node probing every endpoint
    multiplies that load by the number of LB nodes: check only what a service asks for,
    as haproxytech's ingress controller does (ingress-nginx has no active checks at all).
    A file of manifests has no kubelet behind it, so there the checks are all pylb has."""
    return CheckScope.ANNOTATED if source == "kubernetes" else CheckScope.ALL


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """Active health checks (proxy.check), run by the controller once for all workers.

    The 2015 template wrote `check inter 5`: haproxy reads a bare number as milliseconds,
    so it probed every server 200 times a second. haproxy's own default is `inter 2s`,
    `rise 2`, `fall 3`; pylb takes those. A server is thus marked down within
    fall x interval (6 s) plus one timeout, and back up after 2 good checks (4 s).

    The checks share the controller's one event loop with discovery, table publishing,
    the stats page, /readyz and signal handling, so they run under a budget:

    - `rate`: probes started per second, all servers together. A probe (socket, connect,
      close, its task, timer and verdict) costs the controller about 150 us of CPU on
      uvloop (bench/checks.py: 1,000 probes/s took 15-17% of a core), so on a 2-core
      node the controller keeps most of its core for discovery, publishing and the
      stats page, and the workers theirs; its loop never waits more than a few ms. 1,000/s covers
      2,000 servers at the 2 s interval; above that the interval stretches to
      servers / rate (100,000 servers: every 100 s) and the stats page and a log line
      say so — haproxy likewise spreads its checks (`spread-checks`) rather than
      bunching them, and a check every 100 s still catches a dead server long before
      a person would.
    - `max_inflight`: probes open at once. With servers that answer (or refuse) in a
      millisecond, rate x latency keeps this near 1; it binds only when servers time
      out, where it caps descriptors and memory (512 x one socket and a task ≈ 2 MiB)
      at the cost of the rate: 512 / 5 s timeout ≈ 100 probes/s while everything hangs.
      It is further held to a quarter of RLIMIT_NOFILE, leaving the rest to the stats
      and health servers, discovery's watches and the worker pipes.
    """

    interval: float = 2.0  # seconds between checks of one server (haproxy `inter`)
    rise: int = 2  # consecutive successes to mark a down server up
    fall: int = 3  # consecutive failures to mark an up server down
    # Connect + response deadline of one check; None means Timeouts.connect (5 s).
    # (haproxy with no `timeout check` bounds the connect by `timeout connect`.)
    timeout: float | None = None
    # Which backends are checked. A hand-built Settings checks all (what this class does
    # when not told otherwise); `pylb run` picks by source: default_check_scope.
    scope: CheckScope = CheckScope.ALL
    rate: float = 1000.0  # probes started per second, all servers together
    max_inflight: int = 512  # probes open at once (also <= RLIMIT_NOFILE / 4)

    @property
    def enabled(self) -> bool:
        return self.scope is not CheckScope.OFF


@dataclass(frozen=True, slots=True)
class GatewayApi:
    """pylb as a Gateway API controller (`--gateway-api`; discovery/gateway)."""

    enabled: bool = False
    controller_name: str = "pylb.io/gateway-controller"  # GatewayClasses pylb handles
    address_pool: tuple[str, ...] = ()  # for Gateways without spec.addresses, in order
    port_map: tuple[tuple[int, int], ...] = ()  # (listener port, port bound instead)


@dataclass(frozen=True, slots=True)
class Settings:
    # Sources
    source: str = "kubernetes"  # "kubernetes" or "file:PATH"
    namespaces: tuple[str, ...] = ("default",)  # () = all namespaces
    target_service: str | None = None
    forward_services: bool = False
    use_cluster_service: bool = True  # in-cluster config; False → kubeconfig
    kubeconfig: str | None = None
    context: str | None = None
    endpoints_api: str = "endpointslices"  # or "endpoints"
    # Serve networking.k8s.io/v1 Ingresses of this IngressClass (discovery/ingress.py);
    # None: Ingresses are not watched (their RBAC is not needed).
    ingress_class: str | None = None
    kube: KubeSettings = field(default_factory=KubeSettings)
    # Frontends
    bind: str = "0.0.0.0"
    http_port: int = 80
    https_port: int = 443
    stats_port: int = 1936
    health_port: int = 8081
    tcp_services: tuple[tuple[str, int], ...] = ()  # (service name, port)
    # Behaviour
    balance_algorithm: Algorithm = Algorithm.ROUNDROBIN
    default_return_code: int = 404
    error_page: str | None = None
    error_page_body: bytes | None = field(default=None, repr=False)
    http_parser: HttpParser = HttpParser.AUTO
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    tls: TlsSettings = field(default_factory=TlsSettings)
    # Processes
    workers: int = 1
    grace_period: float = 30.0  # < Kubernetes' default terminationGracePeriodSeconds
    # Stats
    stats_auth: str | None = None  # "user:password"
    stats_bind: str = "0.0.0.0"
    stats_refresh: int = 10
    metrics_auth: MetricsAuth = MetricsAuth.STATS
    checks: CheckSettings = field(default_factory=CheckSettings)
    # Election
    election: str | None = None
    election_namespace: str = "default"
    election_id: str | None = None
    gateway: GatewayApi = field(default_factory=GatewayApi)
    # Logging
    syslog: bool = False  # 2015 meaning: the access log goes to stdout
    log_level: str = "info"
    dry: bool = False
