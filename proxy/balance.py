"""Choosing a server: the balancing algorithms, affinity and passive health.

Theory of operation. The algorithms are pure functions over a tuple of candidate servers
and a little explicit state (`_rr_pick`, `_leastconn_pick`, `_first_pick`, `_source_pick`).
`Balancer` holds the per-backend, per-worker state they need — smooth weighted
round-robin's current weights, active connection counts, the client-IP stick table, and
passive/active health — and carries it across route-table updates: `update(backend)`
swaps the server list and keeps what still applies, so a change of endpoints never resets
the rotation or forgets stickiness for servers that stay.

Both the L7 router and the L4 splicer use this module; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from pylb.config import Limits
from pylb.model import Affinity, Algorithm, Backend, Server

Key = tuple[str, int]
# Enum members as globals: a member's lookup through its class costs ten times a global's.
_COOKIE, _CLIENT_IP = Affinity.COOKIE, Affinity.CLIENT_IP
_ROUNDROBIN, _LEASTCONN, _FIRST, _SOURCE = (Algorithm.ROUNDROBIN, Algorithm.LEASTCONN,
                                            Algorithm.FIRST, Algorithm.SOURCE)


def _rr_pick(servers: tuple[Server, ...], current: dict[Key, int]) -> Server:
    """Smooth weighted round-robin (nginx's): each pick adds every weight to its server's
    current value, takes the largest, and subtracts the total from it. Spreads a 5:1:1
    weighting as a a b a c a a, not a a a a a b c."""
    total = 0
    best: Server | None = None
    best_cur = 0
    for s in servers:
        cur = current.get(s.key, 0) + s.weight
        current[s.key] = cur
        total += s.weight
        if best is None or cur > best_cur:
            best, best_cur = s, cur
    assert best is not None
    current[best.key] = best_cur - total
    return best


def _leastconn_pick(servers: tuple[Server, ...], active: dict[Key, int],
                    tiebreak: int) -> Server:
    """Fewest active connections relative to weight; ties rotate (haproxy does the same,
    so that an idle backend still spreads its first requests)."""
    n = len(servers)
    best = servers[tiebreak % n]
    best_load = active.get(best.key, 0) / best.weight
    for i in range(1, n):
        s = servers[(tiebreak + i) % n]
        load = active.get(s.key, 0) / s.weight
        if load < best_load:
            best, best_load = s, load
    return best


def _first_pick(servers: tuple[Server, ...], active: dict[Key, int], maxconn: int) -> Server:
    """haproxy's `first`: the first server (in a stable order) with a free slot, so the
    rest can be scaled down; when all are full, the least loaded."""
    for s in servers:
        if active.get(s.key, 0) < maxconn:
            return s
    return min(servers, key=lambda s: active.get(s.key, 0))


def _source_pick(servers: tuple[Server, ...], client_ip: str) -> Server:
    """Weighted rendezvous hashing of the client address: a client keeps its server as
    long as that server stays, and when a server comes or goes only the clients that
    hashed to it move (haproxy's `hash-type consistent`)."""
    best: Server | None = None
    best_score = -1.0
    for s in servers:
        h = hashlib.blake2b(f"{client_ip}|{s.address}|{s.port}".encode(), digest_size=8)
        # Map to (0, 1] then score = -w / ln(x) (weighted HRW, Schindelhauer & Schomaker).
        x = (int.from_bytes(h.digest(), "big") + 1) / 2.0**64
        score = s.weight / -math.log(x) if x < 1.0 else float("inf")
        if score > best_score:
            best, best_score = s, score
    assert best is not None
    return best


def cookie_value(server: Server) -> str:
    """The SERVERID cookie's value for a server: opaque (does not reveal the pod address)
    and stable across pylb processes and restarts."""
    return hashlib.blake2b(f"{server.address}|{server.port}".encode(),
                           digest_size=8).hexdigest()


def normalize_client_ip(ip: str) -> str:
    """IPv4-mapped IPv6 (`::ffff:1.2.3.4`, from dual-stack sockets) counts as the IPv4
    address, so one client hashes and sticks the same whichever way it came in."""
    if ip.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(ip).ipv4_mapped
        except ValueError:
            return ip
        if mapped is not None:
            return str(mapped)
    return ip


class Balancer:
    """Per-backend choice state for one worker process."""

    __slots__ = (
        "_by_cookie",
        "_clock",
        "_limits",
        "_rr",
        "_sticky",
        "_tiebreak",
        "active",
        "backend",
        "candidates",
        "down",
        "fails",
    )

    def __init__(self, backend: Backend, limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits or Limits()
        self._clock = clock
        self._rr: dict[Key, int] = {}
        self._sticky: OrderedDict[str, tuple[Key, float]] = OrderedDict()
        self._tiebreak = 0
        self.active: dict[Key, int] = {}
        self.fails: dict[Key, int] = {}
        # key -> monotonic time until which the server is considered down (passive), or
        # float("inf") while an active health check says it is down.
        self.down: dict[Key, float] = {}
        self.backend = backend
        self.candidates: tuple[Server, ...] = ()
        self._by_cookie: dict[str, Server] = {}
        self.update(backend)

    def update(self, backend: Backend) -> None:
        """Take a new server list for this backend, keeping state for servers that stay."""
        self.backend = backend
        servers = tuple(sorted(backend.available, key=lambda s: s.key))
        self.candidates = servers
        keys = {s.key for s in backend.servers}
        for d in (self._rr, self.fails, self.down):
            for k in [k for k in d if k not in keys]:
                del d[k]
        self._by_cookie = {cookie_value(s): s for s in servers}

    # -- health -------------------------------------------------------------------------

    def set_health(self, key: Key, up: bool) -> None:
        """An active health check's verdict (from the controller)."""
        if up:
            self.down.pop(key, None)
            self.fails.pop(key, None)
        else:
            self.down[key] = float("inf")

    def failed(self, server: Server) -> None:
        """A connect to `server` failed: after `passive_fall` in a row it is out for
        `passive_down_for` seconds."""
        n = self.fails.get(server.key, 0) + 1
        self.fails[server.key] = n
        if n >= self._limits.passive_fall and self.down.get(server.key) != float("inf"):
            self.down[server.key] = self._clock() + self._limits.passive_down_for

    def succeeded(self, server: Server) -> None:
        if self.fails.pop(server.key, None) is not None:
            until = self.down.get(server.key)
            if until is not None and until != float("inf"):
                del self.down[server.key]

    def is_up(self, server: Server) -> bool:
        until = self.down.get(server.key)
        if until is None:
            return True
        if until != float("inf") and until <= self._clock():
            del self.down[server.key]  # retry it now
            return True
        return False

    # -- connections --------------------------------------------------------------------

    def acquire(self, server: Server) -> None:
        self.active[server.key] = self.active.get(server.key, 0) + 1

    def release(self, server: Server) -> None:
        n = self.active.get(server.key, 0) - 1
        if n > 0:
            self.active[server.key] = n
        else:
            self.active.pop(server.key, None)

    # -- choice -------------------------------------------------------------------------

    def pick(self, client_ip: str, exclude: Collection[Key] = (),
             cookie: str | None = None) -> Server | None:
        """Choose a server for a new connection or request, or None when none is available.

        Affinity first (cookie, or the client-IP stick table), if the remembered server is
        still a candidate, up and not excluded; else the backend's algorithm.
        """
        backend = self.backend
        affinity = backend.affinity
        if affinity is _COOKIE and cookie:
            s = self._by_cookie.get(cookie)
            if s is not None and s.key not in exclude and self.is_up(s):
                return s
        algo = backend.algorithm
        if affinity is _CLIENT_IP or algo is _SOURCE:
            client_ip = normalize_client_ip(client_ip)
        if affinity is _CLIENT_IP:
            hit = self._sticky.get(client_ip)
            now = self._clock()
            if hit is not None:
                key, expires = hit
                if expires > now:
                    s = self._find(key)
                    if s is not None and key not in exclude and self.is_up(s):
                        self._stick(client_ip, key, now)
                        return s
                del self._sticky[client_ip]
        if exclude or self.down:
            servers = tuple(s for s in self.candidates
                            if s.key not in exclude and (not self.down or self.is_up(s)))
        else:
            servers = self.candidates  # the common case: nothing down, nothing tried yet
        if not servers:
            return None
        if algo is _ROUNDROBIN:
            # One server: smooth round-robin would add its weight and take it off again.
            chosen = servers[0] if len(servers) == 1 else _rr_pick(servers, self._rr)
        elif algo is _LEASTCONN:
            self._tiebreak += 1
            chosen = _leastconn_pick(servers, self.active, self._tiebreak)
        elif algo is _FIRST:
            chosen = _first_pick(servers, self.active, self._limits.maxconn)
        else:
            chosen = _source_pick(servers, client_ip)
        if affinity is _CLIENT_IP:
            self._stick(client_ip, chosen.key, self._clock())
        return chosen

    def _find(self, key: Key) -> Server | None:
        for s in self.candidates:
            if s.key == key:
                return s
        return None

    def _stick(self, client_ip: str, key: Key, now: float) -> None:
        sticky = self._sticky
        sticky[client_ip] = (key, now + self._limits.stick_expire)
        sticky.move_to_end(client_ip)
        while len(sticky) > self._limits.stick_size:
            sticky.popitem(last=False)  # haproxy's stick-table drops the oldest entry too


class Balancers:
    """The balancers of one worker, one per backend of the current table, shared by every
    frontend (L7 plain and TLS, L4) so that leastconn counts and stickiness are per worker,
    not per listener."""

    __slots__ = ("_by_name", "_clock", "_health", "_limits", "_where")

    def __init__(self, limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits or Limits()
        self._clock = clock
        self._by_name: dict[str, Balancer] = {}
        self._health: dict[Key, bool] = {}
        # server address -> the balancers of the backends naming it; built on the first
        # verdict after a table change, so a burst of verdicts costs one walk, not one each
        self._where: dict[Key, list[Balancer]] | None = None

    def update(self, backends: Collection[Backend]) -> None:
        """Apply a new table's backends: new ones get a balancer, changed ones keep their
        state, vanished ones are dropped (connections in flight hold their own reference)."""
        fresh: dict[str, Balancer] = {}
        for b in backends:
            bal = self._by_name.get(b.name)
            if bal is None:
                bal = Balancer(b, self._limits, self._clock)
            elif bal.backend != b:
                bal.update(b)
            else:
                fresh[b.name] = bal
                continue
            # A server new to this backend may already be known down by an active check.
            for s in b.servers:
                if self._health.get(s.key) is False and bal.down.get(s.key) != float("inf"):
                    bal.set_health(s.key, False)
            fresh[b.name] = bal
        self._by_name = fresh
        self._where = None

    def get(self, name: str) -> Balancer | None:
        return self._by_name.get(name)

    def set_health(self, key: Key, up: bool) -> None:
        """An active check's verdict for a server address, applied in every backend."""
        self._health[key] = up
        where = self._where
        if where is None:
            where = self._where = {}
            for bal in self._by_name.values():
                for s in bal.backend.servers:
                    bals = where.setdefault(s.key, [])
                    if not bals or bals[-1] is not bal:
                        bals.append(bal)
        for bal in where.get(key, ()):
            bal.set_health(key, up)
