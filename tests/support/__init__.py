"""Shared test helpers (importable as ``support.*``; tests/ is on pytest's pythonpath)."""
