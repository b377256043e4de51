"""The command line: 2015 flags keep their names and meanings; bad values name the flag."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pylb.app import dry_run
from pylb.cli import (
    CLUSTER_SERVICE_HELP,
    build_parser,
    main,
    parse_tcp_services,
    settings_from_args,
    use_cluster_service,
)
from pylb.config import CheckScope, CheckSettings, Settings
from pylb.model import Algorithm
from pylb.preflight import FlagError, check_cluster, check_ports

ROOT = Path(__file__).resolve().parents[2]


def settings(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["run", *argv]))


def test_defaults_are_the_2015_controllers() -> None:
    s = settings()
    assert (s.http_port, s.https_port, s.stats_port, s.health_port) == (80, 443, 1936, 8081)
    assert s.namespaces == ("default",)
    assert s.balance_algorithm is Algorithm.ROUNDROBIN
    assert s.default_return_code == 404
    assert (s.timeouts.http_request, s.timeouts.connect, s.timeouts.client,
            s.timeouts.server, s.timeouts.tunnel, s.timeouts.keep_alive) == (
        5.0, 5.0, 50.0, 50.0, 3600.0, 60.0)
    assert s.workers >= 1
    assert s.source == "kubernetes"


@pytest.mark.parametrize("argv,field,expected", [
    (["--tcp-services=mysql:3306,nginxsvc:443"], "tcp_services",
     (("mysql", 3306), ("nginxsvc", 443))),
    (["--namespace=kube-system"], "namespaces", ("kube-system",)),
    (["--namespace=a,b,a"], "namespaces", ("a", "b")),
    (["--namespace="], "namespaces", ()),
    (["--target-service=nginxsvc"], "target_service", "nginxsvc"),
    (["--forward-services"], "forward_services", True),
    (["--forward-services=false"], "forward_services", False),
    (["--use-kubernetes-cluster-service=false"], "use_cluster_service", False),
    (["--balance-algorithm=leastconn"], "balance_algorithm", Algorithm.LEASTCONN),
    (["--default-return-code=503"], "default_return_code", 503),
    (["--syslog"], "syslog", True),
    (["--dry"], "dry", True),
    (["--workers=3"], "workers", 3),
    (["--grace-period=1m"], "grace_period", 60.0),
    (["--endpoints-api=endpoints"], "endpoints_api", "endpoints"),
])
def test_flags(argv: list[str], field: str, expected: object) -> None:
    assert getattr(settings(*argv), field) == expected


def test_passive_ejection_flags() -> None:
    s = settings("--error-limit=5", "--error-down-for=30s", "--panic-threshold=0")
    assert (s.limits.passive_fall, s.limits.passive_down_for, s.limits.panic_threshold) == (
        5, 30.0, 0)
    d = settings()
    assert (d.limits.passive_fall, d.limits.passive_down_for, d.limits.panic_threshold) == (
        3, 10.0, 50)


EXAMPLE_SOURCE = f"--source=file:{ROOT / 'examples' / 'cluster.yaml'}"


@pytest.mark.parametrize("argv,scope", [
    # unset: resolved from the source (Kubernetes reports readiness itself; a file does not)
    ([], CheckScope.ANNOTATED),
    ([EXAMPLE_SOURCE], CheckScope.ALL),
    (["--checks=all"], CheckScope.ALL),
    (["--checks=Annotated", EXAMPLE_SOURCE], CheckScope.ANNOTATED),
    (["--checks=off", EXAMPLE_SOURCE], CheckScope.OFF),
    # the boolean forms of before
    (["--checks"], CheckScope.ALL),
    (["--checks=true"], CheckScope.ALL),
    (["--checks=false", EXAMPLE_SOURCE], CheckScope.OFF),
    (["--checks=0"], CheckScope.OFF),
])
def test_checks_scope(argv: list[str], scope: CheckScope) -> None:
    assert settings(*argv).checks.scope is scope


def test_check_budget_flags() -> None:
    c = settings().checks
    assert (c.rate, c.max_inflight) == (CheckSettings().rate, CheckSettings().max_inflight)
    c = settings("--check-rate=250", "--check-max-inflight=64").checks
    assert (c.rate, c.max_inflight) == (250.0, 64)


@pytest.mark.parametrize("argv,checked", [
    ([], {"default/hostsvc:80", "default/mysql:3306", "default/nginxsvc:443",
          "default/nginxsvc:80", "default/secure:80", "default/testsvc:80"}),
    (["--checks=annotated"], set()),
    (["--checks=off"], set()),
])
def test_dry_render_says_which_backends_are_checked(argv: list[str], checked: set[str]) -> None:
    out: list[str] = []
    assert dry_run(settings(EXAMPLE_SOURCE, "--tcp-services=mysql:3306", *argv), out.append) == 0
    lines = out[0].splitlines()
    backends = {line.split()[1]: line for line in lines if line.startswith("backend ")}
    assert len(backends) == 6
    assert {name for name, line in backends.items() if " check" in line} == checked


@pytest.mark.parametrize("argv,flag", [
    (["--http-port=eighty"], "--http-port"),
    (["--http-port=70000"], "--http-port"),
    (["--tcp-services=mysql"], "--tcp-services"),
    (["--tcp-services=a:1,a:1"], "--tcp-services"),
    (["--balance-algorithm=random"], "--balance-algorithm"),
    (["--default-return-code=42"], "--default-return-code"),
    (["--use-kubernetes-cluster-service=maybe"], "--use-kubernetes-cluster-service"),
    (["--timeout-connect=soon"], "--timeout-connect"),
    (["--timeout-connect=-1s"], "--timeout-connect"),
    (["--workers=0"], "--workers"),
    (["--source=etcd"], "--source"),
    (["--error-page=/nonexistent/page.html"], "--error-page"),
    (["--error-page=http://example.com/x"], "--error-page"),
    (["--ssl-cert=/nonexistent.pem"], "--ssl-cert"),
    (["--stats-auth=nopassword"], "--stats-auth"),
    (["--http-port=1936"], "port 1936"),
    (["--source=file:/nonexistent.yaml"], "--source"),
    (["--checks=some"], "--checks"),
    (["--check-rate=0"], "--check-rate"),
    (["--check-rate=fast"], "--check-rate"),
    (["--check-max-inflight=0"], "--check-max-inflight"),
    (["--error-limit=-1"], "--error-limit"),
    (["--error-down-for=0"], "--error-down-for"),
    (["--panic-threshold=101"], "--panic-threshold"),
    (["--server-maxconn=-2"], "--server-maxconn"),
    (["--queue-limit=lots"], "--queue-limit"),
    (["--timeout-queue=never"], "--timeout-queue"),
    (["--rate-limit=fast"], "--rate-limit"),
    (["--rate-limit=10/s,burst=0"], "--rate-limit"),
    (["--timeout-request-body=x"], "--timeout-request-body"),
])
def test_bad_flag_stops_startup_naming_it(argv: list[str], flag: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", *argv])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_error_page_is_loaded_once_from_path_or_file_url(tmp_path: Path) -> None:
    page = tmp_path / "404 page.html"
    page.write_bytes(b"<h1>nothing here</h1>")
    assert settings(f"--error-page={page}").error_page_body == b"<h1>nothing here</h1>"
    url = "file://" + str(page).replace(" ", "%20")
    assert settings(f"--error-page={url}").error_page_body == b"<h1>nothing here</h1>"


def test_stats_auth_from_file(tmp_path: Path) -> None:
    f = tmp_path / "auth"
    f.write_text("admin:s3cret\n")
    assert settings(f"--stats-auth=@{f}").stats_auth == "admin:s3cret"


def test_tcp_services_parser() -> None:
    assert parse_tcp_services(" mysql:3306 , ") == (("mysql", 3306),)


def test_version_and_help() -> None:
    r = subprocess.run([sys.executable, "-m", "pylb.cli", "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("pylb ")
    r = subprocess.run([sys.executable, "-m", "pylb.cli", "run", "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    for flag in ("--tcp-services", "--namespace", "--target-service", "--forward-services",
                 "--http-port", "--stats-port", "--ssl-cert", "--ssl-ca-cert", "--error-page",
                 "--default-return-code", "--balance-algorithm",
                 "--use-kubernetes-cluster-service", "--dry", "--syslog", "--checks",
                 "--check-rate", "--check-max-inflight"):
        assert flag in r.stdout
    assert "annotated with --source kubernetes" in " ".join(r.stdout.split())


def test_dry_prints_the_example_table() -> None:
    r = subprocess.run([sys.executable, "-m", "pylb.cli", "run", "--dry",
                        "--source", f"file:{ROOT / 'examples' / 'cluster.yaml'}",
                        "--tcp-services=mysql:3306"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "route /nginxsvc -> default/nginxsvc:80" in out
    assert "tcp :3306 mysql -> default/mysql:3306" in out
    assert "-i no-strip" in out  # the aclMatch route
    assert "host=" in out  # the lb.host route
    assert "frontend https" in out
    assert "backend default/nginxsvc:80 balance=roundrobin" in out


# -- each start-up error is one line naming the flag or the file --------------------------


def _pylb(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pylb.cli", *argv], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


EXAMPLE = f"file:{ROOT / 'examples' / 'cluster.yaml'}"


@pytest.mark.parametrize("extra", [["--dry"], ["--workers=2"]], ids=["dry", "run"])
def test_a_non_pem_ssl_cert_stops_startup_before_any_worker(extra: list[str]) -> None:
    r = _pylb("run", f"--source={EXAMPLE}", "--ssl-cert", "README.md", "--bind=127.0.0.1",
              "--http-port=0", "--https-port=0", "--stats-port=0", "--health-port=0", *extra)
    assert r.returncode == 2
    assert _one_line(r.stderr) == ("pylb run: error: --ssl-cert: README.md: not a PEM file "
                                   "(no -----BEGIN line)")


def test_dry_checks_the_client_ca_and_the_error_page(tmp_path: Path) -> None:
    r = _pylb("run", f"--source={EXAMPLE}", "--dry", "--ssl-ca-cert", "README.md")
    assert r.returncode == 2
    assert _one_line(r.stderr).startswith("pylb run: error: --ssl-ca-cert: README.md: ")
    r = _pylb("run", f"--source={EXAMPLE}", "--dry", f"--error-page={tmp_path / 'gone'}")
    assert r.returncode == 2
    assert _one_line(r.stderr).startswith("pylb run: error: --error-page: cannot read ")


def test_dry_prints_each_skipped_service_once() -> None:
    r = _pylb("run", f"--source={EXAMPLE}", "--dry")
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).count("default/syslog") == 1


def _no_cluster(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(home))  # no ~/.kube/config


@pytest.mark.parametrize("argv,says", [
    ([], ["no in-cluster service account was found", "--source file:PATH",
          "--kubeconfig PATH"]),
    (["--use-kubernetes-cluster-service"],
     ["--use-kubernetes-cluster-service: no in-cluster service account was found",
      "--source file:PATH", "--use-kubernetes-cluster-service=false"]),
    (["--use-kubernetes-cluster-service=false"],
     ["--use-kubernetes-cluster-service=false: no kubeconfig at ", "--source file:PATH"]),
])
def test_run_without_a_cluster_says_how_to_run_without_one(
        argv: list[str], says: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _no_cluster(monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["run", *argv])
    assert exc.value.code == 2
    line = _one_line(capsys.readouterr().err)
    for words in says:
        assert words in line


def test_in_a_pod_without_a_token_the_token_is_named(tmp_path: Path) -> None:
    s = settings("--use-kubernetes-cluster-service")
    with pytest.raises(FlagError, match="token does not exist"):
        check_cluster(s, True, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, str(tmp_path / "token"))
    token = tmp_path / "token"
    token.write_text("t")
    check_cluster(s, True, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, str(token))


@pytest.mark.parametrize("flag,environ,kubeconfig,expected", [
    (None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None, True),  # in a pod
    (None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "/k", False),  # a kubeconfig named
    (None, {}, None, False),  # not in a pod
    (True, {}, "/k", True),
    (False, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None, False),
])
def test_use_kubernetes_cluster_service_default(flag: bool | None, environ: dict[str, str],
                                                kubeconfig: str | None,
                                                expected: bool) -> None:
    assert use_cluster_service(flag, kubeconfig, environ) is expected


def test_run_and_elect_describe_the_cluster_service_flag_alike() -> None:
    from election.sidecar import build_parser as elect_parser

    def help_of(parser: object, flag: str) -> str:
        actions = parser._actions  # type: ignore[attr-defined]
        return str(next(a.help for a in actions if flag in a.option_strings))

    run = next(a for a in build_parser()._actions
               if a.dest == "command").choices["run"]  # type: ignore[attr-defined]
    assert help_of(run, "--use-kubernetes-cluster-service") == CLUSTER_SERVICE_HELP
    assert help_of(elect_parser(), "--use-kubernetes-cluster-service") == CLUSTER_SERVICE_HELP
    assert help_of(run, "--election-namespace")


@pytest.mark.parametrize("flag,port_flag", [
    ("--stats-port", "--stats-port"), ("--health-port", "--health-port"),
    ("--http-port", "--http-port"), ("--tcp-services", "--tcp-services"),
])
def test_a_port_in_use_names_its_flag(flag: str, port_flag: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--stats-port": 0, "--health-port": 0, "--http-port": 0}
        argv = [f"{f}={p}" for f, p in ports.items() if f != flag]
        argv.append(f"--tcp-services=echo:{port}" if flag == "--tcp-services"
                    else f"{flag}={port}")
        with pytest.raises(SystemExit) as exc:
            main(["run", f"--source={EXAMPLE}", "--bind=127.0.0.1", *argv])
    assert exc.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{port_flag}" in line and f"port {port} on 127.0.0.1 is in use" in line


def test_check_ports_lets_free_and_zero_ports_pass() -> None:
    check_ports([("--http-port", "127.0.0.1", 0), ("--stats-port", "127.0.0.1", 0)])


@pytest.mark.parametrize("argv,valid", [
    (["--balance-algorithm=random"], "(valid: roundrobin, leastconn, first, source)"),
    (["--http-parser=fast"], "(valid: auto, h11, httptools)"),
    (["--ssl-verify=maybe"], "(valid: none, optional, required)"),
])
def test_an_unknown_choice_lists_the_valid_values_on_one_line(
        argv: list[str], valid: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", *argv])
    assert exc.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"pylb run: error: argument {argv[0].split('=')[0]}: ")
    assert valid in line


def test_protection_flags() -> None:
    s = settings()
    assert (s.limits.server_maxconn, s.limits.queue_limit, s.limits.rate_limit) == (0, 0, None)
    assert s.limits.queue_timeout == s.timeouts.connect  # haproxy: timeout queue unset
    assert s.timeouts.http_body is None  # off, as haproxy without http-buffer-request
    s = settings("--timeout-connect=2s")
    assert s.limits.queue_timeout == 2.0
    s = settings("--server-maxconn=50", "--queue-limit=100", "--timeout-queue=30s",
                 "--rate-limit=100/m,burst=20", "--rate-limit-table-size=5000",
                 "--timeout-request-body=20s")
    assert (s.limits.server_maxconn, s.limits.queue_limit, s.limits.queue_timeout) == \
        (50, 100, 30.0)
    assert s.limits.rate_limit is not None and s.limits.rate_limit[1] == 20
    assert abs(s.limits.rate_limit[0] - 100 / 60) < 1e-9
    assert s.limits.rate_table_size == 5000
    assert s.timeouts.http_body == 20.0
