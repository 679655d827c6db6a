"""Translation of one model rule (`libcalico.model.rules.Rule`) into iptables matches.

Owns: the mapping of every match field, negations included, to iptables arguments:
protocol (`-p` / `! -p`), nets (`-s`/`-d`; a negated net next to a positive one becomes
`-m iprange ! --src-range`, since iptables allows one `-s` per rule), tags and selectors
(`-m set [!] --match-set felix-v<N>-<id> src|dst`), ports (`-m multiport`, at most 15
entries per match, a range counting 2: positive lists are split over several rules,
negated lists become several `! --dports` matches in the same rule), ICMP type/code
(`-m icmp --icmp-type T[/C]`, `-m icmp6 --icmpv6-type T[/C]`, negated as one combined
match), and the log action's `--log-prefix`.

Leaves to others: verdicts and marks (`felix.rules.policy`), which ipsets exist
(`felix.calc`). Pure: returns strings, performs no I/O.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Sequence

from felix.rules.names import selector_ipset, tag_ipset
from libcalico.model.rules import PortRange, Rule
from libcalico.model.selector import parse_selector

MAX_MULTIPORT_ENTRIES = 15
DEFAULT_LOG_PREFIX = "calico-packet"


def split_ports(ports: Sequence[PortRange]) -> list[list[PortRange]]:
    """Chunks of at most 15 multiport entries (a range counts as 2)."""
    chunks: list[list[PortRange]] = []
    current: list[PortRange] = []
    used = 0
    for port in ports:
        cost = 1 if port.lo == port.hi else 2
        if used + cost > MAX_MULTIPORT_ENTRIES:
            chunks.append(current)
            current, used = [], 0
        current.append(port)
        used += cost
    if current:
        chunks.append(current)
    return chunks


def _port_list(ports: Sequence[PortRange]) -> str:
    return ",".join(str(p.lo) if p.lo == p.hi else f"{p.lo}:{p.hi}" for p in ports)


def _net_range(net: str) -> str:
    n = ipaddress.ip_network(net)
    return f"{n.network_address}-{n.broadcast_address}"


def _proto(value: str | int) -> str:
    return str(value)


def rule_applies(rule: Rule, version: int) -> bool:
    """False when the rule only makes sense for the other IP version."""
    v = rule.ip_version
    return v is None or v == version


def render_matches(rule: Rule, version: int) -> list[str]:
    """The match strings for `rule` in the `version` table: one per emitted iptables
    rule (more than one when a positive port list needed splitting); [] when the rule
    does not apply to this IP version."""
    if not rule_applies(rule, version):
        return []
    common: list[str] = []
    if rule.protocol is not None:
        common.append(f"-p {_proto(rule.protocol)}")
    if rule.not_protocol is not None:
        common.append(f"! -p {_proto(rule.not_protocol)}")
    for side, flag, direction in (("src", "-s", "src"), ("dst", "-d", "dst")):
        net = getattr(rule, f"{side}_net")
        not_net = getattr(rule, f"not_{side}_net")
        if net is not None:
            common.append(f"{flag} {net}")
        if not_net is not None:
            if net is None:
                common.append(f"! {flag} {not_net}")
            else:
                common.append(f"-m iprange ! --{side}-range {_net_range(not_net)}")
        for neg in ("", "not_"):
            bang = "! " if neg else ""
            tag = getattr(rule, f"{neg}{side}_tag")
            if tag is not None:
                common.append(f"-m set {bang}--match-set {tag_ipset(tag, version)} {direction}")
            sel = getattr(rule, f"{neg}{side}_selector")
            if sel is not None:
                name = selector_ipset(parse_selector(sel).unique_id, version)
                common.append(f"-m set {bang}--match-set {name} {direction}")
    for side, opt in (("src", "--sports"), ("dst", "--dports")):
        for chunk in split_ports(getattr(rule, f"not_{side}_ports")):
            common.append(f"-m multiport ! {opt} {_port_list(chunk)}")
    if rule.protocol in ("icmpv6", 58):
        icmp_module, icmp_opt = "-m icmp6", "--icmpv6-type"
    else:
        icmp_module, icmp_opt = "-m icmp", "--icmp-type"
    if rule.icmp_type is not None:
        code = f"/{rule.icmp_code}" if rule.icmp_code is not None else ""
        common.append(f"{icmp_module} {icmp_opt} {rule.icmp_type}{code}")
    if rule.not_icmp_type is not None:
        code = f"/{rule.not_icmp_code}" if rule.not_icmp_code is not None else ""
        common.append(f"{icmp_module} ! {icmp_opt} {rule.not_icmp_type}{code}")
    # Positive port lists: OR semantics, so each chunk combination is its own rule.
    src_chunks = [f"-m multiport --sports {_port_list(c)}" for c in split_ports(rule.src_ports)]
    dst_chunks = [f"-m multiport --dports {_port_list(c)}" for c in split_ports(rule.dst_ports)]
    out = []
    for src, dst in itertools.product(src_chunks or [""], dst_chunks or [""]):
        out.append(" ".join(p for p in (*common, src, dst) if p))
    return out


def log_action(rule: Rule) -> str:
    prefix = rule.log_prefix or DEFAULT_LOG_PREFIX
    return f'-j LOG --log-prefix "{prefix}: " --log-level 5'
