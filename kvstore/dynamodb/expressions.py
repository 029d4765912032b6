"""Parsing DynamoDB's condition, filter, update, projection and key condition expressions.

Theory of operation
-------------------
One hand-written tokenizer and one recursive-descent parser cover the five expression kinds and
produce the trees of :mod:`kvstore.dynamodb.expression_tree` (re-exported here), placeholders
substituted. Why not a parser library: the grammar is small (a page), every refusal must carry
AWS's exact wording ("Syntax error; token: ..., near: ...", "The expression has redundant
parentheses", "Two document paths overlap..."), which generated parsers make awkward, and the
work must be bounded on hostile input, which is easiest to see in code we wrote.

Bounds. The text is at most ``DYNAMODB_EXPRESSION_BYTES_MAX`` bytes, checked before anything
else, and at most ``DYNAMODB_EXPRESSION_OPERATORS_MAX`` operators (comparisons, BETWEEN, IN,
AND, OR, NOT, ``+``, ``-``; not parentheses or functions: AWS's count). The AND/OR/NOT layer of
a condition is parsed with an explicit operator stack (precedence NOT > AND > OR, parentheses),
not by recursion, so AWS-valid nesting such as 149 levels of ``a<b or (...)`` costs no Python
stack; chains of one connective become one n-ary node, and every other node needs an operator of
its own, so a tree is at most ``DYNAMODB_EXPRESSION_OPERATORS_MAX + 1`` deep. The only recursion
is through function arguments (``list_append(if_not_exists(a, :e), :v)``), bounded by
``DYNAMODB_EXPRESSION_DEPTH_MAX``. Paths have at most ``DYNAMODB_NESTING_MAX + 1`` elements
(deeper could never match a stored item), so everything walking a path is bounded too.

Checks made here, not at evaluation: placeholders defined (and recorded as used, see
:class:`Placeholders`), bare names not reserved words, function names and arity, operands that
must be paths, literal operand types (``<`` and BETWEEN take S, N or B; BETWEEN bounds of one
type with lower <= upper; begins_with takes S or B; ADD takes N or a set, DELETE a set; ``+``
and ``-`` take N; list_append takes L), each update clause at most once, no two update or
projection paths overlapping (``a`` and ``a.b``) or conflicting (``a.b`` and ``a[0]``), no update
of a key attribute when the caller names the keys, and the shape of a key condition.
Every message starts "Invalid <Expression>: " as AWS's do, except the few AWS words otherwise.

The legacy parameters (``Expected``, ``AttributeUpdates``, ``KeyConditions``, ``QueryFilter``,
``ScanFilter``, ``AttributesToGet``) translate into the same trees in
:mod:`kvstore.dynamodb.legacy`, re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from kvstore.dynamodb.attributes import (
    SCALAR_TYPES,
    SET_TYPES,
    TYPE_NAMES,
    TYPES,
    compare,
    describe,
    serialization_error,
    type_of,
)
from kvstore.dynamodb.expression_tree import (
    AddAction,
    And,
    Arithmetic,
    AttributeExists,
    AttributeNotExists,
    AttributeType,
    BeginsWith,
    Between,
    Comparison,
    Condition,
    Contains,
    DeleteAction,
    DocumentPath,
    IfNotExists,
    In,
    KeyCondition,
    ListAppend,
    Literal,
    Not,
    Operand,
    Or,
    Path,
    Placeholders,
    Projection,
    RangeTest,
    RemoveAction,
    SetAction,
    SetValue,
    Size,
    Update,
    format_path,
)
from kvstore.dynamodb.legacy import (
    condition_from_expected,
    condition_from_filter,
    key_condition_from_legacy,
    projection_from_attributes_to_get,
    update_from_attribute_updates,
)
from kvstore.dynamodb.reserved import is_reserved
from kvstore.errors import ValidationError
from kvstore.limits import (
    DYNAMODB_EXPRESSION_BYTES_MAX,
    DYNAMODB_EXPRESSION_DEPTH_MAX,
    DYNAMODB_EXPRESSION_OPERATORS_MAX,
    DYNAMODB_IN_OPERANDS_MAX,
    DYNAMODB_NESTING_MAX,
)
from kvstore.types import Value

__all__ = [
    "Placeholders",
    "parse_condition",
    "parse_update",
    "parse_projection",
    "parse_key_condition",
    "paths_clash",
    # The legacy parameters (kvstore.dynamodb.legacy), re-exported:
    "condition_from_expected",
    "condition_from_filter",
    "key_condition_from_legacy",
    "update_from_attribute_updates",
    "projection_from_attributes_to_get",
    # The trees (kvstore.dynamodb.expression_tree), re-exported:
    "DocumentPath",
    "Path",
    "Literal",
    "Size",
    "Operand",
    "Comparison",
    "Between",
    "In",
    "AttributeExists",
    "AttributeNotExists",
    "AttributeType",
    "BeginsWith",
    "Contains",
    "And",
    "Or",
    "Not",
    "Condition",
    "Arithmetic",
    "IfNotExists",
    "ListAppend",
    "SetValue",
    "SetAction",
    "RemoveAction",
    "AddAction",
    "DeleteAction",
    "Update",
    "Projection",
    "RangeTest",
    "KeyCondition",
    "format_path",
]

# Whitespace, then one token: a name, a list index, a #name or :value placeholder, a symbol.
_TOKEN: Final = re.compile(
    r"[ \t\r\n]*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>[0-9]+)"
    r"|(?P<ref>[#:][A-Za-z0-9_]+)|(?P<symbol><>|<=|>=|[()\[\],.=<>+\-]))"
)
_SPACE: Final = re.compile(r"[ \t\r\n]*")
_COMPARATORS: Final = frozenset({"=", "<>", "<", "<=", ">", ">="})
_ORDERING: Final = frozenset({"<", "<=", ">", ">="})
_FLIPPED: Final = {"=": "=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_CONDITION_FUNCTIONS: Final = frozenset(
    {"attribute_exists", "attribute_not_exists", "attribute_type", "begins_with", "contains"}
)
_UPDATE_FUNCTIONS: Final = frozenset({"if_not_exists", "list_append"})
_CLAUSES: Final = ("SET", "REMOVE", "ADD", "DELETE")
_PRECEDENCE: Final = {"OR": 1, "AND": 2, "NOT": 3}
_EOF: Final = "<EOF>"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # name, number, ref, or the symbol itself; "eof" at the end
    text: str
    start: int
    end: int


def _tokenize(text: str, fail: _Failer) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while True:
        match = _TOKEN.match(text, position)
        if match is None:
            rest = _SPACE.match(text, position)
            start = rest.end() if rest else position
            if start >= len(text):
                break
            previous = tokens[-1].start if tokens else start
            raise fail.error(
                f'Syntax error; token: "{text[start]}", near: "{text[previous : start + 1]}"'
            )
        kind = match.lastgroup or "symbol"
        token_text = match[kind]
        tokens.append(
            _Token(
                token_text if kind == "symbol" else kind, token_text, match.start(kind), match.end()
            )
        )
        position = match.end()
    tokens.append(_Token("eof", _EOF, len(text), len(text)))
    return tokens


class _Failer:
    """Builds the errors of one expression: AWS prefixes them with the parameter's name."""

    __slots__ = ("expression",)

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def error(self, message: str) -> ValidationError:
        return ValidationError("", f"Invalid {self.expression}: {message}")


def _type_error(fail: _Failer, operator: str, value: Value, *, function: bool = True) -> None:
    label = "operator or function" if function else "operator"
    raise fail.error(
        f"Incorrect operand type for operator or function; {label}: {operator}, "
        f"operand type: {TYPE_NAMES[type_of(value)]}"
    )


def paths_clash(one: DocumentPath, two: DocumentPath) -> str | None:
    """ "overlap" when one path is the other or inside it, "conflict" when they part at a step
    that is a name in one and an index in the other, else None."""
    for a, b in zip(one, two, strict=False):
        if a == b and type(a) is type(b):
            continue
        return "conflict" if isinstance(a, int) != isinstance(b, int) else None
    return "overlap"


class _Parser:
    """One parse of one expression; ``pos`` walks ``tokens``."""

    __slots__ = ("fail", "operators", "placeholders", "pos", "text", "tokens")

    def __init__(self, text: object, placeholders: Placeholders, expression: str) -> None:
        self.fail = _Failer(expression)
        if not isinstance(text, str):
            raise serialization_error(f"{expression} must be a string")
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > DYNAMODB_EXPRESSION_BYTES_MAX:
            raise self.fail.error(
                f"Expression size has exceeded the maximum allowed size; expression size: {size}"
            )
        if not text.strip(" \t\r\n"):
            raise self.fail.error("The expression can not be empty;")
        self.text = text
        self.placeholders = placeholders
        self.tokens = _tokenize(text, self.fail)
        self.pos = 0
        self.operators = 0

    # --- tokens ---------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.tokens[self.pos]
        if token.kind != "eof":
            self.pos += 1
        return token

    def syntax_error(self, token: _Token | None = None) -> ValidationError:
        token = token or self.peek()
        index = self.tokens.index(token)
        start = self.tokens[index - 1].start if index > 0 else token.start
        near = self.text[start : token.end] if token.kind != "eof" else self.text[start:]
        return self.fail.error(f'Syntax error; token: "{token.text}", near: "{near}"')

    def expect(self, kind: str) -> _Token:
        if self.peek().kind != kind:
            raise self.syntax_error()
        return self.advance()

    def at_keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "name" and token.text.upper() == word

    def at_function(self) -> bool:
        return self.peek().kind == "name" and self.peek(1).kind == "("

    def end(self) -> None:
        if self.peek().kind != "eof":
            raise self.syntax_error()

    def count_operator(self) -> None:
        self.operators += 1
        if self.operators > DYNAMODB_EXPRESSION_OPERATORS_MAX:
            raise self.fail.error(
                f"The expression contains too many operators; operator count: {self.operators}"
            )

    # --- paths and operands ---------------------------------------------------------------

    def path_element(self) -> str:
        token = self.advance()
        if token.kind == "name":
            if is_reserved(token.text):
                raise self.fail.error(
                    f"Attribute name is a reserved keyword; reserved keyword: {token.text}"
                )
            return token.text
        if token.kind == "ref" and token.text[0] == "#":
            name = self.placeholders.name(token.text)
            if name is None:
                raise self.fail.error(
                    "An expression attribute name used in the document path is not defined; "
                    f"attribute name: {token.text}"
                )
            return name
        raise self.syntax_error(token)

    def path(self) -> DocumentPath:
        elements: list[str | int] = [self.path_element()]
        while True:
            if self.peek().kind == ".":
                self.advance()
                elements.append(self.path_element())
            elif self.peek().kind == "[":
                self.advance()
                elements.append(int(self.expect("number").text))
                self.expect("]")
            else:
                break
            if len(elements) > DYNAMODB_NESTING_MAX + 1:
                raise self.fail.error(
                    "The document path has too many nesting levels; "
                    f"nesting levels: {len(elements) - 1}"
                )
        return tuple(elements)

    def literal(self) -> Value:
        token = self.advance()
        value = self.placeholders.value(token.text)
        if value is None:
            raise self.fail.error(
                "An expression attribute value used in expression is not defined; "
                f"attribute value: {token.text}"
            )
        return value

    def arguments(self, function: str, depth: int, count: int) -> list[Operand | SetValue]:
        """``( operand, ... )`` of ``function``; exactly ``count`` of them."""
        if depth >= DYNAMODB_EXPRESSION_DEPTH_MAX:
            raise self.fail.error("The expression is nested too deeply")
        self.expect("(")
        found: list[Operand | SetValue] = [
            self.operand(depth + 1, update=function in _UPDATE_FUNCTIONS)
        ]
        while self.peek().kind == ",":
            self.advance()
            found.append(self.operand(depth + 1, update=function in _UPDATE_FUNCTIONS))
        self.expect(")")
        if len(found) != count:
            raise self.fail.error(
                "Incorrect number of operands for operator or function; "
                f"operator or function: {function}, number of operands: {len(found)}"
            )
        return found

    def path_argument(self, function: str, argument: Operand | SetValue) -> DocumentPath:
        if not isinstance(argument, Path):
            raise self.fail.error(
                f"Operator or function requires a document path; operator or function: {function}"
            )
        return argument.path

    def operand(self, depth: int = 0, *, update: bool = False) -> SetValue | Size:
        """A path, a ``:value`` or a function call (size in conditions, if_not_exists and
        list_append in SET values)."""
        token = self.peek()
        if token.kind == "ref" and token.text[0] == ":":
            return Literal(self.literal())
        if self.at_function():
            return self.function_operand(depth, update=update)
        if token.kind in ("name", "ref"):
            return Path(self.path())
        raise self.syntax_error()

    def function_operand(self, depth: int, *, update: bool) -> SetValue | Size:
        name = self.advance().text
        if name == "size" and not update:
            (argument,) = self.arguments(name, depth, 1)
            return Size(self.path_argument(name, argument))
        if name in _UPDATE_FUNCTIONS and update:
            first, second = self.arguments(name, depth, 2)
            if name == "if_not_exists":
                return IfNotExists(self.path_argument(name, first), self.set_operand(second))
            for argument in (first, second):
                if isinstance(argument, Literal) and type_of(argument.value) != "L":
                    _type_error(self.fail, name, argument.value)
            return ListAppend(self.set_operand(first), self.set_operand(second))
        if name in _CONDITION_FUNCTIONS or name in _UPDATE_FUNCTIONS or name == "size":
            where = "an update expression" if update else "this expression"
            raise self.fail.error(
                f"The function is not allowed to be used this way in {where}; function: {name}"
            )
        raise self.fail.error(f"Invalid function name; function: {name}")

    def set_operand(self, operand: Operand | SetValue) -> SetValue:
        if isinstance(operand, Size):  # not produced with update=True
            raise self.fail.error("The function is not allowed in an update expression")
        return operand

    def condition_operand(self) -> Operand:
        operand = self.operand()
        if isinstance(operand, Path | Literal | Size):
            return operand
        raise self.syntax_error()  # not reached: update functions are refused above

    # --- conditions -----------------------------------------------------------------------

    def condition(self) -> Condition:
        """AND/OR/NOT and parentheses over atoms, with an explicit operator stack."""
        output: list[tuple[Condition, bool]] = []  # (tree, written in its own parentheses)
        pending: list[str] = []  # "(", "NOT", "AND", "OR"
        open_parentheses = 0
        expect_atom = True
        while True:
            token = self.peek()
            if expect_atom:
                if self.at_keyword("NOT"):
                    self.advance()
                    self.count_operator()
                    pending.append("NOT")
                elif token.kind == "(":
                    self.advance()
                    open_parentheses += 1
                    pending.append("(")
                else:
                    output.append((self.atom(), False))
                    expect_atom = False
                continue
            if self.at_keyword("AND") or self.at_keyword("OR"):
                word = self.advance().text.upper()
                self.count_operator()
                while (
                    pending and pending[-1] != "(" and _PRECEDENCE[pending[-1]] >= _PRECEDENCE[word]
                ):
                    self._reduce(pending.pop(), output)
                pending.append(word)
                expect_atom = True
            elif token.kind == ")" and open_parentheses:
                self.advance()
                open_parentheses -= 1
                applied = False
                while pending[-1] != "(":
                    self._reduce(pending.pop(), output)
                    applied = True
                pending.pop()
                tree, parenthesised = output[-1]
                if parenthesised and not applied:
                    raise self.fail.error("The expression has redundant parentheses;")
                output[-1] = (tree, True)
            else:
                break
        while pending:
            operator = pending.pop()
            if operator == "(":
                raise self.syntax_error()
            self._reduce(operator, output)
        return output[0][0]

    @staticmethod
    def _reduce(operator: str, output: list[tuple[Condition, bool]]) -> None:
        if operator == "NOT":
            output[-1] = (Not(output[-1][0]), False)
            return
        right, _ = output.pop()
        left, _ = output.pop()
        kind = And if operator == "AND" else Or
        parts: list[Condition] = []
        for side in (left, right):
            if isinstance(side, kind):
                parts.extend(side.conditions)
            else:
                parts.append(side)
        output.append((kind(tuple(parts)), False))

    def atom(self) -> Condition:
        if self.at_function() and self.peek().text in _CONDITION_FUNCTIONS:
            return self.condition_function()
        left = self.condition_operand()
        token = self.peek()
        if token.kind in _COMPARATORS:
            self.advance()
            self.count_operator()
            right = self.condition_operand()
            if token.kind in _ORDERING:
                self.check_orderable(token.kind, left, right)
            return Comparison(token.kind, left, right)
        if self.at_keyword("BETWEEN"):
            self.advance()
            self.count_operator()
            low = self.condition_operand()
            if not self.at_keyword("AND"):
                raise self.syntax_error()
            self.advance()
            high = self.condition_operand()
            self.check_between(left, low, high)
            return Between(left, low, high)
        if self.at_keyword("IN"):
            self.advance()
            self.count_operator()
            self.expect("(")
            choices = [self.condition_operand()]
            while self.peek().kind == ",":
                self.advance()
                choices.append(self.condition_operand())
                if len(choices) > DYNAMODB_IN_OPERANDS_MAX:
                    raise self.fail.error(
                        "The IN operator is provided with too many operands; "
                        f"number of operands: {len(choices)}, maximum: {DYNAMODB_IN_OPERANDS_MAX}"
                    )
            self.expect(")")
            return In(left, tuple(choices))
        if isinstance(left, Size):
            raise self.fail.error(
                "The function is not allowed to be used this way in an expression; function: size"
            )
        raise self.syntax_error()

    def check_orderable(self, operator: str, *operands: Operand) -> None:
        for operand in operands:
            if isinstance(operand, Literal) and type_of(operand.value) not in SCALAR_TYPES:
                _type_error(self.fail, operator, operand.value)

    def check_between(self, operand: Operand, low: Operand, high: Operand) -> None:
        self.check_orderable("BETWEEN", operand, low, high)
        if isinstance(low, Literal) and isinstance(high, Literal):
            order = compare(low.value, high.value)
            if order is None:
                raise self.fail.error(
                    "The BETWEEN operator requires same data type for lower and upper bounds; "
                    f"lower bound operand: {describe(low.value)}, "
                    f"upper bound operand: {describe(high.value)}"
                )
            if order > 0:
                raise self.fail.error(
                    "The BETWEEN operator requires upper bound to be greater than or equal to "
                    f"lower bound; lower operand: {describe(low.value)}, "
                    f"upper operand: {describe(high.value)}"
                )

    def condition_function(self) -> Condition:
        name = self.advance().text
        if name in ("attribute_exists", "attribute_not_exists"):
            (argument,) = self.arguments(name, 0, 1)
            path = self.path_argument(name, argument)
            return AttributeExists(path) if name == "attribute_exists" else AttributeNotExists(path)
        first, second = self.arguments(name, 0, 2)
        if name == "attribute_type":
            path = self.path_argument(name, first)
            if not isinstance(second, Literal):
                raise self.fail.error(
                    "Incorrect operand type for operator or function; "
                    f"operator or function: {name}, operand type: document path"
                )
            tag = second.value.get("S") if isinstance(second.value, dict) else None
            if type_of(second.value) != "S" or tag not in TYPES:
                raise self.fail.error(
                    f"Invalid attribute type name found; type: {tag}, "
                    "valid types: { B,BOOL,BS,L,M,N,NS,NULL,S,SS }"
                    if isinstance(tag, str)
                    else "Incorrect operand type for operator or function; "
                    f"operator or function: {name}, "
                    f"operand type: {TYPE_NAMES[type_of(second.value)]}"
                )
            assert isinstance(tag, str)
            return AttributeType(path, tag)
        left, right = self.condition_operand_of(first), self.condition_operand_of(second)
        if name == "begins_with":
            for argument in (left, right):
                if isinstance(argument, Literal) and type_of(argument.value) not in ("S", "B"):
                    _type_error(self.fail, name, argument.value)
            return BeginsWith(left, right)
        return Contains(left, right)

    def condition_operand_of(self, argument: Operand | SetValue) -> Operand:
        if isinstance(argument, Path | Literal | Size):
            return argument
        raise self.fail.error("The function is not allowed to be used this way in an expression")

    # --- updates --------------------------------------------------------------------------

    def update(self) -> Update:
        clauses: dict[str, list[object]] = {}
        while self.peek().kind != "eof":
            token = self.advance()
            word = token.text.upper() if token.kind == "name" else ""
            if word not in _CLAUSES:
                raise self.syntax_error(token)
            if word in clauses:
                raise self.fail.error(
                    f'The "{word}" section can only be used once in an update expression;'
                )
            actions: list[object] = [self.update_action(word)]
            while self.peek().kind == ",":
                self.advance()
                actions.append(self.update_action(word))
            clauses[word] = actions
        return Update(
            set=tuple(a for a in clauses.get("SET", ()) if isinstance(a, SetAction)),
            remove=tuple(a for a in clauses.get("REMOVE", ()) if isinstance(a, RemoveAction)),
            add=tuple(a for a in clauses.get("ADD", ()) if isinstance(a, AddAction)),
            delete=tuple(a for a in clauses.get("DELETE", ()) if isinstance(a, DeleteAction)),
        )

    def update_action(self, clause: str) -> SetAction | RemoveAction | AddAction | DeleteAction:
        path = self.path()
        if clause == "REMOVE":
            return RemoveAction(path)
        if clause == "SET":
            self.expect("=")
            return SetAction(path, self.set_value())
        token = self.peek()
        if not (token.kind == "ref" and token.text[0] == ":"):
            raise self.syntax_error()
        value = self.literal()
        tag = type_of(value)
        if clause == "ADD":
            if tag != "N" and tag not in SET_TYPES:
                _type_error(self.fail, "ADD", value, function=False)
            return AddAction(path, value)
        if tag not in SET_TYPES:
            _type_error(self.fail, "DELETE", value, function=False)
        return DeleteAction(path, value)

    def set_value(self) -> SetValue:
        left = self.set_operand(self.operand(update=True))
        token = self.peek()
        if token.kind not in ("+", "-"):
            return left
        self.advance()
        self.count_operator()
        right = self.set_operand(self.operand(update=True))
        for side in (left, right):
            if isinstance(side, Literal) and type_of(side.value) != "N":
                _type_error(self.fail, token.kind, side.value)
        return Arithmetic(token.kind, left, right)


# --- the entry points ---------------------------------------------------------------------


def parse_condition(
    text: object, placeholders: Placeholders, *, expression: str = "ConditionExpression"
) -> Condition:
    """A ConditionExpression (or, with ``expression="FilterExpression"``, a filter)."""
    parser = _Parser(text, placeholders, expression)
    condition = parser.condition()
    parser.end()
    return condition


def _check_clashes(fail: _Failer, paths: tuple[DocumentPath, ...]) -> None:
    for index, one in enumerate(paths):
        for two in paths[index + 1 :]:
            clash = paths_clash(one, two)
            if clash is not None:
                raise fail.error(
                    f"Two document paths {clash} with each other; must remove or rewrite one of "
                    f"these paths; path one: {format_path(one)}, path two: {format_path(two)}"
                )


def parse_update(
    text: object, placeholders: Placeholders, *, key_names: Collection[str] = ()
) -> Update:
    """An UpdateExpression; ``key_names`` are the table's key attributes, which no action may
    touch."""
    parser = _Parser(text, placeholders, "UpdateExpression")
    update = parser.update()
    paths = update.paths()
    for path in paths:
        if path[0] in key_names:
            raise ValidationError(
                "",
                f"One or more parameter values were invalid: Cannot update attribute {path[0]}. "
                "This attribute is part of the key",
            )
    _check_clashes(parser.fail, paths)
    return update


def parse_projection(text: object, placeholders: Placeholders) -> Projection:
    """A ProjectionExpression: paths separated by commas, none overlapping another."""
    parser = _Parser(text, placeholders, "ProjectionExpression")
    paths = [parser.path()]
    while parser.peek().kind == ",":
        parser.advance()
        paths.append(parser.path())
    parser.end()
    _check_clashes(parser.fail, tuple(paths))
    return Projection(tuple(paths))


def _key_test(fail: _Failer, condition: Condition) -> RangeTest:
    """One test of a key condition as (attribute name, operator, values)."""
    if isinstance(condition, Or | Not | In):
        word = {Or: "OR", Not: "NOT", In: "IN"}[type(condition)]
        raise fail.error(f"Invalid operator used in KeyConditionExpression: {word}")
    if isinstance(condition, AttributeExists | AttributeNotExists | AttributeType | Contains):
        word = {
            AttributeExists: "attribute_exists",
            AttributeNotExists: "attribute_not_exists",
            AttributeType: "attribute_type",
            Contains: "contains",
        }[type(condition)]
        raise fail.error(f"Invalid operator used in KeyConditionExpression: {word}")
    if isinstance(condition, Comparison):
        if condition.operator == "<>":
            raise fail.error("Invalid operator used in KeyConditionExpression: <>")
        operator, left, right = condition.operator, condition.left, condition.right
        if isinstance(left, Literal) and isinstance(right, Path):
            operator, left, right = _FLIPPED[operator], right, left
        return _key_operands(fail, operator, left, (right,))
    if isinstance(condition, Between):
        return _key_operands(fail, "BETWEEN", condition.operand, (condition.low, condition.high))
    if isinstance(condition, BeginsWith):
        return _key_operands(fail, "begins_with", condition.operand, (condition.prefix,))
    raise fail.error("Conditions can be of length 1 or 2 only")


def _key_operands(
    fail: _Failer, operator: str, subject: Operand, values: tuple[Operand, ...]
) -> RangeTest:
    if isinstance(subject, Size) or any(isinstance(v, Size) for v in values):
        raise fail.error("Invalid operator used in KeyConditionExpression: size")
    if not isinstance(subject, Path):
        raise fail.error("Invalid condition in KeyConditionExpression: No key attribute specified")
    literals = [v.value for v in values if isinstance(v, Literal)]
    if len(literals) != len(values):
        raise fail.error(
            "Invalid condition in KeyConditionExpression: Multiple attribute names used in one "
            "condition"
        )
    if len(subject.path) != 1 or not isinstance(subject.path[0], str):
        raise fail.error("KeyConditionExpressions cannot have conditions on nested attributes")
    return RangeTest(subject.path[0], operator, tuple(literals))


def parse_key_condition(
    text: object,
    placeholders: Placeholders,
    *,
    hash_key: str | None = None,
    range_key: str | None = None,
) -> KeyCondition:
    """A KeyConditionExpression: ``hash = :v`` and optionally one sort-key test (``= < <= > >=``,
    BETWEEN, begins_with). With the table's key names the tests are matched to them (AWS's
    errors for a missing or foreign key); without, the first equality test is the hash key's."""
    parser = _Parser(text, placeholders, "KeyConditionExpression")
    condition = parser.condition()
    parser.end()
    fail = parser.fail
    parts = condition.conditions if isinstance(condition, And) else (condition,)
    if len(parts) > 2:
        raise fail.error("Conditions can be of length 1 or 2 only")
    tests = [_key_test(fail, part) for part in parts]
    if len(tests) == 2 and tests[0].name == tests[1].name:
        raise ValidationError("", "KeyConditionExpressions must only contain one condition per key")
    if hash_key is not None:
        hashes = [t for t in tests if t.name == hash_key]
        if not hashes:
            raise ValidationError("", f"Query condition missed key schema element: {hash_key}")
    else:
        hashes = [t for t in tests if t.operator == "="][:1] or tests[:1]
    hash_test = hashes[0]
    if hash_test.operator != "=":
        raise ValidationError("", "Query key condition not supported")
    others = [t for t in tests if t is not hash_test]
    range_test = others[0] if others else None
    if range_test is not None and range_key is not None and range_test.name != range_key:
        raise ValidationError("", f"Query condition missed key schema element: {range_key}")
    if range_test is not None and hash_key is not None and range_key is None:
        raise ValidationError("", "Query key condition not supported")
    return KeyCondition(hash_test.name, hash_test.values[0], range_test)
