"""Profile, policy and endpoint chains as `Chain` values.

Owns the verdict protocol between chains (as Felix 1.x, with mark bits from
`names.Marks`):
  - a rule that allows sets the accept mark; the chain then RETURNs;
  - a deny DROPs at once; a log rule LOGs and goes on;
  - next-tier in a policy sets the pass mark and RETURNs (in a profile it is an allow);
  - a chain that matches nothing RETURNs with the marks clear.
An endpoint chain clears the marks, (outbound) drops spoofed sources and IPv6 router
advertisements/redirects, then walks its tiers: per tier it calls each matching policy
while the pass mark is clear, RETURNs as soon as the accept mark is set, and drops when
the tier had policies but none acted; then it calls its profiles in order, RETURNing on
accept; anything left is dropped. The caller (dispatch, felix-FORWARD/INPUT) accepts
what returned. A host endpoint's chains hold only its tiers and profiles: the failsafe
ports come before them, in the host dispatch chains (`felix.rules.dispatch`), so that the
same chains also police forwarded traffic, where failsafe ports do not apply.

The comments of the rules that decide a verdict are fixed here (`COMMENT_*`, `rule_comment`
and its reader `rule_index`): they name the model rule, tier or check a rule stands for,
in the kernel (`iptables-save`) and for `felix.trace`.

Leaves to others: which policies apply to an endpoint and in what order (`felix.calc`),
rule match translation (`felix.rules.match`), dispatch (`felix.rules.dispatch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from felix.dataplane.types import Chain, Rule
from felix.rules.match import log_action, render_matches
from felix.rules.names import (
    Marks,
    from_endpoint_chain,
    from_host_endpoint_chain,
    mark_match,
    policy_chain,
    profile_chain,
    set_mark,
    to_endpoint_chain,
    to_host_endpoint_chain,
)
from libcalico.model.rules import Rule as ModelRule

DROP = "-j DROP"
RETURN = "-j RETURN"

# Comments of the rules that decide (or start) a verdict.
COMMENT_TIER = "tier {tier}"
COMMENT_END_OF_TIER = "end of tier {tier}"
COMMENT_NO_POLICY_ACCEPTED = "no policy or profile accepted"
COMMENT_NO_ADDRESSES = "no addresses of this IP version"
COMMENT_SPOOFED_MAC = "anti-spoofing: source MAC"
COMMENT_SPOOFED_ADDRESS = "anti-spoofing: source address"
COMMENT_NO_RULES = "no rules"  # the stub chain of a profile felix has no rules for


def rule_comment(index: int, action: str) -> str:
    """The comment of the iptables rules rendered from model rule `index`."""
    return f"rule {index}: {action}"


def rule_index(comment: str) -> int | None:
    """The model rule index a `rule_comment` names; None for any other comment."""
    head, sep, _ = comment.partition(":")
    word, _, number = head.partition(" ")
    return int(number) if sep and word == "rule" and number.isdigit() else None


def render_rule_list(name: str, rules: Sequence[ModelRule], version: int, marks: Marks,
                     is_policy: bool) -> Chain:
    """One profile or policy chain from its ordered model rules."""
    out: list[Rule] = []
    accept_return = Rule(mark_match(marks.accept), RETURN)
    pass_return = Rule(mark_match(marks.pass_), RETURN)
    for index, rule in enumerate(rules):
        matches = render_matches(rule, version)
        if not matches:
            continue
        comment = rule_comment(index, rule.action)
        if rule.action == "deny":
            out.extend(Rule(m, DROP, comment) for m in matches)
        elif rule.action == "log":
            out.extend(Rule(m, log_action(rule), comment) for m in matches)
        elif rule.action == "next-tier" and is_policy:
            out.extend(Rule(m, set_mark(marks.pass_), comment) for m in matches)
            out.append(pass_return)
        else:  # allow (and next-tier in a profile)
            out.extend(Rule(m, set_mark(marks.accept), comment) for m in matches)
            out.append(accept_return)
    return Chain(name, tuple(out))


def render_profile_chains(profile_id: str, inbound: Sequence[ModelRule],
                          outbound: Sequence[ModelRule], version: int,
                          marks: Marks) -> tuple[Chain, Chain]:
    return (render_rule_list(profile_chain(profile_id, True), inbound, version, marks, False),
            render_rule_list(profile_chain(profile_id, False), outbound, version, marks, False))


def render_policy_chains(tier: str, policy: str, inbound: Sequence[ModelRule],
                         outbound: Sequence[ModelRule], version: int,
                         marks: Marks) -> tuple[Chain, Chain]:
    return (render_rule_list(policy_chain(tier, policy, True), inbound, version, marks, True),
            render_rule_list(policy_chain(tier, policy, False), outbound, version, marks, True))


@dataclass(frozen=True)
class TierPolicies:
    """A tier as it applies to one endpoint: its name and its matching policies, in order."""

    tier: str
    policies: tuple[str, ...]


@dataclass(frozen=True)
class EndpointSpec:
    """What the endpoint chains of one (workload or host) endpoint depend on."""

    ifname: str
    suffix: str  # interface name without the workload prefix (workloads only)
    addrs_v4: tuple[str, ...] = ()  # CIDRs (/32) the endpoint may send from
    addrs_v6: tuple[str, ...] = ()
    mac: str | None = None
    tiers: tuple[TierPolicies, ...] = ()
    profile_ids: tuple[str, ...] = ()
    host_endpoint: bool = False


def _policy_rules(spec: EndpointSpec, inbound: bool, marks: Marks) -> list[Rule]:
    out: list[Rule] = []
    accept_return = Rule(mark_match(marks.accept), RETURN)
    for tier in spec.tiers:
        if not tier.policies:
            continue
        out.append(Rule("", set_mark(marks.pass_, 0), COMMENT_TIER.format(tier=tier.tier)))
        for policy in tier.policies:
            target = policy_chain(tier.tier, policy, inbound)
            out.append(Rule(mark_match(marks.pass_, 0), f"-j {target}"))
            out.append(accept_return)
        out.append(Rule(mark_match(marks.pass_, 0), DROP,
                        COMMENT_END_OF_TIER.format(tier=tier.tier)))
    for profile_id in spec.profile_ids:
        out.append(Rule("", f"-j {profile_chain(profile_id, inbound)}"))
        out.append(accept_return)
    out.append(Rule("", DROP, COMMENT_NO_POLICY_ACCEPTED))
    return out


def render_endpoint_chains(spec: EndpointSpec, version: int,
                           marks: Marks) -> tuple[Chain, Chain]:
    """(from-endpoint chain, to-endpoint chain) for one endpoint in one IP version."""
    if spec.host_endpoint:
        from_name = from_host_endpoint_chain(spec.ifname)
        to_name = to_host_endpoint_chain(spec.ifname)
    else:
        from_name = from_endpoint_chain(spec.suffix)
        to_name = to_endpoint_chain(spec.suffix)
    addrs = spec.addrs_v4 if version == 4 else spec.addrs_v6
    clear = Rule("", set_mark(marks.all, 0))
    if not addrs and not spec.host_endpoint:
        # No address of this version: nothing may flow in this version.
        return (Chain(from_name, (Rule("", DROP, COMMENT_NO_ADDRESSES),)),
                Chain(to_name, (Rule("", DROP, COMMENT_NO_ADDRESSES),)))
    outbound: list[Rule] = [clear]
    if not spec.host_endpoint:
        if version == 6:
            for icmp_type, what in ((134, "router advertisement"), (137, "redirect")):
                outbound.append(Rule(f"-p icmpv6 -m icmp6 --icmpv6-type {icmp_type}", DROP,
                                     f"no {what} from workloads"))
        if spec.mac:
            outbound.append(Rule(f"-m mac ! --mac-source {spec.mac}", DROP,
                                 COMMENT_SPOOFED_MAC))
        if len(addrs) == 1:
            outbound.append(Rule(f"! -s {addrs[0]}", DROP, COMMENT_SPOOFED_ADDRESS))
        else:
            outbound.extend(Rule(f"-s {a}", set_mark(marks.scratch)) for a in addrs)
            outbound.append(Rule(mark_match(marks.scratch, 0), DROP,
                                 COMMENT_SPOOFED_ADDRESS))
    if spec.host_endpoint:
        # Traffic arriving from a host interface (into the host, or forwarded in through
        # it) meets the host endpoint's inbound policy; traffic leaving through it, its
        # outbound policy. The failsafe ports are the dispatch chains' business.
        into_host = [clear, *_policy_rules(spec, True, marks)]
        out_of_host = [clear, *_policy_rules(spec, False, marks)]
        return Chain(from_name, tuple(into_host)), Chain(to_name, tuple(out_of_host))
    outbound.extend(_policy_rules(spec, False, marks))
    inbound = [clear, *_policy_rules(spec, True, marks)]
    return Chain(from_name, tuple(outbound)), Chain(to_name, tuple(inbound))
