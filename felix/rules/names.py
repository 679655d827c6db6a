"""Names of felix's chains, ipsets and mark bits, kept within the kernel's limits.

Owns: `uniquely_shorten` (Felix 1.x `futils.uniquely_shorten`: a name that is too long
becomes `_` + a truncated SHA-256 of "<len> <name>", so distinct names stay distinct),
every chain and ipset name felix uses (chains fit 28 characters, ipsets 31), and the
allocation of felix's mark bits inside IptablesMarkMask.

Leaves to others: what the chains contain (the other `felix.rules` modules) and when
they exist (`felix.calc`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from felix.dataplane.types import MAX_CHAIN_NAME

MAX_ID_LEN = 16
SHORTENED_PREFIX = "_"

CHAIN_INPUT = "felix-INPUT"
CHAIN_FORWARD = "felix-FORWARD"
CHAIN_OUTPUT = "felix-OUTPUT"
CHAIN_FROM_ENDPOINT = "felix-FROM-ENDPOINT"
CHAIN_TO_ENDPOINT = "felix-TO-ENDPOINT"
CHAIN_FROM_EP_PFX = "felix-FROM-EP-"
CHAIN_TO_EP_PFX = "felix-TO-EP-"
CHAIN_FROM_HOST_IF = "felix-FROM-HOST-IF"
CHAIN_TO_HOST_IF = "felix-TO-HOST-IF"
CHAIN_FROM_HOST_IF_FWD = "felix-FROM-HOST-IF-FWD"
CHAIN_TO_HOST_IF_FWD = "felix-TO-HOST-IF-FWD"
CHAIN_FAILSAFE_IN = "felix-FAILSAFE-IN"
CHAIN_FAILSAFE_OUT = "felix-FAILSAFE-OUT"
CHAIN_NAT_POSTROUTING = "felix-POSTROUTING"

IPSET_MASQ_POOLS = "felix-masq-ipam-pools"
IPSET_ALL_POOLS = "felix-all-ipam-pools"
# The IPv4 addresses of every node in the cluster (hash:ip), while an encapsulated pool
# exists: the hosts whose VXLAN / IP-in-IP packets pass before host endpoint policy.
IPSET_ALL_HOSTS = "felix-all-hosts"


def uniquely_shorten(name: str, length: int) -> str:
    """`name` if it fits in `length` (and cannot be mistaken for a shortened name),
    else `_` followed by a hash prefix, `length` characters in all."""
    if len(name) < length or (len(name) == length and not name.startswith(SHORTENED_PREFIX)):
        return name
    digest = hashlib.sha256(f"{len(name)} {name}".encode()).hexdigest()
    return SHORTENED_PREFIX + digest[:length - len(SHORTENED_PREFIX)]


def interface_suffix(ifname: str, prefixes: Sequence[str]) -> str:
    """The interface name without its workload prefix (the longest that matches)."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if ifname.startswith(prefix) and len(ifname) > len(prefix):
            return ifname[len(prefix):]
    return ifname


def from_endpoint_chain(suffix: str) -> str:
    return "felix-from-" + uniquely_shorten(suffix, MAX_ID_LEN)


def to_endpoint_chain(suffix: str) -> str:
    return "felix-to-" + uniquely_shorten(suffix, MAX_ID_LEN)


def from_host_endpoint_chain(ifname: str) -> str:
    return "felix-hfrom-" + uniquely_shorten(ifname, MAX_ID_LEN)


def to_host_endpoint_chain(ifname: str) -> str:
    return "felix-hto-" + uniquely_shorten(ifname, MAX_ID_LEN)


def profile_chain(profile_id: str, inbound: bool) -> str:
    """`felix-p-<id>-i` / `-o` for a profile."""
    return f"felix-p-{uniquely_shorten(profile_id, MAX_ID_LEN)}-{'i' if inbound else 'o'}"


def policy_chain(tier: str, policy: str, inbound: bool) -> str:
    """`felix-p-<tier>/<policy>-i` / `-o` (profile names cannot contain '/')."""
    return profile_chain(f"{tier}/{policy}", inbound)


def dispatch_chain(root: str, prefix: str) -> str:
    """Second-level dispatch chain for interfaces starting with `prefix`."""
    base = CHAIN_FROM_EP_PFX if root == CHAIN_FROM_ENDPOINT else CHAIN_TO_EP_PFX
    return base + uniquely_shorten(prefix, MAX_CHAIN_NAME - len(base))


def tag_ipset(tag: str, version: int) -> str:
    return f"felix-v{version}-{uniquely_shorten(tag, MAX_ID_LEN)}"


def selector_ipset(selector_id: str, version: int) -> str:
    """Selector sets: `s:` + the selector's unique id cut to fit (tags have no ':')."""
    return f"felix-v{version}-s:{selector_id[:MAX_ID_LEN - 2]}"


@dataclass(frozen=True)
class Marks:
    """Felix's mark bits, the lowest three bits of IptablesMarkMask.

    `accept`: a policy or profile allowed the packet (the caller returns/accepts);
    `pass`: a policy said next-tier; `scratch`: anti-spoofing "source is ours".
    """

    accept: int
    pass_: int
    scratch: int

    @classmethod
    def from_mask(cls, mask: int) -> Marks:
        bits = [1 << i for i in range(32) if mask & (1 << i)]
        if len(bits) < 3:
            raise ValueError(f"IptablesMarkMask {mask:#x} needs at least 3 bits")
        return cls(bits[0], bits[1], bits[2])

    @property
    def all(self) -> int:
        return self.accept | self.pass_ | self.scratch


def mark_match(bits: int, value: int | None = None, negate: bool = False) -> str:
    """`-m mark --mark VALUE/BITS` (VALUE defaults to BITS: "all these bits set")."""
    value = bits if value is None else value
    bang = "! " if negate else ""
    return f"-m mark {bang}--mark {value:#x}/{bits:#x}"


def set_mark(bits: int, value: int | None = None) -> str:
    value = bits if value is None else value
    return f"-j MARK --set-xmark {value:#x}/{bits:#x}"
