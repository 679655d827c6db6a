"""confd rendering: golden files (datastore state -> BIRD configuration), each accepted by
the real `bird -p`, plus the calculation rules behind them.

Regenerate the golden files after an intended change with
`UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_confd_render.py` and review
the diff.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from confd.calc import calculate_host_config, protocol_name
from confd.render import render
from confd.view import build_view
from libcalico import keyspace as ks
from libcalico.errors import ValidationError

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden" / "confd"
INCLUDE_DIR = "/etc/calico/bird.d"  # as rendered in the golden files


def node(host: str, v4: str | None = None, v6: str | None = None, as_num: int | None = None,
         rr: str | None = None, loglevel: str | None = None) -> dict[str, str]:
    out = {}
    for name, value in (("ip_addr_v4", v4), ("ip_addr_v6", v6), ("as_num", as_num),
                        ("rr_cluster_id", rr), ("loglevel", loglevel)):
        if value is not None:
            out[ks.bgp_host_key(host, name)] = str(value)
    return out


def peer(ip: str, as_num: int, host: str | None = None) -> dict[str, str]:
    return {ks.bgp_peer_key(ip, host): json.dumps({"ip": ip, "as_num": str(as_num)})}


def block(cidr: str, owner: str | None, holders: dict[int, str]) -> dict[str, str]:
    """A block JSON whose ordinals in `holders` are allocated by the named hosts."""
    size = 64
    attributes = []
    allocations: list[int | None] = [None] * size
    for ordinal, host in sorted(holders.items()):
        allocations[ordinal] = len(attributes)
        attributes.append({"handle_id": f"h-{ordinal}", "secondary": {"host": host}})
    value = {"cidr": cidr, "affinity": f"host:{owner}" if owner else None,
             "strict_affinity": False, "allocations": allocations,
             "unallocated": [i for i in range(size) if allocations[i] is None],
             "attributes": attributes}
    return {ks.block_key(cidr): json.dumps(value)}


def base(mesh: bool = True, global_as: int = 64512) -> dict[str, str]:
    return {
        ks.BGP_GLOBAL_AS_KEY: str(global_as),
        ks.BGP_GLOBAL_MESH_KEY: json.dumps({"enabled": mesh}),
        ks.pool_key("198.19.0.0/16"): json.dumps({"cidr": "198.19.0.0/16"}),
        **node("host1", "198.18.0.1"),
        **node("host2", "198.18.0.2"),
        **node("host3", "198.18.0.3"),
        ks.affinity_key("host1", "198.19.0.0/26"): "",
        ks.affinity_key("host1", "198.19.0.64/26"): "",
        ks.affinity_key("host2", "198.19.1.0/26"): "",
        **block("198.19.0.0/26", "host1", {0: "host1", 1: "host1"}),
        **block("198.19.1.0/26", "host2", {0: "host2", 5: "host1"}),
    }


SCENARIOS: dict[str, tuple[dict[str, str], str]] = {
    "full_mesh": (base(), "host1"),
    "mesh_off_global_peers": ({
        **base(mesh=False),
        **peer("198.18.0.100", 65000),
        **peer("198.18.0.101", 64512),
        ks.custom_filter_key(4, "no-198-19-200"): "if net ~ [ 198.19.200.0/24+ ] then reject;",
    }, "host1"),
    "node_peers": ({
        **base(),
        **peer("198.18.0.100", 65000, "host1"),
        **peer("198.18.0.101", 65001, "host2"),
        **peer("198.18.0.100", 65000),  # also global: the node-specific session wins
        **peer("198.18.0.3", 64512),  # a node: the mesh session wins
    }, "host1"),
    "route_reflector": ({
        **base(mesh=False),
        **node("host3", rr="1.0.0.1"),
        **node("host4", "198.18.0.4", rr="1.0.0.1"),
    }, "host3"),
    "route_reflector_client": ({
        **base(mesh=False),
        **node("host3", rr="1.0.0.1"),
        **node("host4", "198.18.0.4", rr="1.0.0.1"),
    }, "host1"),
    "ipv6": ({
        **base(),
        ks.pool_key("fd00:198:19::/48"): json.dumps({"cidr": "fd00:198:19::/48"}),
        **node("host1", v6="fd00:198:18::1"),
        **node("host2", v6="fd00:198:18::2"),
        ks.affinity_key("host1", "fd00:198:19::/122"): "",
        **peer("fd00:198:18::100", 65000),
    }, "host1"),
    # A VXLAN pool beside the plain one: its blocks (host1's 198.20.0.0/26, the address
    # host1 borrows in host2's 198.20.1.0/26) are neither announced nor put in the
    # kernel by BIRD; the plain pool's are, as before. Node tunnel fields are ignored.
    "vxlan_pool": ({
        **base(),
        ks.pool_key("198.20.0.0/16"): json.dumps({"cidr": "198.20.0.0/16",
                                                  "vxlan": "vxlan.calico",
                                                  "vxlan_mode": "cross-subnet"}),
        ks.affinity_key("host1", "198.20.0.0/26"): "",
        **block("198.20.0.0/26", "host1", {0: "host1"}),
        **block("198.20.1.0/26", "host2", {0: "host2", 1: "host1"}),
        ks.bgp_host_key("host1", "network_v4"): "198.18.0.0/24",
        ks.bgp_host_key("host1", "vxlan_tunnel_addr_v4"): "198.20.0.0",
        ks.bgp_host_key("host1", "vxlan_tunnel_mac"): "66:00:00:00:00:01",
    }, "host1"),
    "mixed_as": ({
        **base(),
        **node("host1", as_num=64513, loglevel="debug"),
        **node("host2", as_num=64514),
        ks.BGP_GLOBAL_LOGLEVEL_KEY: "none",
    }, "host1"),
}


def render_scenario(name: str) -> str:
    values, host = SCENARIOS[name]
    return render(build_view(values), host, include_dir=INCLUDE_DIR)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden(name: str) -> None:
    text = render_scenario(name)
    path = GOLDEN_DIR / f"{name}.conf"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden_accepted_by_bird(name: str, tmp_path: Path) -> None:
    # The golden files include the operators' directory; BIRD needs it to exist, so the
    # check points the include at a temporary directory holding one file of each kind.
    include = tmp_path / "bird.d"
    include.mkdir()
    (include / "extra.conf").write_text("protocol static operator_extra { ipv4; }\n")
    (include / "hold.peer").write_text("hold time 60;\n")
    text = (GOLDEN_DIR / f"{name}.conf").read_text().replace(INCLUDE_DIR, str(include))
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    proc = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- the rules behind the files ---------------------------------------------------------


def names(values: dict[str, str], host: str) -> dict[str, tuple]:
    cfg = calculate_host_config(build_view(values), host)
    return {s.name: (s.peer_as, s.rr_client, s.kind) for s in cfg.sessions}


def test_full_mesh_peers_with_every_other_node() -> None:
    assert names(base(), "host2") == {
        "Mesh_198_18_0_1": (64512, False, "mesh"),
        "Mesh_198_18_0_3": (64512, False, "mesh"),
    }


def test_mesh_off_client_peers_only_with_reflectors() -> None:
    values = {**base(mesh=False), **node("host3", rr="1.0.0.1")}
    assert names(values, "host1") == {"Mesh_198_18_0_3": (64512, False, "mesh")}
    assert names(values, "host3") == {
        "Mesh_198_18_0_1": (64512, True, "mesh"),
        "Mesh_198_18_0_2": (64512, True, "mesh"),
    }
    assert names(base(mesh=False), "host1") == {}


def test_reflector_clients_only_in_its_own_as() -> None:
    values = {**base(mesh=False), **node("host3", rr="1.0.0.1"), **node("host2", as_num=65001)}
    assert names(values, "host3")["Mesh_198_18_0_2"] == (65001, False, "mesh")
    assert names(values, "host3")["Mesh_198_18_0_1"] == (64512, True, "mesh")


def test_names_depend_only_on_the_peer() -> None:
    assert protocol_name("mesh", "198.18.0.2") == "Mesh_198_18_0_2"
    assert protocol_name("global", "fd00::1") == "Global_fd00__1"
    assert protocol_name("node", "fd00:0::1") == "Node_fd00__1"
    before = calculate_host_config(build_view(base()), "host1").sessions
    after_values = {**base(), **node("host0", "198.18.0.9"), **peer("198.18.0.100", 65000)}
    after = calculate_host_config(build_view(after_values), "host1").sessions
    assert set(before) <= set(after)


def test_render_does_not_depend_on_key_order() -> None:
    values, host = SCENARIOS["node_peers"]
    expected = render_scenario("node_peers")
    items = list(values.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert render(build_view(dict(items)), host, include_dir=INCLUDE_DIR) == expected


def test_exports_blocks_and_borrowed_addresses_inside_pools_only() -> None:
    values = {**base(), ks.affinity_key("host1", "198.20.0.0/26"): "",
              **block("198.20.0.0/26", "host1", {0: "host1"})}
    cfg = calculate_host_config(build_view(values), "host1")
    assert cfg.blocks_v4 == ("198.19.0.0/26", "198.19.0.64/26")
    assert cfg.borrowed_v4 == ("198.19.1.5/32",)
    assert any("198.20.0.0/26" in n for n in cfg.notes)
    assert calculate_host_config(build_view(values), "host2").borrowed_v4 == ()


def test_invalid_values_are_ignored_and_reported() -> None:
    values = {**base(), ks.bgp_host_key("host2", "as_num"): "lots",
              ks.bgp_peer_key("198.18.0.100"): "{not json",
              ks.BGP_GLOBAL_LOGLEVEL_KEY: "chatty",
              ks.block_key("198.19.1.0/26"): json.dumps({"cidr": "198.19.1.0/26"})}
    view = build_view(values)
    assert len(view.problems) == 4
    assert all(p.split(":")[0].startswith("/calico/") for p in view.problems)
    assert view.nodes["host2"].as_num is None
    assert view.global_peers == ()
    assert calculate_host_config(view, "host1").loglevel == "info"


def test_host_without_address_is_an_error() -> None:
    with pytest.raises(ValidationError, match="hostname"):
        render(build_view(base()), "host9")


def test_loglevels_map_node_over_global() -> None:
    values = {**base(), ks.BGP_GLOBAL_LOGLEVEL_KEY: "debug", **node("host2", loglevel="none")}
    assert "debug protocols all;" in render(build_view(values), "host1")
    assert "debug protocols off;" in render(build_view(values), "host2")
    assert "debug protocols { states };" in render(build_view(base()), "host1")


def test_templates_are_found_by_option_environment_and_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from confd.render import MAIN_TEMPLATE, TEMPLATES_ENV, find_templates_dir

    repo_templates = Path(__file__).resolve().parents[2] / "templates"
    monkeypatch.delenv(TEMPLATES_ENV, raising=False)
    assert find_templates_dir() == repo_templates
    own = tmp_path / "tpl"
    shutil.copytree(repo_templates, own)
    monkeypatch.setenv(TEMPLATES_ENV, str(own))
    assert find_templates_dir() == own
    assert find_templates_dir(str(repo_templates)) == repo_templates
    with pytest.raises(FileNotFoundError, match=MAIN_TEMPLATE):
        find_templates_dir(str(tmp_path / "empty"))
