"""Putting a workload on the network and taking it off: addresses, interface and
endpoint together, so that no failure leaves one without the others.

Owns the order of the steps and what happens when one fails:
- `add_workload` (and `add_address`): every input is checked first (interface name,
  MTU, identity, profiles, labels, address requests and their pools), then addresses
  are assigned (IPAM), the interface is created and configured (`workload.veth`) with
  the given MTU or, by default, the tunnel MTU when an address is in a pool with an
  encapsulation (`workload.mtu`), and the endpoint is written last, so felix never sees
  an endpoint whose interface is not ready. Addresses that another allocator assigned
  (`assigned`: a CNI IPAM plugin such as host-local) are configured and recorded the
  same way, but never released here: their allocator's owner releases them. A failure
  at any step undoes the steps before it (interface deleted, addresses released) and
  re-raises. A process killed part-way cannot undo: what it assigned stays recorded
  under the workload's handle (`calicoctl ipam check` reports it as a leak and `--fix`
  releases it), and a veth it created stays until its namespace goes (a CNI DEL removes
  both: its names are known).
- `remove_workload`: the endpoint is marked inactive first (felix withdraws its routes
  and drops its traffic; the record stays, as the marker a retry finds), then the
  interface is deleted, then the addresses IPAM still holds for the endpoint are
  released, then the endpoint is deleted. An address is released only once nothing
  routes to it.
- `remove_address`: the endpoint drops the address first (felix withdraws its route),
  then the interface, then IPAM releases it, last. A retry finds an address that the
  endpoint no longer lists through IPAM's record of it (handle and endpoint id).
Every removal step is idempotent (a missing interface, address or allocation is done
already), so repeating a removal after a failure at any step finishes it: the address
released, the interface without it, the endpoint without it.

A workload has one endpoint per host by default (`calicoctl container add` refuses a
second); a way in that attaches one container to several networks gives each
attachment its own endpoint id and host interface name (`exclusive=False`,
`host_ifname`) and removes them one at a time (`remove_workload(endpoint_id=...)`).

The workload's identity is `Workload` (host, orchestrator, workload id, namespace); its
IPAM handle is the workload id unless the caller names another (`Workload.handle`,
e.g. one per network when a container joins several). The attributes recorded with each
address name the endpoint (`workload.addresses.ipam_attributes`).

Used by `calicoctl container`; written for the Docker and CNI adapters too, which may
call the steps themselves (`workload.addresses`, `workload.veth`, `build_endpoint`) when
their protocol splits an operation across calls. `add_veth_endpoint` is the host side
alone, for a runtime that moves and configures the interface itself (the Docker
driver: IPAM assigns in one call, the endpoint is made in the next, Docker moves the
peer); `remove_workload(..., release=False)` leaves the addresses to such a protocol's
own release call.

Leaves to others: netlink (`workload.veth`), address requests and ownership
(`workload.addresses`), allocation (`libcalico.ipam`), the endpoint record
(`libcalico.client`), finding a container's namespace (the caller), whether profiles
exist (the caller: calicoctl refuses unknown ones, a plugin may create them).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from libcalico.errors import AlreadyExists, CalicoError, NotFound, ValidationError
from libcalico.model import WorkloadEndpoint, WorkloadEndpointId
from libcalico.model.validate import (
    canonical_address,
    validate_interface,
    validate_labels,
    validate_name,
)
from workload import addresses, veth
from workload.gateway import gateway_for, host_net, host_nets, ip_version
from workload.mtu import workload_mtu

if TYPE_CHECKING:
    from libcalico.client import CalicoClient
    from libcalico.ipam import IPAMClient

_log = logging.getLogger(__name__)

MTU_MIN, MTU_MAX = 68, 65535


@dataclass(frozen=True)
class Workload:
    """Who a workload is, and where its network namespace is."""

    hostname: str
    orchestrator: str
    workload: str
    netns: str  # a name under /run/netns or an absolute path (/proc/PID/ns/net)
    handle: str | None = None  # the IPAM handle of its addresses (default: the workload id)

    @property
    def ipam_handle(self) -> str:
        return self.handle or self.workload


@dataclass(frozen=True)
class Removed:
    """What `remove_workload` took away."""

    endpoints: tuple[WorkloadEndpoint, ...]
    released: tuple[str, ...]


class _Undo:
    """Compensating actions, run in reverse order when a later step fails."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, action: Callable[[], Any]) -> None:
        self.actions.append((what, action))

    def run(self) -> None:
        for what, action in reversed(self.actions):
            try:
                action()
            except CalicoError as exc:  # keep undoing the rest; the first error is raised
                _log.error("while undoing (%s): %s", what, exc)
        self.actions.clear()


def validate_mtu(mtu: int | None) -> int | None:
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                            or not MTU_MIN <= mtu <= MTU_MAX):
        raise ValidationError("mtu", mtu, f"must be an integer from {MTU_MIN} to {MTU_MAX}")
    return mtu


def build_endpoint(where: Workload, endpoint_id: str, host_ifname: str, mac: str | None,
                   ips: Sequence[str], profiles: Sequence[str] = (),
                   labels: Mapping[str, str] | None = None) -> WorkloadEndpoint:
    """The endpoint record of an interface with `ips`, gateways set per version (pure)."""
    v4, v6 = host_nets(ips, 4), host_nets(ips, 6)
    return WorkloadEndpoint(where.hostname, where.orchestrator, where.workload, endpoint_id,
                            name=host_ifname, mac=mac, ipv4_nets=v4, ipv6_nets=v6,
                            ipv4_gateway=gateway_for(4) if v4 else None,
                            ipv6_gateway=gateway_for(6) if v6 else None,
                            profile_ids=tuple(profiles), labels=dict(labels or {}))


def add_workload(client: CalicoClient, ipam: IPAMClient, where: Workload,
                 requests: Sequence[str | addresses.AddressRequest], *, ifname: str = "eth1",
                 mtu: int | None = None, profiles: Sequence[str] = (),
                 labels: Mapping[str, str] | None = None, endpoint_id: str | None = None,
                 host_netns: str | None = None, host_ifname: str | None = None,
                 assigned: Sequence[str] = (), exclusive: bool = True,
                 request_field: str = "IP") -> WorkloadEndpoint:
    """Give the workload an interface `ifname` in its namespace with one address per
    request (plus the `assigned` ones), and write its endpoint; all of it, or (on
    failure) none of it.

    `host_netns` is where the host end of the veth goes (None: this process's namespace);
    `host_ifname` names that end (default: `cali` + the endpoint id's first 11
    characters). `assigned`: addresses another allocator gave the workload, configured
    and recorded but never released here. `request_field` names the requests in errors.
    `AlreadyExists` if the workload has an endpoint on this host already (with
    `exclusive=False`: an endpoint with this endpoint id)."""
    validate_interface("interface", ifname)
    validate_mtu(mtu)
    endpoint_id = endpoint_id or os.urandom(16).hex()
    WorkloadEndpointId(where.hostname, where.orchestrator, where.workload, endpoint_id)
    host_ifname = validate_interface("host interface",
                                     host_ifname or veth.host_interface_name(endpoint_id))
    for profile in profiles:
        validate_name("profile", profile)
    validate_labels("labels", labels or {})
    given = [canonical_address("assigned address", ip) for ip in assigned]
    checked = addresses.check_requests(client, requests, request_field)
    existing = client.list_workload_endpoints(where.hostname, where.orchestrator,
                                              where.workload)
    if exclusive and existing:
        raise AlreadyExists(f"workload {where.workload} already has an endpoint on "
                            f"{where.hostname}")
    if any(ep.endpoint_id == endpoint_id for ep in existing):
        raise AlreadyExists(f"workload {where.workload} already has endpoint {endpoint_id} "
                            f"on {where.hostname}")
    attrs = addresses.ipam_attributes(where.hostname, where.orchestrator, where.workload,
                                      endpoint_id)
    undo = _Undo()
    try:
        ips: list[str] = list(given)
        for request in checked:
            ip = addresses.assign_address(ipam, request, where.ipam_handle, attrs,
                                          where.hostname)
            ips.append(ip)
            undo.push(f"release {ip}", partial(ipam.release_ips, [ip]))
        if mtu is None:
            mtu = workload_mtu(client, where.hostname, ips)
        iface = veth.create_workload_interface(where.netns, host_ifname, ifname, ips,
                                               host_netns=host_netns, mtu=mtu)
        undo.push(f"delete {host_ifname}",
                  lambda: veth.delete_veth(host_ifname, netns=host_netns))
        ep = build_endpoint(where, endpoint_id, host_ifname, iface.mac, ips, profiles, labels)
        client.create_workload_endpoint(ep)
        return ep
    except BaseException:
        undo.run()
        raise


def add_veth_endpoint(client: CalicoClient, where: Workload, endpoint_id: str,
                      ips: Sequence[str], *, mac: str | None = None, mtu: int | None = None,
                      profiles: Sequence[str] = (), labels: Mapping[str, str] | None = None,
                      host_netns: str | None = None) -> tuple[WorkloadEndpoint, veth.VethPair]:
    """The host side of a workload whose runtime moves, renames and addresses the
    interface itself (Docker): a veth pair in `host_netns` (None: this process's) - the
    host end `host_interface_name(endpoint_id)` up, with the gateways of `ips`' versions
    as its own addresses (`veth.add_gateway_addresses`), the peer `tmp...` left down for
    the runtime, with `mac` (None: the kernel's random MAC) - and the endpoint for `ips`
    (assigned by the caller), written last. On failure the pair is deleted again.
    Returns the endpoint and the pair. `AlreadyExists` if the endpoint or an interface
    name exists."""
    validate_mtu(mtu)
    WorkloadEndpointId(where.hostname, where.orchestrator, where.workload, endpoint_id)
    for profile in profiles:
        validate_name("profile", profile)
    validate_labels("labels", labels or {})
    addrs = [canonical_address("IP", ip) for ip in ips]
    host_ifname = veth.host_interface_name(endpoint_id)
    pair = veth.create_veth(host_ifname, veth.temp_peer_name(host_ifname), netns=host_netns,
                            mtu=mtu, peer_mac=mac)
    undo = _Undo()
    undo.push(f"delete {host_ifname}", lambda: veth.delete_veth(host_ifname, netns=host_netns))
    try:
        veth.add_gateway_addresses(host_ifname, {ip_version(ip) for ip in addrs},
                                   netns=host_netns)
        ep = build_endpoint(where, endpoint_id, host_ifname, pair.peer_mac, addrs, profiles,
                            labels)
        client.create_workload_endpoint(ep)
        return ep, pair
    except BaseException:
        undo.run()
        raise


def remove_workload(client: CalicoClient, ipam: IPAMClient, hostname: str,
                    orchestrator: str, workload: str, *, handle: str | None = None,
                    host_netns: str | None = None, missing_ok: bool = False,
                    endpoint_id: str | None = None, release: bool = True) -> Removed:
    """Take the workload's endpoints on `hostname` (only `endpoint_id`, if given) off the
    network: mark them inactive, delete their interfaces, release their addresses,
    delete them (see the module docstring for why in this order). Repeating it after a
    failure finishes the job.

    `NotFound` when the workload has no such endpoint here, unless `missing_ok` (a CNI
    DEL). `release=False` leaves the addresses to the caller: a way in whose protocol
    frees them in a call of its own (Docker's IPAM driver, ReleaseAddress after
    DeleteEndpoint), so that an address is released exactly once."""
    handle = handle or workload
    eps = client.list_workload_endpoints(hostname, orchestrator, workload, endpoint_id)
    if not eps:
        if missing_ok:
            return Removed((), ())
        which = f"endpoint {endpoint_id}" if endpoint_id else "endpoint"
        raise NotFound(f"workload {workload} has no {which} on {hostname}")
    for ep in eps:
        if ep.state != "inactive":
            try:
                client.update_workload_endpoint(ep.ident,
                                                lambda cur: replace(cur, state="inactive"))
            except NotFound:
                continue  # removed meanwhile
    for ep in eps:
        veth.delete_veth(ep.name, netns=host_netns)
    released: list[str] = []
    for ep in eps if release else ():
        listed = [net.split("/")[0] for net in (*ep.ipv4_nets, *ep.ipv6_nets)]
        released += addresses.release_owned(ipam, listed, handle, ep.endpoint_id)
    for ep in eps:
        with contextlib.suppress(NotFound):  # removed meanwhile
            client.delete_workload_endpoint(ep.ident)
    return Removed(tuple(eps), tuple(released))


def add_address(client: CalicoClient, ipam: IPAMClient, ep: WorkloadEndpoint, netns: str,
                ifname: str, request: str, *, handle: str | None = None,
                host_netns: str | None = None) -> str:
    """Assign one more address to an existing endpoint, configure it on `ifname` in
    `netns`, and add it to the endpoint; all of it or (on failure) none of it."""
    (checked,) = addresses.check_requests(client, [request])
    host_mac = veth.link_mac(ep.name, netns=host_netns)
    if host_mac is None:
        raise NotFound(f"interface {ep.name} of endpoint {ep.endpoint_id} does not exist")
    attrs = addresses.ipam_attributes(ep.hostname, ep.orchestrator, ep.workload,
                                      ep.endpoint_id)
    ip = addresses.assign_address(ipam, checked, handle or ep.workload, attrs, ep.hostname)
    undo = _Undo()
    undo.push(f"release {ip}", lambda: ipam.release_ips([ip]))
    try:
        veth.configure_interface(ifname, [ip], host_mac, netns=netns)
        undo.push(f"remove {ip}", lambda: veth.remove_addresses(ifname, [ip], netns=netns))
        version, net = ip_version(ip), host_net(ip)

        def change(cur: WorkloadEndpoint) -> WorkloadEndpoint:
            if version == 4:
                return replace(cur, ipv4_nets=(*cur.ipv4_nets, net),
                               ipv4_gateway=cur.ipv4_gateway or gateway_for(4))
            return replace(cur, ipv6_nets=(*cur.ipv6_nets, net),
                           ipv6_gateway=cur.ipv6_gateway or gateway_for(6))

        client.update_workload_endpoint(ep.ident, change)
        return ip
    except BaseException:
        undo.run()
        raise


def remove_address(client: CalicoClient, ipam: IPAMClient, ep: WorkloadEndpoint, netns: str,
                   ifname: str, ip: str, *, handle: str | None = None) -> None:
    """Remove one address: from the endpoint, then from `ifname` in `netns`, then from
    IPAM (see the module docstring). Repeating it after a failure at any step finishes
    the job; `NotFound` when neither the endpoint nor IPAM has the address for it."""
    addr = canonical_address("IP", ip)
    net = host_net(addr)
    handle = handle or ep.workload
    listed = net in (*ep.ipv4_nets, *ep.ipv6_nets)
    if not listed and not addresses.owned_by(ipam, addr, handle, ep.endpoint_id):
        raise NotFound(f"endpoint {ep.endpoint_id} has no address {addr}")

    def change(cur: WorkloadEndpoint) -> WorkloadEndpoint:
        v4 = tuple(n for n in cur.ipv4_nets if n != net)
        v6 = tuple(n for n in cur.ipv6_nets if n != net)
        return replace(cur, ipv4_nets=v4, ipv6_nets=v6,
                       ipv4_gateway=cur.ipv4_gateway if v4 else None,
                       ipv6_gateway=cur.ipv6_gateway if v6 else None)

    if listed:
        client.update_workload_endpoint(ep.ident, change)
    veth.remove_addresses(ifname, [addr], netns=netns)
    addresses.release_owned(ipam, [addr], handle, ep.endpoint_id)
