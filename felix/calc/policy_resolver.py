"""Policy resolution: which tiers, policies and profiles apply to each local endpoint. Pure.

Owns: the tiers, the policies (selector and order), the labels and profile ids of each
local endpoint (workload or host endpoint of this host) and the profiles' labels (which
endpoints inherit); the index between policies and the local endpoints their selector
matches; and which local endpoints use each profile. Work is proportional to what
changed: an endpoint's labels or profiles changing re-evaluates every policy for that
one endpoint; a policy's selector changing re-evaluates that policy for every local
endpoint; a profile's labels changing re-evaluates the endpoints that use the profile.

Tells others through the two callbacks given to the constructor (Go Felix's active
rules calculator and policy resolver play these roles):
  - `on_active(source, active)`: a profile or policy became used / no longer used by any
    local endpoint (`felix.calc.active_rules` renders only active sources);
  - `on_endpoint_dirty(key)`: an endpoint's ordered tiers may have changed
    (`felix.calc.endpoints` renders its chains again);
and answers `tiers_for(key)`: the endpoint's tiers in order, each with its matching
policies in order.

Leaves to others: the rules of policies and profiles (`felix.calc.active_rules`), ipset
members (`felix.calc.membership`), rendering (`felix.calc.endpoints`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from felix.calc.membership import effective_labels
from felix.calc.types import EpKey, PolicyId, Source
from felix.rules.policy import TierPolicies
from libcalico.model import Policy, Tier
from libcalico.model.policy import policy_sort_key
from libcalico.model.selector import parse_selector

EndpointLabels = tuple[Mapping[str, str], tuple[str, ...]]  # (own labels, profile ids)


class PolicyResolver:
    """See the module docstring. State fields: `_endpoints` (local endpoint -> labels and
    profile ids), `_profile_labels`, `_tiers`, `_policies`, `_tier_policies` (tier ->
    its policies); `_ep_policies`/`_policy_eps` (the match index, both ways);
    `_profile_users` (profile -> local endpoints using it)."""

    def __init__(self, on_active: Callable[[Source, bool], None],
                 on_endpoint_dirty: Callable[[EpKey], None]) -> None:
        self._on_active = on_active
        self._on_endpoint_dirty = on_endpoint_dirty
        self._endpoints: dict[EpKey, EndpointLabels] = {}
        self._profile_labels: dict[str, Mapping[str, str]] = {}
        self._tiers: dict[str, Tier] = {}
        self._policies: dict[PolicyId, Policy] = {}
        self._tier_policies: dict[str, set[PolicyId]] = {}
        self._ep_policies: dict[EpKey, frozenset[PolicyId]] = {}
        self._policy_eps: dict[PolicyId, set[EpKey]] = {}
        self._profile_users: dict[str, set[EpKey]] = {}

    # ---- inputs ------------------------------------------------------------------------

    def on_endpoint(self, key: EpKey, labels: Mapping[str, str] | None,
                    profile_ids: tuple[str, ...] = ()) -> None:
        """A local endpoint's labels and profiles (`labels` None: it is gone)."""
        new = None if labels is None else (labels, profile_ids)
        old = self._endpoints.get(key)
        if old == new:
            return
        if new is None:
            del self._endpoints[key]
        else:
            self._endpoints[key] = new
        old_profiles = set(old[1]) if old is not None else set()
        new_profiles = set(profile_ids) if new is not None else set()
        for pid in old_profiles - new_profiles:
            users = self._profile_users.get(pid)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._profile_users[pid]
                    self._on_active(("profile", pid), False)
        for pid in new_profiles - old_profiles:
            users = self._profile_users.setdefault(pid, set())
            if not users:
                self._on_active(("profile", pid), True)
            users.add(key)
        self._match_policies(key)

    def on_profile_labels(self, name: str, labels: Mapping[str, str]) -> None:
        if self._profile_labels.get(name, {}) == labels:
            return
        if labels:
            self._profile_labels[name] = labels
        else:
            self._profile_labels.pop(name, None)
        for key in list(self._profile_users.get(name, ())):
            self._match_policies(key)

    def on_tier(self, name: str, tier: Tier | None) -> None:
        if self._tiers.get(name) == tier:
            return
        if tier is None:
            del self._tiers[name]
        else:
            self._tiers[name] = tier
        for pid in self._tier_policies.get(name, ()):
            for key in self._policy_eps.get(pid, ()):
                self._on_endpoint_dirty(key)

    def on_policy(self, pid: PolicyId, policy: Policy | None) -> None:
        old = self._policies.get(pid)
        if old == policy:
            return
        if policy is None:
            del self._policies[pid]
            self._tier_policies[pid[0]].discard(pid)
            if not self._tier_policies[pid[0]]:
                del self._tier_policies[pid[0]]
        else:
            self._policies[pid] = policy
            self._tier_policies.setdefault(pid[0], set()).add(pid)
        old_eps = set(self._policy_eps.get(pid, ()))
        if old is not None and policy is not None and old.selector == policy.selector:
            new_eps = old_eps
        else:
            new_eps = set()
            if policy is not None:
                sel = parse_selector(policy.selector)
                new_eps = {key for key in self._endpoints if sel.evaluate(self._labels(key))}
            for key in old_eps ^ new_eps:
                pols = set(self._ep_policies.get(key, ()))
                pols.symmetric_difference_update({pid})
                if pols:
                    self._ep_policies[key] = frozenset(pols)
                else:
                    self._ep_policies.pop(key, None)
            if new_eps:
                self._policy_eps[pid] = new_eps
            else:
                self._policy_eps.pop(pid, None)
            if bool(old_eps) != bool(new_eps):
                self._on_active(("policy", pid), bool(new_eps))
        if old is None or policy is None or old.order != policy.order:
            touched = old_eps | new_eps
        else:
            touched = old_eps ^ new_eps
        for key in touched:
            self._on_endpoint_dirty(key)

    # ---- outputs -----------------------------------------------------------------------

    def tiers_for(self, key: EpKey) -> tuple[TierPolicies, ...]:
        """The endpoint's tiers in order, each with its matching policies in order."""
        by_tier: dict[str, list[Policy]] = {}
        for pid in self._ep_policies.get(key, ()):
            by_tier.setdefault(pid[0], []).append(self._policies[pid])
        tiers = sorted((self._tiers.get(name) or Tier(name) for name in by_tier),
                       key=policy_sort_key)
        return tuple(TierPolicies(t.name, tuple(p.name for p in sorted(by_tier[t.name],
                                                                       key=policy_sort_key)))
                     for t in tiers)

    # ---- internals ---------------------------------------------------------------------

    def _labels(self, key: EpKey) -> dict[str, str]:
        labels, profile_ids = self._endpoints[key]
        return effective_labels(self._profile_labels, labels, profile_ids)

    def _match_policies(self, key: EpKey) -> None:
        """Re-evaluate every policy against one local endpoint."""
        new: frozenset[PolicyId] = frozenset()
        if key in self._endpoints:
            labels = self._labels(key)
            new = frozenset(pid for pid, pol in self._policies.items()
                            if parse_selector(pol.selector).evaluate(labels))
        old = self._ep_policies.get(key, frozenset())
        if new == old:
            return
        self._on_endpoint_dirty(key)
        for pid in old - new:
            eps = self._policy_eps[pid]
            eps.discard(key)
            if not eps:
                del self._policy_eps[pid]
                self._on_active(("policy", pid), False)
        for pid in new - old:
            eps = self._policy_eps.setdefault(pid, set())
            if not eps:
                self._on_active(("policy", pid), True)
            eps.add(key)
        if new:
            self._ep_policies[key] = new
        else:
            self._ep_policies.pop(key, None)
