"""Felix's fixed chains: the entry chains, failsafe ports, encapsulation between cluster
hosts and nat-outgoing.

Owns, per IP version, the filter table's `felix-INPUT`, `felix-FORWARD`, `felix-OUTPUT`
(each reached by one jump from the kernel chain of the same name: `render_base_jumps`),
`felix-FAILSAFE-IN`/`-OUT`, and the nat table's `felix-POSTROUTING` with its
MASQUERADE rule for pools with nat-outgoing (ipsets `felix-masq-ipam-pools` and
`felix-all-ipam-pools`, hash:net).

Chain layout (filter):
  felix-FORWARD: drop ctstate INVALID, accept RELATED,ESTABLISHED; from a workload
    interface -> felix-FROM-ENDPOINT (outbound policy of the sender), to a workload
    interface -> felix-TO-ENDPOINT (inbound policy of the receiver); accept what returns
    (workload traffic never meets host endpoint policy). Other forwarded traffic: clear
    marks, felix-FROM-HOST-IF-FWD (inbound policy of the host endpoint it came in
    through), felix-TO-HOST-IF-FWD (outbound policy of the one it leaves through); accept
    on mark; an interface without a host endpoint is not policed.
  felix-INPUT: clear marks, conntrack as above; from workloads: IPv6 neighbour
    discovery, DHCP and DNS to the host are accepted, then DefaultEndpointToHostAction
    (DROP; RETURN or ACCEPT after the workload's outbound policy); other interfaces:
    (IPv4, while an encapsulated pool exists) VXLAN / IP-in-IP from cluster hosts is
    accepted, then felix-FROM-HOST-IF (host endpoints, failsafe ports first); accept on
    mark.
  felix-OUTPUT: clear marks, conntrack; to workloads RETURN (the host may always reach
    its workloads); (IPv4, encapsulated pools) VXLAN / IP-in-IP to cluster hosts is
    accepted; else felix-TO-HOST-IF (failsafe ports first); accept on mark.
  The encapsulation rules (`render_encap_rules`) match the pools' encapsulations:
    `-p udp --dport VXLANPort` for VXLAN, `-p 4` for IP-in-IP, from (INPUT) or to
    (OUTPUT) an address in `felix-all-hosts` (every node's IPv4 address). Without them a
    host endpoint on the fabric interface would cut every encapsulated workload flow
    between hosts; packets from other addresses meet the host endpoint policy as any.
  felix-FAILSAFE-IN/-OUT: ACCEPT the failsafe ports (`(protocol, port)` pairs,
    FailsafeInboundHostPorts/FailsafeOutboundHostPorts) by destination port, and for IPv6
    neighbour discovery.

Leaves to others: endpoint, policy and dispatch chains (the sibling modules), the
configuration values (`felix.config`), applying (`felix.dataplane`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from felix.dataplane.types import Chain, Rule
from felix.rules.match import MAX_MULTIPORT_ENTRIES
from felix.rules.names import (
    CHAIN_FAILSAFE_IN,
    CHAIN_FAILSAFE_OUT,
    CHAIN_FORWARD,
    CHAIN_FROM_ENDPOINT,
    CHAIN_FROM_HOST_IF,
    CHAIN_FROM_HOST_IF_FWD,
    CHAIN_INPUT,
    CHAIN_NAT_POSTROUTING,
    CHAIN_OUTPUT,
    CHAIN_TO_ENDPOINT,
    CHAIN_TO_HOST_IF,
    CHAIN_TO_HOST_IF_FWD,
    IPSET_ALL_HOSTS,
    IPSET_ALL_POOLS,
    IPSET_MASQ_POOLS,
    Marks,
    mark_match,
    set_mark,
)
from libcalico.model.tunnel import IPIP, VXLAN, VXLAN_PORT

INVALID_DROP = Rule("-m conntrack --ctstate INVALID", "-j DROP")
ESTABLISHED_ACCEPT = Rule("-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT")
# Neighbour discovery and MLD a workload needs to talk to its host.
ICMPV6_HOST_TYPES = (130, 131, 132, 133, 135, 136)
# Router solicitation/advertisement, neighbour solicitation/advertisement.
ICMPV6_NDP_TYPES = (133, 134, 135, 136)

# Comments of the static rules that decide a verdict.
COMMENT_FAILSAFE = "failsafe"
COMMENT_NDP = "IPv6 neighbour discovery"
COMMENT_ENDPOINT_TO_HOST = "DefaultEndpointToHostAction"
COMMENT_HOST_TO_WORKLOAD = "host to local workload"
# (encapsulation, inbound) -> the comment of the rule that lets it through.
COMMENT_ENCAP = {(VXLAN, True): "VXLAN from a cluster host",
                 (VXLAN, False): "VXLAN to a cluster host",
                 (IPIP, True): "IP-in-IP from a cluster host",
                 (IPIP, False): "IP-in-IP to a cluster host"}
IPIP_PROTOCOL = 4  # by number: the name is not in every /etc/protocols

Ports = Sequence[tuple[str, int]]  # (protocol, port) pairs


def _wildcards(prefixes: Sequence[str]) -> list[str]:
    return [f"{p}+" for p in prefixes]


def render_failsafe_chains(in_ports: Ports, out_ports: Ports, version: int = 4) -> list[Chain]:
    """felix-FAILSAFE-IN/-OUT: one ACCEPT per protocol (and per 15 ports); for IPv6 first
    neighbour discovery, without which a host endpoint would cut the host (and every
    workload it forwards for) off its IPv6 neighbours (IPv4's ARP is not iptables')."""
    def chain(name: str, ports: Ports) -> Chain:
        rules = []
        if version == 6:
            rules += [Rule(f"-p icmpv6 -m icmp6 --icmpv6-type {t}", "-j ACCEPT", COMMENT_NDP)
                      for t in ICMPV6_NDP_TYPES]
        for proto in dict.fromkeys(p for p, _ in ports):
            numbers = [str(n) for p, n in ports if p == proto]
            for i in range(0, len(numbers), MAX_MULTIPORT_ENTRIES):
                chunk = ",".join(numbers[i:i + MAX_MULTIPORT_ENTRIES])
                rules.append(Rule(f"-p {proto} -m multiport --dports {chunk}", "-j ACCEPT",
                                  COMMENT_FAILSAFE))
        return Chain(name, tuple(rules))
    return [chain(CHAIN_FAILSAFE_IN, in_ports), chain(CHAIN_FAILSAFE_OUT, out_ports)]


def render_encap_rules(encaps: Collection[str], vxlan_port: int, inbound: bool) -> list[Rule]:
    """ACCEPT the pools' encapsulations (`encaps`: VXLAN, IPIP) from (`inbound`: INPUT)
    or to (OUTPUT) the addresses of cluster hosts (`felix-all-hosts`); IPv4 only."""
    side = "src" if inbound else "dst"
    hosts = f"-m set --match-set {IPSET_ALL_HOSTS} {side}"
    rules = []
    if VXLAN in encaps:
        rules.append(Rule(f"-p udp -m udp --dport {vxlan_port} {hosts}", "-j ACCEPT",
                          COMMENT_ENCAP[(VXLAN, inbound)]))
    if IPIP in encaps:
        rules.append(Rule(f"-p {IPIP_PROTOCOL} {hosts}", "-j ACCEPT",
                          COMMENT_ENCAP[(IPIP, inbound)]))
    return rules


def render_filter_chains(version: int, prefixes: Sequence[str], endpoint_to_host: str,
                         marks: Marks, in_ports: Ports, out_ports: Ports,
                         encaps: Collection[str] = (),
                         vxlan_port: int = VXLAN_PORT) -> list[Chain]:
    """felix-INPUT, felix-FORWARD, felix-OUTPUT and the failsafe chains; `encaps`: the
    encapsulations of the pools (IPv4 only), which cluster hosts may send each other
    before host endpoint policy."""
    encaps = encaps if version == 4 else ()
    wild = _wildcards(prefixes)
    clear = Rule("", set_mark(marks.all, 0))
    forward = [INVALID_DROP, ESTABLISHED_ACCEPT]
    forward += [Rule(f"-i {w}", f"-j {CHAIN_FROM_ENDPOINT}") for w in wild]
    forward += [Rule(f"-o {w}", f"-j {CHAIN_TO_ENDPOINT}") for w in wild]
    forward += [Rule(f"-i {w}", "-j ACCEPT") for w in wild]
    forward += [Rule(f"-o {w}", "-j ACCEPT") for w in wild]
    forward += [clear, Rule("", f"-j {CHAIN_FROM_HOST_IF_FWD}"),
                Rule("", f"-j {CHAIN_TO_HOST_IF_FWD}"),
                Rule(mark_match(marks.accept), "-j ACCEPT")]

    inp = [clear, INVALID_DROP, ESTABLISHED_ACCEPT]
    for w in wild:
        if version == 6:
            inp += [Rule(f"-i {w} -p icmpv6 -m icmp6 --icmpv6-type {t}", "-j ACCEPT")
                    for t in ICMPV6_HOST_TYPES]
            inp.append(Rule(f"-i {w} -p udp -m udp --sport 546 --dport 547", "-j ACCEPT",
                            "DHCPv6"))
        else:
            inp.append(Rule(f"-i {w} -p udp -m udp --sport 68 --dport 67", "-j ACCEPT", "DHCP"))
        inp.append(Rule(f"-i {w} -p udp -m udp --dport 53", "-j ACCEPT", "DNS"))
        if endpoint_to_host == "DROP":
            inp.append(Rule(f"-i {w}", "-j DROP", COMMENT_ENDPOINT_TO_HOST))
        else:
            inp.append(Rule(f"-i {w}", f"-j {CHAIN_FROM_ENDPOINT}", "workload outbound policy"))
            inp.append(Rule(f"-i {w}", f"-j {endpoint_to_host}", COMMENT_ENDPOINT_TO_HOST))
    inp += render_encap_rules(encaps, vxlan_port, inbound=True)
    inp += [Rule("", f"-j {CHAIN_FROM_HOST_IF}"), Rule(mark_match(marks.accept), "-j ACCEPT")]

    out = [clear, INVALID_DROP, ESTABLISHED_ACCEPT]
    out += [Rule(f"-o {w}", "-j RETURN", COMMENT_HOST_TO_WORKLOAD) for w in wild]
    out += render_encap_rules(encaps, vxlan_port, inbound=False)
    out += [Rule("", f"-j {CHAIN_TO_HOST_IF}"), Rule(mark_match(marks.accept), "-j ACCEPT")]
    return [Chain(CHAIN_FORWARD, tuple(forward)), Chain(CHAIN_INPUT, tuple(inp)),
            Chain(CHAIN_OUTPUT, tuple(out)), *render_failsafe_chains(in_ports, out_ports, version)]


def render_nat_chains() -> list[Chain]:
    """nat-outgoing (IPv4): masquerade from nat-outgoing pools to outside all pools."""
    rule = Rule(f"-m set --match-set {IPSET_MASQ_POOLS} src "
                f"-m set ! --match-set {IPSET_ALL_POOLS} dst", "-j MASQUERADE", "nat-outgoing")
    return [Chain(CHAIN_NAT_POSTROUTING, (rule,))]


def render_base_jumps(table: str) -> dict[str, tuple[Rule, ...]]:
    """The one jump felix puts at the top of each kernel chain it hooks."""
    if table == "filter":
        return {"INPUT": (Rule("", f"-j {CHAIN_INPUT}"),),
                "FORWARD": (Rule("", f"-j {CHAIN_FORWARD}"),),
                "OUTPUT": (Rule("", f"-j {CHAIN_OUTPUT}"),)}
    if table == "nat":
        return {"POSTROUTING": (Rule("", f"-j {CHAIN_NAT_POSTROUTING}"),)}
    return {}
