"""One host's dataplane as felix would program it for a traced flow.

Owns: `HostView` - felix's own calculation (`felix.calc.graph.CalcGraph`: parse,
PolicyResolver, ActiveRules, MembershipIndex, EndpointCalculator, then the rules of
`felix.rules`) fed with the part of a `Snapshot` the flow depends on, and what it
yields: the filter chains, base jumps and ipsets of the host, and which policy or
profile each policy/profile chain renders.

What is fed, and why that is enough:
  - the host's felix configuration from etcd (global, then per host) over the defaults
    (a host's config file and environment are not visible from here);
  - every tier, and every policy whose selector matches one of the host's endpoints fed
    here (felix's resolver activates no other policy for them; a policy that is not well
    formed enough to tell is fed too, for felix's parser to judge);
  - the host's host endpoints, and of its workload endpoints those the flow runs
    through, with any others claiming the same interfaces (felix resolves such clashes);
    the endpoint and policy chains of an endpoint depend only on it and the policies,
    so they come out exactly as felix renders them; the dispatch trees list only these
    interfaces (on the host they list all, and lead each to the same chain);
  - for ipset members, every endpoint of the cluster that holds one of the flow's
    addresses: a set holds an address exactly when such an endpoint matches it, so
    each set answers exactly for the flow's addresses (and holds no others);
  - the rules, tags and labels of the profiles those endpoints use;
  - the pools (their encapsulations decide felix's rules for VXLAN / IP-in-IP between
    cluster hosts) and, while one is encapsulated, the BGP address of every node
    registered with one of the flow's addresses: felix's all-hosts set then answers
    exactly for the flow's addresses, as the other sets do.

Leaves to others: the calculation and the rules themselves (`felix.calc`,
`felix.rules`), walking the chains (`felix.rules.evaluate`), choosing endpoints
(`felix.trace.places`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from felix.calc.graph import CalcGraph, CalcSettings
from felix.calc.membership import effective_labels
from felix.calc.parse import parse_update
from felix.config import Config, load_config
from felix.dataplane.types import Chain, IPSetState, Rule
from felix.rules.names import Marks, policy_chain, profile_chain
from felix.trace.snapshot import Record, Snapshot
from libcalico import keyspace
from libcalico.model.selector import parse_selector


@dataclass(frozen=True)
class RuleSource:
    """What a policy or profile chain renders: `kind` "policy" (with `tier`) or
    "profile", its name, the direction, and the etcd key holding its rules."""

    kind: str
    name: str
    inbound: bool
    key: str
    tier: str | None = None

    def describe(self) -> str:
        what = f"tier {self.tier}, policy {self.name}" if self.kind == "policy" else \
            f"profile {self.name}"
        return f"{what}, {'inbound' if self.inbound else 'outbound'}"

    def rule_text(self, snapshot: Snapshot, index: int) -> str | None:
        """The model rule `index` in calicoctl's words, as felix parsed it."""
        raw = snapshot.policy_value(self.key)
        parsed = parse_update(self.key, raw) if raw is not None else None
        if parsed is None or parsed.value is None:
            return None
        value: Any = parsed.value
        rules = (value.inbound_rules if self.inbound else value.outbound_rules) \
            if self.kind == "policy" else (value.inbound if self.inbound else value.outbound)
        return rules[index].pprint() if 0 <= index < len(rules) else None


@dataclass
class HostView:
    """The calculated dataplane of one host (see the module docstring)."""

    hostname: str
    config: Config
    settings: CalcSettings
    marks: Marks
    chains: Mapping[tuple[int, str], Mapping[str, Chain]]
    base_jumps: Mapping[tuple[int, str], Mapping[str, tuple[Rule, ...]]]
    ipsets: Mapping[str, IPSetState]
    sources: Mapping[str, RuleSource]

    @property
    def versions(self) -> tuple[int, ...]:
        return (4, 6) if self.settings.ipv6 else (4,)


def host_config(snapshot: Snapshot, hostname: str) -> Config:
    """felix's configuration of `hostname` as etcd holds it (defaults < global < host)."""
    return load_config(file_values={}, env={"FELIX_FELIXHOSTNAME": hostname},
                       etcd_global=snapshot.global_config,
                       etcd_host=snapshot.host_config(hostname))


def build_view(snapshot: Snapshot, hostname: str, local: Iterable[Record],
               members: Iterable[Record], addresses: Iterable[str] = ()) -> HostView:
    """Run felix's calculation for `hostname` over the relevant part of `snapshot`:
    `local` are the host's endpoints the flow runs through (host endpoints of the host
    are added here), `members` the endpoints anywhere holding the flow's addresses,
    `addresses` the flow's addresses (for the nodes registered with them)."""
    config = host_config(snapshot, hostname)
    ipv6 = True if config.Ipv6Support is None else bool(config.Ipv6Support)
    settings = dataclasses.replace(CalcSettings.from_config(config, ipv6), hostname=hostname)
    graph = CalcGraph(settings)
    endpoints: dict[str, Record] = {}
    for rec in [*snapshot.host_endpoints(hostname), *local, *members]:
        endpoints[rec.key] = rec
    profiles = {p for rec in endpoints.values() if rec.model is not None
                for p in rec.model.profile_ids}
    sources: dict[str, RuleSource] = {}
    profile_items = snapshot.profile_items(profiles)
    local_labels = _local_labels(hostname, endpoints.values(), profile_items)
    for key, value in snapshot.tier_and_policy_items():
        parsed = keyspace.parse_key(key)
        if isinstance(parsed, keyspace.PolicyKey):
            if not _may_select(value, local_labels):
                continue
            for inbound in (True, False):
                sources[policy_chain(parsed.tier, parsed.name, inbound)] = RuleSource(
                    "policy", parsed.name, inbound, key, parsed.tier)
        graph.on_update(key, value)
    for key, value in profile_items:
        graph.on_update(key, value)
    for name in profiles:
        for inbound in (True, False):
            sources[profile_chain(name, inbound)] = RuleSource(
                "profile", name, inbound, keyspace.profile_key(name, "rules"))
    for rec in endpoints.values():
        graph.on_update(rec.key, rec.raw)
    graph.on_updates(snapshot.pool_items)
    if graph.tunnels.encapsulations:
        graph.on_updates(snapshot.node_address_items(addresses))
    graph.flush()
    state = graph.desired_state()
    return HostView(hostname, config, settings, graph.marks, state.chains, state.base_jumps,
                    state.ipsets, sources)


def _local_labels(hostname: str, records: Iterable[Record],
                  profile_items: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """The selector labels of the host's endpoints among `records` (their own labels over
    their profiles', as felix's resolver sees them)."""
    profile_labels: dict[str, Mapping[str, str]] = {}
    for key, value in profile_items:
        parsed = parse_update(key, value)
        if parsed is not None and parsed.key.part == "labels" and parsed.value:
            profile_labels[parsed.key.name] = parsed.value
    return [effective_labels(profile_labels, r.model.labels, r.model.profile_ids)
            for r in records if r.model is not None and r.parsed.hostname == hostname]


def _may_select(value: str, local_labels: list[dict[str, str]]) -> bool:
    """False only for a policy whose selector matches none of `local_labels`."""
    try:
        data = json.loads(value)
        selector = parse_selector(data.get("selector", "") or "")
    except (ValueError, AttributeError, TypeError):
        return True
    return any(selector.evaluate(labels) for labels in local_labels)
