"""Turning one syncer update (key, JSON text | None) into a typed model value.

Owns: the boundary between etcd text and the model: `parse_key`, JSON decoding and the
model's `from_json` (node fields are plain strings; allocation blocks are reduced to
what the tunnel part needs, `BlockInfo`). Invalid JSON or an invalid resource is treated
as absent and logged once, in one line naming the key and the reason, so the rest keeps
working.

Leaves to others: what the values mean for the dataplane (`felix.calc.graph`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from felix.calc.types import BlockInfo
from libcalico import keyspace
from libcalico.errors import ValidationError
from libcalico.ipam.block import AllocationBlock
from libcalico.model import (
    HostEndpoint,
    HostEndpointId,
    IPPool,
    Node,
    Policy,
    Profile,
    Tier,
    WorkloadEndpoint,
    WorkloadEndpointId,
)
from libcalico.model.network import NODE_KEYS
from libcalico.model.rules import Rules

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parsed:
    """`key` as parsed by keyspace; `value` the model value (None: deleted or invalid);
    `error` the reason when the stored value was invalid."""

    key: Any
    value: Any
    error: str | None = None


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValidationError("json", text[:60], str(exc)) from None


def _profile_part(key: keyspace.ProfileKey, data: Any) -> Any:
    if key.part == "rules":
        return Rules.from_dict(data)
    if key.part == "tags":
        return Profile.from_parts(key.name, tags=data).tags
    return Profile.from_parts(key.name, labels=data).labels


_NODE_ATTRS = {key: attr for attr, key in NODE_KEYS.items()}


def _allocation_host(secondary: Any) -> str | None:
    """The host an allocation was made for (`{"host": ...}`; Calico v3 says `node`)."""
    if isinstance(secondary, dict):
        host = secondary.get("host") or secondary.get("node")
        if isinstance(host, str) and host:
            return host
    return None


def parse_block(data: Any) -> BlockInfo:
    """Affinity and borrowed addresses of a stored allocation block."""
    try:
        block = AllocationBlock.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError("block", str(data)[:60], str(exc)) from None
    owner = block.host
    plen = block.network.max_prefixlen
    borrowed = []
    for ordinal, index in enumerate(block.allocations):
        if index is None:
            continue
        host = _allocation_host(block.attributes[index].get("secondary"))
        if host is not None and host != owner:
            borrowed.append((f"{block.address(ordinal)}/{plen}", host))
    return BlockInfo(owner, tuple(borrowed))


def parse_update(key: str, value: str | None) -> Parsed | None:
    """None for keys felix does not follow; else the parsed key and value. A node field
    (`BGPHostKey`) is a plain string, its value the Node attribute it sets."""
    parsed = keyspace.parse_key(key)
    if not isinstance(parsed, keyspace.WorkloadEndpointKey | keyspace.HostEndpointKey
                      | keyspace.ProfileKey | keyspace.TierKey | keyspace.PolicyKey
                      | keyspace.PoolKey | keyspace.BlockKey | keyspace.BGPHostKey):
        return None
    if value is None:
        return Parsed(parsed, None)
    try:
        if isinstance(parsed, keyspace.BGPHostKey):
            attr = _NODE_ATTRS[parsed.name]
            text = value.strip()
            field = getattr(Node.from_json(parsed.hostname, {parsed.name: text}), attr)
            return Parsed(parsed, field)
        data = _decode(value)
        model: Any
        if isinstance(parsed, keyspace.BlockKey):
            model = parse_block(data)
        elif isinstance(parsed, keyspace.WorkloadEndpointKey):
            model = WorkloadEndpoint.from_json(
                WorkloadEndpointId(parsed.hostname, parsed.orchestrator, parsed.workload,
                                   parsed.endpoint_id), data)
        elif isinstance(parsed, keyspace.HostEndpointKey):
            model = HostEndpoint.from_json(HostEndpointId(parsed.hostname, parsed.endpoint_id),
                                           data)
        elif isinstance(parsed, keyspace.ProfileKey):
            model = _profile_part(parsed, data)
        elif isinstance(parsed, keyspace.TierKey):
            model = Tier.from_json(parsed.tier, data)
        elif isinstance(parsed, keyspace.PolicyKey):
            model = Policy.from_json(parsed.tier, parsed.name, data)
        else:
            model = IPPool.from_json(data)
            if model.cidr != parsed.cidr:
                raise ValidationError("cidr", model.cidr, f"does not match the key's {parsed.cidr}")
    except ValidationError as exc:
        _log.warning("skipping invalid value at %s: %s", key, exc)
        return Parsed(parsed, None, str(exc))
    except (TypeError, KeyError, AttributeError) as exc:  # defensive: malformed shapes
        _log.warning("skipping invalid value at %s: %s", key, exc)
        return Parsed(parsed, None, f"invalid value: {exc}")
    return Parsed(parsed, model)
