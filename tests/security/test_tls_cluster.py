"""Security on a running cluster whose etcd accepts only TLS with client certificates.

Two hosts; etcd runs inside host1 on its own address (a Calico host that also runs etcd),
serving only TLS that requires a client certificate, on its TCP port and on its unix
socket alike. Every part runs through it: `calicoctl node run` (registration, confd's
first configuration), felix, confd and BIRD under supervisord, `calicoctl container
add`, profile rules. Then: the node's unix sockets are not writable by other users;
names with shell metacharacters, unicode and maximum lengths never reach a shell nor
break an iptables or ipset name; IPv6 router advertisements from a workload are
dropped; a workload cannot reach its host's etcd or BGP port unless policy allows it.

The Docker driver and the CNI plugin run end to end through the same etcd
(tests/security/plugins.py): a workload made through each gets its address and reaches
another on the other host; the driver's plugin sockets are not writable by others.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest

from faults.agent import __file__ as AGENT_FILE
from faults.cluster import Cluster, Workload
from faults.converge import matrix_ok, wait_converged
from libcalico.datastore import Datastore, EtcdSettings
from libcalico.errors import DatastoreError
from netsim.etcd import EtcdServer
from netsim.topology import Host
from netsim.wait import wait_for
from tests.security.plugins import cni_end_to_end, docker_end_to_end

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

AGENT = os.path.abspath(AGENT_FILE)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(prefix="stls", hosts=2, etcd_members=1, etcd_tls=True, etcd_on_host=True)
    try:
        c.start()
        yield c
    finally:
        c.close()


def etcd_of(cluster: Cluster) -> EtcdServer:
    etcd = cluster.etcd
    assert isinstance(etcd, EtcdServer) and etcd.tls is not None
    return etcd


def tcp_open(wl: Workload, ip: str, port: int) -> bool:
    return wl.ns.exec("nc", "-z", "-w", "1", ip, str(port), check=False).returncode == 0


def test_a_tls_only_etcd_serves_the_whole_node_end_to_end(cluster: Cluster) -> None:
    etcd = etcd_of(cluster)
    assert etcd.tls is not None
    # Nothing reaches this etcd without a client certificate: not plain gRPC, not TLS
    # without a certificate (tried from host2, over the fabric).
    for env in ({"ETCD_ENDPOINTS": f"http://{etcd.host}:{etcd.port}"},
                {"ETCD_ENDPOINTS": etcd.url, "ETCD_CA_CERT_FILE": etcd.tls.ca}):
        probe = ("from libcalico.datastore import Datastore, EtcdSettings;"
                 "import sys; s = Datastore(EtcdSettings.from_env(timeout=2));"
                 "s.revision()")
        proc = cluster.hosts[1].ns.exec("env", *(f"{k}={v}" for k, v in env.items()),
                                        sys.executable, "-c", probe, check=False)
        assert proc.returncode != 0, env
    with pytest.raises(DatastoreError):
        Datastore(EtcdSettings.from_env({"ETCD_ENDPOINTS": etcd.url.replace("https", "http")},
                                        timeout=2)).revision()
    # Every daemon runs, the workloads reach each other, and a profile rule added with
    # calicoctl over TLS reaches felix and confd on both hosts.
    for host in cluster.hosts:
        assert set(cluster.pids(host)) == {"bird", "confd", "felix"}
    assert matrix_ok(cluster)
    assert wait_converged(cluster, 60.0) <= 10.0
    status = cluster.calicoctl(cluster.hosts[0], "node", "status").stdout
    assert "Established" in status, status


def test_node_sockets_are_not_writable_by_other_users(cluster: Cluster) -> None:
    for host in cluster.hosts:
        run = host.dir / "run"
        for name in ("supervisor.sock", "bird.ctl"):
            mode = os.stat(run / name).st_mode
            assert stat.S_ISSOCK(mode), name
            assert not mode & (stat.S_IWOTH | stat.S_IROTH), f"{name}: {oct(mode)}"
        assert not os.stat(run).st_mode & stat.S_IWOTH


def test_hostile_names_and_labels_never_reach_a_shell_or_break_kernel_names(
        cluster: Cluster) -> None:
    h1 = cluster.hosts[0]
    marker = f"/tmp/calico-pwned-{secrets.token_hex(4)}"
    hostile = f"$(touch {marker});`touch {marker}`;é中\n"
    # Rejected at the door, one line naming the field, nothing written.
    for args in (["profile", "add", f"web;touch {marker}"],
                 ["profile", "add", "x" * 129],
                 ["container", "add", f"ns;touch {marker}", "ipv4"],
                 ["node", "run", "--runtime=none", f"--name=h;touch {marker}", "--ip=1.2.3.4"]):
        proc = cluster.calicoctl(h1, *args, check=False)
        assert proc.returncode in (2, 3), (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    # Accepted where they are data: a 128-character profile, labels and a policy
    # selector holding shell syntax and unicode. Felix builds chains and ipsets from
    # them: names within the kernel's limits, the policy enforced, no shell ran.
    long_name = "p" * 128
    cluster.calicoctl(h1, "profile", "add", long_name)
    wl = cluster.workloads[0]
    other = next(w for w in cluster.workloads if w.host is not h1)
    docs = [
        {"apiVersion": "v1", "kind": "profile", "metadata": {"name": long_name},
         "spec": {"labels": {"role": hostile}, "tags": [long_name],
                  "inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]}},
        {"apiVersion": "v1", "kind": "policy", "metadata": {"tier": "sec", "name": "hostile"},
         "spec": {"order": 1, "selector": f'role == "{hostile}"',
                  "inbound_rules": [{"action": "deny", "protocol": "tcp",
                                     "dst_ports": [7999],
                                     "src_selector": f'role == "{hostile}"'},
                                    {"action": "allow"}],
                  "outbound_rules": [{"action": "allow"}]}},
    ]
    proc = subprocess.run(
        ["ip", "netns", "exec", h1.ns.name, "env", *_env(cluster, h1), _calicoctl(),
         "apply", "-f", "-"], input=json.dumps(docs), capture_output=True, text=True,
        check=False)
    assert proc.returncode == 0, proc.stderr
    cluster.calicoctl(h1, "container", wl.ns.name, "profile", "append", long_name)
    cluster.calicoctl(other.host, "container", other.ns.name, "profile", "append", long_name)
    try:
        def programmed(host: Host) -> bool:
            sets = host.ns.exec("ipset", "list", "-n", check=False).stdout.split()
            return any(":" in s for s in sets)  # the selector's set exists

        wait_for(lambda: all(programmed(h) for h in cluster.hosts), 30.0,
                 message="the hostile selector's ipset")
        for host in cluster.hosts:
            chains = [line.split()[0][1:] for line in host.ns.exec(
                "iptables-save", "-t", "filter", check=False).stdout.splitlines()
                if line.startswith(":")]
            assert chains and max(map(len, chains)) <= 28, max(chains, key=len)
            sets = host.ns.exec("ipset", "list", "-n", check=False).stdout.split()
            assert max(map(len, sets)) <= 31, max(sets, key=len)
        # The policy is enforced: the hostile-labelled peer cannot open TCP 7999 on wl,
        # and still opens 7998 (the policy's allow).
        listeners = [subprocess.Popen(["ip", "netns", "exec", wl.ns.name, "nc", "-lk", port],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for port in ("7998", "7999")]
        try:
            wait_for(lambda: (not tcp_open(other, wl.ipv4, 7999)
                              and tcp_open(other, wl.ipv4, 7998)), 30.0,
                     message="the hostile-selector policy enforced")
        finally:
            for listener in listeners:
                listener.kill()
                listener.wait()
        assert not os.path.exists(marker), "a name or label reached a shell"
    finally:
        for w in (wl, other):
            cluster.calicoctl(w.host, "container", w.ns.name, "profile", "remove", long_name,
                              check=False)
        cluster.store.delete_prefix("/calico/v1/policy/tier/sec/")
        cluster.calicoctl(h1, "profile", "remove", long_name, "--no-check", check=False)
    assert not os.path.exists(marker)


def _calicoctl() -> str:
    from netsim.topology import calicoctl_path

    return calicoctl_path()


def _env(cluster: Cluster, host: Host) -> list[str]:
    assert cluster.topo is not None
    env = cluster.topo.daemon_env({"HOSTNAME": host.name})
    return [f"{k}={v}" for k, v in env.items() if k.startswith(("ETCD_", "HOSTNAME"))]


def icmp6_seen(host: Host, src: Workload, typ: int) -> list[list[object]]:
    """ICMPv6 messages of `typ` (plus neighbour solicitations, the control) sent by `src`
    to ff02::1 and delivered to `host`."""
    listener = subprocess.Popen(["ip", "netns", "exec", host.ns.name, sys.executable, AGENT,
                                 "icmp6-listen", "3"], stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "ready"
    for t in (typ, 135):
        src.ns.exec(sys.executable, AGENT, "icmp6-send", str(t), "eth1", "5")
    out, _ = listener.communicate(timeout=30)
    return [m for m in json.loads(out.strip().splitlines()[-1])
            if str(m[1]).startswith("cali")]


@pytest.mark.parametrize("endpoint_to_host", ["DROP", "RETURN"])
def test_router_advertisements_from_a_workload_are_dropped(cluster: Cluster,
                                                          endpoint_to_host: str) -> None:
    h1 = cluster.hosts[0]
    wl = next(w for w in cluster.workloads if w.host is h1)
    with felix_config(cluster, "DefaultEndpointToHostAction", endpoint_to_host):
        seen = icmp6_seen(h1, wl, 134)
    types = {m[0] for m in seen}
    assert 135 in types, f"the control (neighbour solicitation) did not arrive: {seen}"
    assert 134 not in types, f"a router advertisement reached the host: {seen}"
    routes = h1.ns.ip("-6", "route", "show").stdout
    assert "fd00:dead::" not in routes and "default" not in routes, routes


def test_a_workload_cannot_reach_its_hosts_etcd_or_bgp_port_unless_policy_allows(
        cluster: Cluster) -> None:
    h1 = cluster.hosts[0]
    etcd = etcd_of(cluster)
    wl = next(w for w in cluster.workloads if w.host is h1)
    ports = (179, etcd.port)
    other = cluster.hosts[1]
    assert all(tcp_open_from_host(other, h1.ip, p) for p in ports)  # they do listen
    assert not any(tcp_open(wl, h1.ip, p) for p in ports)  # default: workload -> host DROP
    with felix_config(cluster, "DefaultEndpointToHostAction", "RETURN"):
        # Now the workload's outbound policy decides: the profile allows all out ...
        wait_for(lambda: all(tcp_open(wl, h1.ip, p) for p in ports), 30.0,
                 message="the host ports reachable when policy allows")
        # ... until it denies those ports.
        rule = ["outbound", "--at=0", "deny", "tcp", "to", "ports", ",".join(map(str, ports))]
        cluster.calicoctl(h1, "profile", "flt", "rule", "add", *rule)
        try:
            wait_for(lambda: not any(tcp_open(wl, h1.ip, p) for p in ports), 30.0,
                     message="the host ports closed again by policy")
        finally:
            cluster.calicoctl(h1, "profile", "flt", "rule", "remove", "outbound", "--at=0")


def tcp_open_from_host(host: Host, ip: str, port: int) -> bool:
    return host.ns.exec("nc", "-z", "-w", "1", ip, str(port), check=False).returncode == 0


class felix_config:  # noqa: N801 - a context manager used like a function
    """A global felix parameter for the block. Felix re-executes itself when its
    configuration in etcd changes: wait for that on every host, then for readiness."""

    def __init__(self, cluster: Cluster, name: str, value: str) -> None:
        self.cluster, self.name, self.value = cluster, name, value
        self.changes = value != "DROP"  # DROP is the default: no change, no restart

    def _restarts(self) -> dict[str, int]:
        return {h.name: self.cluster.log(h, "felix").count("restarting felix")
                for h in self.cluster.hosts}

    def _set(self, *args: str) -> None:
        c = self.cluster
        before = self._restarts()
        c.calicoctl(c.hosts[0], "config", "felix", self.name, *args, "--force")
        if not self.changes:
            return
        wait_for(lambda: all(n > before[h] for h, n in self._restarts().items()), 30.0,
                 message="felix restarting with the new configuration")
        wait_for(lambda: all(c.felix_ready(h) for h in c.hosts), 60.0, interval=0.3,
                 message="felix ready again")

    def __enter__(self) -> None:
        self._set(self.value)

    def __exit__(self, *exc: object) -> None:
        self._set("--remove")


def test_the_docker_driver_works_end_to_end_over_tls(cluster: Cluster) -> None:
    docker_end_to_end(cluster, "198.19.")


def test_the_cni_plugin_works_end_to_end_over_tls(cluster: Cluster) -> None:
    tls = etcd_of(cluster).tls
    assert tls is not None
    # As an operator configures it: the certificate files in the network configuration.
    cni_end_to_end(cluster, {"etcd_ca_cert_file": tls.ca, "etcd_cert_file": tls.client_cert,
                             "etcd_key_file": tls.client_key}, {}, "198.19.")
