"""Dispatch chains: from an interface name to that endpoint's chain, as a tree.

Owns: `felix-FROM-ENDPOINT` / `felix-TO-ENDPOINT` (workloads, matched with `-i` / `-o`)
and `felix-FROM-HOST-IF` / `felix-TO-HOST-IF` (host endpoints). A packet must not walk
thousands of interface matches, so the workload chains form a tree by interface-name
prefix: a group of more than `LEAF_MAX` names is split by the character after the
group's common prefix, and each sub-group of two or more names gets its own chain
(`felix-FROM-EP-<prefix>`, jumped to with `-i <prefix>+ -g ...`). Every chain of the
tree ends with DROP: an interface with the workload prefix but no endpoint gets nothing
through (the chains are reached with `-g`, so falling off a sub-chain would otherwise
skip the root's DROP).

Leaves to others: the endpoint chains themselves (`felix.rules.policy`); which
interfaces have endpoints (`felix.calc`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from felix.dataplane.types import Chain, Rule
from felix.rules.names import (
    CHAIN_FROM_ENDPOINT,
    CHAIN_FROM_HOST_IF,
    CHAIN_TO_ENDPOINT,
    CHAIN_TO_HOST_IF,
    dispatch_chain,
)

LEAF_MAX = 16
DROP_UNKNOWN = Rule("", "-j DROP", "unknown interface")


class DispatchRenderer:
    """Renders both workload dispatch trees in one pass, reusing unchanged leaf chains.

    The FROM and TO trees have the same shape, so names are partitioned once. `_leaves`
    caches leaf chains by (chain name, member names): an endpoint's chain names depend
    only on its interface name, so after one endpoint changed only the leaf that holds it
    gets new `Rule` values; unchanged chains come back as the same objects and compare
    equal at once.
    """

    def __init__(self) -> None:
        self._leaves: dict[tuple[str, tuple[str, ...]], Chain] = {}
        self._used: set[tuple[str, tuple[str, ...]]] = set()

    def render(self, chain_for_ifname: Mapping[str, tuple[str, str]]) -> list[Chain]:
        """All workload dispatch chains; `chain_for_ifname`: ifname -> (from, to) chain."""
        self._used = set()
        from_chains: list[Chain] = []
        to_chains: list[Chain] = []
        targets = chain_for_ifname

        def leaf(name: str, group: tuple[str, ...], flag: str, side: int) -> Chain:
            key = (name, group)
            self._used.add(key)
            chain = self._leaves.get(key)
            if chain is None:
                rules = [Rule(f"{flag} {n}", f"-g {targets[n][side]}") for n in group]
                chain = Chain(name, (*rules, DROP_UNKNOWN))
                self._leaves[key] = chain
            return chain

        def build(names: tuple[str, str], group: list[str]) -> None:
            if len(group) <= LEAF_MAX:
                leaf_names = tuple(group)
                from_chains.append(leaf(names[0], leaf_names, "-i", 0))
                to_chains.append(leaf(names[1], leaf_names, "-o", 1))
                return
            from_rules: list[Rule] = []
            to_rules: list[Rule] = []
            depth = len(os.path.commonprefix([group[0], group[-1]]))  # group is sorted
            buckets: dict[str, list[str]] = {}
            for n in group:
                if len(n) == depth:  # the common prefix is itself an interface name
                    from_rules.append(Rule(f"-i {n}", f"-g {targets[n][0]}"))
                    to_rules.append(Rule(f"-o {n}", f"-g {targets[n][1]}"))
                else:
                    buckets.setdefault(n[:depth + 1], []).append(n)
            for prefix, members in sorted(buckets.items()):
                if len(members) == 1:
                    n = members[0]
                    from_rules.append(Rule(f"-i {n}", f"-g {targets[n][0]}"))
                    to_rules.append(Rule(f"-o {n}", f"-g {targets[n][1]}"))
                else:
                    subs = (dispatch_chain(CHAIN_FROM_ENDPOINT, prefix),
                            dispatch_chain(CHAIN_TO_ENDPOINT, prefix))
                    from_rules.append(Rule(f"-i {prefix}+", f"-g {subs[0]}"))
                    to_rules.append(Rule(f"-o {prefix}+", f"-g {subs[1]}"))
                    build(subs, members)
            from_chains.append(Chain(names[0], (*from_rules, DROP_UNKNOWN)))
            to_chains.append(Chain(names[1], (*to_rules, DROP_UNKNOWN)))

        build((CHAIN_FROM_ENDPOINT, CHAIN_TO_ENDPOINT), sorted(chain_for_ifname))
        if len(self._leaves) > 2 * len(self._used) + 64:
            self._leaves = {k: v for k, v in self._leaves.items() if k in self._used}
        return from_chains + to_chains


def render_workload_dispatch(chain_for_ifname: Mapping[str, tuple[str, str]]) -> list[Chain]:
    """All workload dispatch chains; `chain_for_ifname`: ifname -> (from chain, to chain)."""
    return DispatchRenderer().render(chain_for_ifname)


def render_host_dispatch(chain_for_ifname: Mapping[str, tuple[str, str]]) -> list[Chain]:
    """Host endpoint dispatch: few interfaces, so flat; an interface without a host
    endpoint is not policed (the chains just RETURN for it)."""
    from_rules = tuple(Rule(f"-i {n}", f"-g {chain_for_ifname[n][0]}")
                       for n in sorted(chain_for_ifname))
    to_rules = tuple(Rule(f"-o {n}", f"-g {chain_for_ifname[n][1]}")
                     for n in sorted(chain_for_ifname))
    return [Chain(CHAIN_FROM_HOST_IF, from_rules), Chain(CHAIN_TO_HOST_IF, to_rules)]
