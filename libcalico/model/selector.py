"""Calico selector expressions: a tokenizer, a recursive-descent parser and an evaluator.

Owns: the selector grammar of Calico v1 tiered policy (`label == "v"`, `label != "v"`,
`label in {"a", "b"}`, `label not in {...}`, `has(label)`, `!`, `&&`, `||`, parentheses,
`all()`, and the empty selector meaning "everything"), its canonical rendering, a
stable id per canonical form and a fast evaluator.

Leaves to others: deciding which selectors matter and indexing endpoints by label
(felix's calculation layer uses `labels_used` for that), and naming ipsets after
`unique_id` (felix's dataplane layer).

Grammar, lowest precedence first::

    selector := [expr] EOF              (empty means all())
    expr     := and ("||" and)*
    and      := unary ("&&" unary)*
    unary    := "!" unary | primary
    primary  := "(" expr ")" | "all" "(" ")" | "has" "(" LABEL ")"
              | LABEL ("==" | "!=") STRING | LABEL ["not"] "in" "{" [STRING ("," STRING)*] "}"

`label != "v"` and `label not in {...}` are also true when the label is absent.
Parentheses and `!` nest at most `MAX_NESTING` deep (a syntax error beyond), so no
input can exhaust the parser's, the renderer's or the evaluator's recursion.
A parsed selector is compiled into nested closures, so evaluating it costs a few
dictionary lookups and Python calls, with no tree walking and no string work.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from libcalico.errors import ValidationError

__all__ = [
    "LABEL_NAME_RE",
    "Selector",
    "SelectorSyntaxError",
    "parse_selector",
]

MAX_NESTING = 64
LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9_./-]+\Z")
_LABEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./-")
_WHITESPACE = frozenset(" \t\r\n")

Labels = Mapping[str, str]
Evaluator = Callable[[Labels], bool]


class SelectorSyntaxError(ValidationError):
    """A selector that does not parse; `column` (1-based) is where parsing stopped."""

    def __init__(self, text: str, column: int, reason: str) -> None:
        self.column = column
        super().__init__("selector", text, f"{reason} at column {column}")


# --- tokens ---------------------------------------------------------------------------

_LABEL = "label"
_STRING = "string"
_EOF = "end of selector"
_PUNCT = ("==", "!=", "&&", "||", "!", "(", ")", "{", "}", ",")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # _LABEL, _STRING, _EOF or the punctuation itself
    text: str  # label name or string contents
    pos: int  # 0-based offset into the selector text


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in _WHITESPACE:
            i += 1
        elif c in _LABEL_CHARS:
            start = i
            while i < n and text[i] in _LABEL_CHARS:
                i += 1
            tokens.append(_Token(_LABEL, text[start:i], start))
        elif c in "\"'":
            end = text.find(c, i + 1)
            if end < 0:
                raise SelectorSyntaxError(text, i + 1, "unterminated string")
            tokens.append(_Token(_STRING, text[i + 1:end], i))
            i = end + 1
        else:
            two = text[i:i + 2]
            if two in _PUNCT:
                tokens.append(_Token(two, two, i))
                i += 2
            elif c in _PUNCT:
                tokens.append(_Token(c, c, i))
                i += 1
            else:
                raise SelectorSyntaxError(text, i + 1, f"unexpected character {c!r}")
    tokens.append(_Token(_EOF, "", n))
    return tokens


# --- syntax tree ----------------------------------------------------------------------
# Each node renders itself canonically and compiles itself into a closure.

_PREC_OR = 1
_PREC_AND = 2
_PREC_UNARY = 3


def _quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


class _Node:
    prec = _PREC_UNARY

    def render(self) -> str:
        raise NotImplementedError

    def compile(self) -> Evaluator:
        raise NotImplementedError

    def labels(self) -> frozenset[str]:
        return frozenset()


class _All(_Node):
    def render(self) -> str:
        return "all()"

    def compile(self) -> Evaluator:
        return lambda labels: True


class _Has(_Node):
    def __init__(self, label: str) -> None:
        self.label = label

    def render(self) -> str:
        return f"has({self.label})"

    def compile(self) -> Evaluator:
        label = self.label
        return lambda labels: label in labels

    def labels(self) -> frozenset[str]:
        return frozenset((self.label,))


class _Compare(_Node):
    def __init__(self, label: str, negated: bool, value: str) -> None:
        self.label = label
        self.negated = negated
        self.value = value

    def render(self) -> str:
        op = "!=" if self.negated else "=="
        return f"{self.label} {op} {_quote(self.value)}"

    def compile(self) -> Evaluator:
        label, value = self.label, self.value
        if self.negated:
            return lambda labels: labels.get(label) != value
        return lambda labels: labels.get(label) == value

    def labels(self) -> frozenset[str]:
        return frozenset((self.label,))


class _InSet(_Node):
    def __init__(self, label: str, negated: bool, values: frozenset[str]) -> None:
        self.label = label
        self.negated = negated
        self.values = values

    def render(self) -> str:
        op = "not in" if self.negated else "in"
        members = ", ".join(_quote(v) for v in sorted(self.values))
        return f"{self.label} {op} {{{members}}}"

    def compile(self) -> Evaluator:
        label, values = self.label, self.values
        if self.negated:
            return lambda labels: labels.get(label) not in values
        return lambda labels: labels.get(label) in values

    def labels(self) -> frozenset[str]:
        return frozenset((self.label,))


class _Not(_Node):
    def __init__(self, operand: _Node) -> None:
        self.operand = operand

    def render(self) -> str:
        inner = self.operand.render()
        return f"!{inner}" if self.operand.prec >= _PREC_UNARY else f"!({inner})"

    def compile(self) -> Evaluator:
        inner = self.operand.compile()
        return lambda labels: not inner(labels)

    def labels(self) -> frozenset[str]:
        return self.operand.labels()


class _BoolOp(_Node):
    symbol = ""

    def __init__(self, operands: list[_Node]) -> None:
        # Flatten nested operators of the same kind: a && (b && c) == a && b && c.
        flat: list[_Node] = []
        for op in operands:
            if isinstance(op, _BoolOp) and type(op) is type(self):
                flat.extend(op.operands)
            else:
                flat.append(op)
        self.operands: list[_Node] = flat

    def render(self) -> str:
        parts = []
        for op in self.operands:
            text = op.render()
            parts.append(text if op.prec > self.prec else f"({text})")
        return f" {self.symbol} ".join(parts)

    def labels(self) -> frozenset[str]:
        return frozenset().union(*(op.labels() for op in self.operands))


class _And(_BoolOp):
    prec = _PREC_AND
    symbol = "&&"

    def compile(self) -> Evaluator:
        fns = tuple(op.compile() for op in self.operands)
        if len(fns) == 2:
            a, b = fns
            return lambda labels: a(labels) and b(labels)
        # A loop, not a chain of closures: a long `&&` must not recurse once per term.
        return lambda labels: all(fn(labels) for fn in fns)


class _Or(_BoolOp):
    prec = _PREC_OR
    symbol = "||"

    def compile(self) -> Evaluator:
        fns = tuple(op.compile() for op in self.operands)
        if len(fns) == 2:
            a, b = fns
            return lambda labels: a(labels) or b(labels)
        return lambda labels: any(fn(labels) for fn in fns)


# --- parser ---------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0  # parentheses and `!` currently open

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise SelectorSyntaxError(self.text, self.peek().pos + 1,
                                      f"nested more than {MAX_NESTING} levels deep")

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != _EOF:
            self.i += 1
        return tok

    def fail(self, expected: str) -> SelectorSyntaxError:
        return SelectorSyntaxError(self.text, self.peek().pos + 1, f"expected {expected}")

    def expect(self, kind: str, expected: str) -> _Token:
        if self.peek().kind != kind:
            raise self.fail(expected)
        return self.take()

    def parse(self) -> _Node:
        if self.peek().kind == _EOF:
            return _All()
        node = self.parse_or()
        if self.peek().kind != _EOF:
            raise self.fail("'&&', '||' or the end of the selector")
        return node

    def parse_or(self) -> _Node:
        operands = [self.parse_and()]
        while self.peek().kind == "||":
            self.take()
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else _Or(operands)

    def parse_and(self) -> _Node:
        operands = [self.parse_unary()]
        while self.peek().kind == "&&":
            self.take()
            operands.append(self.parse_unary())
        return operands[0] if len(operands) == 1 else _And(operands)

    def parse_unary(self) -> _Node:
        if self.peek().kind == "!":
            self.nest()
            self.take()
            node = _Not(self.parse_unary())
            self.depth -= 1
            return node
        return self.parse_primary()

    def parse_primary(self) -> _Node:
        tok = self.peek()
        if tok.kind == "(":
            self.nest()
            self.take()
            node = self.parse_or()
            self.expect(")", "')'")
            self.depth -= 1
            return node
        if tok.kind != _LABEL:
            raise self.fail("a label, '!', '(', 'has(' or 'all()'")
        if tok.text in ("has", "all") and self.peek(1).kind == "(":
            self.take()
            self.take()
            if tok.text == "all":
                self.expect(")", "')'")
                return _All()
            label = self.expect(_LABEL, "a label").text
            self.expect(")", "')'")
            return _Has(label)
        self.take()
        return self.parse_comparison(tok.text)

    def parse_comparison(self, label: str) -> _Node:
        tok = self.peek()
        if tok.kind in ("==", "!="):
            self.take()
            value = self.expect(_STRING, "a string").text
            return _Compare(label, tok.kind == "!=", value)
        negated = False
        if tok.kind == _LABEL and tok.text == "not":
            self.take()
            negated = True
            if not (self.peek().kind == _LABEL and self.peek().text == "in"):
                raise self.fail("'in'")
        if self.peek().kind == _LABEL and self.peek().text == "in":
            self.take()
            return _InSet(label, negated, self.parse_set())
        raise self.fail("'==', '!=', 'in' or 'not in'")

    def parse_set(self) -> frozenset[str]:
        self.expect("{", "'{'")
        values: list[str] = []
        if self.peek().kind == "}":
            self.take()
            return frozenset()
        while True:
            values.append(self.expect(_STRING, "a string").text)
            kind = self.peek().kind
            if kind not in ("}", ","):
                raise self.fail("',' or '}'")
            self.take()
            if kind == "}":
                return frozenset(values)


# --- public API -------------------------------------------------------------------------

class Selector:
    """A parsed selector. Immutable; equal (and hashed) by its canonical text.

    Fields: `canonical` is the normalised rendering (minimal parentheses, `&&`/`||`
    chains flattened, set members sorted and deduplicated, the empty selector written
    `all()`); `unique_id` is a 28-hex-digit sha224 prefix of `canonical`, stable
    across processes; `labels_used` holds every label name the selector mentions.
    """

    __slots__ = ("canonical", "unique_id", "labels_used", "_fn")

    canonical: str
    unique_id: str
    labels_used: frozenset[str]
    _fn: Evaluator

    def __init__(self, canonical: str, labels_used: frozenset[str], fn: Evaluator) -> None:
        object.__setattr__(self, "canonical", canonical)
        object.__setattr__(self, "unique_id",
                           hashlib.sha224(canonical.encode()).hexdigest()[:28])
        object.__setattr__(self, "labels_used", labels_used)
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Selector is immutable")

    def evaluate(self, labels: Labels) -> bool:
        """True when an endpoint carrying `labels` matches."""
        return self._fn(labels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and other.canonical == self.canonical

    def __hash__(self) -> int:
        return hash(self.canonical)

    def __str__(self) -> str:
        return self.canonical

    def __repr__(self) -> str:
        return f"Selector({self.canonical!r})"


def parse_selector(text: str) -> Selector:
    """Parse `text`; raise `SelectorSyntaxError` (a `ValidationError`) if it is invalid.

    Results are cached, so parsing the same text twice returns the same object.
    """
    if not isinstance(text, str):
        raise ValidationError("selector", text, "must be a string")
    try:
        text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate, say, from a "\ud800" JSON escape
        raise SelectorSyntaxError(text, exc.start + 1, "not valid Unicode text") from None
    return _parse_cached(text)


@lru_cache(maxsize=8192)
def _parse_cached(text: str) -> Selector:
    node = _Parser(text).parse()
    return Selector(node.render(), node.labels(), node.compile())
