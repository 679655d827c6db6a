"""`trace`: why a flow is allowed or dropped, from the chains felix would program.

Owns: the path of a flow's first packet through the hosts it crosses (`plan`: on the
source's host FORWARD for a workload, OUTPUT for the host itself; on the destination's
host FORWARD or INPUT; one hook when both ends share a host; an address outside the
cluster is not policed), walking each hop's calculated chains (`felix.trace.view`,
`felix.rules.evaluate`), and reading the walk back per direction - out of the source,
into the destination: the verdict, the rule that decided it (a policy's or profile's
rule with its index and text, a failsafe port, VXLAN / IP-in-IP between cluster hosts,
the end of a tier, anti-spoofing, DefaultEndpointToHostAction, ...) and the chains it
went through.

The packet is the first of a new connection (conntrack state NEW). Without
`--source-port`, a TCP/UDP source port is taken from the ephemeral range that no rule
on the path names. When felix hands a packet back to the kernel chain (RETURN), the
host's own rules below felix's decide; they are not visible here and count as allow.

Leaves to others: reading the datastore (`felix.trace.snapshot`), the ends of the flow
(`felix.trace.places`), output (`felix.trace.report`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from felix.rules.dispatch import DROP_UNKNOWN
from felix.rules.evaluate import ICMP, Packet, Step, Walk, walk
from felix.rules.names import (
    CHAIN_FAILSAFE_IN,
    CHAIN_FAILSAFE_OUT,
    CHAIN_FROM_ENDPOINT,
    CHAIN_FROM_HOST_IF,
    CHAIN_TO_ENDPOINT,
    CHAIN_TO_HOST_IF,
)
from felix.rules.parse import Ports, parse_match
from felix.rules.policy import (
    COMMENT_END_OF_TIER,
    COMMENT_NO_ADDRESSES,
    COMMENT_NO_POLICY_ACCEPTED,
    COMMENT_NO_RULES,
    COMMENT_SPOOFED_ADDRESS,
    COMMENT_SPOOFED_MAC,
    rule_index,
)
from felix.rules.static import (
    COMMENT_ENCAP,
    COMMENT_ENDPOINT_TO_HOST,
    COMMENT_HOST_TO_WORKLOAD,
    COMMENT_NDP,
)
from felix.trace.places import HOST, OUTSIDE, WORKLOAD, Place, flow_version, resolve
from felix.trace.snapshot import Record, Snapshot
from felix.trace.view import HostView, build_view
from libcalico.errors import ValidationError
from libcalico.model.rules import PROTOCOLS

EPHEMERAL = range(32768, 61000)
PORT_PROTOCOLS = (6, 17, 132, 136)
ICMP_ECHO = {4: 8, 6: 128}
OUT, IN = "out", "in"


@dataclass(frozen=True)
class Flow:
    """What is asked: protocol (number and name), ports, ICMP type/code, IP version."""

    version: int
    protocol: int
    protocol_name: str
    dport: int | None = None
    sport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


@dataclass(frozen=True)
class Hop:
    """The filter table of one host in one hook. `out_root`/`in_root`: the dispatch
    chain where the source's outbound / the destination's inbound policy starts;
    `default`: the direction the hop's other rules belong to."""

    hostname: str
    hook: str  # INPUT | FORWARD | OUTPUT
    in_iface: str | None
    out_iface: str | None
    out_root: str | None
    in_root: str | None
    default: str | None


@dataclass(frozen=True)
class Decision:
    """What decided a direction: `kind` (policy, profile, end-of-tier,
    no-policy-accepted, anti-spoofing, no-addresses, failsafe, encapsulation,
    DefaultEndpointToHostAction, host-to-workload, no-endpoint, not-policed, static,
    rule), words for it, and where it is."""

    kind: str
    summary: str
    tier: str | None = None
    policy: str | None = None
    profile: str | None = None
    rule_index: int | None = None
    rule: str | None = None
    chain: str | None = None
    iptables: str | None = None


@dataclass(frozen=True)
class DirectionResult:
    direction: str  # OUT | IN
    verdict: str  # allow | deny | not-reached
    decided_by: Decision | None
    hostname: str | None = None
    hook: str | None = None
    chains: tuple[str, ...] = ()


@dataclass(frozen=True)
class HopResult:
    hop: Hop
    packet: Packet
    walk: Walk
    note: str | None = None


@dataclass(frozen=True)
class TraceResult:
    source: Place
    destination: Place
    flow: Flow
    sport: int | None
    hops: tuple[HopResult, ...]
    directions: tuple[DirectionResult, DirectionResult]
    verdict: str  # allow | deny
    revision: int = 0
    notes: tuple[str, ...] = field(default=())


def parse_flow(protocol: str, port: int | None, source_port: int | None,
               icmp_type: int | None, icmp_code: int | None, version: int) -> Flow:
    """Validate the flow's options (errors name the option and the value)."""
    name = protocol.strip().lower()
    if name.isdigit() and 1 <= int(name) <= 255:
        number = int(name)
        name = next((n for n, v in PROTOCOLS.items() if v == number), name)
    elif name in PROTOCOLS:
        number = PROTOCOLS[name]
    else:
        raise ValidationError("--protocol", protocol, "expected tcp, udp, icmp, icmpv6, sctp, "
                                                      "udplite or a number 1-255")
    if number in (1, 58):  # "icmp" in an IPv6 flow means ICMPv6, as ping does
        number, name = ICMP[version], "icmp" if version == 4 else "icmpv6"
    for opt, value in (("--port", port), ("--source-port", source_port)):
        if value is not None and not 1 <= value <= 65535:
            raise ValidationError(opt, value, "expected a port 1-65535")
        if value is not None and number not in PORT_PROTOCOLS:
            raise ValidationError(opt, value, f"protocol {name} has no ports")
    if number in PORT_PROTOCOLS and port is None:
        raise ValidationError("--port", None, f"protocol {name} needs a destination port")
    for opt, value in (("--icmp-type", icmp_type), ("--icmp-code", icmp_code)):
        if value is not None and not 0 <= value <= 255:
            raise ValidationError(opt, value, "expected 0-255")
        if value is not None and number != ICMP[version]:
            raise ValidationError(opt, value, f"protocol {name} is not ICMP")
    if number == ICMP[version] and icmp_type is None:
        icmp_type, icmp_code = ICMP_ECHO[version], 0 if icmp_code is None else icmp_code
    return Flow(version, number, name, port, source_port, icmp_type, icmp_code)


def plan(src: Place, dst: Place) -> list[Hop]:
    """The hooks the first packet meets, in order (see the module docstring)."""
    if src.kind == OUTSIDE and dst.kind == OUTSIDE:
        raise ValidationError("--to", dst.address, "neither end of the flow is in the cluster")
    same = src.hostname is not None and src.hostname == dst.hostname
    if same and src.kind == dst.kind and src.record == dst.record:
        raise ValidationError("--to", dst.address, "is the same endpoint as --from")
    if same and src.kind == HOST and dst.kind == HOST:
        raise ValidationError("--to", dst.address, "is the host of --from: felix does not "
                                                   "police what a host sends to itself")
    assert src.hostname is not None or src.kind == OUTSIDE
    if same and src.kind == WORKLOAD and dst.kind == WORKLOAD:
        return [Hop(dst.hostname or "", "FORWARD", src.ifname, dst.ifname,
                    CHAIN_FROM_ENDPOINT, CHAIN_TO_ENDPOINT, None)]
    if same and src.kind == WORKLOAD:  # to its own host
        return [Hop(dst.hostname or "", "INPUT", src.ifname, None, CHAIN_FROM_ENDPOINT,
                    CHAIN_FROM_HOST_IF, IN)]
    if same:  # the host to one of its workloads
        return [Hop(src.hostname or "", "OUTPUT", None, dst.ifname, CHAIN_TO_HOST_IF,
                    CHAIN_TO_ENDPOINT, OUT)]
    hops = []
    if src.kind == WORKLOAD:
        hops.append(Hop(src.hostname or "", "FORWARD", src.ifname, None, CHAIN_FROM_ENDPOINT,
                        None, OUT))
    elif src.kind == HOST:
        hops.append(Hop(src.hostname or "", "OUTPUT", None, src.ifname, CHAIN_TO_HOST_IF, None,
                        OUT))
    if dst.kind == WORKLOAD:
        hops.append(Hop(dst.hostname or "", "FORWARD", None, dst.ifname, None,
                        CHAIN_TO_ENDPOINT, IN))
    elif dst.kind == HOST:
        hops.append(Hop(dst.hostname or "", "INPUT", dst.ifname, None, None,
                        CHAIN_FROM_HOST_IF, IN))
    return hops


def trace(snapshot: Snapshot, source: str, destination: str, protocol: str = "tcp",
          port: int | None = None, source_port: int | None = None,
          icmp_type: int | None = None, icmp_code: int | None = None,
          ip_version: int | None = None) -> TraceResult:
    """Trace one flow (see the module docstring). Raises ValidationError for bad input
    and NotFound for an endpoint that does not exist."""
    version = flow_version(source, destination, ip_version)
    flow = parse_flow(protocol, port, source_port, icmp_type, icmp_code, version)
    src = resolve(snapshot, source, version, "--from", source=True)
    dst = resolve(snapshot, destination, version, "--to", source=False)
    hops = plan(src, dst)
    members = _members(snapshot, src, dst)
    views: dict[str, HostView] = {}
    for hop in hops:
        if hop.hostname not in views:
            local = [p.record for p in (src, dst) if p.record is not None
                     and p.hostname == hop.hostname]
            local += [r for p in (src, dst) if p.kind == WORKLOAD and p.hostname == hop.hostname
                      for r in snapshot.workload_endpoints_on(hop.hostname, p.ifname or "")]
            views[hop.hostname] = build_view(snapshot, hop.hostname, local, members,
                                             (src.address, dst.address))
    sport = flow.sport
    if sport is None and flow.protocol in PORT_PROTOCOLS:
        sport = _ephemeral_port([views[h.hostname] for h in hops], version)
    results: list[HopResult] = []
    for hop in hops:
        results.append(_walk_hop(views[hop.hostname], hop, src, dst, flow, sport))
        if results[-1].walk.verdict in ("DROP", "REJECT"):
            break
    directions = (_direction(OUT, src, hops, results, views, snapshot),
                  _direction(IN, dst, hops, results, views, snapshot))
    allowed = len(results) == len(hops) and all(r.walk.verdict in ("ACCEPT", "RETURN")
                                                 for r in results)
    notes = tuple(r.note for r in results if r.note)
    return TraceResult(src, dst, flow, sport, tuple(results), directions,
                       "allow" if allowed else "deny", snapshot.revision, notes)


def _members(snapshot: Snapshot, src: Place, dst: Place) -> list[Record]:
    out: dict[str, Record] = {}
    for place in (src, dst):
        for rec in snapshot.endpoints_holding(place.address):
            out[rec.key] = rec
    return list(out.values())


def _ephemeral_port(views: Sequence[HostView], version: int) -> int:
    """The lowest ephemeral port no source-port match on these hosts names."""
    named: list[tuple[int, int]] = []
    for view in views:
        for chain in view.chains.get((version, "filter"), {}).values():
            for rule in chain.rules:
                if "--sport" not in rule.match:  # --sport, --sports: parse only those
                    continue
                named += [r for c in parse_match(rule.match)
                          if isinstance(c, Ports) and c.source for r in c.ranges]
    for port in EPHEMERAL:
        if not any(lo <= port <= hi for lo, hi in named):
            return port
    raise ValidationError("--source-port", None, "every ephemeral port is named by a rule; "
                                                 "give one")


def _walk_hop(view: HostView, hop: Hop, src: Place, dst: Place, flow: Flow,
              sport: int | None) -> HopResult:
    packet = Packet(flow.version, src.address, dst.address, flow.protocol, sport, flow.dport,
                    flow.icmp_type, flow.icmp_code, hop.in_iface, hop.out_iface,
                    src.mac if src.kind == WORKLOAD and hop.in_iface == src.ifname else None)
    table = (flow.version, "filter")
    if table not in view.chains:
        note = (f"felix programs no IPv{flow.version} rules on {view.hostname} "
                "(Ipv6Support=false): not policed")
        return HopResult(hop, packet, Walk("RETURN", (Step(hop.hook, None, None, 0),), 0), note)
    ipsets = {n: s for n, s in view.ipsets.items() if s.version == flow.version}
    result = walk(view.chains[table], hop.hook, view.base_jumps[table].get(hop.hook, ()),
                  packet, ipsets)
    return HopResult(hop, packet, result)


def _owners(result: HopResult) -> list[str | None]:
    """The direction each step belongs to: inside the source's or the destination's
    dispatch subtree, else the hop's default."""
    hop = result.hop
    owners: list[str | None] = []
    segment: tuple[str, int] | None = None
    for step in result.walk.steps:
        if segment is not None and step.depth < segment[1]:
            segment = None
        if segment is None and step.index is None:
            if step.chain == hop.out_root:
                segment = (OUT, step.depth)
            elif step.chain == hop.in_root:
                segment = (IN, step.depth)
        owners.append(segment[0] if segment else hop.default)
    return owners


def _direction(direction: str, place: Place, hops: Sequence[Hop],
               results: Sequence[HopResult], views: dict[str, HostView],
               snapshot: Snapshot) -> DirectionResult:
    if place.kind == OUTSIDE:
        return DirectionResult(direction, "allow", Decision(
            "not-policed", f"{place.address} is outside the cluster: no felix on its side"))
    index = 0 if direction == OUT else len(hops) - 1  # see plan()
    hop = hops[index]
    if index >= len(results):
        return DirectionResult(direction, "not-reached", None, hop.hostname, hop.hook)
    result = results[index]
    view = views[hop.hostname]
    owners = _owners(result)
    steps = result.walk.steps
    mine = [s for s, o in zip(steps, owners, strict=True) if o == direction]
    last = max((i for i, o in enumerate(owners) if o == direction), default=len(steps) - 1)
    chains = tuple(s.chain for i, (s, o) in enumerate(zip(steps, owners, strict=True))
                   if s.index is None and i <= last and (o == direction or s.depth <= 1))
    dropped = result.walk.verdict in ("DROP", "REJECT")
    terminal = steps[-1] if result.walk.verdict != "RETURN" else None
    terminal_mine = terminal is not None and owners[-1] == direction

    def done(verdict: str, decision: Decision | None) -> DirectionResult:
        return DirectionResult(direction, verdict, decision, hop.hostname, hop.hook, chains)

    if result.note:
        return done("allow", Decision("not-policed", result.note))
    if terminal is not None and terminal_mine:
        decision = _decision(terminal, view, snapshot, place, hop)
        if dropped:
            return done("deny", decision)
        if decision.kind != "rule":  # a specific accept: failsafe, config, DNS ...
            return done("allow", decision)
    accepts = [s for s in mine if s.action is not None and s.action.kind == "MARK"
               and s.action.mark_value & view.marks.accept and s.chain in view.sources]
    if accepts:
        return done("allow", _decision(accepts[-1], view, snapshot, place, hop))
    if not mine and dropped:
        return DirectionResult(direction, "not-reached", None, hop.hostname, hop.hook)
    if not mine and terminal is not None:
        decision = _decision(terminal, view, snapshot, place, hop)
        return done("allow", Decision("not-policed", "accepted before this direction's "
                                      f"policy: {decision.summary}", chain=decision.chain,
                                      iptables=decision.iptables))
    returned = next((s for s in reversed(mine) if s.rule is not None and s.action is not None
                     and s.action.kind == "RETURN" and s.rule.comment in (
                         COMMENT_HOST_TO_WORKLOAD, COMMENT_ENDPOINT_TO_HOST)), None)
    if returned is not None:
        return done("allow", _decision(returned, view, snapshot, place, hop))
    if hop.hook == "OUTPUT" and direction == IN:
        return done("allow", Decision("not-policed", f"felix lets {hop.hostname} reach its "
                                      "own workloads; their inbound policy is not applied"))
    if place.kind == HOST and place.ifname is None:
        return done("allow", Decision("not-policed", f"no host endpoint on {place.hostname}'s "
                                      "interface for this address: not policed"))
    if place.kind == HOST:
        return done("allow", Decision("not-policed", f"interface {place.ifname} is not "
                                      "policed here"))
    return done("allow", Decision("not-policed", "felix returned the packet to the kernel "
                                  "chain (the host's own rules decide)"))


def _decision(step: Step, view: HostView, snapshot: Snapshot, place: Place,
              hop: Hop) -> Decision:
    """What `step` (a rule that matched) means, with where it is."""
    assert step.rule is not None
    text = " ".join(p for p in (step.rule.match, step.rule.action) if p)
    return dataclasses.replace(_classify(step, text, view, snapshot, place, hop),
                               chain=step.chain, iptables=f"-A {step.chain} {text}")


def _classify(step: Step, text: str, view: HostView, snapshot: Snapshot, place: Place,
              hop: Hop) -> Decision:
    rule = step.rule
    assert rule is not None
    source = view.sources.get(step.chain)
    comment = rule.comment
    if source is not None:
        if comment == COMMENT_NO_RULES:
            return Decision("profile", f"profile {source.name} has no rules in the datastore: "
                            "felix drops", profile=source.name)
        index = rule_index(comment)
        words = source.rule_text(snapshot, index) if index is not None else None
        return Decision(source.kind, f"{source.describe()} rule {index}: {words}",
                        tier=source.tier, policy=source.name if source.kind == "policy" else None,
                        profile=source.name if source.kind == "profile" else None,
                        rule_index=index, rule=words)
    if step.chain in (CHAIN_FAILSAFE_IN, CHAIN_FAILSAFE_OUT) and comment == COMMENT_NDP:
        return Decision("failsafe", "IPv6 neighbour discovery, always allowed through host "
                        "endpoints")
    if step.chain in (CHAIN_FAILSAFE_IN, CHAIN_FAILSAFE_OUT):
        param = ("FailsafeInboundHostPorts" if step.chain == CHAIN_FAILSAFE_IN
                 else "FailsafeOutboundHostPorts")
        return Decision("failsafe", f"failsafe port ({param}): {rule.match}")
    end_of_tier = COMMENT_END_OF_TIER.format(tier="")
    if comment.startswith(end_of_tier):
        tier = comment[len(end_of_tier):]
        return Decision("end-of-tier", f"end of tier {tier}: a policy of the tier applies to "
                        "the endpoint but none allowed or passed the packet", tier=tier)
    if comment == COMMENT_NO_POLICY_ACCEPTED:
        return Decision("no-policy-accepted", "no policy or profile allowed the packet "
                        "(default deny at the end of the endpoint's chain)")
    if comment in (COMMENT_SPOOFED_ADDRESS, COMMENT_SPOOFED_MAC):
        return Decision("anti-spoofing", f"{comment}: {place.address} is not the endpoint's "
                        "own" if comment == COMMENT_SPOOFED_ADDRESS else comment)
    if comment == COMMENT_NO_ADDRESSES:
        inactive = (place.record is not None and place.record.is_workload
                    and place.record.model is not None and place.record.model.state != "active")
        why = "the endpoint is inactive" if inactive else comment
        return Decision("no-addresses", f"{why}: felix drops everything")
    if comment == COMMENT_ENDPOINT_TO_HOST:
        value = view.config.DefaultEndpointToHostAction
        return Decision("DefaultEndpointToHostAction", f"DefaultEndpointToHostAction={value} "
                        f"on {view.hostname} (workload traffic to its own host)")
    if comment in COMMENT_ENCAP.values():
        return Decision("encapsulation", f"{comment}: the encapsulated pools' traffic "
                        "between the cluster's hosts is accepted before host endpoint policy")
    if comment == COMMENT_HOST_TO_WORKLOAD:
        return Decision("host-to-workload", f"felix lets {hop.hostname} reach its own "
                        "workloads")
    if comment == DROP_UNKNOWN.comment:
        return Decision("no-endpoint", f"no endpoint chain for interface "
                        f"{hop.in_iface or hop.out_iface} on {hop.hostname}")
    if comment:
        return Decision("static", comment)
    return Decision("rule", f"{step.chain} rule {step.index}: {text}")

