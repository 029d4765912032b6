"""JSON answers over HTTP, and the error catalogue's answer to a failure.

Theory of operation
-------------------
Every HTTP answer of the public API (:mod:`kvstore.api.app`) and every refusal of a storage
node's ``/metrics`` is built here, so a failure looks the same on every process: the catalogue's
status with ``{"error": {...}}`` (``docs/api.md``), ``Retry-After`` on 503 and
``WWW-Authenticate`` on 401. This module imports only aiohttp's web types and the catalogue, so a
storage node can answer in the API's terms without loading the coordinator's API app.
"""

from __future__ import annotations

import json
from typing import Final

from aiohttp import web

from kvstore.errors import KvError
from kvstore.limits import RETRY_AFTER_S

__all__ = ["JSON_CONTENT_TYPE", "json_response", "error_response"]

JSON_CONTENT_TYPE: Final = "application/json"


def json_response(body: object, status: int = 200) -> web.Response:
    """``body`` as compact UTF-8 JSON."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # A lone surrogate (a member name spelled "\ud800" echoed in an error) becomes its JSON escape.
    return web.Response(
        body=text.encode("utf-8", "backslashreplace"), status=status, content_type=JSON_CONTENT_TYPE
    )


def error_response(error: KvError, status: int | None = None) -> web.Response:
    """The catalogue's answer to ``error``: ``{"error": {...}}`` with ``Retry-After`` on 503 (the
    error's own ``details["retry_after_s"]`` when it has one) and ``WWW-Authenticate`` on 401."""
    response = json_response({"error": error.to_json()}, status or error.code.http_status)
    if response.status == 503:
        retry_after_s = error.details.get("retry_after_s")
        if type(retry_after_s) is not int or retry_after_s < 1:
            retry_after_s = RETRY_AFTER_S
        response.headers["Retry-After"] = str(retry_after_s)
    elif response.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="kvstore"'
    return response
