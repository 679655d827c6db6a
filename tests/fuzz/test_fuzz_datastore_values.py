"""Fuzzing what the daemons read from etcd: any key, any value, in any order.

etcd holds whatever anybody wrote into it, so felix and confd must treat a bad value as
absent (with one log line naming the key), never crash, and never let it reach a kernel
table or BIRD's configuration in a form that breaks the whole batch. In-process:

- felix: the syncer's updates go through `felix.calc.graph.CalcGraph` exactly as the
  driver feeds them (`on_update`, `flush`); config keys through `felix.config.load_config`.
  Properties: no exception; chain names fit 28 characters and ipset names 31; every
  rendered rule is one line; workload interface names are ones iptables matches
  literally; the result depends on the final values, not on the order they arrived in.
- confd: `confd.view.build_view` + `confd.render.render` (what `ConfdDaemon` runs).
  Properties: no exception but `ValidationError` (the host cannot be rendered yet: the
  daemon keeps the old file); every rendered text (without operators' custom filters,
  which are BIRD code by design) passes `bird -p` - one bad value must not block every
  later BGP change on every host.

The daemons themselves are fuzzed black-box too (tests/reliability: bad values written
into a running cluster's etcd leave felix and confd running and in sync).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from confd.render import render
from confd.view import build_view
from felix.calc.graph import CalcGraph, CalcSettings
from felix.config import PARAMS, load_config
from libcalico import keyspace as ks
from libcalico.codec import dumps
from libcalico.errors import ValidationError
from libcalico.model.validate import INTERFACE_RE
from tests.fuzz.strategies import JSON, TEXT, rule_dicts, selector_trees

HOST = "h1"
SEGMENTS = st.sampled_from([HOST, "h2", "netns", "w1", "e1", "web", "db", "default",
                            "sec", "x" * 200, "é", "a.b"]) | TEXT
NETS4 = st.sampled_from(["198.19.0.5/32", "198.19.0.6/32", "198.19.0.0/26", "198.18.0.1"])
NETS6 = st.sampled_from(["fd00:198:19::5/128", "fd00::/8", "fd00::1"])
IFNAMES = st.sampled_from(["calie1", "calie2", "cali0123456789a", "eth0", "cali+", "a b",
                           'ca"li', "calié", "x" * 16])


def _keys() -> st.SearchStrategy[str]:
    def safe(build: Any, *parts: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
        def make(values: tuple[Any, ...]) -> str:
            try:
                return str(build(*values))
            except ValidationError:
                return ks.HOST_DIR + "/".join(map(str, values))
        return st.tuples(*parts).map(make)

    orch = st.sampled_from(["netns", "docker", "cni"])
    return st.one_of(
        safe(ks.workload_endpoint_key, st.sampled_from([HOST, "h2"]), orch, SEGMENTS,
             SEGMENTS),
        safe(ks.host_endpoint_key, st.sampled_from([HOST, "h2"]), SEGMENTS),
        safe(ks.profile_key, SEGMENTS, st.sampled_from(["rules", "tags", "labels"])),
        safe(ks.tier_metadata_key, SEGMENTS),
        safe(ks.policy_key, SEGMENTS, SEGMENTS),
        safe(ks.pool_key, st.sampled_from(["198.19.0.0/16", "fd00:198:19::/64",
                                           "198.18.0.0/24"])),
        safe(ks.global_config_key, st.sampled_from([p.name for p in PARAMS]) | SEGMENTS),
        safe(ks.host_config_key, st.just(HOST), st.sampled_from([p.name for p in PARAMS])),
        st.sampled_from([ks.HOST_DIR, ks.POLICY_DIR, ks.POOL_DIR, ks.CONFIG_DIR]).flatmap(
            lambda prefix: TEXT.map(lambda t: prefix + t)),
    )


@st.composite
def _valid_ish(draw: st.DrawFn) -> Any:
    """Model-shaped JSON for any of felix's keys (the key decides what is meaningful)."""
    kind = draw(st.sampled_from(["wep", "rules", "tags", "labels", "tier", "policy", "pool"]))
    if kind == "wep":
        return {"state": draw(st.sampled_from(["active", "inactive", "up"])),
                "name": draw(IFNAMES), "mac": draw(st.sampled_from(["ee:ee:ee:ee:ee:01",
                                                                     "zz"])),
                "profile_ids": draw(st.lists(st.sampled_from(["web", "db", "x;y"]),
                                             max_size=2)),
                "labels": draw(st.dictionaries(st.sampled_from(["role", "a"]),
                                               st.sampled_from(["web", "db", "é"]),
                                               max_size=2)),
                "ipv4_nets": draw(st.lists(NETS4, max_size=2)),
                "ipv6_nets": draw(st.lists(NETS6, max_size=2))}
    if kind == "rules":
        return {"inbound_rules": draw(st.lists(rule_dicts(), max_size=3)),
                "outbound_rules": draw(st.lists(rule_dicts(), max_size=3))}
    if kind == "tags":
        return draw(st.lists(st.sampled_from(["web", "db", "a b"]), max_size=3))
    if kind == "labels":
        return draw(st.dictionaries(st.sampled_from(["role", "tier"]), TEXT, max_size=2))
    if kind == "tier":
        return {"order": draw(st.sampled_from([1, 10.5, "default", None, "x"]))}
    if kind == "policy":
        return {"selector": draw(selector_trees(2).map(lambda t: t[0])),
                "order": draw(st.sampled_from([1, 2, None])),
                "inbound_rules": draw(st.lists(rule_dicts(), max_size=2)),
                "outbound_rules": draw(st.lists(rule_dicts(), max_size=2))}
    return {"cidr": draw(st.sampled_from(["198.19.0.0/16", "fd00:198:19::/64", "bad"])),
            "masquerade": draw(st.booleans())}


VALUES = st.one_of(
    st.none(),  # a delete
    _valid_ish().map(dumps),
    JSON.map(lambda v: dumps(v) if not isinstance(v, float) else str(v)),
    TEXT,
)
UPDATES = st.lists(st.tuples(_keys(), VALUES), min_size=1, max_size=25)

_RULE_LINE_BAD = re.compile(r"[\n\r\x00]")


def _felix_state(updates: list[tuple[str, str | None]]) -> Any:
    calc = CalcGraph(CalcSettings(HOST))
    for i, (key, value) in enumerate(updates):
        calc.on_update(key, value)
        if i % 7 == 6:
            calc.flush()
    calc.flush()
    return calc.desired_state()


@given(UPDATES)
def test_felix_calculation_survives_any_datastore_content(
        updates: list[tuple[str, str | None]]) -> None:
    state = _felix_state(updates)
    for chains in state.chains.values():
        for name, chain in chains.items():
            assert len(name) <= 28, name
            for i, (rule, h) in enumerate(zip(chain.rules, chain.rule_hashes(), strict=True)):
                line = rule.render(name, h)
                assert not _RULE_LINE_BAD.search(line), (name, i, line)
    for name in state.ipsets:
        assert len(name) <= 31, name
    for route in state.routes.values():
        assert INTERFACE_RE.match(route.ifname), route
    for ifname in state.interfaces:
        assert INTERFACE_RE.match(ifname), ifname
    # Order independence: the final value of each key decides, not the arrival order.
    final: dict[str, str | None] = {}
    for key, value in updates:
        final[key] = value
    forward = _felix_state(list(final.items()))
    backward = _felix_state(list(reversed(final.items())))
    assert forward == backward
    assert forward == state


@given(st.dictionaries(st.sampled_from([p.name for p in PARAMS]) | TEXT, TEXT, max_size=6),
       st.dictionaries(st.sampled_from([p.name for p in PARAMS]) | TEXT, TEXT, max_size=6))
def test_felix_config_from_etcd_never_stops_felix(glob: dict[str, str],
                                                  host: dict[str, str]) -> None:
    config = load_config(env={"FELIX_FELIXHOSTNAME": HOST}, etcd_global=glob, etcd_host=host)
    for name, value in config.as_dict().items():
        source = config.source(name)
        if source in ("etcd global config", "etcd per-host config"):
            layer = glob if source == "etcd global config" else host
            assert name in layer, (name, value, source)


# --- confd ----------------------------------------------------------------------------

BGP_SEGMENTS = st.sampled_from([HOST, "h2", "h3"]) | TEXT


def _bgp_keys() -> st.SearchStrategy[str]:
    fields = st.sampled_from(["ip_addr_v4", "ip_addr_v6", "as_num", "loglevel",
                              "rr_cluster_id"])
    return st.one_of(
        st.tuples(BGP_SEGMENTS, fields).map(lambda t: f"{ks.BGP_HOST_DIR}{t[0]}/{t[1]}"),
        st.sampled_from(["as_num", "node_mesh", "loglevel"]).map(
            lambda n: f"{ks.BGP_GLOBAL_DIR}{n}"),
        st.tuples(st.sampled_from(["198.18.0.200", "fd00::200", "bad", "198.18.0.1"]),
                  st.sampled_from([None, HOST, "h2"])).map(
            lambda t: f"{ks.BGP_GLOBAL_DIR}peer_v{6 if ':' in t[0] else 4}/{t[0]}"
            if t[1] is None else
            f"{ks.BGP_HOST_DIR}{t[1]}/peer_v{6 if ':' in t[0] else 4}/{t[0]}"),
        st.sampled_from(["198.19.0.0-16", "fd00:198:19::-64", "bad-99"]).map(
            lambda s: f"{ks.pool_dir(6 if ':' in s else 4)}{s}"),
        st.tuples(BGP_SEGMENTS, st.sampled_from(["198.19.0.0-26", "fd00:198:19::-122",
                                                 "x-1"])).map(
            lambda t: f"{ks.AFFINITY_DIR}{t[0]}/ipv{6 if ':' in t[1] else 4}/block/{t[1]}"),
        st.sampled_from(["198.19.0.0-26", "fd00:198:19::-122"]).map(
            lambda s: f"{ks.block_dir(6 if ':' in s else 4)}{s}"),
    )


BGP_VALUES = st.one_of(
    st.sampled_from(["198.18.0.1", "198.18.0.2", "fd00:198:18::1", "64512", "65000",
                     "4294967295", "1.10", "true", "false", "info", "debug", "none",
                     "1.0.0.1", '{"as_num": 65000}', '{"as_num": "x"}', "{}"]),
    _valid_ish().map(dumps), JSON.map(dumps), TEXT)


@given(st.dictionaries(_bgp_keys(), BGP_VALUES, max_size=15))
def test_confd_renders_a_valid_bird_config_from_any_datastore_content(
        values: dict[str, str]) -> None:
    base = {f"{ks.BGP_HOST_DIR}{HOST}/ip_addr_v4": "198.18.0.1"}
    view = build_view({**base, **values})
    try:
        text = render(view, HOST, include_dir="/nonexistent-include")
    except ValidationError as exc:
        assert "\n" not in str(exc)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
        f.write(text.replace('include "/nonexistent-include/*.conf";', "")
                .replace('include "/nonexistent-include/*.peer";', ""))
        f.flush()
        check = subprocess.run(["bird", "-p", "-c", f.name], capture_output=True, text=True,
                               check=False)
    assert check.returncode == 0, f"{check.stderr}\n{text}"
