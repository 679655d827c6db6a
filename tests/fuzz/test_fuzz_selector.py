"""Fuzzing the selector parser: any text either parses or fails with one
`SelectorSyntaxError` line naming the selector; what parses renders canonically, the
canonical form parses to itself, and evaluation agrees with the grammar's meaning."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from libcalico.errors import ValidationError
from libcalico.model.selector import Selector, SelectorSyntaxError, parse_selector
from tests.fuzz.strategies import LABELS, SELECTOR_TEXT, selector_trees


def check_error(exc: ValidationError) -> None:
    message = str(exc)
    assert "\n" not in message and exc.field == "selector", message


@given(SELECTOR_TEXT, LABELS)
def test_any_text_parses_or_fails_with_one_line_naming_the_selector(
        text: str, labels: dict[str, str]) -> None:
    try:
        sel = parse_selector(text)
    except SelectorSyntaxError as exc:
        check_error(exc)
        assert 1 <= exc.column <= len(text) + 1
        return
    assert isinstance(sel, Selector)
    again = parse_selector(sel.canonical)
    assert again.canonical == sel.canonical and again.unique_id == sel.unique_id
    assert again.evaluate(labels) == sel.evaluate(labels)
    assert len(sel.unique_id) == 28 and sel.unique_id.isalnum()


@given(selector_trees(), st.lists(LABELS, min_size=1, max_size=5))
def test_valid_selectors_evaluate_as_the_grammar_says(tree: tuple[str, Any],
                                                      label_sets: list[dict[str, str]]) -> None:
    text, reference = tree
    sel = parse_selector(text)
    canonical = parse_selector(sel.canonical)
    for labels in label_sets:
        assert sel.evaluate(labels) == bool(reference(labels)), (text, labels)
        assert canonical.evaluate(labels) == sel.evaluate(labels)


@given(st.one_of(st.integers(), st.none(), st.lists(st.text()), st.binary()))
def test_non_text_is_a_validation_error(value: object) -> None:
    try:
        parse_selector(value)  # type: ignore[arg-type]
    except ValidationError as exc:
        check_error(exc)
    else:
        raise AssertionError(f"accepted {value!r}")
