"""The typed resource model: pure, validated, immutable values with canonical JSON.

Owns: selectors (`selector`), the rule grammar (`rules`), policy resources
(`policy`), endpoints (`endpoints`), network and configuration resources
(`network`), the resource-kind registry (`resources`), the document shape every
resource shares (`base`) and the shared validators (`validate`: public, for every layer
that turns user input into model values). This package does no
I/O: the keys values are stored under belong to `libcalico.keyspace`, reading and
writing to `libcalico.datastore`. Invalid input raises
`libcalico.errors.ValidationError` naming the field and the value.

The names below are imported from their submodule on first use, so a caller that needs
only pools (say) does not pay for importing policies, rules and endpoints.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libcalico.model.base import Resource
    from libcalico.model.endpoints import (
        HostEndpoint,
        HostEndpointId,
        WorkloadEndpoint,
        WorkloadEndpointId,
    )
    from libcalico.model.network import (
        BGPGlobalConfig,
        BGPPeer,
        FelixConfig,
        IPAMConfig,
        IPPool,
        Node,
        parse_as_num,
    )
    from libcalico.model.policy import Policy, Profile, Tier, policy_sort_key
    from libcalico.model.resources import RESOURCE_KINDS, parse_resource, resource_class
    from libcalico.model.rules import PortRange, Rule, Rules, parse_ports
    from libcalico.model.selector import Selector, SelectorSyntaxError, parse_selector

_HOMES = {
    "base": ("Resource",),
    "endpoints": ("HostEndpoint", "HostEndpointId", "WorkloadEndpoint", "WorkloadEndpointId"),
    "network": ("BGPGlobalConfig", "BGPPeer", "FelixConfig", "IPAMConfig", "IPPool", "Node",
                "parse_as_num"),
    "policy": ("Policy", "Profile", "Tier", "policy_sort_key"),
    "resources": ("RESOURCE_KINDS", "parse_resource", "resource_class"),
    "rules": ("PortRange", "Rule", "Rules", "parse_ports"),
    "selector": ("Selector", "SelectorSyntaxError", "parse_selector"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

__all__ = [
    "RESOURCE_KINDS",
    "BGPGlobalConfig",
    "BGPPeer",
    "FelixConfig",
    "HostEndpoint",
    "HostEndpointId",
    "IPAMConfig",
    "IPPool",
    "Node",
    "Policy",
    "PortRange",
    "Profile",
    "Resource",
    "Rule",
    "Rules",
    "Selector",
    "SelectorSyntaxError",
    "Tier",
    "WorkloadEndpoint",
    "WorkloadEndpointId",
    "parse_as_num",
    "parse_ports",
    "parse_resource",
    "parse_selector",
    "policy_sort_key",
    "resource_class",
]
