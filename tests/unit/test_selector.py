"""Selector grammar: evaluation of every operator, precedence, errors, canonical form."""

from __future__ import annotations

import hashlib

import pytest

from libcalico.errors import ValidationError
from libcalico.model.selector import Selector, SelectorSyntaxError, parse_selector

WEB = {"role": "web", "env": "prod", "k8s.io/app-name_x": "a"}
DB = {"role": "db", "env": "dev"}
NONE: dict[str, str] = {}


@pytest.mark.parametrize(("text", "labels", "expected"), [
    # all() and the empty selector
    ("", WEB, True),
    ("   ", NONE, True),
    ("all()", NONE, True),
    ("all( )", DB, True),
    # ==
    ('role == "web"', WEB, True),
    ('role == "web"', DB, False),
    ('role == "web"', NONE, False),
    ("role == 'web'", WEB, True),
    ('role=="web"', WEB, True),
    ('k8s.io/app-name_x == "a"', WEB, True),
    ('role == ""', NONE, False),
    # != (true when the label is absent)
    ('role != "web"', WEB, False),
    ('role != "web"', DB, True),
    ('role != "web"', NONE, True),
    # in
    ('role in {"web", "db"}', WEB, True),
    ('role in {"web", "db"}', DB, True),
    ('role in {"cache"}', WEB, False),
    ('role in {"web"}', NONE, False),
    ("role in {}", WEB, False),
    ("role in {'web'}", WEB, True),
    # not in (true when the label is absent)
    ('role not in {"web", "db"}', WEB, False),
    ('role not in {"cache"}', DB, True),
    ('role not in {"web"}', NONE, True),
    ("role not in {}", WEB, True),
    # has and !has
    ("has(role)", WEB, True),
    ("has(role)", NONE, False),
    ("has( role )", DB, True),
    ("!has(role)", WEB, False),
    ("!has(role)", NONE, True),
    ("has(k8s.io/app-name_x)", WEB, True),
    # && and ||
    ('role == "web" && env == "prod"', WEB, True),
    ('role == "web" && env == "dev"', WEB, False),
    ('role == "web" || env == "dev"', DB, True),
    ('role == "web" || env == "prod"', DB, False),
    # ! applied to any sub-expression
    ('!role == "web"', WEB, False),
    ('!role == "web"', NONE, True),
    ('!(role == "web" || role == "db")', DB, False),
    ('!(role == "web" || role == "db")', NONE, True),
    ("!!has(role)", WEB, True),
    ("!all()", WEB, False),
    ('!role in {"db"}', DB, False),
    # parentheses
    ('(role == "web")', WEB, True),
    ('((has(env)) && (role == "db"))', DB, True),
    # label names that look like keywords
    ('has == "x"', {"has": "x"}, True),
    ('in in {"x"}', {"in": "x"}, True),
    ('not == "x"', {"not": "x"}, True),
    # strings may hold the other quote character and any punctuation
    ("note == 'say \"hi\" && ||'", {"note": 'say "hi" && ||'}, True),
])
def test_evaluate(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).evaluate(labels) is expected


@pytest.mark.parametrize(("text", "labels", "expected"), [
    # && binds tighter than ||
    ('a == "1" || b == "1" && c == "1"', {"a": "1"}, True),
    ('a == "1" || b == "1" && c == "1"', {"b": "1"}, False),
    ('a == "1" || b == "1" && c == "1"', {"b": "1", "c": "1"}, True),
    ('a == "1" && b == "1" || c == "1"', {"c": "1"}, True),
    ('a == "1" && (b == "1" || c == "1")', {"c": "1"}, False),
    # ! binds tighter than &&
    ('!has(a) && has(b)', {"b": "1"}, True),
    ('!has(a) && has(b)', {"a": "1", "b": "1"}, False),
    ('!(has(a) && has(b))', {"a": "1"}, True),
    ('!has(a) || has(b)', {"a": "1"}, False),
])
def test_precedence(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).evaluate(labels) is expected


@pytest.mark.parametrize(("text", "column", "reason"), [
    ("a == ", 6, "expected a string"),
    ("a ==", 5, "expected a string"),
    ('a == b', 6, "expected a string"),
    ('(a == "x"', 10, "expected ')'"),
    ('a = "x"', 3, "unexpected character '='"),
    ('a == "x', 6, "unterminated string"),
    ("a == 'x", 6, "unterminated string"),
    ("has(", 5, "expected a label"),
    ("has(a", 6, "expected ')'"),
    ("has()", 5, "expected a label"),
    ('a not == "x"', 7, "expected 'in'"),
    ('a in {"x" "y"}', 11, "expected ',' or '}'"),
    ('a in {"x",}', 11, "expected a string"),
    ('a in "x"', 6, "expected '{'"),
    ('a in {"x"', 10, "expected ',' or '}'"),
    ('a == "x" b', 10, "expected '&&', '||' or the end of the selector"),
    (")", 1, "expected a label, '!', '(', 'has(' or 'all()'"),
    ("a", 2, "expected '==', '!=', 'in' or 'not in'"),
    ('a == "x" &&', 12, "expected a label"),
    ('a == "x" || || b == "y"', 13, "expected a label"),
    ("all(x)", 5, "expected ')'"),
    ("!", 2, "expected a label"),
    ('a == "x" & b == "y"', 10, "unexpected character '&'"),
    ('a == "x" | b == "y"', 10, "unexpected character '|'"),
    ("a ~ 'x'", 3, "unexpected character '~'"),
    ('a == "x")', 9, "expected '&&', '||' or the end of the selector"),
])
def test_syntax_error_column(text: str, column: int, reason: str) -> None:
    with pytest.raises(SelectorSyntaxError) as info:
        parse_selector(text)
    err = info.value
    assert err.column == column
    assert err.field == "selector"
    assert err.value == text
    assert str(err).startswith(f"invalid selector {text!r}: {reason}")
    assert str(err).endswith(f" at column {column}")


def test_syntax_error_message_and_hierarchy() -> None:
    with pytest.raises(ValidationError) as info:
        parse_selector("a == ")
    assert str(info.value) == "invalid selector 'a == ': expected a string at column 6"
    assert isinstance(info.value, SelectorSyntaxError)


@pytest.mark.parametrize("value", [None, 3, ["a"]])
def test_non_string_rejected(value: object) -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        parse_selector(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "canonical"), [
    ("", "all()"),
    ("all()", "all()"),
    ("  role=='web'  ", 'role == "web"'),
    ("role!='web'", 'role != "web"'),
    ("role in {'b','a','b'}", 'role in {"a", "b"}'),
    ("role not in { }", "role not in {}"),
    ("has( x )", "has(x)"),
    ("! has(x)", "!has(x)"),
    ("(a=='1')", 'a == "1"'),
    ("a=='1'&&(b=='2'&&c=='3')", 'a == "1" && b == "2" && c == "3"'),
    ("(a=='1'||b=='2')||c=='3'", 'a == "1" || b == "2" || c == "3"'),
    ("(a=='1'||b=='2')&&c=='3'", '(a == "1" || b == "2") && c == "3"'),
    ("a=='1'||(b=='2'&&c=='3')", 'a == "1" || b == "2" && c == "3"'),
    ("!(a=='1'&&b=='2')", '!(a == "1" && b == "2")'),
    ("!(a=='1')", '!a == "1"'),
    ("x == 'say \"hi\"'", "x == 'say \"hi\"'"),
])
def test_canonical(text: str, canonical: str) -> None:
    sel = parse_selector(text)
    assert sel.canonical == canonical
    assert str(sel) == canonical
    # Canonical text parses to itself.
    assert parse_selector(canonical).canonical == canonical


@pytest.mark.parametrize("text", [
    'a == "1" || b == "2" && !(c in {"x", "y"}) && d not in {"z"}',
    '!(a == "1" || b != "2") && has(c)',
    "(((has(a))))",
    "!has(a) || a == 'q'",
])
def test_canonical_is_equivalent(text: str) -> None:
    original, canon = parse_selector(text), parse_selector(parse_selector(text).canonical)
    cases = [{}, {"a": "1"}, {"b": "2"}, {"c": "x", "a": "q"}, {"d": "z", "c": "y"},
             {"a": "1", "b": "2", "c": "z", "d": "y"}]
    for labels in cases:
        assert original.evaluate(labels) == canon.evaluate(labels)


def test_whitespace_variants_equal() -> None:
    variants = ['role=="web"&&has(env)', ' role == "web"  &&  has( env ) ',
                "(role == 'web') && (has(env))", 'role=="web"\n&&\thas(env)']
    selectors = {parse_selector(v) for v in variants}
    assert len(selectors) == 1
    assert len({s.unique_id for s in selectors}) == 1


def test_unique_id_stable_and_distinct() -> None:
    sel = parse_selector("")
    # Stable across processes: a hash of the canonical text, not Python's hash().
    assert sel.unique_id == hashlib.sha224(b"all()").hexdigest()[:28]
    assert sel.unique_id == "c802ac97e08da13a0626f238a4d9"
    other = parse_selector('role == "web"')
    assert len(other.unique_id) == 28
    assert int(other.unique_id, 16) >= 0
    assert other.unique_id != sel.unique_id
    assert parse_selector('role == "db"').unique_id != other.unique_id


@pytest.mark.parametrize(("text", "labels"), [
    ("", set()),
    ("all()", set()),
    ('a == "1"', {"a"}),
    ('!(a == "1" || b in {"x"}) && has(c.d/e) && f not in {}', {"a", "b", "c.d/e", "f"}),
])
def test_labels_used(text: str, labels: set[str]) -> None:
    assert parse_selector(text).labels_used == frozenset(labels)


def test_selector_value_semantics() -> None:
    sel = parse_selector("has(a)")
    assert parse_selector("has(a)") is sel  # cached
    assert sel == parse_selector(" has(a) ")
    assert sel != parse_selector("has(b)")
    assert sel != "has(a)"
    assert repr(sel) == "Selector('has(a)')"
    with pytest.raises(AttributeError):
        sel.canonical = "x"
    assert isinstance(sel, Selector)


def test_evaluate_many() -> None:
    """Many selectors against many label sets: the shape of felix's workload."""
    selectors = [parse_selector(f'app == "a{i}" || (tier in {{"t{i % 7}"}} && !has(skip))')
                 for i in range(200)]
    endpoints = [{"app": f"a{j}", "tier": f"t{j % 5}"} for j in range(200)]
    matches = sum(s.evaluate(e) for s in selectors for e in endpoints)
    expected = sum(
        1 for i in range(200) for j in range(200) if i == j or (i % 7) == (j % 5)
    )
    assert matches == expected
