"""Active rules: the chains of the profiles and policies in use, and ipset reference counts.
Pure.

Owns: the rules of every profile and policy as last seen; which of them are active (in
use by a local endpoint, as the policy resolver says through `set_active`); the chain
names rendered for each active source; for each source the tag and selector sets its
rules use, and for each set the sources that refer to it - a set is active in the
`MembershipIndex` exactly while some active source refers to it, so only sets that a
rendered chain matches on become ipsets. An active profile without rules (not known
yet, or only tags/labels) gets stub chains that drop, as Felix 1.x did for missing
dependencies, so endpoint chains never jump to a missing chain.

Batching: inputs only record and mark sources dirty; `flush()` renders each dirty
source once, then the ipsets whose members or activity changed, into the recorder.

Leaves to others: which sources are active (`felix.calc.policy_resolver`), set members
(`felix.calc.membership`), chain and set names (`felix.rules.names`), rule rendering
(`felix.rules.policy`), recording (`felix.calc.recorder`).
"""

from __future__ import annotations

from collections.abc import Sequence

from felix.calc.membership import MembershipIndex, SetId
from felix.calc.recorder import ChangeRecorder
from felix.calc.types import PolicyId, Source
from felix.dataplane.types import Chain, IPSetState, Rule
from felix.rules.names import Marks, profile_chain, selector_ipset, tag_ipset
from felix.rules.policy import COMMENT_NO_RULES, render_policy_chains, render_profile_chains
from libcalico.model import Policy
from libcalico.model.rules import Rules
from libcalico.model.selector import parse_selector


def sets_used(rules: Rules) -> frozenset[SetId]:
    """The tag and selector sets that `rules` match on."""
    return frozenset({SetId("tag", t) for t in rules.tags_used()}
                     | {SetId("sel", s.canonical) for s in rules.selectors_used()})


class ActiveRules:
    """See the module docstring. State fields: `_profile_rules`, `_policies` (inputs);
    `_active` (sources in use); `_dirty` (sources to render next flush);
    `_source_chains` (source -> chain names it rendered); `_source_sets` (source -> sets
    its rules use) and `_set_refs` (set -> active sources using it)."""

    def __init__(self, versions: Sequence[int], marks: Marks, recorder: ChangeRecorder,
                 membership: MembershipIndex) -> None:
        self.versions = tuple(versions)
        self.marks = marks
        self.recorder = recorder
        self.membership = membership
        self._filters = tuple((v, "filter") for v in self.versions)
        self._profile_rules: dict[str, Rules] = {}
        self._policies: dict[PolicyId, Policy] = {}
        self._active: set[Source] = set()
        self._dirty: set[Source] = set()
        self._source_chains: dict[Source, tuple[str, ...]] = {}
        self._source_sets: dict[Source, frozenset[SetId]] = {}
        self._set_refs: dict[SetId, set[Source]] = {}

    # ---- inputs ------------------------------------------------------------------------

    def on_profile_rules(self, name: str, rules: Rules | None) -> None:
        if self._profile_rules.get(name) == rules and (rules is not None
                                                       or name not in self._profile_rules):
            return
        if rules is None:
            self._profile_rules.pop(name, None)
        else:
            self._profile_rules[name] = rules
        self._dirty.add(("profile", name))

    def on_policy(self, pid: PolicyId, policy: Policy | None) -> None:
        if self._policies.get(pid) == policy:
            return
        if policy is None:
            del self._policies[pid]
        else:
            self._policies[pid] = policy
        self._dirty.add(("policy", pid))

    def set_active(self, source: Source, active: bool) -> None:
        """The policy resolver's verdict: `source` is (no longer) used by a local endpoint."""
        if active:
            self._active.add(source)
        else:
            self._active.discard(source)
        self._dirty.add(source)

    # ---- flush -------------------------------------------------------------------------

    def flush(self) -> None:
        """Render every dirty source, then every ipset whose members or activity changed."""
        while self._dirty:
            self._render_source(self._dirty.pop())
        self._render_ipsets()

    def _render_source(self, source: Source) -> None:
        kind, ident = source
        chains: list[tuple[int, Chain]] = []
        sets: frozenset[SetId] = frozenset()
        if source in self._active and kind == "profile":
            rules = self._profile_rules.get(ident)
            if rules is None:
                for version in self.versions:
                    for inbound in (True, False):
                        chains.append((version, Chain(profile_chain(ident, inbound),
                                                      (Rule("", "-j DROP", COMMENT_NO_RULES),))))
            else:
                sets = sets_used(rules)
                for version in self.versions:
                    for chain in render_profile_chains(ident, rules.inbound, rules.outbound,
                                                       version, self.marks):
                        chains.append((version, chain))
        elif source in self._active and ident in self._policies:
            pol = self._policies[ident]
            sets = sets_used(pol.rules)
            for version in self.versions:
                for chain in render_policy_chains(ident[0], ident[1], pol.inbound_rules,
                                                  pol.outbound_rules, version, self.marks):
                    chains.append((version, chain))
        new_names = tuple(sorted({c.name for _, c in chains}))
        for name in set(self._source_chains.get(source, ())) - set(new_names):
            for table in self._filters:
                self.recorder.remove_chain(table, name)
        for version, chain in chains:
            self.recorder.set_chain((version, "filter"), chain)
        if new_names:
            self._source_chains[source] = new_names
        else:
            self._source_chains.pop(source, None)
        self._set_source_sets(source, sets)

    def _set_source_sets(self, source: Source, sets: frozenset[SetId]) -> None:
        old = self._source_sets.get(source, frozenset())
        if old == sets:
            return
        for set_id in old - sets:
            refs = self._set_refs[set_id]
            refs.discard(source)
            if not refs:
                del self._set_refs[set_id]
                self.membership.set_active(set_id, False)
        for set_id in sets - old:
            refs = self._set_refs.setdefault(set_id, set())
            if not refs:
                self.membership.set_active(set_id, True)
            refs.add(source)
        if sets:
            self._source_sets[source] = sets
        else:
            self._source_sets.pop(source, None)

    def _render_ipsets(self) -> None:
        """A set that became active or inactive is set (removed) whole; any other by the
        members that changed, so a remote endpoint's change costs the same in a set of
        10 or of 100,000 (see `felix.calc.membership`)."""
        for set_id, delta in self.membership.take_changes().items():
            for version in self.versions:
                name = (tag_ipset(set_id.value, version) if set_id.kind == "tag" else
                        selector_ipset(parse_selector(set_id.value).unique_id, version))
                if not self.membership.is_active(set_id):
                    self.recorder.remove_ipset(name, version)
                elif delta is None:
                    self.recorder.set_ipset(IPSetState(name, version, "hash:ip",
                                                       self.membership.members(set_id, version)))
                else:
                    self.recorder.update_ipset(name, version, *delta.for_version(version))
