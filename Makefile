# kvstore developer targets. `make test` is the one command CI and the README give:
# it creates .venv when missing, installs the project with its dev dependencies,
# then runs lint, format check, strict type checks and the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit install clean fmt sim sim-check mutants chaos-check chaos chaos-mutants bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict kvstore chaos

unit: $(STAMP)
	$(BIN)/pytest -q

# The simulator's share of CI: a 2,000-seed sweep (seeds 100..2099; the pytest suite covers
# others) and the mutant hunt, which must catch every deliberate bug (a few minutes on 2 cores).
sim-check: $(STAMP)
	$(BIN)/python -m chaos sim --seeds 2000 --start 100 --jobs 2
	$(BIN)/python -m chaos mutants --jobs 2

# A longer sweep for local use: 10,000 seeds (seeds 100..10099).
sim: $(STAMP)
	$(BIN)/python -m chaos sim --seeds 10000 --start 100

mutants: $(STAMP)
	$(BIN)/python -m chaos mutants

# The chaos harness's share of CI: three short runs of real processes under faults (about a
# minute each), checked for serializability; the third is a replicated cluster (RF 3, its
# private etcd) whose partition leaders are killed, with the failover measured. Reports land in
# chaos-out/ci/.
chaos-check: $(STAMP)
	$(BIN)/python -m chaos run --workload list-append --nemesis all --duration 45 --seed 1 --out chaos-out/ci/list-append
	$(BIN)/python -m chaos run --workload bank --nemesis kill,partition --duration 45 --seed 2 --out chaos-out/ci/bank
	$(BIN)/python -m chaos run --workload bank --nemesis kill-leader --replication-factor 3 --duration 45 --seed 3 --out chaos-out/ci/bank-replicated
	$(BIN)/python -m chaos run --workload list-append --nemesis move,kill-leader --replication-factor 3 --duration 45 --seed 4 --out chaos-out/ci/list-append-moves

# The longer matrix (about 30 minutes): every workload under every nemesis, 80 s each.
# Results from this machine are in docs/chaos.md.
CHAOS_SEED ?= 7
chaos: $(STAMP)
	@failed=0; for w in list-append bank register set; do \
	  for n in kill pause partition clock all; do \
	    $(BIN)/python -m chaos run --workload $$w --nemesis $$n --duration 80 \
	      --seed $(CHAOS_SEED) --out chaos-out/matrix/$$w-$$n || failed=$$((failed + 1)); \
	  done; \
	done; echo "matrix: 20 runs, $$failed failed"; test $$failed -eq 0

# Test the tests: real processes with deliberate bugs armed must fail their runs.
chaos-mutants: $(STAMP)
	$(BIN)/python -m chaos.mutant_runs

test: lint typecheck unit sim-check chaos-check chaos-mutants

# The store against PostgreSQL on transfers (docs/bench.md); PostgreSQL from Debian's packages.
bench: $(STAMP)
	$(BIN)/kvctl bench --workload transfer --compare-postgres --duration 15

# A local cluster in ./.kvstore (3 storage nodes, each serving the API, 16 partitions), attached: it
# prints the API URL, the admin token and first requests and streams every process's log. Ctrl-C
# stops the whole cluster (the data stays; `make run` again starts the same cluster); `kvctl
# cluster down` elsewhere stops it and ends this too; a second `make run` while one is attached
# is refused. See `kvctl cluster up --help`.
.PHONY: run
run: $(STAMP)
	$(BIN)/kvctl cluster up --foreground

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
