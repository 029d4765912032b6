"""Coordinator: the pure transaction cores, the library that runs them, and the service.

The cores (``core``, ``read``, ``recovery``) are sans-I/O state machines; ``engine.Coordinator``
runs them against storage nodes (embeddable: the SDK's direct mode); ``service`` serves the
public HTTP API (``kvstore.api``) over it as its own process.
"""
