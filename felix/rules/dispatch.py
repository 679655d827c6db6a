"""Dispatch chains: from an interface name to that endpoint's chain, as a tree.

Owns: `felix-FROM-ENDPOINT` / `felix-TO-ENDPOINT` (workloads, matched with `-i` / `-o`)
and the host endpoint dispatch: `felix-FROM-HOST-IF` / `felix-TO-HOST-IF` (traffic into
and out of the host itself: the failsafe ports first, then the host endpoint's chain)
and `felix-FROM-HOST-IF-FWD` / `felix-TO-HOST-IF-FWD` (forwarded traffic: the same
chains, no failsafe ports). A packet must not walk
thousands of interface matches, so the workload chains form a tree by interface-name
prefix: a group of more than `LEAF_MAX` names is split by the character after the
group's common prefix, and each sub-group of two or more names gets its own chain
(`felix-FROM-EP-<prefix>`, jumped to with `-i <prefix>+ -g ...`). Every chain of the
tree ends with DROP: an interface with the workload prefix but no endpoint gets nothing
through (the chains are reached with `-g`, so falling off a sub-chain would otherwise
skip the root's DROP).

`dispatch_target` reads a tree back: where a packet on a given interface ends up, walking
whatever chain values it is given (the driver asks it about the chains known to be in
the kernel, to tell whether an endpoint is still reachable after a failed restore); it
reads the rules with `felix.rules.parse`, as the trace's evaluator does.

Leaves to others: the endpoint chains themselves (`felix.rules.policy`); which
interfaces have endpoints (`felix.calc`).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from felix.dataplane.types import Chain, Rule
from felix.rules.names import (
    CHAIN_FAILSAFE_IN,
    CHAIN_FAILSAFE_OUT,
    CHAIN_FROM_ENDPOINT,
    CHAIN_FROM_EP_PFX,
    CHAIN_FROM_HOST_IF,
    CHAIN_FROM_HOST_IF_FWD,
    CHAIN_TO_ENDPOINT,
    CHAIN_TO_EP_PFX,
    CHAIN_TO_HOST_IF,
    CHAIN_TO_HOST_IF_FWD,
    dispatch_chain,
)
from felix.rules.parse import Interface, parse_action, parse_match

LEAF_MAX = 16
DROP_UNKNOWN = Rule("", "-j DROP", "unknown interface")


class DispatchRenderer:
    """Renders both workload dispatch trees in one pass, reusing unchanged subtrees.

    The FROM and TO trees have the same shape, so names are partitioned once. An
    endpoint's chain names depend only on its interface name, so a subtree is fully
    determined by its chain names and its (sorted) member names: `_subtrees` caches each
    subtree's chains by that key. After one endpoint changed, only the chains on the path
    from the root to its leaf are rebuilt; every other subtree comes back as the same
    `Chain` objects (callers can skip them with an identity check). Entries not part of
    the latest tree are dropped when the cache grows well beyond it.
    """

    def __init__(self) -> None:
        self._subtrees: dict[_Key, _Subtree] = {}
        self._sorted: list[str] = []  # the names of the last render, kept sorted
        self._names: set[str] = set()

    def render(self, chain_for_ifname: Mapping[str, tuple[str, str]]) -> list[Chain]:
        """All workload dispatch chains; `chain_for_ifname`: ifname -> (from, to) chain."""
        targets = chain_for_ifname
        cache = self._subtrees
        used: set[_Key] = set()

        def build(names: tuple[str, str], group: tuple[str, ...]) -> _Subtree:
            key = (names, group)
            hit = cache.get(key)
            if hit is not None:
                used.update(hit.keys)
                return hit
            if len(group) <= LEAF_MAX:
                subtree = _Subtree(
                    [Chain(names[0], (*(Rule(f"-i {n}", f"-g {targets[n][0]}") for n in group),
                                      DROP_UNKNOWN))],
                    [Chain(names[1], (*(Rule(f"-o {n}", f"-g {targets[n][1]}") for n in group),
                                      DROP_UNKNOWN))],
                    (key,))
                cache[key] = subtree
                used.add(key)
                return subtree
            from_rules: list[Rule] = []
            to_rules: list[Rule] = []
            from_chains: list[Chain] = []
            to_chains: list[Chain] = []
            keys: list[_Key] = [key]
            for prefix, members in _buckets(group):
                if len(members) == 1:
                    n = members[0]
                    from_rules.append(Rule(f"-i {n}", f"-g {targets[n][0]}"))
                    to_rules.append(Rule(f"-o {n}", f"-g {targets[n][1]}"))
                else:
                    subs = (dispatch_chain(CHAIN_FROM_ENDPOINT, prefix),
                            dispatch_chain(CHAIN_TO_ENDPOINT, prefix))
                    from_rules.append(Rule(f"-i {prefix}+", f"-g {subs[0]}"))
                    to_rules.append(Rule(f"-o {prefix}+", f"-g {subs[1]}"))
                    child = build(subs, members)
                    from_chains.extend(child.from_chains)
                    to_chains.extend(child.to_chains)
                    keys.extend(child.keys)
            from_chains.append(Chain(names[0], (*from_rules, DROP_UNKNOWN)))
            to_chains.append(Chain(names[1], (*to_rules, DROP_UNKNOWN)))
            subtree = _Subtree(from_chains, to_chains, tuple(keys))
            cache[key] = subtree
            used.add(key)
            return subtree

        root = build((CHAIN_FROM_ENDPOINT, CHAIN_TO_ENDPOINT), self._sorted_names(targets))
        if len(cache) > 2 * len(used) + 64:
            self._subtrees = {k: v for k, v in cache.items() if k in used}
        return root.from_chains + root.to_chains


    def _sorted_names(self, targets: Mapping[str, object]) -> tuple[str, ...]:
        """The names of `targets`, sorted; kept up to date by difference, not re-sorted."""
        added = targets.keys() - self._names
        removed = self._names - targets.keys()
        if len(added) + len(removed) > 64:
            self._sorted = sorted(targets)
        else:
            for n in removed:
                del self._sorted[bisect.bisect_left(self._sorted, n)]
            for n in added:
                bisect.insort(self._sorted, n)
        self._names = set(targets)
        return tuple(self._sorted)


def _buckets(group: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(prefix, members) of a sorted group, split by the character after the group's
    common prefix; a name equal to the common prefix comes alone, as ("", (name,)).
    Found by bisection, so a big group costs one step per bucket, not per name."""
    depth = len(os.path.commonprefix([group[0], group[-1]]))
    i, end = 0, len(group)
    while i < end:
        name = group[i]
        if len(name) == depth:  # the common prefix is itself an interface name
            yield "", (name,)
            i += 1
            continue
        prefix = name[:depth + 1]
        j = bisect.bisect_left(group, prefix + _MAX_CHAR, i, end)
        yield prefix, group[i:j]
        i = j


_MAX_CHAR = chr(0x10FFFF)  # sorts after every character an interface name can hold
_Key = tuple[tuple[str, str], tuple[str, ...]]


@dataclass(frozen=True)
class _Subtree:
    from_chains: list[Chain]
    to_chains: list[Chain]
    keys: tuple[_Key, ...]  # this subtree's cache keys, itself included


def render_workload_dispatch(chain_for_ifname: Mapping[str, tuple[str, str]]) -> list[Chain]:
    """All workload dispatch chains; `chain_for_ifname`: ifname -> (from chain, to chain)."""
    return DispatchRenderer().render(chain_for_ifname)


def render_host_dispatch(chain_for_ifname: Mapping[str, tuple[str, str]]) -> list[Chain]:
    """Host endpoint dispatch: few interfaces, so flat; an interface without a host
    endpoint is not policed (the chains just RETURN for it). Into and out of the host
    the failsafe chains come first (they ACCEPT, so no policy can close those ports);
    forwarded traffic meets the same endpoint chains without them."""
    names = sorted(chain_for_ifname)
    into: list[Rule] = []
    out: list[Rule] = []
    for n in names:
        into += [Rule(f"-i {n}", f"-j {CHAIN_FAILSAFE_IN}"),
                 Rule(f"-i {n}", f"-g {chain_for_ifname[n][0]}")]
        out += [Rule(f"-o {n}", f"-j {CHAIN_FAILSAFE_OUT}"),
                Rule(f"-o {n}", f"-g {chain_for_ifname[n][1]}")]
    fwd_in = tuple(Rule(f"-i {n}", f"-g {chain_for_ifname[n][0]}") for n in names)
    fwd_out = tuple(Rule(f"-o {n}", f"-g {chain_for_ifname[n][1]}") for n in names)
    return [Chain(CHAIN_FROM_HOST_IF, tuple(into)), Chain(CHAIN_TO_HOST_IF, tuple(out)),
            Chain(CHAIN_FROM_HOST_IF_FWD, fwd_in), Chain(CHAIN_TO_HOST_IF_FWD, fwd_out)]


def is_workload_dispatch_chain(name: str) -> bool:
    """True for the chains of the workload dispatch trees (roots and sub-chains)."""
    return (name in (CHAIN_FROM_ENDPOINT, CHAIN_TO_ENDPOINT)
            or name.startswith((CHAIN_FROM_EP_PFX, CHAIN_TO_EP_PFX)))


def dispatch_target(chain_of: Callable[[str], Chain | None], root: str,
                    ifname: str) -> str | None:
    """The endpoint chain a packet on `ifname` reaches from dispatch root `root`
    (CHAIN_FROM_ENDPOINT: matched on `-i`, CHAIN_TO_ENDPOINT: on `-o`), following the
    tree through the chains `chain_of` returns; None when it is dropped or a chain on
    the way is missing."""
    inbound = root == CHAIN_FROM_ENDPOINT
    name: str | None = root
    for _depth in range(MAX_CHAIN_DEPTH):
        chain = chain_of(name) if name is not None else None
        if chain is None:
            return None
        name = None
        for rule in chain.rules:
            match = parse_match(rule.match)
            if (len(match) != 1 or not isinstance(match[0], Interface)
                    or match[0].inbound != inbound
                    or not interface_matches(match[0].name, ifname)):
                continue
            target = parse_action(rule.action).target
            if target is None:
                return None
            if not is_workload_dispatch_chain(target):
                return target
            name = target
            break
        if name is None:
            return None
    return None


def interface_matches(pattern: str, ifname: str) -> bool:
    """iptables' interface match: the name itself, or a prefix ending with `+`."""
    return pattern == ifname or (pattern.endswith("+") and ifname.startswith(pattern[:-1]))


MAX_CHAIN_DEPTH = 64  # far deeper than any tree (one level per interface-name character)
