"""The `--gateway-*` flags of `pylb run` (pylb as a Gateway API controller)."""

from __future__ import annotations

import argparse
import ipaddress

from pylb.config import GatewayApi


def _addresses(value: str) -> tuple[str, ...]:
    out = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not an IP address") from None
    return tuple(out)


def _port_map(value: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in value.split(","):
        if not part.strip():
            continue
        listener, sep, bound = part.partition("=")
        try:
            a, b = int(listener), int(bound)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected LISTENER_PORT=BOUND_PORT") from None
        if not sep or not (1 <= a <= 65535 and 1 <= b <= 65535):
            raise argparse.ArgumentTypeError(f"{part!r}: expected LISTENER_PORT=BOUND_PORT")
        out.append((a, b))
    return tuple(out)


DEFAULT_CONTROLLER = GatewayApi().controller_name


def add_flags(run: argparse.ArgumentParser) -> None:
    g = run.add_argument_group("gateway api")
    g.add_argument("--gateway-api", action="store_true",
                   help="act as a Gateway API controller: serve the Gateways (and their "
                        "HTTPRoutes) of GatewayClasses naming --gateway-controller-name")
    g.add_argument("--gateway-controller-name", default=DEFAULT_CONTROLLER,
                   metavar="NAME",
                   help=f"GatewayClass spec.controllerName pylb handles "
                        f"({DEFAULT_CONTROLLER})")
    g.add_argument("--gateway-address-pool", type=_addresses, default=(), metavar="IP,...",
                   help="addresses given in turn to Gateways without spec.addresses (else "
                        "they take --bind)")
    g.add_argument("--gateway-port-map", type=_port_map, default=(), metavar="P=Q,...",
                   help="bind listener port P at port Q instead, e.g. 80=8080 when pylb "
                        "cannot bind low ports and a NAT or Service maps them")


def from_args(ns: argparse.Namespace) -> GatewayApi:
    return GatewayApi(enabled=ns.gateway_api, controller_name=ns.gateway_controller_name,
                      address_pool=ns.gateway_address_pool, port_map=ns.gateway_port_map)
