"""The --gateway-* flags: parsed into Settings.gateway, and a bad one stops start-up
naming it."""

from __future__ import annotations

import pytest

from pylb.cli import build_parser, main, settings_from_args
from pylb.config import GatewayApi


def test_gateway_flags() -> None:
    s = settings_from_args(build_parser().parse_args([
        "run", "--workers=1", "--gateway-api", "--gateway-controller-name=example.com/gw",
        "--gateway-address-pool=127.0.10.1, ::1", "--gateway-port-map=80=8080,443=8443"]))
    assert s.gateway == GatewayApi(True, "example.com/gw", ("127.0.10.1", "::1"),
                                   ((80, 8080), (443, 8443)))
    assert settings_from_args(build_parser().parse_args(["run"])).gateway == GatewayApi()


@pytest.mark.parametrize(("argv", "flag"), [
    (["--gateway-address-pool=10.0.0.300"], "--gateway-address-pool"),
    (["--gateway-port-map=80"], "--gateway-port-map"),
    (["--gateway-port-map=80=70000"], "--gateway-port-map"),
    (["--gateway-api", "--workers=1", "--source=file:README.md"], "--gateway-api"),
])
def test_bad_gateway_flag_stops_startup_naming_it(argv: list[str], flag: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", *argv])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
