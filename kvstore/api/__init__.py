"""The public HTTP JSON API of a coordinator (``docs/api.md``).

Theory of operation
-------------------
Modules here sit at the edge between HTTP callers and the coordinator: :mod:`kvstore.api.tokens`
decides who a caller is (a bearer token from the API token file) and what its role lets it do.
Nothing is re-exported from the package itself; import the module you need.
"""

__all__: list[str] = []
