"""Every code block of README.md, docs/*.md and cluster/README.md runs as documented.

Goal: the documentation's examples cannot rot. Method (``tests/support/docs_examples.py`` says
the rules in full): the blocks are extracted from the Markdown; a block that is neither run nor
classified (a fence without a known language, a marker this test does not know, a ``skip``
without a reason) fails ``test_every_block_is_classified``. Python and shell blocks run in
document order against one real local cluster (3 nodes, 1 coordinator, made as ``kvctl cluster
up`` makes it) in a temporary working directory, each as its own process; a block marked
``<!-- example: fails CODE -->`` must fail with CODE, one marked ``<!-- example: skip REASON -->``
is not run. JSON and TOML blocks must parse. Every Python block, skipped or not, must pass
``mypy --strict`` (one mypy run over all of them), so the SDK's types are tried the way a user
meets them.

The cluster is stopped (then SIGKILLed by pid if anything is left) in teardown whatever happened.
The first tests check the checker itself on a Markdown file of its own, with no cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.docs_examples import (
    DATA,
    PYTHON,
    Block,
    Outcome,
    all_blocks,
    block_env,
    check_data,
    check_outcome,
    extract,
    prepare_workdir,
    run_python,
    run_shell,
    type_check,
)
from support.kvctl import kill_leftovers

from kvstore.localcluster import LocalCluster

BLOCKS = all_blocks()
RUN = [block for block in BLOCKS if block.runs and block.problem() is None]
PARSE = [block for block in BLOCKS if block.language in DATA and block.skip_reason is None]
TYPED = [block for block in BLOCKS if block.language in PYTHON and block.problem() is None]


SAMPLE = """\
# Sample

```python
x: int = 1
```

<!-- example: skip needs a host of its own -->
```sh
systemctl start kvstore
```

1. A step:

   <!-- example: fails ConditionFailed -->
   ```bash
   echo "error: ConditionFailed" >&2; exit 4
   ```

```
no language
```

<!-- example: perhaps -->
```python
y: str = 2
```

<!-- example: skip -->
```toml
a = 1
```

```console
$ printf '%s\\n' "$KV_URL" \\
>   | grep -q example
example output
```
"""


def test_the_checker_extracts_and_classifies_blocks(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text(SAMPLE, encoding="utf-8")
    blocks = extract(tmp_path / "doc.md", tmp_path)
    assert [(block.line, block.language) for block in blocks] == [
        (3, "python"),
        (8, "sh"),
        (15, "bash"),
        (19, ""),
        (24, "python"),
        (29, "toml"),
        (33, "console"),
    ]
    python, skipped, failing, bare, odd, reasonless, console = blocks
    assert python.runs and python.problem() is None and python.code == "x: int = 1\n"
    assert skipped.skip_reason == "needs a host of its own" and not skipped.runs
    assert failing.expected_failure == "ConditionFailed" and failing.runs
    assert failing.code.startswith("echo"), "an indented block is dedented"
    assert "without a language" in str(bare.problem())
    assert "unknown marker" in str(odd.problem())
    assert "needs a reason" in str(reasonless.problem())
    assert console.runs and console.problem() is None


def test_the_checker_holds_blocks_to_their_markers(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text(SAMPLE, encoding="utf-8")
    python, _, failing, *_, console = extract(tmp_path / "doc.md", tmp_path)
    env = block_env({"KV_URL": "http://example"})
    check_outcome(console, run_shell(console, tmp_path, env))  # prompts run, output does not
    outcome = run_shell(failing, tmp_path, env)
    check_outcome(failing, outcome)  # it fails, as marked
    with pytest.raises(AssertionError):
        check_outcome(failing, Outcome(0, "", ""))  # a "fails" block that succeeded
    with pytest.raises(AssertionError):
        check_outcome(failing, Outcome(1, "", "error: Unavailable"))  # failed otherwise
    check_outcome(python, run_python(python, tmp_path, tmp_path / "scratch", env))
    with pytest.raises(AssertionError):
        check_outcome(python, Outcome(1, "", ""))


def test_the_checker_reports_type_errors_at_their_markdown_lines(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text(SAMPLE, encoding="utf-8")
    blocks = extract(tmp_path / "doc.md", tmp_path)
    status, messages = type_check([blocks[0], blocks[4]], tmp_path / "mypy")
    assert status != 0
    assert "doc.md:25: error: Incompatible types in assignment" in messages, messages
    assert "doc.md:4" not in messages, messages


class Docs:
    """The working directory, the cluster in it, and the blocks' environment."""

    def __init__(self, work: Path, cluster: LocalCluster) -> None:
        self.work = work
        self.cluster = cluster
        self.scratch = work.parent / "scratch"

    def env(self) -> dict[str, str]:
        return block_env(self.cluster.env())


def _stop(root: Path, cluster: LocalCluster | None) -> None:
    try:
        if cluster is not None:
            cluster.down()
    finally:
        kill_leftovers(root)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docs]:
    work = tmp_path_factory.mktemp("docs") / "work"
    prepare_workdir(work)
    root = work / ".kvstore"
    cluster: LocalCluster | None = None
    try:
        cluster, _ = LocalCluster.open_or_create(root)
        cluster.up()
        yield Docs(work, cluster)
    finally:
        _stop(root, cluster)


def test_every_block_is_classified() -> None:
    assert BLOCKS, "no code block found: is the extractor broken?"
    problems = [problem for block in BLOCKS if (problem := block.problem()) is not None]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", RUN, ids=[block.id for block in RUN])
def test_example_runs(block: Block, docs: Docs) -> None:
    docs.cluster.up()  # an earlier block may have run `kvctl cluster down`
    if block.language in PYTHON:
        outcome = run_python(block, docs.work, docs.scratch, docs.env())
    else:
        outcome = run_shell(block, docs.work, docs.env())
    check_outcome(block, outcome)


@pytest.mark.parametrize("block", PARSE, ids=[block.id for block in PARSE])
def test_data_block_parses(block: Block) -> None:
    check_data(block)


def test_python_examples_pass_mypy_strict(tmp_path: Path) -> None:
    assert TYPED
    status, messages = type_check(TYPED, tmp_path)
    assert status == 0, messages
