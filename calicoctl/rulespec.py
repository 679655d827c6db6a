"""The seed-era rule grammar of `calicoctl profile P rule add|remove`, parsed into `Rule`.

Owns: turning words such as
  `allow tcp from ports 80,8000:8080 tag web cidr 198.18.0.0/16 to selector "role == 'db'"`
  `deny icmp type 8 code 0 from !cidr 198.18.0.0/24`
into a validated `libcalico.model.Rule`. Pure: no I/O.

Grammar (each match word may be negated with a leading `!` or a preceding `not`):
  ACTION [PROTO] [type N [code N]] [from SIDE...] [to SIDE...]
  ACTION: allow | deny | log | next-tier;  PROTO: tcp | udp | icmp | icmpv6 | sctp |
  udplite | a number;  SIDE: ports P | tag T | cidr C | selector S.

Leaves to others: the rule's own constraints (ports need tcp/udp, ICMP fields need
icmp, one IP version per rule): `Rule` checks those and names the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from libcalico.errors import ValidationError
from libcalico.model.validate import is_decimal

_SIDE_WORDS = {"ports": "ports", "tag": "tag", "cidr": "net", "selector": "selector"}
_PROTOCOL_WORDS = ("tcp", "udp", "icmp", "icmpv6", "sctp", "udplite")


def _negation(words: list[str], i: int) -> tuple[bool, str, int]:
    """(negated, word, next index) for the word at i, honouring `not` and `!`."""
    negated = False
    word = words[i]
    if word == "not":
        if i + 1 >= len(words):
            raise ValidationError("rule", " ".join(words), "'not' must be followed by a match")
        negated, i = True, i + 1
        word = words[i]
    if word.startswith("!") and len(word) > 1:
        negated, word = not negated, word[1:]
    return negated, word, i + 1


def parse_rule(action: str, match: Sequence[str]) -> Any:
    """`Rule` from an action and the match words."""
    from libcalico.model import Rule

    words = list(match)
    text = " ".join([action, *words])
    kwargs: dict[str, Any] = {"action": action}

    def need_value(i: int, what: str) -> str:
        if i >= len(words):
            raise ValidationError("rule", text, f"'{what}' needs a value")
        return words[i]

    def put(name: str, value: Any) -> None:
        if name in kwargs:
            raise ValidationError("rule", text, f"'{name}' given twice")
        kwargs[name] = value

    i = 0
    side: str | None = None
    while i < len(words):
        negated, word, j = _negation(words, i)
        prefix = "not_" if negated else ""
        if word in ("from", "to"):
            if negated:
                raise ValidationError("rule", text, f"'{word}' cannot be negated")
            side = "src" if word == "from" else "dst"
            i = j
        elif side is None and (word in _PROTOCOL_WORDS or is_decimal(word)) and \
                "protocol" not in kwargs and "not_protocol" not in kwargs:
            put(prefix + "protocol", int(word) if is_decimal(word) else word)
            i = j
        elif side is None and word in ("type", "code"):
            value = need_value(j, word)
            if not is_decimal(value):
                raise ValidationError(f"icmp_{word}", value, "must be an integer from 0 to 255")
            put(f"{prefix}icmp_{word}", int(value))
            i = j + 1
        elif side is not None and word in _SIDE_WORDS:
            value = need_value(j, word)
            put(f"{prefix}{side}_{_SIDE_WORDS[word]}", value)
            i = j + 1
        else:
            where = "after from/to" if side else "before from/to"
            raise ValidationError("rule", text, f"unexpected word {word!r} {where}")
    return Rule(**kwargs)
