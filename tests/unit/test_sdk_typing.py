"""The SDK's typing surface (kvstore.client.typed, docs/sdk.md "Types").

Goal: what the signatures promise holds at run time, and the signatures refuse what the store
would refuse. Reads with ``value_type`` return the value when it matches the type and raise a
``ValidationError`` naming the path and the key when it does not; a type the SDK cannot check is
refused before anything is sent; writes turn any sequence into a list and any mapping into an
object; and ``mypy --strict`` accepts typed reads (``item.value["balance"]`` is an ``int``) and
rejects ``kv.put("bad", object())``. Method: a real :class:`Client` over the in-memory backend;
one mypy run over a snippet whose expected errors are marked on their lines.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import pytest

from kvstore.client import Client, Put, SyncClient, Update, eq
from kvstore.client.memory import MemoryBackend
from kvstore.client.typed import checker, to_value
from kvstore.errors import ValidationError
from kvstore.types import JsonValue

REPO = Path(__file__).resolve().parents[2]


class Account(TypedDict):
    balance: int
    owner: NotRequired[str]


class Order(TypedDict):
    state: Literal["new", "paid"]
    lines: list[dict[str, float]]
    note: str | None


class Doc(TypedDict):
    data: JsonValue
    tags: list[JsonValue]


class Node(TypedDict):
    name: str
    children: list[Node]


class Broken(TypedDict):
    n: Undefined  # type: ignore[name-defined]  # noqa: F821 - does not resolve, on purpose


@dataclass
class NotJson:
    n: int


@pytest.mark.asyncio
async def test_a_typed_read_returns_the_value_when_it_matches() -> None:
    async with Client(MemoryBackend()) as kv:
        await kv.put("acct/1", {"balance": 5, "owner": "ada", "extra": [1]})
        item = await kv.get("acct/1", Account)
        assert item is not None and item.value["balance"] == 5
        assert item.value == {"balance": 5, "owner": "ada", "extra": [1]}  # other keys allowed
        assert await kv.get("acct/none", Account) is None
        order = {"state": "paid", "lines": [{"price": 2, "qty": 1.5}], "note": None}
        await kv.put("order/1", order)
        typed = await kv.get("order/1", Order)
        assert typed is not None and typed.value["lines"][0]["price"] == 2  # an int is a float
        loose: list[Any] = [dict, object, JsonValue, Any]  # JsonValue, Any: fields' types
        assert [await kv.get("acct/1", t) is not None for t in loose] == [True] * 4
        items = await kv.read(["acct/1", "acct/none"], Account)
        assert items[0] is not None and items[0].value["balance"] == 5 and items[1] is None
        await kv.put("acct/2", {"balance": 7})
        scanned = [
            item.value["balance"] async for item in kv.scan(prefix="acct/", value_type=Account)
        ]
        assert scanned == [5, 7]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("value", "value_type", "field", "expected"),
    [
        ({"balance": "5"}, Account, "value.balance", "expected int, got str"),
        ({"balance": True}, Account, "value.balance", "expected int, got bool"),
        ({"owner": "ada"}, Account, "value.balance", "present (a required key)"),
        ([1], Account, "value", "expected an object (Account), got list"),
        (
            {"state": "lost", "lines": [], "note": None},
            Order,
            "value.state",
            "expected one of 'new' | 'paid'",
        ),
        (
            {"state": "new", "lines": [{"price": "x"}], "note": None},
            Order,
            "value.lines[0].price",
            "expected float, got str",
        ),
        ({"state": "new", "lines": [], "note": 3}, Order, "value.note", "got int"),
        (1.5, int, "value", "expected int, got float"),
        ([1, "2"], list[int], "value[1]", "expected int, got str"),
        ({"a": None}, dict[str, int], "value.a", "expected int, got null"),
    ],
)
async def test_a_value_that_does_not_match_raises_naming_the_path_and_key(
    value: JsonValue, value_type: Any, field: str, expected: str
) -> None:
    async with Client(MemoryBackend()) as kv:
        await kv.put("k/1", value)
        with pytest.raises(ValidationError) as raised:
            await kv.get("k/1", value_type)
        assert raised.value.field == field
        assert expected in raised.value.message and "'k/1'" in raised.value.message
        assert raised.value.details["key"] == "k/1"


@pytest.mark.asyncio
@pytest.mark.parametrize("value_type", [NotJson, tuple, set[int], dict[int, str], bytes])
async def test_a_type_the_sdk_cannot_check_is_refused_before_sending(value_type: Any) -> None:
    backend = MemoryBackend()
    async with Client(backend) as kv:
        for call in (
            lambda: kv.get("k", value_type),
            lambda: kv.read(["k"], value_type),
            lambda: kv.transaction().get("k", value_type),
        ):
            with pytest.raises(ValidationError) as raised:
                await call()
            assert raised.value.field == "value_type"
        with pytest.raises(ValidationError):
            kv.scan(prefix="k", value_type=value_type)
    assert backend.calls == []


@pytest.mark.asyncio
async def test_a_transaction_checks_its_reads_and_its_own_writes() -> None:
    async with Client(MemoryBackend()) as kv:
        await kv.put("acct/1", {"balance": 10})
        async with kv.transaction() as tx:
            read = await tx.get("acct/1", Account)
            assert read is not None
            tx.put("acct/1", {"balance": read.value["balance"] - 3})
            written = await tx.get("acct/1", Account)
            assert written is not None and written.value["balance"] == 7
            assert not written.committed
            tx.put("acct/2", {"balance": "lots"})
            with pytest.raises(ValidationError):
                await tx.get("acct/2", Account)
            tx.delete("acct/2")
        item = await kv.get("acct/1", Account)
        assert item is not None and item.value["balance"] == 7


def test_the_blocking_client_takes_the_same_types() -> None:
    backend = MemoryBackend()
    with SyncClient(Client(backend)) as kv:
        kv.put("acct/1", {"balance": 1})
        item = kv.get("acct/1", Account)
        assert item is not None and item.value["balance"] == 1
        assert [i.value["balance"] for i in kv.scan(prefix="acct/", value_type=Account)] == [1]
        assert kv.read(["acct/1"], Account)[0] is not None
        with kv.transaction() as tx:
            got = tx.get("acct/1", Account)
            assert got is not None and got.value["balance"] == 1
        with pytest.raises(ValidationError):
            kv.get("acct/1", int)


@pytest.mark.asyncio
async def test_writes_send_any_sequence_as_a_list_and_any_mapping_as_an_object() -> None:
    backend = MemoryBackend()
    async with Client(backend) as kv:
        await kv.put("k", (1, (2, 3), OrderedDict(a=(4,))))
        item = await kv.get("k")
        assert item is not None and item.value == [1, [2, 3], {"a": [4]}]
        await kv.update("k2", set={"a": (1,)}, append={"log": ("x", "y")})
        assert (await kv.get("k2")) is not None
        assert Put("p", (1,)).value == [1]
        assert Update("u", set={"a": (1,)}).to_json()["set"] == {"a": [1]}
        assert eq("a", (1,)) == {"path": "a", "eq": [1]}
        assert to_value("text") == "text" and to_value(b"raw") == b"raw"
        for bad in (object(), {1, 2}, bytearray(b"x"), {"a": object()}, {1: "x"}):
            with pytest.raises(ValidationError):
                await kv.put("bad", bad)  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                Update("bad", set={"a": bad})  # type: ignore[dict-item]
        with pytest.raises(ValidationError):
            Update("bad", set=[("a", 1)])  # type: ignore[arg-type]


def test_json_fields_recursive_typeddicts_and_unresolvable_annotations() -> None:
    assert checker(Doc)({"data": {"a": [1, None]}, "tags": ["x", 2]}, "value") is None
    tree = {"name": "a", "children": [{"name": "b", "children": []}]}
    assert checker(Node)(tree, "value") is None
    bad_tree = {"name": "a", "children": [{"name": "b", "children": [{"name": 3, "children": []}]}]}
    assert checker(Node)(bad_tree, "value") == (
        "value.children[0].children[0].name",
        "str, got int",
    )
    with pytest.raises(ValidationError) as raised:
        checker(Broken)
    assert raised.value.field == "value_type" and "do not resolve" in raised.value.message


class Card(TypedDict):
    number: str


def test_forms_msgspec_would_refuse_or_blur_are_checked() -> None:
    """Why the checker is hand-written (module docstring): unions of dict-like or list types,
    dict keys in paths, and bytes (direct mode reads them) only where anything goes."""
    either = checker(Account | Card)
    assert either({"number": "4111"}, "value") is None and either({"balance": 1}, "value") is None
    assert either({"number": 4111}, "value") is not None
    assert checker(list[int] | list[str])(["a", "b"], "value") is None
    assert checker(dict[str, int] | Card)({"x": 1}, "value") is None
    assert checker(Order)(
        {"state": "new", "lines": [{"qty": 1, "price": "x"}], "note": None}, "value"
    ) == ("value.lines[0].price", "float, got str")
    assert checker(str)(b"raw", "value") == ("value", "str, got bytes")
    assert [checker(t)(b"raw", "value") for t in (Any, object, JsonValue)] == [None] * 3


def test_checkers_are_built_once_per_type() -> None:
    assert checker(Account) is checker(Account)
    assert checker(list[int]) is checker(list[int])


SNIPPET = """\
from typing import TypedDict

import kvstore
from kvstore import Put, Update, eq
from kvstore.types import JsonValue


class Account(TypedDict):
    balance: int


async def main(kv: kvstore.Client, tx: kvstore.Transaction, amount: int) -> None:
    a = await tx.get("acct/1", Account)
    if a is None or a.value["balance"] < amount:
        raise ValueError("insufficient funds")
    tx.put("acct/1", {"balance": a.value["balance"] - amount})
    tx.put("acct/2", a.value)
    ids: list[int] = [1, 2]
    await kv.put("ids", {"ids": ids, "pair": (1, 2)})
    raw = await kv.get("acct/1")
    if raw is not None:
        untyped: JsonValue = raw.value
        raw.value["balance"]  # E: index
    await kv.put("bad", object())  # E: arg-type
    await kv.update("bad", set={"a": object()})  # E: dict-item
    await kv.update("bad", add={"n": "one"})  # E: dict-item
    tx.put("bad", {1, 2})  # E: arg-type
    Put("bad", object())  # E: arg-type
    Update("bad", append={"log": [object()]})  # E: list-item
    eq("a", object())  # E: arg-type
    async for item in kv.scan(prefix="acct/", value_type=Account):
        item.value["balance"] + 1
        item.value["balnce"]  # E: typeddict-item
    with kvstore.connect_sync() as kv_sync:
        typed = kv_sync.get("acct/1", Account)
        if typed is not None:
            typed.value["balance"] + 1
        kv_sync.put("bad", object())  # E: arg-type
"""


def test_mypy_strict_accepts_typed_reads_and_rejects_non_json_values(tmp_path: Path) -> None:
    source = tmp_path / "snippet.py"
    source.write_text(SNIPPET, encoding="utf-8")
    expected = {
        (number, match[1])
        for number, line in enumerate(SNIPPET.splitlines(), start=1)
        if (match := re.search(r"# E: ([a-z-]+)$", line))
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-color-output",
            "--hide-error-context",
            str(source),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    found: dict[int, set[str]] = {}
    for match in re.finditer(r"snippet\.py:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M):
        found.setdefault(int(match[1]), set()).add(match[2])
    assert set(found) == {line for line, _ in expected}, result.stdout
    assert all(code in found[line] for line, code in expected), result.stdout
