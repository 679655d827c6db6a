"""The real `calicoctl` console script as subprocesses: global options and environment,
exit codes, TLS, resource files through stdin, `status` against a real BIRD and
`checksystem` inside a namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from libcalico import keyspace as ks
from netsim.etcd import EtcdServer, free_port, make_tls_material
from netsim.netns import Namespace
from netsim.wait import wait_for

pytestmark = pytest.mark.etcd


def _calicoctl() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "calicoctl")
    return here if os.path.exists(here) else shutil.which("calicoctl") or "calicoctl"


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None,  # noqa: A002
        netns: str | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    cmd = [_calicoctl(), *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, input=input,
                          env={**base, "HOSTNAME": "ctl-sub", **(env or {})}, check=False,
                          timeout=60)


@pytest.fixture
def etcd_env(datastore, etcd_server):
    return etcd_server.env()


def test_exit_codes_and_messages(etcd_env, datastore):
    ok = run("pool", "add", "198.18.0.0/16", env=etcd_env)
    assert ok.returncode == 0, ok.stderr
    cases = [
        (("pool", "add", "198.18.1.0/24"), 2, "overlaps"),
        (("pool", "add", "fd00:9::/64", "--ipip"), 2, "ipip"),
        (("pool", "remove", "198.19.0.0/16"), 3, "198.19.0.0/16"),
        (("profile", "nosuch", "rule", "show"), 3, "nosuch"),
        (("bgp", "peer", "add", "198.18.0.1", "as", "99999999999"), 2, "as_num"),
        (("get", "gadget"), 2, "gadget"),
        (("pool", "add"), 2, "Missing argument"),
        (("nonsense",), 2, "No such command"),
    ]
    for args, code, needle in cases:
        res = run(*args, env=etcd_env)
        assert res.returncode == code, (args, res.returncode, res.stderr)
        assert needle in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr
    debug = run("--debug", "pool", "remove", "198.19.0.0/16", env=etcd_env)
    assert debug.returncode == 3 and "Traceback" in debug.stderr
    down = run("pool", "show", env={"ETCD_ENDPOINTS": f"http://127.0.0.1:{free_port()}"})
    assert down.returncode == 4 and "unavailable" in down.stderr.lower()
    # The option beats the environment.
    opt = run("--etcd-endpoints", etcd_env["ETCD_ENDPOINTS"], "pool", "show", "-o", "json",
              env={"ETCD_ENDPOINTS": f"http://127.0.0.1:{free_port()}"})
    assert opt.returncode == 0 and json.loads(opt.stdout)[0]["metadata"]["cidr"] == \
        "198.18.0.0/16"
    assert run("version").returncode == 0


def test_authority_and_tls():
    with tempfile.TemporaryDirectory(prefix="ctl-tls-") as d:
        tls = make_tls_material(d)
        server = EtcdServer(tls=tls)
        try:
            server.start()
            env = {"ETCD_AUTHORITY": f"127.0.0.1:{server.port}", "ETCD_SCHEME": "https",
                   "ETCD_CA_CERT_FILE": tls.ca, "ETCD_CERT_FILE": tls.client_cert,
                   "ETCD_KEY_FILE": tls.client_key}
            res = run("bgp", "peer", "add", "198.18.0.5", "as", "64999", env=env)
            assert res.returncode == 0, res.stderr
            res = run("--etcd-endpoints", server.url, "--etcd-ca-cert-file", tls.ca,
                      "--etcd-cert-file", tls.client_cert, "--etcd-key-file", tls.client_key,
                      "bgp", "peer", "show", "-o", "json")
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout)[0]["metadata"]["ip"] == "198.18.0.5"
            # Without the client certificate etcd refuses us: unreachable/failure, one line.
            res = run("--etcd-endpoints", server.url, "--etcd-ca-cert-file", tls.ca,
                      "bgp", "peer", "show")
            assert res.returncode in (1, 4) and "Traceback" not in res.stderr
        finally:
            server.cleanup()


def test_apply_from_stdin_and_get_yaml_round_trip(etcd_env, datastore):
    doc = ("apiVersion: v1\nkind: tier\nmetadata: {name: t1}\nspec: {order: 3}\n---\n"
           "apiVersion: v1\nkind: policy\nmetadata: {tier: t1, name: p1}\n"
           "spec: {selector: \"has(app)\", order: 1,\n"
           "       inbound_rules: [{action: allow, protocol: tcp, dst_ports: [80]}]}\n")
    res = run("apply", "-f", "-", env=etcd_env, input=doc)
    assert res.returncode == 0, res.stderr
    text = run("get", "policy", "-o", "yaml", env=etcd_env).stdout
    before = datastore.list("/calico/")[0]
    res = run("apply", "-f", "-", env=etcd_env, input=text)
    assert res.returncode == 0, res.stderr
    assert [(kv.key, kv.value) for kv in datastore.list("/calico/")[0]] == \
        [(kv.key, kv.value) for kv in before]
    bad = run("apply", "-f", "-", env=etcd_env, input=doc + "---\nkind: [\n")
    assert bad.returncode == 2 and "line" in bad.stderr


BIRD_CONF = """\
router id 198.18.0.1;
protocol device {{}}
protocol bgp Mesh_198_18_0_9 {{
  local 198.18.0.1 as 64512;
  neighbor 198.18.0.9 as 64512;
  multihop;
  ipv4 {{ import all; export none; }};
}}
"""


@pytest.mark.root
@pytest.mark.slow
def test_status_against_real_bird(etcd_env, datastore, tmp_path):
    datastore.put(ks.bgp_host_key("ctl-sub", "ip_addr_v4"), "198.18.0.1")
    ns = Namespace("ctl-bird")
    sock = str(tmp_path / "bird.ctl")
    pid = str(tmp_path / "bird.pid")
    conf = tmp_path / "bird.conf"
    conf.write_text(BIRD_CONF.format())
    proc = None
    try:
        ns.ip("addr", "add", "198.18.0.1/32", "dev", "lo")
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, "bird", "-f", "-c", str(conf),
                                 "-s", sock, "-P", pid])
        wait_for(lambda: os.path.exists(sock), 10, message="BIRD socket")
        res = None

        def session_listed() -> bool:
            nonlocal res
            res = run("status", "--bird-socket", sock, env=etcd_env)
            return res.returncode == 0 and "198.18.0.9" in res.stdout

        wait_for(session_listed, 10, interval=0.2, message="BGP session in status")
        out = res.stdout
        assert "Calico node ctl-sub: IPv4 198.18.0.1" in out
        row = next(line for line in out.splitlines() if "198.18.0.9" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "node-to-node mesh"
        assert cells[2] in ("start", "down")
        assert cells[4].split()[0] in ("Active", "Connect", "Idle")
        data = json.loads(run("status", "--bird-socket", sock, "-o", "json",
                              env=etcd_env).stdout)
        assert data["bgp"][0]["peer"] == "198.18.0.9" and data["node"]["ipv4"] == "198.18.0.1"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        ns.delete()
    res = run("status", "--bird-socket", sock, env=etcd_env)
    assert res.returncode == 1 and "not running" in res.stderr


@pytest.mark.root
def test_checksystem_in_namespace():
    ns = Namespace("ctl-chk")
    server = EtcdServer(unix_socket=True)  # its unix socket is reachable from any netns
    try:
        server.start()
        env = server.env()
        # A fresh namespace does not forward: the sysctl checks fail, exit 1.
        res = run("checksystem", env=env, netns=ns.name)
        assert res.returncode == 1
        assert "[FAIL] sysctl net.ipv4.ip_forward" in res.stdout
        assert "sysctl net.ipv4.ip_forward" in res.stderr
        # The namespace's own sysctls (never the machine's).
        ns.exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        ns.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        res = run("checksystem", env=env, netns=ns.name)
        assert "[  OK] sysctl net.ipv4.ip_forward" in res.stdout
        assert "[  OK] etcd: version 3." in res.stdout
        assert res.returncode == 0, res.stdout
        server.stop()
        res = run("checksystem", env=env, netns=ns.name)
        assert res.returncode == 1 and "[FAIL] etcd: unreachable" in res.stdout
    finally:
        server.cleanup()
        ns.delete()
