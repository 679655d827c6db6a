"""How a workload reaches the network: the link-local gateway scheme, as pure values.

Owns: the gateways every workload uses (169.254.1.1 for IPv4, fe80::1 for IPv6: no
address of any pool, so the same on every host), the host routes a workload's addresses
become (/32 and /128), and `gateway_routes(ips)`: per IP version present, the default
route via that version's gateway (IPv4's marked onlink, since 169.254.1.1 is on no
subnet of the workload) and the connected host route to the gateway itself. The host
side answers for the gateway: felix turns on proxy ARP / NDP on the host end of the
veth, and the workload gets a permanent neighbour entry for the gateway pointing at
that end's MAC (a simulated host without a default route would never answer ARP).

The Docker driver answers Join with `Gateway` and `StaticRoutes` from these values; the
CNI plugin puts them in its result's `routes`; `workload.veth` programs them.

Leaves to others: programming them (`workload.veth`), host-side routes and proxy ARP
(felix). No I/O here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::1"
_GATEWAYS = {4: GATEWAY_V4, 6: GATEWAY_V6}
_DEFAULTS = {4: "0.0.0.0/0", 6: "::/0"}
_HOST_PLEN = {4: 32, 6: 128}


def ip_version(ip: str) -> int:
    """4 or 6 for an address (ValueError if it is none)."""
    return ipaddress.ip_address(ip).version


def host_net(ip: str) -> str:
    """The address as the host route it becomes: `ip/32` or `ip/128` (canonical)."""
    addr = ipaddress.ip_address(ip)
    return f"{addr}/{_HOST_PLEN[addr.version]}"


def host_nets(ips: Iterable[str], version: int) -> tuple[str, ...]:
    """The host routes of the addresses of one version, in the order given."""
    return tuple(host_net(ip) for ip in ips if ip_version(ip) == version)


def gateway_for(version: int) -> str:
    return _GATEWAYS[version]


@dataclass(frozen=True)
class GatewayRoute:
    """A workload's routes for one IP version.

    `default` goes via `gateway`; `gateway_net` is the connected (scope link) route to the
    gateway itself, which a runtime that cannot set onlink routes (Docker's StaticRoutes
    with RouteType 1) installs before the default route."""

    version: int
    gateway: str
    default: str  # "0.0.0.0/0" or "::/0"
    gateway_net: str  # "169.254.1.1/32" or "fe80::1/128"
    onlink: bool  # IPv4: the gateway is on no subnet of the workload's


def gateway_route(version: int) -> GatewayRoute:
    gateway = _GATEWAYS[version]
    return GatewayRoute(version, gateway, _DEFAULTS[version], host_net(gateway),
                        onlink=version == 4)


def gateway_routes(ips: Iterable[str]) -> list[GatewayRoute]:
    """One GatewayRoute per IP version the addresses have, IPv4 first."""
    return [gateway_route(v) for v in sorted({ip_version(ip) for ip in ips})]
