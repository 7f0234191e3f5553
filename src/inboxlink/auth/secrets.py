"""Credential encryption at rest, and keeping secrets out of logs.

Encryption
    `SecretBox` wraps `cryptography.fernet.MultiFernet`: it encrypts under the newest key and decrypts
    with any configured key, so keys can be rotated without downtime:

    1. put a new key first (``INBOXLINK_SECRET_KEY=new,old``, or a new first line in the key file);
    2. re-encrypt stored credentials with `SecretBox.rotate`;
    3. drop the old key.

    `load_secret_box` builds the box from ``INBOXLINK_SECRET_KEY`` (comma-separated Fernet keys, newest
    first) or, when that is unset, from ``<INBOXLINK_HOME>/secret.key``, which is generated on first use
    with mode 0600. The key file may also hold several keys (newest first, separated by newlines or
    commas). Losing the key loses every stored credential: back the key file up with the database.

Redaction
    `RedactingFilter` is a `logging.Filter` that scrubs every value registered with `register_secret`
    and well-known credential patterns (``password=...``, ``Authorization: Bearer ...``, OAuth tokens in
    query strings and JSON, IMAP/SMTP ``LOGIN``/``AUTH`` arguments, ``scheme://user:password@``) from
    log records. Attach it to *handlers*, not loggers: a logger's filters do not see records that
    propagate from child loggers::

        handler.addFilter(RedactingFilter())

Errors never contain key material or plaintext: problems with keys or tokens raise
`inboxlink.errors.ConfigError` naming the setting to fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from inboxlink.config import Settings
from inboxlink.errors import ConfigError, InboxlinkError

__all__ = [
    "KEY_FILE_NAME",
    "REDACTED",
    "RedactingFilter",
    "SecretBox",
    "generate_key",
    "load_secret_box",
    "redact",
    "register_secret",
    "unregister_secret",
]

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "secret.key"
REDACTED = "***"

_SECRET_KEY_SETTING = "INBOXLINK_SECRET_KEY"
_HOME_SETTING = "INBOXLINK_HOME"
_GENERATE_HINT = (
    "generate a key with: python -c "
    "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


def generate_key() -> str:
    """A new random Fernet key (url-safe base64 text)."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypts credentials for storage; decrypts with any of its keys (newest first).

    `source` says where the keys came from; it is only used in error messages and should name the
    setting an operator has to fix (never the key itself).
    """

    def __init__(self, keys: Sequence[str | bytes], *, source: str = _SECRET_KEY_SETTING) -> None:
        self._source = source
        fernets: list[Fernet] = []
        for number, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise ConfigError(
                    f"{source}: key #{number} is not a valid Fernet key "
                    f"(32 url-safe base64-encoded bytes); {_GENERATE_HINT}",
                    setting=source,
                ) from None
        if not fernets:
            raise ConfigError(f"{source}: no encryption key configured; {_GENERATE_HINT}", setting=source)
        self._key_count = len(fernets)
        newest = keys[0]
        self._newest_key = base64.urlsafe_b64decode(newest if isinstance(newest, bytes) else newest.encode())
        self._newest = MultiFernet(fernets[:1])
        self._fernet = MultiFernet(fernets)

    def __repr__(self) -> str:
        return f"<SecretBox keys={self._key_count} source={self._source!r}>"

    @property
    def key_count(self) -> int:
        return self._key_count

    def derive(self, purpose: str) -> str:
        """A stable secret for `purpose` (e.g. the token in a push endpoint's URL), derived from the
        newest key by HMAC-SHA256: nothing more to store or configure, and not the key itself.
        Rotating the key changes it."""
        digest = hmac.new(self._newest_key, b"inboxlink derive:" + purpose.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode("ascii").rstrip("=")

    def encrypt(self, plaintext: str | bytes | dict[str, Any]) -> str:
        """Encrypt under the newest key; returns token text to store in the database.

        A str is stored as UTF-8; a dict as compact JSON (read it back with `decrypt_json`).
        """
        if isinstance(plaintext, bytes):
            data = plaintext
        elif isinstance(plaintext, str):
            data = plaintext.encode("utf-8")
        elif isinstance(plaintext, dict):
            data = json.dumps(plaintext, separators=(",", ":"), sort_keys=True).encode("utf-8")
        else:
            raise TypeError(f"cannot encrypt a {type(plaintext).__name__}: expected str, bytes or dict")
        return self._fernet.encrypt(data).decode("ascii")

    def decrypt(self, token: str) -> bytes:
        """The plaintext bytes; `ConfigError` if no configured key decrypts `token`."""
        raw = self._token_bytes(token)
        try:
            return self._fernet.decrypt(raw)
        except InvalidToken:
            raise self._undecryptable() from None

    def decrypt_json(self, token: str) -> dict[str, Any]:
        """Decrypt a token made by ``encrypt(dict)``."""
        data = self.decrypt(token)
        try:
            value = json.loads(data)
        except ValueError:
            value = None  # not re-raised: a JSONDecodeError carries the whole document (the plaintext)
        if not isinstance(value, dict):
            raise InboxlinkError("stored credential is not a JSON object (it was not encrypted from a dict)")
        return value

    def rotate(self, token: str) -> str:
        """Re-encrypt `token` under the newest key (keeps the original timestamp)."""
        raw = self._token_bytes(token)
        try:
            return self._fernet.rotate(raw).decode("ascii")
        except InvalidToken:
            raise self._undecryptable() from None

    def needs_rotation(self, token: str) -> bool:
        """True if `token` is not (yet) encrypted under the newest key."""
        try:
            self._newest.decrypt(self._token_bytes(token))
        except (InvalidToken, ConfigError):
            return True
        return False

    def _token_bytes(self, token: str) -> bytes:
        if isinstance(token, bytes):
            raw = token
        elif isinstance(token, str):
            try:
                raw = token.encode("ascii")
            except UnicodeEncodeError:
                raise self._malformed() from None
        else:
            raise TypeError(f"token must be str, not {type(token).__name__}")
        try:
            data = base64.urlsafe_b64decode(raw)
        except (binascii.Error, ValueError):
            raise self._malformed() from None
        if not data or data[0] != 0x80:
            raise self._malformed()
        return raw

    def _malformed(self) -> ConfigError:
        return ConfigError(
            "a stored credential is not a valid encrypted token (the database value is corrupted "
            "or was never encrypted)",
            setting=self._source,
        )

    def _undecryptable(self) -> ConfigError:
        return ConfigError(
            f"a stored credential cannot be decrypted with any key from {self._source}: the key that "
            f"encrypted it is missing. Put that key back in {self._source} after the newest key "
            "(comma-separated, newest first), or have the user re-enter the credential",
            setting=self._source,
        )


def load_secret_box(settings: Settings) -> SecretBox:
    """The box for `settings`: ``INBOXLINK_SECRET_KEY`` if set, else ``<home>/secret.key``."""
    if settings.secret_key is not None:
        keys = _split_keys(settings.secret_key.get_secret_value())
        if not keys:
            raise ConfigError(
                f"{_SECRET_KEY_SETTING} is set but empty; unset it to use {_HOME_SETTING}/{KEY_FILE_NAME} "
                f"or {_GENERATE_HINT}",
                setting=_SECRET_KEY_SETTING,
            )
        return SecretBox(keys, source=_SECRET_KEY_SETTING)
    path = settings.resolved_home / KEY_FILE_NAME
    source = f"the key file {path} ({_HOME_SETTING}; or set {_SECRET_KEY_SETTING})"
    return SecretBox(_load_or_create_key_file(path, source), source=source)


def _split_keys(text: str) -> list[str]:
    return [part for part in re.split(r"[,\s]+", text) if part]


def _load_or_create_key_file(path: Path, source: str) -> list[str]:
    try:
        data = _read_key_file(path)
    except FileNotFoundError:
        _create_key_file(path)
        try:
            data = _read_key_file(path)
        except FileNotFoundError:  # e.g. a dangling symlink, which O_EXCL refuses to follow
            raise ConfigError(
                f"cannot create or read the key file {path}; fix {_HOME_SETTING} "
                f"or set {_SECRET_KEY_SETTING}",
                setting=_HOME_SETTING,
            ) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    keys = _split_keys(text)
    if not keys:
        raise ConfigError(
            f"{source}: the file does not contain a Fernet key (garbled or empty); restore it from "
            f"backup. Deleting it loses every stored credential",
            setting=_HOME_SETTING,
        )
    for key in keys:
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{source}: the file does not contain a valid Fernet key (garbled); restore it from "
                f"backup. Deleting it loses every stored credential",
                setting=_HOME_SETTING,
            ) from None
    return keys


def _read_key_file(path: Path) -> bytes:
    """Read the key file; waits briefly if another process has just created it and not yet written it."""
    deadline = time.monotonic() + 0.5
    while True:
        try:
            with open(path, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                data = fh.read(64 * 1024)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise ConfigError(
                f"cannot read the key file {path}: {exc.strerror}; fix its permissions or "
                f"{_HOME_SETTING}, or set {_SECRET_KEY_SETTING}",
                setting=_HOME_SETTING,
            ) from None
        if not stat.S_ISREG(mode):
            raise ConfigError(f"the key file {path} is not a regular file; fix {_HOME_SETTING}")
        if data.strip() or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if mode & 0o077:
        logger.warning(
            "key file %s is accessible to group/others (mode %o); run chmod 600 on it",
            path,
            stat.S_IMODE(mode),
        )
    return data


def _create_key_file(path: Path) -> None:
    """Create `path` with a new key, mode 0600, never overwriting (O_EXCL); losing a race is fine."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the data directory {path.parent}: {exc.strerror}; fix {_HOME_SETTING} "
            f"or set {_SECRET_KEY_SETTING}",
            setting=_HOME_SETTING,
        ) from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return  # another process created it first: use theirs
    except OSError as exc:
        raise ConfigError(
            f"cannot create the key file {path}: {exc.strerror}; fix {_HOME_SETTING} or set "
            f"{_SECRET_KEY_SETTING}",
            setting=_HOME_SETTING,
        ) from None
    try:
        os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
        data = (generate_key() + "\n").encode("ascii")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    logger.info("generated a new encryption key in %s; back it up together with the database", path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# Redaction

_registry_lock = threading.Lock()
_registry: dict[str, int] = {}  # secret value -> registration count
_registry_snapshot: tuple[str, ...] = ()


def _variants(secret: str) -> set[str]:
    """`secret` and the encodings it commonly appears in within log text."""
    out = {secret}
    out.add(quote(secret, safe=""))
    out.add(quote_plus(secret, safe=""))
    out.add(json.dumps(secret)[1:-1])
    out.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    raw = secret.encode("utf-8")
    out.add(base64.b64encode(raw).decode("ascii"))
    out.add(base64.urlsafe_b64encode(raw).decode("ascii"))
    out.add(base64.b64encode(raw).decode("ascii").rstrip("="))
    out.discard("")
    return out


def register_secret(value: str) -> None:
    """Have every `RedactingFilter` scrub `value` (and its URL/JSON/base64 forms) from log records.

    Registrations are counted: call `unregister_secret` once per `register_secret` when the value is
    no longer in use (e.g. a refreshed access token), so the registry does not grow without bound.
    Empty strings are ignored; anything else is redacted, however short.
    """
    global _registry_snapshot
    if not isinstance(value, str):
        raise TypeError("register_secret expects a str")
    if not value:
        return
    with _registry_lock:
        _registry[value] = _registry.get(value, 0) + 1
        _registry_snapshot = _expand(_registry)


def unregister_secret(value: str) -> None:
    """Undo one `register_secret(value)`; unknown values are ignored."""
    global _registry_snapshot
    with _registry_lock:
        count = _registry.get(value, 0)
        if count <= 1:
            _registry.pop(value, None)
        else:
            _registry[value] = count - 1
        _registry_snapshot = _expand(_registry)


def _expand(secrets: Iterable[str]) -> tuple[str, ...]:
    expanded: set[str] = set()
    for secret in secrets:
        if secret:
            expanded |= _variants(secret)
    # Longest first, so a secret containing another one is replaced whole.
    return tuple(sorted(expanded, key=len, reverse=True))


_KEY_NAMES = (
    r"[a-z0-9_\-]*(?:password|passwd|passphrase|secret)"
    r"|pwd|pass"
    r"|(?:access|refresh|id|oauth|session|auth|bearer)[_\-]?token|token"
    r"|api[_\-]?key|x-api-key|code[_\-]?verifier|client[_\-]?assertion"
)
_QUOTED = r"""(?:"(?:\\.|[^"\\\r\n])*"|'(?:\\.|[^'\\\r\n])*')"""

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "password": "x", 'refresh_token': 'x', password='x', token = "x"  (JSON, dict and object reprs)
    (
        re.compile(
            r"""(?P<pre>(?<![\w\-])(?P<q>["']?)(?:"""
            + _KEY_NAMES
            + r"""|(?:proxy-)?authorization|cookie)(?P=q)\s*[:=]\s*)"""
            + r"""(?P<vq>["'])(?:\\.|(?!(?P=vq))[^\\\r\n])*(?P=vq)""",
            re.IGNORECASE,
        ),
        r"\g<pre>\g<vq>" + REDACTED + r"\g<vq>",
    ),
    # Bearer tokens anywhere
    (
        re.compile(r"(?P<pre>\bbearer\s+)[A-Za-z0-9\-._~+/]{8,}=*(?![\w=])", re.IGNORECASE),
        r"\g<pre>" + REDACTED,
    ),
    # Authorization: Basic xyz / Cookie: ...  (header lines: the rest of the line)
    (
        re.compile(
            r"(?P<pre>(?<![\w\-])(?:(?:proxy-)?authorization|cookie|set-cookie|x-api-key)\s*[:=]\s*"
            r"(?:(?:bearer|basic|digest|negotiate|ntlm|token)\s+)?)(?![\"'])[^\r\n]+",
            re.IGNORECASE,
        ),
        r"\g<pre>" + REDACTED,
    ),
    # password=x&... access_token=x (query strings, forms, key=value logs)
    (
        re.compile(
            r"(?P<pre>(?<![\w\-])(?:" + _KEY_NAMES + r")\s*=\s*)" + r"""(?:[^\s&,;'")\]}]+)""",
            re.IGNORECASE,
        ),
        r"\g<pre>" + REDACTED,
    ),
    # IMAP AUTHENTICATE / SMTP AUTH with an initial response
    (
        re.compile(
            r"(?P<pre>\bAUTH(?:ENTICATE)?\s+(?:PLAIN|LOGIN|XOAUTH2|OAUTHBEARER|CRAM-MD5)\s+)[A-Za-z0-9+/=]+",
            re.IGNORECASE,
        ),
        r"\g<pre>" + REDACTED,
    ),
    # IMAP LOGIN user password
    (
        re.compile(r"(?P<pre>\bLOGIN\s+(?:" + _QUOTED + r"|[^\s\"']+)\s+)(?:" + _QUOTED + r"|[^\s\"']+)"),
        r"\g<pre>" + REDACTED,
    ),
    # scheme://user:password@host
    (
        re.compile(r"(?P<pre>\b[a-z][a-z0-9+.\-]*://[^\s/:@]*:)[^\s/@]+(?=@)", re.IGNORECASE),
        r"\g<pre>" + REDACTED,
    ),
)


def _redact_expanded(text: str, expanded: Iterable[str]) -> str:
    for secret in expanded:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with each of `secrets` (and its URL/JSON/base64 forms) and well-known credential
    patterns (``password=...``, bearer tokens, ...) replaced by ``***``."""
    return _redact_expanded(text, _expand(secrets))


class RedactingFilter(logging.Filter):
    """Scrubs registered secrets (`register_secret`), `extra_secrets` and credential patterns from
    log records. Never drops a record.

    The record's message is formatted here (``msg % args``) and replaced by the redacted text, with
    ``args`` cleared, so a secret passed as an argument is caught too. A traceback (``exc_info``) and
    ``stack_info`` are rendered and redacted into ``exc_text``/``stack_info``, which the standard
    `logging.Formatter` prints instead of re-rendering the exception.
    """

    def __init__(self, extra_secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._extra = _expand(extra_secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        expanded = self._secrets()
        try:
            message = record.getMessage()
        except Exception:
            message = f"{record.msg!s} (unformattable arguments: {record.args!r})"
        record.msg = _redact_expanded(message, expanded)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _redact_expanded(record.exc_text, expanded)
        if record.stack_info:
            record.stack_info = _redact_expanded(record.stack_info, expanded)
        return True

    def _secrets(self) -> tuple[str, ...]:
        registered = _registry_snapshot
        if not self._extra:
            return registered
        return tuple(sorted({*registered, *self._extra}, key=len, reverse=True))
