"""The Calico v1 rule grammar: `Rule`, `Rules` and port ranges, with canonical JSON.

Owns: every field a v1 rule may carry (action; protocol; source and destination net,
tag, selector and ports; ICMP type and code; the negated `!` form of each match;
log prefix), the constraints between them (ports need a port-carrying protocol,
ICMP fields need icmp/icmpv6, one IP version per rule), the canonical JSON dict
(`to_dict`) and calicoctl v0.x's one-line rendering (`pprint`).

Leaves to others: turning rules into iptables (felix's rules layer) and splitting
long port lists into multiport-sized pieces (felix again: the model keeps the
list whole). Python field names spell a negation `not_<field>`; JSON keys spell it
`!<field>`, as Calico v1 does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from libcalico.errors import ValidationError
from libcalico.model.base import JSONDict
from libcalico.model.selector import Selector, parse_selector
from libcalico.model.validate import canonical_net, is_decimal, validate_name

__all__ = [
    "ACTIONS",
    "PROTOCOLS",
    "PortRange",
    "Rule",
    "Rules",
    "parse_ports",
]

ACTIONS = ("allow", "deny", "log", "next-tier")
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}
_PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "udplite", 6, 17, 132, 136})
_ICMP_VERSION: dict[str | int, int] = {"icmp": 4, 1: 4, "icmpv6": 6, 58: 6}
LOG_PREFIX_MAX = 27
TAG_MAX = 253

# Match fields in canonical order; each has a `not_` twin (JSON key `!field`).
MATCH_FIELDS = ("protocol", "src_net", "src_tag", "src_selector", "src_ports",
                "dst_net", "dst_tag", "dst_selector", "dst_ports", "icmp_type", "icmp_code")


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive port range; a single port has lo == hi."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        for value in (self.lo, self.hi):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise ValidationError("port", value, "must be an integer from 0 to 65535")
        if self.lo > self.hi:
            raise ValidationError("port range", str(self), "start must not exceed end")

    def to_json(self) -> int | str:
        """A single port as an int, a range as "lo:hi"."""
        return self.lo if self.lo == self.hi else f"{self.lo}:{self.hi}"

    def __str__(self) -> str:
        return str(self.to_json())


def _parse_port_item(field: str, item: Any) -> PortRange:
    if isinstance(item, PortRange):
        return item
    if isinstance(item, int) and not isinstance(item, bool):
        lo = hi = item
    elif isinstance(item, str):
        lo_text, sep, hi_text = item.strip().partition(":")
        hi_text = hi_text if sep else lo_text
        if not (is_decimal(lo_text) and is_decimal(hi_text)):
            raise ValidationError(field, item, "ports must be numbers or ranges 'lo:hi'")
        lo, hi = int(lo_text), int(hi_text)
    else:
        raise ValidationError(field, item, "ports must be numbers or ranges 'lo:hi'")
    try:
        return PortRange(lo, hi)
    except ValidationError as exc:
        raise ValidationError(field, item, exc.reason) from None


def parse_ports(field: str, value: str | Iterable[int | str | PortRange]) -> tuple[PortRange, ...]:
    """Ports from a string ("80", "8000:8080", "22,80,8000:8080") or a JSON list
    of ints and "lo:hi" strings. Errors name `field`."""
    if isinstance(value, str):
        if not value.strip():
            raise ValidationError(field, value, "empty port list")
        items: list[Any] = value.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValidationError(field, value, "must be a list of ports or a 'lo:hi,...' string")
    return tuple(_parse_port_item(field, item) for item in items)


def _json_key(name: str) -> str:
    return "!" + name[4:] if name.startswith("not_") else name


def _py_name(key: str) -> str:
    return "not_" + key[1:] if key.startswith("!") else key


def _canonical_protocol(field: str, value: Any) -> str | int:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in PROTOCOLS:
            return lowered
        if is_decimal(lowered):
            value = int(lowered)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 255:
        return value
    raise ValidationError(field, value, "must be tcp, udp, icmp, icmpv6, sctp, udplite "
                                        "or a protocol number from 1 to 255")


def _check_icmp(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValidationError(field, value, "must be an integer from 0 to 255")
    return value


def _check_log_prefix(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError("log_prefix", value, "must be a non-empty string")
    # The prefix ends up inside an iptables-restore payload: printable ASCII only,
    # and no quote or backslash that could end or escape the quoted argument.
    if any(not (32 <= ord(c) < 127) or c in "\"'\\" for c in value):
        raise ValidationError("log_prefix", value,
                              "must be printable ASCII without quotes or backslashes")
    return value[:LOG_PREFIX_MAX]


@dataclass(frozen=True)
class Rule:
    """One Calico v1 rule. Fields left None (or empty port tuples) do not match on.

    Values are canonicalised on construction: protocol names lowercase and numbers as
    int, nets as `ipaddress` renders them, selectors in canonical form, the log prefix
    cut to 27 characters.
    """

    action: str = "allow"
    protocol: str | int | None = None
    not_protocol: str | int | None = None
    src_net: str | None = None
    not_src_net: str | None = None
    src_tag: str | None = None
    not_src_tag: str | None = None
    src_selector: str | None = None
    not_src_selector: str | None = None
    src_ports: tuple[PortRange, ...] = ()
    not_src_ports: tuple[PortRange, ...] = ()
    dst_net: str | None = None
    not_dst_net: str | None = None
    dst_tag: str | None = None
    not_dst_tag: str | None = None
    dst_selector: str | None = None
    not_dst_selector: str | None = None
    dst_ports: tuple[PortRange, ...] = ()
    not_dst_ports: tuple[PortRange, ...] = ()
    icmp_type: int | None = None
    not_icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_code: int | None = None
    log_prefix: str | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.action not in ACTIONS:
            raise ValidationError("action", self.action, f"must be one of {', '.join(ACTIONS)}")
        for name in ("protocol", "not_protocol"):
            if getattr(self, name) is not None:
                put(name, _canonical_protocol(_json_key(name), getattr(self, name)))
        for side in ("src", "dst"):
            for neg in ("", "not_"):
                net, tag, sel, ports = (f"{neg}{side}_{k}" for k in ("net", "tag", "selector",
                                                                      "ports"))
                if getattr(self, net) is not None:
                    put(net, canonical_net(_json_key(net), getattr(self, net)))
                if getattr(self, tag) is not None:
                    validate_name(_json_key(tag), getattr(self, tag), TAG_MAX)
                if getattr(self, sel) is not None:
                    put(sel, self._selector(_json_key(sel), getattr(self, sel)).canonical)
                put(ports, parse_ports(_json_key(ports), getattr(self, ports)))
        for name in ("icmp_type", "not_icmp_type", "icmp_code", "not_icmp_code"):
            if getattr(self, name) is not None:
                _check_icmp(_json_key(name), getattr(self, name))
        if self.log_prefix is not None:
            put("log_prefix", _check_log_prefix(self.log_prefix))
        self._check_constraints()

    @staticmethod
    def _selector(field: str, value: Any) -> Selector:
        try:
            return parse_selector(value)
        except ValidationError as exc:
            raise ValidationError(field, value, exc.reason) from None

    def _check_constraints(self) -> None:
        for name in ("src_ports", "not_src_ports", "dst_ports", "not_dst_ports"):
            ports = getattr(self, name)
            if ports and self.protocol not in _PORT_PROTOCOLS:
                raise ValidationError(_json_key(name), [p.to_json() for p in ports],
                                      "port matches need protocol tcp, udp, sctp or udplite")
        for name in ("icmp_type", "not_icmp_type", "icmp_code", "not_icmp_code"):
            value = getattr(self, name)
            if value is not None and self.protocol not in _ICMP_VERSION:
                raise ValidationError(_json_key(name), value,
                                      "ICMP matches need protocol icmp or icmpv6")
        for code, typ in (("icmp_code", "icmp_type"), ("not_icmp_code", "not_icmp_type")):
            if getattr(self, code) is not None and getattr(self, typ) is None:
                raise ValidationError(_json_key(code), getattr(self, code),
                                      f"{_json_key(code)} needs {_json_key(typ)}")
        self._check_ip_version()

    @property
    def ip_version(self) -> int | None:
        """4 or 6 when the rule only makes sense for one IP version, else None."""
        return self._check_ip_version()

    def _check_ip_version(self) -> int | None:
        version: int | None = None
        source = ""
        if self.protocol in _ICMP_VERSION:
            version, source = _ICMP_VERSION[self.protocol], "protocol"
        for name in ("src_net", "not_src_net", "dst_net", "not_dst_net"):
            net = getattr(self, name)
            if net is None:
                continue
            net_version = 6 if ":" in net else 4
            if version is None:
                version, source = net_version, _json_key(name)
            elif net_version != version:
                raise ValidationError(_json_key(name), net,
                                      f"IPv{net_version} net in a rule that is IPv{version} "
                                      f"(from {source})")
        return version

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """Parse a Calico v1 rule dict; unknown keys are an error naming the key."""
        if not isinstance(data, Mapping):
            raise ValidationError("rule", data, "must be a mapping")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = _py_name(str(key))
            if name not in _FIELD_NAMES:
                raise ValidationError(str(key), value, "unknown rule field")
            if name.endswith("ports"):
                if not isinstance(value, list | str):
                    raise ValidationError(str(key), value, "must be a list of ports")
                value = parse_ports(str(key), value)
            elif name.endswith(("icmp_type", "icmp_code")):
                value = _check_icmp(str(key), value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> JSONDict:
        """The canonical JSON dict: only fields that differ from their default."""
        out: JSONDict = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default or (f.name.endswith("ports") and not value):
                continue
            if f.name.endswith("ports"):
                value = [p.to_json() for p in value]
            out[_json_key(f.name)] = value
        return out

    def pprint(self) -> str:
        """calicoctl v0.x `rule show` form, e.g. `allow tcp from ports 80 cidr 10.0.0.0/8`."""
        out = [self.action]
        for name in ("protocol", "not_protocol"):
            if getattr(self, name) is not None:
                out.append(_bang(name) + str(getattr(self, name)))
        for name, word in (("icmp_type", "type"), ("not_icmp_type", "type"),
                           ("icmp_code", "code"), ("not_icmp_code", "code")):
            if getattr(self, name) is not None:
                out.extend([_bang(name) + word, str(getattr(self, name))])
        for side, word in (("src", "from"), ("dst", "to")):
            parts: list[str] = []
            for kind, label in (("ports", "ports"), ("tag", "tag"), ("net", "cidr"),
                                ("selector", "selector")):
                for neg in ("", "not_"):
                    value = getattr(self, f"{neg}{side}_{kind}")
                    if not value:
                        continue
                    if kind == "ports":
                        value = ",".join(str(p) for p in value)
                    elif kind == "selector":
                        value = f'"{value}"' if '"' not in value else f"'{value}'"
                    parts.extend([("!" if neg else "") + label, value])
            if parts:
                out.append(word)
                out.extend(parts)
        if self.log_prefix is not None:
            out.extend(["log-prefix", f'"{self.log_prefix}"'])
        return " ".join(out)

    def tags(self) -> frozenset[str]:
        """Every tag this rule matches on (positively or negated)."""
        return frozenset(t for t in (self.src_tag, self.not_src_tag, self.dst_tag,
                                     self.not_dst_tag) if t is not None)

    def selectors(self) -> frozenset[Selector]:
        """Every selector this rule matches on (positively or negated)."""
        return frozenset(parse_selector(s) for s in (self.src_selector, self.not_src_selector,
                                                     self.dst_selector, self.not_dst_selector)
                         if s is not None)


def _bang(name: str) -> str:
    return "!" if name.startswith("not_") else ""


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Rule))


def _parse_rule_list(field: str, value: Any) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValidationError(field, value, "must be a list of rules")
    rules = []
    for i, item in enumerate(value):
        if isinstance(item, Rule):
            rules.append(item)
            continue
        try:
            rules.append(Rule.from_dict(item))
        except ValidationError as exc:
            raise ValidationError(f"{field}[{i}].{exc.field}", exc.value, exc.reason) from None
    return tuple(rules)


@dataclass(frozen=True)
class Rules:
    """The ordered inbound and outbound rules of a profile or policy."""

    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rules:
        """Parse `{"inbound_rules": [...], "outbound_rules": [...]}`; either may be missing."""
        if not isinstance(data, Mapping):
            raise ValidationError("rules", data, "must be a mapping")
        for key in data:
            # libcalico also wrote the profile name as "id"; it is ignored.
            if key not in ("inbound_rules", "outbound_rules", "id"):
                raise ValidationError(str(key), data[key], "unknown field in rules")
        return cls(_parse_rule_list("inbound_rules", data.get("inbound_rules")),
                   _parse_rule_list("outbound_rules", data.get("outbound_rules")))

    @staticmethod
    def parse_list(field: str, value: Any) -> tuple[Rule, ...]:
        """Parse one JSON rule list; errors are named `field[i].<rule field>`."""
        return _parse_rule_list(field, value)

    def to_dict(self) -> JSONDict:
        return {"inbound_rules": [r.to_dict() for r in self.inbound],
                "outbound_rules": [r.to_dict() for r in self.outbound]}

    def tags_used(self) -> frozenset[str]:
        """Tags referenced by any rule (felix builds one ipset per tag)."""
        return frozenset().union(*(r.tags() for r in self.inbound + self.outbound))

    def selectors_used(self) -> frozenset[Selector]:
        """Selectors referenced by any rule (felix builds one ipset per selector)."""
        return frozenset().union(*(r.selectors() for r in self.inbound + self.outbound))
