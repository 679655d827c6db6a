"""The network configuration and the workload's identity, as pure values.

Owns:
- `load(raw)`: stdin as a JSON object (code 6 otherwise);
- `parse_netconf(data, command)`: the `calico` / `calico-ipam` plugin configuration,
  validated (code 7 naming the field and its value; the version check gives code 1):
  `cniVersion`, `name`, `type`, `etcd_endpoints` (or `etcd_authority`) and the TLS
  files `etcd_ca_cert_file` / `etcd_cert_file` / `etcd_key_file`, `log_level`,
  `log_file_path`, `mtu`, `nodename` (also `kubernetes.node_name`), `policy.type`,
  `ipam` (`type`; for calico-ipam `assign_ipv4`, `assign_ipv6`, `ipv4_pools`,
  `ipv6_pools`), `dns`, and what runtimes inject: `prevResult`, `runtimeConfig.ips`,
  `args` (Mesos `org.apache.mesos.network_info.labels`, CNI `cni.ips` / `cni.labels`),
  `cni.dev/valid-attachments` (GC). Unknown keys are left alone (CNI configs carry
  other tools' keys), apart from the runtime's;
- `Args`: CNI_ARGS as this plugin reads them (`IP`, `K8S_POD_NAMESPACE`,
  `K8S_POD_NAME`, `IgnoreUnknown`), validated (code 4);
- `Identity`: who the workload is, the same on ADD, CHECK, DEL and GC: orchestrator
  `k8s` with workload `NAMESPACE.NAME` when both K8S_POD_ args are given, else
  orchestrator `cni` with the container id; one endpoint per attachment (container
  id + interface name: `<container id>.<ifname>`), its host interface `cali` + 11 hex
  digits of a hash of that id (several networks in one container never collide), and
  the IPAM handle `<network>.<container id>.<ifname>`; the endpoint's labels;
- the address requests of an ADD (`address_requests`) and the node's name.

Leaves to others: the protocol's shapes (`cni.spec`), doing the work (`cni.calico`,
`cni.ipam`). No I/O here beyond reading the environment's HOSTNAME for the node name.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.spec import (
    DECODE_FAILURE,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    CniError,
    Env,
    check_version,
    shown,
)

DEFAULT_LOG_FILE = "/var/log/calico/cni/cni.log"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
POLICY_TYPES = ("network", "k8s-namespace")
CALICO_IPAM = "calico-ipam"
ORCHESTRATOR_K8S, ORCHESTRATOR_CNI = "k8s", "cni"
# Labels this plugin puts on every endpoint (selectors can match them).
LABEL_NETWORK = "projectcalico.org/network"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_NAMESPACE = "projectcalico.org/namespace"
NAMESPACE_PROFILE_PREFIX = "k8s_ns."
# CNI spec: a network name starts with a letter or digit, then letters, digits, _ . -
_NETWORK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
# Kubernetes object names (DNS-1123 subdomains).
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\Z")
_MTU_MIN, _MTU_MAX = 68, 65535


def load(raw: bytes) -> dict[str, Any]:
    """The network configuration from stdin: a JSON object, else code 6."""
    try:
        data = json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise CniError(DECODE_FAILURE, "cannot decode the network configuration",
                       str(exc)[:300]) from None
    if not isinstance(data, dict):
        raise CniError(DECODE_FAILURE, "the network configuration is not a JSON object",
                       str(data)[:200])
    return data


def _invalid(field_name: str, value: Any, reason: str) -> CniError:
    return CniError(INVALID_NETWORK_CONFIG, f"invalid {field_name} {shown(value)}: {reason}")


def _bool(field_name: str, value: Any, default: bool) -> bool:
    """A bool, or Calico's string form "true"/"false"."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _invalid(field_name, value, "must be true or false")


def _str(field_name: str, value: Any, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _invalid(field_name, value, "must be a non-empty string")
    return value


def _pools(field_name: str, value: Any, version: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid(field_name, value, "must be a list of CIDRs")
    out = []
    for item in value:
        try:
            net = ipaddress.ip_network(item, strict=True) if isinstance(item, str) else None
        except ValueError:
            net = None
        if net is None or net.version != version:
            raise _invalid(field_name, item, f"not an IPv{version} CIDR")
        out.append(str(net))
    return tuple(out)


@dataclass(frozen=True)
class IpamConf:
    type: str
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    ipv4_pools: tuple[str, ...] = ()
    ipv6_pools: tuple[str, ...] = ()

    @property
    def calico(self) -> bool:
        return self.type == CALICO_IPAM


def parse_ipam(data: Any) -> IpamConf:
    if not isinstance(data, Mapping):
        raise _invalid("ipam", data, "must be an object with a type")
    kind = _str("ipam.type", data.get("type"), required=True)
    assert kind is not None
    if kind != CALICO_IPAM:
        return IpamConf(kind)  # the delegated plugin validates its own section
    conf = IpamConf(kind, _bool("ipam.assign_ipv4", data.get("assign_ipv4"), True),
                    _bool("ipam.assign_ipv6", data.get("assign_ipv6"), False),
                    _pools("ipam.ipv4_pools", data.get("ipv4_pools"), 4),
                    _pools("ipam.ipv6_pools", data.get("ipv6_pools"), 6))
    return conf


@dataclass(frozen=True)
class NetConf:
    """One plugin's configuration (a conflist entry plus `name` and `cniVersion`)."""

    cni_version: str
    name: str
    type: str
    ipam: IpamConf | None
    etcd_endpoints: str | None = None
    etcd_authority: str | None = None
    etcd_ca_cert_file: str | None = None
    etcd_cert_file: str | None = None
    etcd_key_file: str | None = None
    log_level: str = "info"
    log_file_path: str = DEFAULT_LOG_FILE
    mtu: int | None = None
    nodename: str | None = None
    policy_type: str = "network"
    dns: Mapping[str, Any] = field(default_factory=dict)
    prev_result: Mapping[str, Any] | None = None
    arg_ips: tuple[str, ...] = ()  # runtimeConfig.ips and args.cni.ips
    arg_labels: Mapping[str, str] = field(default_factory=dict)  # Mesos / args.cni.labels
    valid_attachments: tuple[tuple[str, str], ...] | None = None  # GC: (container id, ifname)


def logging_settings(data: Mapping[str, Any]) -> tuple[str, str]:
    """(log_level, log_file_path) as far as they can be read: logging starts before the
    rest is validated, so a bad value here falls back to the default (and is reported
    by `parse_netconf`)."""
    level = data.get("log_level")
    path = data.get("log_file_path")
    return (level.lower() if isinstance(level, str) and level.lower() in LOG_LEVELS
            else "info",
            path if isinstance(path, str) and path.startswith("/") else DEFAULT_LOG_FILE)


def parse_netconf(data: Mapping[str, Any], command: str) -> NetConf:
    """Validate the configuration for `command`; `CniError` naming the first bad field."""
    version = check_version(data.get("cniVersion"), command)
    name = data.get("name")
    if not isinstance(name, str) or not _NETWORK_NAME_RE.match(name) or len(name) > 128:
        raise _invalid("name", name, "must start with a letter or digit, followed by "
                       "letters, digits, '_', '.' or '-' (at most 128)")
    kind = _str("type", data.get("type"), required=True)
    assert kind is not None
    ipam = parse_ipam(data["ipam"]) if data.get("ipam") is not None else None
    level = data.get("log_level", "info")
    if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
        raise _invalid("log_level", level, f"must be one of {', '.join(LOG_LEVELS)}")
    log_file = data.get("log_file_path", DEFAULT_LOG_FILE)
    if not isinstance(log_file, str) or not log_file.startswith("/"):
        raise _invalid("log_file_path", log_file, "must be an absolute path")
    mtu = data.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                            or not _MTU_MIN <= mtu <= _MTU_MAX):
        raise _invalid("mtu", mtu, f"must be an integer from {_MTU_MIN} to {_MTU_MAX}")
    kube = data.get("kubernetes")
    if kube is not None and not isinstance(kube, Mapping):
        raise _invalid("kubernetes", kube, "must be an object")
    nodename = _str("nodename", data.get("nodename"))
    if nodename is None and kube is not None:
        nodename = _str("kubernetes.node_name", kube.get("node_name"))
    if nodename is not None and (len(nodename) > 253 or "/" in nodename
                                 or any(c.isspace() for c in nodename)):
        raise _invalid("nodename", nodename, "must be a name without '/' or spaces")
    policy = data.get("policy")
    policy_type = "network"
    if policy is not None:
        if not isinstance(policy, Mapping):
            raise _invalid("policy", policy, "must be an object with a type")
        policy_type = policy.get("type", "network")
        if policy_type not in POLICY_TYPES:
            raise _invalid("policy.type", policy_type,
                           f"must be one of {', '.join(POLICY_TYPES)} (the Kubernetes API "
                           "policy drivers need an API server, which this plugin does not "
                           "talk to)")
    # Only a missing (or null) dns means none: "", 0, false or [] are of the wrong type.
    dns = data.get("dns")
    dns = {} if dns is None else dns
    if not isinstance(dns, Mapping):
        raise _invalid("dns", dns, "must be an object")
    prev = data.get("prevResult")
    if prev is not None and not isinstance(prev, Mapping):
        raise _invalid("prevResult", prev, "must be an object")
    endpoints = _str("etcd_endpoints", data.get("etcd_endpoints"))
    authority = _str("etcd_authority", data.get("etcd_authority"))
    return NetConf(version, name, kind, ipam, endpoints, authority,
                   etcd_ca_cert_file=_str("etcd_ca_cert_file", data.get("etcd_ca_cert_file")),
                   etcd_cert_file=_str("etcd_cert_file", data.get("etcd_cert_file")),
                   etcd_key_file=_str("etcd_key_file", data.get("etcd_key_file")),
                   log_level=level.lower(), log_file_path=log_file, mtu=mtu,
                   nodename=nodename, policy_type=policy_type, dns=dns, prev_result=prev,
                   arg_ips=_arg_ips(data), arg_labels=_arg_labels(data.get("args")),
                   valid_attachments=_attachments(data) if command == "GC" else None)


def _arg_ips(data: Mapping[str, Any]) -> tuple[str, ...]:
    """Addresses asked for through the `ips` capability or `args.cni.ips` (CIDR or
    address form)."""
    found: list[Any] = []
    runtime = data.get("runtimeConfig")
    if isinstance(runtime, Mapping) and runtime.get("ips") is not None:
        found += runtime["ips"] if isinstance(runtime["ips"], list) else [runtime["ips"]]
    args = data.get("args")
    cni_args = args.get("cni") if isinstance(args, Mapping) else None
    if isinstance(cni_args, Mapping) and cni_args.get("ips") is not None:
        found += cni_args["ips"] if isinstance(cni_args["ips"], list) else [cni_args["ips"]]
    out = []
    for item in found:
        try:
            out.append(str(ipaddress.ip_interface(item).ip) if isinstance(item, str) else "")
        except ValueError:
            out.append("")
        if not out[-1]:
            raise _invalid("runtimeConfig.ips", item, "not an IP address")
    return tuple(out)


def _label_list(field_name: str, items: Any) -> dict[str, str]:
    if not isinstance(items, list):
        raise _invalid(field_name, items, "must be a list of {key, value} objects")
    out = {}
    for item in items:
        if (not isinstance(item, Mapping) or not isinstance(item.get("key"), str)
                or not isinstance(item.get("value", ""), str)):
            raise _invalid(field_name, item, "must be a {key, value} object of strings")
        out[item["key"]] = item.get("value", "")
    return out


def _arg_labels(args: Any) -> dict[str, str]:
    """Labels from `args`: Mesos `org.apache.mesos.network_info.labels.labels` and the
    CNI convention `cni.labels` (both lists of {key, value})."""
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise _invalid("args", args, "must be an object")
    labels: dict[str, str] = {}
    mesos = args.get("org.apache.mesos")
    if mesos is not None:
        info = mesos.get("network_info") if isinstance(mesos, Mapping) else None
        holder = info.get("labels") if isinstance(info, Mapping) else None
        if holder is not None:
            items = holder.get("labels", []) if isinstance(holder, Mapping) else holder
            labels.update(_label_list("args.org.apache.mesos.network_info.labels", items))
    cni_args = args.get("cni")
    if isinstance(cni_args, Mapping) and cni_args.get("labels") is not None:
        labels.update(_label_list("args.cni.labels", cni_args["labels"]))
    from libcalico.errors import ValidationError
    from libcalico.model.validate import validate_labels

    try:
        return validate_labels("args labels", labels)
    except ValidationError as exc:
        raise _invalid(exc.field, exc.value, exc.reason) from None


def _attachments(data: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = data.get("cni.dev/valid-attachments", data.get("cni.dev/attachments"))
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid("cni.dev/valid-attachments", raw, "must be a list")
    out = []
    for item in raw:
        if (not isinstance(item, Mapping) or not isinstance(item.get("containerID"), str)
                or not isinstance(item.get("ifname"), str)):
            raise _invalid("cni.dev/valid-attachments", item,
                           "must be a {containerID, ifname} object")
        out.append((item["containerID"], item["ifname"]))
    return tuple(out)


# --- CNI_ARGS ------------------------------------------------------------------------------------

_KNOWN_ARGS = ("IgnoreUnknown", "IP", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
               "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID")


@dataclass(frozen=True)
class Args:
    ips: tuple[str, ...] = ()
    k8s_namespace: str | None = None
    k8s_pod: str | None = None


def _arg_error(name: str, value: str, reason: str) -> CniError:
    return CniError(INVALID_ENVIRONMENT, f"invalid CNI_ARGS {name} {shown(value)}: {reason}")


def parse_args(args: Mapping[str, str]) -> Args:
    """The CNI_ARGS this plugin reads. Unknown keys are an error unless IgnoreUnknown is
    set (as the reference plugins do)."""
    ignore = args.get("IgnoreUnknown", "").lower() in ("1", "true")
    for key in args:
        if key not in _KNOWN_ARGS and not ignore:
            raise _arg_error(shown(key), args[key], "unknown argument (set IgnoreUnknown=1 to "
                             "ignore it)")
    ips = []
    for text in filter(None, args.get("IP", "").split(",")):
        try:
            ips.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise _arg_error("IP", text, "not an IP address") from None
    namespace, pod = args.get("K8S_POD_NAMESPACE") or None, args.get("K8S_POD_NAME") or None
    if namespace is not None and pod is not None:
        for name, value in (("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", pod)):
            if len(value) > 253 or not _K8S_NAME_RE.match(value):
                raise _arg_error(name, value, "not a Kubernetes object name")
    return Args(tuple(ips), namespace, pod)


# --- identity ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who the workload of one attachment is, and the names derived from it."""

    orchestrator: str
    workload: str
    endpoint_id: str
    host_ifname: str
    handle: str
    labels: Mapping[str, str]
    k8s_namespace: str | None = None


def endpoint_id(container_id: str, ifname: str) -> str:
    return f"{container_id}.{ifname}"


def endpoint_handle(network: str, endpoint: str) -> str:
    """The IPAM handle of an attachment's addresses: `<network>.<endpoint id>`."""
    return f"{network}.{endpoint}"


def handle_id(network: str, container_id: str, ifname: str) -> str:
    return endpoint_handle(network, endpoint_id(container_id, ifname))


def host_ifname(container_id: str, ifname: str) -> str:
    digest = hashlib.sha1(endpoint_id(container_id, ifname).encode()).hexdigest()
    return f"cali{digest[:11]}"


def identity(conf: NetConf, env: Env, args: Args) -> Identity:
    labels = dict(conf.arg_labels)
    if args.k8s_namespace and args.k8s_pod:
        orchestrator, workload = ORCHESTRATOR_K8S, f"{args.k8s_namespace}.{args.k8s_pod}"
        labels[LABEL_NAMESPACE] = args.k8s_namespace
    else:
        orchestrator, workload = ORCHESTRATOR_CNI, env.container_id
    labels[LABEL_NETWORK] = conf.name
    labels[LABEL_ORCHESTRATOR] = orchestrator
    return Identity(orchestrator, workload, endpoint_id(env.container_id, env.ifname),
                    host_ifname(env.container_id, env.ifname),
                    handle_id(conf.name, env.container_id, env.ifname), labels,
                    args.k8s_namespace if orchestrator == ORCHESTRATOR_K8S else None)


def profile_for(conf: NetConf, ident: Identity) -> str:
    """The profile the workload's endpoint gets: the network's, or its namespace's."""
    if conf.policy_type == "k8s-namespace":
        if ident.k8s_namespace is None:
            raise CniError(INVALID_ENVIRONMENT, "policy type k8s-namespace needs "
                           "K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS")
        return NAMESPACE_PROFILE_PREFIX + ident.k8s_namespace
    return conf.name


def nodename(conf: NetConf, environ: Mapping[str, str] | None = None) -> str:
    """This node's name as calicoctl names it: the config's `nodename`, else $HOSTNAME,
    else the kernel's hostname."""
    environ = os.environ if environ is None else environ
    return conf.nodename or environ.get("HOSTNAME") or os.uname().nodename


def address_requests(conf: NetConf, args: Args) -> tuple[list[str], list[tuple[int, tuple]]]:
    """What calico-ipam assigns on ADD: ([explicit addresses], [(version, pools) to
    auto-assign]). An explicit address (CNI_ARGS IP=, runtimeConfig.ips, args.cni.ips)
    replaces auto-assignment of its version."""
    assert conf.ipam is not None
    explicit = list(dict.fromkeys([*args.ips, *conf.arg_ips]))
    versions = {ipaddress.ip_address(ip).version for ip in explicit}
    auto: list[tuple[int, tuple]] = []
    if conf.ipam.assign_ipv4 and 4 not in versions:
        auto.append((4, conf.ipam.ipv4_pools))
    if conf.ipam.assign_ipv6 and 6 not in versions:
        auto.append((6, conf.ipam.ipv6_pools))
    if not explicit and not auto:
        raise CniError(INVALID_NETWORK_CONFIG, "no address to assign: ipam.assign_ipv4 and "
                       "ipam.assign_ipv6 are both false and no IP was asked for")
    return explicit, auto
