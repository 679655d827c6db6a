"""The etcd keyspace: every key this project reads or writes is built and parsed here.

Owns: the layout of the datastore (Calico's v1 layout, so operators recognise it), the
builder functions for every key and `parse_key`, which turns a key back into a typed
value naming what it refers to. Nothing else in the project spells a key prefix.

Leaves to others: what the values hold (`libcalico.model`), how they are read and
written (`libcalico.datastore`). The layout is documented in docs/datastore.md; keep the
two in step.

Layout version: the `v1` (policy, endpoints, config), `bgp/v1`, `ipam/v2` and `felix/v1`
trees below `/calico`. A change of layout gets a new version segment, never an in-place
rewrite.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from libcalico.errors import ValidationError

ROOT = "/calico"
V1 = f"{ROOT}/v1"
BGP = f"{ROOT}/bgp/v1"
IPAM = f"{ROOT}/ipam/v2"
FELIX = f"{ROOT}/felix/v1"
LIBNETWORK = f"{ROOT}/libnetwork/v1"

# Top-level prefixes that the daemons follow with a syncer.
V1_DIR = f"{V1}/"  # config, hosts (endpoints), policy, pools and the Ready flag
READY_KEY = f"{V1}/Ready"
CONFIG_DIR = f"{V1}/config/"
HOST_DIR = f"{V1}/host/"
POLICY_DIR = f"{V1}/policy/"
PROFILE_DIR = f"{V1}/policy/profile/"
TIER_DIR = f"{V1}/policy/tier/"
POOL_DIR = f"{V1}/ipam/"
BGP_DIR = f"{BGP}/"
BGP_GLOBAL_DIR = f"{BGP}/global/"
BGP_HOST_DIR = f"{BGP}/host/"
IPAM_DIR = f"{IPAM}/"
IPAM_CONFIG_KEY = f"{IPAM}/config"
BLOCK_DIR = f"{IPAM}/assignment/"
HANDLE_DIR = f"{IPAM}/handle/"
AFFINITY_DIR = f"{IPAM}/host/"
FELIX_STATUS_DIR = f"{FELIX}/host/"

_SEGMENT = re.compile(r"^[^/\s]+\Z")


def _seg(field: str, value: str) -> str:
    """Check that `value` can stand as one path segment of a key."""
    if not isinstance(value, str) or not _SEGMENT.match(value) or value in (".", ".."):
        raise ValidationError(field, value, "must be a non-empty name without '/' or spaces")
    return value


def _ipv(version: int) -> str:
    if version not in (4, 6):
        raise ValidationError("ip version", version, "must be 4 or 6")
    return f"ipv{version}"


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("cidr", cidr, "must be an IPv4 or IPv6 CIDR") from exc


def cidr_to_segment(cidr: str) -> str:
    """`198.18.0.0/26` -> `198.18.0.0-26`, as Calico v1 stores CIDRs in keys."""
    net = _network(cidr)
    return f"{net.network_address}-{net.prefixlen}"


def segment_to_cidr(segment: str) -> str:
    """Inverse of `cidr_to_segment`."""
    addr, _, plen = segment.rpartition("-")
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


def _version_of(cidr: str) -> int:
    return _network(cidr).version


# --- felix configuration -------------------------------------------------------------

def global_config_key(name: str) -> str:
    return f"{CONFIG_DIR}{_seg('config name', name)}"


def host_config_dir(hostname: str) -> str:
    return f"{HOST_DIR}{_seg('hostname', hostname)}/config/"


def host_config_key(hostname: str, name: str) -> str:
    return f"{host_config_dir(hostname)}{_seg('config name', name)}"


# --- hosts and endpoints ---------------------------------------------------------------

def host_dir(hostname: str) -> str:
    return f"{HOST_DIR}{_seg('hostname', hostname)}/"


def host_bird_ip_key(hostname: str) -> str:
    return f"{host_dir(hostname)}bird_ip"


def host_workload_dir(hostname: str) -> str:
    return f"{host_dir(hostname)}workload/"


def workload_endpoint_key(hostname: str, orchestrator: str, workload: str,
                          endpoint_id: str) -> str:
    return (f"{host_workload_dir(hostname)}{_seg('orchestrator', orchestrator)}/"
            f"{_seg('workload', workload)}/endpoint/{_seg('endpoint id', endpoint_id)}")


def workload_dir(hostname: str, orchestrator: str, workload: str) -> str:
    return (f"{host_workload_dir(hostname)}{_seg('orchestrator', orchestrator)}/"
            f"{_seg('workload', workload)}/")


def host_endpoint_key(hostname: str, endpoint_id: str) -> str:
    return f"{host_dir(hostname)}endpoint/{_seg('endpoint id', endpoint_id)}"


# --- policy ------------------------------------------------------------------------------

PROFILE_PARTS = ("rules", "tags", "labels")


def profile_dir(name: str) -> str:
    return f"{PROFILE_DIR}{_seg('profile', name)}/"


def profile_key(name: str, part: str) -> str:
    if part not in PROFILE_PARTS:
        raise ValidationError("profile part", part, f"must be one of {PROFILE_PARTS}")
    return f"{profile_dir(name)}{part}"


def tier_dir(tier: str) -> str:
    return f"{TIER_DIR}{_seg('tier', tier)}/"


def tier_metadata_key(tier: str) -> str:
    return f"{tier_dir(tier)}metadata"


def policy_key(tier: str, name: str) -> str:
    return f"{tier_dir(tier)}policy/{_seg('policy', name)}"


# --- pools -----------------------------------------------------------------------------

def pool_dir(version: int) -> str:
    return f"{POOL_DIR}v{_ipv(version)[-1]}/pool/"


def pool_key(cidr: str) -> str:
    return f"{pool_dir(_version_of(cidr))}{cidr_to_segment(cidr)}"


# --- BGP -------------------------------------------------------------------------------

BGP_GLOBAL_AS_KEY = f"{BGP_GLOBAL_DIR}as_num"
BGP_GLOBAL_MESH_KEY = f"{BGP_GLOBAL_DIR}node_mesh"
BGP_GLOBAL_LOGLEVEL_KEY = f"{BGP_GLOBAL_DIR}loglevel"
# A node's fields, one key each (`libcalico.model.network.NODE_KEYS` maps them onto the
# Node's attributes): its BGP identity, the subnet of its IPv4 address (`network_v4`, for
# cross-subnet encapsulation) and the tunnel endpoints it records itself.
BGP_HOST_FIELDS = ("ip_addr_v4", "ip_addr_v6", "as_num", "loglevel", "rr_cluster_id",
                   "network_v4", "vxlan_tunnel_addr_v4", "vxlan_tunnel_mac",
                   "ipip_tunnel_addr_v4")


def bgp_global_key(name: str) -> str:
    return f"{BGP_GLOBAL_DIR}{_seg('bgp setting', name)}"


def bgp_host_dir(hostname: str) -> str:
    return f"{BGP_HOST_DIR}{_seg('hostname', hostname)}/"


def bgp_host_key(hostname: str, name: str) -> str:
    return f"{bgp_host_dir(hostname)}{_seg('bgp setting', name)}"


def bgp_peer_dir(version: int, hostname: str | None = None) -> str:
    base = BGP_GLOBAL_DIR if hostname is None else bgp_host_dir(hostname)
    return f"{base}peer_v{_ipv(version)[-1]}/"


def bgp_peer_key(ip: str, hostname: str | None = None) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except (TypeError, ValueError) as exc:
        raise ValidationError("ip", ip, "must be an IPv4 or IPv6 address") from exc
    return f"{bgp_peer_dir(addr.version, hostname)}{addr}"


def custom_filter_key(version: int, name: str) -> str:
    return f"{BGP_GLOBAL_DIR}custom_filters/v{_ipv(version)[-1]}/{_seg('filter name', name)}"


# --- IPAM ------------------------------------------------------------------------------

def block_dir(version: int) -> str:
    return f"{BLOCK_DIR}{_ipv(version)}/block/"


def block_key(cidr: str) -> str:
    return f"{block_dir(_version_of(cidr))}{cidr_to_segment(cidr)}"


def handle_key(handle_id: str) -> str:
    return f"{HANDLE_DIR}{_seg('handle', handle_id)}"


def affinity_dir(hostname: str, version: int | None = None) -> str:
    base = f"{AFFINITY_DIR}{_seg('hostname', hostname)}/"
    return base if version is None else f"{base}{_ipv(version)}/block/"


def affinity_key(hostname: str, cidr: str) -> str:
    return f"{affinity_dir(hostname, _version_of(cidr))}{cidr_to_segment(cidr)}"


# --- felix status ------------------------------------------------------------------------

def felix_status_dir(hostname: str) -> str:
    return f"{FELIX_STATUS_DIR}{_seg('hostname', hostname)}/"


def felix_status_key(hostname: str) -> str:
    return f"{felix_status_dir(hostname)}status"


def felix_last_status_key(hostname: str) -> str:
    return f"{felix_status_dir(hostname)}last_reported_status"


def endpoint_status_key(hostname: str, orchestrator: str, workload: str,
                        endpoint_id: str) -> str:
    return (f"{felix_status_dir(hostname)}workload/{_seg('orchestrator', orchestrator)}/"
            f"{_seg('workload', workload)}/endpoint/{_seg('endpoint id', endpoint_id)}")


# --- Docker libnetwork -------------------------------------------------------------------

def libnetwork_network_key(network_id: str) -> str:
    """The Docker driver's record of one network (one engine's network id)."""
    return f"{LIBNETWORK}/{_seg('network id', network_id)}"


def libnetwork_endpoint_dir(hostname: str) -> str:
    return f"{LIBNETWORK}/host/{_seg('hostname', hostname)}/endpoint/"


def libnetwork_endpoint_key(hostname: str, endpoint_id: str) -> str:
    """The Docker driver's record of one endpoint on a host (its sandbox, its role)."""
    return f"{libnetwork_endpoint_dir(hostname)}{_seg('endpoint id', endpoint_id)}"


def libnetwork_profile_key(profile: str) -> str:
    """Present while the Docker driver owns (created) the profile of that name."""
    return f"{LIBNETWORK}/profile/{_seg('profile', profile)}"


# --- parsing ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReadyKey:
    pass


@dataclass(frozen=True)
class GlobalConfigKey:
    name: str


@dataclass(frozen=True)
class HostConfigKey:
    hostname: str
    name: str


@dataclass(frozen=True)
class HostBirdIPKey:
    hostname: str


@dataclass(frozen=True)
class WorkloadEndpointKey:
    hostname: str
    orchestrator: str
    workload: str
    endpoint_id: str


@dataclass(frozen=True)
class HostEndpointKey:
    hostname: str
    endpoint_id: str


@dataclass(frozen=True)
class ProfileKey:
    name: str
    part: str  # one of PROFILE_PARTS


@dataclass(frozen=True)
class TierKey:
    tier: str


@dataclass(frozen=True)
class PolicyKey:
    tier: str
    name: str


@dataclass(frozen=True)
class PoolKey:
    cidr: str


@dataclass(frozen=True)
class BGPGlobalKey:
    name: str  # as_num, node_mesh, loglevel


@dataclass(frozen=True)
class BGPHostKey:
    hostname: str
    name: str  # one of BGP_HOST_FIELDS


@dataclass(frozen=True)
class BGPPeerKey:
    hostname: str | None  # None: a global peer
    ip: str


@dataclass(frozen=True)
class CustomFilterKey:
    version: int
    name: str


@dataclass(frozen=True)
class IPAMConfigKey:
    pass


@dataclass(frozen=True)
class BlockKey:
    cidr: str


@dataclass(frozen=True)
class HandleKey:
    handle_id: str


@dataclass(frozen=True)
class AffinityKey:
    hostname: str
    cidr: str


@dataclass(frozen=True)
class FelixStatusKey:
    hostname: str
    last: bool  # True for last_reported_status (no lease)


@dataclass(frozen=True)
class EndpointStatusKey:
    hostname: str
    orchestrator: str
    workload: str
    endpoint_id: str


@dataclass(frozen=True)
class LibnetworkNetworkKey:
    network_id: str


@dataclass(frozen=True)
class LibnetworkEndpointKey:
    hostname: str
    endpoint_id: str


@dataclass(frozen=True)
class LibnetworkProfileKey:
    profile: str


ParsedKey = (ReadyKey | GlobalConfigKey | HostConfigKey | HostBirdIPKey | WorkloadEndpointKey
             | HostEndpointKey | ProfileKey | TierKey | PolicyKey | PoolKey | BGPGlobalKey
             | BGPHostKey | BGPPeerKey | CustomFilterKey | IPAMConfigKey | BlockKey
             | HandleKey | AffinityKey | FelixStatusKey | EndpointStatusKey
             | LibnetworkNetworkKey | LibnetworkEndpointKey | LibnetworkProfileKey)

_S = r"([^/]+)"
_CIDR = r"([0-9a-fA-F:.]+-[0-9]+)"
# (pattern, builder); each pattern is compiled the first time a key gets that far down the
# list, so a short-lived program (a CNI plugin call) compiles only those it needs.
_PATTERNS: list[tuple[str, object]] = [
    (rf"^{V1}/Ready$", lambda m: ReadyKey()),
    (rf"^{V1}/config/{_S}$", lambda m: GlobalConfigKey(m[1])),
    (rf"^{V1}/host/{_S}/config/{_S}$", lambda m: HostConfigKey(m[1], m[2])),
    (rf"^{V1}/host/{_S}/bird_ip$", lambda m: HostBirdIPKey(m[1])),
    (rf"^{V1}/host/{_S}/workload/{_S}/{_S}/endpoint/{_S}$",
     lambda m: WorkloadEndpointKey(m[1], m[2], m[3], m[4])),
    (rf"^{V1}/host/{_S}/endpoint/{_S}$", lambda m: HostEndpointKey(m[1], m[2])),
    (rf"^{V1}/policy/profile/{_S}/(rules|tags|labels)$",
     lambda m: ProfileKey(m[1], m[2])),
    (rf"^{V1}/policy/tier/{_S}/metadata$", lambda m: TierKey(m[1])),
    (rf"^{V1}/policy/tier/{_S}/policy/{_S}$", lambda m: PolicyKey(m[1], m[2])),
    (rf"^{V1}/ipam/v[46]/pool/{_CIDR}$", lambda m: PoolKey(segment_to_cidr(m[1]))),
    (rf"^{BGP}/global/(as_num|node_mesh|loglevel)$", lambda m: BGPGlobalKey(m[1])),
    (rf"^{BGP}/global/peer_v[46]/{_S}$", lambda m: BGPPeerKey(None, m[1])),
    (rf"^{BGP}/global/custom_filters/v([46])/{_S}$",
     lambda m: CustomFilterKey(int(m[1]), m[2])),
    (rf"^{BGP}/host/{_S}/({'|'.join(BGP_HOST_FIELDS)})$",
     lambda m: BGPHostKey(m[1], m[2])),
    (rf"^{BGP}/host/{_S}/peer_v[46]/{_S}$", lambda m: BGPPeerKey(m[1], m[2])),
    (rf"^{IPAM}/config$", lambda m: IPAMConfigKey()),
    (rf"^{IPAM}/assignment/ipv[46]/block/{_CIDR}$",
     lambda m: BlockKey(segment_to_cidr(m[1]))),
    (rf"^{IPAM}/handle/{_S}$", lambda m: HandleKey(m[1])),
    (rf"^{IPAM}/host/{_S}/ipv[46]/block/{_CIDR}$",
     lambda m: AffinityKey(m[1], segment_to_cidr(m[2]))),
    (rf"^{FELIX}/host/{_S}/(status|last_reported_status)$",
     lambda m: FelixStatusKey(m[1], m[2] == "last_reported_status")),
    (rf"^{FELIX}/host/{_S}/workload/{_S}/{_S}/endpoint/{_S}$",
     lambda m: EndpointStatusKey(m[1], m[2], m[3], m[4])),
    (rf"^{LIBNETWORK}/{_S}$", lambda m: LibnetworkNetworkKey(m[1])),
    (rf"^{LIBNETWORK}/host/{_S}/endpoint/{_S}$",
     lambda m: LibnetworkEndpointKey(m[1], m[2])),
    (rf"^{LIBNETWORK}/profile/{_S}$", lambda m: LibnetworkProfileKey(m[1])),
]


_compiled: list[re.Pattern[str] | None] = [None] * len(_PATTERNS)


def _literal_prefix(source: str) -> str:
    """The plain text a pattern starts with (after `^`), up to its first regex syntax."""
    out = []
    for ch in source[1:]:
        if ch in "([.\\^$*+?{|":
            break
        out.append(ch)
    return "".join(out)


# A key is tried only against the patterns whose literal start it has, so a pattern is
# compiled only when a key of its kind turns up.
_PREFIXES = [_literal_prefix(source) for source, _ in _PATTERNS]


def _compile(index: int, source: str) -> re.Pattern[str]:
    pattern = _compiled[index] = re.compile(source)  # idempotent: safe across threads
    return pattern


def parse_key(key: str) -> ParsedKey | None:
    """Turn a key back into what it names; None for a key outside the layout."""
    for i, (source, build) in enumerate(_PATTERNS):
        if not key.startswith(_PREFIXES[i]):
            continue
        pattern = _compiled[i] or _compile(i, source)
        m = pattern.match(key)
        if m:
            try:
                return build(m)  # type: ignore[operator]
            except ValueError:
                return None
    return None
