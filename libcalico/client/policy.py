"""Typed CRUD for policy resources: profiles (rules, tags and labels keys), tiers and
tiered policies.

Owns: the mapping of a `Profile` onto its three keys, atomic read-modify-write of a
profile (`update_profile`, one etcd transaction with compare-and-swap on all three
keys, retried a bounded number of times), and tier/policy reads and writes.

Leaves to others: rule and selector validation (`libcalico.model`), key names
(`libcalico.keyspace`), what felix makes of policy.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from libcalico import keyspace as ks
from libcalico.client._base import cas_txn, decode
from libcalico.client.names import profile_names
from libcalico.codec import dumps as encode
from libcalico.errors import AlreadyExists, NotFound
from libcalico.model import Policy, Profile, Tier, policy_sort_key

if TYPE_CHECKING:
    from libcalico.datastore import KV, Datastore, Op

_PARTS = ks.PROFILE_PARTS


def _one_part(name: str, part: str, data: object) -> Profile:
    return Profile.from_parts(name, **{part: data})


def _profile_from_kvs(name: str, parts: dict[str, KV | None]) -> Profile | None:
    """Build a profile from its part KVs; an invalid part is treated as absent."""
    import json

    decoded: dict[str, object] = {}
    for part, kv in parts.items():
        if kv is None:
            continue
        ok = decode(kv.key, kv.value, partial(_one_part, name, part))
        if ok is not None:
            decoded[part] = json.loads(kv.value)
    return decode(ks.profile_dir(name), json.dumps(decoded),
                  lambda d: Profile.from_parts(name, d.get("rules"), d.get("tags"),
                                               d.get("labels")))


class PolicyClient:
    store: Datastore

    # --- profiles ---------------------------------------------------------------------------

    def list_profile_names(self) -> list[str]:
        return profile_names(self.store)

    def list_profiles(self) -> list[Profile]:
        kvs, _ = self.store.list(ks.PROFILE_DIR)
        grouped: dict[str, dict[str, KV | None]] = {}
        for kv in kvs:
            parsed = ks.parse_key(kv.key)
            if isinstance(parsed, ks.ProfileKey):
                grouped.setdefault(parsed.name, {})[parsed.part] = kv
        profiles = [_profile_from_kvs(n, parts) for n, parts in sorted(grouped.items())]
        return [p for p in profiles if p is not None]

    def profile_exists(self, name: str) -> bool:
        kvs, _ = self.store.list(ks.profile_dir(name))
        return any(isinstance(ks.parse_key(kv.key), ks.ProfileKey) for kv in kvs)

    def get_profile(self, name: str) -> Profile:
        """The profile, or NotFound."""
        kvs, _ = self.store.list(ks.profile_dir(name))
        parts: dict[str, KV | None] = {}
        for kv in kvs:
            parsed = ks.parse_key(kv.key)
            if isinstance(parsed, ks.ProfileKey):
                parts[parsed.part] = kv
        profile = _profile_from_kvs(name, parts) if parts else None
        if profile is None:
            raise NotFound(f"profile {name} does not exist")
        return profile

    @staticmethod
    def profile_ops(profile: Profile) -> list[Op]:
        from libcalico.datastore import Put

        return [Put(ks.profile_key(profile.name, "rules"), encode(profile.rules_json())),
                Put(ks.profile_key(profile.name, "tags"), encode(profile.tags_json())),
                Put(ks.profile_key(profile.name, "labels"), encode(profile.labels_json()))]

    def create_profile(self, profile: Profile) -> None:
        """Create a new profile; AlreadyExists if any of its keys is present."""
        from libcalico.datastore import ModRevisionIs

        keys = [ks.profile_key(profile.name, p) for p in _PARTS]
        if not self.store.txn([ModRevisionIs(k, 0) for k in keys],
                              self.profile_ops(profile), []):
            raise AlreadyExists(f"profile {profile.name} already exists")

    def put_profile(self, profile: Profile) -> None:
        self.store.txn([], self.profile_ops(profile), [])

    def update_profile(self, name: str, change: Callable[[Profile], Profile]) -> Profile:
        """Read-modify-write a profile atomically (CAS on all three keys, bounded retries).

        `change` gets the current profile and returns the new one; NotFound if absent.
        """
        from libcalico.datastore import Put

        keys = {p: ks.profile_key(name, p) for p in _PARTS}
        result: list[Profile] = []

        def compute(current: dict[str, KV | None]) -> list[Op] | None:
            parts = {p: current[k] for p, k in keys.items()}
            if all(kv is None for kv in parts.values()):
                raise NotFound(f"profile {name} does not exist")
            old = _profile_from_kvs(name, parts) or Profile(name)
            new = change(old)
            result[:] = [new]
            if new == old:
                return None
            # Only the parts whose text changes: every felix watches profiles, and an
            # unchanged part rewritten is one more event for each of them.
            def changes(op: Op) -> bool:
                kv = current.get(op.key) if isinstance(op, Put) else None
                return kv is None or kv.value != getattr(op, "value", None)

            return [op for op in self.profile_ops(new) if changes(op)]

        cas_txn(self.store, list(keys.values()), compute)
        return result[0]

    def delete_profile(self, name: str) -> None:
        if not self.profile_exists(name):
            raise NotFound(f"profile {name} does not exist")
        self.store.delete_prefix(ks.profile_dir(name))

    # --- tiers and policies -----------------------------------------------------------------

    def list_tiers(self) -> list[Tier]:
        kvs, _ = self.store.list(ks.TIER_DIR)
        tiers = []
        for kv in kvs:
            parsed = ks.parse_key(kv.key)
            if isinstance(parsed, ks.TierKey):
                tier = decode(kv.key, kv.value, partial(Tier.from_json, parsed.tier))
                if tier is not None:
                    tiers.append(tier)
        return sorted(tiers, key=policy_sort_key)

    def get_tier(self, name: str) -> Tier | None:
        key = ks.tier_metadata_key(name)
        kv = self.store.get(key)
        return decode(key, kv.value if kv else None, lambda d: Tier.from_json(name, d))

    def put_tier(self, tier: Tier) -> None:
        self.store.put(ks.tier_metadata_key(tier.name), encode(tier.to_json()))

    def delete_tier(self, name: str) -> None:
        """Delete a tier with its policies."""
        if not self.store.delete_prefix(ks.tier_dir(name)):
            raise NotFound(f"tier {name} does not exist")

    def list_policies(self, tier: str | None = None) -> list[Policy]:
        kvs, _ = self.store.list(ks.TIER_DIR if tier is None else ks.tier_dir(tier))
        policies = []
        for kv in kvs:
            parsed = ks.parse_key(kv.key)
            if isinstance(parsed, ks.PolicyKey):
                pol = decode(kv.key, kv.value,
                             partial(Policy.from_json, parsed.tier, parsed.name))
                if pol is not None:
                    policies.append(pol)
        return sorted(policies, key=lambda p: (p.tier, *policy_sort_key(p)))

    def get_policy(self, tier: str, name: str) -> Policy | None:
        key = ks.policy_key(tier, name)
        kv = self.store.get(key)
        return decode(key, kv.value if kv else None, lambda d: Policy.from_json(tier, name, d))

    def policy_ops(self, policy: Policy) -> list[Op]:
        """Write the policy, creating its tier (order "default") if it has none yet."""
        from libcalico.datastore import Put

        ops: list[Op] = [Put(ks.policy_key(policy.tier, policy.name),
                             encode(policy.to_json()))]
        if self.store.get(ks.tier_metadata_key(policy.tier)) is None:
            ops.append(Put(ks.tier_metadata_key(policy.tier), encode(Tier(policy.tier).to_json())))
        return ops

    def put_policy(self, policy: Policy) -> None:
        self.store.txn([], self.policy_ops(policy), [])

    def delete_policy(self, tier: str, name: str) -> None:
        if not self.store.delete(ks.policy_key(tier, name)):
            raise NotFound(f"policy {tier}/{name} does not exist")
