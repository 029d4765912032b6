"""Condition and update trees written back as source: the parser reads back the same tree.

Goal: the legacy parameters reach the storage node as expression source built by
:mod:`kvstore.dynamodb.unparse`, and the node parses it again; so for every tree the parser can
produce, ``parse(unparse(tree)) == tree``, and the node's evaluation of the source (through the
op's JSON form, as a peer receives it) agrees with evaluating the tree. Method: hypothesis
generates trees in the parser's normal form over awkward attribute names (reserved words, dots,
placeholder look-alikes, any text), every value type and every node kind, and items over the same
names; plus the legacy translations of generated ``Expected`` and ``AttributeUpdates`` maps.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.dynamodb.attributes import SET_TYPES, TYPES, compare, type_of, value_to_wire
from kvstore.dynamodb.evaluate import apply_update, condition_holds
from kvstore.dynamodb.expressions import (
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
    IfNotExists,
    In,
    ListAppend,
    Literal,
    Not,
    Or,
    Path,
    Placeholders,
    RemoveAction,
    SetAction,
    SetValue,
    Size,
    Update,
    condition_from_expected,
    parse_condition,
    parse_update,
    update_from_attribute_updates,
)
from kvstore.dynamodb.payloads import (
    ExpressionCondition,
    ExpressionSource,
    ExpressionUpdate,
    apply_expression_update,
    expression_condition_holds,
)
from kvstore.dynamodb.unparse import Unparsed, unparse_condition, unparse_update
from kvstore.errors import ValidationError
from kvstore.ops import Op, OpKind, op_from_json, op_to_json
from kvstore.types import Value

# --- generated values, paths and items ----------------------------------------------------

AWKWARD = ["a", "b", "a.b", "size", "AND", "NOT", "#n0", ":v0", "pk", " x ", "[0]", "é"]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
names = st.one_of(st.sampled_from(AWKWARD), text.filter(bool))
steps = st.one_of(st.sampled_from(AWKWARD), st.integers(0, 12))
paths = st.builds(lambda head, rest: (head, *rest), names, st.lists(steps, max_size=3))

numbers = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["0.5", "-1.25", "1" + "0" * 40, "0.0001"]),
)
scalars = st.one_of(
    text.map(lambda s: {"S": s}),
    numbers.map(lambda n: {"N": n}),
    st.binary(max_size=4).map(lambda b: {"B": b}),
)
others = st.one_of(
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
    st.lists(text, min_size=1, max_size=3, unique=True).map(lambda s: {"SS": s}),
    st.lists(st.integers(-50, 50), min_size=1, max_size=3, unique=True).map(
        lambda ns: {"NS": [str(n) for n in ns]}
    ),
    st.lists(st.binary(max_size=3), min_size=1, max_size=3, unique=True).map(lambda bs: {"BS": bs}),
)
values: st.SearchStrategy[Value] = st.recursive(
    st.one_of(scalars, others),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: {"L": items}),
        st.dictionaries(st.sampled_from(AWKWARD), inner, max_size=3).map(lambda m: {"M": m}),
    ),
    max_leaves=6,
)
set_values = values.filter(lambda v: type_of(v) in SET_TYPES)
items = st.dictionaries(st.sampled_from(AWKWARD), values, max_size=6)

# --- generated conditions (the parser's normal form) --------------------------------------

any_operand = st.one_of(paths.map(Path), paths.map(Size), values.map(Literal))  # = <> IN contains
orderable = st.one_of(paths.map(Path), paths.map(Size), scalars.map(Literal))  # < <= > >= BETWEEN
prefix_operand = st.one_of(
    paths.map(Path),
    paths.map(Size),
    st.one_of(text.map(lambda s: {"S": s}), st.binary(max_size=3).map(lambda b: {"B": b})).map(
        Literal
    ),
)


def _between(operand: Any, low: Any, high: Any) -> Between:
    """BETWEEN with literal bounds of one type in order (others the parser refuses)."""
    if isinstance(low, Literal) and isinstance(high, Literal):
        order = compare(low.value, high.value)
        if order is None:
            high = Path(("a",))
        elif order > 0:
            low, high = high, low
    return Between(operand, low, high)


def _connective(kind: type[And] | type[Or], parts: list[Condition]) -> Condition:
    flat: list[Condition] = []
    for part in parts:
        flat.extend(part.conditions if isinstance(part, kind) else (part,))
    return kind(tuple(flat))


atoms: st.SearchStrategy[Condition] = st.one_of(
    st.builds(Comparison, st.sampled_from(["=", "<>"]), any_operand, any_operand),
    st.builds(Comparison, st.sampled_from(["<", "<=", ">", ">="]), orderable, orderable),
    st.builds(_between, orderable, orderable, orderable),
    st.builds(In, any_operand, st.lists(any_operand, min_size=1, max_size=4).map(tuple)),
    st.builds(AttributeExists, paths),
    st.builds(AttributeNotExists, paths),
    st.builds(AttributeType, paths, st.sampled_from(sorted(TYPES))),
    st.builds(BeginsWith, prefix_operand, prefix_operand),
    st.builds(Contains, any_operand, any_operand),
)
conditions: st.SearchStrategy[Condition] = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=4).map(lambda parts: _connective(And, parts)),
        st.lists(inner, min_size=2, max_size=4).map(lambda parts: _connective(Or, parts)),
        inner.map(Not),
    ),
    max_leaves=14,
)

# --- generated updates --------------------------------------------------------------------

list_values = values.filter(lambda v: type_of(v) == "L")
set_operands: st.SearchStrategy[SetValue] = st.recursive(
    st.one_of(paths.map(Path), values.map(Literal)),
    lambda inner: st.one_of(
        st.builds(IfNotExists, paths, inner),
        st.builds(
            ListAppend,
            inner.filter(lambda o: not isinstance(o, Literal) or type_of(o.value) == "L"),
            st.one_of(paths.map(Path), list_values.map(Literal)),
        ),
    ),
    max_leaves=4,
)
number_operands = set_operands.filter(
    lambda o: not isinstance(o, Literal) or type_of(o.value) == "N"
)
set_value_trees = st.one_of(
    set_operands,
    st.builds(Arithmetic, st.sampled_from(["+", "-"]), number_operands, number_operands),
)


@st.composite
def updates(draw: st.DrawFn) -> Update:
    """An update with at least one action; every action on its own top-level attribute (so no
    two paths overlap)."""
    heads = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    sets: list[SetAction] = []
    removes: list[RemoveAction] = []
    adds: list[AddAction] = []
    deletes: list[DeleteAction] = []
    for head in heads:
        path = (head, *draw(st.lists(steps, max_size=2)))
        clause = draw(st.sampled_from(["SET", "REMOVE", "ADD", "DELETE"]))
        if clause == "SET":
            sets.append(SetAction(path, draw(set_value_trees)))
        elif clause == "REMOVE":
            removes.append(RemoveAction(path))
        elif clause == "ADD":
            added = draw(st.one_of(numbers.map(lambda n: {"N": n}), set_values))
            adds.append(AddAction(path, added))
        else:
            deletes.append(DeleteAction(path, draw(set_values)))
    return Update(tuple(sets), tuple(removes), tuple(adds), tuple(deletes))


# --- helpers ------------------------------------------------------------------------------


def placeholders(source: Unparsed) -> Placeholders:
    return Placeholders.from_stored(source.names or None, source.values or None)


def reparse_condition(source: Unparsed) -> Condition:
    found = placeholders(source)
    tree = parse_condition(source.text, found)
    found.unused_check()  # the generated source uses every placeholder it defines
    return tree


def reparse_update(source: Unparsed) -> Update:
    found = placeholders(source)
    tree = parse_update(source.text, found)
    found.unused_check()
    return tree


def through_a_peer(op: Op) -> Op:
    """The op as a storage node receives it: its JSON form, read back with the same parser."""
    return op_from_json(op_to_json(op), internal=True)


def outcome(call: Any) -> object:
    try:
        return call()
    except ValidationError as error:
        return ("ValidationError", error.message)


# --- the round trips ----------------------------------------------------------------------


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(conditions)
def test_conditions_parse_back_into_the_same_tree(tree: Condition) -> None:
    source = unparse_condition(tree)
    assert reparse_condition(source) == tree


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(updates())
def test_updates_parse_back_into_the_same_tree(tree: Update) -> None:
    source = unparse_update(tree)
    assert reparse_update(source) == tree


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(conditions, items, st.booleans())
def test_the_nodes_evaluation_of_a_condition_agrees(
    tree: Condition, item: dict[str, Value], exists: bool
) -> None:
    source = ExpressionSource(*unparse_condition(tree))
    sent = Op(kind=OpKind.CHECK, key="k", condition=ExpressionCondition(source, tree))
    received = through_a_peer(sent).condition
    assert isinstance(received, ExpressionCondition)
    assert received.tree == tree
    held = expression_condition_holds(received, exists=exists, value=item if exists else None)
    assert held == condition_holds(tree, item if exists else None)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(updates(), items, st.booleans())
def test_the_nodes_application_of_an_update_agrees(
    tree: Update, item: dict[str, Value], exists: bool
) -> None:
    key: dict[str, Value] = {"pk": {"S": "k"}}
    source = ExpressionSource(*unparse_update(tree))
    sent = Op(kind=OpKind.UPDATE, key="k", expression=ExpressionUpdate(source, tree, key))
    received = through_a_peer(sent).expression
    assert received is not None and received.tree == tree
    current = {**item, **key} if exists else None
    on_node = outcome(lambda: apply_expression_update(received, exists=exists, value=current))
    direct = outcome(lambda: apply_update(tree, current, key))
    if isinstance(on_node, tuple) and on_node and on_node[0] is True:
        assert on_node[1] == direct
    elif on_node == (False, None):  # only removals on an absent item: nothing is created
        assert not exists
    else:
        assert on_node == direct


# --- the legacy translations take the same path ------------------------------------------

legacy_tests = st.one_of(
    st.builds(lambda v: {"Value": v}, values),
    st.just({"Exists": False}),
    st.builds(
        lambda op, v: {"ComparisonOperator": op, "AttributeValueList": [v]},
        st.sampled_from(["EQ", "NE", "CONTAINS", "NOT_CONTAINS"]),
        scalars,
    ),
    st.builds(
        lambda op, v: {"ComparisonOperator": op, "AttributeValueList": [v]},
        st.sampled_from(["LT", "LE", "GT", "GE"]),
        scalars,
    ),
    st.builds(
        lambda vs: {"ComparisonOperator": "IN", "AttributeValueList": vs},
        st.lists(scalars, min_size=1, max_size=4),
    ),
    st.builds(
        lambda v: {"ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [v]},
        text.map(lambda s: {"S": s}),
    ),
    st.sampled_from([{"ComparisonOperator": "NULL"}, {"ComparisonOperator": "NOT_NULL"}]),
)


def _wire(value: Value) -> object:
    return value_to_wire(value)


def _wire_spec(spec: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    if "Value" in out:
        out["Value"] = _wire(out["Value"])
    if "AttributeValueList" in out:
        out["AttributeValueList"] = [_wire(v) for v in out["AttributeValueList"]]
    return out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(names, legacy_tests, min_size=1, max_size=5),
    st.sampled_from([None, "AND", "OR"]),
)
def test_expected_translations_round_trip(expected: dict[str, Any], operator: str | None) -> None:
    tree = condition_from_expected({n: _wire_spec(s) for n, s in expected.items()}, operator)
    assert tree is not None
    assert reparse_condition(unparse_condition(tree)) == tree


legacy_actions = st.one_of(
    st.builds(lambda v: {"Action": "PUT", "Value": v}, values),
    st.just({"Action": "DELETE"}),
    st.builds(lambda v: {"Action": "DELETE", "Value": v}, set_values),
    st.builds(lambda n: {"Action": "ADD", "Value": {"N": n}}, numbers),
    st.builds(lambda v: {"Action": "ADD", "Value": v}, set_values),
    st.builds(lambda v: {"Action": "ADD", "Value": v}, list_values),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(names, legacy_actions, min_size=1, max_size=5))
def test_attribute_updates_translations_round_trip(updates_map: dict[str, Any]) -> None:
    wire = {name: _wire_spec(action) for name, action in updates_map.items()}
    tree = update_from_attribute_updates(wire)
    assert reparse_update(unparse_update(tree)) == tree


# --- the text ---------------------------------------------------------------------------


def test_every_name_becomes_a_placeholder_and_repeats_share_one() -> None:
    tree = And(
        (
            Comparison("=", Path(("a.b", 0, "size")), Literal({"N": "1"})),
            Not(Or((AttributeExists(("a.b",)), Contains(Size(("AND",)), Literal({"S": "x"}))))),
        )
    )
    source = unparse_condition(tree)
    assert source.text == (
        "#n0[0].#n1 = :v0 AND NOT (attribute_exists(#n0) OR contains(size(#n2), :v1))"
    )
    assert source.names == {"#n0": "a.b", "#n1": "size", "#n2": "AND"}
    assert source.values == {":v0": {"N": "1"}, ":v1": {"S": "x"}}


def test_parentheses_only_where_precedence_needs_them() -> None:
    a = AttributeExists(("a",))
    b = AttributeExists(("b",))
    c = AttributeExists(("c",))
    assert unparse_condition(Or((And((a, b)), c))).text == (
        "attribute_exists(#n0) AND attribute_exists(#n1) OR attribute_exists(#n2)"
    )
    assert unparse_condition(And((Or((a, b)), Not(c)))).text == (
        "(attribute_exists(#n0) OR attribute_exists(#n1)) AND NOT attribute_exists(#n2)"
    )
    assert unparse_condition(Not(Not(And((a, b))))).text == (
        "NOT NOT (attribute_exists(#n0) AND attribute_exists(#n1))"
    )


def test_update_clauses_and_functions() -> None:
    tree = Update(
        set=(
            SetAction(("n",), Arithmetic("-", Path(("n",)), Literal({"N": "2"}))),
            SetAction(
                ("l",), ListAppend(IfNotExists(("l",), Literal({"L": []})), Literal({"L": []}))
            ),
        ),
        remove=(RemoveAction(("r", 3)),),
        add=(AddAction(("s",), {"SS": ["x"]}),),
        delete=(DeleteAction(("d",), {"NS": ["1"]}),),
    )
    source = unparse_update(tree)
    assert source.text == (
        "SET #n0 = #n0 - :v0, #n1 = list_append(if_not_exists(#n1, :v1), :v2) "
        "REMOVE #n2[3] ADD #n3 :v3 DELETE #n4 :v4"
    )
    assert unparse_update(Update()).text == ""


@pytest.mark.parametrize(
    "tree",
    [
        And((AttributeExists(("a",)),)),
        And((And((AttributeExists(("a",)), AttributeExists(("b",)))), AttributeExists(("c",)))),
        In(Path(("a",)), ()),
        AttributeExists(()),
        AttributeExists((0,)),
        Comparison("==", Path(("a",)), Path(("b",))),
    ],
)
def test_trees_outside_the_grammar_are_refused(tree: Condition) -> None:
    with pytest.raises(ValueError):
        unparse_condition(tree)


def test_arithmetic_below_the_top_of_a_set_value_is_refused() -> None:
    nested = Arithmetic("+", Path(("a",)), Literal({"N": "1"}))
    with pytest.raises(ValueError, match="top of a SET value"):
        unparse_update(Update(set=(SetAction(("a",), IfNotExists(("a",), nested)),)))


def test_generated_placeholders_never_collide_with_an_attribute_named_like_one() -> None:
    tree = Comparison("=", Path(("#n1",)), Path(("#n0",)))
    source = unparse_condition(tree)
    assert source.names == {"#n0": "#n1", "#n1": "#n0"}
    assert reparse_condition(source) == tree
