"""DynamoDB attribute values: wire and stored forms, numbers, sizes, equality and order.

Theory of operation
-------------------
An item is a ``dict`` from attribute name to *typed value*. A typed value is a one-member dict
exactly like DynamoDB JSON, except that binary is raw ``bytes`` (the wire form carries base64
text)::

    {"S": str}  {"N": str}  {"B": bytes}  {"BOOL": bool}  {"NULL": True}
    {"L": [typed, ...]}  {"M": {name: typed}}  {"SS": [str]}  {"NS": [str]}  {"BS": [bytes]}

This *stored form* is a plain :data:`kvstore.types.Value`, so items go through the store's codec
unchanged. Sets are lists in the order given, compared as sets. Numbers are kept as normalised
decimal text (:func:`normalize_number`), so equal numbers have equal text.

Conversions. :func:`value_from_wire` and :func:`item_from_wire` validate a request's JSON and
return the stored form; :func:`value_to_wire` and :func:`item_to_wire` go back. What the JSON
parser should have refused (``{"N": 123}``, a list where a map belongs) is a ValidationError
whose ``details["aws_type"]`` is ``SerializationException``; everything else (an empty or
duplicated set, a bad number, nesting deeper than ``DYNAMODB_NESTING_MAX``) is a plain
ValidationError, its message AWS's own words. :func:`value_from_stored` validates a stored-form
value the same way (a value re-read from the store or handed to another process).

Numbers. A number must match a strict pattern first (``Decimal`` alone would accept spaces,
underscores, ``NaN`` and ``Infinity``), then it is cut into its significant digits and a decimal
exponent with string and integer arithmetic only: no digit string is ever expanded from a huge
exponent, and an exponent of more than nine digits is an overflow or underflow at once. At most
``DYNAMODB_NUMBER_DIGITS_MAX`` significant digits (trailing zeros are not significant), and the
leading digit's exponent in ``DYNAMODB_NUMBER_EXPONENT_MIN..MAX``. The normal form is plain
decimal: no ``+``, exponent, leading zeros or trailing fractional zeros; zero is ``0``.
:func:`add_numbers` and :func:`subtract_numbers` are exact (Python's ``Decimal`` with enough
precision for any two valid operands) and the result must be a valid number again, so
``1e50 + 1`` fails as it does on DynamoDB (whose message for a result with too many digits is
its overflow one).

Sizes follow AWS's formula (:func:`item_size`): a name costs its UTF-8 bytes, S its UTF-8 bytes,
B its bytes, N one byte per two significant digits plus one, BOOL and NULL one byte, L and M
three bytes plus one byte and the size of each element (a map element adds its name), sets the
sum of their elements. :func:`check_item_size` also refuses, with the same AWS messages, an item
the store could not hold: more than ``VALUE_BYTES_MAX`` bytes encoded (type tags and headers cost
a few bytes per attribute that AWS does not count, so an item within a few bytes of AWS's 400 KB,
or of very many tiny attributes, is refused below that). Without it the node refused such a put
with a message naming itself, and an update could store a value no read could return.

Equality and order. :func:`values_equal` is typed equality: numbers by value, sets regardless of
order, lists and maps deeply. :func:`compare` orders S (by UTF-8 bytes, which is code point
order), N (numerically) and B (unsigned bytes) against the same type and answers None for every
other pair. Both are robust to malformed stored values: anything that is not a typed value is a
ValidationError, never a crash, and recursion is bounded by ``DYNAMODB_NESTING_MAX``.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import re
from collections.abc import Callable, Mapping
from typing import Final, TypeAlias

from kvstore.errors import ValidationError
from kvstore.limits import (
    DYNAMODB_ATTRIBUTE_NAME_BYTES_MAX,
    DYNAMODB_ITEM_BYTES_MAX,
    DYNAMODB_NESTING_MAX,
    DYNAMODB_NUMBER_DIGITS_MAX,
    DYNAMODB_NUMBER_EXPONENT_MAX,
    DYNAMODB_NUMBER_EXPONENT_MIN,
    VALUE_BYTES_MAX,
)
from kvstore.types import Value
from kvstore.values import value_size_bytes

__all__ = [
    "Item",
    "TYPES",
    "SCALAR_TYPES",
    "SET_TYPES",
    "TYPE_NAMES",
    "malformed",
    "serialization_error",
    "normalize_number",
    "number_value",
    "add_numbers",
    "subtract_numbers",
    "value_from_wire",
    "item_from_wire",
    "value_to_wire",
    "item_to_wire",
    "value_from_stored",
    "check_attribute_name",
    "item_from_stored",
    "type_of",
    "payload",
    "list_body",
    "map_body",
    "str_body",
    "bytes_body",
    "number_body",
    "value_size",
    "item_size",
    "check_item_size",
    "nesting_of",
    "values_equal",
    "compare",
    "describe",
]

Item: TypeAlias = dict[str, Value]

TYPES: Final = frozenset({"S", "N", "B", "BOOL", "NULL", "L", "M", "SS", "NS", "BS"})
SCALAR_TYPES: Final = frozenset({"S", "N", "B"})  # the orderable (and key) types
SET_TYPES: Final = frozenset({"SS", "NS", "BS"})
# The type names in AWS's "Incorrect operand type" messages.
TYPE_NAMES: Final = {
    "S": "STRING",
    "N": "NUMBER",
    "B": "BINARY",
    "BOOL": "BOOLEAN",
    "NULL": "NULL",
    "L": "LIST",
    "M": "MAP",
    "SS": "STRING_SET",
    "NS": "NUMBER_SET",
    "BS": "BINARY_SET",
}
_SET_WORDS: Final = {"SS": "string", "NS": "number", "BS": "binary"}

_INVALID: Final = "One or more parameter values were invalid: "
_OVERFLOW: Final = (
    "Number overflow. Attempting to store a number with magnitude larger than supported range"
)
_UNDERFLOW: Final = (
    "Number underflow. Attempting to store a number with magnitude smaller than supported range"
)
_TOO_PRECISE: Final = (
    f"Attempting to store more than {DYNAMODB_NUMBER_DIGITS_MAX} significant digits in a Number"
)
# Sign, digits with an optional point (at least one digit), optional exponent. No spaces.
_NUMBER: Final = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?")
# An exponent with more digits than this is out of range whatever the digits (bounds int()).
_EXPONENT_DIGITS_MAX: Final = 9
# Exact sums of two valid numbers: their digits span at most this many decimal places.
_EXACT: Final = decimal.Context(
    prec=DYNAMODB_NUMBER_EXPONENT_MAX
    - DYNAMODB_NUMBER_EXPONENT_MIN
    + 2 * DYNAMODB_NUMBER_DIGITS_MAX,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow],
)


def malformed(what: str = "attribute value") -> ValidationError:
    """The error for a stored value that is not a typed value (never written by us)."""
    return ValidationError("", f"Malformed stored {what}")


def serialization_error(message: str) -> ValidationError:
    """A request whose JSON does not fit the model: AWS answers SerializationException."""
    return ValidationError("", message, details={"aws_type": "SerializationException"})


# --- numbers ------------------------------------------------------------------------------


def _split_number(text: str, too_precise: str = _TOO_PRECISE) -> tuple[bool, str, int]:
    """(negative, significant digits without leading/trailing zeros, exponent of the last
    digit); digits are empty for zero. Raises the AWS errors for junk and out-of-range
    (``too_precise`` for too many significant digits)."""
    match = _NUMBER.fullmatch(text)
    if match is None or not (match[2] or match[3]):
        raise ValidationError("", f"The parameter cannot be converted to a numeric value: {text}")
    sign, whole, fraction, exponent_text = match[1], match[2], match[3] or "", match[4]
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return False, "", 0
    exponent = 0
    if exponent_text is not None:
        unsigned = exponent_text.lstrip("+-").lstrip("0")
        if len(unsigned) > _EXPONENT_DIGITS_MAX:
            raise ValidationError("", _UNDERFLOW if exponent_text[0] == "-" else _OVERFLOW)
        exponent = int(exponent_text)
    exponent -= len(fraction)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    leading = exponent + len(stripped) - 1
    if leading > DYNAMODB_NUMBER_EXPONENT_MAX:
        raise ValidationError("", _OVERFLOW)
    if leading < DYNAMODB_NUMBER_EXPONENT_MIN:
        raise ValidationError("", _UNDERFLOW)
    if len(stripped) > DYNAMODB_NUMBER_DIGITS_MAX:
        raise ValidationError("", too_precise)
    return sign == "-", stripped, exponent


def _plain(negative: bool, digits: str, exponent: int) -> str:
    if not digits:
        return "0"
    if exponent >= 0:
        text = digits + "0" * exponent
    else:
        point = len(digits) + exponent
        text = digits[:point] + "." + digits[point:] if point > 0 else "0." + "0" * -point + digits
    return "-" + text if negative else text


def normalize_number(text: str) -> str:
    """``text`` in normal form (plain decimal, no ``+``, no surplus zeros; ``-0`` is ``0``), or
    a ValidationError with AWS's wording ("numeric", "significant", "overflow", "underflow")."""
    return _plain(*_split_number(text))


def number_value(text: str) -> decimal.Decimal:
    """The exact value of a number's text (validated as :func:`normalize_number` does)."""
    return decimal.Decimal(normalize_number(text))


def _stored_number(text: object) -> decimal.Decimal:
    if type(text) is not str:
        raise malformed("number")
    try:
        return decimal.Decimal(normalize_number(text))
    except ValidationError:
        raise malformed("number") from None


def _arithmetic(a: str, b: str, *, negate: bool) -> str:
    x, y = number_value(a), number_value(b)
    try:
        result = _EXACT.subtract(x, y) if negate else _EXACT.add(x, y)
    except decimal.DecimalException:  # not reached: _EXACT holds any exact sum of two numbers
        raise ValidationError("", _OVERFLOW) from None
    # DynamoDB words a result with too many digits as an overflow.
    return _plain(*_split_number(format(result, "f"), _OVERFLOW))


def add_numbers(a: str, b: str) -> str:
    """The exact sum of two numbers, normalised; a ValidationError when it is not a number."""
    return _arithmetic(a, b, negate=False)


def subtract_numbers(a: str, b: str) -> str:
    """The exact difference ``a - b``, normalised; a ValidationError when it is not a number."""
    return _arithmetic(a, b, negate=True)


# --- wire and stored forms ----------------------------------------------------------------


def _json_kind(obj: object) -> str:
    """How Jackson (DynamoDB's JSON parser) names a token, for SerializationException texts."""
    if isinstance(obj, bool):
        return "VALUE_TRUE" if obj else "VALUE_FALSE"
    if isinstance(obj, int | float):
        return "NUMBER_VALUE"
    if isinstance(obj, str):
        return "VALUE_STRING"
    if isinstance(obj, list):
        return "START_ARRAY"
    if isinstance(obj, dict):
        return "START_OBJECT"
    return "VALUE_NULL" if obj is None else type(obj).__name__


def _check_text(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise serialization_error("Invalid UTF-8 in a string value") from None
    return text


def _expect_str(obj: object) -> str:
    if type(obj) is not str:
        raise serialization_error(f"{_json_kind(obj)} cannot be converted to String")
    return _check_text(obj)


def _wire_binary(obj: object) -> bytes:
    text = _expect_str(obj)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise serialization_error("Base64 encoded binary value is invalid") from None


def _stored_binary(obj: object) -> bytes:
    if type(obj) is not bytes:
        raise malformed("binary value")
    return obj


def check_attribute_name(name: object) -> str:
    """An attribute name: a string of 1..DYNAMODB_ATTRIBUTE_NAME_BYTES_MAX UTF-8 bytes."""
    text = _expect_str(name)
    size = len(text.encode())
    if size == 0:
        raise ValidationError("", _INVALID + "An attribute name may not be empty")
    if size > DYNAMODB_ATTRIBUTE_NAME_BYTES_MAX:
        raise ValidationError(
            "",
            _INVALID + "Attribute name is too large, must be less than "
            f"{DYNAMODB_ATTRIBUTE_NAME_BYTES_MAX + 1} bytes",
        )
    return text


class _Reader:
    """One validation of a wire or stored value; ``binary`` reads a B (base64 or bytes)."""

    __slots__ = ("binary", "stored")

    def __init__(self, binary: Callable[[object], bytes], *, stored: bool) -> None:
        self.binary = binary
        self.stored = stored

    def value(self, obj: object, depth: int) -> Value:
        if not isinstance(obj, dict):
            if self.stored:
                raise malformed()
            raise serialization_error(f"{_json_kind(obj)} cannot be converted to an AttributeValue")
        known = [tag for tag in obj if tag in TYPES]
        if not known:
            raise ValidationError(
                "",
                "Supplied AttributeValue is empty, must contain exactly one of the supported"
                " datatypes",
            )
        if len(obj) > 1:
            raise ValidationError(
                "",
                "Supplied AttributeValue has more than one datatypes set, must contain exactly"
                " one of the supported datatypes",
            )
        tag = known[0]
        body = obj[tag]
        if tag == "S":
            return {"S": _expect_str(body)}
        if tag == "N":
            return {"N": normalize_number(_expect_str(body))}
        if tag == "B":
            return {"B": self.binary(body)}
        if tag == "BOOL":
            if type(body) is not bool:
                raise serialization_error(f"{_json_kind(body)} cannot be converted to Boolean")
            return {"BOOL": body}
        if tag == "NULL":
            if type(body) is not bool:
                raise serialization_error(f"{_json_kind(body)} cannot be converted to Boolean")
            if not body:
                raise ValidationError(
                    "", _INVALID + "Null attribute value types must have the value of true"
                )
            return {"NULL": True}
        if tag in SET_TYPES:
            return {tag: self._set(tag, body)}
        if depth >= DYNAMODB_NESTING_MAX:
            raise ValidationError("", "Nesting Levels have exceeded supported limits")
        if tag == "L":
            if not isinstance(body, list):
                raise serialization_error(f"{_json_kind(body)} cannot be converted to List")
            return {"L": [self.value(element, depth + 1) for element in body]}
        if not isinstance(body, dict):
            raise serialization_error(f"{_json_kind(body)} cannot be converted to Map")
        return {"M": {_expect_str(name): self.value(v, depth + 1) for name, v in body.items()}}

    def _set(self, tag: str, body: object) -> list[Value]:
        if not isinstance(body, list):
            raise serialization_error(f"{_json_kind(body)} cannot be converted to List")
        if not body:
            raise ValidationError("", _INVALID + f"An {_SET_WORDS[tag]} set  may not be empty")
        elements: list[Value] = []
        if tag == "SS":
            elements = [_expect_str(element) for element in body]
            seen: set[object] = set(elements)
        elif tag == "NS":
            elements = [normalize_number(_expect_str(element)) for element in body]
            seen = set(elements)
        else:
            elements = [self.binary(element) for element in body]
            seen = set(elements)
        if len(seen) != len(elements):
            shown = ", ".join(str(element) for element in body)
            raise ValidationError("", _INVALID + f"Input collection [{shown}] contains duplicates.")
        return elements

    def item(self, obj: object) -> Item:
        if not isinstance(obj, dict):
            if self.stored:
                raise malformed("item")
            raise serialization_error(f"{_json_kind(obj)} cannot be converted to a Map")
        return {check_attribute_name(name): self.value(v, 0) for name, v in obj.items()}


_WIRE: Final = _Reader(_wire_binary, stored=False)
_STORED: Final = _Reader(_stored_binary, stored=True)


def value_from_wire(obj: object, *, field: str = "") -> Value:
    """One typed value from request JSON, validated and in stored form (B decoded, N
    normalised). ``field`` is unused in messages (AWS's have none) but kept for callers."""
    del field
    return _WIRE.value(obj, 0)


def item_from_wire(obj: object, *, field: str = "Item") -> Item:
    """An attribute map from request JSON (names 1..65535 bytes), validated, in stored form."""
    del field
    return _WIRE.item(obj)


def value_from_stored(obj: object) -> Value:
    """A stored-form typed value validated as :func:`value_from_wire` validates the wire form
    (B must be bytes); N re-normalised."""
    return _STORED.value(obj, 0)


def item_from_stored(obj: object) -> Item:
    """A stored-form item, validated."""
    return _STORED.item(obj)


def value_to_wire(v: Value) -> object:
    """The DynamoDB JSON of a stored typed value (B and BS as base64 text)."""
    return _to_wire(v, 0)


def _to_wire(v: Value, depth: int) -> object:
    tag, body = payload(v)
    if tag == "B":
        return {"B": base64.b64encode(_stored_binary(body)).decode("ascii")}
    if tag == "BS":
        return {"BS": [base64.b64encode(_stored_binary(e)).decode("ascii") for e in _list(body)]}
    if tag == "L":
        _check_depth(depth)
        return {"L": [_to_wire(element, depth + 1) for element in _list(body)]}
    if tag == "M":
        _check_depth(depth)
        return {"M": {name: _to_wire(e, depth + 1) for name, e in _map(body).items()}}
    return {tag: body}


def item_to_wire(item: Mapping[str, Value]) -> dict[str, object]:
    """The DynamoDB JSON of a stored item."""
    return {name: _to_wire(v, 0) for name, v in item.items()}


# --- typed access -------------------------------------------------------------------------


def payload(v: object) -> tuple[str, Value]:
    """(type tag, body) of a typed value; a ValidationError when ``v`` is not one."""
    if not isinstance(v, dict) or len(v) != 1:
        raise malformed()
    ((tag, body),) = v.items()
    if tag not in TYPES:
        raise malformed()
    return tag, body


def type_of(v: object) -> str:
    """The type tag of a typed value: ``"S"``, ``"N"``, ``"L"``..."""
    return payload(v)[0]


def list_body(body: Value) -> list[Value]:
    """The body of an L or set value; a ValidationError when it is not a list."""
    if not isinstance(body, list):
        raise malformed()
    return body


def map_body(body: Value) -> dict[str, Value]:
    """The body of an M value; a ValidationError when it is not a map."""
    if not isinstance(body, dict):
        raise malformed()
    return body


def str_body(body: Value) -> str:
    """The body of an S value (or an SS element); a ValidationError when not a string."""
    if not isinstance(body, str):
        raise malformed()
    return body


def bytes_body(body: Value) -> bytes:
    """The body of a B value (or a BS element); a ValidationError when not bytes."""
    return _stored_binary(body)


def number_body(body: Value) -> decimal.Decimal:
    """The exact value of an N body (or an NS element); a ValidationError when malformed."""
    return _stored_number(body)


_list = list_body
_map = map_body
_str = str_body


def _check_depth(depth: int) -> None:
    if depth >= DYNAMODB_NESTING_MAX:
        raise ValidationError("", "Nesting Levels have exceeded supported limits")


def nesting_of(v: Value) -> int:
    """Nested L/M levels in a typed value (0 for a scalar or set); raises the AWS nesting error
    past ``DYNAMODB_NESTING_MAX``, never recursing further."""
    return _nesting(v, 0)


def _nesting(v: Value, depth: int) -> int:
    tag, body = payload(v)
    if tag == "L":
        _check_depth(depth)
        return 1 + max((_nesting(e, depth + 1) for e in _list(body)), default=0)
    if tag == "M":
        _check_depth(depth)
        return 1 + max((_nesting(e, depth + 1) for e in _map(body).values()), default=0)
    return 0


# --- sizes --------------------------------------------------------------------------------


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _number_size(text: Value) -> int:
    if not isinstance(text, str):
        raise malformed("number")
    try:
        digits = _split_number(text)[1]
    except ValidationError:
        raise malformed("number") from None
    return (max(len(digits), 1) + 1) // 2 + 1


def value_size(v: Value) -> int:
    """Bytes a typed value counts for in an item (AWS's formula; see the module)."""
    return _size(v, 0)


def _size(v: Value, depth: int) -> int:
    tag, body = payload(v)
    if tag == "S":
        return _utf8_size(_str(body))
    if tag == "N":
        return _number_size(body)
    if tag == "B":
        return len(_stored_binary(body))
    if tag in ("BOOL", "NULL"):
        return 1
    if tag == "SS":
        return sum(_utf8_size(_str(e)) for e in _list(body))
    if tag == "NS":
        return sum(_number_size(e) for e in _list(body))
    if tag == "BS":
        return sum(len(_stored_binary(e)) for e in _list(body))
    _check_depth(depth)
    if tag == "L":
        return 3 + sum(1 + _size(e, depth + 1) for e in _list(body))
    return 3 + sum(1 + _utf8_size(name) + _size(e, depth + 1) for name, e in _map(body).items())


def item_size(item: Mapping[str, Value]) -> int:
    """Bytes an item counts for: each attribute's name plus its value (AWS's formula)."""
    return sum(_utf8_size(name) + _size(v, 0) for name, v in item.items())


def check_item_size(item: Mapping[str, Value], *, update: bool = False) -> None:
    """AWS's errors when ``item`` is larger than ``DYNAMODB_ITEM_BYTES_MAX`` by AWS's formula,
    or when the store could not hold it: its stored form encodes to more than
    ``VALUE_BYTES_MAX`` bytes (an item of very many tiny attributes, each costing more in
    type tags than by AWS's count, or one within a few bytes of AWS's limit).
    Every write of an item (a put, a batch put, a transaction's put, an update's result on the
    node) passes here, so the store never refuses, or holds, an item it could not return."""
    if item_size(item) > DYNAMODB_ITEM_BYTES_MAX or value_size_bytes(dict(item)) > VALUE_BYTES_MAX:
        what = "Item size to update" if update else "Item size"
        raise ValidationError("", f"{what} has exceeded the maximum allowed size")


# --- equality and order -------------------------------------------------------------------


def values_equal(a: Value, b: Value) -> bool:
    """Typed equality: same type, numbers by value, sets regardless of order, L/M deeply."""
    return _equal(a, b, 0)


def _equal(a: Value, b: Value, depth: int) -> bool:
    tag, left = payload(a)
    other, right = payload(b)
    if tag != other:
        return False
    if tag == "N":
        return _stored_number(left) == _stored_number(right)
    if tag == "SS":
        return {_str(e) for e in _list(left)} == {_str(e) for e in _list(right)}
    if tag == "NS":
        return {_stored_number(e) for e in _list(left)} == {_stored_number(e) for e in _list(right)}
    if tag == "BS":
        return {_stored_binary(e) for e in _list(left)} == {_stored_binary(e) for e in _list(right)}
    if tag == "L":
        _check_depth(depth)
        lefts, rights = _list(left), _list(right)
        return len(lefts) == len(rights) and all(
            _equal(x, y, depth + 1) for x, y in zip(lefts, rights, strict=True)
        )
    if tag == "M":
        _check_depth(depth)
        lmap, rmap = _map(left), _map(right)
        return lmap.keys() == rmap.keys() and all(
            _equal(v, rmap[name], depth + 1) for name, v in lmap.items()
        )
    if tag == "B":
        return _stored_binary(left) == _stored_binary(right)
    return type(left) is type(right) and left == right


def compare(a: Value, b: Value) -> int | None:
    """-1, 0 or 1 ordering two S, two N or two B values (UTF-8 bytes, numeric, unsigned
    bytes); None for any other pair (different types, or types without an order)."""
    tag, left = payload(a)
    other, right = payload(b)
    if tag != other or tag not in SCALAR_TYPES:
        return None
    if tag == "N":
        x, y = _stored_number(left), _stored_number(right)
        return (x > y) - (x < y)
    if tag == "S":
        s, t = _str(left), _str(right)
        return (s > t) - (s < t)
    p, q = _stored_binary(left), _stored_binary(right)
    return (p > q) - (p < q)


def describe(v: Value) -> str:
    """A typed value as AWS shows one in messages: ``AttributeValue: {N:10}``."""
    tag, body = payload(v)
    if tag == "B" and isinstance(body, bytes):
        shown: object = base64.b64encode(body).decode("ascii")
    else:
        shown = body
    return f"AttributeValue: {{{tag}:{shown}}}"
