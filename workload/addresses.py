"""A workload's addresses: requests checked up front, assigned through IPAM, and released
only while IPAM still records them as the workload's.

Owns:
- the request grammar every way in shares: `ipv4` / `ipv6` (auto-assign from any usable
  pool of that version, the host's own blocks first), a pool CIDR (auto-assign from
  exactly that pool, which must exist), or an address literal (that address);
  `parse_request` (pure) and `check_requests` (every request parsed and every named
  pool looked up before anything is assigned, so bad input changes nothing);
- `assign_address`: one address for one checked request;
- what IPAM records with each address: the handle (the workload id unless a way in
  chooses another, e.g. one per network) and `ipam_attributes` (host, orchestrator,
  workload, endpoint id);
- ownership: `owned_by` / `release_owned`. An address is an endpoint's while IPAM holds
  it under the endpoint's handle with the endpoint's id (or with no endpoint id: an
  allocation that `ipam check --fix` re-recorded for the workload). A removal that is
  retried therefore never frees an address that has since gone to another workload.

Leaves to others: allocation itself (`libcalico.ipam`), interfaces (`workload.veth`),
the endpoint record and the order of steps (`workload.provision`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from libcalico.errors import ValidationError

if TYPE_CHECKING:
    from libcalico.client import CalicoClient
    from libcalico.ipam import IPAMClient

AUTO = ("ipv4", "ipv6")
_GRAMMAR = "not an address, ipv4, ipv6 or a pool CIDR"


@dataclass(frozen=True)
class AddressRequest:
    """One checked request: auto-assign (from `pool`, or any pool) or exactly `address`."""

    text: str
    version: int
    pool: str | None = None
    address: str | None = None


def parse_request(text: str, field: str = "IP") -> AddressRequest:
    """`ipv4`, `ipv6`, a CIDR (strict: no host bits) or an address; ValidationError
    naming `field` and the text otherwise."""
    if text in AUTO:
        return AddressRequest(text, 4 if text == "ipv4" else 6)
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise ValidationError(field, text, _GRAMMAR) from None
        return AddressRequest(text, net.version, pool=str(net))
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValidationError(field, text, _GRAMMAR) from None
    return AddressRequest(text, addr.version, address=str(addr))


def check_requests(client: CalicoClient, requests: Sequence[str],
                   field: str = "IP") -> list[AddressRequest]:
    """Parse every request and check that every named pool exists, before any is used."""
    checked = [parse_request(r, field) for r in requests]
    for request in checked:
        if request.pool is not None and client.get_pool(request.pool) is None:
            raise ValidationError(field, request.text, "is not the CIDR of an IP pool")
    return checked


def ipam_attributes(hostname: str, orchestrator: str, workload: str,
                    endpoint_id: str) -> dict[str, str]:
    """What IPAM records with each of an endpoint's addresses."""
    return {"host": hostname, "orchestrator": orchestrator, "workload": workload,
            "endpoint_id": endpoint_id}


def assign_address(ipam: IPAMClient, request: AddressRequest, handle: str,
                   attributes: dict[str, str], host: str) -> str:
    """One address for a checked request (`PoolsExhausted`, `AddressInUse` or
    `ValidationError` from IPAM when it cannot be had)."""
    if request.address is not None:
        return ipam.assign_ip(request.address, handle, attributes, host)
    v4 = request.version == 4
    got = ipam.auto_assign(int(v4), int(not v4), handle, attributes, host,
                           pools=[request.pool] if request.pool else None).raise_if_short()
    return (got.ipv4s or got.ipv6s)[0]


def owned_by(ipam: IPAMClient, ip: str, handle: str, endpoint_id: str) -> bool:
    """Whether IPAM holds `ip` for this endpoint (see the module docstring)."""
    assignment = ipam.get_assignment_attributes(ip)
    if assignment is None or assignment.handle_id != handle:
        return False
    recorded = (assignment.attributes or {}).get("endpoint_id")
    return recorded is None or recorded == endpoint_id


def release_owned(ipam: IPAMClient, ips: Iterable[str], handle: str,
                  endpoint_id: str) -> list[str]:
    """Release those of `ips` that IPAM still holds for this endpoint; returns them.
    Addresses released already, or now another workload's, are left alone."""
    mine = [ip for ip in dict.fromkeys(ips) if owned_by(ipam, ip, handle, endpoint_id)]
    if mine:
        ipam.release_ips(mine)
    return mine
