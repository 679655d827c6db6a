"""calicoctl apply/create/replace/delete -f and get, against a real etcd."""

from __future__ import annotations

import json

import pytest
import yaml

from libcalico import keyspace as ks
from tests.support.ctl import Ctl, golden

pytestmark = pytest.mark.etcd

ALL_KINDS = """\
apiVersion: v1
kind: ipPool
metadata: {cidr: 198.18.0.0/16}
spec: {ipip: true, nat_outgoing: true}
---
apiVersion: v1
kind: profile
metadata: {name: web}
spec:
  inbound_rules:
  - {action: allow, protocol: tcp, dst_ports: [80, "8000:8080"], src_tag: web}
  outbound_rules: [{action: allow}]
  tags: [web]
  labels: {tier: frontend}
---
apiVersion: v1
kind: tier
metadata: {name: security}
spec: {order: 10}
---
apiVersion: v1
kind: policy
metadata: {tier: security, name: deny-ssh}
spec:
  order: 5
  selector: role == 'web'
  inbound_rules: [{action: deny, protocol: tcp, dst_ports: [22]}]
  outbound_rules: []
---
apiVersion: v1
kind: workloadEndpoint
metadata: {hostname: h1, orchestrator: netns, workload: w1, endpoint_id: e1}
spec:
  name: calie1
  mac: "ee:ee:ee:ee:ee:01"
  ipv4_nets: [198.18.0.5/32]
  profile_ids: [web]
  labels: {role: web}
---
apiVersion: v1
kind: hostEndpoint
metadata: {hostname: h1, endpoint_id: eth0}
spec: {name: eth0, expected_ipv4_addrs: [198.18.0.2], profile_ids: [web]}
---
apiVersion: v1
kind: node
metadata: {hostname: h1}
spec: {ipv4: 198.18.0.2, as_num: 64600}
---
apiVersion: v1
kind: bgpPeer
metadata: {ip: 198.18.0.100}
spec: {as_num: 65000}
---
apiVersion: v1
kind: bgpPeer
metadata: {ip: 198.18.0.101, hostname: h1}
spec: {as_num: 65001}
---
apiVersion: v1
kind: bgpConfig
metadata: {}
spec: {as_num: 64513, node_mesh: false, loglevel: debug}
---
apiVersion: v1
kind: felixConfig
metadata: {}
spec: {LogSeverityScreen: info, IptablesRefreshInterval: 30}
---
apiVersion: v1
kind: ipamConfig
metadata: {}
spec: {strict_affinity: true, auto_allocate_blocks: true}
"""

KINDS = ["ipPool", "profile", "tier", "policy", "workloadEndpoint", "hostEndpoint", "node",
         "bgpPeer", "bgpConfig", "felixConfig", "ipamConfig"]


@pytest.fixture
def ctl(datastore, etcd_server):
    return Ctl(etcd_server.env())


def _dump(datastore):
    kvs, _ = datastore.list(ks.ROOT + "/")
    return {kv.key: kv.value for kv in kvs}


def test_apply_every_kind_and_get_round_trip(ctl, datastore, tmp_path):
    f = tmp_path / "all.yaml"
    f.write_text(ALL_KINDS)
    res = ctl("apply", "-f", str(f))
    assert res.out.count("Applied") == 12
    assert json.loads(datastore.get_value(ks.pool_key("198.18.0.0/16")))["ipip"] == "tunl0"
    assert json.loads(datastore.get_value(ks.policy_key("security", "deny-ssh")))["order"] == 5
    assert json.loads(datastore.get_value(ks.tier_metadata_key("security"))) == {"order": 10}
    assert datastore.get_value(ks.bgp_host_key("h1", "as_num")) == "64600"
    assert datastore.get_value(ks.host_bird_ip_key("h1")) == "198.18.0.2"
    assert json.loads(datastore.get_value(ks.BGP_GLOBAL_MESH_KEY)) == {"enabled": False}
    assert datastore.get_value(ks.global_config_key("IptablesRefreshInterval")) == "30"
    assert json.loads(datastore.get_value(ks.IPAM_CONFIG_KEY))["strict_affinity"] is True
    assert json.loads(datastore.get_value(ks.bgp_peer_key("198.18.0.101", "h1")))["as_num"] \
        == "65001"
    before = _dump(datastore)

    # What `get -o yaml` prints, applied back, changes nothing; every kind round-trips.
    for kind in KINDS:
        text = ctl("get", kind, "-o", "yaml").out
        docs = [d for d in yaml.safe_load_all(text) if d]
        assert docs, kind
        g = tmp_path / f"{kind}.yaml"
        g.write_text(text)
        ctl("apply", "-f", str(g))
        assert _dump(datastore) == before, kind
    # JSON output is also valid input.
    text = ctl("get", "profile", "-o", "json").out
    ctl("apply", "-f", "-", input=text)
    assert _dump(datastore) == before
    one = json.loads(ctl("get", "profile", "web", "-o", "json").out)
    assert one["metadata"]["name"] == "web"
    assert one["spec"]["labels"] == {"tier": "frontend"}
    for kind in KINDS:
        golden(f"get_{kind}.txt", ctl("get", kind).out)
        golden(f"get_{kind}_wide.txt", ctl("get", kind.lower(), "-o", "wide").out)
    ctl("get", "profile", "ghost", code=3)
    ctl("get", "ipPool", "198.18.0.0/16")
    res = ctl("get", "gizmo", code=2)
    assert "gizmo" in res.err and "kind" in res.err


def test_delete_and_create_replace_semantics(ctl, datastore, tmp_path):
    f = tmp_path / "all.yaml"
    f.write_text(ALL_KINDS)
    ctl("create", "-f", str(f))
    res = ctl("create", "-f", str(f), code=3)
    assert "already exists" in res.err and "document 1" in res.err
    ctl("replace", "-f", str(f))
    ctl("delete", "-f", str(f))
    left = _dump(datastore)
    assert left == {}, left
    res = ctl("replace", "-f", str(f), code=3)
    assert "does not exist" in res.err
    ctl("delete", "-f", str(f), code=3)


def test_bad_documents_write_nothing(ctl, datastore, tmp_path):
    ctl("pool", "add", "198.19.0.0/16")
    before = _dump(datastore)
    good = ("apiVersion: v1\nkind: profile\nmetadata: {name: ok}\nspec: {}\n---\n")
    cases = {
        "unknown kind": (good + "apiVersion: v1\nkind: gizmo\nmetadata: {}\nspec: {}\n",
                         "gizmo"),
        "yaml error": (good + "apiVersion: v1\nkind: profile\nmetadata: {name: [x\n",
                       "line 9"),
        "bad cidr": (good + "apiVersion: v1\nkind: ipPool\nmetadata: {cidr: 198.18.0.0/40}\n",
                     "198.18.0.0/40"),
        "overlap in file": (good + "apiVersion: v1\nkind: ipPool\nmetadata: "
                            "{cidr: 198.18.0.0/16}\n---\napiVersion: v1\nkind: ipPool\n"
                            "metadata: {cidr: 198.18.1.0/24}\n",
                            "overlaps"),
        "overlap stored": (good + "apiVersion: v1\nkind: ipPool\nmetadata: {cidr: 198.19.1.0/24}\n",
                           "198.19.0.0/16"),
        "ipv6 ipip": (good + "apiVersion: v1\nkind: ipPool\nmetadata: {cidr: 'fd00:5::/64'}\n"
                      "spec: {ipip: true}\n", "ipip"),
        "bad AS": (good + "apiVersion: v1\nkind: bgpPeer\nmetadata: {ip: 198.18.0.1}\n"
                   "spec: {as_num: 4294967296}\n", "as_num"),
        "unknown profile": (good + "apiVersion: v1\nkind: workloadEndpoint\nmetadata: "
                            "{hostname: h, orchestrator: o, workload: w, endpoint_id: e}\n"
                            "spec: {name: calie, profile_ids: [ghost]}\n", "ghost"),
        "malformed rule": (good + "apiVersion: v1\nkind: policy\nmetadata: {tier: t, name: p}\n"
                           "spec: {inbound_rules: [{action: allow, protocol: icmp, "
                           "src_ports: [80]}]}\n", "src_ports"),
        "unknown field": (good + "apiVersion: v1\nkind: tier\nmetadata: {name: t}\n"
                          "spec: {colour: red}\n", "colour"),
        "empty": ("---\n", "no resources"),
    }
    for label, (text, needle) in cases.items():
        f = tmp_path / "bad.yaml"
        f.write_text(text)
        res = ctl("apply", "-f", str(f), code=2)
        assert needle in res.err, (label, res.err)
        assert len(res.err.strip().splitlines()) == 1, (label, res.err)
        assert _dump(datastore) == before, label
    res = ctl("apply", "-f", str(tmp_path / "missing.yaml"), code=2)
    assert "missing.yaml" in res.err


def test_large_batch_is_chunked(ctl, datastore):
    docs = [{"apiVersion": "v1", "kind": "profile", "metadata": {"name": f"p{i}"}, "spec": {}}
            for i in range(150)]
    ctl("apply", "-f", "-", input=json.dumps(docs))
    assert len(ctl("profile", "show", "-o", "json").out and
               json.loads(ctl("profile", "show", "-o", "json").out)) == 150
