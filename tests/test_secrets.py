from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from inboxlink.auth.secrets import (
    KEY_FILE_NAME,
    RedactingFilter,
    SecretBox,
    generate_key,
    load_secret_box,
    redact,
    register_secret,
    unregister_secret,
)
from inboxlink.config import Settings
from inboxlink.errors import ConfigError, InboxlinkError

PLAINTEXT = "correct horse battery staple"


def _settings(tmp_path: Path, secret_key: str | None = None) -> Settings:
    return Settings(home=tmp_path / "home", secret_key=None if secret_key is None else SecretStr(secret_key))


def _error_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc)]
    if isinstance(exc, InboxlinkError):
        parts += [exc.message, repr(exc.fields)]
    return "\n".join(parts)


# -- SecretBox --------------------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [PLAINTEXT, PLAINTEXT.encode(), "pässwörd ✓", ""])
def test_round_trip(plaintext: str | bytes) -> None:
    box = SecretBox([generate_key()])
    token = box.encrypt(plaintext)
    assert isinstance(token, str)
    token.encode("ascii")
    expected = plaintext.encode() if isinstance(plaintext, str) else plaintext
    assert box.decrypt(token) == expected
    if expected:
        assert expected not in token.encode()


def test_round_trip_json() -> None:
    box = SecretBox([generate_key()])
    creds = {"username": "ann@example.test", "password": PLAINTEXT, "port": 993}
    assert box.decrypt_json(box.encrypt(creds)) == creds


def test_decrypt_json_of_non_object_is_an_error_without_plaintext() -> None:
    box = SecretBox([generate_key()])
    for token in (box.encrypt(PLAINTEXT), box.encrypt('["a list"]')):
        with pytest.raises(InboxlinkError) as info:
            box.decrypt_json(token)
        assert PLAINTEXT not in _error_text(info.value)


def test_tokens_differ_each_time() -> None:
    box = SecretBox([generate_key()])
    assert box.encrypt(PLAINTEXT) != box.encrypt(PLAINTEXT)


def test_rotation_with_two_keys() -> None:
    old_key, new_key = generate_key(), generate_key()
    old_token = SecretBox([old_key]).encrypt(PLAINTEXT)

    box = SecretBox([new_key, old_key])
    assert box.decrypt(old_token) == PLAINTEXT.encode()
    assert box.needs_rotation(old_token)

    rotated = box.rotate(old_token)
    assert rotated != old_token
    assert not box.needs_rotation(rotated)
    assert SecretBox([new_key]).decrypt(rotated) == PLAINTEXT.encode()
    with pytest.raises(ConfigError):
        SecretBox([old_key]).decrypt(rotated)

    # New tokens are encrypted under the newest key only.
    assert SecretBox([new_key]).decrypt(box.encrypt("x")) == b"x"


def test_wrong_key_raises_config_error_without_secrets() -> None:
    right_key, wrong_key = generate_key(), generate_key()
    token = SecretBox([right_key]).encrypt(PLAINTEXT)
    box = SecretBox([wrong_key])
    for call in (box.decrypt, box.decrypt_json, box.rotate):
        with pytest.raises(ConfigError) as info:
            call(token)
        text = _error_text(info.value)
        assert "INBOXLINK_SECRET_KEY" in text
        for secret in (right_key, wrong_key, PLAINTEXT):
            assert secret not in text
        assert info.value.__cause__ is None


@pytest.mark.parametrize("token", ["", "not a token", "gAAAA", "ünïcode", "gAAAAAB" + "A" * 100])
def test_garbage_token_raises_config_error(token: str) -> None:
    with pytest.raises(ConfigError):
        SecretBox([generate_key()]).decrypt(token)


def test_invalid_key_raises_config_error_without_key() -> None:
    bad = "this-is-not-a-fernet-key-but-it-is-secret"
    with pytest.raises(ConfigError) as info:
        SecretBox([generate_key(), bad])
    assert bad not in _error_text(info.value)
    assert "key #2" in str(info.value)
    with pytest.raises(ConfigError):
        SecretBox([])


def test_repr_hides_keys() -> None:
    key = generate_key()
    assert key not in repr(SecretBox([key]))


# -- load_secret_box --------------------------------------------------------------------------------


def test_keys_from_setting(tmp_path: Path) -> None:
    old_key, new_key = generate_key(), generate_key()
    old_token = SecretBox([old_key]).encrypt(PLAINTEXT)
    box = load_secret_box(_settings(tmp_path, f" {new_key} , {old_key} "))
    assert box.key_count == 2
    assert box.decrypt(old_token) == PLAINTEXT.encode()
    assert SecretBox([new_key]).decrypt(box.encrypt("x")) == b"x"
    assert not (tmp_path / "home").exists()  # no key file in that mode


@pytest.mark.parametrize(
    "value", ["garbled-key-material-XYZ", f"{Fernet.generate_key().decode()},garbled-XYZ"]
)
def test_garbled_setting_names_setting_not_value(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_secret_box(_settings(tmp_path, value))
    text = _error_text(info.value)
    assert "INBOXLINK_SECRET_KEY" in text
    for part in value.split(","):
        assert part not in text


def test_empty_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="INBOXLINK_SECRET_KEY"):
        load_secret_box(_settings(tmp_path, " , "))


def test_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    home = settings.resolved_home
    assert not home.exists()

    old_umask = os.umask(0o022)
    try:
        box = load_secret_box(settings)
    finally:
        os.umask(old_umask)

    key_file = home / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    key = key_file.read_text().strip()
    Fernet(key)  # a valid key

    token = box.encrypt(PLAINTEXT)
    again = load_secret_box(settings)
    assert key_file.read_text().strip() == key  # not regenerated
    assert again.decrypt(token) == PLAINTEXT.encode()
    assert SecretBox([key]).decrypt(token) == PLAINTEXT.encode()


def test_key_file_mode_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        load_secret_box(_settings(tmp_path))
    finally:
        os.umask(old_umask)
    key_file = tmp_path / "home" / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_existing_home_dir_is_used(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    load_secret_box(_settings(tmp_path))
    assert (home / KEY_FILE_NAME).is_file()


def test_key_file_with_several_keys(tmp_path: Path) -> None:
    old_key, new_key = generate_key(), generate_key()
    home = tmp_path / "home"
    home.mkdir()
    key_file = home / KEY_FILE_NAME
    key_file.write_text(f"{new_key}\n{old_key}\n")
    key_file.chmod(0o600)
    box = load_secret_box(_settings(tmp_path))
    assert box.decrypt(SecretBox([old_key]).encrypt("x")) == b"x"
    assert SecretBox([new_key]).decrypt(box.encrypt("y")) == b"y"


@pytest.mark.parametrize(
    "content",
    [b"garbled-key-material-XYZ\n", b"\xff\xfe\x00garbled", b"   \n"],
    ids=["text", "binary", "blank"],
)
def test_garbled_key_file(tmp_path: Path, content: bytes) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key_file = home / KEY_FILE_NAME
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_secret_box(_settings(tmp_path))
    text = _error_text(info.value)
    assert "INBOXLINK_SECRET_KEY" in text or "INBOXLINK_HOME" in text
    assert "garbled-key-material" not in text
    assert key_file.read_bytes() == content  # never overwritten


def test_token_from_other_install_names_key_file(tmp_path: Path) -> None:
    token = SecretBox([generate_key()]).encrypt(PLAINTEXT)
    box = load_secret_box(_settings(tmp_path))
    with pytest.raises(ConfigError) as info:
        box.decrypt(token)
    text = _error_text(info.value)
    assert "INBOXLINK_HOME" in text and "INBOXLINK_SECRET_KEY" in text
    key = (tmp_path / "home" / KEY_FILE_NAME).read_text().strip()
    assert key not in text and PLAINTEXT not in text


def test_unreadable_key_path_is_config_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / KEY_FILE_NAME).mkdir(parents=True)  # a directory where the key file should be
    with pytest.raises(ConfigError):
        load_secret_box(_settings(tmp_path))


def test_dangling_symlink_is_not_followed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    target = tmp_path / "elsewhere.key"
    (home / KEY_FILE_NAME).symlink_to(target)
    with pytest.raises(ConfigError):
        load_secret_box(_settings(tmp_path))
    assert not target.exists()


# -- redaction --------------------------------------------------------------------------------------


@pytest.fixture
def registered() -> Iterator[list[str]]:
    values: list[str] = []
    yield values
    for value in values:
        unregister_secret(value)


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("inboxlink.tests.redaction")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_redact_helper() -> None:
    text = "user ann logged in with s3cr3t-Pa55 and again s3cr3t-Pa55"
    assert redact(text, ["s3cr3t-Pa55", ""]) == "user ann logged in with *** and again ***"
    assert redact("nothing here", []) == "nothing here"


def test_redact_encoded_forms() -> None:
    secret = "p@ss w/rd&"
    out = redact("q=p%40ss%20w%2Frd%26 form=p%40ss+w%2Frd%26", [secret])
    assert "p%40ss" not in out
    out = redact('{"value": "p@ss w/rd&\\"x"}', ['p@ss w/rd&"x'])
    assert "p@ss" not in out


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("connecting with password=hunter2&user=ann", "hunter2"),
        ("GET /cb?code=1&access_token=ya29.AbCdEf&x=1", "ya29.AbCdEf"),
        ("POST refresh_token=1//0gRefresh&client_secret=GOCSPX-abc", "1//0gRefresh"),
        ("POST refresh_token=1//0gRefresh&client_secret=GOCSPX-abc", "GOCSPX-abc"),
        ('{"access_token": "eyJ0eXAi.payload.sig", "expires_in": 3599}', "eyJ0eXAi"),
        ('{"refresh_token":"M.R3_BAY.xyz","token_type":"Bearer"}', "M.R3_BAY"),
        ("{'password': 'hunter2', 'user': 'ann'}", "hunter2"),
        ("ImapCreds(user='ann', password='hunter 2')", "hunter 2"),
        ("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig", "eyJhbGciOiJSUzI1NiJ9"),
        ("headers={'Authorization': 'Bearer abcdefghijkl'}", "abcdefghijkl"),
        ("Authorization: Basic YW5uOmh1bnRlcjI=", "YW5uOmh1bnRlcjI"),
        ("> b'A001 LOGIN ann@example.test \"hunter2\"'", "hunter2"),
        ("> b'A001 AUTHENTICATE XOAUTH2 dXNlcj1hbm4BYXV0aD1CZWFyZXIgeHl6AQE='", "dXNlcj1hbm4"),
        ("send: 'AUTH PLAIN AGFubgBodW50ZXIy'", "AGFubgBodW50ZXIy"),
        ("db postgresql+psycopg://inbox:hunter2@db:5432/inbox", "hunter2"),
    ],
)
def test_redact_patterns(text: str, leak: str) -> None:
    out = redact(text, [])
    assert leak not in out
    assert "***" in out
    assert redact(out, []) == out  # idempotent


def test_redact_leaves_ordinary_text_alone() -> None:
    text = (
        "synced 12 messages for ann@example.test from imap.example.test:993 "
        "(token_type=Bearer expires_in=3599; deltatoken=abc; password reset page)"
    )
    assert redact(text, []) == text


def test_filter_scrubs_registered_secret_from_real_record(
    log: tuple[logging.Logger, io.StringIO], registered: list[str]
) -> None:
    logger, stream = log
    secret = "Tr0ub4dor&3-imap"
    register_secret(secret)
    registered.append(secret)

    logger.info("login for %s with %s failed", "ann@example.test", secret)
    logger.warning("creds=%r", {"user": "ann", "pw": secret})
    logger.error("url-encoded: %s", "Tr0ub4dor%263-imap")

    output = stream.getvalue()
    assert secret not in output
    assert "Tr0ub4dor" not in output
    assert "login for ann@example.test with *** failed" in output
    assert output.count("***") >= 3


def test_filter_scrubs_patterns_and_tracebacks(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    logger.debug("token endpoint answered %s", '{"access_token": "ya29.secretvalue", "expires_in": 1}')
    logger.info("connecting password=%s", "hunter2")
    try:
        raise RuntimeError("server said: bad password=hunter3 for ann")
    except RuntimeError:
        logger.exception("login failed")
    output = stream.getvalue()
    for leak in ("ya29.secretvalue", "hunter2", "hunter3"):
        assert leak not in output
    assert "Traceback" in output and "RuntimeError" in output


def test_filter_handles_bad_format_args(
    log: tuple[logging.Logger, io.StringIO], registered: list[str]
) -> None:
    logger, stream = log
    register_secret("zebra-secret")
    registered.append("zebra-secret")
    logger.info("%d items", "zebra-secret")  # wrong type for %d
    output = stream.getvalue()
    assert "zebra-secret" not in output
    assert "items" in output


def test_filter_extra_secrets() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %s", ("only-here-123",), None)
    assert RedactingFilter(extra_secrets=["only-here-123"]).filter(record) is True
    assert record.getMessage() == "value ***"


def test_register_and_unregister() -> None:
    secret = "counted-secret-value"
    register_secret(secret)
    register_secret(secret)
    unregister_secret(secret)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (secret,), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "***"
    unregister_secret(secret)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (secret,), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == secret
    unregister_secret("never-registered")
