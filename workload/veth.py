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
  address), `delete_veth`, and the read-only `link_mac` / `interface_addresses`;
- `create_workload_interface`: all of the above for one new interface, deleting the
  pair again when any step fails.
Adding what is there already and removing what is gone are not errors, so a step can be
repeated after a failure. Errors: `AlreadyExists` (a name is taken), `NotFound` (an
interface or namespace is missing), `WorkloadError` (any other netlink failure); each
names the interface, address or namespace.

A namespace is given as a name under /run/netns or an absolute path (/proc/PID/ns/net);
None means this process's own. pyroute2 is imported only inside these functions (it
costs ~0.3 s, which command-line start-up must not pay), and each function opens one
netlink socket per namespace it touches, however many steps it makes (a socket in
another namespace costs ~20 ms to open).

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
from typing import Any

from libcalico.errors import AlreadyExists, CalicoError, NotFound
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


def netns_path(netns: str) -> str:
    """`/run/netns/x` for a bare name; absolute paths (e.g. /proc/PID/ns/net) as given."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


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
def _socket(netns: str | None) -> Iterator[Any]:
    """An IPRoute socket in `netns` (None: this process's namespace)."""
    from pyroute2 import IPRoute

    if netns is not None and not os.path.exists(netns_path(netns)):
        raise NotFound(f"network namespace {netns} does not exist")
    with _netlink(f"network namespace {netns}"):
        ipr = IPRoute() if netns is None else IPRoute(netns=netns_path(netns))
    try:
        yield ipr
    finally:
        ipr.close()


@contextmanager
def _netlink(what: str, ok: Collection[int] = ()) -> Iterator[None]:
    """Turn a netlink failure inside the block into our errors, naming `what`; errnos in
    `ok` count as success (EEXIST when adding, ENOENT when deleting)."""
    from pyroute2 import NetlinkError

    try:
        yield
    except (NetlinkError, OSError) as exc:
        code = exc.code if isinstance(exc, NetlinkError) else exc.errno
        if code in ok:
            return
        if code == errno.EEXIST:
            raise AlreadyExists(f"{what}: already exists") from None
        if code in (errno.ENODEV, errno.ENOENT):
            raise NotFound(f"{what}: no such device") from None
        raise WorkloadError(f"{what}: {os.strerror(code) if code else exc}") from None


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _require(ipr: Any, ifname: str, netns: str | None) -> int:
    index = _index(ipr, ifname)
    if index is None:
        where = f" in {netns}" if netns is not None else ""
        raise NotFound(f"interface {ifname} does not exist{where}")
    return index


def _mac(ipr: Any, index: int) -> str:
    return str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _global_addresses(ipr: Any, index: int) -> list[str]:
    return sorted(str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index)
                  if a.get("scope", 0) == 0)


# --- the steps ---------------------------------------------------------------------------------


def _create_veth(ipr: Any, host_ifname: str, peer_ifname: str, netns: str | None,
                 mtu: int | None, peer_mac: str | None = None) -> VethPair:
    with _netlink(f"interface {host_ifname}"):
        ipr.link("add", ifname=host_ifname, kind="veth", peer=peer_ifname)
    try:
        index = _require(ipr, host_ifname, netns)
        peer = _require(ipr, peer_ifname, netns)
        with _netlink(f"interface {host_ifname}"):
            if mtu is not None:
                ipr.link("set", index=index, mtu=mtu)
                ipr.link("set", index=peer, mtu=mtu)
            if peer_mac is not None:
                ipr.link("set", index=peer, address=peer_mac)
            ipr.link("set", index=index, state="up")
        return VethPair(host_ifname, _mac(ipr, index), peer_ifname, _mac(ipr, peer))
    except BaseException:
        _undo_delete(ipr, host_ifname)
        raise


def create_veth(host_ifname: str, peer_ifname: str, *, netns: str | None = None,
                mtu: int | None = None, peer_mac: str | None = None) -> VethPair:
    """A veth pair `host_ifname` <-> `peer_ifname`, both in `netns` (the host's; None:
    this process's), the host end up and the peer down (it is moved next: by
    `move_into_namespace`, or by Docker); the peer gets `peer_mac` if given (else the
    kernel's random one). `AlreadyExists` if a name is taken."""
    with _socket(netns) as ipr:
        return _create_veth(ipr, host_ifname, peer_ifname, netns, mtu, peer_mac)


def add_gateway_addresses(host_ifname: str, versions: Iterable[int], *,
                          netns: str | None = None) -> None:
    """Each version's gateway as an address of the host end itself (169.254.1.1/32 with
    scope host, fe80::1/128 without DAD), so that the host end answers ARP / neighbour
    solicitations for the gateway on its own, with no route or neighbour entry inside the
    workload and no route to the gateway on the host (proxy ARP needs one; hosts without
    a default route have none). For runtimes that configure the workload side themselves
    (Docker). Scope host: the host never picks 169.254.1.1 as a source address."""
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

    with _socket(netns) as ipr:
        index = _require(ipr, host_ifname, netns)
        for version in sorted(set(versions)):
            gw = gateway_route(version).gateway
            with _netlink(f"gateway address {gw} on {host_ifname}", ok=(errno.EEXIST,)):
                if version == 6:
                    ipr.addr("add", index=index, address=gw, prefixlen=128, flags=IFA_F_NODAD)
                else:
                    ipr.addr("add", index=index, address=gw, prefixlen=32, scope=254)


def _move(here: Any, inside: Any, ifname: str, target: str, new_ifname: str,
          netns: str | None) -> int:
    """Move, rename, bring up; the interface's index in `target`."""
    if _index(inside, new_ifname) is not None:
        raise AlreadyExists(f"interface {new_ifname} already exists in {target}")
    index = _require(here, ifname, netns)
    fd = os.open(netns_path(target), os.O_RDONLY)
    try:
        with _netlink(f"moving interface {ifname} to {target}"):
            here.link("set", index=index, net_ns_fd=fd)
    finally:
        os.close(fd)
    moved = _index(inside, ifname)
    if moved is None:
        raise WorkloadError(f"interface {ifname} vanished while moving to {target}")
    with _netlink(f"interface {new_ifname} in {target}"):
        inside.link("set", index=moved, ifname=new_ifname)
        inside.link("set", index=moved, state="up")
    return moved


def move_into_namespace(ifname: str, target: str, new_ifname: str, *,
                        netns: str | None = None) -> str:
    """Move `ifname` from `netns` into the namespace `target`, rename it `new_ifname` and
    bring it up; returns its MAC. `AlreadyExists` if `target` has `new_ifname` already
    (checked before the move, so nothing changes then)."""
    with _socket(target) as inside, _socket(netns) as here:
        return _mac(inside, _move(here, inside, ifname, target, new_ifname, netns))


def set_mtu(ifname: str, mtu: int, *, netns: str | None = None) -> None:
    with _socket(netns) as ipr:
        index = _require(ipr, ifname, netns)
        with _netlink(f"MTU {mtu} on {ifname}"):
            ipr.link("set", index=index, mtu=mtu)


def _add_addresses(ipr: Any, index: int, ips: Iterable[str]) -> None:
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

    for ip in ips:
        with _netlink(f"address {ip}", ok=(errno.EEXIST,)):
            if ip_version(ip) == 6:
                ipr.addr("add", index=index, address=ip, prefixlen=128, flags=IFA_F_NODAD)
            else:
                ipr.addr("add", index=index, address=ip, prefixlen=32)


def _add_gateway_neighbours(ipr: Any, index: int, versions: Iterable[int],
                            host_mac: str) -> None:
    from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

    for version in sorted(set(versions)):
        gw = gateway_route(version)
        with _netlink(f"neighbour entry for gateway {gw.gateway}"):
            ipr.neigh("replace", dst=gw.gateway, lladdr=host_mac, ifindex=index,
                      state=NUD_PERMANENT, family=_family(version))


def _add_gateway_routes(ipr: Any, index: int, versions: Iterable[int]) -> None:
    from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK

    for version in sorted(set(versions)):
        gw = gateway_route(version)
        with _netlink(f"default route via {gw.gateway}"):
            ipr.route("replace", dst=gw.default, gateway=gw.gateway, oif=index,
                      flags=RTNH_F_ONLINK if gw.onlink else 0, family=_family(version))


def add_addresses(ifname: str, ips: Sequence[str], *, netns: str | None) -> None:
    """/32 and /128 addresses on `ifname` (IPv6 without duplicate address detection)."""
    with _socket(netns) as ipr:
        _add_addresses(ipr, _require(ipr, ifname, netns), ips)


def add_gateway_neighbours(ifname: str, versions: Iterable[int], host_mac: str, *,
                           netns: str | None) -> None:
    """A permanent neighbour entry for each version's gateway: the host end's MAC."""
    with _socket(netns) as ipr:
        _add_gateway_neighbours(ipr, _require(ipr, ifname, netns), versions, host_mac)


def add_gateway_routes(ifname: str, versions: Iterable[int], *, netns: str | None) -> None:
    """The default route of each version via its gateway, out of `ifname`."""
    with _socket(netns) as ipr:
        _add_gateway_routes(ipr, _require(ipr, ifname, netns), versions)


def configure_interface(ifname: str, ips: Sequence[str], host_mac: str, *,
                        netns: str | None) -> None:
    """Addresses, gateway neighbours and default routes for `ips` on `ifname` (one
    socket); what is there already is left as it is."""
    with _socket(netns) as ipr:
        _configure(ipr, _require(ipr, ifname, netns), ips, host_mac)


def _configure(ipr: Any, index: int, ips: Sequence[str], host_mac: str) -> None:
    versions = {ip_version(ip) for ip in ips}
    _add_addresses(ipr, index, ips)
    _add_gateway_neighbours(ipr, index, versions, host_mac)
    _add_gateway_routes(ipr, index, versions)


def remove_addresses(ifname: str, ips: Sequence[str], *, netns: str | None) -> list[str]:
    """Remove addresses from `ifname`; a version's default route and gateway neighbour go
    with its last address. Returns the addresses that were there. An address, an
    interface or a namespace that is gone already means there is nothing to remove."""
    if netns is not None and not os.path.exists(netns_path(netns)):
        return []
    with _socket(netns) as ipr:
        index = _index(ipr, ifname)
        if index is None:
            return []
        present = set(_global_addresses(ipr, index))
        removed = []
        for ip in ips:
            if ip not in present:
                continue
            with _netlink(f"address {ip} on {ifname}", ok=_GONE):
                ipr.addr("del", index=index, address=ip,
                         prefixlen=32 if ip_version(ip) == 4 else 128)
            removed.append(ip)
        left = {ip_version(a) for a in _global_addresses(ipr, index)}
        for version in sorted({ip_version(ip) for ip in ips} - left):
            gw = gateway_route(version)
            with _netlink(f"default route via {gw.gateway}", ok=_GONE):
                ipr.route("del", dst=gw.default, oif=index, family=_family(version))
            with _netlink(f"neighbour entry for gateway {gw.gateway}", ok=_GONE):
                ipr.neigh("del", dst=gw.gateway, ifindex=index, family=_family(version))
        return removed


def _delete(ipr: Any, host_ifname: str) -> bool:
    index = _index(ipr, host_ifname)
    if index is None:
        return False
    with _netlink(f"interface {host_ifname}", ok=_GONE):
        ipr.link("del", index=index)
    return True


def _undo_delete(ipr: Any, host_ifname: str) -> None:
    """Delete a pair just created after a later step failed: the original error matters
    more, so a failure here is logged, not raised."""
    try:
        _delete(ipr, host_ifname)
    except CalicoError as exc:
        _log.error("could not delete %s after a failed create: %s", host_ifname, exc)


def delete_veth(host_ifname: str, *, netns: str | None = None) -> bool:
    """Delete a veth pair by its host end (the peer goes with it); False if it did not
    exist."""
    with _socket(netns) as ipr:
        return _delete(ipr, host_ifname)


def link_mac(ifname: str, *, netns: str | None = None) -> str | None:
    """The interface's MAC, or None if there is no such interface."""
    with _socket(netns) as ipr:
        index = _index(ipr, ifname)
        return None if index is None else _mac(ipr, index)


def interface_addresses(ifname: str, *, netns: str | None) -> list[str]:
    """Global addresses on the interface, sorted ([] if there is no such interface)."""
    with _socket(netns) as ipr:
        index = _index(ipr, ifname)
        return [] if index is None else _global_addresses(ipr, index)


def create_workload_interface(netns: str, host_ifname: str, ifname: str, ips: Sequence[str],
                              *, host_netns: str | None = None,
                              mtu: int | None = None) -> WorkloadInterface:
    """The whole interface of a new workload: a veth pair created in `host_netns` (None:
    this process's namespace), its peer moved into `netns` as `ifname`, `mtu` on both
    ends (None: the kernel's default), and `ips` configured with their gateways. On any
    failure the pair is deleted again (the peer goes with it) and the error raised."""
    with _socket(netns) as inside, _socket(host_netns) as here:
        pair = _create_veth(here, host_ifname, temp_peer_name(host_ifname), host_netns, mtu)
        try:
            index = _move(here, inside, pair.peer_ifname, netns, ifname, host_netns)
            _configure(inside, index, ips, pair.host_mac)
            mac = _mac(inside, index)
        except BaseException:
            _undo_delete(here, host_ifname)
            raise
    return WorkloadInterface(host_ifname, ifname, mac, pair.host_mac)
