"""Netlink steps on a workload's veth pair, each usable on its own.

Owns the kernel side of a workload interface, in steps that every way in composes
differently (calicoctl container and the CNI plugin use them all; the Docker driver
creates the pair and leaves moving, renaming and addressing the peer to Docker):
- naming: `host_interface_name` (`cali` + the first 11 characters of the endpoint id,
  at most 15 characters), `temp_peer_name`, `netns_path`;
- `create_veth`: a veth pair with both ends in one namespace (the host's), host end up
  (the peer's MAC chosen by the caller or the kernel);
- `add_gateway_addresses`: the gateways as addresses of the host end, for runtimes that
  configure the workload side themselves (Docker: it sets the default route, nobody
  adds the workload's gateway neighbour entry);
- `move_into_namespace`: the peer into the workload's namespace, renamed, up;
- `set_mtu`;
- `configure_interface` (= `add_addresses` + `add_gateway_neighbours` +
  `add_gateway_routes`): /32 and /128 addresses (IPv6 without DAD), a permanent
  neighbour entry for each gateway pointing at the host end's MAC, and the default
  routes via the gateways (`workload.gateway`);
- `remove_addresses` (a version's gateway route and neighbour go with its last
  address), `delete_veth`, and the read-only `link_mac` / `interface_addresses` /
  `read_interface`;
- `create_workload_interface`: one new interface whole - the pair created with its
  peer born inside the workload's namespace under its final name (one request: moving
  a device between namespaces costs the kernel far more), MTU, both ends up, and the
  configuration above - deleting the pair again when any step fails.
Adding what is there already and removing what is gone are not errors, so a step can be
repeated after a failure. Errors: `AlreadyExists` (a name is taken), `NotFound` (an
interface or namespace is missing), `WorkloadError` (any other netlink failure); each
names the interface, address or namespace.

A namespace is given as a name under /run/netns or an absolute path (/proc/PID/ns/net);
None means this process's own. The messages go through the shared rtnetlink client
`rtnl` (standard library only: pyroute2's import alone cost ~0.3 s, more than a whole
CNI ADD may take), and each function opens one netlink socket per namespace it touches,
however many steps it makes.

`read_interface` reads back what the steps made (MAC, state, addresses, routes and
neighbour entries of one interface), for checks such as a CNI CHECK.

Leaves to others: which addresses (IPAM, `workload.addresses`), the endpoint record
(`workload.provision`), host-side routes, proxy ARP and policy (felix).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from libcalico.errors import AlreadyExists, CalicoError, NotFound
from rtnl.codec import (
    address_request,
    del_link_request,
    neighbour_request,
    route_request,
    set_link_request,
    veth_request,
)
from rtnl.consts import RT_TABLE_MAIN, RTPROT_BOOT, RTPROT_UNSPEC
from rtnl.netns import netns_path
from rtnl.sock import NetlinkSocket
from workload.gateway import gateway_route, ip_version

_log = logging.getLogger(__name__)

HOST_PREFIX = "cali"
_GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)


class WorkloadError(CalicoError):
    """A netlink operation on a workload interface failed."""


def host_interface_name(endpoint_id: str, prefix: str = HOST_PREFIX) -> str:
    """`cali` + the first 11 characters of the endpoint id (15 characters at most)."""
    if len(prefix) > 4:
        raise ValueError("interface prefix must be at most 4 characters")
    return f"{prefix}{endpoint_id[:11]}"


def temp_peer_name(host_ifname: str) -> str:
    """The peer's name while it is still in the host namespace: `tmp` + the last 11
    characters of the host end's name (unique as long as host names are)."""
    return f"tmp{host_ifname[-11:]}"


@dataclass(frozen=True)
class VethPair:
    host_ifname: str
    host_mac: str
    peer_ifname: str
    peer_mac: str


@dataclass(frozen=True)
class WorkloadInterface:
    host_ifname: str
    ifname: str
    mac: str  # the workload side's MAC (the endpoint's `mac`)
    host_mac: str


# --- netlink plumbing --------------------------------------------------------------------------


@contextmanager
def _socket(netns: str | None) -> Iterator[NetlinkSocket]:
    """A netlink socket in `netns` (None: this process's namespace)."""
    if netns is not None and not os.path.exists(netns_path(netns)):
        raise NotFound(f"network namespace {netns} does not exist")
    with _netlink(f"network namespace {netns}"):
        sock = NetlinkSocket(netns)
    try:
        yield sock
    finally:
        sock.close()


@contextmanager
def _netlink(what: str, ok: Collection[int] = ()) -> Iterator[None]:
    """Turn a netlink failure inside the block (`rtnl.codec.NetlinkError`, or another
    OSError such as a failed setns) into our errors, naming `what`; errnos in `ok` count
    as success (EEXIST when adding, ENOENT when deleting)."""
    try:
        yield
    except OSError as exc:
        code = exc.errno
        if code in ok:
            return
        if code == errno.EEXIST:
            raise AlreadyExists(f"{what}: already exists") from None
        if code in (errno.ENODEV, errno.ENOENT):
            raise NotFound(f"{what}: no such device") from None
        raise WorkloadError(f"{what}: {os.strerror(code) if code else exc}") from None


def _index(sock: NetlinkSocket, ifname: str) -> int | None:
    with _netlink(f"interface {ifname}"):
        link = sock.link(ifname)
    return None if link is None else link.ifindex


def _require(sock: NetlinkSocket, ifname: str, netns: str | None) -> int:
    index = _index(sock, ifname)
    if index is None:
        where = f" in {netns}" if netns is not None else ""
        raise NotFound(f"interface {ifname} does not exist{where}")
    return index


def _mac(sock: NetlinkSocket, index: int) -> str:
    with _netlink(f"interface {index}"):
        link = sock.link_by_index(index)
    if link is None or link.mac is None:
        raise NotFound(f"interface {index} has gone")
    return link.mac


def _global_addresses(sock: NetlinkSocket, index: int) -> list[str]:
    with _netlink(f"addresses of interface {index}"):
        return sorted(a.address for a in sock.dump_addresses()
                      if a.ifindex == index and a.scope == 0)


# --- the steps ---------------------------------------------------------------------------------


def _create_veth(sock: NetlinkSocket, host_ifname: str, peer_ifname: str,
                 netns: str | None, mtu: int | None, peer_mac: str | None = None) -> VethPair:
    with _netlink(f"interface {host_ifname}"):
        sock.request(veth_request(host_ifname, peer_ifname, mtu=mtu))
    try:
        index = _require(sock, host_ifname, netns)
        peer = _require(sock, peer_ifname, netns)
        with _netlink(f"interface {host_ifname}"):
            if peer_mac is not None:
                sock.request(set_link_request(peer, mac=peer_mac))
            sock.request(set_link_request(index, up=True))
        return VethPair(host_ifname, _mac(sock, index), peer_ifname, _mac(sock, peer))
    except BaseException:
        _undo_delete(sock, host_ifname)
        raise


def create_veth(host_ifname: str, peer_ifname: str, *, netns: str | None = None,
                mtu: int | None = None, peer_mac: str | None = None) -> VethPair:
    """A veth pair `host_ifname` <-> `peer_ifname`, both in `netns` (the host's; None:
    this process's), the host end up and the peer down (it is moved next: by
    `move_into_namespace`, or by Docker); the peer gets `peer_mac` if given (else the
    kernel's random one). `AlreadyExists` if a name is taken."""
    with _socket(netns) as sock:
        return _create_veth(sock, host_ifname, peer_ifname, netns, mtu, peer_mac)


def add_gateway_addresses(host_ifname: str, versions: Iterable[int], *,
                          netns: str | None = None) -> None:
    """Each version's gateway as an address of the host end itself (169.254.1.1/32 with
    scope host, fe80::1/128 without DAD), so that the host end answers ARP / neighbour
    solicitations for the gateway on its own, with no route or neighbour entry inside the
    workload and no route to the gateway on the host (proxy ARP needs one; hosts without
    a default route have none). For runtimes that configure the workload side themselves
    (Docker). Scope host: the host never picks 169.254.1.1 as a source address."""
    with _socket(netns) as sock:
        index = _require(sock, host_ifname, netns)
        for version in sorted(set(versions)):
            gw = gateway_route(version).gateway
            with _netlink(f"gateway address {gw} on {host_ifname}", ok=(errno.EEXIST,)):
                if version == 6:
                    sock.request(address_request(index, gw, 128, nodad=True))
                else:
                    sock.request(address_request(index, gw, 32, host_scope=True))


def _move(here: NetlinkSocket, inside: NetlinkSocket, ifname: str, target: str,
          new_ifname: str, netns: str | None) -> int:
    """Move, rename, bring up; the interface's index in `target`."""
    if _index(inside, new_ifname) is not None:
        raise AlreadyExists(f"interface {new_ifname} already exists in {target}")
    index = _require(here, ifname, netns)
    fd = os.open(netns_path(target), os.O_RDONLY)
    try:
        with _netlink(f"moving interface {ifname} to {target}"):
            here.request(set_link_request(index, netns_fd=fd))
    finally:
        os.close(fd)
    moved = _index(inside, ifname)
    if moved is None:
        raise WorkloadError(f"interface {ifname} vanished while moving to {target}")
    with _netlink(f"interface {new_ifname} in {target}"):
        # the kernel renames, then sets it up
        inside.request(set_link_request(moved, name=new_ifname, up=True))
    return moved


def move_into_namespace(ifname: str, target: str, new_ifname: str, *,
                        netns: str | None = None) -> str:
    """Move `ifname` from `netns` into the namespace `target`, rename it `new_ifname` and
    bring it up; returns its MAC. `AlreadyExists` if `target` has `new_ifname` already
    (checked before the move, so nothing changes then)."""
    with _socket(target) as inside, _socket(netns) as here:
        return _mac(inside, _move(here, inside, ifname, target, new_ifname, netns))


def set_mtu(ifname: str, mtu: int, *, netns: str | None = None) -> None:
    with _socket(netns) as sock:
        index = _require(sock, ifname, netns)
        with _netlink(f"MTU {mtu} on {ifname}"):
            sock.request(set_link_request(index, mtu=mtu))


def _add_addresses(sock: NetlinkSocket, index: int, ips: Iterable[str]) -> None:
    for ip in ips:
        v6 = ip_version(ip) == 6
        with _netlink(f"address {ip}", ok=(errno.EEXIST,)):
            sock.request(address_request(index, ip, 128 if v6 else 32, nodad=v6))


def _add_gateway_neighbours(sock: NetlinkSocket, index: int, versions: Iterable[int],
                            host_mac: str) -> None:
    for version in sorted(set(versions)):
        gw = gateway_route(version)
        with _netlink(f"neighbour entry for gateway {gw.gateway}"):
            sock.request(neighbour_request(gw.gateway, host_mac, index))


def _add_gateway_routes(sock: NetlinkSocket, index: int, versions: Iterable[int]) -> None:
    for version in sorted(set(versions)):
        gw = gateway_route(version)
        with _netlink(f"default route via {gw.gateway}"):
            sock.request(route_request(gw.default, proto=RTPROT_BOOT, oif=index,
                                       gateway=gw.gateway, onlink=gw.onlink))


def add_addresses(ifname: str, ips: Sequence[str], *, netns: str | None) -> None:
    """/32 and /128 addresses on `ifname` (IPv6 without duplicate address detection)."""
    with _socket(netns) as sock:
        _add_addresses(sock, _require(sock, ifname, netns), ips)


def add_gateway_neighbours(ifname: str, versions: Iterable[int], host_mac: str, *,
                           netns: str | None) -> None:
    """A permanent neighbour entry for each version's gateway: the host end's MAC."""
    with _socket(netns) as sock:
        _add_gateway_neighbours(sock, _require(sock, ifname, netns), versions, host_mac)


def add_gateway_routes(ifname: str, versions: Iterable[int], *, netns: str | None) -> None:
    """The default route of each version via its gateway, out of `ifname`."""
    with _socket(netns) as sock:
        _add_gateway_routes(sock, _require(sock, ifname, netns), versions)


def configure_interface(ifname: str, ips: Sequence[str], host_mac: str, *,
                        netns: str | None) -> None:
    """Addresses, gateway neighbours and default routes for `ips` on `ifname` (one
    socket); what is there already is left as it is."""
    with _socket(netns) as sock:
        _configure(sock, _require(sock, ifname, netns), ips, host_mac)


def _configure(sock: NetlinkSocket, index: int, ips: Sequence[str], host_mac: str) -> None:
    versions = {ip_version(ip) for ip in ips}
    _add_addresses(sock, index, ips)
    _add_gateway_neighbours(sock, index, versions, host_mac)
    _add_gateway_routes(sock, index, versions)


def remove_addresses(ifname: str, ips: Sequence[str], *, netns: str | None) -> list[str]:
    """Remove addresses from `ifname`; a version's default route and gateway neighbour go
    with its last address. Returns the addresses that were there. An address, an
    interface or a namespace that is gone already means there is nothing to remove."""
    if netns is not None and not os.path.exists(netns_path(netns)):
        return []
    with _socket(netns) as sock:
        index = _index(sock, ifname)
        if index is None:
            return []
        present = set(_global_addresses(sock, index))
        removed = []
        for ip in ips:
            if ip not in present:
                continue
            with _netlink(f"address {ip} on {ifname}", ok=_GONE):
                sock.request(address_request(index, ip, 32 if ip_version(ip) == 4 else 128,
                                             delete=True))
            removed.append(ip)
        left = {ip_version(a) for a in _global_addresses(sock, index)}
        for version in sorted({ip_version(ip) for ip in ips} - left):
            gw = gateway_route(version)
            with _netlink(f"default route via {gw.gateway}", ok=_GONE):
                sock.request(route_request(gw.default, proto=RTPROT_UNSPEC, oif=index,
                                           delete=True))
            with _netlink(f"neighbour entry for gateway {gw.gateway}", ok=_GONE):
                sock.request(neighbour_request(gw.gateway, None, index, delete=True))
        return removed


def _delete(sock: NetlinkSocket, host_ifname: str) -> bool:
    index = _index(sock, host_ifname)
    if index is None:
        return False
    with _netlink(f"interface {host_ifname}", ok=_GONE):
        sock.request(del_link_request(index))
    return True


def _undo_delete(sock: NetlinkSocket, host_ifname: str) -> None:
    """Delete a pair just created after a later step failed: the original error matters
    more, so a failure here is logged, not raised."""
    try:
        _delete(sock, host_ifname)
    except CalicoError as exc:
        _log.error("could not delete %s after a failed create: %s", host_ifname, exc)


def delete_veth(host_ifname: str, *, netns: str | None = None) -> bool:
    """Delete a veth pair by its host end (the peer goes with it); False if it did not
    exist."""
    with _socket(netns) as sock:
        return _delete(sock, host_ifname)


def link_mac(ifname: str, *, netns: str | None = None) -> str | None:
    """The interface's MAC, or None if there is no such interface."""
    with _socket(netns) as sock:
        index = _index(sock, ifname)
        return None if index is None else _mac(sock, index)


def interface_addresses(ifname: str, *, netns: str | None) -> list[str]:
    """Global addresses on the interface, sorted ([] if there is no such interface)."""
    with _socket(netns) as sock:
        index = _index(sock, ifname)
        return [] if index is None else _global_addresses(sock, index)


@dataclass(frozen=True)
class InterfaceState:
    """What one interface looks like: read back by `read_interface`."""

    ifname: str
    mac: str | None
    up: bool
    mtu: int
    addresses: tuple[str, ...]  # global ones, sorted
    routes: tuple[tuple[str, str | None], ...]  # (dst CIDR, gateway) of main-table routes
    neighbours: tuple[tuple[str, str | None, bool], ...]  # (ip, MAC, permanent)


def read_interface(ifname: str, *, netns: str | None) -> InterfaceState | None:
    """The interface `ifname` in `netns` as the kernel has it (None: no such interface;
    `NotFound` if the namespace is gone): its MAC, whether it is up, its MTU, global
    addresses, the main-table routes out of it and its neighbour entries."""
    with _socket(netns) as sock, _netlink(f"interface {ifname}"):
        link = sock.link(ifname)
        if link is None:
            return None
        addresses = tuple(sorted(a.address for a in sock.dump_addresses()
                                 if a.ifindex == link.ifindex and a.scope == 0))
        routes = tuple((r.dst, r.gateway)
                       for family in (socket.AF_INET, socket.AF_INET6)
                       for r in sock.dump_routes(family)
                       if r.table == RT_TABLE_MAIN and r.oif == link.ifindex)
        neighbours = tuple((n.dst, n.lladdr, n.permanent)
                           for n in sock.dump_neighbours() if n.ifindex == link.ifindex)
    return InterfaceState(ifname, link.mac, link.admin_up, link.mtu, addresses, routes,
                          neighbours)


def create_workload_interface(netns: str, host_ifname: str, ifname: str, ips: Sequence[str],
                              *, host_netns: str | None = None,
                              mtu: int | None = None) -> WorkloadInterface:
    """The whole interface of a new workload: a veth pair whose host end is created in
    `host_netns` (None: this process's namespace) and whose peer is created directly in
    `netns` as `ifname` (one netlink request; no move between namespaces), `mtu` on both
    ends (None: the kernel's default), both up, and `ips` configured with their gateways.
    `AlreadyExists` if `netns` has `ifname` or the host a `host_ifname` already. On any
    failure the pair is deleted again (the peer goes with it) and the error raised."""
    with _socket(netns) as inside, _socket(host_netns) as here:
        if _index(inside, ifname) is not None:
            raise AlreadyExists(f"interface {ifname} already exists in {netns}")
        fd = os.open(netns_path(netns), os.O_RDONLY)
        try:  # the peer is born inside the workload's namespace, with its final name
            with _netlink(f"interface {host_ifname}"):
                here.request(veth_request(host_ifname, ifname, mtu=mtu, peer_netns_fd=fd))
        finally:
            os.close(fd)
        try:
            host_index = _require(here, host_ifname, host_netns)
            index = _require(inside, ifname, netns)
            with _netlink(f"interface {host_ifname}"):
                here.request(set_link_request(host_index, up=True))
            with _netlink(f"interface {ifname} in {netns}"):
                inside.request(set_link_request(index, up=True))
            host_mac = _mac(here, host_index)
            _configure(inside, index, ips, host_mac)
            mac = _mac(inside, index)
        except BaseException:
            _undo_delete(here, host_ifname)
            raise
    return WorkloadInterface(host_ifname, ifname, mac, host_mac)
