"""Fuzzing the rule grammar: the v1 JSON form (profiles, policies, `apply -f`) and the
words of `calicoctl profile P rule add`. Either a rule comes out or a `ValidationError`
whose one line names the field; an accepted rule round-trips through its canonical form."""

from __future__ import annotations

import json
import shlex
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from calicoctl.rulespec import parse_rule
from libcalico.errors import ValidationError
from libcalico.model import Rule, Rules
from tests.fuzz.strategies import JSON, RULE_ACTIONS, RULE_WORDS, TEXT, rule_dicts


def check_error(exc: ValidationError) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert message.startswith("invalid ") and exc.field is not None, message
    shown = exc.field if exc.field and exc.field.isprintable() else repr(exc.field)
    assert message.startswith(f"invalid {shown} "), message


@given(rule_dicts() | JSON)
def test_rule_json_is_a_rule_or_a_one_line_error(data: Any) -> None:
    try:
        rule = Rule.from_dict(data)
    except ValidationError as exc:
        check_error(exc)
        return
    canonical = rule.to_dict()
    assert Rule.from_dict(json.loads(json.dumps(canonical))) == rule
    assert rule.to_dict() == canonical


@given(st.dictionaries(st.sampled_from(["inbound_rules", "outbound_rules", "id"]) | TEXT,
                       st.lists(rule_dicts(), max_size=3) | JSON, max_size=3))
def test_rule_lists_name_the_failing_rule(data: dict[str, Any]) -> None:
    try:
        rules = Rules.from_dict(data)
    except ValidationError as exc:
        check_error(exc)
        return
    assert Rules.from_dict(json.loads(json.dumps(rules.to_dict()))) == rules


@given(RULE_ACTIONS, st.lists(RULE_WORDS | TEXT, max_size=10))
def test_rule_words_are_a_rule_or_a_one_line_error(action: str, words: list[str]) -> None:
    try:
        rule = parse_rule(action, words)
    except ValidationError as exc:
        check_error(exc)
        return
    if rule.log_prefix is None:  # `rule show` prints the words `rule add` takes
        shown = shlex.split(rule.pprint())
        assert parse_rule(shown[0], shown[1:]) == rule, rule.pprint()
