"""Reading felix's own rule values back: iptables match and action strings as structures.

Owns: the one parser of the `match` and `action` strings of `felix.dataplane.types.Rule`
(`parse_match`, `parse_action`), and the structured values they become: one criterion
per iptables match option (`Interface`, `Protocol`, `Net`, `AddressRange`, `ConnState`,
`SetMatch`, `Ports`, `IcmpType`, `MarkMatch`, `MacSource`), each with its negation, and
an `Action` (verdict, jump or goto target, mark change, log). It is strict: an option it
does not know raises `ValueError` naming it, so whoever reads rules this way (the
dispatch tree reader in `felix.rules.dispatch`, the chain evaluator in
`felix.rules.evaluate`) can never skip a match silently. A test parses every rule felix
renders; a new kind of match in felix's filter chains must be added here.

Leaves to others: what the criteria mean for a packet (`felix.rules.evaluate`), writing
the strings (the other `felix.rules` modules). Pure.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from functools import lru_cache

from libcalico.model.rules import PROTOCOLS

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PortRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Interface:
    """`-i NAME` (`inbound`) or `-o NAME`; a trailing `+` matches any name with the prefix."""

    inbound: bool
    name: str
    negate: bool = False


@dataclass(frozen=True)
class Protocol:
    number: int
    negate: bool = False


@dataclass(frozen=True)
class Net:
    """`-s NET` (`source`) or `-d NET`."""

    source: bool
    net: IPNetwork
    negate: bool = False


@dataclass(frozen=True)
class AddressRange:
    """`-m iprange --src-range LO-HI` (`source`) or `--dst-range`."""

    source: bool
    lo: IPAddress
    hi: IPAddress
    negate: bool = False


@dataclass(frozen=True)
class ConnState:
    states: frozenset[str]
    negate: bool = False


@dataclass(frozen=True)
class SetMatch:
    """`-m set --match-set NAME src|dst` (one direction: felix's sets are single-field)."""

    name: str
    source: bool
    negate: bool = False


@dataclass(frozen=True)
class Ports:
    """`-m multiport --sports/--dports LIST` or `-m tcp|udp --sport/--dport P[:Q]`."""

    source: bool
    ranges: PortRanges
    negate: bool = False


@dataclass(frozen=True)
class IcmpType:
    """`-m icmp --icmp-type T[/C]` (version 4) or `-m icmp6 --icmpv6-type T[/C]` (6)."""

    version: int
    type: int
    code: int | None
    negate: bool = False


@dataclass(frozen=True)
class MarkMatch:
    """`-m mark --mark VALUE/MASK`: (mark & MASK) == VALUE."""

    value: int
    mask: int
    negate: bool = False


@dataclass(frozen=True)
class MacSource:
    mac: str
    negate: bool = False


Criterion = (Interface | Protocol | Net | AddressRange | ConnState | SetMatch | Ports
             | IcmpType | MarkMatch | MacSource)

TERMINAL = ("ACCEPT", "DROP", "REJECT")
BUILTIN_TARGETS = (*TERMINAL, "RETURN", "LOG", "MARK", "MASQUERADE")


@dataclass(frozen=True)
class Action:
    """`kind`: ACCEPT, DROP, REJECT, RETURN, LOG, MARK, MASQUERADE, or "jump"/"goto" to
    `target`. MARK sets `(mark & ~mark_mask) ^ mark_value` (--set-xmark)."""

    kind: str
    target: str | None = None
    mark_value: int = 0
    mark_mask: int = 0
    log_prefix: str | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL


PROTOCOL_NUMBERS = {**PROTOCOLS, "ipv6-icmp": 58, "icmp6": 58, "all": 0}
_ICMP_MODULES = {"icmp": (4, "--icmp-type"), "icmp6": (6, "--icmpv6-type")}


class _Tokens:
    def __init__(self, text: str) -> None:
        self.items = shlex.split(text)
        self.pos = 0
        self.text = text

    def more(self) -> bool:
        return self.pos < len(self.items)

    def peek(self) -> str:
        return self.items[self.pos] if self.more() else ""

    def take(self, what: str) -> str:
        if not self.more():
            raise ValueError(f"{self.text!r}: {what} missing at the end")
        self.pos += 1
        return self.items[self.pos - 1]

    def bang(self) -> bool:
        if self.peek() == "!":
            self.pos += 1
            return True
        return False


def _protocol(text: str) -> int:
    low = text.lower()
    if low in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[low]
    if low.isdigit() and 0 <= int(low) <= 255:
        return int(low)
    raise ValueError(f"unknown protocol {text!r}")


def _port_ranges(text: str) -> PortRanges:
    out = []
    for part in text.split(","):
        lo, sep, hi = part.partition(":")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad port {part!r}")
        out.append((int(lo), int(hi) if sep else int(lo)))
    return tuple(out)


def _icmp(text: str, version: int, negate: bool) -> IcmpType:
    typ, sep, code = text.partition("/")
    if not typ.isdigit() or (sep and not code.isdigit()):
        raise ValueError(f"bad ICMP type {text!r}")
    return IcmpType(version, int(typ), int(code) if sep else None, negate)


def _mark(text: str) -> tuple[int, int]:
    value, sep, mask = text.partition("/")
    return int(value, 0), int(mask, 0) if sep else 0xFFFFFFFF


def _module(tokens: _Tokens, module: str, out: list[Criterion]) -> None:
    """The options of one `-m MODULE` (each optionally negated with a leading `!`)."""
    seen = False
    while tokens.more():
        start = tokens.pos
        neg = tokens.bang()
        opt = tokens.peek()
        if not opt.startswith("--"):
            tokens.pos = start
            break
        tokens.take(opt)
        seen = True
        if module == "conntrack" and opt == "--ctstate":
            out.append(ConnState(frozenset(tokens.take(opt).split(",")), neg))
        elif module == "set" and opt == "--match-set":
            name = tokens.take(opt)
            dirs = tokens.take(opt)
            if dirs not in ("src", "dst"):
                raise ValueError(f"unsupported set directions {dirs!r}")
            out.append(SetMatch(name, dirs == "src", neg))
        elif module == "multiport" and opt in ("--sports", "--dports"):
            out.append(Ports(opt == "--sports", _port_ranges(tokens.take(opt)), neg))
        elif module in ("tcp", "udp") and opt in ("--sport", "--dport"):
            out.append(Ports(opt == "--sport", _port_ranges(tokens.take(opt)), neg))
        elif module in _ICMP_MODULES and opt == _ICMP_MODULES[module][1]:
            out.append(_icmp(tokens.take(opt), _ICMP_MODULES[module][0], neg))
        elif module == "mark" and opt == "--mark":
            out.append(MarkMatch(*_mark(tokens.take(opt)), neg))
        elif module == "mac" and opt == "--mac-source":
            out.append(MacSource(tokens.take(opt).lower(), neg))
        elif module == "iprange" and opt in ("--src-range", "--dst-range"):
            lo, sep, hi = tokens.take(opt).partition("-")
            if not sep:
                raise ValueError(f"bad address range in {tokens.text!r}")
            out.append(AddressRange(opt == "--src-range", ipaddress.ip_address(lo),
                                    ipaddress.ip_address(hi), neg))
        else:
            raise ValueError(f"unknown option {opt} of -m {module} in {tokens.text!r}")
    if not seen:
        raise ValueError(f"-m {module} without options in {tokens.text!r}")


@lru_cache(maxsize=4096)
def parse_match(text: str) -> tuple[Criterion, ...]:
    """The criteria of one rule's match string (all must hold); strict."""
    tokens = _Tokens(text)
    out: list[Criterion] = []
    while tokens.more():
        neg = tokens.bang()
        opt = tokens.take("an option")
        if opt in ("-i", "-o"):
            out.append(Interface(opt == "-i", tokens.take(opt), neg))
        elif opt == "-p":
            out.append(Protocol(_protocol(tokens.take(opt)), neg))
        elif opt in ("-s", "-d"):
            out.append(Net(opt == "-s", ipaddress.ip_network(tokens.take(opt), strict=False),
                           neg))
        elif opt == "-m" and not neg:
            _module(tokens, tokens.take(opt), out)
        elif opt in ("--sport", "--dport") and any(
                isinstance(c, Protocol) and not c.negate and c.number in (6, 17) for c in out):
            # `-p tcp --dport N`: iptables loads the protocol's match module implicitly
            out.append(Ports(opt == "--sport", _port_ranges(tokens.take(opt)), neg))
        else:
            raise ValueError(f"unknown match option {opt!r} in {text!r}")
    return tuple(out)


@lru_cache(maxsize=4096)
def parse_action(text: str) -> Action:
    """One rule's action string (`-j TARGET ...` or `-g CHAIN`); strict."""
    tokens = _Tokens(text)
    flag = tokens.take("-j or -g")
    if flag not in ("-j", "-g"):
        raise ValueError(f"an action starts with -j or -g, not {flag!r} ({text!r})")
    target = tokens.take("a target")
    action: Action
    if flag == "-g":
        action = Action("goto", target)
    elif target == "MARK":
        if tokens.take("--set-xmark") != "--set-xmark":
            raise ValueError(f"unsupported MARK option in {text!r}")
        value, mask = _mark(tokens.take("a mark"))
        action = Action("MARK", mark_value=value, mark_mask=mask)
    elif target == "LOG":
        prefix = None
        while tokens.more():
            opt = tokens.take("an option")
            if opt == "--log-prefix":
                prefix = tokens.take(opt)
            elif opt == "--log-level":
                tokens.take(opt)
            else:
                raise ValueError(f"unsupported LOG option {opt!r} in {text!r}")
        action = Action("LOG", log_prefix=prefix)
    elif target in BUILTIN_TARGETS:
        action = Action(target)
    else:
        action = Action("jump", target)
    if tokens.more():
        raise ValueError(f"unexpected {tokens.peek()!r} in action {text!r}")
    return action
