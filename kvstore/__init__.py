"""kvstore: a distributed, serializable, transactional key-value store.

See README.md for the architecture; ``kvstore.client`` is the SDK.
"""

__all__: list[str] = []
