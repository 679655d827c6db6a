"""Encapsulated pools: tunnel devices, routes to remote blocks, VXLAN neighbour and FDB
entries. Pure.

Owns what felix programs for pools with an encapsulation (VXLAN or IPIP), computed from
the pools, the allocation blocks and the nodes in etcd - BIRD has no part in these pools
(confd leaves them out), so felix owns every route to them (docs/architecture.md):
  - the devices: `vxlan.calico` (VNI, UDP port and MTU from the settings, this node's
    tunnel address and VXLAN MAC from its node record, its host address as the outer
    source) while a VXLAN pool exists and this node has recorded its tunnel endpoint;
    `tunl0` (MTU, tunnel address) likewise for IPIP;
  - per block of an encapsulated pool: this node's own blocks get a blackhole route;
    another node's block gets a route via that node - VXLAN: via its tunnel address on
    `vxlan.calico`, onlink; IPIP: via its host address on `tunl0`, onlink; in
    cross-subnet mode, a node inside this node's subnet (`network_v4`) is reached by a
    plain route via its host address instead. Addresses held by a node other than the
    block's (borrowed ones) get a /32 route to their holder the same way;
  - for every other node with a VXLAN endpoint: a permanent neighbour entry (its tunnel
    address -> its MAC) and an FDB entry (its MAC -> its host address) on
    `vxlan.calico`;
  - while an encapsulated pool exists, the ipset `felix-all-hosts` (hash:ip): every
    node's IPv4 address, this one's too - the hosts whose encapsulated packets the
    filter rules accept before host endpoint policy - and `encapsulations`, the kinds
    in use, from which the graph renders those rules (`felix.rules.static`).
A route needs what it goes through: a VXLAN route needs this node's device and the other
node's tunnel address and MAC; an IPIP route needs `tunl0`; a plain route only the other
node's host address. What cannot be built yet (a node still getting its tunnel address)
is left out and appears when the data does.

Batching: inputs only record and mark dirty; `flush()` recomputes the whole desired set
from the current inputs (O(blocks + nodes): milliseconds for thousands of blocks) and
hands it to the recorder, which passes on only the differences. So the result depends
only on the last value of each input, never on their order.

Leaves to others: local workload routes (`felix.calc.endpoints`, whose route wins a
destination both want), allocating tunnel addresses (`libcalico.tunnel`, run by felix's
tunnel keeper), the filter rules themselves (`felix.rules.static`, rendered by the
graph), applying (`felix.dataplane.tunnels`, `felix.dataplane.routes`, the ipset owner).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from felix.calc.recorder import ChangeRecorder
from felix.calc.types import BlockInfo
from felix.dataplane.types import FDBState, IPSetState, NeighbourState, RouteState, TunnelDevice
from felix.rules.names import IPSET_ALL_HOSTS
from libcalico.model import IPPool
from libcalico.model.tunnel import (
    IPIP,
    IPIP_INTERFACE,
    VXLAN,
    VXLAN_INTERFACE,
    VXLAN_PORT,
    VXLAN_VNI,
    same_subnet,
)

NEIGHBOUR_KEY = ("tunnels", VXLAN_INTERFACE)  # the recorder's key for our neighbours
NODE_FIELDS = ("ipv4", "ipv4_network", "vxlan_tunnel_addr", "vxlan_tunnel_mac",
               "ipip_tunnel_addr")


@dataclass(frozen=True)
class TunnelSettings:
    hostname: str
    vxlan_mtu: int = 1450
    vxlan_vni: int = VXLAN_VNI
    vxlan_port: int = VXLAN_PORT
    ipip_mtu: int = 1480


@dataclass(frozen=True)
class NodeInfo:
    """The node fields the tunnels need."""

    ipv4: str | None = None
    ipv4_network: str | None = None
    vxlan_tunnel_addr: str | None = None
    vxlan_tunnel_mac: str | None = None
    ipip_tunnel_addr: str | None = None

    @property
    def vtep(self) -> bool:
        """Whether the node has a complete VXLAN endpoint."""
        return bool(self.ipv4 and self.vxlan_tunnel_addr and self.vxlan_tunnel_mac)


class TunnelCalculator:
    """See the module docstring. State fields: `_pools` (encapsulated IPv4 pools only),
    `_blocks` (cidr -> BlockInfo, every block), `_nodes` (host -> field -> value); what
    was last set: `_routes` (destinations), `_devices` (names); `_dirty`."""

    def __init__(self, settings: TunnelSettings, recorder: ChangeRecorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self._pools: dict[str, IPPool] = {}
        self._blocks: dict[str, BlockInfo] = {}
        self._nodes: dict[str, dict[str, str]] = {}
        self._routes: set[str] = set()
        self._devices: set[str] = set()
        self._dirty = False

    @property
    def encapsulated(self) -> bool:
        """Whether any pool is encapsulated: only then do the blocks matter here."""
        return bool(self._pools)

    # ---- inputs ------------------------------------------------------------------------

    def on_pool(self, cidr: str, pool: IPPool | None) -> None:
        """Every pool update: the part keeps only encapsulated ones, and notices a pool
        whose encapsulation was turned off."""
        if pool is not None and pool.encapsulation is None:
            pool = None
        if self._pools.get(cidr) != pool:
            if pool is None:
                del self._pools[cidr]
            else:
                self._pools[cidr] = pool
            self._dirty = True

    def on_block(self, cidr: str, block: BlockInfo | None) -> None:
        if self._blocks.get(cidr) != block:
            if block is None:
                del self._blocks[cidr]
            else:
                self._blocks[cidr] = block
            self._dirty = bool(self._pools) or self._dirty

    def on_node_field(self, hostname: str, attr: str, value: str | None) -> None:
        if attr not in NODE_FIELDS:
            return
        fields = self._nodes.setdefault(hostname, {})
        if fields.get(attr) == value:
            return
        if value is None:
            del fields[attr]
            if not fields:
                del self._nodes[hostname]
        else:
            fields[attr] = value
        self._dirty = True

    @property
    def encapsulations(self) -> frozenset[str]:
        """The encapsulations the pools use (VXLAN, IPIP; empty: none)."""
        return frozenset(p.encapsulation for p in self._pools.values()
                         if p.encapsulation is not None)

    # ---- flush -------------------------------------------------------------------------

    def flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        devices = dict(self._render_devices())
        routes = dict(self._render_routes(devices))
        for dest in self._routes - routes.keys():
            self.recorder.set_remote_route(dest, None)
        for dest, route in routes.items():
            self.recorder.set_remote_route(dest, route)
        self._routes = set(routes)
        for name in self._devices - devices.keys():
            self.recorder.set_device(name, None)
        for name, device in devices.items():
            self.recorder.set_device(name, device)
        self._devices = set(devices)
        neighbours, fdb = self._render_vteps(devices)
        self.recorder.set_neighbours(NEIGHBOUR_KEY, neighbours)
        self.recorder.set_fdb(fdb)
        self._render_all_hosts()

    def _render_all_hosts(self) -> None:
        if not self._pools:
            self.recorder.remove_ipset(IPSET_ALL_HOSTS, 4)
            return
        members = frozenset(f["ipv4"] for f in self._nodes.values() if "ipv4" in f)
        self.recorder.set_ipset(IPSetState(IPSET_ALL_HOSTS, 4, "hash:ip", members))

    def _node(self, hostname: str | None) -> NodeInfo | None:
        fields = self._nodes.get(hostname) if hostname is not None else None
        return NodeInfo(**fields) if fields else None

    def _render_devices(self) -> Iterator[tuple[str, TunnelDevice]]:
        me = self._node(self.settings.hostname)
        if me is None:
            return
        encaps = {p.encapsulation for p in self._pools.values()}
        s = self.settings
        if VXLAN in encaps and me.vtep:
            assert me.vxlan_tunnel_addr is not None
            yield VXLAN_INTERFACE, TunnelDevice(
                VXLAN_INTERFACE, VXLAN, me.vxlan_tunnel_addr, s.vxlan_mtu,
                me.vxlan_tunnel_mac, s.vxlan_vni, s.vxlan_port, me.ipv4)
        if IPIP in encaps and me.ipip_tunnel_addr:
            yield IPIP_INTERFACE, TunnelDevice(IPIP_INTERFACE, IPIP, me.ipip_tunnel_addr,
                                               s.ipip_mtu)

    def _pool_of(self, cidr: str) -> IPPool | None:
        net = ipaddress.ip_network(cidr)
        for pool in self._pools.values():
            if net.subnet_of(ipaddress.ip_network(pool.cidr)):  # type: ignore[arg-type]
                return pool
        return None

    def _render_routes(self, devices: dict[str, TunnelDevice]
                       ) -> Iterator[tuple[str, RouteState]]:
        if not self._pools:
            return
        me = self.settings.hostname
        my_network = (self._node(me) or NodeInfo()).ipv4_network
        nodes = {h: NodeInfo(**f) for h, f in self._nodes.items()}
        for cidr, block in self._blocks.items():
            if ":" in cidr:
                continue
            pool = self._pool_of(cidr)
            if pool is None:
                continue
            if block.host == me:
                yield cidr, RouteState(cidr, None, blackhole=True)
            elif block.host is not None:
                route = self._route_via(pool, nodes.get(block.host), cidr, my_network,
                                        devices)
                if route is not None:
                    yield cidr, route
            for dest, holder in block.borrowed:
                if holder == me:
                    continue  # a local workload: the endpoint calculator's route
                route = self._route_via(pool, nodes.get(holder), dest, my_network, devices)
                if route is not None:
                    yield dest, route

    @staticmethod
    def _route_via(pool: IPPool, node: NodeInfo | None, dest: str, my_network: str | None,
                   devices: dict[str, TunnelDevice]) -> RouteState | None:
        if node is None or node.ipv4 is None:
            return None
        if pool.encap_mode == "cross-subnet" and same_subnet(my_network, node.ipv4):
            return RouteState(dest, None, gateway=node.ipv4)
        if pool.encapsulation == VXLAN:
            if VXLAN_INTERFACE not in devices or not node.vtep:
                return None
            return RouteState(dest, VXLAN_INTERFACE, gateway=node.vxlan_tunnel_addr,
                              onlink=True)
        if IPIP_INTERFACE not in devices:
            return None
        return RouteState(dest, IPIP_INTERFACE, gateway=node.ipv4, onlink=True)

    def _render_vteps(self, devices: dict[str, TunnelDevice]
                      ) -> tuple[frozenset[NeighbourState], frozenset[FDBState]]:
        if VXLAN_INTERFACE not in devices:
            return frozenset(), frozenset()
        neighbours = set()
        fdb = set()
        for hostname, fields in self._nodes.items():
            node = NodeInfo(**fields)
            if hostname == self.settings.hostname or not node.vtep:
                continue
            assert node.vxlan_tunnel_addr and node.vxlan_tunnel_mac and node.ipv4
            neighbours.add(NeighbourState(node.vxlan_tunnel_addr, node.vxlan_tunnel_mac,
                                          VXLAN_INTERFACE))
            fdb.add(FDBState(node.vxlan_tunnel_mac, node.ipv4, VXLAN_INTERFACE))
        return frozenset(neighbours), frozenset(fdb)
