"""Validators: the checks and canonical forms that resources share, public for every
layer that validates user input into model values (calicoctl, the workload plumbing,
the Docker and CNI adapters).

Owns: names (`validate_name`), ids that become key segments (`validate_id`), Linux
interface names, CIDRs and addresses in canonical form (`canonical_net`,
`canonical_address`), MACs, labels, booleans, bounded integers, lists and mappings,
policy order, and the strict "no unknown keys" check. Every check raises
`ValidationError(field, value, reason)` naming the field and the value; nothing here
does I/O.

Leaves to others: each resource's own fields (`rules`, `policy`, `endpoints`,
`network`), the resource document shape (`base`), the kind registry (`resources`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from libcalico.errors import ValidationError
from libcalico.model.selector import LABEL_NAME_RE

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+\Z")
# What iptables (`-i NAME`, where a trailing '+' is a wildcard and quotes are syntax) and
# the kernel (15 bytes) both take safely; Calico's own interface-name rule.
INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
NAME_MAX = 128
_SEGMENT_RE = re.compile(r"^[^/\s]+\Z")
_MAC_RE = re.compile(
    r"^(?:[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}"  # aa:bb:.. or aa-bb-..
    r"|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}"  # aabb.ccdd.eeff
    r"|[0-9a-f]{12})\Z"  # aabbccddeeff
)


def validate_name(field: str, value: Any, max_len: int = NAME_MAX) -> str:
    """A profile, tier, policy or tag name: `[A-Za-z0-9_.-]+`, at most `max_len` long."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(field, value, "must be letters, digits, '_', '.' or '-'")
    if len(value) > max_len:
        raise ValidationError(field, value, f"must be at most {max_len} characters")
    return value


def validate_id(field: str, value: Any) -> str:
    """A hostname, orchestrator, workload or endpoint id: one etcd key segment, printable
    (it ends up in keys, logs and BIRD's configuration comments)."""
    if (not isinstance(value, str) or not _SEGMENT_RE.match(value)
            or value in (".", "..") or len(value) > 253 or not value.isprintable()):
        raise ValidationError(field, value, "must be a non-empty printable name without "
                                            "'/' or spaces")
    return value


def validate_interface(field: str, value: Any) -> str:
    """A Linux interface name as iptables can match it: 1 to 15 of letters, digits, '_',
    '.' and '-' (no '+', the iptables wildcard; no quotes; no multi-byte characters)."""
    if not isinstance(value, str) or not INTERFACE_RE.match(value) or value in (".", ".."):
        raise ValidationError(field, value, "must be a Linux interface name (1-15 letters, "
                                            "digits, '_', '.' or '-')")
    return value


def canonical_net(field: str, value: Any, version: int | None = None,
                  strict: bool = False) -> str:
    """A CIDR in canonical form; a bare address becomes a /32 or /128.

    With `strict`, host bits set is an error; otherwise they are masked off.
    """
    if not isinstance(value, str):
        raise ValidationError(field, value, "must be a CIDR string")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(field, value, "not a valid CIDR") from None
    if strict and net.network_address != ipaddress.ip_interface(value).ip:
        raise ValidationError(field, value, f"has host bits set (the network is {net})")
    if version is not None and net.version != version:
        raise ValidationError(field, value, f"must be an IPv{version} CIDR")
    return str(net)


def canonical_address(field: str, value: Any, version: int | None = None) -> str:
    """An IP address in canonical (compressed, lowercase) form."""
    if not isinstance(value, str):
        raise ValidationError(field, value, "must be an IP address string")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError(field, value, "not a valid IP address") from None
    if version is not None and addr.version != version:
        raise ValidationError(field, value, f"must be an IPv{version} address")
    return str(addr)


def canonical_mac(field: str, value: Any) -> str:
    """A MAC address as lowercase colon-separated octets (`aa:bb:cc:dd:ee:ff`)."""
    if not isinstance(value, str) or not _MAC_RE.match(value.lower()):
        raise ValidationError(field, value, "not a valid MAC address")
    digits = re.sub(r"[^0-9a-f]", "", value.lower())
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def validate_labels(field: str, value: Any) -> dict[str, str]:
    """A label dict: keys as selectors name them, string values; returned key-sorted."""
    if not isinstance(value, Mapping):
        raise ValidationError(field, value, "must be a mapping of label names to strings")
    out: dict[str, str] = {}
    for key in sorted(value, key=str):
        if not isinstance(key, str) or not LABEL_NAME_RE.match(key) or len(key) > 253:
            raise ValidationError(f"{field} key", key,
                                  "must be letters, digits, '_', '.', '-' or '/'")
        val = value[key]
        if not isinstance(val, str):
            raise ValidationError(f"{field}[{key}]", val, "must be a string")
        out[key] = val
    return out


def is_decimal(text: str) -> bool:
    """Whether `text` is a non-empty run of ASCII digits. `str.isdigit()` also accepts
    digits that `int()` refuses ("²") or reads as another number ("١٢" is 12), so input
    is checked with this before `int()`."""
    return text.isascii() and text.isdigit()


def validate_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field, value, "must be true or false")
    return value


def validate_int(field: str, value: Any, lo: int, hi: int) -> int:
    """An int in lo..hi; a string of digits is accepted, a bool is not."""
    if isinstance(value, str) and is_decimal(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, value, "must be an integer")
    if not lo <= value <= hi:
        raise ValidationError(field, value, f"must be between {lo} and {hi}")
    return value


def validate_str_list(field: str, value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValidationError(field, value, "must be a list")
    return list(value)


def validate_mapping(field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(field, value, "must be a mapping")
    return value


def check_keys(where: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject any key of `data` not in `allowed`, naming the key."""
    allowed = set(allowed)
    for key in data:
        if key not in allowed:
            raise ValidationError(str(key), data[key], f"unknown field in {where}")


def parse_order(field: str, value: Any) -> float | None:
    """A policy or tier order: a finite number, or None/"default" (meaning last)."""
    if value is None or value == "default":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, value, "must be a number or \"default\"")
    if not math.isfinite(value):
        raise ValidationError(field, value, "must be finite")
    return float(value)


def render_order(order: float | None) -> int | float | str:
    """The JSON form of an order: "default" for None, integral values as ints."""
    if order is None:
        return "default"
    return int(order) if order.is_integer() else order
