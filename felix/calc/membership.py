"""Which addresses belong in each tag and selector ipset: incremental indexes.

Owns: for every endpoint in the cluster (workload endpoints of every host, and host
endpoints' expected addresses), the addresses it contributes, its effective labels and
its tags (through its profiles); for every *active* ipset (a tag or selector that some
rendered profile or policy uses), a member -> count map (two endpoints may share an
address); and, since the last `take_changes()`, which sets changed and how: a set that
became active or inactive is handed over whole, any other by the members that came and
went (`SetDelta`).

Work is proportional to what changed, never to the size of a set: an endpoint update
re-evaluates the active selectors for that one endpoint and records its addresses as
added or removed; a profile's tags or labels changing re-evaluates the endpoints that
use the profile; a set becoming active scans the endpoints once. So a remote endpoint
joining a tag that 100,000 endpoints share costs what it costs with 10 (a benchmark
checks it: `bench.scale_calc`).

Leaves to others: which sets are active (`felix.calc.active_rules` counts references
from the active rule sources), set names and the kernel (`felix.rules.names`, the
dataplane).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from libcalico.model.selector import Selector, parse_selector

EndpointRef = object  # a parsed key (WorkloadEndpointKey / HostEndpointKey), hashable


@dataclass(frozen=True)
class SetId:
    """A tag set (`kind` "tag", `value` the tag) or a selector set ("sel", canonical)."""

    kind: str
    value: str


@dataclass(frozen=True)
class SetDelta:
    """The members that joined and left one set since the last hand-over, per version."""

    added_v4: frozenset[str] = frozenset()
    removed_v4: frozenset[str] = frozenset()
    added_v6: frozenset[str] = frozenset()
    removed_v6: frozenset[str] = frozenset()

    def for_version(self, version: int) -> tuple[frozenset[str], frozenset[str]]:
        """(added, removed) of one IP version."""
        return ((self.added_v4, self.removed_v4) if version == 4
                else (self.added_v6, self.removed_v6))


@dataclass(frozen=True, slots=True)
class EndpointData:
    """What the index keeps of one endpoint (of any host: 100,000 of them in a large
    cluster, so kept small: slots, and shared empty labels)."""

    addrs_v4: tuple[str, ...]  # plain addresses
    addrs_v6: tuple[str, ...]
    labels: Mapping[str, str]  # the endpoint's own labels
    profile_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.labels:
            object.__setattr__(self, "labels", NO_LABELS)


NO_LABELS: Mapping[str, str] = MappingProxyType({})


def effective_labels(profile_labels: Mapping[str, Mapping[str, str]],
                     labels: Mapping[str, str], profile_ids: Iterable[str]) -> dict[str, str]:
    """An endpoint's labels for selectors: its profiles' labels (in profile order),
    overridden by its own labels."""
    if not profile_labels:
        return dict(labels)
    out: dict[str, str] = {}
    for pid in profile_ids:
        out.update(profile_labels.get(pid, {}))
    out.update(labels)
    return out


class MembershipIndex:
    """Incremental tag/selector -> member addresses index (see the module docstring)."""

    def __init__(self) -> None:
        self._endpoints: dict[EndpointRef, EndpointData] = {}
        self._by_profile: dict[str, set[EndpointRef]] = {}
        self._profile_tags: dict[str, tuple[str, ...]] = {}
        self._profile_labels: dict[str, Mapping[str, str]] = {}
        self._active: dict[SetId, Selector | None] = {}
        self._members: dict[SetId, tuple[Counter[str], Counter[str]]] = {}
        self._contrib: dict[EndpointRef, frozenset[SetId]] = {}
        self._shared: dict[frozenset[SetId], frozenset[SetId]] = {}  # one object per value
        # Since the last take_changes(): sets to hand over whole, and the others' net
        # member changes, per set: [added v4, removed v4, added v6, removed v6].
        self._whole: set[SetId] = set()
        self._moves: dict[SetId, tuple[set[str], set[str], set[str], set[str]]] = {}

    # --- inputs ----------------------------------------------------------------------

    def on_endpoint(self, ref: EndpointRef, data: EndpointData | None) -> None:
        old = self._endpoints.get(ref)
        if old == data:
            return
        if old is not None:
            for pid in old.profile_ids:
                users = self._by_profile.get(pid)
                if users is not None:
                    users.discard(ref)
                    if not users:
                        del self._by_profile[pid]
            self._remove_contrib(ref, old)
        if data is None:
            self._endpoints.pop(ref, None)
            return
        self._endpoints[ref] = data
        for pid in data.profile_ids:
            self._by_profile.setdefault(pid, set()).add(ref)
        self._add_contrib(ref, data)

    def on_profile_tags(self, profile_id: str, tags: tuple[str, ...]) -> None:
        """A profile's tags (its endpoints are members of these tag sets)."""
        if self._profile_tags.get(profile_id, ()) == tags:
            return
        if tags:
            self._profile_tags[profile_id] = tags
        else:
            self._profile_tags.pop(profile_id, None)
        self._refresh_users(profile_id)

    def on_profile_labels(self, profile_id: str, labels: Mapping[str, str]) -> None:
        """A profile's labels (its endpoints inherit them, for selector sets)."""
        if self._profile_labels.get(profile_id, {}) == labels:
            return
        if labels:
            self._profile_labels[profile_id] = labels
        else:
            self._profile_labels.pop(profile_id, None)
        self._refresh_users(profile_id)

    def _refresh_users(self, profile_id: str) -> None:
        for ref in list(self._by_profile.get(profile_id, ())):
            self._refresh(ref)

    def set_active(self, set_id: SetId, active: bool) -> None:
        if active == (set_id in self._active):
            return
        if not active:
            del self._active[set_id]
            del self._members[set_id]
            for ref, ids in self._contrib.items():
                if set_id in ids:
                    self._contrib[ref] = self._share(ids - {set_id})
            self._whole.add(set_id)
            self._moves.pop(set_id, None)
            return
        sel = parse_selector(set_id.value) if set_id.kind == "sel" else None
        self._active[set_id] = sel
        v4: Counter[str] = Counter()
        v6: Counter[str] = Counter()
        self._members[set_id] = (v4, v6)
        if set_id.kind == "tag":
            refs: set[EndpointRef] = set()
            for pid, tags in self._profile_tags.items():
                if set_id.value in tags:
                    refs |= self._by_profile.get(pid, set())
        else:
            refs = set(self._endpoints)
        for ref in refs:
            data = self._endpoints[ref]
            if self._matches(set_id, sel, data):
                v4.update(data.addrs_v4)
                v6.update(data.addrs_v6)
                self._contrib[ref] = self._share(self._contrib.get(ref, frozenset()) | {set_id})
        self._whole.add(set_id)
        self._moves.pop(set_id, None)

    # --- outputs ---------------------------------------------------------------------

    def members(self, set_id: SetId, version: int) -> frozenset[str]:
        counts = self._members[set_id][0 if version == 4 else 1]
        return frozenset(counts)

    def is_active(self, set_id: SetId) -> bool:
        return set_id in self._active

    @property
    def dirty(self) -> frozenset[SetId]:
        """The sets changed since the last `take_changes()`."""
        return frozenset(self._whole | self._moves.keys())

    def take_changes(self) -> dict[SetId, SetDelta | None]:
        """Every set changed since the last call: None for a set to hand over whole
        (it became active or inactive), else its members' net changes. Starts afresh."""
        out: dict[SetId, SetDelta | None] = dict.fromkeys(self._whole)
        for set_id, (a4, r4, a6, r6) in self._moves.items():
            if set_id not in out and (a4 or r4 or a6 or r6):
                out[set_id] = SetDelta(frozenset(a4), frozenset(r4), frozenset(a6),
                                       frozenset(r6))
        self._whole = set()
        self._moves = {}
        return out

    def _share(self, ids: frozenset[SetId]) -> frozenset[SetId]:
        """The one stored object equal to `ids`: most endpoints are in the same few
        combinations of sets, and a frozenset per endpoint was a sixth of felix's
        memory per remote endpoint."""
        if len(self._shared) > 4 * len(self._active) + 1024:
            self._shared.clear()  # combinations no endpoint has any more
        return self._shared.setdefault(ids, ids)

    def _moved(self, set_id: SetId, index: int, addr: str, joined: bool) -> None:
        """`addr` joined (left) the IPv4 (index 0) or IPv6 (1) members of `set_id`."""
        if set_id in self._whole:
            return  # handed over whole anyway
        moves = self._moves.get(set_id)
        if moves is None:
            moves = self._moves[set_id] = (set(), set(), set(), set())
        added, removed = moves[2 * index], moves[2 * index + 1]
        if joined:
            if addr in removed:
                removed.discard(addr)  # left and came back within one hand-over
            else:
                added.add(addr)
        elif addr in added:
            added.discard(addr)
        else:
            removed.add(addr)

    # --- internals -------------------------------------------------------------------

    def _matches(self, set_id: SetId, sel: Selector | None, data: EndpointData) -> bool:
        if sel is None:
            return any(set_id.value in self._profile_tags.get(p, ()) for p in data.profile_ids)
        return sel.evaluate(effective_labels(self._profile_labels, data.labels, data.profile_ids))

    def _wanted(self, data: EndpointData) -> frozenset[SetId]:
        out = set()
        tags = {t for p in data.profile_ids for t in self._profile_tags.get(p, ())}
        labels = effective_labels(self._profile_labels, data.labels, data.profile_ids)
        for set_id, sel in self._active.items():
            if sel is None:
                if set_id.value in tags:
                    out.add(set_id)
            elif sel.evaluate(labels):
                out.add(set_id)
        return frozenset(out)

    def _add_contrib(self, ref: EndpointRef, data: EndpointData) -> None:
        wanted = self._wanted(data)
        for set_id in wanted:
            for index, (counts, addrs) in enumerate(zip(self._members[set_id],
                                                        (data.addrs_v4, data.addrs_v6),
                                                        strict=True)):
                for a in addrs:
                    counts[a] += 1
                    if counts[a] == 1:
                        self._moved(set_id, index, a, joined=True)
        if wanted:
            self._contrib[ref] = self._share(wanted)

    def _remove_contrib(self, ref: EndpointRef, data: EndpointData) -> None:
        for set_id in self._contrib.pop(ref, frozenset()):
            for index, (counts, addrs) in enumerate(zip(self._members[set_id],
                                                        (data.addrs_v4, data.addrs_v6),
                                                        strict=True)):
                for a in addrs:
                    counts[a] -= 1
                    if counts[a] <= 0:
                        del counts[a]
                        self._moved(set_id, index, a, joined=False)

    def _refresh(self, ref: EndpointRef) -> None:
        data = self._endpoints[ref]
        if self._contrib.get(ref, frozenset()) == self._wanted(data):
            return
        self._remove_contrib(ref, data)
        self._add_contrib(ref, data)
