"""Values that describe the desired dataplane: the contract between calc and dataplane.

Owns: the immutable value types that felix's pure calculation (`felix.calc`,
`felix.rules`) produces and the dataplane owners (`felix.dataplane.*`) apply. Nothing
here performs I/O; tests compare these values directly.

Leaves to others: how the values are computed (calc/rules) and how they are written to
the kernel (one owner per table: iptables tables, ipsets, routes, interfaces).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

# Route protocol number felix puts on its workload routes, so they are recognisably
# its own (and BIRD's kernel protocol can learn them). 80 is unassigned in
# /etc/iproute2/rt_protos; Calico's Go felix uses 80 ("felix") too.
FELIX_ROUTE_PROTO = 80

# Every iptables chain and ipset that felix owns starts with one of these; anything
# else in the kernel is never touched.
CHAIN_PREFIX = "felix-"
IPSET_PREFIX = "felix-"

# The kernel's name limits: iptables chains (XT_EXTENSION_MAXNAMELEN - 1) and ipsets
# (IPSET_MAXNAMELEN minus the NUL).
MAX_CHAIN_NAME = 28
MAX_IPSET_NAME = 31


@dataclass(frozen=True)
class Rule:
    """One iptables rule in a chain: its match, its action and a comment.

    `match` and `action` are iptables argument strings ("-p tcp -m multiport --dports 80",
    "-j ACCEPT", "-g felix-to-abc"). The rendered rule carries a hash of its content
    (and of its position-independent identity) in an iptables comment, so a resync reads
    hashes back from iptables-save instead of parsing rules.
    """

    match: str = ""
    action: str = ""
    comment: str = ""

    def hash(self, chain: str, index: int, prev_hash: str = "") -> str:
        """Hash of this rule's content chained with its predecessor's hash (as Go felix)."""
        h = hashlib.sha224(f"{chain}|{prev_hash}|{self.match}|{self.action}".encode())
        return h.hexdigest()[:16]

    def render(self, chain: str, rule_hash: str) -> str:
        """The `-A` line for iptables-restore, with the hash as the first comment."""
        parts = [f"-A {chain}", f'-m comment --comment "felix:{rule_hash}"']
        if self.comment:
            safe = self.comment.replace('"', "'")[:200]
            parts.append(f'-m comment --comment "{safe}"')
        if self.match:
            parts.append(self.match)
        if self.action:
            parts.append(self.action)
        return " ".join(parts)


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...] = ()

    def rule_hashes(self) -> tuple[str, ...]:
        out: list[str] = []
        prev = ""
        for i, rule in enumerate(self.rules):
            prev = rule.hash(self.name, i, prev)
            out.append(prev)
        return tuple(out)


@dataclass(frozen=True)
class TableState:
    """Desired content of one iptables table for one IP version.

    `chains`: every felix-owned chain that should exist (name -> Chain).
    `base_jumps`: for kernel chains (INPUT, FORWARD, OUTPUT, POSTROUTING ...), the rules
    felix inserts at their top (normally one jump each into its own chain).
    """

    version: int  # 4 or 6
    table: str  # "filter", "nat", "raw", "mangle"
    chains: Mapping[str, Chain] = field(default_factory=dict)
    base_jumps: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class IPSetState:
    """A felix-owned ipset: `hash:ip` (tags and selectors) or `hash:net` (pools)."""

    name: str
    version: int
    set_type: str = "hash:ip"
    members: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RouteState:
    """A felix route (protocol 80, metric 0, main table) to `dest`.

    A local workload's: `dest` (a /32 or /128) via its interface `ifname`, scope link.
    A remote block of an encapsulated pool (or a remote workload in one): via the other
    node's tunnel address (VXLAN) or host address (IPIP) on the tunnel device `ifname`
    with `onlink` (the gateway needs no route of its own), or, in cross-subnet mode to a
    node of this subnet, plainly via its host address (`ifname` None: the kernel picks
    the device). A local block of an encapsulated pool: `blackhole` (no gateway, no
    device), so that unused addresses in it go nowhere.
    """

    dest: str
    ifname: str | None
    gateway: str | None = None
    onlink: bool = False
    blackhole: bool = False


@dataclass(frozen=True)
class FDBState:
    """A permanent forwarding entry of a VXLAN device: remote VTEP MAC -> remote host."""

    mac: str
    dst: str
    ifname: str


@dataclass(frozen=True)
class TunnelDevice:
    """A tunnel device felix keeps: `vxlan.calico` (kind "vxlan": VNI, UDP port, this
    host's address as the outer source `local`, a fixed MAC) or `tunl0` (kind "ipip").
    `address`: the node's tunnel address, put on the device as a /32."""

    name: str
    kind: str
    address: str
    mtu: int
    mac: str | None = None
    vni: int | None = None
    port: int | None = None
    local: str | None = None


@dataclass(frozen=True)
class InterfaceState:
    """Per-workload-interface kernel settings felix needs (sysctls, proxy ARP/NDP)."""

    ifname: str
    ipv4: bool = True
    ipv6: bool = False
    mac: str | None = None  # the workload's MAC, for static neighbour entries
    # IPv6 addresses the host answers for by proxy NDP on this interface (e.g. the
    # workloads' gateway address); empty when none is needed.
    proxy_ndp: tuple[str, ...] = ()


@dataclass(frozen=True)
class NeighbourState:
    """A permanent neighbour entry: workload address -> workload MAC on its interface
    (or a remote node's VXLAN tunnel address -> its VTEP MAC on `vxlan.calico`)."""

    ip: str
    mac: str
    ifname: str
