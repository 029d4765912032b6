"""API tokens: roles, the digest-only token file, and who the token store lets in.

Goal: every way a caller can present credentials ends in the documented answer (docs/api.md,
"Authentication and roles"), the file never holds a token, and a changed or broken file is
handled without a restart or a crash. Method: real files in ``tmp_path``, an injected clock for
reloads (no sleeps), and Hypothesis for "anything that is not a created token is refused".
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvstore.api.tokens as tokens_module
from kvstore.api.tokens import (
    TOKEN_PREFIX,
    Role,
    TokenEntry,
    TokenStore,
    create_token,
    list_tokens,
    load_token_file,
    revoke_token,
    store_secret,
    token_digest,
)
from kvstore.errors import Forbidden, KvError, Unauthorized, ValidationError
from kvstore.limits import API_TOKEN_NAME_CHARS_MAX, TOKEN_FILE_RELOAD_INTERVAL_MS

TOKEN_RE = re.compile(r"kvt_[A-Za-z0-9_-]{43}")
DIGEST = "a" * 64
CREATED = "2026-11-22T07:30:00Z"
URLSAFE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class Clock:
    """A hand-driven millisecond clock for :class:`TokenStore`."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int = TOKEN_FILE_RELOAD_INTERVAL_MS) -> None:
        self.now += ms


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "api_tokens.toml"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def write_private(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)


def entry_toml(name: str = "t", *, role: str = "admin", sha256: str = DIGEST) -> str:
    return f'[tokens.{name}]\nrole = "{role}"\nsha256 = "{sha256}"\ncreated = "{CREATED}"\n'


def bearer(token: str) -> str:
    return f"Bearer {token}"


def assert_not_leaked(error: KvError, secret: str) -> None:
    assert secret not in str(error)
    assert secret not in repr(error)
    assert secret not in repr(error.to_json())


# --- roles ----------------------------------------------------------------------------------

ALLOWED = {
    (Role.ADMIN, Role.ADMIN),
    (Role.ADMIN, Role.READ_WRITE),
    (Role.ADMIN, Role.READ_ONLY),
    (Role.ADMIN, Role.METRICS),
    (Role.READ_WRITE, Role.READ_WRITE),
    (Role.READ_WRITE, Role.READ_ONLY),
    (Role.READ_WRITE, Role.METRICS),
    (Role.READ_ONLY, Role.READ_ONLY),
    (Role.READ_ONLY, Role.METRICS),
    (Role.METRICS, Role.METRICS),
}


@pytest.mark.parametrize("held", list(Role))
@pytest.mark.parametrize("needed", list(Role))
def test_roles_matrix(held: Role, needed: Role) -> None:
    assert held.allows(needed) is ((held, needed) in ALLOWED)


def test_role_wire_names() -> None:
    assert [role.value for role in Role] == ["admin", "read-write", "read-only", "metrics"]
    assert Role("read-write") is Role.READ_WRITE
    assert Role("metrics") is Role.METRICS


# --- the file -------------------------------------------------------------------------------


def test_create_list_revoke_round_trip(path: Path) -> None:
    admin = create_token(path, "ops.admin", Role.ADMIN)
    reader = create_token(path, "dash-board_1", "read-only")
    assert TOKEN_RE.fullmatch(admin)
    assert TOKEN_RE.fullmatch(reader)
    assert admin.startswith(TOKEN_PREFIX)
    assert admin != reader

    listed = list_tokens(path)
    assert [(e.name, e.role) for e in listed] == [
        ("dash-board_1", Role.READ_ONLY),
        ("ops.admin", Role.ADMIN),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e.created) for e in listed)
    by_name = {e.name: e for e in listed}
    assert by_name["ops.admin"].sha256 == token_digest(admin)
    assert set(load_token_file(path)) == {token_digest(admin), token_digest(reader)}

    assert revoke_token(path, "ops.admin") is True
    assert revoke_token(path, "ops.admin") is False
    assert [e.name for e in list_tokens(path)] == ["dash-board_1"]


def test_the_file_holds_the_digest_and_the_secret_for_sigv4(path: Path) -> None:
    token = create_token(path, "ci", Role.READ_WRITE)
    text = path.read_text(encoding="utf-8")
    assert token_digest(token) in text
    assert f'secret = "{token}"' in text  # the DynamoDB endpoint's HMAC key (docs/dynamodb.md)
    assert "[tokens.ci]" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (entry,) = load_token_file(path).values()
    assert entry.secret == token
    assert TokenStore(path).authenticate(bearer(token)).secret == token


def test_token_entry_repr_has_no_digest_and_no_secret() -> None:
    secret = "kvt_" + "q" * 43
    entry = TokenEntry(name="n", role=Role.ADMIN, sha256=DIGEST, created=CREATED, secret=secret)
    assert DIGEST not in repr(entry)
    assert secret not in repr(entry)
    assert secret not in str(entry)


def test_an_old_file_without_secrets_still_loads_and_authenticates(path: Path) -> None:
    token = "kvt_" + "o" * 43
    write_private(path, entry_toml("old", role="read-only", sha256=token_digest(token)))
    store = TokenStore(path)
    entry = store.authenticate(bearer(token))
    assert (entry.name, entry.secret) == ("old", None)
    looked_up = store.entry_by_name("old")
    assert looked_up is not None
    assert looked_up.secret is None
    # A rewrite (another token created) keeps the old entry as it was: no secret invented.
    new = create_token(path, "new", Role.ADMIN)
    by_name = {e.name: e for e in load_token_file(path).values()}
    assert by_name["old"].secret is None
    assert by_name["new"].secret == new
    assert "secret" not in path.read_text(encoding="utf-8").split("[tokens.old]")[1]


def test_store_secret_backfills_an_old_entry_once(path: Path) -> None:
    token = "kvt_" + "b" * 43
    write_private(path, entry_toml("admin", sha256=token_digest(token)))
    assert store_secret(path, token) is True
    (entry,) = load_token_file(path).values()
    assert (entry.name, entry.role, entry.secret, entry.created) == (
        "admin",
        Role.ADMIN,
        token,
        CREATED,
    )
    assert store_secret(path, token) is False
    with pytest.raises(ValidationError) as caught:
        store_secret(path, "kvt_" + "c" * 43)
    assert "kvt_" not in caught.value.message
    with pytest.raises(ValidationError):
        store_secret(path, "not-a-token")


@pytest.mark.parametrize(
    "secret",
    ['"kvt_short"', "5", '"' + "kvt_" + "z" * 43 + '"'],  # the last: another token's value
)
def test_a_bad_or_mismatched_secret_is_refused_without_echo(path: Path, secret: str) -> None:
    write_private(path, entry_toml() + f"secret = {secret}\n")
    with pytest.raises(ValidationError) as caught:
        load_token_file(path)
    assert caught.value.field == "tokens.t.secret"
    assert "kvt_" not in caught.value.message.replace("(kvt_ and", "")


def test_entry_by_name_follows_the_file(path: Path, clock: Clock) -> None:
    store = TokenStore(path, now_ms=clock)
    assert store.entry_by_name("late") is None
    token = create_token(path, "late", Role.READ_ONLY)
    clock.advance()
    entry = store.entry_by_name("late")
    assert entry is not None
    assert (entry.role, entry.secret) == (Role.READ_ONLY, token)
    revoke_token(path, "late")
    clock.advance()
    assert store.entry_by_name("late") is None


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_file_is_mode_0600_and_no_temp_file_is_left(path: Path) -> None:
    create_token(path, "a", Role.ADMIN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    create_token(path, "b", Role.ADMIN)
    revoke_token(path, "a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_missing_file_is_empty(path: Path) -> None:
    assert load_token_file(path) == {}
    assert list_tokens(path) == []
    assert revoke_token(path, "nobody") is False
    assert not path.exists()


def test_duplicate_name_is_refused_and_the_file_is_untouched(path: Path) -> None:
    create_token(path, "dup", Role.ADMIN)
    before = path.read_bytes()
    with pytest.raises(ValidationError) as caught:
        create_token(path, "dup", Role.READ_ONLY)
    assert caught.value.field == "name"
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "name", ["", "a b", "a/b", "ü", "x" * (API_TOKEN_NAME_CHARS_MAX + 1), "a\n", "[x]"]
)
def test_bad_names_are_refused(path: Path, name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        create_token(path, name, Role.ADMIN)
    assert caught.value.field == "name"
    with pytest.raises(ValidationError):
        revoke_token(path, name)
    assert not path.exists()


@pytest.mark.parametrize("name", ["a", "A.b-c_9", "x" * API_TOKEN_NAME_CHARS_MAX, "1.2.3"])
def test_good_names_round_trip(path: Path, name: str) -> None:
    create_token(path, name, Role.ADMIN)
    assert [e.name for e in list_tokens(path)] == [name]


def test_bad_role_is_refused(path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        create_token(path, "a", "root")
    assert caught.value.field == "role"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o601, 0o660])
def test_file_group_or_others_may_access_is_refused(path: Path, mode: int) -> None:
    create_token(path, "a", Role.ADMIN)
    path.chmod(mode)
    with pytest.raises(ValidationError) as caught:
        load_token_file(path)
    assert caught.value.field == "api_tokens_file"
    assert "chmod 600" in caught.value.message
    with pytest.raises(ValidationError):
        create_token(path, "b", Role.ADMIN)  # never rewrites a file it refuses to read
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_directory_is_refused(path: Path) -> None:
    path.mkdir(mode=0o700)
    with pytest.raises(ValidationError) as caught:
        load_token_file(path)
    assert caught.value.field == "api_tokens_file"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not toml [", "api_tokens_file"),
        ("extra = 1\n" + entry_toml(), "api_tokens_file"),
        ('tokens = "x"\n', "tokens"),
        ("[tokens]\nt = 5\n", "tokens.t"),
        (entry_toml() + "scope = 'all'\n", "tokens.t"),
        ('[tokens.t]\nrole = "admin"\nsha256 = "' + DIGEST + '"\n', "tokens.t"),
        (entry_toml(role="root"), "tokens.t.role"),
        (entry_toml(role="Admin"), "tokens.t.role"),
        (entry_toml(sha256="A" * 64), "tokens.t.sha256"),
        (entry_toml(sha256="a" * 63), "tokens.t.sha256"),
        (entry_toml(sha256="g" * 64), "tokens.t.sha256"),
        (entry_toml().replace(f'"{CREATED}"', CREATED), "tokens.t.created"),  # TOML datetime
        (entry_toml().replace(CREATED, "2026-11-22T07:30:00+00:00"), "tokens.t.created"),
        (entry_toml().replace(CREATED, "2026-13-22T07:30:00Z"), "tokens.t.created"),
        (entry_toml().replace(CREATED, "yesterday"), "tokens.t.created"),
        ('[tokens."a b"]\nrole = "admin"\n', "tokens"),
        (entry_toml("a") + entry_toml("b"), "tokens.b.sha256"),  # one digest, two names
    ],
)
def test_strict_parse_names_the_field(path: Path, text: str, field: str) -> None:
    write_private(path, text)
    with pytest.raises(ValidationError) as caught:
        load_token_file(path)
    assert caught.value.field == field


def test_hand_written_file_loads(path: Path) -> None:
    write_private(path, "# a comment\n" + entry_toml("x", role="read-write"))
    assert load_token_file(path) == {
        DIGEST: TokenEntry(name="x", role=Role.READ_WRITE, sha256=DIGEST, created=CREATED)
    }


def test_empty_file_and_empty_table_hold_no_tokens(path: Path) -> None:
    write_private(path, "")
    assert load_token_file(path) == {}
    write_private(path, "[tokens]\n")
    assert load_token_file(path) == {}
    create_token(path, "a", Role.ADMIN)
    revoke_token(path, "a")
    assert load_token_file(path) == {}


# --- the store: authentication and authorization --------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "Basic dXNlcjpwYXNz", "Token abc", "kvt_" + "a" * 43, "Bearer", "Bearer  "],
)
def test_missing_header_or_wrong_scheme_is_unauthorized(path: Path, header: str | None) -> None:
    create_token(path, "a", Role.ADMIN)
    with pytest.raises(Unauthorized):
        TokenStore(path).authenticate(header)


@pytest.mark.parametrize(
    "credentials",
    [
        "kvt_short",
        "kvt_" + "a" * 44,
        "kvx_" + "a" * 43,
        "kvt_" + "a" * 42 + "=",
        "kvt_" + "a" * 42 + "+",
        "kvt_" + "a" * 43 + " extra",
    ],
)
def test_malformed_token_is_unauthorized(path: Path, credentials: str) -> None:
    store = TokenStore(path)
    with pytest.raises(Unauthorized) as caught:
        store.authenticate(bearer(credentials))
    assert "malformed" in caught.value.message
    assert_not_leaked(caught.value, credentials)


def test_known_token_authenticates_and_scheme_is_case_insensitive(path: Path) -> None:
    token = create_token(path, "svc", Role.READ_WRITE)
    store = TokenStore(path)
    assert len(store) == 1
    for header in (bearer(token), f"bearer {token}", f"BEARER {token}", f"  Bearer   {token} "):
        entry = store.authenticate(header)
        assert (entry.name, entry.role) == ("svc", Role.READ_WRITE)


def test_unknown_token_is_unauthorized_and_never_echoed(path: Path) -> None:
    create_token(path, "a", Role.ADMIN)
    stranger = "kvt_" + "Q" * 43
    with pytest.raises(Unauthorized) as caught:
        TokenStore(path).authenticate(bearer(stranger))
    assert "unknown" in caught.value.message
    assert_not_leaked(caught.value, stranger)
    assert_not_leaked(caught.value, "Q" * 8)


@pytest.mark.parametrize("held", list(Role))
@pytest.mark.parametrize("needed", list(Role))
def test_authorize_by_role(path: Path, held: Role, needed: Role) -> None:
    token = create_token(path, "holder", held)
    store = TokenStore(path)
    if (held, needed) in ALLOWED:
        assert store.authorize(bearer(token), needed).role is held
    else:
        with pytest.raises(Forbidden) as caught:
            store.authorize(bearer(token), needed)
        assert "holder" in caught.value.message
        assert needed.value in caught.value.message
        assert_not_leaked(caught.value, token)
        assert_not_leaked(caught.value, token[len(TOKEN_PREFIX) :])


def test_authorize_refuses_unknown_before_role(path: Path) -> None:
    with pytest.raises(Unauthorized):
        TokenStore(path).authorize(None, Role.READ_ONLY)


def test_any_other_header_is_refused(path: Path) -> None:
    """Property: no header but the created token's gets in, and the answer never echoes it."""
    token = create_token(path, "only", Role.ADMIN)
    store = TokenStore(path)

    @given(st.text(max_size=200))
    def check_text(text: str) -> None:
        for header in (text, bearer(text)):
            if header.split() == ["Bearer", token]:
                continue
            with pytest.raises(Unauthorized):
                store.authenticate(header)

    @given(st.text(alphabet=URLSAFE_ALPHABET, min_size=43, max_size=43))
    def check_well_formed(tail: str) -> None:
        candidate = TOKEN_PREFIX + tail
        if candidate == token:
            return
        with pytest.raises(Unauthorized) as caught:
            store.authenticate(bearer(candidate))
        assert_not_leaked(caught.value, candidate[len(TOKEN_PREFIX) :])

    check_text()
    check_well_formed()


# --- the store: reloads ---------------------------------------------------------------------


def test_created_token_works_after_the_reload_interval(path: Path, clock: Clock) -> None:
    first = create_token(path, "first", Role.ADMIN)
    store = TokenStore(path, now_ms=clock)
    second = create_token(path, "second", Role.READ_ONLY)
    clock.advance(TOKEN_FILE_RELOAD_INTERVAL_MS - 1)
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(second))  # not looked at yet: at most once per interval
    clock.advance(1)
    assert store.authenticate(bearer(second)).name == "second"
    assert store.authenticate(bearer(first)).name == "first"


def test_revoked_token_stops_working_after_the_reload_interval(path: Path, clock: Clock) -> None:
    token = create_token(path, "gone", Role.ADMIN)
    store = TokenStore(path, now_ms=clock)
    assert store.authenticate(bearer(token)).name == "gone"
    assert revoke_token(path, "gone")
    clock.advance()
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(token))
    assert len(store) == 0


def test_missing_file_at_start_then_created(path: Path, clock: Clock) -> None:
    store = TokenStore(path, now_ms=clock)
    assert len(store) == 0
    token = create_token(path, "late", Role.ADMIN)
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(token))
    clock.advance()
    assert store.authenticate(bearer(token)).name == "late"
    path.unlink()
    clock.advance()
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(token))  # a missing file means no token is valid


def test_unchanged_file_is_not_read_again(
    path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = create_token(path, "a", Role.ADMIN)
    store = TokenStore(path, now_ms=clock)
    reads: list[Path] = []
    real = tokens_module.load_token_file

    def counting(p: Path) -> dict[str, TokenEntry]:
        reads.append(p)
        return real(p)

    monkeypatch.setattr(tokens_module, "load_token_file", counting)
    for _ in range(3):
        clock.advance()
        store.authenticate(bearer(token))
    assert store.reload() is False
    assert reads == []


def test_broken_file_on_reload_keeps_previous_tokens(
    path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    token = create_token(path, "keep", Role.ADMIN)
    store = TokenStore(path, now_ms=clock)
    write_private(path, "this is [not toml\n")
    clock.advance()
    with caplog.at_level(logging.WARNING, logger="kvstore.api.tokens"):
        assert store.authenticate(bearer(token)).name == "keep"
    failures = [r for r in caplog.records if r.getMessage() == "api_tokens.reload_failed"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.WARNING
    assert token not in caplog.text

    caplog.clear()
    clock.advance()
    with caplog.at_level(logging.WARNING, logger="kvstore.api.tokens"):
        store.authenticate(bearer(token))  # the same broken file is reported once
    assert caplog.records == []

    path.unlink()
    fresh = create_token(path, "fresh", Role.READ_ONLY)  # repaired: read again
    clock.advance()
    assert store.authenticate(bearer(fresh)).name == "fresh"
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(token))


def test_group_readable_file_on_reload_keeps_tokens_until_chmod(path: Path, clock: Clock) -> None:
    token = create_token(path, "a", Role.ADMIN)
    store = TokenStore(path, now_ms=clock)
    other = create_token(path, "b", Role.ADMIN)
    path.chmod(0o644)
    clock.advance()
    assert store.authenticate(bearer(token)).name == "a"
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(other))
    path.chmod(0o600)  # only the mode changes: still noticed
    clock.advance()
    assert store.authenticate(bearer(other)).name == "b"


def test_stat_failure_keeps_tokens(
    path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = create_token(path, "a", Role.ADMIN)
    store = TokenStore(path, now_ms=clock)

    def refuse(self: Path, **_: object) -> os.stat_result:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "stat", refuse)
    clock.advance()
    with caplog.at_level(logging.WARNING, logger="kvstore.api.tokens"):
        assert store.authenticate(bearer(token)).name == "a"
    assert [r.getMessage() for r in caplog.records] == ["api_tokens.stat_failed"]


def test_broken_file_at_start_is_an_error(path: Path) -> None:
    write_private(path, entry_toml(role="root"))
    with pytest.raises(ValidationError) as caught:
        TokenStore(path)
    assert caught.value.field == "tokens.t.role"


def test_broken_file_at_start_of_a_lenient_store_is_logged_then_picked_up_once_fixed(
    path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """What a storage node does (its file serves only /metrics): start with no token valid."""
    write_private(path, entry_toml(role="root"))
    with caplog.at_level(logging.WARNING, logger="kvstore.api.tokens"):
        store = TokenStore(path, strict=False, now_ms=clock)
    assert len(store) == 0
    assert [r.getMessage() for r in caplog.records] == ["api_tokens.load_failed"]
    path.unlink()
    token = create_token(path, "scraper", Role.METRICS)
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(token))  # not looked at before the interval
    clock.advance()
    assert store.authorize(bearer(token), Role.METRICS).name == "scraper"
    with pytest.raises(Forbidden):
        store.authorize(bearer(token), Role.READ_ONLY)


def test_group_readable_file_at_start_of_a_lenient_store_counts_after_chmod(
    path: Path, clock: Clock
) -> None:
    token = create_token(path, "scraper", Role.METRICS)
    path.chmod(0o640)
    store = TokenStore(path, strict=False, now_ms=clock)
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(token))
    path.chmod(0o600)  # only the mode changes: noticed
    clock.advance()
    assert store.authenticate(bearer(token)).name == "scraper"


def test_negative_reload_interval_is_refused(path: Path) -> None:
    with pytest.raises(ValidationError):
        TokenStore(path, reload_interval_ms=-1)


def test_zero_reload_interval_checks_every_call(path: Path, clock: Clock) -> None:
    store = TokenStore(path, now_ms=clock, reload_interval_ms=0)
    token = create_token(path, "now", Role.ADMIN)
    assert store.authenticate(bearer(token)).name == "now"
