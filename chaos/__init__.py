"""Chaos: history format, serializability checkers, simulator, workloads and nemeses."""
