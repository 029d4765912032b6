"""Property-based fuzzing of the public API against its own OpenAPI document (schemathesis).

Schemathesis reads the document the coordinator serves (``GET /v1/openapi.json``), generates
valid and invalid requests for every operation, sends them to a real cluster (3 nodes, 1
coordinator) and checks every response: no server error (a 503/504 is documented and allowed; a
500 is not), every status, content type, header and body as the document says, schema-invalid
requests refused, undocumented methods answered 405 with ``Allow``, and no operation served
without a token. ``positive_data_acceptance`` is left out on purpose: a schema-valid request
may be refused for reasons a schema cannot express (a condition that does not hold is 412, a
key of 1024 characters may exceed 1024 bytes of UTF-8).

Bounded: a fixed seed and at most ``MAX_EXAMPLES`` cases per operation, and no time budget
(``--max-time`` would make what gets tested depend on the machine's speed: on a loaded machine
fewer cases, or operations left untested). ``RUN_TIMEOUT_S`` and ``REQUEST_TIMEOUT_S`` are guards
against a hang only. Schemathesis runs in a temporary directory so it leaves nothing in the
repository.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.cluster import LocalNodes

MAX_EXAMPLES = 25
RUN_TIMEOUT_S = 240
REQUEST_TIMEOUT_S = 60
SEED = 20261122
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
    "missing_required_header",
    "ignored_auth",
)


def test_schemathesis_finds_no_server_error_and_no_response_outside_the_document(
    tmp_path: Path,
) -> None:
    cluster = LocalNodes(
        tmp_path / "cluster", ("n1", "n2", "n3"), partitions=8, coordinator_ids=("c1",)
    )
    try:
        cluster.start_all()
        workdir = tmp_path / "schemathesis"
        workdir.mkdir()
        command = [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{cluster.api('c1')}/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {cluster.tokens['admin']}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            # One worker: with two, schemathesis's threads call ast.parse concurrently (through
            # Hypothesis describing lambdas), which CPython 3.11.7 can fail with a spurious
            # "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905,
            # reported in threaded programs; seen here in a fresh-clone CI run, 2026-11-22).
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            "--request-timeout",
            str(REQUEST_TIMEOUT_S),
        ]
        run = subprocess.run(
            command,
            check=False,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert run.returncode == 0, (
            f"schemathesis failed (exit {run.returncode}):\n{run.stdout[-20_000:]}\n"
            f"{run.stderr[-4_000:]}\ncoordinator log:\n{cluster.log('c1')}"
        )
        assert "Tested: 10" in run.stdout, run.stdout[-4_000:]
    finally:
        cluster.close()
