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
from collections.abc import Callable, Mapping

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
    """Renders the workload dispatch trees, reusing unchanged leaf chains.

    `_leaves` caches leaf chains by (chain name, members and targets), so re-rendering
    after one endpoint changed builds new `Rule` values only for the leaf that holds it;
    unchanged chains come back as the same objects and compare equal at once.
    """

    def __init__(self) -> None:
        self._leaves: dict[tuple[str, tuple[tuple[str, str], ...]], Chain] = {}
        self._used: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def render(self, chain_for_ifname: Mapping[str, tuple[str, str]]) -> list[Chain]:
        """All workload dispatch chains; `chain_for_ifname`: ifname -> (from, to) chain."""
        names = sorted(chain_for_ifname)
        self._used = set()
        out = (self._tree(CHAIN_FROM_ENDPOINT, names, "-i",
                          lambda n: chain_for_ifname[n][0])
               + self._tree(CHAIN_TO_ENDPOINT, names, "-o", lambda n: chain_for_ifname[n][1]))
        if len(self._leaves) > 2 * len(self._used) + 64:
            self._leaves = {k: v for k, v in self._leaves.items() if k in self._used}
        return out

    def _leaf(self, chain_name: str, group: list[str], flag: str,
              target: Callable[[str], str]) -> Chain:
        key = (chain_name, tuple((n, target(n)) for n in group))
        self._used.add(key)
        chain = self._leaves.get(key)
        if chain is None:
            rules = [Rule(f"{flag} {n}", f"-g {t}") for n, t in key[1]]
            chain = Chain(chain_name, (*rules, DROP_UNKNOWN))
            self._leaves[key] = chain
        return chain

    def _tree(self, root: str, names: list[str], flag: str,
              target: Callable[[str], str]) -> list[Chain]:
        chains: list[Chain] = []

        def build(chain_name: str, group: list[str]) -> None:
            if len(group) <= LEAF_MAX:
                chains.append(self._leaf(chain_name, group, flag, target))
                return
            rules: list[Rule] = []
            depth = len(os.path.commonprefix([group[0], group[-1]]))  # group is sorted
            buckets: dict[str, list[str]] = {}
            for n in group:
                if len(n) == depth:  # the common prefix is itself an interface name
                    rules.append(Rule(f"{flag} {n}", f"-g {target(n)}"))
                else:
                    buckets.setdefault(n[:depth + 1], []).append(n)
            for prefix, members in sorted(buckets.items()):
                if len(members) == 1:
                    n = members[0]
                    rules.append(Rule(f"{flag} {n}", f"-g {target(n)}"))
                else:
                    sub = dispatch_chain(root, prefix)
                    rules.append(Rule(f"{flag} {prefix}+", f"-g {sub}"))
                    build(sub, members)
            rules.append(DROP_UNKNOWN)
            chains.append(Chain(chain_name, tuple(rules)))

        build(root, names)
        return chains


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
