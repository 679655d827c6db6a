"""The CNI protocol, as pure values: versions, the environment, CNI_ARGS, results and
errors in the shape each spec version defines.

Owns:
- the spec versions this plugin speaks (0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0) and which
  commands each allows (CHECK from 0.4.0; GC and STATUS from 1.1.0);
- `CniError(code, msg, details)` and the error codes: the spec's (1 incompatible
  version, 2 unsupported field, 3 unknown container, 4 invalid environment variables,
  5 I/O failure, 6 decode failure, 7 invalid network config, 11 try again later, 50/51
  plugin not available) and this plugin's own (100 and up, below);
- `parse_env`: the CNI_* variables each command needs, validated (code 4 naming the
  variable and its value); `parse_cni_args`: `K=V;K2=V2`;
- rendering: the ADD result (`render_result`: 0.3.x and 0.4.0 give each IP a
  `version`, 1.x do not; 1.1.0 may carry an interface `mtu`), the error object (the
  VERSION answer is `cni.versions`', kept import-free); reading a result of any of
  these versions (`result_ips`), e.g. a delegated IPAM plugin's or a prevResult.

Leaves to others: what the plugins do (`cni.calico`, `cni.ipam`), reading stdin and
writing stdout (`cni.main`), network configuration (`cni.config`). No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.versions import LATEST, SUPPORTED_VERSIONS, version_answer  # noqa: F401 - re-exported

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# The first version that has each command (others: every supported version).
_SINCE = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# --- error codes -------------------------------------------------------------------------------
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50  # STATUS: cannot serve ADD now
NOT_AVAILABLE_DISRUPTED = 51  # STATUS: and existing workloads may be affected
# This plugin's own (100+, the range the spec leaves to plugins):
PLUGIN_FAILURE = 100  # anything else (netlink, datastore errors other than unreachable)
ADDRESSES_EXHAUSTED = 101  # no address left in the pools the config allows
ADDRESS_IN_USE = 102  # the address asked for (CNI_ARGS IP=) belongs to another workload
ALREADY_EXISTS = 103  # ADD for an attachment that exists already
CHECK_FAILED = 104  # CHECK: the workload differs from its endpoint (details say how)
DELEGATE_FAILED = 105  # a delegated IPAM plugin failed without a CNI error of its own

# The endpoint id `<container id>.<ifname>` must fit a Calico name (128 characters).
CONTAINER_ID_MAX = 112
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")


class CniError(Exception):
    """A failure reported to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def check_version(version: Any, command: str) -> str:
    """The config's `cniVersion` if this plugin speaks it and it allows `command`."""
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI version {shown(version)}",
                       f"this plugin supports {', '.join(SUPPORTED_VERSIONS)}")
    since = _SINCE.get(command)
    if since is not None and version_key(version) < version_key(since):
        raise CniError(INCOMPATIBLE_VERSION,
                       f"config version {version} does not allow {command}",
                       f"{command} needs cniVersion {since} or later")
    return version


# --- the environment ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    """The CNI_* variables of one call, validated for its command."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: str = ""
    path: tuple[str, ...] = ()


_SHOWN = 60  # characters of a bad value quoted in an error


def shown(value: Any) -> str:
    """A bad value as an error quotes it: repr (one line), at most ~60 characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _env_error(name: str, value: Any, reason: str) -> CniError:
    return CniError(INVALID_ENVIRONMENT, f"invalid {name} {shown(value)}: {reason}")


def parse_env(environ: Mapping[str, str]) -> Env:
    """The call's environment; `CniError` (code 4) naming a missing or bad variable."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise _env_error("CNI_COMMAND", command, f"must be one of {', '.join(COMMANDS)}")
    path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
    if command in ("VERSION", "GC", "STATUS"):
        return Env(command, path=path, args=environ.get("CNI_ARGS", ""))
    cid = environ.get("CNI_CONTAINERID", "")
    if not _CONTAINER_ID_RE.match(cid) or len(cid) > CONTAINER_ID_MAX:
        raise _env_error("CNI_CONTAINERID", cid, "must start with a letter or digit, "
                         "followed by letters, digits, '_', '.' or '-' "
                         f"(at most {CONTAINER_ID_MAX})")
    from libcalico.model.validate import INTERFACE_RE  # the workload layer's rule

    ifname = environ.get("CNI_IFNAME", "")
    if not INTERFACE_RE.match(ifname) or ifname in (".", ".."):
        raise _env_error("CNI_IFNAME", ifname, "must be an interface name (1-15 letters, "
                         "digits, '_', '.' or '-')")
    netns = environ.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise _env_error("CNI_NETNS", netns, f"{command} needs the container's namespace")
    if netns and not netns.startswith("/"):
        raise _env_error("CNI_NETNS", netns, "must be an absolute path")
    return Env(command, cid, netns, ifname, environ.get("CNI_ARGS", ""), path)


def parse_cni_args(text: str) -> dict[str, str]:
    """`K=V;K2=V2` as a dict (code 4 for a pair without `=` or a repeated key)."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _env_error("CNI_ARGS", text, f"{shown(pair)} is not KEY=VALUE")
        if key in out:
            raise _env_error("CNI_ARGS", text, f"{shown(key)} given twice")
        out[key] = value
    return out


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str | None = None
    sandbox: str | None = None
    mtu: int | None = None


@dataclass(frozen=True)
class IPConfig:
    address: str  # CIDR form: "198.18.0.5/32"
    gateway: str | None = None
    interface: int | None = None  # index into the result's interfaces

    @property
    def version(self) -> str:
        return "6" if ":" in self.address else "4"


@dataclass(frozen=True)
class RouteConfig:
    dst: str
    gw: str | None = None


@dataclass(frozen=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    dns: Mapping[str, Any] = field(default_factory=dict)


def render_result(version: str, result: Result) -> dict[str, Any]:
    """The result object of `version` (0.3.x/0.4.0 IPs carry `version`; 1.x do not)."""
    old = version_key(version) < (1, 0, 0)
    out: dict[str, Any] = {"cniVersion": version}
    if result.interfaces:
        ifaces = []
        for i in result.interfaces:
            d: dict[str, Any] = {"name": i.name}
            if i.mac:
                d["mac"] = i.mac
            if i.sandbox is not None:
                d["sandbox"] = i.sandbox
            if i.mtu is not None and version_key(version) >= (1, 1, 0):
                d["mtu"] = i.mtu
            ifaces.append(d)
        out["interfaces"] = ifaces
    ips = []
    for ip in result.ips:
        d = {"version": ip.version} if old else {}
        d["address"] = ip.address
        if ip.gateway:
            d["gateway"] = ip.gateway
        if ip.interface is not None:
            d["interface"] = ip.interface
        ips.append(d)
    out["ips"] = ips
    if result.routes:
        out["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})}
                         for r in result.routes]
    out["dns"] = dict(result.dns)
    return out


def render_error(version: str, err: CniError) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        out["details"] = err.details
    return out


def result_ips(result: Mapping[str, Any], what: str = "result") -> list[str]:
    """The addresses (no prefix length) of a result of any supported version, e.g. a
    delegated IPAM plugin's or a prevResult. `CniError` (code 6) if it has no such
    shape (an 0.1/0.2 `ip4`/`ip6` result counts too)."""
    try:
        if "ips" in result:
            return [str(ip["address"]).split("/")[0] for ip in result["ips"] or []]
        legacy = [result[k]["ip"] for k in ("ip4", "ip6") if result.get(k)]
        return [str(a).split("/")[0] for a in legacy]
    except (TypeError, KeyError, AttributeError):
        raise CniError(DECODE_FAILURE, f"cannot read the addresses of the {what}",
                       str(result)[:300]) from None

