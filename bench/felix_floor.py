"""The floor for felix's benchmarks: felix's final dataplane state written by the raw tools
at their best, and the check that both sides really hold the same state.

Owns:
- `Snapshot`: what felix writes, read back from a namespace with the raw tools
  (`iptables-save` of every table, `ipset save`, `ip -4 route show table all`, permanent
  neighbours, the workload interfaces' sysctls), both as text to replay and normalised
  for comparison;
- `write_floor`: that state written into another namespace, set up like felix's host,
  the way a skilled operator would: one `ipset restore`, one `ip -batch` (routes and
  neighbours), `iptables-restore --noflush` in pieces of 1,000 chains ordered depth-first
  (every chain after the chains it jumps to, each root's subtree together, as felix
  does: iptables-nft-restore's cost grows with the square of the chains in one run),
  base jumps and small tables in one last restore, and one `sysctl -p -`; each step
  timed;
- `naive_restore`: the whole ruleset as ONE iptables-restore (kept only as a labelled
  extra; it is quadratic in chains, not a floor);
- `compare`: both snapshots equal after normalising only what legitimately differs
  (`NORMALISED`), else an error naming the first difference.

Leaves to the benchmarks: producing felix's state, the namespaces, and reporting.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from netsim.netns import Namespace

CHUNK_CHAINS = 1000
ROUTE_PROTO = "80"  # felix's routes
WORKLOAD_PREFIX = "cali"
# What felix sets on a workload interface (felix.dataplane.interfaces documents it); the
# comparison checks this list against what felix really wrote.
SYSCTLS = (("net.ipv4.conf.{}.proxy_arp", "1"), ("net.ipv4.neigh.{}.proxy_delay", "0"),
           ("net.ipv4.conf.{}.rp_filter", "1"), ("net.ipv4.conf.{}.forwarding", "1"),
           ("net.ipv4.conf.{}.route_localnet", "1"))

NORMALISED = [
    "iptables-save: '#' comment lines (they carry the time of the save) are dropped and "
    "the packet/byte counters of chain declarations are set to [0:0] (traffic differs); "
    "chain and rule order are compared as saved",
    "ipset save: the random initval and the hashsize/bucketsize (they depend on how the "
    "set grew) are dropped from create lines, and members are sorted (a hash set has no "
    "order)",
    "routes, neighbours and sysctls are compared exactly as the kernel lists them",
]

_TARGET = re.compile(r"\s-[jg]\s+(\S+)")
_COUNTERS = re.compile(r"\[\d+:\d+\]$")
_IPSET_VOLATILE = re.compile(r" (initval 0x[0-9a-f]+|hashsize \d+|bucketsize \d+)")


# --- reading a namespace's dataplane ---------------------------------------------------

@dataclass
class Snapshot:
    """One namespace's felix-relevant dataplane, as the raw tools print it."""

    iptables: str  # iptables-save, all tables
    ipsets: str  # ipset save
    routes: str  # ip -4 route show table all
    neighbours: str  # ip -4 neigh show nud permanent
    sysctls: str  # "key = value" lines for every workload interface, sorted

    def normalised(self) -> dict[str, str]:
        return {"iptables-save": normalise_iptables(self.iptables),
                "ipset save": normalise_ipsets(self.ipsets),
                "routes": self.routes, "permanent neighbours": self.neighbours,
                "workload interface sysctls": self.sysctls}

    @property
    def felix_routes(self) -> list[str]:
        return [line for line in self.routes.splitlines() if f" proto {ROUTE_PROTO} " in
                f" {line} " and " table " not in line]


_READ_SYSCTLS = r"""
import os, sys
out = []
for ifname in sorted(os.listdir("/sys/class/net")):
    if not ifname.startswith(sys.argv[1]):
        continue
    for key in sys.argv[2:]:
        path = "/proc/sys/" + key.format(ifname).replace(".", "/")
        try:
            with open(path) as f:
                out.append(f"{key.format(ifname)} = {f.read().strip()}")
        except OSError as exc:
            out.append(f"{key.format(ifname)} ! {exc.strerror}")
print("\n".join(out))
"""


def snapshot(ns: Namespace, python: str) -> Snapshot:
    """Read `ns` back with iptables-save, ipset save, ip route/neigh and /proc/sys."""
    return Snapshot(
        iptables=ns.exec("iptables-save").stdout,
        ipsets=ns.exec("ipset", "save").stdout,
        routes=ns.exec("ip", "-4", "route", "show", "table", "all").stdout,
        neighbours=ns.exec("ip", "-4", "neigh", "show", "nud", "permanent").stdout,
        sysctls=ns.exec(python, "-c", _READ_SYSCTLS, WORKLOAD_PREFIX,
                        *(k for k, _ in SYSCTLS)).stdout)


def normalise_iptables(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(":"):
            line = _COUNTERS.sub("[0:0]", line)
        out.append(line)
    return "\n".join(out) + "\n"


def normalise_ipsets(text: str) -> str:
    sets: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if parts[0] == "create":
            sets[parts[1]] = (_IPSET_VOLATILE.sub("", line), [])
        elif parts[0] == "add":
            sets[parts[1]][1].append(line)
    return "".join(create + "\n" + "".join(f"{a}\n" for a in sorted(adds))
                   for _, (create, adds) in sorted(sets.items()))


def compare(felix: Snapshot, floor: Snapshot) -> dict[str, object]:
    """Raise if the two differ after normalisation; else say what was compared."""
    a, b = felix.normalised(), floor.normalised()
    for part in a:
        if a[part] != b[part]:
            diff = list(difflib.unified_diff(a[part].splitlines(), b[part].splitlines(),
                                             "felix", "floor", n=1, lineterm=""))
            raise RuntimeError(f"felix and the raw-tool floor differ in {part}:\n"
                               + "\n".join(diff[:40]))
    return {"identical": True, "compared": list(a), "normalised": NORMALISED,
            "iptables_save_lines": a["iptables-save"].count("\n"),
            "felix_routes": len(felix.felix_routes),
            "ipset_members": a["ipset save"].count("\nadd "),
            "sysctls": a["workload interface sysctls"].count(" = ")}


# --- writing the floor -------------------------------------------------------------------

@dataclass
class Table:
    """One table of an iptables-save: user chains in saved order, their rules, and the
    rules and policies of the built-in chains."""

    name: str
    chains: dict[str, list[str]]  # user chain -> its "-A" lines
    builtins: dict[str, tuple[str, list[str]]]  # built-in chain -> (policy, "-A" lines)


def parse_save(text: str) -> list[Table]:
    tables: list[Table] = []
    current: Table | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = Table(line[1:].strip(), {}, {})
            tables.append(current)
        elif current is None or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split(" ", 2)[:2]
            if policy == "-":
                current.chains[name] = []
            else:
                current.builtins[name] = (policy, [])
        elif line.startswith("-A "):
            chain = line[3:].split(" ", 1)[0]
            if chain in current.chains:
                current.chains[chain].append(line)
            else:  # a built-in chain (a restore file need not declare it)
                current.builtins.setdefault(chain, ("ACCEPT", []))[1].append(line)
    return tables


def depth_first(chains: dict[str, list[str]]) -> list[str]:
    """Every chain after the chains it jumps to; each root's subtree kept together
    (roots in name order, children taken last-name-first off a stack): the order
    felix's IptablesTable uses for the restores of a large rewrite."""
    targets = {name: sorted({t for line in lines for t in _TARGET.findall(line)
                             if t in chains and t != name})
               for name, lines in chains.items()}
    order: list[str] = []
    done: set[str] = set()
    for root in sorted(chains):
        stack = [(root, False)]
        while stack:
            name, expanded = stack.pop()
            if expanded:
                order.append(name)
                continue
            if name in done:
                continue
            done.add(name)
            stack.append((name, True))
            stack.extend((t, False) for t in targets[name] if t not in done)
    return order


def _section(table: Table, chains: Sequence[str], builtins: bool) -> str:
    lines = [f"*{table.name}", *(f":{c} - [0:0]" for c in chains)]
    if builtins:
        lines += [f":{c} {p} [0:0]" for c, (p, _) in table.builtins.items()]
    lines += [rule for c in chains for rule in table.chains[c]]
    if builtins:
        lines += [rule for _, rules in table.builtins.values() for rule in rules]
    return "\n".join([*lines, "COMMIT"]) + "\n"


def restore_pieces(tables: Sequence[Table], size: int = CHUNK_CHAINS) -> list[str]:
    """iptables-restore --noflush payloads (one process each): the user chains of a large
    table depth-first in pieces of `size`; then ONE last payload with, per table, the
    built-in chains' rules (the base jumps) and the chains of any table small enough
    for one piece (one section, i.e. one commit, per table)."""
    pieces: list[str] = []
    last: list[str] = []
    for table in tables:
        order = depth_first(table.chains)
        if len(order) <= size:
            last.append(_section(table, order, builtins=True))
            continue
        pieces += [_section(table, order[i:i + size], builtins=False)
                   for i in range(0, len(order), size)]
        last.append(_section(table, [], builtins=True))
    return [*pieces, "".join(last)] if last else pieces


def single_restore(tables: Sequence[Table]) -> str:
    """The whole ruleset as one restore payload (chains in saved order)."""
    out = []
    for table in tables:
        out.append(f"*{table.name}")
        out += [f":{c} - [0:0]" for c in table.chains]
        out += [f":{c} {p} [0:0]" for c, (p, _) in table.builtins.items()]
        out += [rule for rules in table.chains.values() for rule in rules]
        out += [rule for _, rules in table.builtins.values() for rule in rules]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def route_batch(snap: Snapshot) -> list[str]:
    """`ip -batch` lines re-creating felix's routes and permanent neighbours."""
    lines = [f"route add {r}" for r in snap.felix_routes]
    lines += [f"neigh add {n.replace(' PERMANENT', '')} nud permanent"
              for n in snap.neighbours.splitlines() if n.strip()]
    return lines


def sysctl_lines(ifnames: Iterable[str]) -> str:
    return "".join(f"{key.format(i)} = {value}\n" for i in ifnames for key, value in SYSCTLS)


def workload_ifnames(snap: Snapshot) -> list[str]:
    return sorted({line.split(".")[3] for line in snap.sysctls.splitlines() if " = " in line})


def _timed(step: object) -> float:
    start = time.perf_counter()
    step()  # type: ignore[operator]
    return time.perf_counter() - start


def write_floor(ns: Namespace, snap: Snapshot) -> dict[str, float | int]:
    """Write `snap`'s state into `ns` with the raw tools: seconds per step, `total_s`
    (ipsets, routes, iptables) and `with_sysctls_s` (plus the interface sysctls)."""
    pieces = restore_pieces(parse_save(snap.iptables))
    routes = route_batch(snap)
    out: dict[str, float | int] = {
        "ipset_restore_s": _timed(lambda: ns.exec("ipset", "restore", input=snap.ipsets)),
        "ip_batch_s": _timed(lambda: ns.ip_batch(routes)),
        "iptables_restores_s": _timed(lambda: [
            ns.exec("iptables-restore", "-w", "10", "--noflush", input=p) for p in pieces]),
    }
    out["total_s"] = sum(out.values())
    text = sysctl_lines(workload_ifnames(snap))
    out["sysctl_s"] = _timed(lambda: ns.exec("sysctl", "-q", "-p", "-", input=text))
    out["with_sysctls_s"] = out["total_s"] + out["sysctl_s"]
    out["iptables_restores"] = len(pieces)
    return out


def naive_restore(ns: Namespace, snap: Snapshot) -> float:
    """Seconds for the whole ruleset as ONE iptables-restore into `ns` (which must hold
    the ipsets the rules use)."""
    text = single_restore(parse_save(snap.iptables))
    return _timed(lambda: ns.exec("iptables-restore", "-w", "10", "--noflush", input=text))


def _dispatch_roots(table: Table) -> dict[str, str]:
    """{"-i": from-root, "-o": to-root}: the user chains felix's forward chain sends
    workload traffic to (`-i cali+ ... -j ROOT`, `-o cali+ ... -j ROOT`)."""
    roots: dict[str, str] = {}
    forward = [t for line in table.builtins.get("FORWARD", ("", []))[1]
               for t in _TARGET.findall(line) if t in table.chains]
    for chain in forward:
        for line in table.chains[chain]:
            for flag in ("-i", "-o"):
                targets = [t for t in _TARGET.findall(line) if t in table.chains]
                if f" {flag} {WORKLOAD_PREFIX}+ " in line and targets:
                    roots[flag] = targets[0]
    if set(roots) != {"-i", "-o"}:
        raise RuntimeError(f"cannot find felix's dispatch roots in {forward}")
    return roots


def endpoint_addition(final: Table, present: set[str], ifname: str) -> str:
    """An iptables-restore --noflush payload that makes `ifname`'s traffic go through
    the chains felix wrote for it (taken from `final`, felix's filter table after the
    additions): the endpoint's chains and whatever they jump to that is not `present`
    yet (new profile chains), plus one jump per direction at the top of the dispatch
    roots. `present` is updated with the chains written."""
    roots = _dispatch_roots(final)
    jumps: dict[str, str] = {}
    for lines in final.chains.values():
        for line in lines:
            for flag in ("-i", "-o"):
                if f" {flag} {ifname} " in line:
                    jumps[flag] = _TARGET.findall(line)[0]
    if set(jumps) != {"-i", "-o"}:
        raise RuntimeError(f"felix wrote no dispatch rules for {ifname}")
    wanted = {c: final.chains[c] for c in final.chains}
    new: list[str] = []
    stack = list(jumps.values())
    while stack:
        name = stack.pop()
        if name in present or name in new:
            continue
        new.append(name)
        stack.extend(t for line in wanted[name] for t in _TARGET.findall(line)
                     if t in wanted)
    order = [c for c in depth_first({c: wanted[c] for c in new})]
    lines = [f"*{final.name}", *(f":{c} - [0:0]" for c in order)]
    lines += [rule for c in order for rule in wanted[c]]
    lines += [f"-I {roots[flag]} 1 {flag} {ifname} -g {target}"
              for flag, target in sorted(jumps.items())]
    present.update(new)
    return "\n".join([*lines, "COMMIT"]) + "\n"
