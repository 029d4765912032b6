"""Protocol cores stay pure: no I/O, clock or randomness imports (DESIGN section 9)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_MODULES = sorted(
    [
        ROOT / "kvstore/storage_node/core.py",
        ROOT / "kvstore/storage_node/store.py",
        ROOT / "kvstore/storage_node/overlay.py",  # store.py's memory store runs it
        ROOT / "kvstore/storage_node/resolver.py",
    ]
    + [p for p in (ROOT / "kvstore/coordinator").glob("*.py") if p.name != "__init__.py"]
    # Modules every core imports must be pure as well.
    + [
        ROOT / f"kvstore/{name}.py"
        for name in ("conditions", "updates", "paths", "values", "ops", "messages", "types")
    ]
)
FORBIDDEN = {"asyncio", "sqlite3", "time", "random", "os", "socket", "aiohttp", "threading"}
SERVICE_MODULES = {
    "service.py",
    "http_api.py",
    "server.py",
    "main.py",
    "__main__.py",
    "driver.py",
    "engine.py",  # the coordinator library: the asyncio shell that runs the cores
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    "path",
    [p for p in CORE_MODULES if p.name not in SERVICE_MODULES],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_core_module_imports_no_io_clock_or_randomness(path: Path) -> None:
    assert not imported_roots(path) & FORBIDDEN


def test_the_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom asyncio import sleep\n")
    assert imported_roots(bad) & FORBIDDEN == {"time", "asyncio"}


def test_mutants_touch_the_environment_only_to_refuse_arming() -> None:
    """``kvstore.mutants`` (imported by every core) reads ``os.environ`` and nothing else."""
    path = ROOT / "kvstore/mutants.py"
    assert imported_roots(path) & FORBIDDEN == {"os"}
    tree = ast.parse(path.read_text())
    uses = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    }
    assert uses == {"environ"}
