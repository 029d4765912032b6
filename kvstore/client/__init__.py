"""The Python SDK (async client, sync wrapper, retries)."""
