"""Request body decoding with a cap (kvstore/api/bodies.py, decode_content).

Goal: gzip and both forms of deflate decode; a bomb, a truncated stream, trailing bytes or an
unknown encoding are refused with the catalogue's TooLarge or ValidationError, never an
unbounded allocation. Method: zlib/gzip round trips and hand-made broken streams.
"""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.api.bodies import DECODED, decode_content
from kvstore.errors import TooLarge, ValidationError

LIMIT = 1024


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@given(st.binary(max_size=LIMIT))
def test_every_encoding_round_trips(data: bytes) -> None:
    assert decode_content(gzip.compress(data), "gzip", LIMIT) == data
    assert decode_content(gzip.compress(data), " X-GZIP ", LIMIT) == data
    assert decode_content(zlib.compress(data), "deflate", LIMIT) == data
    assert decode_content(raw_deflate(data), "Deflate", LIMIT) == data


@pytest.mark.parametrize("encoding", sorted(DECODED))
def test_more_than_the_limit_once_decoded_is_too_large(encoding: str) -> None:
    data = b"\x00" * (LIMIT + 1)
    packed = zlib.compress(data) if encoding == "deflate" else gzip.compress(data)
    assert len(packed) < LIMIT // 10
    with pytest.raises(TooLarge):
        decode_content(packed, encoding, LIMIT)
    assert decode_content(packed, encoding, LIMIT + 1) == data


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b"", "gzip"),
        (b"plain text", "gzip"),
        (gzip.compress(b"{}")[:-4], "gzip"),  # truncated
        (gzip.compress(b"{}") + b"junk", "gzip"),  # trailing bytes
        (zlib.compress(b"{}")[:-2], "deflate"),
        (b"\xff\xff\xff", "deflate"),
    ],
)
def test_broken_streams_are_validation_errors(data: bytes, encoding: str) -> None:
    with pytest.raises(ValidationError) as caught:
        decode_content(data, encoding, LIMIT)
    assert caught.value.field == "Content-Encoding"


@pytest.mark.parametrize("encoding", ["br", "zstd", "identity", "compress", ""])
def test_other_encodings_are_not_decoded_here(encoding: str) -> None:
    with pytest.raises(ValidationError):
        decode_content(b"{}", encoding, LIMIT)
