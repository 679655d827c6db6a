"""Turning one syncer update (key, JSON text | None) into a typed model value.

Owns: the boundary between etcd text and the model: `parse_key`, JSON decoding and the
model's `from_json`. Invalid JSON or an invalid resource is treated as absent and logged
once, in one line naming the key and the reason, so the rest keeps working.

Leaves to others: what the values mean for the dataplane (`felix.calc.graph`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from libcalico import keyspace
from libcalico.errors import ValidationError
from libcalico.model import (
    HostEndpoint,
    HostEndpointId,
    IPPool,
    Policy,
    Profile,
    Tier,
    WorkloadEndpoint,
    WorkloadEndpointId,
)
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


def parse_update(key: str, value: str | None) -> Parsed | None:
    """None for keys felix does not follow; else the parsed key and value."""
    parsed = keyspace.parse_key(key)
    if not isinstance(parsed, keyspace.WorkloadEndpointKey | keyspace.HostEndpointKey
                      | keyspace.ProfileKey | keyspace.TierKey | keyspace.PolicyKey
                      | keyspace.PoolKey):
        return None
    if value is None:
        return Parsed(parsed, None)
    try:
        data = _decode(value)
        model: Any
        if isinstance(parsed, keyspace.WorkloadEndpointKey):
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
