"""Adding and removing a workload's network: addresses, interface and endpoint together.

Owns: `add_workload` (assign addresses through IPAM, create the veth and configure it,
write the workload endpoint), `remove_workload` (the reverse), and `add_address` /
`remove_address` for a workload that already exists. Each is all-or-nothing: the steps
done so far are undone (addresses released, veth deleted) when a later one fails.
Used by `calicoctl container` and meant for the Docker and CNI plugins too.

The IPAM handle of a workload's addresses is its workload id (what `ipam check --fix`
uses when it re-records a missing allocation); the attributes name the endpoint.

Leaves to others: netlink (`libcalico.workload`), allocation (`libcalico.ipam`), the
endpoint record (`libcalico.client`), finding the namespace of a container (callers).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from libcalico import workload as wl
from libcalico.errors import AlreadyExists, NotFound, ValidationError
from libcalico.model import WorkloadEndpoint, WorkloadEndpointId

if TYPE_CHECKING:
    from libcalico.client import CalicoClient
    from libcalico.ipam import IPAMClient

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workload:
    """Where a workload is: its endpoint identity parts and its network namespace."""

    hostname: str
    orchestrator: str
    workload: str
    netns: str  # a name under /run/netns or an absolute path


class _Undo:
    """A stack of compensating actions, run in reverse when something fails."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, action: Callable[[], Any]) -> None:
        self.actions.append((what, action))

    def run(self) -> None:
        for what, action in reversed(self.actions):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                _log.error("while undoing (%s): %s", what, exc)
        self.actions.clear()


def assign_address(client: CalicoClient, ipam: IPAMClient, request: str, handle: str,
                   attrs: dict[str, str], host: str) -> str:
    """One address for `request`: `ipv4`/`ipv6` (auto), a pool CIDR (auto from that
    pool, which must exist exactly), or an address literal."""
    if request in ("ipv4", "ipv6"):
        v4 = request == "ipv4"
        got = ipam.auto_assign(int(v4), int(not v4), handle, attrs, host).raise_if_short()
        return (got.ipv4s or got.ipv6s)[0]
    if "/" in request:
        try:
            net = ipaddress.ip_network(request, strict=True)
        except ValueError:
            raise ValidationError("IP", request, "not an address, ipv4, ipv6 or a pool CIDR") \
                from None
        if client.get_pool(str(net)) is None:
            raise ValidationError("IP", request, "is not the CIDR of an IP pool")
        got = ipam.auto_assign(int(net.version == 4), int(net.version == 6), handle, attrs,
                               host, pools=[str(net)]).raise_if_short()
        return (got.ipv4s or got.ipv6s)[0]
    try:
        addr = ipaddress.ip_address(request)
    except ValueError:
        raise ValidationError("IP", request, "not an address, ipv4, ipv6 or a pool CIDR") \
            from None
    return ipam.assign_ip(str(addr), handle, attrs, host)


def _nets(ips: Sequence[str], version: int) -> tuple[str, ...]:
    plen = 32 if version == 4 else 128
    return tuple(f"{ip}/{plen}" for ip in ips if ipaddress.ip_address(ip).version == version)


def add_workload(client: CalicoClient, ipam: IPAMClient, where: Workload,
                 requests: Sequence[str], ifname: str = "eth1",
                 profiles: Sequence[str] = (), host_netns: str | None = None,
                 endpoint_id: str | None = None) -> WorkloadEndpoint:
    """Give the workload an interface with addresses and write its endpoint."""
    from libcalico.model.validate import validate_interface

    validate_interface("interface", ifname)
    WorkloadEndpointId(where.hostname, where.orchestrator, where.workload, "x")  # validates
    if client.list_workload_endpoints(where.hostname, where.orchestrator, where.workload):
        raise AlreadyExists(f"workload {where.workload} already has an endpoint")
    endpoint_id = endpoint_id or uuid.uuid4().hex
    host_ifname = wl.host_interface_name(endpoint_id)
    attrs = {"host": where.hostname, "orchestrator": where.orchestrator,
             "workload": where.workload, "endpoint_id": endpoint_id}
    undo = _Undo()
    try:
        ips: list[str] = []
        for request in requests:
            ip = assign_address(client, ipam, request, where.workload, attrs, where.hostname)
            ips.append(ip)
            undo.push(f"release {ip}", partial(ipam.release_ips, [ip]))
        iface = wl.create_interface(where.netns, host_ifname, ifname, ips, host_netns)
        undo.push(f"delete {host_ifname}", lambda: wl.delete_interface(host_ifname, host_netns))
        ep = WorkloadEndpoint(where.hostname, where.orchestrator, where.workload, endpoint_id,
                              name=host_ifname, mac=iface.mac, ipv4_nets=_nets(ips, 4),
                              ipv6_nets=_nets(ips, 6),
                              ipv4_gateway=wl.GATEWAY_V4 if _nets(ips, 4) else None,
                              ipv6_gateway=wl.GATEWAY_V6 if _nets(ips, 6) else None,
                              profile_ids=tuple(profiles))
        client.create_workload_endpoint(ep)
        return ep
    except BaseException:
        undo.run()
        raise


def remove_workload(client: CalicoClient, ipam: IPAMClient, hostname: str,
                    orchestrator: str, workload: str,
                    host_netns: str | None = None) -> list[WorkloadEndpoint]:
    """Delete the workload's interfaces, release its addresses, delete its endpoints."""
    eps = client.list_workload_endpoints(hostname, orchestrator, workload)
    if not eps:
        raise NotFound(f"workload {workload} has no endpoint on {hostname}")
    for ep in eps:
        wl.delete_interface(ep.name, host_netns)
        ips = [str(ipaddress.ip_interface(n).ip) for n in (*ep.ipv4_nets, *ep.ipv6_nets)]
        if ips:
            ipam.release_ips(ips)
        with contextlib.suppress(NotFound):
            client.delete_workload_endpoint(ep.ident)
    return eps


def add_address(client: CalicoClient, ipam: IPAMClient, ep: WorkloadEndpoint, netns: str,
                ifname: str, request: str, host_netns: str | None = None) -> str:
    """Assign one more address to an existing endpoint and configure it."""
    attrs = {"host": ep.hostname, "orchestrator": ep.orchestrator,
             "workload": ep.workload, "endpoint_id": ep.endpoint_id}
    ip = assign_address(client, ipam, request, ep.workload, attrs, ep.hostname)
    undo = _Undo()
    undo.push(f"release {ip}", lambda: ipam.release_ips([ip]))
    try:
        wl.add_addresses(netns, ifname, [ip], ep.name, host_netns)
        undo.push(f"remove {ip}", lambda: wl.remove_addresses(netns, ifname, [ip]))

        def change(cur: WorkloadEndpoint) -> WorkloadEndpoint:
            v4, v6 = _nets([ip], 4), _nets([ip], 6)
            return replace(cur, ipv4_nets=cur.ipv4_nets + v4, ipv6_nets=cur.ipv6_nets + v6,
                           ipv4_gateway=cur.ipv4_gateway or (wl.GATEWAY_V4 if v4 else None),
                           ipv6_gateway=cur.ipv6_gateway or (wl.GATEWAY_V6 if v6 else None))

        client.update_workload_endpoint(ep.ident, change)
        return ip
    except BaseException:
        undo.run()
        raise


def remove_address(client: CalicoClient, ipam: IPAMClient, ep: WorkloadEndpoint, netns: str,
                   ifname: str, ip: str) -> None:
    """Remove one address from an endpoint, its interface, and IPAM."""
    addr = ipaddress.ip_address(ip)
    net = f"{addr}/{32 if addr.version == 4 else 128}"
    if net not in (*ep.ipv4_nets, *ep.ipv6_nets):
        raise NotFound(f"endpoint {ep.endpoint_id} has no address {addr}")

    def change(cur: WorkloadEndpoint) -> WorkloadEndpoint:
        v4 = tuple(n for n in cur.ipv4_nets if n != net)
        v6 = tuple(n for n in cur.ipv6_nets if n != net)
        return replace(cur, ipv4_nets=v4, ipv6_nets=v6,
                       ipv4_gateway=cur.ipv4_gateway if v4 else None,
                       ipv6_gateway=cur.ipv6_gateway if v6 else None)

    client.update_workload_endpoint(ep.ident, change)
    wl.remove_addresses(netns, ifname, [str(addr)])
    ipam.release_ips([str(addr)])
