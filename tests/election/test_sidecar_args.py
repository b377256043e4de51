"""`pylb elect` flags, durations, and the HTTP answer (no API server needed)."""

from __future__ import annotations

import io
import socket

import aiohttp
import pytest

from election.decide import Timing
from election.sidecar import (
    LeaderView,
    SidecarOptions,
    parse_args,
    parse_duration,
    parse_hostport,
    start_http,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0), ("10", 10.0), ("2.5", 2.5), ("1m30s", 90.0), ("500ms", 0.5),
    ("1h", 3600.0), ("1.5s", 1.5), ("1m0.5s", 60.5),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "ten", "10s5", "-", "1 s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0:4040", ("0.0.0.0", 4040)), (":4040", ("", 4040)),
    ("[::1]:80", ("::1", 80)), ("localhost:1", ("localhost", 1)),
])
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["4040", "host:", "host:http", "h:0", "h:70000"])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_defaults_match_the_2016_sidecar() -> None:
    opts = parse_args(["--election", "example"])
    assert opts == SidecarOptions(election="example", identity=socket.gethostname(),
                                  namespace="default", timing=Timing(10, 5, 2.5), http=None,
                                  lock="leases", kubeconfig=None, in_cluster=None)


def test_all_flags() -> None:
    opts = parse_args(["--election=e", "--id=me", "--election-namespace=kube-system",
                       "--ttl=4s", "--http=127.0.0.1:4040", "--lock=endpoints",
                       "--kubeconfig=/k", "--use-kubernetes-cluster-service=false"])
    assert opts == SidecarOptions("e", "me", "kube-system", Timing(4, 2, 1),
                                  ("127.0.0.1", 4040), "endpoints", "/k", False)
    assert parse_args(["--election=e", "--use-kubernetes-cluster-service"]).in_cluster is True


@pytest.mark.parametrize(("argv", "message"), [
    ([], "--election"),
    (["--election="], "--election must not be empty"),
    (["--election=e", "--ttl=abc"], "invalid duration"),
    (["--election=e", "--ttl=0.5s"], "--ttl"),
    (["--election=e", "--http=nope"], "invalid host:port"),
    (["--election=e", "--lock=configmaps"], "invalid choice"),
    (["--election=e", "--use-kubernetes-cluster-service=maybe"], "invalid boolean"),
])
def test_bad_flags_name_the_flag(argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_leader_view_prints_each_change() -> None:
    out = io.StringIO()
    view = LeaderView(out)
    assert view.body() == b'{"name":""}'
    view.on_new_leader("pod-a")
    view.on_new_leader("")
    view.on_new_leader("pod-b")
    assert out.getvalue() == "pod-a is the leader\npod-b is the leader\n"
    assert view.body() == b'{"name":"pod-b"}'


async def test_http_answers_the_leader_on_any_path() -> None:
    view = LeaderView(io.StringIO())
    view.on_new_leader("pod-a")
    runner, port = await start_http(view, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/anything"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == 200
                    assert resp.content_type == "application/json"
                    assert await resp.json() == {"name": "pod-a"}
            view.on_new_leader("pod-b")
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert await resp.json() == {"name": "pod-b"}
    finally:
        await runner.cleanup()


async def test_http_port_in_use_is_an_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await start_http(LeaderView(io.StringIO()), "127.0.0.1", port)
