"""AWS Signature Version 4 verification for the DynamoDB endpoint: pure functions, no I/O.

Theory of operation
-------------------
A DynamoDB client signs each request with its secret access key (here: an API token, whose name
is the access key id) and sends ``Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<yyyymmdd>/
<region>/dynamodb/aws4_request, SignedHeaders=<a;b;c>, Signature=<64 hex>``. Verification
recomputes the signature from what was received and compares (reference
``dynamodb-api.md`` section 2):

1. :func:`parse_authorization` splits the header strictly and boundedly
   (``DYNAMODB_AUTHORIZATION_CHARS_MAX``, ``DYNAMODB_SIGNED_HEADERS_MAX``). No header is
   ``MissingAuthenticationTokenException``; anything malformed is
   ``IncompleteSignatureException``. Any region is accepted; the service must be ``dynamodb``.
2. The caller looks the access key id up (:class:`~kvstore.api.tokens.TokenStore`) and calls
   :func:`verify` with the token itself as the secret.
3. :func:`canonical_request`: the method; the path *as received*, dot segments and repeated
   slashes removed and percent-quoted again as botocore does for every service but S3; the query
   pairs as received, sorted; one ``name:value`` line per entry of the request's *own*
   ``SignedHeaders``, sorted (values trimmed, inner runs of whitespace collapsed, repeated
   headers comma-joined in arrival order, a signed header that is absent counts as empty); the
   ``SignedHeaders`` list; the payload hash: ``X-Amz-Content-SHA256`` when sent (which must then
   equal the SHA-256 of the body, or be ``UNSIGNED-PAYLOAD``), else the SHA-256 of the body bytes
   as received (still gzip-compressed, if they are).
4. :func:`string_to_sign` and :func:`signing_key` (HMAC-SHA256 chained from ``"AWS4" + secret``
   over date, region, service, ``aws4_request``); the hex signatures are compared with
   :func:`hmac.compare_digest`.
5. The request time is ``X-Amz-Date`` (``yyyymmddThhmmssZ``), else an RFC 1123 ``Date`` header
   (botocore's alternative); the scope's date must be its date, and it must be within
   ``DYNAMODB_SIGNATURE_SKEW_MS`` of the verifier's clock (``now_s``, injected). A mismatch or
   an expired request is ``InvalidSignatureException``.

Every failure is an :class:`~kvstore.errors.Unauthorized` whose ``details["aws_type"]`` is the
DynamoDB error name (:mod:`kvstore.dynamodb.errors` turns it into the wire form). Messages use
AWS's wording where it exists and never contain the secret, the signature or any unvalidated
part of the header (a bearer token sent here by mistake must not be echoed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import quote

from kvstore.errors import Unauthorized
from kvstore.limits import (
    DYNAMODB_AUTHORIZATION_CHARS_MAX,
    DYNAMODB_SIGNATURE_SKEW_MS,
    DYNAMODB_SIGNED_HEADERS_MAX,
)

__all__ = [
    "ALGORITHM",
    "SERVICE",
    "UNSIGNED_PAYLOAD",
    "MISSING_AUTHENTICATION_TOKEN",
    "INCOMPLETE_SIGNATURE",
    "UNRECOGNIZED_CLIENT",
    "INVALID_SIGNATURE",
    "Authorization",
    "parse_authorization",
    "request_time",
    "canonical_path",
    "canonical_query",
    "canonical_request",
    "string_to_sign",
    "signing_key",
    "sign",
    "verify",
    "auth_error",
]

ALGORITHM: Final = "AWS4-HMAC-SHA256"
SERVICE: Final = "dynamodb"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
_TERMINATOR: Final = "aws4_request"
_AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"

# The DynamoDB error names of authentication failures (details["aws_type"]).
MISSING_AUTHENTICATION_TOKEN: Final = "MissingAuthenticationTokenException"
INCOMPLETE_SIGNATURE: Final = "IncompleteSignatureException"
UNRECOGNIZED_CLIENT: Final = "UnrecognizedClientException"
INVALID_SIGNATURE: Final = "InvalidSignatureException"

_SIGNATURE_MISMATCH: Final = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_COMPONENT: Final = re.compile(r"\s*([A-Za-z]+)=([^,\s]*)\s*")
_ACCESS_KEY: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_SCOPE_DATE: Final = re.compile(r"[0-9]{8}")
_REGION: Final = re.compile(r"[a-z0-9-]{1,64}")
_HEADER_NAME: Final = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,128}")
_HEX_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE: Final = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_REQUIRED: Final = ("Credential", "SignedHeaders", "Signature")


def auth_error(aws_type: str, message: str) -> Unauthorized:
    """An authentication failure with its DynamoDB error name."""
    return Unauthorized(message, details={"aws_type": aws_type})


def _incomplete(message: str) -> Unauthorized:
    return auth_error(INCOMPLETE_SIGNATURE, message)


def _invalid(message: str) -> Unauthorized:
    return auth_error(INVALID_SIGNATURE, message)


@dataclass(frozen=True, slots=True)
class Authorization:
    """A parsed ``Authorization`` header (every part validated)."""

    access_key_id: str
    date: str  # yyyymmdd, the scope's date
    region: str
    service: str
    signed_headers: tuple[str, ...]  # lowercase, as listed
    signature: str  # 64 lowercase hex digits

    @property
    def scope(self) -> str:
        """``date/region/service/aws4_request``, the credential scope of the string to sign."""
        return f"{self.date}/{self.region}/{self.service}/{_TERMINATOR}"


def parse_authorization(header: str | None) -> Authorization:
    """The parts of an ``Authorization`` header, or an :class:`Unauthorized` saying what is
    missing or malformed (``aws_type`` Missing... or IncompleteSignatureException)."""
    if header is None or not header.strip():
        raise auth_error(MISSING_AUTHENTICATION_TOKEN, "Request is missing Authentication Token")
    if len(header) > DYNAMODB_AUTHORIZATION_CHARS_MAX:
        raise _incomplete(
            f"The Authorization header is longer than {DYNAMODB_AUTHORIZATION_CHARS_MAX} characters"
        )
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(
            f"Authorization header must use the {ALGORITHM} algorithm (AWS Signature Version 4)"
        )
    components: dict[str, str] = {}
    for part in rest.split(","):
        match = _COMPONENT.fullmatch(part)
        if match is None:
            raise _incomplete(
                "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
                "parameters, as name=value separated by commas"
            )
        name, value = match.group(1), match.group(2)
        if name in components:
            raise _incomplete(f"Authorization header has the parameter '{name}' twice")
        components[name] = value
    missing = [name for name in _REQUIRED if not components.get(name)]
    if missing:
        raise _incomplete(
            " ".join(f"Authorization header requires '{name}' parameter." for name in missing)
        )
    unknown = sorted(set(components) - set(_REQUIRED))
    if unknown:
        raise _incomplete(f"Authorization header has an unknown parameter '{unknown[0][:32]}'")
    access_key_id, date, region, service = _credential(components["Credential"])
    signed_headers = _signed_headers(components["SignedHeaders"])
    signature = components["Signature"]
    if _HEX_SHA256.fullmatch(signature) is None:
        raise _incomplete("The Signature parameter must be 64 lowercase hexadecimal digits")
    return Authorization(access_key_id, date, region, service, signed_headers, signature)


def _credential(text: str) -> tuple[str, str, str, str]:
    parts = text.split("/")
    if len(parts) != 5:
        raise _incomplete(
            "Credential must have the form <access key id>/<yyyymmdd>/<region>/dynamodb/"
            "aws4_request"
        )
    access_key_id, date, region, service, terminator = parts
    if _ACCESS_KEY.fullmatch(access_key_id) is None:
        raise auth_error(
            UNRECOGNIZED_CLIENT, "The security token included in the request is invalid."
        )
    if terminator != _TERMINATOR:
        raise _incomplete(f"Credential should be scoped with a valid terminator: '{_TERMINATOR}'.")
    if _SCOPE_DATE.fullmatch(date) is None:
        raise _incomplete("Credential should be scoped to a valid date (yyyymmdd).")
    if _REGION.fullmatch(region) is None:
        raise _incomplete("Credential should be scoped to a valid region.")
    if service != SERVICE:
        raise _invalid(f"Credential should be scoped to correct service: '{SERVICE}'.")
    return access_key_id, date, region, service


def _signed_headers(text: str) -> tuple[str, ...]:
    names = text.split(";")
    if len(names) > DYNAMODB_SIGNED_HEADERS_MAX:
        raise _incomplete(f"SignedHeaders lists more than {DYNAMODB_SIGNED_HEADERS_MAX} headers")
    if any(_HEADER_NAME.fullmatch(name) is None for name in names):
        raise _incomplete("SignedHeaders must be lowercase header names separated by ';'")
    if len(set(names)) != len(names):
        raise _incomplete("SignedHeaders lists a header twice")
    if "host" not in names:
        raise _incomplete("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    return tuple(names)


# --- the canonical request -------------------------------------------------------------------


def _header_values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def request_time(headers: Sequence[tuple[str, str]]) -> str:
    """The request's time as ``yyyymmddThhmmssZ``: ``X-Amz-Date``, else ``Date`` (RFC 1123)."""
    amz = _header_values(headers, "x-amz-date")
    if amz:
        if len(amz) != 1 or _AMZ_DATE.fullmatch(amz[0].strip()) is None:
            raise _incomplete("X-Amz-Date must be one ISO-8601 basic format date: yyyymmddThhmmssZ")
        text = amz[0].strip()
        try:
            datetime.strptime(text, _AMZ_DATE_FORMAT)
        except ValueError:
            raise _incomplete("X-Amz-Date is not a valid date") from None
        return text
    dates = _header_values(headers, "date")
    if not dates:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    try:
        when = parsedate_to_datetime(dates[0].strip()) if len(dates) == 1 else None
    except (TypeError, ValueError):
        when = None
    if when is None:
        raise _incomplete("The Date header must be one RFC 1123 date")
    if when.tzinfo is None:  # "-0000" (botocore's formatdate): UTC, origin not stated
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime(_AMZ_DATE_FORMAT)


def canonical_path(raw_path: str) -> str:
    """The path as botocore signs it for every service but S3: dot segments and empty segments
    removed (RFC 3986 5.2.4 plus AWS's rule), then quoted with ``/`` and ``~`` kept."""
    if not raw_path:
        return "/"
    kept: list[str] = []
    for segment in raw_path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
        else:
            kept.append(segment)
    first = "/" if raw_path.startswith("/") else ""
    last = "/" if raw_path.endswith("/") and kept else ""
    return quote(first + "/".join(kept) + last, safe="/~")


def canonical_query(raw_query: str) -> str:
    """The query's ``name=value`` pairs as received, sorted, joined by ``&``."""
    if not raw_query:
        return ""
    pairs = []
    for pair in raw_query.split("&"):
        name, _, value = pair.partition("=")
        pairs.append((name, value))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    *,
    headers: Sequence[tuple[str, str]],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    """The canonical request of SigV4 over ``headers`` (all received ``(name, value)`` pairs)."""
    lines = [method.upper(), canonical_path(raw_path), canonical_query(raw_query)]
    for name in sorted(signed_headers):
        values = _header_values(headers, name)
        lines.append(f"{name}:{','.join(' '.join(value.split()) for value in values)}")
    lines.append("")
    lines.append(";".join(signed_headers))
    lines.append(payload_hash)
    return "\n".join(lines)


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return "\n".join((ALGORITHM, amz_date, scope, digest))


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key: HMAC-SHA256 chained from ``"AWS4" + secret``."""
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, _TERMINATOR)


def sign(secret: str, authorization: Authorization, amz_date: str, canonical: str) -> str:
    """The hex signature of a canonical request under ``authorization``'s scope."""
    key = signing_key(secret, authorization.date, authorization.region, authorization.service)
    text = string_to_sign(amz_date, authorization.scope, canonical)
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def _payload_hash(headers: Sequence[tuple[str, str]], body: bytes) -> str:
    actual = hashlib.sha256(body).hexdigest()
    declared = _header_values(headers, "x-amz-content-sha256")
    if not declared:
        return actual
    value = declared[0].strip() if len(declared) == 1 else ""
    if value == UNSIGNED_PAYLOAD:
        return value
    if not hmac.compare_digest(value.encode("ascii", "replace"), actual.encode("ascii")):
        raise _invalid(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
        )
    return value


def _check_time(authorization: Authorization, amz_date: str, now_s: float) -> None:
    if authorization.date != amz_date[:8]:
        raise _invalid(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{authorization.date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    signed_s = datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=UTC).timestamp()
    skew_s = DYNAMODB_SIGNATURE_SKEW_MS / 1000
    now = datetime.fromtimestamp(now_s, UTC).strftime(_AMZ_DATE_FORMAT)
    minutes = DYNAMODB_SIGNATURE_SKEW_MS // 60_000
    if signed_s < now_s - skew_s:
        earliest = datetime.fromtimestamp(now_s - skew_s, UTC).strftime(_AMZ_DATE_FORMAT)
        raise _invalid(
            f"Signature expired: {amz_date} is now earlier than {earliest} ({now} - {minutes} min.)"
        )
    if signed_s > now_s + skew_s:
        latest = datetime.fromtimestamp(now_s + skew_s, UTC).strftime(_AMZ_DATE_FORMAT)
        raise _invalid(
            f"Signature not yet current: {amz_date} is still later than {latest} "
            f"({now} + {minutes} min.)"
        )


def verify(
    authorization: Authorization,
    *,
    secret: str,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    now_s: float,
) -> None:
    """Return when the request was signed with ``secret``; else raise :class:`Unauthorized`
    (``InvalidSignatureException``, or ``IncompleteSignatureException`` for a bad date header).
    ``headers`` are every received ``(name, value)`` pair; ``body`` the bytes as received."""
    amz_date = request_time(headers)
    _check_time(authorization, amz_date, now_s)
    payload_hash = _payload_hash(headers, body)
    canonical = canonical_request(
        method,
        raw_path,
        raw_query,
        headers=headers,
        signed_headers=authorization.signed_headers,
        payload_hash=payload_hash,
    )
    expected = sign(secret, authorization, amz_date, canonical)
    if not hmac.compare_digest(expected, authorization.signature):
        raise _invalid(_SIGNATURE_MISMATCH)
