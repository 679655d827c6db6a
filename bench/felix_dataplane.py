"""Benchmark: felix's dataplane owners programming a cold host, against the raw tools' floor.

Measures, in throw-away hosts set up like felix's (netsim.topology: a host
namespace with eth0 198.18.0.1/24 and ip_forward on, plus the workload interfaces
`caliXXXXXXXX` made beforehand with one `ip -batch` as ifb devices, the kernel having no
dummy driver), with real iptables (nf_tables backend), ipset, netlink and /proc/sys:
- cold start: the dataplane of N local endpoints (N=10,000; --quick 300) written through
  felix's owners (IPSets, Routes, IptablesTable, in the driver's order; the per-interface
  sysctls shown apart), clock from the first owner call to the last one returning;
  against the FLOOR (`bench.felix_floor`): the same final state written by the raw tools
  at their best into an identically set up host - one `ipset restore`, one `ip -batch`,
  `iptables-restore --noflush` in depth-first pieces of 1,000 chains, one `sysctl -p -`
  for the sysctls - clock around those commands, text prepared beforehand. Both hosts
  are then read back and must hold the same state (`same_state`: iptables-save, routes,
  neighbours, ipset save, sysctls; what is normalised is listed there), else the run
  fails. Goals: <= 15 s and <= 3x the floor. Extra, labelled as such: the whole ruleset
  as ONE iptables-restore (quadratic in chains with iptables-nft; not a floor);
- a no-op refresh (read everything back, write nothing) and adding one endpoint;
- a 1,000-endpoint ruleset (--quick 100) applied with one `iptables` process per chain
  and rule, versus the owner's single restore.
Prints one JSON object.

The desired state is synthetic but shaped like felix.rules' output: a two-level dispatch
tree by interface-name prefix, per-endpoint chains (mark clear, anti-spoofing, profile
jump, mark return, drop), 500 profiles with 10 mark-setting rules each over 100 tag
ipsets, and one /32 route per endpoint. felix imports (re-point them if the owners move):
felix.dataplane.{cmd,interfaces,ipsets,iptables,routes,types}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench.felix_floor import (
    Snapshot,
    compare,
    naive_restore,
    snapshot,
    sysctl_lines,
    write_floor,
)
from felix.dataplane.cmd import CommandRunner
from felix.dataplane.interfaces import Interfaces
from felix.dataplane.ipsets import IPSets
from felix.dataplane.iptables import IptablesTable, render_table_state
from felix.dataplane.routes import Routes
from felix.dataplane.types import (
    Chain,
    InterfaceState,
    IPSetState,
    RouteState,
    Rule,
    TableState,
)
from netsim.netns import Namespace, namespace
from netsim.topology import Topology

ACCEPT_MARK = "0x1000000/0x1000000"


def sh(cmd: list[str], input: str | None = None) -> str:  # noqa: A002
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed: {proc.stderr.strip()[:500]}")
    return proc.stdout


def link_kind(ns: str) -> str:
    """dummy if this kernel has it, else ifb (both are cheap fake interfaces)."""
    probe = subprocess.run(["ip", "-n", ns, "link", "add", "flxprobe", "type", "dummy"],
                           capture_output=True, check=False)
    if probe.returncode == 0:
        sh(["ip", "-n", ns, "link", "del", "flxprobe"])
        return "dummy"
    return "ifb"


@contextmanager
def felix_like_host(tag: str) -> Iterator[Namespace]:
    """A host namespace set up like felix's in bench.felix and the system tests: eth0 on a
    fabric with 198.18.0.1/24 (the kernel's route lookups differ without an IPv4
    address), ip_forward on. Each call makes its own fabric, so hosts are identical."""
    with Topology(f"flxd-{tag}", hosts=1, etcd=False) as topo:
        host = topo.hosts[0]
        host.ns.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield host.ns


def make_interfaces(ns: str, names: list[str]) -> None:
    kind = link_kind(ns)
    lines = [f"link add {n} type {kind}" for n in names]
    lines += [f"link set {n} up" for n in names]
    sh(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")


@dataclass
class Dataplane:
    """The desired state of one host, as felix's calc would hand it to the owners."""

    ifnames: list[str]
    addrs: list[str]
    table: TableState
    ipsets: list[IPSetState]
    routes: list[RouteState]
    interfaces: list[InterfaceState]

    @property
    def rule_count(self) -> int:
        return (sum(len(c.rules) for c in self.table.chains.values())
                + sum(len(r) for r in self.table.base_jumps.values()))


def build_dataplane(n: int, profiles: int, tags: int, rules_per_profile: int = 10,
                    offset: int = 0) -> Dataplane:
    ifnames = [f"cali{hashlib.md5(str(i + offset).encode()).hexdigest()[:8]}"
               for i in range(n)]
    addrs = [f"198.18.{128 + (i + offset) // 250}.{(i + offset) % 250 + 1}" for i in range(n)]
    chains: list[Chain] = []
    for p in range(profiles):
        for direction, flag in (("i", "src"), ("o", "dst")):
            rules = [Rule(f"-p tcp --dport {1000 + r} -m set --match-set "
                          f"felix-v4-tag{(p + r) % tags:03d} {flag}",
                          f"-j MARK --set-xmark {ACCEPT_MARK}", f"profile prof{p} rule {r}")
                     for r in range(rules_per_profile - 1)]
            rules.append(Rule(f"-m mark --mark {ACCEPT_MARK}", "-j RETURN"))
            chains.append(Chain(f"felix-p-prof{p:04d}-{direction}", tuple(rules)))
    from_root: dict[str, list[Rule]] = {}
    to_root: dict[str, list[Rule]] = {}
    for i, (ifname, addr) in enumerate(zip(ifnames, addrs, strict=True)):
        suffix = ifname[4:]
        prof = f"felix-p-prof{i % max(profiles, 1):04d}"
        clear = Rule("", "-j MARK --set-xmark 0/0x1000000")
        chains.append(Chain(f"felix-from-{suffix}", (
            clear,
            Rule(f"! -s {addr}/32", "-j DROP", "anti-spoofing"),
            Rule("", f"-j {prof}-o"),
            Rule(f"-m mark --mark {ACCEPT_MARK}", "-j RETURN"),
            Rule("", "-j DROP", "no profile accepted"))))
        chains.append(Chain(f"felix-to-{suffix}", (
            clear,
            Rule("", f"-j {prof}-i"),
            Rule(f"-m mark --mark {ACCEPT_MARK}", "-j RETURN"),
            Rule("", "-j DROP", "no profile accepted"))))
        from_root.setdefault(suffix[:2], []).append(
            Rule(f"-i {ifname}", f"-g felix-from-{suffix}"))
        to_root.setdefault(suffix[:2], []).append(Rule(f"-o {ifname}", f"-g felix-to-{suffix}"))
    for root, per_prefix, flag in (("FROM", from_root, "-i"), ("TO", to_root, "-o")):
        top = []
        for prefix in sorted(per_prefix):
            sub = f"felix-{root}-EP-{prefix}"
            chains.append(Chain(sub, (*per_prefix[prefix], Rule("", "-j DROP"))))
            top.append(Rule(f"{flag} cali{prefix}+", f"-g {sub}"))
        top.append(Rule("", "-j DROP", "unknown interface"))
        chains.append(Chain(f"felix-{root}-ENDPOINT", tuple(top)))
    chains += [
        Chain("felix-FORWARD", (
            Rule("-m conntrack --ctstate INVALID", "-j DROP"),
            Rule("-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT"),
            Rule("-i cali+", "-j felix-FROM-ENDPOINT"),
            Rule("-o cali+", "-j felix-TO-ENDPOINT"),
            Rule("-i cali+", "-j ACCEPT"), Rule("-o cali+", "-j ACCEPT"))),
        Chain("felix-INPUT", (
            Rule("-m conntrack --ctstate INVALID", "-j DROP"),
            Rule("-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT"),
            Rule("-i cali+", "-j DROP", "endpoint to host: DROP"))),
        Chain("felix-OUTPUT", (Rule("-o cali+", "-j felix-TO-ENDPOINT"),)),
    ]
    table = TableState(4, "filter", {c.name: c for c in chains}, {
        "INPUT": (Rule("", "-j felix-INPUT"),),
        "FORWARD": (Rule("", "-j felix-FORWARD"),),
        "OUTPUT": (Rule("", "-j felix-OUTPUT"),)})
    members: dict[int, set[str]] = {t: set() for t in range(tags)}
    for i, addr in enumerate(addrs):
        members[i % tags].add(addr)
    ipsets = [IPSetState(f"felix-v4-tag{t:03d}", 4, members=frozenset(m))
              for t, m in members.items()]
    routes = [RouteState(f"{a}/32", n) for a, n in zip(addrs, ifnames, strict=True)]
    interfaces = [InterfaceState(n) for n in ifnames]
    return Dataplane(ifnames, addrs, table, ipsets, routes, interfaces)


def timed(*steps: Callable[[], object]) -> float:
    """Wall time of running `steps` one after the other."""
    start = time.perf_counter()
    for step in steps:
        step()
    return time.perf_counter() - start


def desired_snapshot(dp: Dataplane) -> Snapshot:
    """The synthetic desired state as the raw tools print it (the floor's input, written
    independently of felix's owners)."""
    ipsets = "".join(
        f"create {s.name} {s.set_type} family inet maxelem 1048576\n"
        + "".join(f"add {s.name} {m}\n" for m in sorted(s.members)) for s in dp.ipsets)
    routes = "".join(f"{r.dest.removesuffix('/32')} dev {r.ifname} proto 80 scope link\n"
                     for r in dp.routes)
    return Snapshot(iptables=render_table_state(dp.table.chains.values(),
                                                dp.table.base_jumps, "filter"),
                    ipsets=ipsets, routes=routes, neighbours="",
                    sysctls=sysctl_lines(dp.ifnames))


@dataclass
class Owners:
    ipsets: IPSets
    routes: Routes
    filter: IptablesTable
    interfaces: Interfaces

    @classmethod
    def create(cls, ns: str) -> Owners:
        runner = CommandRunner(netns=ns, lock_wait=10)
        return cls(IPSets(4, runner), Routes(ns), IptablesTable(4, "filter", runner),
                   Interfaces(ns))

    def close(self) -> None:
        self.routes.close()
        self.interfaces.close()


def felix_cold_start(owners: Owners, dp: Dataplane) -> dict[str, float]:
    """Hand the state to the owners and apply in the driver's order."""
    out = {
        "ipsets_s": timed(lambda: owners.ipsets.set_state(dp.ipsets), owners.ipsets.apply),
        "routes_s": timed(lambda: owners.routes.set_routes(dp.routes), owners.routes.apply),
        "iptables_s": timed(lambda: owners.filter.set_state(dp.table), owners.filter.apply),
        "ipset_deletions_s": timed(owners.ipsets.apply_deletions),
    }
    out["total_s"] = sum(out.values())
    out["sysctls_s"] = timed(lambda: owners.interfaces.set_interfaces(dp.interfaces),
                             owners.interfaces.apply)
    return out


def check_programmed(ns: str, dp: Dataplane) -> dict[str, int]:
    save = sh(["ip", "netns", "exec", ns, "iptables-save", "-t", "filter"])
    routes = sh(["ip", "-n", ns, "route", "show", "proto", "80"]).count("\n")
    members = sh(["ip", "netns", "exec", ns, "ipset", "save"]).count("\nadd felix-")
    rules = save.count('"felix:')
    assert rules == dp.rule_count, (rules, dp.rule_count)
    assert routes == len(dp.routes), (routes, len(dp.routes))
    return {"rules": rules, "routes": routes, "ipset_members": members}


def refresh_and_add(owners: Owners, dp: Dataplane, ns: str, adds: int) -> dict[str, float]:
    """A no-op refresh (read back everything), then endpoints added one apply at a time."""
    out = {}
    for label, owner in (("ipsets", owners.ipsets), ("routes", owners.routes),
                         ("iptables", owners.filter), ("sysctls", owners.interfaces)):
        owner.mark_resync()
        out[f"noop_refresh_{label}_s"] = timed(owner.apply)
    out["noop_refresh_s"] = sum(out.values())
    extra = build_dataplane(adds, 0, 1, offset=len(dp.ifnames) + 7)
    make_interfaces(ns, extra.ifnames)
    samples = []
    for i, ifname in enumerate(extra.ifnames):
        suffix = ifname[4:]
        new_chains = [extra.table.chains[f"felix-from-{suffix}"],
                      extra.table.chains[f"felix-to-{suffix}"]]

        def add_one(i: int = i, ifname: str = ifname, new_chains: list[Chain] = new_chains
                    ) -> None:
            owners.routes.set_route(extra.routes[i])
            owners.interfaces.set_interface(extra.interfaces[i])
            for chain in new_chains:
                owners.filter.set_chain(chain)
            # its prefix's dispatch sub-chain gains one rule (and the top one, if new)
            for root, flag, target in (("FROM", "-i", new_chains[0].name),
                                       ("TO", "-o", new_chains[1].name)):
                sub = f"felix-{root}-EP-{ifname[4:6]}"
                old = owners.filter.get_chain(sub)
                if old is None:
                    top = owners.filter.get_chain(f"felix-{root}-ENDPOINT")
                    assert top is not None
                    owners.filter.set_chain(Chain(top.name, (
                        Rule(f"{flag} {ifname[:6]}+", f"-g {sub}"), *top.rules)))
                    old = Chain(sub, (Rule("", "-j DROP"),))
                owners.filter.set_chain(Chain(sub, (Rule(f"{flag} {ifname}", f"-g {target}"),
                                                    *old.rules)))
            owners.routes.apply()
            owners.interfaces.apply()
            owners.filter.apply()
        samples.append(timed(add_one))
    out["endpoint_add_p50_s"] = statistics.median(samples)
    out["endpoint_add_max_s"] = max(samples)
    return out


def per_rule_comparison(n: int, profiles: int) -> dict[str, float | int]:
    """The same ruleset with one `iptables` process per chain/rule vs one restore."""
    dp = build_dataplane(n, profiles, 10, rules_per_profile=10)
    chains = list(dp.table.chains.values())
    script = ["set -e"]
    script += [f"iptables -w 10 -N {c.name}" for c in chains]
    for c in chains:
        for rule, h in zip(c.rules, c.rule_hashes(), strict=True):
            script.append("iptables -w 10 " + rule.render(c.name, h))
    for kernel_chain, rules in dp.table.base_jumps.items():
        hashes = Chain(kernel_chain, rules).rule_hashes()
        script += ["iptables -w 10 " + r.render(kernel_chain, h)
                   for r, h in zip(rules, hashes, strict=True)]
    with namespace("flxd-rule") as rule_ns, namespace("flxd-own") as own_ns:
        ns_rule, ns_own = rule_ns.name, own_ns.name
        # the ipsets the rules refer to must exist in both
        ipset_text = "".join(f"create {s.name} hash:ip family inet\n" for s in dp.ipsets)
        for ns in (ns_rule, ns_own):
            sh(["ip", "netns", "exec", ns, "ipset", "restore"], ipset_text)
        per_rule = timed(lambda: sh(["ip", "netns", "exec", ns_rule, "sh", "-s"],
                                    "\n".join(script) + "\n"))
        owner = IptablesTable(4, "filter", CommandRunner(netns=ns_own))
        felix = timed(lambda: owner.set_state(dp.table), owner.apply)
        counted = sh(["ip", "netns", "exec", ns_rule, "iptables-save"]).count('"felix:')
    assert counted == dp.rule_count, (counted, dp.rule_count)
    return {"endpoints": n, "profiles": profiles, "commands": len(script) - 1,
            "rules": dp.rule_count, "per_rule_commands_s": round(per_rule, 3),
            "felix_owner_s": round(felix, 3), "ratio": round(per_rule / felix, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    args = parser.parse_args(argv)
    n, per_rule_n = (300, 100) if args.quick else (10_000, 1_000)
    profiles, tags = (50, 20) if args.quick else (500, 100)
    dp = build_dataplane(n, profiles, tags)
    desired = desired_snapshot(dp)
    python = sys.executable
    result: dict[str, Any] = {
        "benchmark": "felix_dataplane", "quick": args.quick,
        "endpoints": n, "profiles": profiles, "ipsets": tags, "iptables_rules": dp.rule_count,
        "chains": len(dp.table.chains), "routes": len(dp.routes),
    }
    with felix_like_host("floor") as ns:
        make_interfaces(ns.name, dp.ifnames)
        floor = write_floor(ns, desired)
        floor_state = snapshot(ns, python)
    with felix_like_host("felix") as ns:
        make_interfaces(ns.name, dp.ifnames)
        owners = Owners.create(ns.name)
        try:
            felix = felix_cold_start(owners, dp)
            result["programmed"] = check_programmed(ns.name, dp)
            felix_state = snapshot(ns, python)
            result["after_cold_start"] = {k: round(v, 4) for k, v in
                                          refresh_and_add(owners, dp, ns.name, 20).items()}
        finally:
            owners.close()
    same_state = compare(felix_state, floor_state)  # raises when they differ
    with felix_like_host("naive") as ns:
        ns.exec("ipset", "restore", input=desired.ipsets)  # the sets the rules use
        naive = naive_restore(ns, desired)
    ratio = round(felix["total_s"] / floor["total_s"], 2)
    result["ratio"] = ratio  # headline: felix's owners / the raw-tool floor
    result["cold_start"] = {
        "clock": "felix: from the first owner call to the last apply returning (ipsets, "
                 "routes, iptables, ipset deletions; sysctls apart); floor: around the raw "
                 "commands, their input text prepared beforehand",
        "felix": {k: round(v, 3) for k, v in felix.items()},
        "floor": {"name": "raw tools at their best into an identically set up host: one "
                          "ipset restore, one ip -batch, iptables-restore --noflush in "
                          "depth-first pieces of 1,000 chains, one sysctl -p -",
                  **{k: round(v, 3) if isinstance(v, float) else v for k, v in floor.items()}},
        "ratio": ratio,
        "iptables_ratio": round(felix["iptables_s"] / floor["iptables_restores_s"], 2),
        "ratio_with_sysctls": round((felix["total_s"] + felix["sysctls_s"])
                                    / floor["with_sysctls_s"], 2),
        "same_state": same_state,
        "goal": {"max_ratio": 3.0, "max_s": 15.0},
        "extra_not_a_floor": {
            "naive_single_iptables_restore_s": round(naive, 3),
            "note": "the whole ruleset as ONE iptables-restore: iptables-nft-restore is "
                    "quadratic in chains, so this is a strawman, not a baseline",
            "felix_iptables_vs_naive": round(felix["iptables_s"] / naive, 2)},
    }
    cold = result["cold_start"]
    cold["goal_met"] = {"max_s": felix["total_s"] <= cold["goal"]["max_s"],
                        "max_ratio": ratio <= cold["goal"]["max_ratio"]}
    result["per_rule"] = per_rule_comparison(per_rule_n, max(per_rule_n // 20, 5))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
