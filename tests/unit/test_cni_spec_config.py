"""The CNI protocol and configuration as pure values: environment and CNI_ARGS checks
with their error codes, result and error shapes per spec version, configuration
validation naming the field, the attachment's identity and the address requests."""

from __future__ import annotations

from typing import Any

import pytest

from cni import config, spec
from cni.spec import CniError, Env, Interface, IPConfig, Result, RouteConfig

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni", "CNI_ARGS": ""}
BASE = {"cniVersion": "1.0.0", "name": "net1", "type": "calico",
        "ipam": {"type": "calico-ipam"}}


def code_of(fn: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(CniError) as info:
        fn(*args)
    return info.value.code, info.value.msg


# --- environment and CNI_ARGS ----------------------------------------------------------------


def test_parse_env_reads_every_variable() -> None:
    env = spec.parse_env(ENV)
    assert env == Env("ADD", "c0ffee", "/run/netns/x", "eth0", "",
                      ("/opt/cni/bin", "/usr/lib/cni"))
    assert spec.parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert spec.parse_env({"CNI_COMMAND": "GC", "CNI_PATH": "/a"}).path == ("/a",)
    # DEL may come without a namespace (the container is gone).
    assert spec.parse_env({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""


@pytest.mark.parametrize("change, variable", [
    ({"CNI_COMMAND": "BOOT"}, "CNI_COMMAND"),
    ({"CNI_COMMAND": ""}, "CNI_COMMAND"),
    ({"CNI_CONTAINERID": ""}, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "-leading-dash"}, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "has space"}, "CNI_CONTAINERID"),
    ({"CNI_IFNAME": ""}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "a-name-longer-than-15"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "eth:0"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "\u200b"}, "CNI_IFNAME"),  # the kernel would take it; Calico does not
    ({"CNI_IFNAME": "é"}, "CNI_IFNAME"),
    ({"CNI_NETNS": ""}, "CNI_NETNS"),
    ({"CNI_NETNS": "relative/path"}, "CNI_NETNS"),
    # Found by the CNI fuzzer at 10,000 cases: a pattern ending in `$` lets a trailing
    # newline through (the workload layer refused the id later, as configuration).
    ({"CNI_CONTAINERID": "0\n"}, "CNI_CONTAINERID"),
    ({"CNI_IFNAME": "eth0\n"}, "CNI_IFNAME"),
])
def test_bad_environment_is_code_4_naming_the_variable(change: dict[str, str],
                                                       variable: str) -> None:
    code, msg = code_of(spec.parse_env, {**ENV, **change})
    assert code == spec.INVALID_ENVIRONMENT and variable in msg


def test_cni_args() -> None:
    assert spec.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a;IP=198.18.0.9") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "a", "IP": "198.18.0.9"}
    assert spec.parse_cni_args("") == {}
    assert code_of(spec.parse_cni_args, "K8S_POD_NAME")[0] == spec.INVALID_ENVIRONMENT
    assert code_of(spec.parse_cni_args, "A=1;A=2")[0] == spec.INVALID_ENVIRONMENT


def test_args_known_unknown_and_bad_values() -> None:
    args = config.parse_args({"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns1",
                              "K8S_POD_NAME": "web-0", "IP": "198.18.0.9,fd00::9",
                              "SOMETHING_ELSE": "x"})
    assert args == config.Args(("198.18.0.9", "fd00::9"), "ns1", "web-0")
    code, msg = code_of(config.parse_args, {"FOO": "1"})
    assert code == spec.INVALID_ENVIRONMENT and "FOO" in msg and "IgnoreUnknown" in msg
    code, msg = code_of(config.parse_args, {"IP": "198.18.0.999"})
    assert code == spec.INVALID_ENVIRONMENT and "IP" in msg and "198.18.0.999" in msg
    code, msg = code_of(config.parse_args, {"K8S_POD_NAMESPACE": "NS",
                                            "K8S_POD_NAME": "p"})
    assert code == spec.INVALID_ENVIRONMENT and "K8S_POD_NAMESPACE" in msg
    code, msg = code_of(config.parse_args, {"K8S_POD_NAMESPACE": "ns",
                                            "K8S_POD_NAME": "p\n"})
    assert code == spec.INVALID_ENVIRONMENT and "K8S_POD_NAME" in msg


# --- versions, results and errors ------------------------------------------------------------


def test_versions_and_the_commands_each_allows() -> None:
    for version in spec.SUPPORTED_VERSIONS:
        assert spec.check_version(version, "ADD") == version
    for bad in ("0.2.0", "2.0.0", None, 1):
        assert code_of(spec.check_version, bad, "ADD")[0] == spec.INCOMPATIBLE_VERSION
    assert code_of(spec.check_version, "0.3.1", "CHECK")[0] == spec.INCOMPATIBLE_VERSION
    assert spec.check_version("0.4.0", "CHECK") == "0.4.0"
    for command in ("GC", "STATUS"):
        assert code_of(spec.check_version, "1.0.0", command)[0] == spec.INCOMPATIBLE_VERSION
        assert spec.check_version("1.1.0", command) == "1.1.0"


RESULT = Result(
    (Interface("cali0123456789a", "ee:ee:ee:ee:ee:ee", mtu=1400),
     Interface("eth0", "02:00:00:00:00:01", sandbox="/run/netns/x", mtu=1400)),
    (IPConfig("198.18.0.5/32", "169.254.1.1", 1), IPConfig("fd00::5/128", "fe80::1", 1)),
    (RouteConfig("0.0.0.0/0", "169.254.1.1"), RouteConfig("::/0", "fe80::1")),
    {"nameservers": ["198.18.0.53"]})


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_pre_1_0_results_give_each_ip_a_version(version: str) -> None:
    out = spec.render_result(version, RESULT)
    assert out["cniVersion"] == version
    assert out["ips"] == [
        {"version": "4", "address": "198.18.0.5/32", "gateway": "169.254.1.1", "interface": 1},
        {"version": "6", "address": "fd00::5/128", "gateway": "fe80::1", "interface": 1}]
    assert out["interfaces"][1] == {"name": "eth0", "mac": "02:00:00:00:00:01",
                                    "sandbox": "/run/netns/x"}
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                             {"dst": "::/0", "gw": "fe80::1"}]
    assert out["dns"] == {"nameservers": ["198.18.0.53"]}


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_1_x_results_have_no_ip_version(version: str) -> None:
    out = spec.render_result(version, RESULT)
    assert all("version" not in ip for ip in out["ips"])
    assert out["ips"][0] == {"address": "198.18.0.5/32", "gateway": "169.254.1.1",
                             "interface": 1}
    # Interface MTU exists from 1.1.0 on.
    assert ("mtu" in out["interfaces"][1]) == (version == "1.1.0")


def test_error_and_version_answers() -> None:
    assert spec.render_error("0.4.0", CniError(7, "invalid mtu 5", "why")) == {
        "cniVersion": "0.4.0", "code": 7, "msg": "invalid mtu 5", "details": "why"}
    assert "details" not in spec.render_error("1.0.0", CniError(4, "m"))
    assert spec.version_answer("0.3.1") == {"cniVersion": "0.3.1",
                                            "supportedVersions": list(spec.SUPPORTED_VERSIONS)}
    assert spec.version_answer(None)["cniVersion"] == "1.1.0"


def test_result_ips_of_every_shape() -> None:
    assert spec.result_ips({"ips": [{"address": "198.18.0.5/24"},
                                    {"version": "6", "address": "fd00::1/64"}]}) == \
        ["198.18.0.5", "fd00::1"]
    assert spec.result_ips({"ip4": {"ip": "198.18.0.7/24"}}) == ["198.18.0.7"]
    assert code_of(spec.result_ips, {"ips": [{"nope": 1}]})[0] == spec.DECODE_FAILURE


# --- configuration ---------------------------------------------------------------------------


def test_a_full_configuration() -> None:
    conf = config.parse_netconf({
        **BASE, "etcd_endpoints": "https://198.18.0.254:2379", "etcd_ca_cert_file": "/ca",
        "etcd_cert_file": "/c", "etcd_key_file": "/k", "log_level": "DEBUG",
        "log_file_path": "/tmp/x.log", "mtu": 1400, "nodename": "node9",
        "policy": {"type": "k8s-namespace"}, "dns": {"nameservers": ["198.18.0.53"]},
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": True,
                 "ipv4_pools": ["198.18.64.0/20"], "ipv6_pools": ["fd00:1::/64"]},
        "runtimeConfig": {"ips": ["198.18.64.9/20"]},
        "args": {"org.apache.mesos": {"network_info": {"name": "net1", "labels": {
            "labels": [{"key": "app", "value": "web"}]}}},
            "cni": {"labels": [{"key": "tier", "value": "front"}]}},
        "prevResult": {"ips": []}}, "ADD")
    assert (conf.etcd_endpoints, conf.etcd_ca_cert_file, conf.log_level, conf.mtu,
            conf.nodename, conf.policy_type) == ("https://198.18.0.254:2379", "/ca",
                                                 "debug", 1400, "node9", "k8s-namespace")
    assert conf.ipam == config.IpamConf("calico-ipam", True, True, ("198.18.64.0/20",),
                                        ("fd00:1::/64",))
    assert conf.arg_ips == ("198.18.64.9",)
    assert conf.arg_labels == {"app": "web", "tier": "front"}
    assert conf.prev_result == {"ips": []}
    # kubernetes.node_name stands in for nodename; a foreign IPAM's section is its own.
    conf = config.parse_netconf({**BASE, "kubernetes": {"node_name": "k1"},
                                 "ipam": {"type": "host-local", "subnet": "x"}}, "ADD")
    assert conf.nodename == "k1" and conf.ipam == config.IpamConf("host-local")


@pytest.mark.parametrize("change, field", [
    ({"name": "bad name"}, "name"),
    ({"name": ""}, "name"),
    ({"type": 3}, "type"),
    ({"mtu": 20}, "mtu"),
    ({"mtu": "1400"}, "mtu"),
    ({"log_level": "loud"}, "log_level"),
    ({"log_file_path": "relative.log"}, "log_file_path"),
    ({"nodename": "has space"}, "nodename"),
    ({"policy": {"type": "k8s"}}, "policy.type"),
    ({"policy": "network"}, "policy"),
    ({"ipam": {"type": "calico-ipam", "assign_ipv4": "yes"}}, "ipam.assign_ipv4"),
    ({"ipam": {"type": "calico-ipam", "ipv4_pools": ["fd00::/64"]}}, "ipam.ipv4_pools"),
    ({"ipam": {"type": "calico-ipam", "ipv6_pools": "fd00::/64"}}, "ipam.ipv6_pools"),
    ({"ipam": {"assign_ipv4": True}}, "ipam.type"),
    ({"ipam": []}, "ipam"),
    ({"etcd_endpoints": 5}, "etcd_endpoints"),
    ({"runtimeConfig": {"ips": ["nope"]}}, "runtimeConfig.ips"),
    ({"args": {"cni": {"labels": [{"key": 1}]}}}, "args.cni.labels"),
    ({"prevResult": []}, "prevResult"),
    # Found by the CNI fuzzer at 10,000 cases: a falsy dns was taken as "no dns".
    ({"dns": ""}, "dns"),
    ({"dns": 0}, "dns"),
    ({"dns": False}, "dns"),
    ({"dns": []}, "dns"),
    ({"name": "net1\n"}, "name"),
])
def test_bad_configuration_is_code_7_naming_the_field(change: dict[str, Any],
                                                      field: str) -> None:
    code, msg = code_of(config.parse_netconf, {**BASE, **change}, "ADD")
    assert code == spec.INVALID_NETWORK_CONFIG and f"invalid {field} " in msg


def test_load_and_version_errors() -> None:
    assert code_of(config.load, b"{not json")[0] == spec.DECODE_FAILURE
    assert code_of(config.load, b"[1, 2]")[0] == spec.DECODE_FAILURE
    assert code_of(config.parse_netconf, {**BASE, "cniVersion": "9.9.9"}, "ADD")[0] == \
        spec.INCOMPATIBLE_VERSION
    assert code_of(config.parse_netconf, {**BASE, "cniVersion": "0.3.1"}, "CHECK")[0] == \
        spec.INCOMPATIBLE_VERSION


def test_hostile_sizes_are_one_short_line() -> None:
    """Found by tests/fuzz/test_fuzz_cni.py: JSON nested past the recursion limit was an
    internal error, and a huge value was quoted whole into the error message."""
    assert code_of(config.load, b"[" * 100_000)[0] == spec.DECODE_FAILURE
    code, msg = code_of(spec.parse_env, {"CNI_COMMAND": "x" * 20_000})
    assert code == spec.INVALID_ENVIRONMENT and len(msg) < 200 and "CNI_COMMAND" in msg
    code, msg = code_of(config.parse_netconf, {**BASE, "name": "n" * 100_000}, "ADD")
    assert code == spec.INVALID_NETWORK_CONFIG and len(msg) < 300 and "name" in msg
    # The endpoint id <container id>.<ifname> must fit a Calico name (128).
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "a" * 113, "CNI_IFNAME": "eth0"}
    code, msg = code_of(spec.parse_env, env)
    assert code == spec.INVALID_ENVIRONMENT and "CNI_CONTAINERID" in msg
    assert spec.parse_env({**env, "CNI_CONTAINERID": "a" * 112}).container_id == "a" * 112


def test_gc_attachments_under_either_key() -> None:
    item = [{"containerID": "c1", "ifname": "eth0"}]
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        conf = config.parse_netconf({**BASE, "cniVersion": "1.1.0", key: item}, "GC")
        assert conf.valid_attachments == (("c1", "eth0"),)
    code, _ = code_of(config.parse_netconf, {**BASE, "cniVersion": "1.1.0",
                                             "cni.dev/valid-attachments": [{"x": 1}]}, "GC")
    assert code == spec.INVALID_NETWORK_CONFIG


# --- identity and requests -------------------------------------------------------------------


def test_identity_k8s_and_plain() -> None:
    conf = config.parse_netconf(BASE, "ADD")
    env = spec.parse_env(ENV)
    k8s = config.identity(conf, env, config.Args(k8s_namespace="ns1", k8s_pod="web-0"))
    assert (k8s.orchestrator, k8s.workload, k8s.endpoint_id, k8s.handle) == \
        ("k8s", "ns1.web-0", "c0ffee.eth0", "net1.c0ffee.eth0")
    assert k8s.labels == {config.LABEL_NETWORK: "net1", config.LABEL_ORCHESTRATOR: "k8s",
                          config.LABEL_NAMESPACE: "ns1"}
    plain = config.identity(conf, env, config.Args(k8s_pod="only-a-name"))  # podman's args
    assert (plain.orchestrator, plain.workload) == ("cni", "c0ffee")
    assert plain.host_ifname.startswith("cali") and len(plain.host_ifname) == 15
    # Another interface of the same container gets another host interface.
    other = config.identity(conf, Env("ADD", "c0ffee", "/x", "eth1"), config.Args())
    assert other.host_ifname != plain.host_ifname
    assert config.profile_for(conf, plain) == "net1"
    ns_conf = config.parse_netconf({**BASE, "policy": {"type": "k8s-namespace"}}, "ADD")
    assert config.profile_for(ns_conf, k8s) == "k8s_ns.ns1"
    assert code_of(config.profile_for, ns_conf, plain)[0] == spec.INVALID_ENVIRONMENT


def test_address_requests() -> None:
    conf = config.parse_netconf({**BASE, "ipam": {"type": "calico-ipam", "assign_ipv6": True,
                                                  "ipv4_pools": ["198.18.0.0/20"]}}, "ADD")
    assert config.address_requests(conf, config.Args()) == \
        ([], [(4, ("198.18.0.0/20",)), (6, ())])
    # An explicit address replaces auto-assignment of its version only.
    assert config.address_requests(conf, config.Args(("198.18.0.9",))) == \
        (["198.18.0.9"], [(6, ())])
    none = config.parse_netconf({**BASE, "ipam": {"type": "calico-ipam",
                                                  "assign_ipv4": False}}, "ADD")
    assert code_of(config.address_requests, none, config.Args())[0] == \
        spec.INVALID_NETWORK_CONFIG


def test_nodename_default() -> None:
    conf = config.parse_netconf(BASE, "ADD")
    assert config.nodename(conf, {"HOSTNAME": "h7"}) == "h7"
    assert config.nodename(config.parse_netconf({**BASE, "nodename": "n"}, "ADD"),
                           {"HOSTNAME": "h7"}) == "n"
