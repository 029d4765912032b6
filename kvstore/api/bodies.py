"""Request bodies of the public HTTP server: read with a cap, decompressed with a cap.

Theory of operation
-------------------
Both ways in on the API's port, the JSON API (:mod:`kvstore.api.app`) and the DynamoDB endpoint
(:mod:`kvstore.dynamodb.endpoint`), read bodies here, so they are bounded the same way.

:func:`read_capped` refuses a ``Content-Length`` above the cap with
:class:`~kvstore.errors.TooLarge` before a byte of the body is read, and cuts a chunked body off
as soon as it passes the cap; it then marks the request (``CUT_OFF``), and the caller answers with
:func:`answer_and_close`: ``Connection: close`` and the connection closed right after the answer,
so not another byte of that body is read (aiohttp would otherwise keep reading and discarding it
for its lingering time).

The server runs with aiohttp's automatic request decompression off (``AUTO_DECOMPRESS``, passed
to ``web.AppRunner`` by every process serving the API): AWS Signature V4 covers the body *as sent*,
compressed, so the DynamoDB endpoint must see those bytes. :func:`decode_content` then undoes
``gzip`` and ``deflate`` (zlib-wrapped or raw, as aiohttp accepted both) after the fact, with its
own cap on the decoded size (a small compressed body must not expand without bound), and refuses
trailing bytes after the compressed stream or a truncated one. ``identity`` or no header is the
body itself; any other encoding is the caller's decision (:data:`DECODED` names what is decoded).
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Final

from aiohttp import web

from kvstore.errors import TooLarge, ValidationError

__all__ = [
    "CUT_OFF",
    "AUTO_DECOMPRESS",
    "DECODED",
    "read_capped",
    "decode_content",
    "answer_and_close",
]

CUT_OFF: Final = "kvstore.body_cut_off"  # request flag: the body passed the cap mid-stream
AUTO_DECOMPRESS: Final = False  # web.AppRunner(..., auto_decompress=AUTO_DECOMPRESS)
DECODED: Final = frozenset({"gzip", "x-gzip", "deflate"})
_READ_CHUNK_BYTES: Final = 64 * 1024


async def read_capped(request: web.Request, limit: int) -> bytes:
    """The raw body of ``request``, at most ``limit`` bytes, else :class:`TooLarge`."""
    length = request.content_length
    if length is not None and length > limit:
        raise TooLarge(
            f"the body is {length} bytes; at most {limit} allowed", details={"limit": limit}
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(_READ_CHUNK_BYTES)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            request[CUT_OFF] = True
            raise TooLarge(f"the body is over {limit} bytes", details={"limit": limit})
        chunks.append(chunk)
    return b"".join(chunks)


def decode_content(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` decompressed per ``encoding`` (one of :data:`DECODED`, case-insensitive), at most
    ``limit`` bytes of output (else :class:`TooLarge`); a bad stream is a ValidationError."""
    name = encoding.strip().lower()
    if name not in DECODED:
        raise ValidationError("Content-Encoding", f"cannot decode {name[:32]!r}")
    if name in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif len(raw) >= 2 and raw[0] & 0x0F == 8 and ((raw[0] << 8) | raw[1]) % 31 == 0:
        wbits = zlib.MAX_WBITS  # zlib-wrapped deflate (RFC 9110's "deflate")
    else:
        wbits = -zlib.MAX_WBITS  # raw deflate, which many clients send instead
    decompressor = zlib.decompressobj(wbits)
    try:
        decoded = decompressor.decompress(raw, limit + 1)
    except zlib.error:
        raise ValidationError("Content-Encoding", f"the body is not valid {name} data") from None
    if len(decoded) > limit or decompressor.unconsumed_tail:
        raise TooLarge(
            f"the body is over {limit} bytes once decompressed", details={"limit": limit}
        )
    if not decompressor.eof or decompressor.unused_data:
        raise ValidationError(
            "Content-Encoding", f"the {name} data is truncated or followed by other bytes"
        )
    return decoded


async def answer_and_close(request: web.Request, response: web.Response) -> None:
    """Send ``response`` with ``Connection: close``, then close the connection without reading
    the rest of the request body (the transport flushes the answer before it closes)."""
    response.force_close()
    with contextlib.suppress(ConnectionError):  # the client may be gone already
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()
