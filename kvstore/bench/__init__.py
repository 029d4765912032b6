"""``kvctl bench``: the store against PostgreSQL, side by side, on the same workloads.

Modules: ``workloads`` (what each workload does, the same for both systems), ``results`` (one
system's figures and the ratio), ``store`` (a temporary local cluster driven through the SDK),
``postgres`` (a temporary PostgreSQL server driven by its own pgbench), ``render`` (tables and
JSON). docs/bench.md has the figures from the development machine.
"""
