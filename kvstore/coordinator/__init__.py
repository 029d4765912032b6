"""Coordinator: the pure two-phase-commit core and, later, its asyncio service."""
