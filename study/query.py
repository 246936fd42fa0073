"""A small, safe filter language for the study tables.

Grammar (case-sensitive keywords ``and``, ``or``, ``not``, ``in``, ``true``,
``false``, ``null``)::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := "(" expr ")" | operand OP operand | operand "in" "(" literals ")"
    operand := column | number | 'string' | "string" | true | false | null
    OP      := == != < <= > >=

Examples: ``status == 'escaped' and lr >= 1e-3``, ``model in ('gpt2', 'mlp')``,
``escape_step == null``. Nothing is evaluated as Python: names must be columns of the
table, and the only operations are comparisons and boolean logic. ``== null`` and
``!= null`` test for missing values; other comparisons with a missing value are false.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from trainables.config import ConfigError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>'[^']*'|"[^"]*")
      | (?P<op>==|!=|<=|>=|<|>|=)
      | (?P<paren>[(),])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip
_KEYWORDS = {"and", "or", "not", "in"}
_LITERALS = {"true": True, "false": False, "null": None}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, op, paren, name, end
    text: str
    pos: int


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Compare:
    op: str
    left: Column | Literal
    right: Column | Literal


@dataclass(frozen=True)
class Member:
    column: Column
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class BoolOp:
    op: str  # and, or
    operands: tuple[Node, ...]


Node = Compare | Member | Not | BoolOp


def parse(expr: str) -> Node:
    """Parses a filter expression.

    Args:
        expr: the expression text.

    Returns:
        The expression tree.

    Raises:
        ConfigError: a malformed expression (field ``where``).
    """
    parser = _Parser(expr, _tokenize(expr))
    node = parser.expression()
    parser.expect_end()
    return node


def columns_of(node: Node) -> set[str]:
    """The column names an expression refers to."""
    if isinstance(node, Compare):
        return {x.name for x in (node.left, node.right) if isinstance(x, Column)}
    if isinstance(node, Member):
        return {node.column.name}
    if isinstance(node, Not):
        return columns_of(node.operand)
    return set().union(*(columns_of(o) for o in node.operands))


def filter_frame(frame: pd.DataFrame, expr: str | None) -> pd.DataFrame:
    """The rows of ``frame`` where ``expr`` holds.

    Args:
        frame: a study table.
        expr: a filter expression (see the module docstring); None keeps every row.

    Returns:
        The matching rows, in their original order.

    Raises:
        ConfigError: a malformed expression or an unknown column (field ``where``).
    """
    if expr is None or not expr.strip():
        return frame
    node = parse(expr)
    unknown = sorted(columns_of(node) - set(frame.columns))
    if unknown:
        raise ConfigError(
            "where",
            expr,
            f"unknown column {unknown[0]!r} (text values need quotes); columns: "
            f"{', '.join(map(str, frame.columns))}",
        )
    mask = _evaluate(node, frame)
    return frame[mask.to_numpy(dtype=bool)]


def select_columns(frame: pd.DataFrame, columns: Sequence[str] | None) -> pd.DataFrame:
    """The named columns of ``frame``, in the given order.

    Raises:
        ConfigError: an unknown column (field ``columns``).
    """
    if not columns:
        return frame
    for name in columns:
        if name not in frame.columns:
            raise ConfigError(
                "columns",
                name,
                f"must be columns of the table: {', '.join(map(str, frame.columns))}",
            )
    return frame[list(columns)]


# tokens and parsing -------------------------------------------------------------------


def _tokenize(expr: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        match = _TOKEN.match(expr, pos)
        if match is None or match.end() == pos:
            raise ConfigError(
                "where",
                expr,
                f"unexpected character {expr[pos:].lstrip()[0]!r} "
                f"at position {pos + 1}; allowed: column names, numbers, quoted "
                "strings, == != < <= > >=, and, or, not, in, parentheses",
            )
        kind = match.lastgroup or ""
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        pos = match.end()
    tokens.append(_Token("end", "", len(expr)))
    return tokens


class _Parser:
    def __init__(self, expr: str, tokens: list[_Token]) -> None:
        self.expr = expr
        self.tokens = tokens
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def fail(self, what: str) -> ConfigError:
        where = "the end" if self.tok.kind == "end" else f"{self.tok.text!r}"
        return ConfigError(
            "where", self.expr, f"expected {what} at {where} (position {self.tok.pos + 1})"
        )

    def take(self, kind: str, text: str | None = None) -> bool:
        if self.tok.kind == kind and (text is None or self.tok.text == text):
            self.i += 1
            return True
        return False

    def expect_end(self) -> None:
        if self.tok.kind != "end":
            raise self.fail("'and', 'or' or the end")

    def expression(self) -> Node:
        operands = [self.conjunction()]
        while self.take("name", "or"):
            operands.append(self.conjunction())
        return operands[0] if len(operands) == 1 else BoolOp("or", tuple(operands))

    def conjunction(self) -> Node:
        operands = [self.negation()]
        while self.take("name", "and"):
            operands.append(self.negation())
        return operands[0] if len(operands) == 1 else BoolOp("and", tuple(operands))

    def negation(self) -> Node:
        if self.take("name", "not"):
            return Not(self.negation())
        return self.comparison()

    def comparison(self) -> Node:
        if self.take("paren", "("):
            node = self.expression()
            if not self.take("paren", ")"):
                raise self.fail("')'")
            return node
        left = self.operand()
        if self.take("name", "in"):
            if not isinstance(left, Column):
                raise self.fail("a column before 'in'")
            return Member(left, self.literal_list())
        op = self.tok.text if self.tok.kind == "op" else None
        if op is None or op == "=":
            raise self.fail("a comparison (== != < <= > >=) or 'in'")
        self.i += 1
        return Compare(op, left, self.operand())

    def operand(self) -> Column | Literal:
        tok = self.tok
        if tok.kind == "number":
            self.i += 1
            return Literal(float(tok.text) if re.search(r"[.eE]", tok.text) else int(tok.text))
        if tok.kind == "string":
            self.i += 1
            return Literal(tok.text[1:-1])
        if tok.kind == "name" and tok.text in _LITERALS:
            self.i += 1
            return Literal(_LITERALS[tok.text])
        if tok.kind == "name" and tok.text not in _KEYWORDS:
            self.i += 1
            return Column(tok.text)
        raise self.fail("a column, number, quoted string, true, false or null")

    def literal_list(self) -> tuple[Any, ...]:
        if not self.take("paren", "("):
            raise self.fail("'(' after 'in'")
        values = []
        while True:
            item = self.operand()
            if not isinstance(item, Literal):
                raise self.fail("a literal value in the 'in' list")
            values.append(item.value)
            if self.take("paren", ")"):
                return tuple(values)
            if not self.take("paren", ","):
                raise self.fail("',' or ')'")
            if self.take("paren", ")"):  # a trailing comma, as in ('gpt2',)
                return tuple(values)


# evaluation ---------------------------------------------------------------------------


def _evaluate(node: Node, frame: pd.DataFrame) -> pd.Series:
    if isinstance(node, BoolOp):
        masks = [_evaluate(o, frame) for o in node.operands]
        out = masks[0]
        for mask in masks[1:]:
            out = (out & mask) if node.op == "and" else (out | mask)
        return out
    if isinstance(node, Not):
        return ~_evaluate(node.operand, frame)
    if isinstance(node, Member):
        values = frame[node.column.name]
        return values.apply(lambda v: any(_equal(v, x) for x in node.values)).astype(bool)
    return _compare(node, frame)


def _compare(node: Compare, frame: pd.DataFrame) -> pd.Series:
    left, right = _values(node.left, frame), _values(node.right, frame)
    for null, other in ((node.right, left), (node.left, right)):
        if isinstance(null, Literal) and null.value is None and node.op in ("==", "!="):
            missing = _missing(other, frame.index)
            return missing if node.op == "==" else ~missing
    compare = _COMPARE[node.op]
    pairs = zip(_as_list(left, len(frame)), _as_list(right, len(frame)), strict=True)
    return pd.Series([_safe(compare, a, b) for a, b in pairs], index=frame.index, dtype=bool)


def _values(operand: Column | Literal, frame: pd.DataFrame) -> Any:
    return frame[operand.name] if isinstance(operand, Column) else operand.value


def _as_list(values: Any, n: int) -> list[Any]:
    return list(values) if isinstance(values, pd.Series) else [values] * n


def _missing(values: Any, index: pd.Index) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.isna()
    return pd.Series(_is_missing(values), index=index, dtype=bool)


def _safe(compare: Callable[[Any, Any], Any], a: Any, b: Any) -> bool:
    if _is_missing(a) or _is_missing(b):
        return compare is operator.ne and not (_is_missing(a) and _is_missing(b))
    try:
        return bool(compare(a, b))
    except TypeError:  # e.g. a string against a number: not equal, not ordered
        return compare is operator.ne


def _equal(a: Any, b: Any) -> bool:
    if _is_missing(a) or _is_missing(b):
        return _is_missing(a) and _is_missing(b)
    return bool(a == b)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA
