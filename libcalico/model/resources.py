"""The resource-kind registry used by `calicoctl apply -f`-style document workflows.

Owns: `RESOURCE_KINDS` (kind name -> class), `resource_class` (case-insensitive
lookup) and `parse_resource` (one `{"apiVersion", "kind", "metadata", "spec"}`
document -> the validated resource). Every class here satisfies
`parse_resource(r.to_resource()) == r`.

Leaves to others: reading YAML/JSON files and splitting multi-document streams
(calicoctl), and storing the result (the datastore layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libcalico.errors import ValidationError
from libcalico.model.base import Resource
from libcalico.model.endpoints import HostEndpoint, WorkloadEndpoint
from libcalico.model.network import (
    BGPGlobalConfig,
    BGPPeer,
    FelixConfig,
    IPAMConfig,
    IPPool,
    Node,
)
from libcalico.model.policy import Policy, Profile, Tier

__all__ = ["RESOURCE_KINDS", "Resource", "parse_resource", "resource_class"]

RESOURCE_KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (IPPool, Profile, Tier, Policy, WorkloadEndpoint, HostEndpoint, Node, BGPPeer,
                BGPGlobalConfig, FelixConfig, IPAMConfig)
}
_BY_LOWER = {kind.lower(): cls for kind, cls in RESOURCE_KINDS.items()}


def resource_class(kind: Any) -> type[Resource]:
    """The class for `kind`, matched case-insensitively ("IPPool" finds ipPool)."""
    cls = _BY_LOWER.get(kind.lower()) if isinstance(kind, str) else None
    if cls is None:
        raise ValidationError("kind", kind, "unknown resource kind")
    return cls


def parse_resource(doc: Mapping[str, Any]) -> Resource:
    """Validate one resource document and return the resource it describes."""
    if not isinstance(doc, Mapping):
        raise ValidationError("resource", doc, "must be a mapping")
    return resource_class(doc.get("kind")).from_resource(doc)
