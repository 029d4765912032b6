"""DynamoDB expressions: grammar, placeholders, limits and AWS's error wording."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    KeyCondition,
    ListAppend,
    Literal,
    Not,
    Or,
    Path,
    Placeholders,
    Projection,
    RangeTest,
    RemoveAction,
    SetAction,
    Size,
    Update,
    condition_from_expected,
    condition_from_filter,
    format_path,
    key_condition_from_legacy,
    parse_condition,
    parse_key_condition,
    parse_projection,
    parse_update,
    paths_clash,
    projection_from_attributes_to_get,
    update_from_attribute_updates,
)
from kvstore.errors import ValidationError
from kvstore.limits import (
    DYNAMODB_EXPRESSION_BYTES_MAX,
    DYNAMODB_EXPRESSION_DEPTH_MAX,
    DYNAMODB_IN_OPERANDS_MAX,
    DYNAMODB_NESTING_MAX,
    DYNAMODB_PLACEHOLDER_BYTES_MAX,
)
from kvstore.types import Value

N1: Value = {"N": "1"}
N5: Value = {"N": "5"}
SX: Value = {"S": "x"}
VALUES: dict[str, Value] = {
    ":one": N1,
    ":five": N5,
    ":x": SX,
    ":list": {"L": []},
    ":set": {"SS": ["a"]},
    ":nset": {"NS": ["1"]},
    ":t": {"BOOL": True},
    ":type": {"S": "SS"},
    ":b": {"B": "YQ=="},
}


def ph(names: dict[str, str] | None = None) -> Placeholders:
    return Placeholders(names, VALUES)


def condition(text: str, names: dict[str, str] | None = None) -> Condition:
    return parse_condition(text, ph(names))


def refused(text: str, fragment: str, *, kind: str = "condition") -> ValidationError:
    with pytest.raises(ValidationError, match=fragment) as info:
        if kind == "condition":
            parse_condition(text, ph({"#a": "a"}))
        elif kind == "update":
            parse_update(text, ph({"#a": "a"}), key_names=("pk", "sk"))
        elif kind == "projection":
            parse_projection(text, ph({"#a": "a"}))
        else:
            parse_key_condition(text, ph(), hash_key="pk", range_key="sk")
    return info.value


# --- conditions ---------------------------------------------------------------------------


def test_comparisons_and_operands() -> None:
    assert condition("a = :one") == Comparison("=", Path(("a",)), Literal(N1))
    assert condition("a.b[2].c <> :x") == Comparison("<>", Path(("a", "b", 2, "c")), Literal(SX))
    for operator in ("<", "<=", ">", ">="):
        assert condition(f":one {operator} b") == Comparison(operator, Literal(N1), Path(("b",)))
    assert condition("size(a) > :one") == Comparison(">", Size(("a",)), Literal(N1))
    assert condition("a=b") == Comparison("=", Path(("a",)), Path(("b",)))


def test_names_placeholders_are_single_names() -> None:
    # A #name stands for one attribute name, dots and all; bare dots nest.
    assert condition("#d = :one", {"#d": "a.b"}) == Comparison("=", Path(("a.b",)), Literal(N1))
    assert condition("#d.#d = :one", {"#d": "x"}) == Comparison("=", Path(("x", "x")), Literal(N1))


def test_between_in_and_functions() -> None:
    assert condition("a BETWEEN :one AND :five") == Between(Path(("a",)), Literal(N1), Literal(N5))
    assert condition("a in (:one, :five)") == In(Path(("a",)), (Literal(N1), Literal(N5)))
    assert condition("attribute_exists(a.b)") == AttributeExists(("a", "b"))
    assert condition("attribute_not_exists(a)") == AttributeNotExists(("a",))
    assert condition("attribute_type(a, :type)") == AttributeType(("a",), "SS")
    assert condition("begins_with(a, :x)") == BeginsWith(Path(("a",)), Literal(SX))
    assert condition("contains(a, :one)") == Contains(Path(("a",)), Literal(N1))


def test_precedence_not_and_or() -> None:
    a, b, c = (Comparison("=", Path((n,)), Literal(N1)) for n in "abc")
    assert condition("a = :one OR b = :one AND c = :one") == Or((a, And((b, c))))
    assert condition("(a = :one OR b = :one) AND c = :one") == And((Or((a, b)), c))
    assert condition("NOT a = :one AND b = :one") == And((Not(a), b))
    assert condition("NOT (a = :one AND b = :one)") == Not(And((a, b)))
    assert condition("not not a = :one") == Not(Not(a))
    # Chains of one connective are one node, whatever the parentheses.
    assert condition("a = :one AND (b = :one AND c = :one)") == And((a, b, c))
    assert condition("a = :one and b = :one and c = :one") == And((a, b, c))


def test_redundant_parentheses() -> None:
    assert condition("(a = :one)") == Comparison("=", Path(("a",)), Literal(N1))
    assert isinstance(condition("((a = :one) AND b = :one)"), And)
    refused(
        "((a = :one))", "^Invalid ConditionExpression: The expression has redundant parentheses;"
    )
    refused("(((a = :one)) OR b = :one)", "redundant parentheses")


def test_deep_nesting_within_the_operator_limit_is_accepted() -> None:
    depth = 149  # 299 operators: AWS accepts it (Alternator's test_limits)
    text = "a<b " + "or (a<b " * depth + ")" * depth
    assert isinstance(parse_condition(text, Placeholders()), Or)
    text = "NOT (" * 150 + "a<b" + ")" * 150
    assert isinstance(parse_condition(text, Placeholders()), Not)


@pytest.mark.parametrize(
    "text",
    [
        "a<b " + "and (a<b " * 20000 + ")" * 20000,
        "(" * 20000 + "a<b" + ")" * 20000,
        "(" * 15000,
        "not " * 20000 + "a<b",
        "a < " + "f(" * 20000 + "b" + ")" * 20000,
    ],
)
def test_oversized_expressions_are_refused_before_parsing(text: str) -> None:
    with pytest.raises(ValidationError, match="expression size"):
        parse_condition(text, Placeholders())


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a<b " + "or (a<b " * 454 + ")" * 454, "too many operators; operator count: 301"),
        ("not " * 1000 + "a<b", "too many operators"),
        ("(" * 2046 + "a<b" + ")" * 2046, "redundant parentheses"),
        ("(" * 4096, "ConditionExpression"),
        ("a < " + "f(" * 1355 + "b" + ")" * 1355, "Invalid function name; function: f"),
        ("a < " + "size(" * 680 + "b" + ")" * 680, "ConditionExpression"),
    ],
)
def test_deep_expressions_under_the_size_limit_fail_cleanly(text: str, fragment: str) -> None:
    assert len(text) <= DYNAMODB_EXPRESSION_BYTES_MAX
    with pytest.raises(ValidationError, match=fragment):
        parse_condition(text, Placeholders())


def test_size_limit_is_4096_bytes() -> None:
    spaces = " " * (DYNAMODB_EXPRESSION_BYTES_MAX - len("a = :one"))
    parse_condition(f"a{spaces} = :one", ph())
    with pytest.raises(
        ValidationError,
        match=r"^Invalid FilterExpression: Expression size has exceeded the maximum allowed size;"
        r" expression size: 4097$",
    ):
        parse_condition(f"a {spaces} = :one", ph(), expression="FilterExpression")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "The expression can not be empty;"),
        ("   ", "The expression can not be empty;"),
        ("a = ", 'Syntax error; token: "<EOF>", near: "= "'),
        ("a = :one)", 'Syntax error; token: "\\)", near: ":one\\)"'),
        ("a $ b", 'Syntax error; token: "\\$"'),
        ("a = :one b = :one", 'Syntax error; token: "b"'),
        ("a BETWEEN :one OR :five", "Syntax error"),
        ("a IN ()", "Syntax error"),
        ("a[x] = :one", "Syntax error"),
        ("[1] = :one", "Syntax error"),
        ("a. = :one", "Syntax error"),
        ("(a = :one", "Syntax error"),
        ("a = :nope", "attribute value used in expression is not defined; attribute value: :nope"),
        ("#nope = :one", "name used in the document path is not defined; attribute name: #nope"),
        ("status = :one", "Attribute name is a reserved keyword; reserved keyword: status"),
        ("a.Name = :one", "reserved keyword: Name"),
        ("f(a)", "Invalid function name; function: f"),
        ("Size(a) > :one", "Invalid function name; function: Size"),
        ("size(a)", "not allowed to be used this way in an expression; function: size"),
        ("a = begins_with(a, :x)", "not allowed to be used this way"),
        ("a = if_not_exists(a, :x)", "not allowed to be used this way"),
        ("attribute_exists(:one)", "requires a document path; operator or function: attribute_exists"),  # noqa: E501
        ("size(:x) > :one", "requires a document path"),
        ("attribute_exists(a, b)", "Incorrect number of operands for operator or function"),
        ("begins_with(a)", "number of operands: 1"),
        ("a < :t", "Incorrect operand type for operator or function; operator or function: <, operand type: BOOLEAN"),  # noqa: E501
        ("a >= :list", "operand type: LIST"),
        ("a BETWEEN :one AND :set", "operand type: STRING_SET"),
        ("a BETWEEN :five AND :one", "upper bound to be greater than or equal to lower bound; lower operand: AttributeValue: {N:5}, upper operand: AttributeValue: {N:1}"),  # noqa: E501
        ("a BETWEEN :one AND :x", "requires same data type for lower and upper bounds"),
        ("begins_with(a, :one)", "operator or function: begins_with, operand type: NUMBER"),
        ("attribute_type(a, :x)", "Invalid attribute type name found; type: x"),
        ("attribute_type(a, :one)", "operand type: NUMBER"),
        ("attribute_type(a, b)", "Incorrect operand type"),
        ("attribute_exists(a) = :t", "Syntax error"),
    ],
)  # fmt: skip
def test_condition_errors(text: str, fragment: str) -> None:
    error = refused(text, fragment)
    assert error.message.startswith("Invalid ConditionExpression: ") or "reserved" in fragment


def test_in_takes_at_most_100_operands() -> None:
    values = {f":v{i}": {"N": str(i)} for i in range(DYNAMODB_IN_OPERANDS_MAX + 1)}
    listed = ", ".join(values)
    ok = ", ".join(list(values)[:DYNAMODB_IN_OPERANDS_MAX])
    found = parse_condition(f"a IN ({ok})", Placeholders(None, values))
    assert isinstance(found, In) and len(found.choices) == DYNAMODB_IN_OPERANDS_MAX
    with pytest.raises(ValidationError, match="IN"):
        parse_condition(f"a IN ({listed})", Placeholders(None, values))


def test_paths_are_bounded() -> None:
    deep = "a" + ".b" * DYNAMODB_NESTING_MAX
    assert parse_condition(f"attribute_exists({deep})", Placeholders())
    with pytest.raises(
        ValidationError,
        match=f"too many nesting levels; nesting levels: {DYNAMODB_NESTING_MAX + 1}",
    ):
        parse_condition(f"attribute_exists({deep}.c)", Placeholders())


def test_function_nesting_is_bounded() -> None:
    nested = "a"
    for _ in range(DYNAMODB_EXPRESSION_DEPTH_MAX + 1):
        nested = f"list_append({nested}, :list)"
    with pytest.raises(ValidationError, match="nested too deeply"):
        parse_update(f"SET a = {nested}", ph())


# --- placeholders -------------------------------------------------------------------------


def test_unused_placeholders_are_reported() -> None:
    placeholders = Placeholders({"#a": "a", "#xyz": "b"}, {":one": N1, ":v": N5})
    parse_condition("#a = :one", placeholders)
    with pytest.raises(ValidationError, match=r"ExpressionAttributeNames unused.*keys: \{#xyz\}"):
        placeholders.unused_check()
    parse_condition("#xyz = :one", placeholders)
    with pytest.raises(
        ValidationError,
        match=r"^Value provided in ExpressionAttributeValues unused in expressions: keys: \{:v\}$",
    ):
        placeholders.unused_check()
    parse_update("SET c = :v", placeholders)  # usage spans the request's expressions
    placeholders.unused_check()


@pytest.mark.parametrize(
    ("names", "values", "fragment", "serialization"),
    [
        ({}, None, "ExpressionAttributeNames must not be empty", False),
        (None, {}, "ExpressionAttributeValues must not be empty", False),
        ({"a": "a"}, None, 'ExpressionAttributeNames contains invalid key: Syntax error; key: "a"', False),  # noqa: E501
        (None, {"v": N1}, 'ExpressionAttributeValues contains invalid key: Syntax error; key: "v"', False),  # noqa: E501
        ({"#" + "a" * DYNAMODB_PLACEHOLDER_BYTES_MAX: "a"}, None, "invalid key", False),
        ({"#a": ""}, None, "ExpressionAttributeNames contains invalid value", False),
        (None, {":v": {"SS": []}}, "ExpressionAttributeValues contains invalid value: .*An string set  may not be empty for key :v", False),  # noqa: E501
        ({"#xyz": 7}, None, "", True),
        (None, {":v": {"N": 1}}, "", True),
        ([], None, "", True),
    ],
)  # fmt: skip
def test_placeholder_maps_are_validated(
    names: object, values: object, fragment: str, serialization: bool
) -> None:
    with pytest.raises(ValidationError, match=fragment or None) as info:
        Placeholders(names, values)
    assert ("aws_type" in info.value.details) == serialization


def test_placeholder_length_limit() -> None:
    longest = "#" + "a" * (DYNAMODB_PLACEHOLDER_BYTES_MAX - 1)
    assert parse_condition(f"{longest} = :one", Placeholders({longest: "a"}, {":one": N1}))


def test_stored_placeholders() -> None:
    placeholders = Placeholders.from_stored({"#a": "a"}, {":b": {"B": b"\x00"}, ":n": {"N": "1.0"}})
    assert placeholders.values[":n"] == {"N": "1"}
    assert parse_condition("#a = :b OR #a = :n", placeholders)
    placeholders.unused_check()
    with pytest.raises(ValidationError):
        Placeholders.from_stored(None, {":b": {"B": "not bytes"}})


# --- updates ------------------------------------------------------------------------------


def test_update_clauses() -> None:
    update = parse_update(
        "SET a = :one, b = c + :one, d = e - f, g = if_not_exists(g, :one),"
        " h = list_append(if_not_exists(h, :list), :list) REMOVE i, j[1] ADD k :one, l :set"
        " DELETE m :nset",
        ph(),
    )
    assert update == Update(
        set=(
            SetAction(("a",), Literal(N1)),
            SetAction(("b",), Arithmetic("+", Path(("c",)), Literal(N1))),
            SetAction(("d",), Arithmetic("-", Path(("e",)), Path(("f",)))),
            SetAction(("g",), IfNotExists(("g",), Literal(N1))),
            SetAction(
                ("h",),
                ListAppend(IfNotExists(("h",), Literal({"L": []})), Literal({"L": []})),
            ),
        ),
        remove=(RemoveAction(("i",)), RemoveAction(("j", 1))),
        add=(AddAction(("k",), N1), AddAction(("l",), {"SS": ["a"]})),
        delete=(DeleteAction(("m",), {"NS": ["1"]}),),
    )


def test_clauses_in_any_order_and_case() -> None:
    update = parse_update("remove a add b :one set c = :one", ph())
    assert update.remove and update.add and update.set


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "^Invalid UpdateExpression: The expression can not be empty;$"),
        ("SET a = :one SET b = :one", 'The "SET" section can only be used once in an update expression;'),  # noqa: E501
        ("REMOVE a remove b", 'The "REMOVE" section can only be used once'),
        ("SET a = :one, a = :five", "Two document paths overlap with each other; must remove or rewrite one of these paths; path one: \\[a\\], path two: \\[a\\]"),  # noqa: E501
        ("SET a = :one REMOVE a.b", "path one: \\[a\\], path two: \\[a, b\\]"),
        ("SET a.b = :one REMOVE a[1]", "Two document paths conflict with each other; must remove or rewrite one of these paths; path one: \\[a, b\\], path two: \\[a, \\[1\\]\\]"),  # noqa: E501
        ("ADD #a :one DELETE a :set", "overlap"),
        ("SET pk = :one", "^One or more parameter values were invalid: Cannot update attribute pk. This attribute is part of the key$"),  # noqa: E501
        ("REMOVE sk", "Cannot update attribute sk"),
        ("ADD pk.x :one", "Cannot update attribute pk"),
        ("ADD a :x", "Incorrect operand type for operator or function; operator: ADD, operand type: STRING"),  # noqa: E501
        ("ADD a :list", "operator: ADD, operand type: LIST"),
        ("DELETE a :one", "operator: DELETE, operand type: NUMBER"),
        ("ADD a b", "Syntax error"),
        ("SET a = :x + :one", "operator or function: \\+, operand type: STRING"),
        ("SET a = :one - :t", "operand type: BOOLEAN"),
        ("SET a = list_append(a, :one)", "operator or function: list_append, operand type: NUMBER"),
        ("SET a = if_not_exists(:one, :one)", "requires a document path; operator or function: if_not_exists"),  # noqa: E501
        ("SET a = size(b)", "not allowed to be used this way in an update expression; function: size"),  # noqa: E501
        ("SET a = b + c + d", 'Syntax error; token: "\\+"'),
        ("SET a :one", "Syntax error"),
        ("SET", "Syntax error; token: \"<EOF>\""),
        ("PUT a = :one", 'Syntax error; token: "PUT"'),
        ("SET a = :one,", "Syntax error"),
        ("SET status = :one", "reserved keyword: status"),
    ],
)  # fmt: skip
def test_update_errors(text: str, fragment: str) -> None:
    refused(text, fragment, kind="update")


def test_disjoint_update_paths_are_fine() -> None:
    update = parse_update("SET a.b = :one, a.c = :one, l[1] = :one REMOVE l[2], a.d", ph())
    assert len(update.paths()) == 5


def test_paths_clash() -> None:
    assert paths_clash(("a",), ("a", "b")) == "overlap"
    assert paths_clash(("a", 1), ("a", 1)) == "overlap"
    assert paths_clash(("a", "b"), ("a", 0)) == "conflict"
    assert paths_clash(("a", 0), ("a", 1)) is None
    assert paths_clash(("a",), ("b",)) is None
    assert format_path(("a", 1, "b")) == "[a, [1], b]"


# --- projections --------------------------------------------------------------------------


def test_projection() -> None:
    assert parse_projection("a, b.c, #a[2]", ph({"#a": "x"})) == Projection(
        (("a",), ("b", "c"), ("x", 2))
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "^Invalid ProjectionExpression: The expression can not be empty;$"),
        ("a, a", "Two document paths overlap"),
        ("a.b, a", "path one: \\[a, b\\], path two: \\[a\\]"),
        ("a.b, a[0]", "conflict"),
        ("a,", "Syntax error"),
        ("a b", "Syntax error"),
        ("a = :one", "Syntax error"),
        ("x" * 4097, "ProjectionExpression: Expression size"),
    ],
)
def test_projection_errors(text: str, fragment: str) -> None:
    refused(text, fragment, kind="projection")


# --- key conditions -----------------------------------------------------------------------


def test_key_conditions() -> None:
    found = parse_key_condition("pk = :x", ph(), hash_key="pk", range_key="sk")
    assert found == KeyCondition("pk", SX, None)
    for text, operator, values in [
        ("pk = :x AND sk < :one", "<", (N1,)),
        ("sk >= :one AND pk = :x", ">=", (N1,)),
        (":one < sk AND pk = :x", ">", (N1,)),  # flipped
        ("pk = :x AND sk BETWEEN :one AND :five", "BETWEEN", (N1, N5)),
        ("pk = :x AND begins_with(sk, :x)", "begins_with", (SX,)),
        ("(pk = :x) AND (sk = :one)", "=", (N1,)),
        ("#p = :x AND #s = :one", "=", (N1,)),
    ]:
        found = parse_key_condition(
            text, ph({"#p": "pk", "#s": "sk"}), hash_key="pk", range_key="sk"
        )
        assert found == KeyCondition("pk", SX, RangeTest("sk", operator, values)), text
    # Without the schema, the first equality test is the hash key's.
    assert parse_key_condition("sk > :one AND pk = :x", ph()).hash_name == "pk"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("pk = :x OR sk = :one", "Invalid operator used in KeyConditionExpression: OR"),
        ("NOT pk = :x", "Invalid operator used in KeyConditionExpression: NOT"),
        ("pk IN (:x)", "KeyConditionExpression: IN"),
        ("pk = :x AND sk <> :one", "KeyConditionExpression: <>"),
        ("pk = :x AND contains(sk, :x)", "KeyConditionExpression: contains"),
        ("pk = :x AND attribute_exists(sk)", "KeyConditionExpression: attribute_exists"),
        ("pk = :x AND sk = :one AND sk = :five", "Conditions can be of length 1 or 2 only"),
        ("pk = :x AND pk = :x", "only contain one condition per key"),
        ("sk = :one", "Query condition missed key schema element: pk"),
        ("pk = :x AND zz = :one", "Query condition missed key schema element: sk"),
        ("pk < :x", "Query key condition not supported"),
        ("pk = sk", "Multiple attribute names used in one condition"),
        ("pk.a = :x", "nested attributes"),
        ("pk = :x AND begins_with(sk, :one)", "begins_with, operand type: NUMBER"),
        ("pk = :x AND size(sk) > :one", "KeyConditionExpression: size"),
    ],
)
def test_key_condition_errors(text: str, fragment: str) -> None:
    refused(text, fragment, kind="key")


def test_hash_only_tables_take_one_test() -> None:
    assert parse_key_condition("pk = :x", ph(), hash_key="pk").range is None
    with pytest.raises(ValidationError, match="Query key condition not supported"):
        parse_key_condition("pk = :x AND sk = :one", ph(), hash_key="pk")


# --- generated expressions ----------------------------------------------------------------

names = st.sampled_from(["a", "b", "c", "#n"])
paths = st.builds(
    lambda head, rest: head + "".join(rest),
    names,
    st.lists(st.one_of(st.just(".d"), st.integers(0, 9).map(lambda i: f"[{i}]")), max_size=3),
)
values = st.sampled_from([":one", ":five", ":x"])
atoms = st.one_of(
    st.builds(
        lambda p, op, v: f"{p} {op} {v}", paths, st.sampled_from(["=", "<>", "<", ">="]), values
    ),
    st.builds(lambda p: f"attribute_exists({p})", paths),
    st.builds(lambda p: f"begins_with({p}, :x)", paths),
    st.builds(lambda p: f"size({p}) > :one", paths),
    st.builds(lambda p: f"{p} IN (:one, :x)", paths),
    st.builds(lambda p: f"{p} BETWEEN :one AND :five", paths),
)
conditions = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) AND ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) OR ({b})", inner, inner),
        st.builds(lambda a: f"NOT ({a})", inner),
    ),
    max_leaves=12,
)  # fmt: skip


def _render(tree: Condition) -> str:
    """A fully parenthesised text of a tree, for the round trip."""

    def operand(o: object) -> str:
        if isinstance(o, Path):
            return "".join(
                (f"[{p}]" if isinstance(p, int) else ("." if i else "") + {"a.b": "#n"}.get(p, p))
                for i, p in enumerate(o.path)
            )
        if isinstance(o, Size):
            return f"size({operand(Path(o.path))})"
        assert isinstance(o, Literal)
        return {"1": ":one", "5": ":five", "x": ":x"}[str(next(iter(o.value.values())))]  # type: ignore[union-attr]

    match tree:
        case Comparison(op, left, right):
            return f"{operand(left)} {op} {operand(right)}"
        case Between(o, low, high):
            return f"{operand(o)} BETWEEN {operand(low)} AND {operand(high)}"
        case In(o, choices):
            return f"{operand(o)} IN ({', '.join(operand(c) for c in choices)})"
        case AttributeExists(path):
            return f"attribute_exists({operand(Path(path))})"
        case BeginsWith(o, prefix):
            return f"begins_with({operand(o)}, {operand(prefix)})"
        case And(parts):
            return " AND ".join(f"({_render(p)})" for p in parts)
        case Or(parts):
            return " OR ".join(f"({_render(p)})" for p in parts)
        case Not(inner):
            return f"NOT ({_render(inner)})"
    raise AssertionError(tree)


@given(conditions)
def test_generated_conditions_parse_and_round_trip(text: str) -> None:
    tree = parse_condition(text, Placeholders({"#n": "a.b"}, VALUES))
    again = parse_condition(_render(tree), Placeholders({"#n": "a.b"}, VALUES))
    assert again == tree


# --- legacy parameters --------------------------------------------------------------------


def test_expected_translates_to_conditions() -> None:
    a = Path(("a",))
    # Value stands in for a one-value AttributeValueList (DynamoDB accepts both).
    assert condition_from_expected({"a": {"ComparisonOperator": "GT", "Value": N1}}) == Comparison(
        ">", a, Literal(N1)
    )
    assert condition_from_expected({}) is None
    assert condition_from_expected({"a": {"Value": {"N": "1"}}}) == Comparison("=", a, Literal(N1))
    assert condition_from_expected({"a": {"Exists": False}}) == AttributeNotExists(("a",))
    assert condition_from_expected(
        {"a": {"Value": {"N": "1"}, "Exists": True}, "b": {"Exists": False}}, "OR"
    ) == Or((Comparison("=", a, Literal(N1)), AttributeNotExists(("b",))))
    both = {
        "a": {"ComparisonOperator": "NE", "AttributeValueList": [{"N": "1"}]},
        "b": {"ComparisonOperator": "NOT_NULL"},
    }
    assert condition_from_expected(both) == And(
        (Not(Comparison("=", a, Literal(N1))), AttributeExists(("b",)))
    )


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("EQ", [{"N": "1"}], Comparison("=", Path(("a",)), Literal(N1))),
        ("LT", [{"N": "1"}], Comparison("<", Path(("a",)), Literal(N1))),
        ("GE", [{"S": "x"}], Comparison(">=", Path(("a",)), Literal(SX))),
        ("BETWEEN", [{"N": "1"}, {"N": "5"}], Between(Path(("a",)), Literal(N1), Literal(N5))),
        ("IN", [{"N": "1"}, {"S": "x"}], In(Path(("a",)), (Literal(N1), Literal(SX)))),
        ("BEGINS_WITH", [{"S": "x"}], BeginsWith(Path(("a",)), Literal(SX))),
        ("CONTAINS", [{"S": "x"}], Contains(Path(("a",)), Literal(SX))),
        ("NOT_CONTAINS", [{"S": "x"}], Not(Contains(Path(("a",)), Literal(SX)))),
        ("NULL", [], AttributeNotExists(("a",))),
        ("NOT_NULL", None, AttributeExists(("a",))),
    ],
)
def test_filter_operators(operator: str, values: object, expected: Condition) -> None:
    spec = {"ComparisonOperator": operator, "AttributeValueList": values}
    assert condition_from_filter({"a": spec}) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"ComparisonOperator": "EQ"}, "Invalid number of argument\\(s\\) for the EQ"),
        ({"ComparisonOperator": "NULL", "AttributeValueList": [{"N": "1"}]}, "argument"),
        ({"ComparisonOperator": "LIKE", "AttributeValueList": []}, "enum value set"),
        ({"ComparisonOperator": "LT", "AttributeValueList": [{"SS": ["a"]}]}, "not valid for SS"),
        ({"ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [{"N": "1"}]}, "not valid"),
        (
            {"ComparisonOperator": "BETWEEN", "AttributeValueList": [{"N": "5"}, {"N": "1"}]},
            "lower bound is greater than the upper bound",
        ),
    ],
)
def test_filter_errors(spec: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        condition_from_filter({"a": spec}, parameter="ScanFilter")


@pytest.mark.parametrize(
    ("expected", "fragment"),
    [
        ({"a": {"Exists": True}}, "Value must be provided when Exists is true for Attribute: a$"),
        ({"a": {}}, "Value must be provided when Exists is null for Attribute: a$"),
        (
            {"a": {"Exists": False, "Value": {"N": "1"}}},
            "Value cannot be used when Exists is false for Attribute: a$",
        ),
        (
            {"a": {"Exists": True, "ComparisonOperator": "EQ", "AttributeValueList": [N1]}},
            "Exists and ComparisonOperator cannot be used together for Attribute: a$",
        ),
        (
            {"a": {"Value": N1, "ComparisonOperator": "EQ", "AttributeValueList": [N1]}},
            "Value and AttributeValueList cannot be used together for Attribute: a$",
        ),
        (
            {"a": {"ComparisonOperator": "EQ"}},
            "Value or AttributeValueList must be used with ComparisonOperator: EQ for "
            "Attribute: a$",
        ),
        (
            {"a": {"AttributeValueList": [N1]}},
            "AttributeValueList can only be used with a ComparisonOperator for Attribute: a$",
        ),
        ({"a": {"Value": {"N": "1"}}}, None),
    ],
)
def test_expected_errors(expected: object, fragment: str | None) -> None:
    if fragment is None:
        assert condition_from_expected(expected, "AND") is not None
        with pytest.raises(ValidationError, match="conditionalOperator"):
            condition_from_expected(expected, "XOR")
        return
    with pytest.raises(ValidationError, match=fragment):
        condition_from_expected(expected)


def test_key_conditions_from_legacy() -> None:
    conditions = {
        "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "x"}]},
        "sk": {"ComparisonOperator": "BETWEEN", "AttributeValueList": [{"N": "1"}, {"N": "5"}]},
    }
    assert key_condition_from_legacy(conditions, hash_key="pk", range_key="sk") == KeyCondition(
        "pk", SX, RangeTest("sk", "BETWEEN", (N1, N5))
    )
    only_sort = {"sk": conditions["sk"]}
    with pytest.raises(ValidationError, match="missed key schema element: pk"):
        key_condition_from_legacy(only_sort, hash_key="pk", range_key="sk")
    not_eq = {"pk": {"ComparisonOperator": "GT", "AttributeValueList": [{"S": "x"}]}}
    with pytest.raises(ValidationError, match="Query key condition not supported"):
        key_condition_from_legacy(not_eq, hash_key="pk")
    ne = {**conditions, "sk": {"ComparisonOperator": "NE", "AttributeValueList": [{"N": "1"}]}}
    with pytest.raises(ValidationError, match="not an indexable operation"):
        key_condition_from_legacy(ne, hash_key="pk", range_key="sk")


def test_attribute_updates() -> None:
    update = update_from_attribute_updates(
        {
            "a": {"Action": "PUT", "Value": {"N": "1"}},
            "b": {"Value": {"S": "x"}},  # PUT is the default
            "c": {"Action": "DELETE"},
            "d": {"Action": "DELETE", "Value": {"SS": ["a"]}},
            "e": {"Action": "ADD", "Value": {"N": "1"}},
            "f": {"Action": "ADD", "Value": {"L": [{"N": "1"}]}},  # legacy ADD appends to lists
        }
    )
    assert update == Update(
        set=(
            SetAction(("a",), Literal(N1)),
            SetAction(("b",), Literal(SX)),
            SetAction(
                ("f",), ListAppend(IfNotExists(("f",), Literal({"L": []})), Literal({"L": [N1]}))
            ),
        ),
        remove=(RemoveAction(("c",)),),
        add=(AddAction(("e",), N1),),
        delete=(DeleteAction(("d",), {"SS": ["a"]}),),
    )


@pytest.mark.parametrize(
    ("updates", "fragment"),
    [
        ({"pk": {"Value": {"N": "1"}}}, "Cannot update attribute pk. This attribute is part"),
        ({"a": {"Action": "PUT"}}, "Only DELETE action is allowed when no attribute value"),
        (
            {"a": {"Action": "ADD", "Value": {"S": "x"}}},
            "ADD action is not supported for the type S",
        ),
        ({"a": {"Action": "DELETE", "Value": {"N": "1"}}}, "DELETE action with value"),
        ({"a": {"Action": "MOVE", "Value": {"N": "1"}}}, "enum value set: \\[ADD, PUT, DELETE\\]"),
        ({"a": {"Value": {"N": 1}}}, ""),
    ],
)
def test_attribute_update_errors(updates: object, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment or None):
        update_from_attribute_updates(updates, key_names=("pk",))


def test_attributes_to_get() -> None:
    assert projection_from_attributes_to_get(["a", "b.c"]) == Projection((("a",), ("b.c",)))
    with pytest.raises(ValidationError, match="Duplicate value in attribute name: a"):
        projection_from_attributes_to_get(["a", "a"])
    with pytest.raises(ValidationError, match="length greater than or equal to 1"):
        projection_from_attributes_to_get([])
    with pytest.raises(ValidationError, match="Attribute name"):
        projection_from_attributes_to_get(["a" * 65536])
