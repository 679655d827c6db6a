"""What a node writes to the datastore when it starts: the cluster defaults and itself.

Owns:
- `initialise_cluster`: the global settings a cluster needs, written once by whichever
  node starts first and never overwritten afterwards: `/calico/v1/Ready`, the default AS
  (64512), the node-to-node mesh (on), and the default pools (192.168.0.0/16 and
  fd80:24e2:f998:72d6::/64) when the cluster has no pool of that version and the caller
  asks for them. Each key is created only if absent, in one transaction per key, so two
  nodes starting together cannot overwrite each other.
- `register_node`: this node's BGP identity (addresses, AS) and the subnet of its IPv4
  address, refusing a name that already belongs to another address and an address that
  already belongs to another node; the fields the node records itself at run time (its
  tunnel endpoints) are left as they are.
- `detect_addresses`: this host's first global IPv4 and IPv6 addresses (for `--ip`
  auto-detection), and `detect_network`: the subnet of the interface address that
  holds a given IPv4 address (when `--ip` gives no prefix length); both read from
  `ip -j addr` so that no netlink library is imported.

Leaves to others: starting processes (`calicoctl.noderun`), validation of the values
(`libcalico.model`), keys (`libcalico.keyspace`).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from libcalico import keyspace as ks
from libcalico.client import CalicoClient
from libcalico.codec import dumps
from libcalico.errors import CalicoError, Conflict
from libcalico.model import IPPool, Node

DEFAULT_AS = 64512
DEFAULT_POOLS = ("192.168.0.0/16", "fd80:24e2:f998:72d6::/64")
# Interfaces whose addresses never identify the host.
_SKIP_IFACES = ("lo", "cali", "docker", "veth", "tunl", "virbr", "br-")


@dataclass(frozen=True)
class ClusterInit:
    """What `initialise_cluster` created (empty when the cluster was set up already)."""

    created: tuple[str, ...]


def initialise_cluster(client: CalicoClient, default_pools: bool = True) -> ClusterInit:
    """Create the global defaults that are still missing; never change existing ones."""
    from libcalico.datastore import ModRevisionIs, Put

    store = client.store
    created: list[str] = []
    defaults = [(ks.BGP_GLOBAL_AS_KEY, str(DEFAULT_AS), f"default AS {DEFAULT_AS}"),
                (ks.BGP_GLOBAL_MESH_KEY, dumps({"enabled": True}), "node-to-node mesh on")]
    for key, value, what in defaults:
        if store.txn([ModRevisionIs(key, 0)], [Put(key, value)], []):
            created.append(what)
    if default_pools:
        for cidr in DEFAULT_POOLS:
            pool = IPPool(cidr)
            if client.list_pools(pool.version):
                continue
            key = ks.pool_key(pool.cidr)
            if store.txn([ModRevisionIs(key, 0)], [Put(key, dumps(pool.to_json()))], []):
                created.append(f"pool {cidr}")
    if store.txn([ModRevisionIs(ks.READY_KEY, 0)], [Put(ks.READY_KEY, "true")], []):
        created.append("ready flag")
    return ClusterInit(tuple(created))


def register_node(client: CalicoClient, hostname: str, ipv4: str | None, ipv6: str | None,
                  as_num: int | None, ipv4_network: str | None = None) -> Node:
    """Write this node's BGP identity; refuse clashes with other nodes' identities.

    A name that exists with a different IPv4 address is refused (another host has it);
    an address that another node already uses is refused too. A node that restarts with
    the same identity is accepted and left as it is apart from the given fields: it
    keeps the tunnel endpoints it recorded and what the operator set for it with
    `calicoctl config node bgp` (its route-reflector cluster id and BGP log level), so
    a route reflector that restarts, or is provisioned before it first starts, stays one."""
    node = Node(hostname, ipv4=ipv4, ipv6=ipv6, as_num=as_num,
                ipv4_network=ipv4_network).check_consistent()
    others = client.list_nodes()
    for other in others:
        if other.hostname == hostname:
            if other.ipv4 and node.ipv4 and other.ipv4 != node.ipv4:
                raise Conflict(f"node name {hostname} is already registered with IPv4 "
                               f"{other.ipv4}, not {node.ipv4}; use another --name, or "
                               f"`calicoctl node remove --hostname {hostname}` first")
            node = replace(node, rr_cluster_id=other.rr_cluster_id, loglevel=other.loglevel)
            continue
        for version, mine, theirs in ((4, node.ipv4, other.ipv4), (6, node.ipv6, other.ipv6)):
            if mine and mine == theirs:
                raise Conflict(f"IPv{version} address {mine} already belongs to node "
                               f"{other.hostname}; give this node another --ip")
    client.put_node(node)
    return node


def find_network(text: str, ip: str) -> str | None:
    """The subnet (CIDR) of the interface address equal to `ip` in `ip -j addr` output,
    None if no interface holds it or it is a host address (/32) (pure)."""
    try:
        data = json.loads(text or "[]")
    except ValueError as exc:
        raise CalicoError(f"cannot read `ip -j addr` output: {exc}") from None
    wanted = ipaddress.ip_address(ip)
    for link in data:
        for info in link.get("addr_info") or []:
            try:
                iface = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
            except (KeyError, ValueError):
                continue
            if iface.ip == wanted and iface.network.prefixlen < iface.max_prefixlen:
                return str(iface.network)
    return None


def detect_network(ip: str) -> str | None:
    """The subnet of the interface address that holds `ip` on this host (namespace)."""
    proc = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise CalicoError(f"ip -j addr show failed: {proc.stderr.strip()}")
    return find_network(proc.stdout, ip)


def _global_addresses(data: Iterable[dict[str, object]], version: int) -> list[str]:
    family = "inet" if version == 4 else "inet6"
    out = []
    for link in data:
        name = str(link.get("ifname", ""))
        flags = link.get("flags") or []
        if name.startswith(_SKIP_IFACES) or "UP" not in flags:  # type: ignore[operator]
            continue
        for info in link.get("addr_info") or []:  # type: ignore[attr-defined]
            if info.get("family") != family or info.get("scope") != "global":
                continue
            address = ipaddress.ip_address(info["local"])
            if version == 6 and address.is_link_local:
                continue
            out.append(str(address))
    return out


def parse_ip_addr_json(text: str, version: int) -> list[str]:
    """Global addresses of `version` on up, non-workload interfaces (pure)."""
    try:
        data = json.loads(text or "[]")
    except ValueError as exc:
        raise CalicoError(f"cannot read `ip -j addr` output: {exc}") from None
    return _global_addresses(data, version)


def detect_addresses(versions: Sequence[int] = (4, 6)) -> dict[int, str | None]:
    """This host's (this network namespace's) first global address of each version."""
    proc = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise CalicoError(f"ip -j addr show failed: {proc.stderr.strip()}")
    return {v: next(iter(parse_ip_addr_json(proc.stdout, v)), None) for v in versions}
