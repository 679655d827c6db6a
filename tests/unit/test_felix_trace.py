"""felix.trace on an in-memory datastore: what decides each direction, the ends of a flow,
bad input, and that the trace's calculation is felix's own (the chains it walks are the
ones a felix fed with the whole datastore renders)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from felix.calc.graph import CalcGraph
from felix.trace.report import render_text, to_dict
from felix.trace.snapshot import Snapshot
from felix.trace.trace import TraceResult, trace
from felix.trace.view import build_view, host_config
from libcalico import keyspace as ks
from libcalico.errors import NotFound, ValidationError

MAC1 = "aa:bb:cc:00:00:01"


def wep(host: str, wl: str, ifname: str, v4: list[str], v6: list[str] | None = None,
        profiles: tuple[str, ...] = (), labels: dict[str, str] | None = None,
        mac: str | None = None, state: str = "active") -> tuple[str, str]:
    data: dict[str, Any] = {"state": state, "name": ifname, "profile_ids": list(profiles),
                            "ipv4_nets": v4, "ipv6_nets": v6 or [], "labels": labels or {}}
    if mac:
        data["mac"] = mac
    return ks.workload_endpoint_key(host, "k8s", wl, "eth0"), json.dumps(data)


def profile(name: str, inbound: list[dict[str, Any]] | None = None,
            outbound: list[dict[str, Any]] | None = None, tags: list[str] | None = None,
            labels: dict[str, str] | None = None) -> list[tuple[str, str]]:
    out = [(ks.profile_key(name, "rules"), json.dumps({"inbound_rules": inbound or [],
                                                       "outbound_rules": outbound or []}))]
    out.append((ks.profile_key(name, "tags"), json.dumps(tags if tags is not None else [name])))
    if labels:
        out.append((ks.profile_key(name, "labels"), json.dumps(labels)))
    return out


ITEMS = [
    wep("h1", "front", "cali1", ["198.18.10.1/32"], ["fd00::1/128"], ("front",),
        {"role": "front"}, MAC1),
    wep("h1", "back", "cali2", ["198.18.10.2/32"], ["fd00::2/128"], ("back",), {"role": "back"}),
    wep("h2", "far", "cali3", ["198.18.11.3/32"], [], ("back",), {"role": "back"}),
    wep("h2", "idle", "cali4", ["198.18.11.4/32"], [], ("back",), {}, state="inactive"),
    wep("h2", "lost", "cali5", ["198.18.11.5/32"], [], ("ghost",), {}),
    # 1,000 more endpoints on a third host: the trace must not need them
    *(wep("h3", f"w{i}", f"cali9{i:04d}", [f"198.19.{i // 250}.{i % 250}/32"], [], ("back",),
          {"role": "back"}) for i in range(1000)),
    *profile("front", outbound=[{"action": "allow"}]),
    *profile("back", inbound=[
        {"action": "allow", "protocol": "tcp", "dst_ports": [8080], "src_tag": "front"},
        {"action": "allow", "protocol": "icmp"},
        {"action": "allow", "protocol": "udp", "src_ports": ["32768:33000"]}],
        outbound=[{"action": "allow"}], labels={"tier": "backend"}),
    *profile("host", inbound=[{"action": "allow", "protocol": "tcp", "dst_ports": [443]}]),
    (ks.tier_metadata_key("t1"), json.dumps({"order": 1})),
    (ks.tier_metadata_key("t2"), json.dumps({"order": 2})),
    (ks.policy_key("t1", "deny-9090"), json.dumps({
        "selector": 'tier == "backend"', "order": 1,
        "inbound_rules": [{"action": "deny", "protocol": "tcp", "dst_ports": [9090]},
                          {"action": "next-tier", "!protocol": "sctp"}],
        "outbound_rules": [{"action": "next-tier"}]})),
    (ks.policy_key("t2", "allow-7070"), json.dumps({
        "selector": 'role == "back"', "order": 1,
        "inbound_rules": [{"action": "allow", "protocol": "tcp", "dst_ports": [7070]},
                          {"action": "next-tier"}],
        "outbound_rules": [{"action": "next-tier"}]})),
    (ks.host_bird_ip_key("h1"), "198.18.0.1"),
    (ks.host_bird_ip_key("h2"), "198.18.0.2"),
    (ks.host_endpoint_key("h2", "fabric"), json.dumps({
        "name": "eth0", "profile_ids": ["host"], "labels": {"role": "host"}})),
    (ks.global_config_key("FailsafeInboundHostPorts"), "tcp:22,udp:68"),
    (ks.host_config_key("h2", "DefaultEndpointToHostAction"), "ACCEPT"),
    (ks.host_bird_ip_key("h3"), "198.18.0.3"),
    (ks.host_config_key("h3", "DefaultEndpointToHostAction"), "RETURN"),
]


@pytest.fixture(scope="module")
def snap() -> Snapshot:
    return Snapshot(ITEMS, 7)


def run(snap: Snapshot, src: str, dst: str, proto: str = "tcp", port: int | None = 8080,
        **kw: Any) -> TraceResult:
    return trace(snap, src, dst, proto, None if proto.startswith("icmp") else port, **kw)


def decided(r: TraceResult, direction: int) -> tuple[str | None, ...]:
    d = r.directions[direction].decided_by
    assert d is not None, r.directions[direction]
    return (r.directions[direction].verdict, d.kind, d.tier, d.policy or d.profile,
            str(d.rule_index) if d.rule_index is not None else None)


def test_profile_rules_decide_both_directions(snap: Snapshot) -> None:
    r = run(snap, "front", "back")
    assert r.verdict == "allow"
    assert decided(r, 0) == ("allow", "profile", None, "front", "0")
    # t1 and t2 pass it on (next-tier): the profile
    assert decided(r, 1) == ("allow", "profile", None, "back", "0")
    d = r.directions[1]
    assert d.decided_by is not None
    assert d.decided_by.rule == "allow tcp from tag front to ports 8080"
    assert d.chains == ("FORWARD", "felix-FORWARD", "felix-TO-ENDPOINT", "felix-to-2",
                        "felix-p-t1/deny-9090-i", "felix-p-t2/allow-7070-i", "felix-p-back-i")
    text = render_text(r)
    assert text.splitlines()[-1] == "verdict: allow"
    assert "profile back, inbound rule 0: allow tcp from tag front to ports 8080" in text
    assert to_dict(r)["verdict"] == "allow"


def test_tiers_deny_pass_and_end_of_tier(snap: Snapshot) -> None:
    r = run(snap, "front", "back", port=9090)
    assert r.verdict == "deny"
    assert decided(r, 1) == ("deny", "policy", "t1", "deny-9090", "0")
    # sctp: t1's policy applies but neither denies nor passes it: the end of tier t1
    r = run(snap, "front", "back", "sctp", 53)
    assert decided(r, 1)[:3] == ("deny", "end-of-tier", "t1")
    # across hosts: far is role back (t2 applies too) and inherits tier=backend
    r = run(snap, "198.18.10.2", "far", port=7070)
    assert r.verdict == "allow"
    assert [h.hop.hostname for h in r.hops] == ["h1", "h2"]
    assert decided(r, 1) == ("allow", "policy", "t2", "allow-7070", "0")


def test_ipset_membership_needs_the_sources_address(snap: Snapshot) -> None:
    assert run(snap, "back", "198.18.11.3").verdict == "deny"  # back is not tag front
    assert run(snap, "front", "198.18.11.3").verdict == "allow"


def test_default_deny_unknown_profile_and_inactive(snap: Snapshot) -> None:
    r = run(snap, "back", "front", port=80)
    assert decided(r, 1)[:2] == ("deny", "no-policy-accepted")
    r = run(snap, "front", "lost")
    assert decided(r, 1)[:2] == ("deny", "profile")
    assert "no rules" in r.directions[1].decided_by.summary  # type: ignore[union-attr]
    r = run(snap, "front", "idle")
    assert decided(r, 1)[:2] == ("deny", "no-addresses")
    assert "inactive" in r.directions[1].decided_by.summary  # type: ignore[union-attr]


def test_anti_spoofing_and_the_missing_ip_version(snap: Snapshot) -> None:
    r = run(snap, "front@198.18.10.9", "back")
    assert r.source.spoofed and decided(r, 0)[:2] == ("deny", "anti-spoofing")
    assert r.directions[1].verdict == "not-reached"
    assert run(snap, "front@fd00::1", "back").verdict == "allow"  # its own IPv6 address
    with pytest.raises(ValidationError, match="no IPv6 address"):
        run(snap, "front", "far", ip_version=6)


def test_host_endpoints_failsafe_and_default_endpoint_to_host_action(snap: Snapshot) -> None:
    r = run(snap, "front", "198.18.0.2", port=22)
    assert r.destination.kind == "host" and r.destination.ifname == "eth0"
    assert decided(r, 1)[:2] == ("allow", "failsafe")
    assert r.directions[1].chains[-1] == "felix-FAILSAFE-IN"
    r = run(snap, "front", "host:h2", port=443)
    assert decided(r, 1) == ("allow", "profile", None, "host", "0")
    r = run(snap, "8.8.8.8", "hep:h2/fabric", port=80)
    assert decided(r, 0)[:2] == ("allow", "not-policed")
    assert decided(r, 1)[:2] == ("deny", "no-policy-accepted")
    r = run(snap, "host:h2", "8.8.8.8", port=80)  # out of the host: the outbound policy
    assert decided(r, 0)[:2] == ("deny", "no-policy-accepted")
    assert r.directions[0].chains[-3:] == ("felix-FAILSAFE-OUT", "felix-hto-eth0",
                                          "felix-p-host-o")
    # workload to its own host: DROP on h1 (the default), ACCEPT on h2 (per-host config)
    r = run(snap, "front", "host:h1")
    assert decided(r, 1)[:2] == ("deny", "DefaultEndpointToHostAction")
    assert r.directions[0].verdict == "not-reached"
    r = run(snap, "far", "host:h2", port=80)
    assert r.verdict == "allow"
    assert decided(r, 0) == ("allow", "profile", None, "back", "0")
    assert decided(r, 1)[:2] == ("allow", "DefaultEndpointToHostAction")
    r = run(snap, "w7", "host:h3", port=80)  # RETURN: the host's own rules decide
    assert r.verdict == "allow" and decided(r, 0)[:2] == ("allow", "profile")
    assert decided(r, 1)[:2] == ("allow", "DefaultEndpointToHostAction")
    assert "RETURN" in r.directions[1].decided_by.summary  # type: ignore[union-attr]
    # the host to its own workload: felix lets it
    r = run(snap, "host:h1", "back", port=1)
    assert r.verdict == "allow" and decided(r, 0)[:2] == ("allow", "host-to-workload")


def test_ephemeral_source_port_avoids_ports_rules_name(snap: Snapshot) -> None:
    r = run(snap, "front", "back", "udp", 53)
    assert r.sport == 33001  # back's rule names 32768-33000
    r = run(snap, "front", "back", "udp", 53, source_port=32800)
    assert r.sport == 32800 and r.verdict == "allow"


def test_icmp_v4_and_v6(snap: Snapshot) -> None:
    assert run(snap, "front", "back", "icmp").verdict == "allow"
    r = run(snap, "front", "fd00::2", "icmp")
    assert (r.flow.protocol, r.flow.icmp_type) == (58, 128)  # icmp in IPv6 is ICMPv6
    assert r.verdict == "deny"  # back's profile allows ICMP (v4) only


@pytest.mark.parametrize("src,dst,kw,error", [
    ("front", "back", {"port": 70000}, ValidationError),
    ("front", "back", {"port": None}, ValidationError),
    ("front", "back", {"proto": "gre"}, ValidationError),
    ("nobody", "back", {}, NotFound),
    ("hep:h2/none", "back", {}, NotFound),
    ("host:h9", "back", {}, NotFound),
    ("front", "front", {}, ValidationError),
    ("8.8.8.8", "9.9.9.9", {}, ValidationError),
    ("198.18.10.1", "fd00::2", {}, ValidationError),
    ("front", "back@198.18.10.9", {}, ValidationError),
    ("a/b/c", "back", {}, ValidationError),
    ("198.18.10.1", "back", {"ip_version": 6}, ValidationError),
    ("front", "back", {"icmp_type": 8}, ValidationError),
])
def test_bad_input(snap: Snapshot, src: str, dst: str, kw: dict[str, Any],
                   error: type[Exception]) -> None:
    proto = kw.pop("proto", "tcp")
    port = kw.pop("port", 8080)
    with pytest.raises(error):
        trace(snap, src, dst, proto, port, **kw)


def test_the_view_renders_what_felix_renders(snap: Snapshot) -> None:
    """The chains the trace walks equal those of felix fed with everything (host h2),
    and its sets answer exactly for the flow's addresses."""
    full = CalcGraph(host_config_settings(snap, "h2"))
    for key, value in ITEMS:
        full.on_update(key, value)
    full.flush()
    whole = full.desired_state()
    far = next(r for r in snap.workload_endpoints_named("far"))
    front = snap.endpoints_holding("198.18.10.1")
    view = build_view(snap, "h2", [far], front + [far])
    for table, chains in view.chains.items():
        for name, chain in chains.items():
            if name.startswith(("felix-FROM-EP", "felix-TO-EP")) or name in (
                    "felix-FROM-ENDPOINT", "felix-TO-ENDPOINT"):
                continue  # the dispatch trees list only the flow's interfaces
            assert whole.chains[table][name] == chain, name
    for name, state in view.ipsets.items():
        wanted = {a for a in ("198.18.10.1", "198.18.11.3", "fd00::1")
                  if a in whole.ipsets[name].members}
        assert state.members == wanted, name


def host_config_settings(snap: Snapshot, hostname: str) -> Any:
    from dataclasses import replace

    from felix.calc.graph import CalcSettings

    return replace(CalcSettings.from_config(host_config(snap, hostname), True),
                   hostname=hostname)


# ---- encapsulated pools: VXLAN / IP-in-IP between cluster hosts --------------------------------

DENY_ALL_HEP = json.dumps({"name": "eth0", "profile_ids": ["deny-all"]})
ENCAP_ITEMS = [
    *((ks.host_bird_ip_key(h), ip) for h, ip in (("n1", "198.18.1.1"), ("n2", "198.18.2.1"))),
    *((ks.bgp_host_key(h, "ip_addr_v4"), ip)
      for h, ip in (("n1", "198.18.1.1"), ("n2", "198.18.2.1"), ("n3", "198.18.3.1"))),
    (ks.host_endpoint_key("n1", "fabric"), DENY_ALL_HEP),
    (ks.host_endpoint_key("n2", "fabric"), DENY_ALL_HEP),
    (ks.profile_key("deny-all", "rules"), json.dumps({})),
]
VXLAN_POOL = (ks.pool_key("198.19.0.0/16"), json.dumps({"cidr": "198.19.0.0/16",
                                                        "vxlan": "vxlan.calico"}))
IPIP_POOL = (ks.pool_key("198.20.0.0/16"), json.dumps({"cidr": "198.20.0.0/16",
                                                       "ipip": "tunl0"}))


def test_vxlan_between_hosts_is_allowed_by_the_encapsulation_rule() -> None:
    snap = Snapshot([*ENCAP_ITEMS, VXLAN_POOL])
    r = trace(snap, "host:n1", "host:n2", "udp", 4789)
    assert r.verdict == "allow"
    assert decided(r, 0)[:2] == ("allow", "encapsulation")
    assert decided(r, 1)[:2] == ("allow", "encapsulation")
    assert r.directions[1].decided_by.summary.startswith(  # type: ignore[union-attr]
        "VXLAN from a cluster host")
    assert r.directions[1].chains == ("INPUT", "felix-INPUT")
    assert r.directions[1].decided_by.iptables == (  # type: ignore[union-attr]
        "-A felix-INPUT -p udp -m udp --dport 4789 -m set --match-set felix-all-hosts src "
        "-j ACCEPT")
    assert "VXLAN to a cluster host" in render_text(r)
    # a node registered only by its BGP address (no felix-traced host of its own here)
    r = trace(snap, "198.18.3.1", "host:n2", "udp", 4789)
    assert r.verdict == "allow" and decided(r, 1)[:2] == ("allow", "encapsulation")


def test_vxlan_from_elsewhere_meets_the_host_endpoint_policy() -> None:
    snap = Snapshot([*ENCAP_ITEMS, VXLAN_POOL])
    r = trace(snap, "198.18.9.9", "host:n2", "udp", 4789)
    assert r.verdict == "deny"
    assert decided(r, 1)[:2] == ("deny", "no-policy-accepted")
    assert "felix-hfrom-eth0" in r.directions[1].chains
    r = trace(snap, "host:n1", "198.18.9.9", "udp", 4789)  # out of a host: not to a host
    assert decided(r, 0)[:2] == ("deny", "no-policy-accepted")
    # another port, or IP-in-IP without an IPIP pool: not exempt either
    assert trace(snap, "host:n1", "host:n2", "udp", 4790).verdict == "deny"
    assert trace(snap, "host:n1", "host:n2", "4").verdict == "deny"


def test_no_encapsulated_pool_no_exemption_and_ipip_with_its_pool() -> None:
    plain = Snapshot(ENCAP_ITEMS)
    r = trace(plain, "host:n1", "host:n2", "udp", 4789)
    assert r.verdict == "deny" and decided(r, 0)[:2] == ("deny", "no-policy-accepted")
    ipip = Snapshot([*ENCAP_ITEMS, IPIP_POOL])
    r = trace(ipip, "host:n1", "host:n2", "4")
    assert r.verdict == "allow" and decided(r, 1)[:2] == ("allow", "encapsulation")
    assert r.directions[0].decided_by.summary.startswith(  # type: ignore[union-attr]
        "IP-in-IP to a cluster host")
    assert trace(ipip, "host:n1", "host:n2", "udp", 4789).verdict == "deny"


def test_the_view_renders_felix_s_encapsulation_rules_and_all_hosts_set() -> None:
    """With an encapsulated pool the view's felix-INPUT/OUTPUT are felix's, and its
    all-hosts set answers exactly for the flow's addresses."""
    items = [*ENCAP_ITEMS, VXLAN_POOL, IPIP_POOL]
    snap = Snapshot(items)
    full = CalcGraph(host_config_settings(snap, "n2"))
    full.on_updates(items)
    full.flush()
    whole = full.desired_state()
    flow = ("198.18.1.1", "198.18.9.9")
    view = build_view(snap, "n2", [], [], flow)
    for version in (4, 6):
        for name in ("felix-INPUT", "felix-OUTPUT"):
            assert view.chains[(version, "filter")][name] == \
                whole.chains[(version, "filter")][name]
    assert view.ipsets["felix-all-hosts"].members == {
        a for a in flow if a in whole.ipsets["felix-all-hosts"].members} == {"198.18.1.1"}
