"""Walking felix's rendered chains for one packet: which rules it meets and where it ends.

Owns: `Packet` (the fields felix's filter rules look at: IP version, addresses,
protocol, ports, ICMP type and code, the interfaces in and out, the source MAC, the
conntrack state), `walk` (iptables' traversal of `Chain` values: rules in order, every
criterion must hold; a jump pushes a return point, a goto takes over the current
chain's place, RETURN or the end of a chain goes back to the caller; ACCEPT, DROP and
REJECT end the walk; MARK changes the packet's mark (--set-xmark), LOG goes on) and the
record it leaves: a `Step` for every chain entered and every rule that matched.

It interprets only the rule values felix renders, read by `felix.rules.parse`; it knows
no policy semantics of its own (tiers, profiles and failsafe ports are whatever the
rules say). ipset members come from the caller: the sets felix would program.

Leaves to others: which chains and sets (`felix.calc`), what a walk means for a flow
(`felix.trace`). Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from felix.dataplane.types import Chain, IPSetState, Rule
from felix.rules.dispatch import interface_matches
from felix.rules.parse import (
    Action,
    AddressRange,
    ConnState,
    Criterion,
    IcmpType,
    Interface,
    IPAddress,
    MacSource,
    MarkMatch,
    Net,
    Ports,
    Protocol,
    SetMatch,
    parse_action,
    parse_match,
)

MAX_STEPS = 100_000  # far more than any walk through felix's chains takes
ICMP = {4: 1, 6: 58}


@dataclass(frozen=True)
class Packet:
    """The first packet of a flow as the filter table sees it in one hook.

    `in_iface`/`out_iface`: None where the hook has none (INPUT has no output interface,
    OUTPUT no input) or where it is an interface no rule can name.
    """

    version: int
    src: str
    dst: str
    protocol: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    in_iface: str | None = None
    out_iface: str | None = None
    src_mac: str | None = None
    ct_state: str = "NEW"


@dataclass(frozen=True)
class Step:
    """A chain entered (`index` None) or a rule that matched (its index and its action)
    at call depth `depth` (0: the kernel chain)."""

    chain: str
    index: int | None
    rule: Rule | None
    depth: int
    action: Action | None = None


@dataclass(frozen=True)
class Walk:
    """`verdict`: ACCEPT, DROP or REJECT; RETURN when felix's chains handed the packet
    back to the rest of the kernel chain. `mark`: the packet's mark at the end."""

    verdict: str
    steps: tuple[Step, ...]
    mark: int

    @property
    def last(self) -> Step | None:
        """The last rule that matched."""
        return next((s for s in reversed(self.steps) if s.index is not None), None)


class _Frame:
    __slots__ = ("name", "rules", "pos")

    def __init__(self, name: str, rules: Sequence[Rule]) -> None:
        self.name = name
        self.rules = rules
        self.pos = 0


def walk(chains: Mapping[str, Chain], kernel_chain: str, base_rules: Sequence[Rule],
         packet: Packet, ipsets: Mapping[str, IPSetState]) -> Walk:
    """Walk `packet` from the top of `kernel_chain` (whose felix rules are `base_rules`)
    through `chains`. A jump to a chain that is not in `chains`, or to a set not in
    `ipsets`, raises KeyError: felix never programs one."""
    mark = 0
    steps: list[Step] = [Step(kernel_chain, None, None, 0)]
    stack = [_Frame(kernel_chain, base_rules)]
    src = ipaddress.ip_address(packet.src)
    dst = ipaddress.ip_address(packet.dst)
    for _ in range(MAX_STEPS):
        frame = stack[-1]
        if frame.pos >= len(frame.rules):
            stack.pop()
            if not stack:
                return Walk("RETURN", tuple(steps), mark)
            continue
        index = frame.pos
        rule = frame.rules[index]
        frame.pos += 1
        if not all(_holds(c, packet, src, dst, mark, ipsets) for c in parse_match(rule.match)):
            continue
        action = parse_action(rule.action)
        depth = len(stack) - 1
        steps.append(Step(frame.name, index, rule, depth, action))
        if action.terminal:
            return Walk(action.kind, tuple(steps), mark)
        if action.kind == "RETURN":
            stack.pop()
            if not stack:
                return Walk("RETURN", tuple(steps), mark)
        elif action.kind == "MARK":
            mark = (mark & ~action.mark_mask & 0xFFFFFFFF) ^ action.mark_value
        elif action.kind in ("jump", "goto"):
            assert action.target is not None
            target = chains[action.target]
            if action.kind == "goto":
                if len(stack) == 1:
                    raise ValueError(f"goto {action.target} from kernel chain {kernel_chain}")
                stack[-1] = _Frame(target.name, target.rules)
            else:
                stack.append(_Frame(target.name, target.rules))
            steps.append(Step(target.name, None, None, len(stack) - 1))
        elif action.kind != "LOG":
            raise ValueError(f"{action.kind} is not a filter-table action ({rule.action!r})")
    raise ValueError(f"walk from {kernel_chain} took more than {MAX_STEPS} steps")


def _in_set(state: IPSetState, addr: IPAddress) -> bool:
    if state.version != addr.version:
        return False
    if state.set_type == "hash:ip":
        return str(addr) in state.members
    return any(addr in ipaddress.ip_network(m, strict=False) for m in state.members)


def _holds(c: Criterion, p: Packet, src: IPAddress, dst: IPAddress, mark: int,
           ipsets: Mapping[str, IPSetState]) -> bool:
    """Whether criterion `c` holds for the packet (negation applied)."""
    result: bool
    if isinstance(c, Interface):
        iface = p.in_iface if c.inbound else p.out_iface
        result = iface is not None and interface_matches(c.name, iface)
    elif isinstance(c, Protocol):
        result = c.number in (0, p.protocol)
    elif isinstance(c, Net):
        addr = src if c.source else dst
        result = addr.version == c.net.version and addr in c.net
    elif isinstance(c, AddressRange):
        addr = src if c.source else dst
        result = addr.version == c.lo.version and c.lo <= addr <= c.hi  # type: ignore[operator]
    elif isinstance(c, ConnState):
        result = p.ct_state in c.states
    elif isinstance(c, SetMatch):
        result = _in_set(ipsets[c.name], src if c.source else dst)
    elif isinstance(c, Ports):
        port = p.sport if c.source else p.dport
        if port is None:
            return False  # iptables only applies port matches to packets that have ports
        result = any(lo <= port <= hi for lo, hi in c.ranges)
    elif isinstance(c, IcmpType):
        if p.protocol != ICMP[c.version] or p.icmp_type is None:
            return False
        result = p.icmp_type == c.type and (c.code is None or p.icmp_code == c.code)
    elif isinstance(c, MarkMatch):
        result = (mark & c.mask) == c.value
    elif isinstance(c, MacSource):
        result = p.src_mac is not None and p.src_mac.lower() == c.mac
    else:  # pragma: no cover - parse_match returns only the kinds above
        raise TypeError(f"unknown criterion {c!r}")
    return result != c.negate
