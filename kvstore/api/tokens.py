"""API tokens: bearer tokens with a role, also the secret access keys of the DynamoDB endpoint.

Theory of operation
-------------------
A caller of the HTTP API presents ``Authorization: Bearer kvt_<43 URL-safe characters>`` (32
random bytes). A role ranks above another when it may do everything the other may and more:
``metrics`` (only ``GET /metrics``, on coordinators and storage nodes alike: the credential a
Prometheus server holds), ``read-only``, ``read-write``, ``admin`` (operator calls under
``/v1/admin/``). The API token file (TOML, mode 0600, ``api_tokens_file`` in the cluster file)
holds one ``[tokens.<name>]`` table per token with its ``role``, the hex ``sha256`` of the whole
token string, the ``created`` instant (RFC 3339, UTC) and the token itself as ``secret``. The
secret is there for the DynamoDB endpoint (:mod:`kvstore.dynamodb.sigv4`): AWS Signature V4 is an
HMAC keyed by the secret access key, so the verifier needs the key itself, not a digest (the
access key id is the token's name, the secret access key the token). The file is therefore a
credential store like the cluster secret: mode 0600, refused when group or others may access it.
Files written before secrets were stored have entries without ``secret``; they load and their
tokens work as bearer tokens, but cannot sign DynamoDB requests (:meth:`TokenStore.entry_by_name`
returns them with ``secret=None``; the endpoint says to re-create the token).
:func:`store_secret` adds the secret to such an entry when the plaintext is at hand (a local
cluster keeps its admin token in ``admin.token``). A ``secret`` must be a well-formed token whose
SHA-256 is the entry's ``sha256``; a mismatch is refused like any other bad field.

:func:`create_token` and :func:`revoke_token` rewrite the file atomically (a 0600 temporary file
in the same directory, fsync, ``os.replace``, fsync of the directory), so a reader sees the old
file or the new one, never a torn one. Writers are operators (``kvctl``) and are not serialised
against each other: two concurrent writers may lose one change, never corrupt the file.
:func:`load_token_file` is strict like :func:`kvstore.config.load_cluster`: an unknown key, a bad
role, digest or timestamp, a file group or others may access (the spirit of
:func:`kvstore.config.read_secret`) is a :class:`~kvstore.errors.ValidationError` naming the field.
A missing file is an empty mapping: no token is valid.

:class:`TokenStore` serves one coordinator. It looks a presented token up by its SHA-256 digest
(a dict lookup, then :func:`hmac.compare_digest` for good measure), so no comparison runs over
secrets of other tokens. At most once per ``reload_interval_ms`` (time comes from an injected
``now_ms``) it stats the file and re-reads it when (inode, size, mtime, ctime, mode) changed, so
a created or revoked token takes effect without a restart and a ``chmod`` that repairs a refused
file is noticed. A re-read that fails keeps the tokens in force and logs a warning: a bad edit
must not lock every caller out or crash the process. The first read, in the constructor, is
strict instead, so a coordinator does not start serving behind a broken file; a storage node,
which needs the file only for ``/metrics``, passes ``strict=False`` and starts with no token in
force (every scrape is 401, logged) rather than refusing to serve its data. (Two rewrites
within one filesystem timestamp tick that reuse an inode and keep the size would look unchanged
until the next change; operator commands are far slower than a tick.)

Errors and logs never include a token or any part of it (presented or stored): they name what
was wrong (missing header, scheme, malformed, unknown) and, for
:class:`~kvstore.errors.Forbidden`, the token's name and role. :class:`TokenEntry` keeps the
digest and the secret out of its ``repr``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NamedTuple

import tomli_w

from kvstore.errors import Forbidden, Unauthorized, ValidationError
from kvstore.limits import API_TOKEN_NAME_CHARS_MAX, TOKEN_FILE_RELOAD_INTERVAL_MS
from kvstore.logs import log_event

__all__ = [
    "TOKEN_PREFIX",
    "Role",
    "TokenEntry",
    "token_digest",
    "create_token",
    "revoke_token",
    "store_secret",
    "list_tokens",
    "load_token_file",
    "TokenStore",
]

TOKEN_PREFIX: Final = "kvt_"
"""Every API token starts with this, so a leaked one is recognisable (secret scanners)."""

_TOKEN_RANDOM_BYTES: Final = 32  # 43 URL-safe base64 characters after the prefix.
_TOKEN_PATTERN: Final = re.compile(TOKEN_PREFIX + r"[A-Za-z0-9_-]{43}")
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]+")
_DIGEST_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
_CREATED_PATTERN: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z"
)
_FILE_FIELD: Final = "api_tokens_file"
_ENTRY_KEYS: Final = frozenset({"role", "sha256", "created"})
_OPTIONAL_KEYS: Final = frozenset({"secret"})
_FILE_HEADER: Final = (
    "# API tokens of the kvstore HTTP API (docs/api.md) and their secrets (the DynamoDB\n"
    "# endpoint's SigV4 keys, docs/dynamodb.md): a credential store. Keep this file mode 0600.\n"
    "# Rewritten by kvstore.api.tokens.\n\n"
)

_log = logging.getLogger("kvstore.api.tokens")


class Role(enum.StrEnum):
    """What a token may call; each role allows everything the roles below it allow."""

    ADMIN = "admin"
    READ_WRITE = "read-write"
    READ_ONLY = "read-only"
    METRICS = "metrics"

    def allows(self, needed: Role) -> bool:
        """Whether a token with this role may make a call that needs ``needed``."""
        return _ROLE_RANK[self] >= _ROLE_RANK[needed]


_ROLE_RANK: Final[Mapping[Role, int]] = {
    Role.METRICS: 0,
    Role.READ_ONLY: 1,
    Role.READ_WRITE: 2,
    Role.ADMIN: 3,
}
_ROLES_BY_VALUE: Final[Mapping[str, Role]] = {role.value: role for role in Role}


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One token of the file. ``secret`` is the token itself (None in entries written before
    secrets were stored); neither it nor the digest appears in the ``repr``."""

    name: str
    role: Role
    sha256: str = field(repr=False)  # hex digest of the whole token string
    created: str  # RFC 3339, UTC ("2026-11-22T07:30:00Z")
    secret: str | None = field(default=None, repr=False)


class _FileSignature(NamedTuple):
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mode: int


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token string, as the token file stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --- the file -------------------------------------------------------------------------------


def load_token_file(path: Path) -> dict[str, TokenEntry]:
    """The tokens of ``path`` by digest; empty when the file does not exist."""
    text = _read_private_text(path)
    if text is None:
        return {}
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValidationError(_FILE_FIELD, f"{path} is not valid TOML: {error}") from None
    return _entries_from_doc(doc)


def list_tokens(path: Path) -> list[TokenEntry]:
    """The tokens of ``path`` in name order (callers show name, role and created)."""
    return sorted(load_token_file(path).values(), key=lambda entry: entry.name)


def create_token(path: Path, name: str, role: Role | str) -> str:
    """Add a token named ``name`` with ``role`` to ``path`` (created if missing).

    Returns the token: the only time it exists in plaintext. A name already in the file is a
    :class:`~kvstore.errors.ValidationError`; revoke it first to replace it.
    """
    _check_name(name, "name")
    checked_role = _role(role, "role")
    entries = load_token_file(path)
    if any(entry.name == name for entry in entries.values()):
        raise ValidationError("name", f"a token named {name!r} already exists in {path}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_RANDOM_BYTES)
    assert _TOKEN_PATTERN.fullmatch(token) is not None
    digest = token_digest(token)
    assert digest not in entries  # 256 random bits do not collide
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = TokenEntry(name=name, role=checked_role, sha256=digest, created=created, secret=token)
    _write_atomically(path, [*entries.values(), new])
    return token


def store_secret(path: Path, token: str) -> bool:
    """Add ``token`` as the secret of its entry in ``path`` when the entry has none (a file
    written before secrets were stored); True when the file was rewritten. A token that is not
    in the file is a :class:`~kvstore.errors.ValidationError` (never naming the token)."""
    if _TOKEN_PATTERN.fullmatch(token) is None:
        raise ValidationError("token", f"not an API token ({TOKEN_PREFIX} and 43 characters)")
    entries = load_token_file(path)
    entry = entries.get(token_digest(token))
    if entry is None:
        raise ValidationError("token", f"no token in {path} has this value")
    if entry.secret is not None:
        return False
    entries[entry.sha256] = dataclasses.replace(entry, secret=token)
    _write_atomically(path, entries.values())
    return True


def revoke_token(path: Path, name: str) -> bool:
    """Remove the token named ``name``; True when it existed (the file is then rewritten)."""
    _check_name(name, "name")
    entries = load_token_file(path)
    kept = [entry for entry in entries.values() if entry.name != name]
    if len(kept) == len(entries):
        return False
    _write_atomically(path, kept)
    return True


def _read_private_text(path: Path) -> str | None:
    """The text of ``path``, None when missing; refuses a file group or others may access."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ValidationError(_FILE_FIELD, f"cannot open {path}: {error.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValidationError(_FILE_FIELD, f"{path} is not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValidationError(
                _FILE_FIELD,
                f"{path} is accessible to group or others (mode {mode & 0o777:o}); chmod 600 it",
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read()
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(_FILE_FIELD, f"{path} is not UTF-8") from None


def _entries_from_doc(doc: Mapping[str, object]) -> dict[str, TokenEntry]:
    unknown = sorted(set(doc) - {"tokens"})
    if unknown:
        raise ValidationError(_FILE_FIELD, f"unknown keys {unknown}; allowed: ['tokens']")
    tokens = doc.get("tokens", {})
    if not isinstance(tokens, dict):
        raise ValidationError("tokens", "must be a table")
    by_digest: dict[str, TokenEntry] = {}
    for name, raw in tokens.items():
        entry = _entry(name, raw)
        other = by_digest.get(entry.sha256)
        if other is not None:
            raise ValidationError(
                f"tokens.{name}.sha256", f"the same digest as tokens.{other.name}"
            )
        by_digest[entry.sha256] = entry
    return by_digest


def _entry(name: str, raw: object) -> TokenEntry:
    _check_name(name, "tokens")
    where = f"tokens.{name}"
    if not isinstance(raw, dict):
        raise ValidationError(where, "must be a table")
    unknown = sorted(set(raw) - _ENTRY_KEYS - _OPTIONAL_KEYS)
    if unknown:
        allowed = sorted(_ENTRY_KEYS | _OPTIONAL_KEYS)
        raise ValidationError(where, f"unknown keys {unknown}; allowed: {allowed}")
    missing = sorted(_ENTRY_KEYS - set(raw))
    if missing:
        raise ValidationError(where, f"missing keys {missing}")
    digest = raw["sha256"]
    if not isinstance(digest, str) or _DIGEST_PATTERN.fullmatch(digest) is None:
        raise ValidationError(f"{where}.sha256", "must be 64 lowercase hex digits")
    secret = raw.get("secret")
    if secret is not None:  # never shown in a message: it is a credential
        if not isinstance(secret, str) or _TOKEN_PATTERN.fullmatch(secret) is None:
            raise ValidationError(
                f"{where}.secret", f"must be an API token ({TOKEN_PREFIX} and 43 characters)"
            )
        if not hmac.compare_digest(token_digest(secret), digest):
            raise ValidationError(f"{where}.secret", "its SHA-256 is not the entry's sha256")
    return TokenEntry(
        name=name,
        role=_role(raw["role"], f"{where}.role"),
        sha256=digest,
        created=_created(raw["created"], f"{where}.created"),
        secret=secret,
    )


def _check_name(name: object, field_name: str) -> None:
    if (
        not isinstance(name, str)
        or len(name) > API_TOKEN_NAME_CHARS_MAX
        or _NAME_PATTERN.fullmatch(name) is None
    ):
        shown = name[:API_TOKEN_NAME_CHARS_MAX] if isinstance(name, str) else name
        raise ValidationError(
            field_name,
            f"a token name is 1..{API_TOKEN_NAME_CHARS_MAX} characters of [A-Za-z0-9_.-], "
            f"got {shown!r}",
        )


def _role(raw: object, field_name: str) -> Role:
    if isinstance(raw, str) and raw in _ROLES_BY_VALUE:
        return _ROLES_BY_VALUE[raw]
    raise ValidationError(field_name, f"must be one of {sorted(_ROLES_BY_VALUE)}, got {raw!r}")


def _created(raw: object, field_name: str) -> str:
    if not isinstance(raw, str) or _CREATED_PATTERN.fullmatch(raw) is None:
        raise ValidationError(
            field_name, f"must be an RFC 3339 UTC string like 2026-11-22T07:30:00Z, got {raw!r}"
        )
    try:
        datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError(field_name, f"{raw!r} is not a valid instant") from None
    return raw


def _name(entry: TokenEntry) -> str:
    return entry.name


def _entry_doc(entry: TokenEntry) -> dict[str, str]:
    doc = {"role": entry.role.value, "sha256": entry.sha256, "created": entry.created}
    if entry.secret is not None:
        doc["secret"] = entry.secret
    return doc


def _write_atomically(path: Path, entries: Iterable[TokenEntry]) -> None:
    """Replace ``path`` with ``entries``; readers see the old file or the new one, never a mix."""
    doc = {"tokens": {entry.name: _entry_doc(entry) for entry in sorted(entries, key=_name)}}
    data = (_FILE_HEADER + tomli_w.dumps(doc)).encode("utf-8")
    directory = path.parent
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # mkstemp's mode already; never wider, whatever umask
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


# --- the store ------------------------------------------------------------------------------


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _signature(path: Path) -> _FileSignature | None:
    """What tells a changed file from an unchanged one; None when missing. May raise OSError."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return _FileSignature(
        info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode
    )


def _bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization`` header; messages never echo any of the header."""
    parts = (authorization or "").split()
    if not parts:
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    if parts[0].lower() != "bearer":
        raise Unauthorized("the Authorization scheme must be Bearer")
    if len(parts) != 2 or _TOKEN_PATTERN.fullmatch(parts[1]) is None:
        raise Unauthorized(f"malformed bearer token: expected {TOKEN_PREFIX} and 43 characters")
    return parts[1]


class TokenStore:
    """The tokens of one API token file, re-read when it changes: who may call what.

    ``strict`` (the default) makes a file that cannot be read at start a
    :class:`~kvstore.errors.ValidationError`; with ``strict=False`` the store starts empty, logs
    ``api_tokens.load_failed`` and picks the file up once it changes (see the module docstring).
    """

    def __init__(
        self,
        path: Path,
        *,
        strict: bool = True,
        now_ms: Callable[[], int] = _monotonic_ms,
        reload_interval_ms: int = TOKEN_FILE_RELOAD_INTERVAL_MS,
    ) -> None:
        if reload_interval_ms < 0:
            raise ValidationError("reload_interval_ms", f"must be >= 0, got {reload_interval_ms}")
        self.path = path
        self._now_ms = now_ms
        self._reload_interval_ms = reload_interval_ms
        self._by_digest: Mapping[str, TokenEntry] = {}
        self._by_name: Mapping[str, TokenEntry] = {}
        self._signature: _FileSignature | None = None
        try:
            try:
                self._signature = _signature(path)
            except OSError as error:
                raise ValidationError(
                    _FILE_FIELD, f"cannot stat {path}: {error.strerror}"
                ) from None
            self._set(load_token_file(path))
        except ValidationError as error:
            if strict:  # a coordinator must not come up behind a broken token file
                raise
            log_event(
                _log,
                "api_tokens.load_failed",
                logging.WARNING,
                path=str(path),
                error=error.message,
                hint="no token is valid until the file is fixed",
            )
        self._checked_at_ms = now_ms()

    def __len__(self) -> int:
        """How many tokens are in force."""
        return len(self._by_digest)

    def authenticate(self, authorization: str | None) -> TokenEntry:
        """The token entry of an ``Authorization`` header value; else :class:`Unauthorized`."""
        self._reload_when_due()
        token = _bearer_token(authorization)
        digest = token_digest(token)
        entry = self._by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            raise Unauthorized("unknown bearer token")
        return entry

    def entry_by_name(self, name: str) -> TokenEntry | None:
        """The token named ``name`` (a DynamoDB access key id), None when there is none. Its
        ``secret`` (None for tokens written before secrets were stored) keys SigV4."""
        self._reload_when_due()
        return self._by_name.get(name)

    def authorize(self, authorization: str | None, needed: Role) -> TokenEntry:
        """As :meth:`authenticate`; :class:`Forbidden` when the role does not allow ``needed``."""
        entry = self.authenticate(authorization)
        if not entry.role.allows(needed):
            raise Forbidden(
                f"token {entry.name!r} has role {entry.role.value}; this call needs {needed.value}"
            )
        return entry

    def reload(self) -> bool:
        """Check the file now; True when the tokens in force were replaced. Never raises."""
        self._checked_at_ms = self._now_ms()
        try:
            signature = _signature(self.path)
        except OSError as error:
            log_event(
                _log,
                "api_tokens.stat_failed",
                logging.WARNING,
                path=str(self.path),
                error=error.strerror,
                tokens=len(self._by_digest),
            )
            return False
        if signature == self._signature:
            return False
        # Remember the signature even when the read fails: a broken file is reported once, not
        # on every check, and is read again as soon as it changes (a chmod included).
        self._signature = signature
        try:
            by_digest = load_token_file(self.path)
        except ValidationError as error:
            log_event(
                _log,
                "api_tokens.reload_failed",
                logging.WARNING,
                path=str(self.path),
                error=error.message,
                kept_tokens=len(self._by_digest),
            )
            return False
        self._set(by_digest)
        log_event(
            _log,
            "api_tokens.reloaded",
            path=str(self.path),
            tokens=len(by_digest),
            missing=signature is None,
        )
        return True

    def _set(self, by_digest: Mapping[str, TokenEntry]) -> None:
        self._by_digest = by_digest
        self._by_name = {entry.name: entry for entry in by_digest.values()}

    def _reload_when_due(self) -> None:
        if self._now_ms() - self._checked_at_ms >= self._reload_interval_ms:
            self.reload()
