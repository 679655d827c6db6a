"""`policy trace` tells the truth: random policy, real felix, real packets.

One simulated host runs the real calico-felix with five workloads (namespaces, IPv4 and
IPv6, one IPv4 only), an "outside" namespace on the fabric stands for addresses outside
the cluster, and the host itself is an end too (its eth0 sometimes a host endpoint).
Per seed: random profiles (rules, tags, labels, one sometimes without rules), tiers and
policies (selectors, next-tier, deny, log), workload profiles and labels (sometimes a
profile that does not exist), the host endpoint and DefaultEndpointToHostAction are
written to etcd, and sometimes an encapsulated (VXLAN) pool and the outside's address as
a node's (felix then accepts VXLAN - here on VXLANPort 5000 - between them and the host
before host endpoint policy); once felix has programmed exactly what felix's
calculation says (rule hashes and ipset members read back from the kernel), random flows
(TCP connect, UDP datagram and answer, ICMP echo; IPv4 and IPv6; by name or address;
explicit or ephemeral source ports; spoofed sources; and every seed VXLANPort both ways
between the outside and the host) are traced with `felix.trace` and sent as real
packets. Any disagreement fails the test naming the seed, the flow and the trace.

CALICO_TRACE_SEEDS / CALICO_TRACE_FLOWS / CALICO_TRACE_SEED make a longer run
(docs/policy.md); the default is 4 seeds of 25 flows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from felix.calc.graph import CalcGraph, CalcSettings
from felix.dataplane.cmd import CommandRunner
from felix.dataplane.ipsets import IPSets
from felix.dataplane.iptables import IptablesTable
from felix.trace.report import render_text
from felix.trace.snapshot import Snapshot
from felix.trace.trace import TraceResult, trace
from felix.trace.view import host_config
from libcalico import keyspace
from libcalico.client import CalicoClient
from libcalico.datastore import Datastore
from libcalico.model import Node
from netsim.topology import Host, Topology
from netsim.wait import wait_for
from tests.support.workloads import (
    Workload,
    connect,
    create_workload,
    delete_workload,
    ping,
    wait_serving,
)
from tests.support.workloads import serve as serve_ports

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

FELIX = str(Path(sys.executable).with_name("calico-felix"))
CALICOCTL = str(Path(sys.executable).with_name("calicoctl"))
HOST = "host1"
SEEDS = int(os.environ.get("CALICO_TRACE_SEEDS", "4"))
FLOWS = int(os.environ.get("CALICO_TRACE_FLOWS", "25"))
BASE_SEED = int(os.environ.get("CALICO_TRACE_SEED", "1515"))
PORTS = (22, 80, 443, 5000, 6000)  # listened on by every end
SOURCE_PORTS = (1100, 1200, 1300)  # explicit source ports (never ephemeral ones)
OUTSIDE_V4, OUTSIDE_V6 = "198.18.0.100", "fd00:198:18::64"
WL_V4 = "198.18.10.{}"
WL_V6 = "fd00::10:{}"
SPOOF_V4, SPOOF_V6 = "198.18.10.20{}", "fd00::10:20{}"
NETS = {4: ["198.18.10.0/29", "198.18.10.2/32", "198.18.0.0/24", "198.18.10.200/29"],
        6: ["fd00::10:0/125", "fd00::10:2/128", "fd00:198:18::/64", "fd00::10:200/125"]}
SELECTORS = ['role == "a"', 'role in {"a", "b"}', "has(env)", 'env != "x"', "!has(role)",
             "all()", 'role == "host"', 'team == "blue"']
PROFILES = ("p0", "p1", "p2", "p3")
# VXLAN: felix's port (one of PORTS, so that listeners answer) and a disabled pool, which
# makes felix accept VXLAN between cluster hosts without taking a tunnel address, so no
# vxlan device takes the port from the listeners
VXLAN_PORT = 5000
ENCAP_POOL = "198.19.0.0/16"
TAGS = ("t0", "t1", "t2", "t3", "shared")


@dataclass
class Lab:
    topo: Topology
    host: Host
    outside: Host
    store: Datastore
    workloads: list[Workload]
    felix: subprocess.Popen[bytes] | None = None
    listeners: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def felix_log(self) -> str:
        return self.topo.log_tail(self.host, "felix", 3000)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Topology("ptt", hosts=1, ipv6=True) as topo:
        host = topo.hosts[0]
        assert topo.etcd is not None and host.ip6 is not None
        outside = topo.add_host("outside", OUTSIDE_V4, OUTSIDE_V6)
        outside.ns.ip("route", "add", "198.18.10.0/24", "via", host.ip)
        outside.ns.ip("-6", "route", "add", "fd00::10:0/112", "via", host.ip6)
        host.ns.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        host.ns.exec("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        store = topo.datastore()
        lab = Lab(topo, host, outside, store, [])
        try:
            CalicoClient(store).put_node(Node(HOST, ipv4=host.ip, ipv6=host.ip6))
            # etcd listens on a random port: felix must always reach it, whatever the
            # host endpoint's policy says
            store.put(keyspace.global_config_key("FailsafeOutboundHostPorts"),
                      f"udp:53,tcp:179,tcp:{topo.etcd.port}")
            store.put(keyspace.global_config_key("VXLANPort"), str(VXLAN_PORT))
            for i in range(1, 6):
                wl = create_workload(host.ns, HOST, i, WL_V4.format(i),
                                     WL_V6.format(i) if i < 5 else None, ["p0"], {})
                lab.workloads.append(wl)
                wl.listen(*PORTS)
                # a second address the workload may spoof, routed back to it; its own
                # address stays the source of everything else (UDP answers included)
                wl.ns.ip("addr", "add", f"{SPOOF_V4.format(i)}/32", "dev", "eth0")
                wl.ns.ip("route", "replace", "default", "via", "169.254.1.1", "dev", "eth0",
                         "src", wl.ipv4)
                host.ns.ip("route", "add", SPOOF_V4.format(i), "dev", wl.ifname)
                if wl.ipv6:
                    wl.ns.ip("-6", "addr", "add", f"{SPOOF_V6.format(i)}/128", "dev", "eth0",
                             "nodad")
                    wl.ns.ip("-6", "route", "replace", "default", "via", "fe80::1", "dev",
                             "eth0", "src", wl.ipv6)
                    host.ns.ip("-6", "route", "add", SPOOF_V6.format(i), "dev", wl.ifname)
                store.put(wl.key, wl.endpoint_json())
            lab.listeners += [serve_ports(host.ns.name, PORTS), serve_ports(outside.ns.name,
                                                                            PORTS)]
            for ns in (host.ns.name, outside.ns.name, *(w.ns.name for w in lab.workloads)):
                wait_serving(ns, PORTS)
            lab.felix = topo.spawn(host, [FELIX], "felix", env=topo.daemon_env({
                "FELIX_FELIXHOSTNAME": HOST, "FELIX_LOGSEVERITYSCREEN": "INFO",
                "FELIX_HEALTHENABLED": "false"}))
            yield lab
        finally:
            for proc in lab.listeners:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for wl in lab.workloads:
                delete_workload(wl)
            store.close()


# ---- random policy ---------------------------------------------------------------------------

def random_rule(rng: random.Random, policy: bool) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": rng.choices(
        ["allow", "deny", "next-tier", "log"], [6, 2, 3 if policy else 1, 1])[0]}
    proto = rng.choices([None, "tcp", "udp", "icmp", "icmpv6"], [3, 3, 2, 1, 1])[0]
    if proto:
        rule["protocol"] = proto
    elif rng.random() < 0.2:
        rule["!protocol"] = rng.choice(["udp", "tcp"])
    version = 4 if proto == "icmp" else 6 if proto == "icmpv6" else rng.choice([4, 6])
    for side in ("src", "dst"):
        bang = "!" if rng.random() < 0.3 else ""
        kind = rng.choices(["", "tag", "selector", "net"], [5, 2, 2, 1])[0]
        if kind == "tag":
            rule[f"{bang}{side}_tag"] = rng.choice(TAGS)
        elif kind == "selector":
            rule[f"{bang}{side}_selector"] = rng.choice(SELECTORS)
        elif kind == "net":
            rule[f"{bang}{side}_net"] = rng.choice(NETS[version])
        if proto in ("tcp", "udp") and rng.random() < 0.5:
            bang = "!" if rng.random() < 0.3 else ""
            if side == "dst":
                ports: list[int | str] = rng.sample(PORTS, rng.randint(1, 3))
                if rng.random() < 0.3:
                    ports = ["400:5500"]
            else:
                ports = [rng.choice([*SOURCE_PORTS, "1000:1250"])]
            rule[f"{bang}{side}_ports"] = ports
    if proto in ("icmp", "icmpv6") and rng.random() < 0.4:
        rule["icmp_type"] = rng.choice([8, 0] if proto == "icmp" else [128, 129])
    return rule


@dataclass
class Config:
    items: dict[str, str]  # policy keys -> JSON
    endpoints: dict[int, tuple[list[str], dict[str, str]]]  # workload -> profiles, labels
    hep: dict[str, Any] | None
    endpoint_to_host: str
    encap_pool: bool = False  # a (disabled) VXLAN pool exists
    outside_node: bool = False  # the outside's address is a node's (BGP ip_addr_v4)


def random_config(rng: random.Random) -> Config:
    items: dict[str, str] = {}
    for i, name in enumerate(PROFILES):
        if not (name == "p3" and rng.random() < 0.3):  # p3 sometimes has no rules at all
            rules = {"inbound_rules": [random_rule(rng, False) for _ in range(rng.randint(0, 4))],
                     "outbound_rules": [random_rule(rng, False) for _ in range(rng.randint(0, 2))]}
            if rng.random() < 0.5:
                rules["outbound_rules"].append({"action": "allow"})
            items[keyspace.profile_key(name, "rules")] = json.dumps(rules)
        items[keyspace.profile_key(name, "tags")] = json.dumps(
            sorted({f"t{i}", *(["shared"] if rng.random() < 0.4 else [])}))
        if rng.random() < 0.4:
            items[keyspace.profile_key(name, "labels")] = json.dumps(
                {"team": rng.choice(["blue", "red"])})
    for t, tier in enumerate(("tier-a", "tier-b")):
        items[keyspace.tier_metadata_key(tier)] = json.dumps({"order": rng.choice([t, 5, 10])})
        for p in range(rng.randint(0, 3)):
            rules = {direction: [random_rule(rng, True) for _ in range(rng.randint(0, limit))]
                     for direction, limit in (("inbound_rules", 3), ("outbound_rules", 2))}
            for direction in rules:  # often: pass the rest on to the next tier
                if rng.random() < 0.5:
                    rules[direction].append({"action": "next-tier"})
            items[keyspace.policy_key(tier, f"pol{p}")] = json.dumps({
                "selector": rng.choice(SELECTORS), "order": rng.randint(1, 5), **rules})
    endpoints = {}
    for i in range(1, 6):
        profiles = rng.sample(PROFILES, rng.randint(1, 2))
        if rng.random() < 0.1:
            profiles.append("ghost")  # a profile that does not exist: felix drops
        labels = {"role": rng.choice("abc")} if rng.random() < 0.8 else {}
        if rng.random() < 0.5:
            labels["env"] = rng.choice("xy")
        endpoints[i] = (profiles, labels)
    hep = None
    if rng.random() < 0.6:
        hep = {"name": "eth0", "profile_ids": rng.sample(PROFILES, rng.randint(0, 2)),
               "labels": {"role": "host"} if rng.random() < 0.6 else {}}
    return Config(items, endpoints, hep, rng.choice(["DROP", "RETURN", "ACCEPT"]),
                  rng.random() < 0.6, rng.random() < 0.6)


def apply_config(lab: Lab, cfg: Config) -> None:
    store = lab.store
    store.delete_prefix(keyspace.POLICY_DIR)
    for key, value in cfg.items.items():
        store.put(key, value)
    for i, wl in enumerate(lab.workloads, start=1):
        wl.profiles, wl.labels = cfg.endpoints[i]
        store.put(wl.key, wl.endpoint_json())
    hep_key = keyspace.host_endpoint_key(HOST, "fabric")
    if cfg.hep is None:
        store.delete(hep_key)
    else:
        store.put(hep_key, json.dumps(cfg.hep))
    store.put(keyspace.global_config_key("DefaultEndpointToHostAction"), cfg.endpoint_to_host)
    pool_key = keyspace.pool_key(ENCAP_POOL)
    if cfg.encap_pool:
        store.put(pool_key, json.dumps({"cidr": ENCAP_POOL, "vxlan": "vxlan.calico",
                                        "disabled": True}))
    else:
        store.delete(pool_key)
    node_key = keyspace.bgp_host_key("outside", "ip_addr_v4")
    if cfg.outside_node:
        store.put(node_key, OUTSIDE_V4)
    else:
        store.delete(node_key)


def programmed(lab: Lab) -> bool:
    """felix has written exactly what its calculation over the whole datastore says:
    every desired filter chain's rule hashes and every ipset's members, read back."""
    kvs, _ = lab.store.list(keyspace.V1 + "/")
    snapshot = Snapshot((kv.key, kv.value) for kv in kvs)
    config = host_config(snapshot, HOST)
    graph = CalcGraph(CalcSettings.from_config(config, True))
    nodes, _ = lab.store.list(keyspace.BGP_HOST_DIR)  # for the all-hosts set
    for kv in [*kvs, *nodes]:
        graph.on_update(kv.key, kv.value)
    graph.flush()
    desired = graph.desired_state()
    runner = CommandRunner()
    for version in (4, 6):
        tool = "iptables-save" if version == 4 else "ip6tables-save"
        text = lab.host.ns.exec(tool, "-t", "filter").stdout
        kernel = IptablesTable(version, "filter", runner).parse_save(text)[0]
        for name, chain in desired.chains[(version, "filter")].items():
            if kernel.get(name) != chain.rule_hashes():
                return False
        sets = IPSets(version, runner).parse_save(lab.host.ns.exec("ipset", "save").stdout)
        for name, state in desired.ipsets.items():
            if state.version == version and sets.get(name, ("", None))[1] != state.members:
                return False
    return True


# ---- flows -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    src: str  # the --from value
    dst: str  # the --to value
    proto: str
    port: int | None
    sport: int | None
    version: int
    send_ns: str
    send_from: str | None  # the source address the packet is sent from (spoofing)
    dest_addr: str

    def words(self) -> str:
        return (f"--from {self.src} --to {self.dst} --protocol {self.proto}"
                + (f" --port {self.port}" if self.port else "")
                + (f" --source-port {self.sport}" if self.sport else "")
                + f" (IPv{self.version})")


def random_flow(rng: random.Random, lab: Lab) -> Flow:
    while True:
        kinds = rng.choices(["wl", "host", "outside"], [6, 2, 2], k=2)
        if kinds == ["outside", "outside"] or kinds == ["host", "host"]:
            continue
        version = rng.choice([4, 6])
        picks = [rng.randint(1, 5) if k == "wl" else 0 for k in kinds]
        if version == 6 and 5 in picks:
            version = 4
        if kinds[0] == kinds[1] == "wl" and picks[0] == picks[1]:
            continue
        break
    ends = []
    for kind, i in zip(kinds, picks, strict=True):
        if kind == "wl":
            wl = lab.workloads[i - 1]
            addr = wl.ipv4 if version == 4 else wl.ipv6
            assert addr is not None
            ends.append((rng.choice([wl.workload_id, addr]), wl.ns.name, addr))
        elif kind == "host":
            addr = lab.host.ip if version == 4 else lab.host.ip6
            assert addr is not None
            ends.append((rng.choice([f"host:{HOST}", addr]), lab.host.ns.name, addr))
        else:
            addr = OUTSIDE_V4 if version == 4 else OUTSIDE_V6
            ends.append((addr, lab.outside.ns.name, addr))
    (src, send_ns, src_addr), (dst, _, dst_addr) = ends
    send_from = None
    if kinds[0] == "wl" and rng.random() < 0.08:
        send_from = (SPOOF_V4 if version == 4 else SPOOF_V6).format(picks[0])
        src = f"{lab.workloads[picks[0] - 1].workload_id}@{send_from}"
    proto = rng.choices(["tcp", "udp", "icmp"], [5, 3, 2])[0]
    port = rng.choice(PORTS) if proto != "icmp" else None
    if kinds[1] == "host" and proto == "tcp" and rng.random() < 0.4:
        port = 22  # a failsafe port
    sport = rng.choice(SOURCE_PORTS) if proto != "icmp" and rng.random() < 0.3 else None
    return Flow(src, dst, proto, port, sport, version, send_ns, send_from, dst_addr)


def vxlan_flow(lab: Lab, inbound: bool) -> Flow:
    """UDP to VXLANPort between the outside and the host (IPv4), either way."""
    host = (f"host:{HOST}", lab.host.ns.name, lab.host.ip)
    outside = (OUTSIDE_V4, lab.outside.ns.name, OUTSIDE_V4)
    (src, send_ns, _), (dst, _, dst_addr) = (outside, host) if inbound else (host, outside)
    return Flow(src, dst, "udp", VXLAN_PORT, None, 4, send_ns, None, dst_addr)


def send(flow: Flow, timeout: float) -> bool:
    if flow.proto == "icmp":
        return ping(flow.send_ns, flow.dest_addr, timeout, flow.send_from)
    assert flow.port is not None
    return connect(flow.send_ns, flow.dest_addr, flow.port, flow.proto == "udp", timeout,
                   flow.send_from, flow.sport)


def check(flow: Flow, result: TraceResult) -> str | None:
    """None when the packet did what the trace says; else what it did."""
    passed = send(flow, 1.0)
    if not passed and result.verdict == "allow":
        passed = send(flow, 4.0)  # a loaded machine, not a verdict: once more, slower
    if passed == (result.verdict == "allow"):
        return None
    return "passed" if passed else "was dropped"


def flush_conntrack(lab: Lab) -> None:
    """New connections only: what an earlier seed let through must not count."""
    for family in ("ipv4", "ipv6"):
        lab.host.ns.exec("conntrack", "-F", "-f", family, check=False)


@pytest.mark.parametrize("index", range(SEEDS))
def test_trace_verdicts_match_real_packets(lab: Lab, index: int) -> None:
    seed = BASE_SEED + index
    rng = random.Random(seed)
    apply_config(lab, random_config(rng))
    wait_for(lambda: programmed(lab), 90,
             message=f"felix to program seed {seed}\n{lab.felix_log()}")
    flush_conntrack(lab)
    snapshot = Snapshot.read(lab.store)  # what calico-felix-trace reads
    flows = [random_flow(rng, lab) for _ in range(FLOWS)]
    flows += [vxlan_flow(lab, inbound=True), vxlan_flow(lab, inbound=False)]
    results = [trace(snapshot, f.src, f.dst, f.proto, f.port, f.sport,
                     ip_version=f.version) for f in flows]
    with ThreadPoolExecutor(max_workers=6) as pool:
        observed = list(pool.map(check, flows, results))
    mismatches = [f"seed {seed}: {flow.words()}: the trace says {res.verdict} but the packet "
                  f"{what}\n{render_text(res)}"
                  for flow, res, what in zip(flows, results, observed, strict=True) if what]
    assert not mismatches, "\n\n".join(mismatches) + f"\nfelix log:\n{lab.felix_log()}"
    kinds = sorted(f"{d.verdict}:{d.decided_by.kind if d.decided_by else '-'}"
                   for r in results for d in r.directions)
    print(f"seed {seed}: {sum(r.verdict == 'allow' for r in results)}/{len(results)} allowed;",
          {k: kinds.count(k) for k in dict.fromkeys(kinds)})
    # and the command line says the same as the library
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ETCD_")},
           **lab.topo.etcd.env()} if lab.topo.etcd else {}
    for flow, res in list(zip(flows, results, strict=True))[:3]:
        args = ["policy", "trace", "--from", flow.src, "--to", flow.dst, "--protocol",
                flow.proto, "--ip-version", str(flow.version), "-o", "json"]
        args += ["--port", str(flow.port)] if flow.port else []
        args += ["--source-port", str(flow.sport)] if flow.sport else []
        proc = subprocess.run([CALICOCTL, *args], capture_output=True, text=True, env=env,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["verdict"] == res.verdict, (flow.words(), proc.stdout)
