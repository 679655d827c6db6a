"""The owner of felix's ipsets of one IP version (tags, selectors, pools).

Owns: the desired felix ipsets (name -> type and members), what it believes the kernel
holds (type and members of each felix set of its family), a dirty set and the sets
waiting to be destroyed. `apply()` writes every creation and change through ONE `ipset
restore`: a new set, or any set after a failed apply, is built in a temp set
(`felix-tmp-...`), swapped in and the temp destroyed; sets already in sync get
`add`/`del` deltas. A set changed through `update_members` (members that joined and
left, as the calculation hands most changes over) costs time proportional to the
change, not to the set: its delta is written as it came and the caches are updated in
place; a set replaced whole is compared with what the kernel holds.
Destroying sets is a separate `apply_deletions()`, which `felix.dataplane.apply` runs
after iptables no longer refers to them. `ipset restore` is not atomic, so any failure
makes the next apply read everything back (`ipset save`) and rewrite every set in full.

Never touched: sets without the felix prefix, and felix sets of the other family.

Leaves to others: which sets exist and their members (felix.calc), ordering against
iptables (felix.dataplane.apply).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import replace

from felix.dataplane.cmd import CommandFailed, CommandRunner
from felix.dataplane.types import IPSET_PREFIX, MAX_IPSET_NAME, IPSetState
from libcalico.errors import ValidationError

_log = logging.getLogger(__name__)

SET_TYPES = ("hash:ip", "hash:net")
DEFAULT_MAX_SIZE = 1048576  # Felix's MaxIpsetSize


def canonical_member(member: str, version: int) -> str:
    """One member as `ipset save` prints it: a bare address for a host, else a CIDR.
    A member already in that form comes back as the same object (not a copy: the owner
    holds one per endpoint of the cluster)."""
    net = ipaddress.ip_network(member.strip(), strict=False)
    if net.version != version:
        raise ValueError(f"not an IPv{version} address")
    out = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    return member if out == member else out


def temp_name(name: str, prefix: str = IPSET_PREFIX) -> str:
    """The temp set used to rewrite `name`: `felix-tmp-<rest>`, or a hash if too long."""
    candidate = f"{prefix}tmp-{name[len(prefix):]}"
    if len(candidate) <= MAX_IPSET_NAME:
        return candidate
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{prefix}tmp-{digest[:MAX_IPSET_NAME - len(prefix) - 4]}"


class IPSets:
    """Felix's ipsets of one family, applied through one `ipset restore` per apply."""

    def __init__(self, version: int, runner: CommandRunner, max_size: int = DEFAULT_MAX_SIZE,
                 prefix: str = IPSET_PREFIX) -> None:
        if version not in (4, 6):
            raise ValidationError("version", version, "must be 4 or 6")
        self.version = version
        self.runner = runner
        self.max_size = max_size
        self.prefix = prefix
        self._family = "inet" if version == 4 else "inet6"
        self._desired: dict[str, IPSetState] = {}  # name and type (members: below)
        self._members: dict[str, set[str]] = {}  # canonical desired members
        self._canonical: dict[str, str] = {}  # raw member -> canonical, to parse each once
        self._kernel: dict[str, tuple[str, set[str]]] = {}  # name -> (type, members)
        self._dirty: set[str] = set()
        # dirty sets whose only change is this (added, removed), kernel in sync before
        self._deltas: dict[str, tuple[set[str], set[str]]] = {}
        self._to_delete: set[str] = set()
        self._needs_resync = True
        self._full_rewrite = False

    # ---- desired state -------------------------------------------------------------

    def set_state(self, sets: Iterable[IPSetState]) -> None:
        """Replace the whole desired set of ipsets of this family."""
        sets = list(sets)
        wanted = {s.name for s in sets}
        for name in [n for n in self._desired if n not in wanted]:
            self.remove_ipset(name)
        for state in sets:
            self.set_ipset(state)

    def set_ipset(self, state: IPSetState) -> None:
        """Desire ipset `state.name` with exactly `state.members`."""
        name = state.name
        if not name.startswith(self.prefix) or len(name) > MAX_IPSET_NAME:
            raise ValidationError("ipset name", name, f"must start with {self.prefix!r} and "
                                  f"have at most {MAX_IPSET_NAME} characters")
        if name.startswith(f"{self.prefix}tmp-"):
            raise ValidationError("ipset name", name, "the tmp- prefix is reserved")
        if state.version != self.version:
            raise ValidationError("ipset version", state.version, f"owner is IPv{self.version}")
        if state.set_type not in SET_TYPES:
            raise ValidationError("ipset type", state.set_type, f"one of {SET_TYPES}")
        if len(state.members) > self.max_size:
            raise ValidationError("ipset members", f"{name}: {len(state.members)}",
                                  f"more than maxelem {self.max_size}")
        members = self._canonical_members(name, state.members)
        old = self._desired.get(name)
        if old is not None and old.set_type == state.set_type and self._members[name] == members:
            return
        if len(self._canonical) > 4 * sum(map(len, self._members.values())) + 4096:
            self._canonical.clear()  # forget members no set holds any more
        self._desired[name] = replace(state, members=frozenset())  # members: below
        self._members[name] = members
        self._deltas.pop(name, None)
        self._to_delete.discard(name)
        if self._kernel.get(name) != (state.set_type, members):
            self._dirty.add(name)
        else:
            self._dirty.discard(name)

    def update_members(self, name: str, added: Iterable[str], removed: Iterable[str]) -> None:
        """Members that joined and left set `name` (desired already): work and the write
        are proportional to the change."""
        if name not in self._desired:
            raise ValidationError("ipset name", name, "update of a set that is not desired")
        members = self._members[name]
        joined = self._canonical_members(name, added) - members
        left = self._canonical_members(name, removed) & members
        if not joined and not left:
            return
        if len(members) + len(joined) > self.max_size:
            raise ValidationError("ipset members", f"{name}: {len(members) + len(joined)}",
                                  f"more than maxelem {self.max_size}")
        members |= joined
        members -= left
        if name in self._dirty and name not in self._deltas:
            return  # already to be rewritten or diffed against the kernel in full
        if name not in self._kernel:
            self._dirty.add(name)
            return
        adds, dels = self._deltas.setdefault(name, (set(), set()))
        # Relative to the kernel: a member that comes back cancels its removal, one
        # that goes again cancels its addition.
        back, gone = joined & dels, left & adds
        dels -= back
        adds -= gone
        adds |= joined - back
        dels |= left - gone
        self._dirty.add(name)

    def _canonical_members(self, name: str, raw: Iterable[str]) -> set[str]:
        members = set()
        canon = self._canonical
        for m in raw:
            c = canon.get(m)
            if c is None:
                try:
                    c = canon[m] = canonical_member(m, self.version)
                except ValueError as exc:
                    raise ValidationError(f"ipset {name} member", m, str(exc)) from None
            members.add(c)
        return members

    def remove_ipset(self, name: str) -> None:
        """Stop desiring `name`; `apply_deletions()` destroys it."""
        if self._desired.pop(name, None) is None:
            return
        del self._members[name]
        self._deltas.pop(name, None)
        self._dirty.discard(name)
        if name in self._kernel:
            self._to_delete.add(name)

    def mark_resync(self) -> None:
        """Read the sets back at the next apply (periodic refresh against tampering)."""
        self._needs_resync = True

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._desired)

    @property
    def in_sync(self) -> bool:
        return not (self._needs_resync or self._dirty or self._to_delete)

    # ---- apply -----------------------------------------------------------------------

    def apply(self) -> bool:
        """Create and update sets (no deletions) in one `ipset restore`; True if it ran."""
        if self._needs_resync:
            self.resync()
        if not self._dirty:
            return False
        lines: list[str] = []
        for name in sorted(self._dirty):
            lines.extend(self._render(name))
        try:
            self.runner.run(["ipset", "-exist", "restore"], input="\n".join(lines) + "\n")
        except CommandFailed:
            self._failed()
            raise
        for name in self._dirty:
            delta = self._deltas.get(name)
            if delta is not None:
                have = self._kernel[name][1]
                have -= delta[1]
                have |= delta[0]
            else:
                self._kernel[name] = (self._desired[name].set_type, set(self._members[name]))
        self._dirty.clear()
        self._deltas.clear()
        self._full_rewrite = False
        return True

    def _render(self, name: str) -> list[str]:
        state = self._desired[name]
        members = self._members[name]
        kernel = self._kernel.get(name)
        create_opts = f"{state.set_type} family {self._family} maxelem {self.max_size}"
        delta = self._deltas.get(name)
        if delta is not None and not self._full_rewrite:
            return ([f"del {name} {m}" for m in sorted(delta[1])]
                    + [f"add {name} {m}" for m in sorted(delta[0])])
        if kernel is not None and kernel[0] == state.set_type and not self._full_rewrite:
            have = kernel[1]
            return ([f"del {name} {m}" for m in sorted(have - members)]
                    + [f"add {name} {m}" for m in sorted(members - have)])
        lines = []
        if kernel is not None and kernel[0] != state.set_type:
            # swap needs matching types: replace the set (fails if iptables still uses it)
            lines.append(f"destroy {name}")
        tmp = temp_name(name, self.prefix)
        if kernel is None or kernel[0] != state.set_type:
            lines.append(f"create {name} {create_opts}")
        lines.append(f"create {tmp} {create_opts}")
        lines.append(f"flush {tmp}")
        lines.extend(f"add {tmp} {m}" for m in members)
        lines.append(f"swap {tmp} {name}")
        lines.append(f"destroy {tmp}")
        return lines

    def apply_deletions(self) -> bool:
        """Destroy felix sets no longer desired (and leftover temp sets); True if it ran."""
        if self._needs_resync:
            self.resync()
        names = sorted(self._to_delete - set(self._desired))
        if not names:
            return False
        try:
            self.runner.run(["ipset", "restore"],
                            input="".join(f"destroy {n}\n" for n in names))
        except CommandFailed:
            self._failed()
            raise
        for name in names:
            self._kernel.pop(name, None)
        self._to_delete.clear()
        return True

    def _failed(self) -> None:
        self._needs_resync = True
        self._full_rewrite = True
        self._deltas.clear()

    # ---- resync ----------------------------------------------------------------------

    def resync(self) -> None:
        """Read every felix set of this family back (one `ipset save`); mark differences."""
        kernel = self.parse_save(self.runner.run(["ipset", "save"]))
        self._kernel = {n: (t, set(m)) for n, (t, m) in kernel.items()
                        if not n.startswith(f"{self.prefix}tmp-")}
        self._deltas.clear()  # every set is compared with what the kernel holds now
        full = self._full_rewrite
        self._dirty = {n for n in self._desired
                       if full or self._kernel.get(n) != (self._desired[n].set_type,
                                                          self._members[n])}
        self._to_delete = {n for n in kernel if n not in self._desired}
        self._needs_resync = False
        if self._dirty or self._to_delete:
            _log.info("ipsets v%d resync: %d to write, %d to destroy", self.version,
                      len(self._dirty), len(self._to_delete))

    def parse_save(self, text: str) -> dict[str, tuple[str, frozenset[str]]]:
        """Felix sets of this family in `ipset save` output: name -> (type, members)."""
        types: dict[str, str] = {}
        members: dict[str, set[str]] = {}
        prefix = self.prefix
        for line in text.splitlines():
            if line.startswith("add "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in members:
                    members[parts[1]].add(parts[2])
            elif line.startswith("create "):
                parts = line.split()
                if len(parts) < 3 or not parts[1].startswith(prefix):
                    continue
                family = parts[parts.index("family") + 1] if "family" in parts else "inet"
                if family == self._family:
                    types[parts[1]] = parts[2]
                    members[parts[1]] = set()
        out = {}
        for name, set_type in types.items():
            canon = set()
            for m in members[name]:
                try:
                    canon.add(canonical_member(m, self.version))
                except ValueError:
                    canon.add(m)  # something odd: it will not match, so it gets rewritten
            out[name] = (set_type, frozenset(canon))
        return out
