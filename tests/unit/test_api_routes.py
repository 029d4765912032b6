"""The routes the API serves and the OpenAPI document agree (kvstore/api/openapi.json)."""

from __future__ import annotations

import json

from kvstore.api.app import ROUTES, openapi_document

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _document() -> dict[str, object]:
    doc = json.loads(openapi_document())
    assert isinstance(doc, dict)
    return doc


def test_every_route_is_documented_and_every_documented_operation_is_served() -> None:
    paths = _document()["paths"]
    assert isinstance(paths, dict)
    documented = {
        (method.upper(), path)
        for path, item in paths.items()
        for method in item
        if method in _METHODS
    }
    served = {(route.method, route.path) for route in ROUTES}
    assert documented == served


def test_only_health_is_documented_without_a_token_and_only_health_is_served_without_one() -> None:
    doc = _document()
    assert doc["security"] == [{"bearerAuth": []}]
    paths = doc["paths"]
    assert isinstance(paths, dict)
    open_documented = {
        (method.upper(), path)
        for path, item in paths.items()
        for method, operation in item.items()
        if method in _METHODS and operation.get("security") == []
    }
    open_served = {(route.method, route.path) for route in ROUTES if route.role is None}
    assert open_documented == open_served == {("GET", "/v1/health")}


def test_the_document_is_openapi_3_1() -> None:
    assert str(_document()["openapi"]).startswith("3.1.")
