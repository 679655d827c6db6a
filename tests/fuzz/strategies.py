"""Hypothesis strategies shared by the fuzzers: hostile text, arbitrary JSON, valid and
nearly valid selectors, rules and resource documents.

Everything is built so that a good share of the examples is *almost* valid (one field
wrong), which is where parsers break: fully random input is rejected at the first byte.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

# Characters that have broken parsers, shells and iptables/ipset payloads before: shell
# metacharacters, quotes, whitespace of every kind, NUL, non-ASCII digits that
# str.isdigit() accepts but int() may not ("²"), right-to-left and combining marks.
NASTY_CHARS = ";|&$()`\"'<>*?[]{}~!#%\\\n\r\t\x00\x0b\x0c \u00a0\u2028é中🙂²١\u202e\u0301-_./:,=+@"
NASTY_TEXT = st.text(alphabet=st.sampled_from(NASTY_CHARS) | st.characters(), max_size=40)
LONG_TEXT = st.integers(min_value=120, max_value=400).map(lambda n: "a" * n)
WORDS = st.sampled_from(["", "all()", "a", "0", "-1", "65536", "²", "١٢", "1e3", "null",
                         "true", "198.18.0.1", "198.18.0.0/16", "fd00::1/128", "::",
                         "fd00::/8", "tcp", "icmpv6", "allow", "deny", "default",
                         "$(reboot)", "`id`", "a;b", "a b", "\n", "x" * 64, "x" * 300])
TEXT = NASTY_TEXT | WORDS | LONG_TEXT | st.text(alphabet=string.printable, max_size=30)

JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | TEXT)
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


# --- selectors ------------------------------------------------------------------------

LABEL_NAMES = st.sampled_from(["a", "role", "app.kubernetes.io/name", "x-y_z", "tier",
                               "has", "all", "in", "not"])
LABEL_VALUES = st.sampled_from(["", "web", "db", "a b", "é", "x" * 63, "$(id)", "1"]) | \
    st.text(alphabet=st.characters(exclude_characters="\"'", exclude_categories=("Cs",)),
            max_size=10)


def _quoted(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


@st.composite
def selector_trees(draw: st.DrawFn, depth: int = 4) -> tuple[str, Any]:
    """(selector text, reference evaluator) for a valid selector drawn from the grammar."""
    kind = draw(st.sampled_from(["eq", "ne", "in", "notin", "has", "all"] +
                                (["not", "and", "or", "paren"] if depth > 0 else [])))
    label = draw(LABEL_NAMES)
    if kind in ("eq", "ne"):
        value = draw(LABEL_VALUES)
        op = "==" if kind == "eq" else "!="
        if kind == "eq":
            return f"{label} {op} {_quoted(value)}", lambda ls: ls.get(label) == value
        return f"{label} {op} {_quoted(value)}", lambda ls: ls.get(label) != value
    if kind in ("in", "notin"):
        values = draw(st.lists(LABEL_VALUES, max_size=3))
        text = f"{label} {'not in' if kind == 'notin' else 'in'} " \
               f"{{{', '.join(_quoted(v) for v in values)}}}"
        if kind == "in":
            return text, lambda ls: ls.get(label) in values
        return text, lambda ls: ls.get(label) not in values
    if kind == "has":
        return f"has({label})", lambda ls: label in ls
    if kind == "all":
        return "all()", lambda ls: True
    if kind == "not":
        text, fn = draw(selector_trees(depth - 1))
        return f"!({text})", lambda ls: not fn(ls)
    if kind == "paren":
        text, fn = draw(selector_trees(depth - 1))
        return f"({text})", fn
    left_text, left = draw(selector_trees(depth - 1))
    right_text, right = draw(selector_trees(depth - 1))
    if kind == "and":
        return f"({left_text}) && ({right_text})", lambda ls: left(ls) and right(ls)
    return f"({left_text}) || ({right_text})", lambda ls: left(ls) or right(ls)


SELECTOR_TOKENS = st.sampled_from(["a", "role", "==", "!=", "&&", "||", "!", "(", ")", "{",
                                   "}", ",", "in", "not", "has", "all", "'x'", '"y"', "'",
                                   '"', " ", "$", "\n", "é", "=", "&", "|"])
SELECTOR_TEXT = (st.lists(SELECTOR_TOKENS, max_size=12).map("".join)
                 | st.lists(SELECTOR_TOKENS, max_size=12).map(" ".join)
                 | selector_trees().map(lambda t: t[0]) | TEXT
                 # Deep nesting: recursion in a parser is a crash waiting for input.
                 | st.integers(1, 3000).map(lambda n: "(" * n + "a == 'b'" + ")" * n)
                 | st.integers(1, 3000).map(lambda n: "!" * n + "has(a)")
                 | st.integers(1, 3000).map(lambda n: " && ".join(["has(a)"] * n)))
LABELS = st.dictionaries(LABEL_NAMES, LABEL_VALUES, max_size=4)


# --- rules ----------------------------------------------------------------------------

RULE_KEYS = ["action", "protocol", "src_net", "src_tag", "src_selector", "src_ports",
             "dst_net", "dst_tag", "dst_selector", "dst_ports", "icmp_type", "icmp_code",
             "log_prefix"]
RULE_KEYS = RULE_KEYS + ["!" + k for k in RULE_KEYS[1:-1]]
RULE_VALUES = {
    "action": st.sampled_from(["allow", "deny", "log", "next-tier"]),
    "protocol": st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "sctp", "udplite", 6, 58,
                                 "TCP", "17"]),
    "net": st.sampled_from(["198.18.0.0/16", "198.18.1.1", "fd00::/8", "fd00::1/128",
                            "0.0.0.0/0", "::/0"]),
    "tag": st.sampled_from(["web", "db", "a.b-c_d"]),
    "selector": selector_trees(2).map(lambda t: t[0]),
    "ports": st.lists(st.integers(0, 65535) | st.sampled_from(["80", "8000:8080", "0:65535"]),
                      min_size=1, max_size=20),
    "icmp": st.integers(0, 255),
    "log_prefix": st.sampled_from(["calico", "drop me", "x" * 40]),
}


def _valid_value(key: str) -> st.SearchStrategy[Any]:
    bare = key.lstrip("!")
    for suffix in ("net", "tag", "selector", "ports"):
        if bare.endswith(suffix):
            return RULE_VALUES[suffix]
    if bare.startswith("icmp"):
        return RULE_VALUES["icmp"]
    return RULE_VALUES[bare]


@st.composite
def rule_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A v1 rule dict: mostly valid values, some keys with hostile ones or unknown keys."""
    keys = draw(st.lists(st.sampled_from(RULE_KEYS), max_size=6, unique=True))
    out: dict[str, Any] = {}
    for key in keys:
        out[key] = draw(_valid_value(key) | JSON) if draw(st.booleans()) else \
            draw(_valid_value(key))
    if draw(st.integers(0, 9)) == 0:
        out[draw(TEXT)] = draw(JSON)
    return out


RULE_WORDS = st.sampled_from(["from", "to", "ports", "tag", "cidr", "selector", "type",
                              "code", "not", "!ports", "!tag", "!cidr", "!selector", "tcp",
                              "udp", "icmp", "icmpv6", "sctp", "6", "256", "80", "8000:8080",
                              "80,443", "web", "198.18.0.0/16", "fd00::/8", "!tcp", "all()",
                              "role == 'db'", "has(a)", "²", "١", "0", "-1", "type", "8",
                              "log-prefix", "$(id)", "a;b"])
RULE_ACTIONS = st.sampled_from(["allow", "deny", "log", "next-tier"]) | TEXT


# --- resource documents ---------------------------------------------------------------

BASE_DOCUMENTS: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "ipPool", "metadata": {"cidr": "198.19.0.0/16"},
     "spec": {"ipip": True, "nat_outgoing": True}},
    {"apiVersion": "v1", "kind": "ipPool", "metadata": {"cidr": "fd00:198:19::/64"},
     "spec": {}},
    {"apiVersion": "v1", "kind": "profile", "metadata": {"name": "web"},
     "spec": {"inbound_rules": [{"action": "allow", "protocol": "tcp",
                                 "dst_ports": [80, "8000:8080"], "src_tag": "web"}],
              "outbound_rules": [{"action": "allow"}], "tags": ["web"],
              "labels": {"tier": "frontend"}}},
    {"apiVersion": "v1", "kind": "tier", "metadata": {"name": "security"},
     "spec": {"order": 10}},
    {"apiVersion": "v1", "kind": "policy", "metadata": {"tier": "security", "name": "deny-ssh"},
     "spec": {"order": 5, "selector": "role == 'web'",
              "inbound_rules": [{"action": "deny", "protocol": "tcp", "dst_ports": [22]}],
              "outbound_rules": []}},
    {"apiVersion": "v1", "kind": "workloadEndpoint",
     "metadata": {"hostname": "h1", "orchestrator": "netns", "workload": "w1",
                  "endpoint_id": "e1"},
     "spec": {"name": "calie1", "mac": "ee:ee:ee:ee:ee:01", "ipv4_nets": ["198.19.0.5/32"],
              "profile_ids": [], "labels": {"role": "web"}}},
    {"apiVersion": "v1", "kind": "hostEndpoint", "metadata": {"hostname": "h1",
                                                              "endpoint_id": "eth0"},
     "spec": {"name": "eth0", "expected_ipv4_addrs": ["198.18.0.2"], "profile_ids": []}},
    {"apiVersion": "v1", "kind": "node", "metadata": {"hostname": "h1"},
     "spec": {"ipv4": "198.18.0.1", "ipv6": "fd00:198:18::1", "as_num": 64513}},
    {"apiVersion": "v1", "kind": "bgpPeer", "metadata": {"ip": "198.18.0.200"},
     "spec": {"as_num": 65000}},
    {"apiVersion": "v1", "kind": "bgpConfig", "metadata": {},
     "spec": {"as_num": 64512, "node_mesh": True, "loglevel": "info"}},
    {"apiVersion": "v1", "kind": "felixConfig", "metadata": {},
     "spec": {"LogSeverityScreen": "info"}},
    {"apiVersion": "v1", "kind": "ipamConfig", "metadata": {},
     "spec": {"strict_affinity": False}},
]


def field_paths(doc: Any, lists: bool = True,
                prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field of a JSON document as a path of keys (and list indexes, unless
    `lists` is false), parents before children; the document itself is not one."""
    out: list[tuple[Any, ...]] = []
    items: Any = ()
    if isinstance(doc, dict):
        items = doc.items()
    elif isinstance(doc, list) and lists:
        items = enumerate(doc)
    for k, v in items:
        out.append((*prefix, k))
        out += field_paths(v, lists, (*prefix, k))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _replace(doc: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        copy = dict(doc)
        if delete and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _replace(doc.get(head), rest, value, delete)
        return copy
    if not isinstance(doc, list):
        return value
    copy_l = list(doc)
    if delete and not rest:
        del copy_l[head]
    else:
        copy_l[head] = _replace(doc[head], rest, value, delete)
    return copy_l


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """A valid document with one part replaced by something else, removed, or untouched;
    sometimes with an unknown key added."""
    doc = draw(st.sampled_from(BASE_DOCUMENTS))
    how = draw(st.sampled_from(["keep", "keep", "keep", "replace", "replace", "replace",
                                "delete", "add"]))
    if how == "keep":
        return doc
    paths = field_paths(doc)
    path = draw(st.sampled_from(paths))
    if how == "delete":
        return _replace(doc, path, None, delete=True)
    if how == "add":
        parents = [p for p in [(), *field_paths(doc)] if isinstance(_get(doc, p), dict)]
        parent = draw(st.sampled_from(parents))
        return _replace(doc, (*parent, draw(TEXT)), draw(JSON), delete=False)
    return _replace(doc, path, draw(JSON | TEXT | _near_value()), delete=False)


def _near_value() -> st.SearchStrategy[Any]:
    """Values of the right type but wrong content: the cases validators miss."""
    return st.sampled_from(["198.19.0.0/33", "198.19.0.1/16", "fd00::/129", "300.1.1.1",
                            "ee:ee:ee:ee:ee", "calie1-too-long-name", "web;rm", "ИМЯ",
                            65536, -1, 2**32, 1.5, float("nan"), [], {}, [None], ["²"],
                            "²", "١٢", "0x10", "true", "", " ", "a" * 300])
