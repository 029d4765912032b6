"""The code blocks of the documentation, extracted, classified and run (tests/integration/
test_docs_examples.py).

Which files: ``README.md``, ``docs/**/*.md`` and ``cluster/*.md`` (:func:`doc_files`). Which
blocks: every fenced block (backticks or tildes, indented inside a list item or not). What
happens to a block is decided by its fence's language and by an optional marker, an HTML comment
on the last non-blank line before the fence:

* ``python``, ``py``: run (below) and type-checked with ``mypy --strict``.
* ``sh``, ``bash``, ``shell``: run under ``bash -euo pipefail``; ``console``: the same, for its
  ``$ ``-prompted lines (the other lines are output).
* ``json``, ``toml``, ``yaml``: parsed (a payload or a file excerpt must at least be well
  formed).
* ``text``: a listing, output or a file of another format; nothing is checked.
* no language, or another one: the test fails until the block gets a language from this list
  (or the list grows), so a new block never silently goes unchecked.

Markers (one per block):

* ``<!-- example: skip REASON -->``: not run (a foreground process, root, systemd, several
  hosts, minutes of work). The reason is required. A skipped Python block is still type-checked.
* ``<!-- example: fails CODE -->``: run, and it must fail with ``CODE``: for Python, an exception
  whose class name or catalogue code is ``CODE``; for a shell block, a non-zero exit with
  ``CODE`` in its output.

How blocks run: one real local cluster (``kvstore.localcluster``, 3 nodes, 1 coordinator, what
``kvctl cluster up`` makes) in ``<work>/.kvstore``, every block with ``<work>`` as its working
directory (a fresh temporary directory holding that cluster, a ``.venv`` link to this
interpreter's environment and a copy of ``cluster/``; nothing a block writes lands in the
checkout), ``KV_URL`` and ``KV_TOKEN`` set for the cluster and the environment's ``bin`` first on
``PATH`` (so ``kvctl``, ``python`` and ``.venv/bin/kvctl`` all work). Blocks run in document order
(README.md first), sharing the cluster's data: a block may use what an earlier block of its file
wrote. The cluster is brought up again before each block (``kvctl cluster down`` in a block is
fine). In shell blocks ``curl`` fails on an HTTP error status (``--fail-with-body``).

Python blocks run like lines typed into ``python -m asyncio``: top-level ``await``, ``async
with`` and ``async for`` work. Two names are defined when a block uses them without defining
them (docs/sdk.md says so): ``kv``, an open ``kvstore.Client`` (``kvstore.connect()``), and
``kv_sync``, a ``kvstore.SyncClient`` (``kvstore.connect_sync()``). For mypy, a block with
top-level ``await`` is wrapped in an ``async def``, after the same two names' declarations;
mypy's messages are mapped back to Markdown lines.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
BLOCK_TIMEOUT_S: Final = 120.0
MYPY_TIMEOUT_S: Final = 240.0

PYTHON: Final = frozenset({"python", "py"})
SHELL: Final = frozenset({"sh", "bash", "shell", "console"})
DATA: Final = frozenset({"json", "toml", "yaml"})
LISTING: Final = frozenset({"text"})
LANGUAGES: Final = PYTHON | SHELL | DATA | LISTING

_FENCE: Final = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_MARKER: Final = re.compile(r"^\s*<!--\s*example:\s*(?P<body>.*?)\s*-->\s*$")
_RAISED: Final = "EXAMPLE-RAISED:"
_PRELUDE_NAMES: Final = {
    "kv": ("kvstore.Client", "connect"),
    "kv_sync": ("kvstore.SyncClient", "connect_sync"),
}


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its marker, its text (dedented)."""

    path: str  # relative to the repository
    line: int  # 1-based line of the opening fence
    language: str
    marker: str | None  # the marker's text after "example:", if any
    code: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        if self.marker is not None and self.marker.split(maxsplit=1)[0] == "skip":
            return self.marker.partition(" ")[2].strip()
        return None

    @property
    def expected_failure(self) -> str | None:
        if self.marker is not None and self.marker.split(maxsplit=1)[0] == "fails":
            return self.marker.partition(" ")[2].strip()
        return None

    def problem(self) -> str | None:
        """Why the block is not properly classified, or None (see the module)."""
        if not self.language:
            return f"{self.id}: a fence without a language (use one of {sorted(LANGUAGES)})"
        if self.language not in LANGUAGES:
            return f"{self.id}: unknown language {self.language!r} (use one of {sorted(LANGUAGES)})"
        if self.marker is None:
            return None
        verb = self.marker.split(maxsplit=1)[0] if self.marker.strip() else ""
        if verb not in ("skip", "fails"):
            return f"{self.id}: unknown marker {self.marker!r} (skip REASON, fails CODE)"
        if not self.marker.partition(" ")[2].strip():
            return f"{self.id}: the marker {verb!r} needs a reason or an error code"
        if verb == "fails" and self.language not in PYTHON | SHELL:
            return f"{self.id}: a {self.language!r} block is never run, so it cannot fail"
        if self.language in LISTING:
            return f"{self.id}: a {self.language!r} block is never run; drop its marker"
        return None

    @property
    def runs(self) -> bool:
        return self.language in PYTHON | SHELL and self.skip_reason is None


def doc_files(root: Path = REPO) -> list[Path]:
    """The documentation whose blocks are checked, README.md first."""
    files = [root / "README.md"]
    files += sorted((root / "docs").rglob("*.md"))
    files += sorted((root / "cluster").glob("*.md"))
    return [path for path in files if path.is_file()]


def extract(path: Path, root: Path = REPO) -> list[Block]:
    """The fenced blocks of one Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        info = opening["info"].strip()
        language = info.split()[0].lower() if info else ""
        marker = None
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0:
            found = _MARKER.match(lines[before])
            marker = found["body"] if found is not None else None
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = lines[end].strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
                break
            text = lines[end]
            body.append(text[indent:] if text[:indent].strip() == "" else text.lstrip())
            end += 1
        blocks.append(
            Block(
                path=str(path.relative_to(root)),
                line=index + 1,
                language=language,
                marker=marker,
                code="\n".join(body) + "\n",
            )
        )
        index = end + 1
    return blocks


def all_blocks(root: Path = REPO) -> list[Block]:
    return [block for path in doc_files(root) for block in extract(path, root)]


# --- running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"exit status {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def prepare_workdir(work: Path) -> None:
    """``work`` as described in the module: a ``.venv`` link and a copy of ``cluster/``."""
    work.mkdir(parents=True, exist_ok=True)
    (work / ".venv").symlink_to(Path(sys.prefix))
    shutil.copytree(REPO / "cluster", work / "cluster")


def block_env(cluster_env: Mapping[str, str]) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("KVSTORE_DIR", "KV_URL", "KV_TOKEN", "PYTHONPATH")
    }
    env.update(cluster_env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(argv: Sequence[str], work: Path, env: Mapping[str, str]) -> Outcome:
    """Run ``argv`` in its own session; on timeout kill the whole session and fail."""
    process = subprocess.Popen(
        argv,
        cwd=work,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return Outcome(-1, stdout, stderr + f"\n(killed after {BLOCK_TIMEOUT_S} s)")
    return Outcome(process.returncode, stdout, stderr)


_SHELL_PRELUDE: Final = """set -euo pipefail
curl() { command curl --fail-with-body --show-error "$@"; }
"""


def shell_script(block: Block) -> str:
    code = block.code
    if block.language == "console":
        commands = []
        for line in code.splitlines():
            if line.startswith("$ "):
                commands.append(line[2:])
            elif commands and commands[-1].endswith("\\"):  # a continuation, maybe "> "-prompted
                commands.append(line[2:] if line.startswith("> ") else line)
        code = "\n".join(commands) + "\n"
    return _SHELL_PRELUDE + code


def run_shell(block: Block, work: Path, env: Mapping[str, str]) -> Outcome:
    return _run(["bash", "-c", shell_script(block), block.id], work, env)


def _bound_names(tree: ast.Module) -> set[str]:
    """Names a block binds anywhere (assignments, imports, with/for targets, definitions)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return bound


def prelude_names(code: str) -> list[str]:
    """Which of ``kv``/``kv_sync`` a block uses without defining (see the module)."""
    tree = ast.parse(code)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    bound = _bound_names(tree)
    return [name for name in _PRELUDE_NAMES if name in used and name not in bound]


def is_async(code: str) -> bool:
    """Whether a block has top-level ``await``/``async with``/``async for``."""
    compiled = compile(code, "<block>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    return bool(compiled.co_flags & 0x80)  # inspect.CO_COROUTINE


# Runs one Python block file (argv[1]) with the prelude names of argv[2:].
_PYTHON_RUNNER: Final = r"""
import ast, asyncio, sys, traceback

path, names = sys.argv[1], sys.argv[2:]
source = open(path, encoding="utf-8").read()
code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__"}


def report(error):
    code = getattr(error, "code", None)
    code = getattr(code, "value", code)
    print("%s %s %s" % (MARK, type(error).__name__, code or ""), file=sys.stderr)
    traceback.print_exc()
    sys.exit(1)


async def main():
    import kvstore

    if "kv" in names:
        namespace["kv"] = kvstore.connect()
    if "kv_sync" in names:
        namespace["kv_sync"] = kvstore.connect_sync()
    try:
        result = eval(code, namespace)
        if code.co_flags & 0x80:
            await result
    finally:
        if "kv" in names:
            await namespace["kv"].close()
        if "kv_sync" in names:
            namespace["kv_sync"].close()


try:
    if code.co_flags & 0x80:
        asyncio.run(main())
    else:
        if "kv" in names:  # a synchronous block gets no async client
            names.remove("kv")
        if names:
            asyncio.run(main())
        else:
            exec(code, namespace)
except Exception as error:
    report(error)
""".replace("MARK", repr(_RAISED))


def run_python(block: Block, work: Path, scratch: Path, env: Mapping[str, str]) -> Outcome:
    scratch.mkdir(parents=True, exist_ok=True)
    source = scratch / f"{module_name(block)}.py"
    source.write_text(block.code, encoding="utf-8")
    argv = [sys.executable, "-c", _PYTHON_RUNNER, str(source), *prelude_names(block.code)]
    return _run(argv, work, env)


def raised(outcome: Outcome) -> set[str]:
    """The class name and catalogue code of what a Python block raised (empty if nothing)."""
    for line in outcome.stderr.splitlines():
        if line.startswith(_RAISED):
            return set(line[len(_RAISED) :].split())
    return set()


def check_outcome(block: Block, outcome: Outcome) -> None:
    """Assert that ``block`` did what its marker says: succeed, or fail with its code."""
    expected = block.expected_failure
    if expected is None:
        assert outcome.returncode == 0, f"{block.id} failed:\n{block.code}\n{outcome}"
        return
    assert outcome.returncode != 0, f"{block.id} should fail with {expected}:\n{outcome}"
    if block.language in PYTHON:
        assert expected in raised(outcome), f"{block.id} should raise {expected}:\n{outcome}"
    else:
        output = outcome.stdout + outcome.stderr
        assert expected in output, f"{block.id} should fail with {expected}:\n{outcome}"


def check_data(block: Block) -> None:
    """A json, toml or yaml block parses."""
    if block.language == "json":
        json.loads(block.code)
    elif block.language == "yaml":
        import yaml  # type: ignore[import-untyped]  # noqa: PLC0415 - comes with schemathesis

        yaml.safe_load(block.code)
    else:
        tomllib.loads(block.code)


# --- type checking -----------------------------------------------------------------------------


def module_name(block: Block) -> str:
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", block.path).strip("_").lower()
    return f"example_{slug}_{block.line}"


@dataclass(frozen=True)
class TypedSource:
    block: Block
    text: str
    offset: int  # file line = Markdown line + offset (for lines of the block)


def typed_source(block: Block) -> TypedSource:
    """The block as a module for mypy (see the module)."""
    names = prelude_names(block.code)
    header: list[str] = []
    if names:
        header.append("import kvstore as _kvstore")
        for name in names:
            annotation, factory = _PRELUDE_NAMES[name]
            header.append(f"{name}: _{annotation} = _kvstore.{factory}()")
    body = block.code.splitlines()
    if is_async(block.code):
        header.append("async def _example() -> None:  # the block, in an async context")
        body = [f"    {line}" if line.strip() else line for line in body]
    # The block's first line is Markdown line ``block.line + 1``, file line ``len(header) + 1``.
    offset = len(header) - block.line
    return TypedSource(block, "\n".join([*header, *body]) + "\n", offset)


_MYPY_LINE: Final = re.compile(r"^(?P<file>[^:]+\.py):(?P<line>\d+):(?P<rest>.*)$")


def type_check(blocks: Sequence[Block], scratch: Path) -> tuple[int, str]:
    """``mypy --strict`` over every block (one run); the exit status and the messages, with
    Markdown locations."""
    scratch.mkdir(parents=True, exist_ok=True)
    sources = {module_name(block): typed_source(block) for block in blocks}
    files = []
    for name, source in sources.items():
        path = scratch / f"{name}.py"
        path.write_text(source.text, encoding="utf-8")
        files.append(str(path))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(scratch / ".mypy_cache"),
            "--no-color-output",
            *files,
        ],
        cwd=REPO,  # the project's mypy configuration
        capture_output=True,
        text=True,
        timeout=MYPY_TIMEOUT_S,
        check=False,
    )
    return result.returncode, "\n".join(_md_locations(result.stdout + result.stderr, sources))


def _md_locations(output: str, sources: Mapping[str, TypedSource]) -> Iterator[str]:
    for line in output.splitlines():
        found = _MYPY_LINE.match(line)
        source = sources.get(Path(found["file"]).stem) if found is not None else None
        if found is None or source is None:
            yield line
            continue
        md_line = int(found["line"]) - source.offset
        yield f"{source.block.path}:{md_line}:{found['rest']}"
