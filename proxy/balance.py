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
from collections.abc import Callable, Collection, Container, Iterable

from proxy import queue
from proxy.ratelimit import Limiter
from pylb.config import Limits
from pylb.counters import Stats
from pylb.model import Affinity, Algorithm, Backend, Server

Key = tuple[str, int]
_INF = float("inf")
# Told of each passive ejection (backend name, server, failed connects in a row, seconds
# out) and each return (…, 0, None): the worker logs it and shows it on the stats page.
OnEject = Callable[[str, Server, int, float | None], None]
# `fails` of a return (`down_for` None) told to the OnEject hook: a passing active check
# ended the ejection (else 0: its time ran out, or a connect to it succeeded).
BACK_BY_CHECK = -1
# Enum members as globals: a member's lookup through its class costs ten times a global's.
_NONE, _COOKIE, _CLIENT_IP = Affinity.NONE, Affinity.COOKIE, Affinity.CLIENT_IP
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


# Shared empty stand-ins for per-backend maps most backends never fill (read-only: a
# writer swaps in its own map first). 10,000 backends, three fewer empty maps each:
# ~2.7 MiB a worker.
_NO_FAILS: dict[Key, int] = {}
_NO_STICKY: OrderedDict[str, tuple[Key, float]] = OrderedDict()
_NO_COOKIES: dict[str, Server] = {}


class Balancer:
    """Per-backend choice state for one worker process."""

    __slots__ = (
        "_by_cookie",
        "_clock",
        "_honour",
        "_limits",
        "_masked",
        "_on_eject",
        "_plain",
        "_rr",
        "_stats",
        "_sticky",
        "_tiebreak",
        "active",
        "backend",
        "candidates",
        "down",
        "fails",
        "gate",
        "limiter",
    )

    def __init__(self, backend: Backend, limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_eject: OnEject | None = None, stats: Stats | None = None) -> None:
        self._limits = limits or Limits()
        self._clock = clock
        self._on_eject = on_eject
        self._stats = stats
        # Per-server slots and the queue (proxy.queue), and the per-client rate limit
        # (proxy.ratelimit): None unless the backend sets them, so they cost nothing then.
        self.gate: queue.Gate | None = None
        self.limiter: Limiter | None = None
        self._rr: dict[Key, int] = {}
        self._sticky = _NO_STICKY  # its own on the first client-IP stick
        self._tiebreak = 0
        self.active: dict[Key, int] = {}
        self.fails = _NO_FAILS  # its own on the first failure
        # key -> monotonic time until which the server is considered down (passive), or
        # float("inf") while an active health check says it is down.
        self.down: dict[Key, float] = {}
        # `_honour_ejections`' verdict and the time it holds until (the next ejection
        # to run out), or None: recomputed (O(servers)) only after `down` or the server
        # list changed, or an ejection ran out; every write to `down` clears it.
        self._honour: tuple[bool, float] | None = None
        # Servers ejected when a check marked them down (the check's mark replaced the
        # ejection's end in `down`): its UP verdict ends the ejection too, and says so.
        self._masked: set[Key] = set()
        self.backend = backend
        self._plain = False
        self.candidates: tuple[Server, ...] = ()
        self._by_cookie = _NO_COOKIES
        self.update(backend)

    def update(self, backend: Backend) -> None:
        """Take a new server list for this backend, keeping state for servers that stay."""
        self.backend = backend
        # Round robin without affinity: `pick`'s short way, while nothing is excluded,
        # down or limited (most backends, most requests)
        self._plain = backend.algorithm is _ROUNDROBIN and backend.affinity is _NONE
        servers = tuple(sorted(backend.available, key=lambda s: s.key))
        self.candidates = servers
        keys = {s.key for s in backend.servers}
        self._honour = None
        self._masked &= keys
        for d in (self._rr, self.fails, self.down):
            for k in [k for k in d if k not in keys]:
                del d[k]
        # Only a cookie-sticky backend reads it: a hash per server is most of the cost of
        # a big table's first apply otherwise.
        self._by_cookie = {cookie_value(s): s for s in servers} \
            if backend.affinity is _COOKIE else _NO_COOKIES
        if backend.maxconn or self.gate is not None:
            queue.configure(self, backend, self._limits, self._stats)
        if backend.rate_limit is not None or self.limiter is not None:
            self.limiter = Limiter.configure(self.limiter, backend.rate_limit,
                                             self._limits.rate_table_size)

    # -- health -------------------------------------------------------------------------

    def set_health(self, key: Key, up: bool) -> None:
        """An active health check's verdict (from the controller). A passing one ends a
        passive ejection too."""
        self._honour = None
        masked = self._masked
        if up:
            until = self.down.pop(key, None)
            self.fails.pop(key, None)
            if (until is not None and until != _INF) or key in masked:
                masked.discard(key)
                self._returned(key, BACK_BY_CHECK)
        else:
            until = self.down.get(key)
            if until is not None and until != _INF and until > self._clock():
                masked.add(key)
            self.down[key] = _INF
        if self.gate is not None:
            self.gate.refresh(self)  # waiters pinned to it move, or it takes waiters

    def failed(self, server: Server) -> None:
        """A connect to `server` failed: after the error limit (the backend's
        `error_limit`, else `--error-limit`; 0: never) in a row it is ejected for
        `passive_down_for` seconds (haproxy's `observe layer4` + `error-limit`)."""
        key = server.key
        fails = self.fails
        if fails is _NO_FAILS:
            fails = self.fails = {}
        n = fails[key] = fails.get(key, 0) + 1
        limit = self.backend.error_limit
        if limit is None:
            limit = self._limits.passive_fall
        if limit <= 0 or n < limit:
            return
        until = self.down.get(key)
        if until == _INF:
            return
        now = self._clock()
        self.down[key] = now + self._limits.passive_down_for
        self._honour = None
        if until is None or until <= now:
            if self._on_eject is not None:
                self._on_eject(self.backend.name, server, n, self._limits.passive_down_for)
            if self.gate is not None:
                self.gate.refresh(self)  # waiters pinned to it move to another server

    def succeeded(self, server: Server) -> None:
        if self.fails.pop(server.key, None) is not None:
            until = self.down.get(server.key)
            if until is not None and until != _INF:
                del self.down[server.key]
                self._honour = None
                self._returned(server.key)

    def is_up(self, server: Server) -> bool:
        """Not marked down by a check, nor ejected (whatever the panic threshold says)."""
        until = self.down.get(server.key)
        if until is None:
            return True
        if until != _INF and until <= self._clock():
            del self.down[server.key]  # retry it now
            self._honour = None
            self._returned(server.key)
            return True
        return False

    def usable(self, server: Server) -> bool:
        """May get new work: up, or ejected while the panic threshold uses every server
        that no check marked down."""
        if not self.down:
            return True
        return self.is_up(server) or (self.down.get(server.key) != _INF
                                      and not self._honour_ejections())

    def _honour_ejections(self) -> bool:
        """Envoy's panic threshold: passive ejections apply only while at least
        `panic_threshold` percent of the servers no check marked down are not ejected;
        below, all of those are used (never eject the last usable servers).

        O(1) amortised: the verdict is kept until `down` or the server list changes, or
        the next ejection runs out (`others_usable` and the queue ask it per server)."""
        now = self._clock()
        cached = self._honour
        if cached is not None and now < cached[1]:
            return cached[0]
        down = self.down
        checked_up = ok = 0
        next_out = _INF
        for s in self.candidates:
            until = down.get(s.key)
            if until == _INF:
                continue
            checked_up += 1
            if until is None or until <= now:
                ok += 1
            elif until < next_out:
                next_out = until
        honour = ok * 100 >= self._limits.panic_threshold * checked_up
        self._honour = (honour, next_out)
        return honour

    def _returned(self, key: Key, how: int = 0) -> None:
        if self._on_eject is not None:
            s = self._find(key)
            if s is not None:
                self._on_eject(self.backend.name, s, how, None)

    def others_usable(self, server: Server) -> bool:
        """Whether a server other than `server` is usable, to redispatch to
        (proxy/retry.py)."""
        return any(s.key != server.key and self.usable(s) for s in self.candidates)

    @property
    def sticky(self) -> bool:
        """Whether the choice ties a client to its server (affinity, or any algorithm but
        round robin): haproxy then redispatches only on the last retry."""
        b = self.backend
        return b.algorithm is not _ROUNDROBIN or b.affinity is _COOKIE \
            or b.affinity is _CLIENT_IP

    # -- connections --------------------------------------------------------------------

    def acquire(self, server: Server) -> None:
        self.active[server.key] = self.active.get(server.key, 0) + 1

    def release(self, server: Server) -> None:
        n = self.active.pop(server.key, 0) - 1  # (one lookup for the last one, not two)
        if n > 0:
            self.active[server.key] = n

    # -- choice -------------------------------------------------------------------------

    def pick(self, client_ip: str, exclude: Collection[Key] = (),
             cookie: str | None = None) -> Server | None:
        """Choose a server for a new connection or request, or None when none is available.

        Affinity first (cookie, or the client-IP stick table), if the remembered server is
        still a candidate, up and not excluded; else the backend's algorithm.
        """
        if self._plain and not exclude and not self.down and self.gate is None:
            # What the way below comes to for round robin without affinity, when every
            # candidate may be chosen
            servers = self.candidates
            if len(servers) == 1:
                return servers[0]
            return _rr_pick(servers, self._rr) if servers else None
        backend = self.backend
        affinity = backend.affinity
        if affinity is _COOKIE and cookie:
            s = self._by_cookie.get(cookie)
            if s is not None and s.key not in exclude and self.usable(s):
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
                    if s is not None and key not in exclude and self.usable(s):
                        self._stick(client_ip, key, now)
                        return s
                del self._sticky[client_ip]
        gate = self.gate
        if gate is not None and gate.full:  # servers with no free slot: skipped
            exclude = gate.full.union(exclude) if exclude else gate.full
        # the common case: nothing down, nothing tried yet: the candidates as they are
        servers = self._eligible(exclude) if exclude or self.down else self.candidates
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

    def _eligible(self, exclude: Collection[Key]) -> tuple[Server, ...]:
        """The candidates not excluded and not down (or, in panic, the ejected too). Not
        in `pick` itself: its generators would make `pick` keep `self` and `exclude` in
        cells, made on every call (CPython 3.11)."""
        servers = tuple(s for s in self.candidates
                        if s.key not in exclude and (not self.down or self.is_up(s)))
        if self.down and not self._honour_ejections():  # panic: the ejected too
            servers = tuple(s for s in self.candidates
                            if s.key not in exclude and self.down.get(s.key) != _INF)
        return servers

    def _find(self, key: Key) -> Server | None:
        for s in self.candidates:
            if s.key == key:
                return s
        return None

    def _stick(self, client_ip: str, key: Key, now: float) -> None:
        sticky = self._sticky
        if sticky is _NO_STICKY:
            sticky = self._sticky = OrderedDict()
        sticky[client_ip] = (key, now + self._limits.stick_expire)
        sticky.move_to_end(client_ip)
        while len(sticky) > self._limits.stick_size:
            sticky.popitem(last=False)  # haproxy's stick-table drops the oldest entry too


class Balancers:
    """The balancers of one worker, one per backend of the current table, shared by every
    frontend (L7 plain and TLS, L4) so that leastconn counts and stickiness are per worker,
    not per listener.

    `apply(changed, removed)` takes a table's change (pylb.delta) and touches only those
    backends; `update(backends)` takes a whole table and finds the change itself. An index
    from server address to the backends that list it keeps an active check's verdict and
    "which servers left the table" proportional to the change, not to the table."""

    __slots__ = ("_by_key", "_by_name", "_clock", "_health", "_limits", "_stats",
                 "changes", "on_eject")

    def __init__(self, limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_eject: OnEject | None = None, stats: Stats | None = None) -> None:
        self._limits = limits or Limits()
        self._clock = clock
        self.on_eject = on_eject
        self._stats = stats  # where the queues count (proxy.queue); None: nowhere
        self._by_name: dict[str, Balancer] = {}
        self._health: dict[Key, bool] = {}
        # server address -> names of the backends listing it (most list it once)
        # A backend's name alone, or a tuple when several list the address: most addresses
        # are listed once, and a 1-tuple per server is ~5 MiB a worker at 100,000 servers.
        self._by_key: dict[Key, str | tuple[str, ...]] = {}
        # `apply`s so far: a decision made from `get`'s answers holds while it is unchanged
        # (proxy.http.server.ClientProtocol.on_head)
        self.changes = 0

    def update(self, backends: Collection[Backend]) -> set[Key]:
        """Apply a whole table's backends: new ones get a balancer, changed ones keep their
        state, vanished ones are dropped (connections in flight hold their own reference).
        Returns the server addresses no backend lists any more."""
        by_name = self._by_name
        changed = [b for b in backends
                   if (bal := by_name.get(b.name)) is None or bal.backend is not b]
        removed: list[str] = []
        if len(by_name) + sum(1 for b in changed if b.name not in by_name) != len(backends):
            wanted = {b.name for b in backends}
            removed = [name for name in by_name if name not in wanted]
        return self.apply(changed, removed)

    def apply(self, changed: Iterable[Backend], removed: Iterable[str]) -> set[Key]:
        """Apply a table change: `changed` backends (new or changed, whole) and the names
        of `removed` ones. Idempotent. Returns the server addresses that were listed by a
        backend before and now are by none (their pooled connections can go)."""
        by_name, by_key = self._by_name, self._by_key
        self.changes += 1
        left: set[Key] = set()
        for name in removed:
            bal = by_name.pop(name, None)
            if bal is not None:
                left.update(self._unindex(name, bal.backend))
                if bal.gate is not None:
                    bal.gate.close()
        for b in changed:
            bal = by_name.get(b.name)
            if bal is None:
                bal = by_name[b.name] = Balancer(b, self._limits, self._clock,
                                                 self.on_eject, self._stats)
            elif bal.backend is b:
                continue
            else:
                old = bal.backend
                if old == b:
                    bal.backend = b  # the same servers: nothing to redo
                    continue
                left.update(self._unindex(b.name, old))
                bal.update(b)
            for s in b.servers:
                key = s.key
                names = by_key.get(key)
                if names is None:
                    by_key[key] = b.name
                elif type(names) is str:
                    if names != b.name:
                        by_key[key] = (names, b.name)
                elif b.name not in names:
                    by_key[key] = (*names, b.name)
                # A server new to this backend may already be known down by an active check.
                if self._health.get(key) is False and bal.down.get(key) != _INF:
                    bal.set_health(key, False)
        return {k for k in left if k not in by_key}

    def _unindex(self, name: str, backend: Backend) -> list[Key]:
        by_key = self._by_key
        out = []
        for s in backend.servers:
            names = by_key.get(s.key)
            if names is None:
                continue
            if names == name:
                del by_key[s.key]
            elif type(names) is tuple:
                rest = tuple(n for n in names if n != name)
                by_key[s.key] = rest[0] if len(rest) == 1 else rest
            out.append(s.key)
        return out

    @property
    def live_keys(self) -> Container[Key]:
        """The server addresses of the current table (a live view, not a copy)."""
        return self._by_key.keys()

    def get(self, name: str) -> Balancer | None:
        return self._by_name.get(name)

    def set_health(self, key: Key, up: bool) -> None:
        """An active check's verdict for a server address, applied in every backend."""
        names = self._by_key.get(key, ())
        names = (names,) if type(names) is str else names
        if names and key not in self._health:
            key = self._own_key(key, names[0])
        self._health[key] = up
        for name in names:
            bal = self._by_name.get(name)
            if bal is not None:
                bal.set_health(key, up)

    def _own_key(self, key: Key, name: str) -> Key:
        """The table's own `(address, port)` object equal to `key`. A verdict's key comes
        off the wire as a new tuple and string: kept as such in the health maps, that was
        ~140 B per checked server a worker (14 MiB at 100,000)."""
        bal = self._by_name.get(name)
        if bal is not None:
            for s in bal.backend.servers:
                if s.key == key:
                    return s.key
        return key

    def reset_health(self, verdicts: dict[Key, bool]) -> None:
        """The whole map of active-check verdicts: addresses not in it have none (a server
        marked down by a check that no longer runs comes back)."""
        for key, up in self._health.items():
            if not up and key not in verdicts:
                self.set_health(key, True)
        self._health = {}
        for key, up in verdicts.items():
            self.set_health(key, up)
