"""Policy resources: profiles, tiers and tiered policies.

Owns: `Profile` (ordered rules, tags, labels), `Tier` (an order), `Policy` (tier,
order, selector, rules), their Calico v1 JSON (a profile is stored under three keys:
`rules`, `tags`, `labels`, so it has one JSON method per part) and their resource
documents, plus `policy_sort_key`, the order in which felix applies tiers and
policies (lower order first, "default" last, then by name).

Leaves to others: the keys these live under (`libcalico.keyspace`), working out
which policies apply to which endpoint (felix's calculation layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from libcalico.errors import ValidationError
from libcalico.model.base import JSONDict, Resource
from libcalico.model.rules import TAG_MAX, Rule, Rules
from libcalico.model.selector import Selector, parse_selector
from libcalico.model.validate import (
    check_keys,
    parse_order,
    render_order,
    validate_labels,
    validate_mapping,
    validate_name,
    validate_str_list,
)

__all__ = ["Policy", "Profile", "Tier", "policy_sort_key"]


class _Ordered(Protocol):
    @property
    def order(self) -> float | None: ...

    @property
    def name(self) -> str: ...


def policy_sort_key(item: _Ordered) -> tuple[bool, float, str]:
    """Sort key for tiers and policies: by order, None ("default") last, then name."""
    return (item.order is None, item.order or 0.0, item.name)


def _tags(field_name: str, value: Any) -> tuple[str, ...]:
    tags = validate_str_list(field_name, value)
    return tuple(sorted({validate_name(field_name, t, TAG_MAX) for t in tags}))


@dataclass(frozen=True)
class Profile(Resource):
    """A v1 profile. Tags are kept sorted and unique; labels key-sorted."""

    KIND = "profile"

    name: str
    rules: Rules = Rules()
    tags: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        validate_name("profile", self.name)
        if not isinstance(self.rules, Rules):
            raise ValidationError("rules", self.rules, "must be a Rules value")
        object.__setattr__(self, "tags", _tags("tags", self.tags))
        object.__setattr__(self, "labels", validate_labels("labels", self.labels))

    @classmethod
    def with_default_rules(cls, name: str) -> Profile:
        """A new profile as `calicoctl profile add` makes it (and the Docker driver for a
        network): tagged with its own name, inbound allowed from that tag (its own
        members), outbound allowed to anywhere."""
        return cls(name, Rules((Rule(action="allow", src_tag=name),), (Rule(action="allow"),)),
                   (name,))

    # The three etcd parts.
    def rules_json(self) -> JSONDict:
        return self.rules.to_dict()

    def tags_json(self) -> list[str]:
        return list(self.tags)

    def labels_json(self) -> dict[str, str]:
        return dict(self.labels)

    @classmethod
    def from_parts(cls, name: str, rules: Any = None, tags: Any = None,
                   labels: Any = None) -> Profile:
        """Build from the decoded JSON of the three keys; None means the key is absent."""
        return cls(name, Rules.from_dict(rules) if rules is not None else Rules(),
                   _tags("tags", tags) if tags is not None else (),
                   validate_labels("labels", labels) if labels is not None else {})

    def to_json(self) -> JSONDict:
        """The whole profile: `{"rules": {...}, "tags": [...], "labels": {...}}`."""
        return {"rules": self.rules_json(), "tags": self.tags_json(),
                "labels": self.labels_json()}

    @classmethod
    def from_json(cls, name: str, data: Any) -> Profile:
        data = validate_mapping("profile", data)
        check_keys("profile", data, ("rules", "tags", "labels"))
        return cls.from_parts(name, data.get("rules"), data.get("tags"), data.get("labels"))

    def to_resource(self) -> JSONDict:
        spec: JSONDict = self.rules_json()
        if self.tags:
            spec["tags"] = self.tags_json()
        if self.labels:
            spec["labels"] = self.labels_json()
        return self._envelope({"name": self.name}, spec)

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> Profile:
        meta, spec = cls._unwrap(doc, ("name",), ("inbound_rules", "outbound_rules", "tags",
                                                  "labels"))
        rules = {k: spec[k] for k in ("inbound_rules", "outbound_rules") if k in spec}
        return cls.from_parts(meta.get("name", ""),
                              rules, spec.get("tags"), spec.get("labels"))


@dataclass(frozen=True)
class Tier(Resource):
    """A policy tier; `order` None means "default" (applied last)."""

    KIND = "tier"

    name: str
    order: float | None = None

    def __post_init__(self) -> None:
        validate_name("tier", self.name)
        object.__setattr__(self, "order", parse_order("order", self.order))

    def to_json(self) -> JSONDict:
        """The tier metadata: `{"order": N | "default"}`."""
        return {"order": render_order(self.order)}

    @classmethod
    def from_json(cls, name: str, data: Any) -> Tier:
        data = validate_mapping("tier", data)
        check_keys("tier metadata", data, ("order",))
        return cls(name, parse_order("order", data.get("order")))

    def to_resource(self) -> JSONDict:
        spec = {} if self.order is None else {"order": render_order(self.order)}
        return self._envelope({"name": self.name}, spec)

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> Tier:
        meta, spec = cls._unwrap(doc, ("name",), ("order",))
        return cls(meta.get("name", ""),
                   parse_order("order", spec.get("order")))


_POLICY_KEYS = ("selector", "order", "inbound_rules", "outbound_rules")


@dataclass(frozen=True)
class Policy(Resource):
    """A tiered policy. `selector` is stored canonical (the empty selector is `all()`)."""

    KIND = "policy"

    tier: str
    name: str
    order: float | None = None
    selector: str = "all()"
    inbound_rules: tuple[Rule, ...] = ()
    outbound_rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        validate_name("tier", self.tier)
        validate_name("policy", self.name)
        object.__setattr__(self, "order", parse_order("order", self.order))
        object.__setattr__(self, "selector", parse_selector(self.selector).canonical)
        object.__setattr__(self, "inbound_rules",
                           Rules.parse_list("inbound_rules", self.inbound_rules))
        object.__setattr__(self, "outbound_rules",
                           Rules.parse_list("outbound_rules", self.outbound_rules))

    @property
    def rules(self) -> Rules:
        return Rules(self.inbound_rules, self.outbound_rules)

    @property
    def parsed_selector(self) -> Selector:
        return parse_selector(self.selector)

    def to_json(self) -> JSONDict:
        return {"selector": self.selector, "order": render_order(self.order),
                "inbound_rules": [r.to_dict() for r in self.inbound_rules],
                "outbound_rules": [r.to_dict() for r in self.outbound_rules]}

    @classmethod
    def from_json(cls, tier: str, name: str, data: Any) -> Policy:
        """Parse v1 policy JSON; a missing selector means all(), a missing order "default"."""
        data = validate_mapping("policy", data)
        check_keys("policy", data, _POLICY_KEYS)
        selector = data.get("selector", "")
        if not isinstance(selector, str):
            raise ValidationError("selector", selector, "must be a string")
        return cls(tier, name, parse_order("order", data.get("order")), selector,
                   Rules.parse_list("inbound_rules", data.get("inbound_rules")),
                   Rules.parse_list("outbound_rules", data.get("outbound_rules")))

    def to_resource(self) -> JSONDict:
        spec = self.to_json()
        if self.order is None:
            del spec["order"]
        return self._envelope({"tier": self.tier, "name": self.name}, spec)

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> Policy:
        meta, spec = cls._unwrap(doc, ("tier", "name"), _POLICY_KEYS)
        return cls.from_json(meta.get("tier", ""), meta.get("name", ""),
                             spec)
