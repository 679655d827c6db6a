"""A workload's addresses: requests checked up front, assigned through IPAM, and released
only while IPAM still records them as the workload's.

Owns:
- the request grammar every way in shares: `ipv4` / `ipv6` (auto-assign from any usable
  pool of that version, the host's own blocks first), a pool CIDR (auto-assign from
  exactly that pool, which must exist), or an address literal (that address, which
  must be in a pool); `auto_request` for auto-assignment from any of several pools (a
  CNI config's `ipv4_pools`); `parse_request` (pure) and `check_requests` (every
  request parsed, every named pool looked up and every address's pool found before
  anything is assigned, so bad input changes nothing);
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
    """One checked request: auto-assign (from `pool`, from any of `pools`, or from any
    pool) or exactly `address`."""

    text: str
    version: int
    pool: str | None = None
    address: str | None = None
    pools: tuple[str, ...] = ()

    @property
    def allowed_pools(self) -> list[str] | None:
        """The pools auto-assignment may use (None: any usable pool of the version)."""
        if self.pool is not None:
            return [self.pool]
        return list(self.pools) or None


def auto_request(version: int, pools: Sequence[str] = (), field: str = "pools"
                 ) -> AddressRequest:
    """Auto-assign one address of `version` from any of `pools` (none: any pool); each
    pool must be a CIDR of that version (ValidationError naming `field` otherwise)."""
    checked = []
    for cidr in pools:
        try:
            net = ipaddress.ip_network(cidr, strict=True) if isinstance(cidr, str) else None
        except ValueError:
            net = None
        if net is None or net.version != version:
            raise ValidationError(field, cidr, f"not an IPv{version} pool CIDR")
        checked.append(str(net))
    return AddressRequest(f"ipv{version}", version, pools=tuple(checked))


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


def check_requests(client: CalicoClient, requests: Sequence[str | AddressRequest],
                   field: str = "IP") -> list[AddressRequest]:
    """Parse every request (text, or an `AddressRequest` already made), check that every
    named pool exists and that every address is in a pool, before any is used."""
    checked = [r if isinstance(r, AddressRequest) else parse_request(r, field)
               for r in requests]
    pools = None
    for request in checked:
        for cidr in ([request.pool] if request.pool else list(request.pools)):
            if client.get_pool(cidr) is None:
                raise ValidationError(field, cidr if request.pools else request.text,
                                      "is not the CIDR of an IP pool")
        if request.address is not None:
            if pools is None:
                pools = [ipaddress.ip_network(p.cidr) for p in client.list_pools()]
            addr = ipaddress.ip_address(request.address)
            if not any(addr in net for net in pools):
                raise ValidationError(field, request.text, "is in no IP pool")
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
                           pools=request.allowed_pools).raise_if_short()
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
