"""The splicer's decisions as tables: inactivity verdicts, SNI backend choice, sweep
interval. No sockets, no clock."""

from __future__ import annotations

import pytest

from proxy.tcp.proxy import idle_verdict, sni_backend, sweep_interval
from pylb.config import Timeouts
from pylb.failures import Failure
from pylb.model import TcpFrontend

T = Timeouts(client=50, server=40, tunnel=3600)
NO_TUNNEL = Timeouts(client=50, server=40, tunnel=0)
OFF = Timeouts(client=0, server=0, tunnel=0)
C, S = Failure.CLIENT_TIMEOUT, Failure.BACKEND_TIMEOUT


@pytest.mark.parametrize(("tunnel", "now", "client_at", "server_at", "t", "want"), [
    # before the tunnel: only the client's silence counts
    (False, 49.9, 0, 0, T, None),
    (False, 50.0, 0, 0, T, C),
    (False, 100, 60, 0, T, None),
    (False, 1e9, 0, 0, OFF, None),
    # tunnel: silence in both directions for `tunnel`
    (True, 3599, 0, 0, T, None),
    (True, 3600, 0, 0, T, C),
    (True, 3700, 0, 200, T, None),  # the server spoke at 200: 3500 s of silence
    (True, 3800, 0, 200, T, C),  # both silent; the client the longer: blamed
    (True, 3800, 200, 0, T, S),
    (True, 1000, 0, 999, T, None),  # client silent for 1000 s: tunnel supersedes client
    # no tunnel timeout: each side on its own
    (True, 49, 0, 10, NO_TUNNEL, None),
    (True, 50, 0, 49, NO_TUNNEL, C),
    (True, 45, 40, 5, NO_TUNNEL, S),
    (True, 1e9, 0, 0, OFF, None),
])
def test_idle_verdict(tunnel: bool, now: float, client_at: float, server_at: float,
                      t: Timeouts, want: Failure | None) -> None:
    assert idle_verdict(tunnel, now, client_at, server_at, t) is want


FE = TcpFrontend("tls", 443, "default-be", sni=(
    ("a.example.com", "a"), ("*.example.com", "wild"), ("B.Example.org", "b")))
NO_DEFAULT = TcpFrontend("tls", 443, "", sni=(("a.example.com", "a"),))


@pytest.mark.parametrize(("fe", "host", "want"), [
    (FE, "a.example.com", "a"),  # exact beats wildcard
    (FE, "A.EXAMPLE.COM.", "a"),  # case and the trailing dot do not matter
    (FE, "x.example.com", "wild"),
    (FE, "y.x.example.com", "default-be"),  # `*.` covers one label, as in certificates
    (FE, "example.com", "default-be"),
    (FE, "b.example.org", "b"),
    (FE, None, "default-be"),  # no SNI / not TLS: the default backend
    (NO_DEFAULT, "zzz.example.com", None),  # unknown name and no default: refused
    (NO_DEFAULT, None, None),
    (NO_DEFAULT, "a.example.com", "a"),
])
def test_sni_backend(fe: TcpFrontend, host: str | None, want: str | None) -> None:
    assert sni_backend(fe, host) == want


@pytest.mark.parametrize(("t", "want"), [
    (Timeouts(), 1.0),  # 50 s / 4 would be 12.5 s: capped at 1 s
    (Timeouts(client=0.2, server=50, tunnel=3600), 0.05),
    (Timeouts(client=0.001, server=0, tunnel=0), 0.01),
    (Timeouts(client=50, server=50, tunnel=3600, http_request=0.4), 0.1),
    (Timeouts(client=0, server=0, tunnel=0), 1.0),
])
def test_sweep_interval(t: Timeouts, want: float) -> None:
    assert sweep_interval(t) == pytest.approx(want)
