"""A private Dovecot IMAP server for tests and benchmarks.

`Dovecot` runs a real Dovecot 2.3 (the Debian ``dovecot-imapd`` + ``dovecot-lmtpd`` packages) that
belongs to one test session or one benchmark, isolated from any system instance:

    Dovecot().start()                              (about 0.1 s)
      ├── mkdtemp ROOT/                        every directory we create is mode 755: the auth
      │     ├── dovecot.conf  dovecot.log      process runs as `dovecot` and must traverse them
      │     ├── cert.pem key.pem               self-signed; CN, DNS SAN and IP SAN are 127.0.0.1
      │     ├── passwd.d/<email>               passwd-file passdb + userdb, one file per user
      │     ├── run/                           base_dir: sockets, master.pid
      │     ├── state/                         state_dir
      │     └── home/<email>/Maildir/          maildir++ layout: folders are Maildir/.<Name>/
      ├── free loopback ports for IMAP (plaintext), IMAPS (implicit TLS) and LMTP (TCP)
      ├── render CONFIG_TEMPLATE (Dovecot config files cannot read the environment)
      ├── spawn `dovecot -F -c ROOT/dovecot.conf`, RLIMIT_NOFILE raised to 65536 in preexec_fn
      └── wait until the IMAP port greets and the IMAPS and LMTP ports accept

    stop()                                         (about 0.1 s; nothing is left running)
      ├── SIGTERM to the master's children that run as the mail user (imap/lmtp sessions): on
      │   SIGTERM the master would leave a process that serves a connected client running
      ├── SIGTERM to the PID in run/master.pid (never by process name); once only its log process
      │   is left the master just sleeps a fixed second before exiting, so it is SIGKILLed then
      ├── SIGKILL anything it had forked that is still alive after a grace period
      └── delete ROOT (unless keep_dir=True)

Running as root (CI, this dev box): Dovecot refuses to read mail as root and rejects UID 0 in a
passwd-file, so every mail user is ``nobody`` (65534:65534) and the files we write are chowned to it.
Running as another user: Dovecot runs unprivileged (internal and login users are the current user,
no chroot), and mail belongs to the current user.

What the configuration gives a client (see CONFIG_TEMPLATE):

- CONDSTORE, QRESYNC, IDLE (Dovecot's defaults) and SPECIAL-USE with auto-subscribed Sent, Drafts,
  Trash, Junk and Archive; hierarchy separator ``.`` (Dovecot's maildir default; ``separator="/"``
  for the other common one). Folder names in this API are IMAP names with that separator.
- LOGIN and AUTHENTICATE PLAIN/LOGIN on the plaintext port (``disable_plaintext_auth = no``,
  loopback only; STARTTLS is offered too). A wrong password gets ``NO [AUTHENTICATIONFAILED]``
  within 0.5 s (``auth_failure_delay = 0``; Dovecot flushes failures on a 0.5 s timer) and repeated
  failures are not penalised (the anvil auth-penalty socket is disabled), so tests may fail logins.
- Headroom for ``max_connections`` concurrent sessions (1,200 by default; one user may hold all of
  them from one IP): imap ``process_limit`` and ``mail_max_userip_connections`` N, client limits
  2N + 100 for the default, anvil, auth and imap-login, imap-login in high-performance mode
  (``service_count = 0``), ``ulimit -n`` 65536. For more than 128 IDLE sessions with instant
  notification raise the kernel's inotify limit too (`raise_inotify_instances`): all mail processes
  run as one UID here, and past ``fs.inotify.max_user_instances`` (default 128) Dovecot falls back
  to polling (``mailbox_idle_check_interval``, 30 s).

Users: `add_user` writes the user's own passwd-file, read at the next login. `set_password` takes
up to a second: Dovecot's auth process stats a passwd-file at most once per second.

Mail goes in three ways:

- `write_messages` writes Maildir files directly (tmp/, then rename into cur/): about 2,500
  messages/s on this machine's disk; UIDs follow the order written; INTERNALDATE is the message's
  Date header; S= and W= sizes are in the file names so Dovecot need not read files for sizes;
- `deliver_lmtp` delivers through Dovecot's LMTP listener, as an MTA does (new mail, IDLE pushes);
- `doveadm` runs any doveadm command against this instance (expunge, flag changes, renames ...).

`change_uidvalidity` runs ``doveadm mailbox update --uid-validity``; a client sees the new
UIDVALIDITY at its next SELECT.

Delivery hooks: ``Dovecot(push_url=URL)`` loads the push_notification plugin (OX driver) into LMTP,
which then PUTs ``{"user", "event": "messageNew", "folder": "INBOX", "imap-uid", ...}`` to URL
for each delivery to the INBOX of a user registered with `register_push`, before LMTP answers the
delivery (`inboxlink.api.routes_push_dovecot` describes the driver). Off by default.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import itertools
import math
import os
import re
import resource
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CONFIG_TEMPLATE",
    "PUSH_REGISTRATION_KEY",
    "PUSH_TEMPLATE",
    "SPECIAL_USE_FOLDERS",
    "Dovecot",
    "DovecotError",
    "MailUser",
    "free_ports",
    "is_available",
    "raise_inotify_instances",
]

NOBODY_UID = 65534
NOBODY_GID = 65534
SPECIAL_USE_FOLDERS = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
_BINARY_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
_NOFILE = 65536
# IMAP flag -> maildir info letter (must be written in ASCII order after ":2,").
_MAILDIR_LETTERS = "DFPRST"
_SYSTEM_FLAG_LETTERS = {"\\draft": "D", "\\flagged": "F", "\\answered": "R", "\\seen": "S", "\\deleted": "T"}
_DATE_HEADER = re.compile(rb"^Date:[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)

# string.Template: `${name}` placeholders, nothing else of Dovecot's syntax collides with `$`.
CONFIG_TEMPLATE = r"""# Rendered by inboxlink.testing.dovecot for one private instance; do not edit.
instance_name = ${instance_name}
base_dir = ${base_dir}
state_dir = ${state_dir}
log_path = ${log_path}
protocols = imap lmtp
listen = 127.0.0.1
${privileges}
verbose_proctitle = yes

ssl = yes
ssl_cert = <${cert_path}
ssl_key = <${key_path}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_cache_size = 0

passdb {
  driver = passwd-file
  args = username_format=%Lu ${passwd_dir}/%Lu
}
userdb {
  driver = passwd-file
  args = username_format=%Lu ${passwd_dir}/%Lu
}
first_valid_uid = ${first_valid_uid}
mail_location = maildir:~/Maildir

namespace inbox {
  inbox = yes
  separator = ${separator}
  mailbox Sent {
    special_use = \Sent
    auto = subscribe
  }
  mailbox Drafts {
    special_use = \Drafts
    auto = subscribe
  }
  mailbox Trash {
    special_use = \Trash
    auto = subscribe
  }
  mailbox Junk {
    special_use = \Junk
    auto = subscribe
  }
  mailbox Archive {
    special_use = \Archive
    auto = subscribe
  }
}

default_client_limit = ${client_limit}
protocol imap {
  mail_max_userip_connections = ${max_connections}
  imap_idle_notify_interval = ${idle_notify_interval}
${imap_push}}
protocol lmtp {
  postmaster_address = postmaster@localhost
${lmtp_push}}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${imap_port}
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = ${imaps_port}
    ssl = yes
  }
  service_count = 0
  process_min_avail = ${login_processes}
  client_limit = ${client_limit}
${login_chroot}}
service imap {
  process_limit = ${max_connections}
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = ${lmtp_port}
  }
}
service anvil {
  client_limit = ${client_limit}
  # no auth penalty (growing delays after failed logins from one IP): tests fail logins on purpose
  unix_listener anvil-auth-penalty {
    mode = 0
  }
${anvil_chroot}}
service auth {
  client_limit = ${client_limit}
}
${push_notification}"""

# What `Dovecot(push_url=...)` adds to the configuration (`_prepare` puts it in): Dovecot's
# push_notification plugin with its OX driver in the LMTP processes, per-user attributes in a file in
# the home (where the driver looks for a user's registration) and METADATA for IMAP clients (so a
# client may register with SETMETADATA). Plugin settings are %-expanded: a literal % is written %%.
PUSH_TEMPLATE = r"""mail_attribute_dict = file:%h/dovecot-attributes
plugin {
  push_notification_driver = ox:url=${url}
}
"""
_PUSH_IMAP = "  imap_metadata = yes\n"
_PUSH_LMTP = "  mail_plugins = $mail_plugins notify push_notification\n"
PUSH_REGISTRATION_KEY = "/private/vendor/vendor.dovecot/http-notify"


class DovecotError(RuntimeError):
    """The private Dovecot could not be started, or a doveadm/LMTP operation failed."""


@dataclass(frozen=True)
class MailUser:
    """One mailbox on a private server: what a test needs to connect to it."""

    email: str
    password: str
    host: str
    port: int
    imaps_port: int
    home: Path

    @property
    def maildir(self) -> Path:
        return self.home / "Maildir"


def is_available() -> bool:
    """True when the dovecot and doveadm binaries are installed."""
    return _find_binary("dovecot") is not None and _find_binary("doveadm") is not None


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _BINARY_DIRS:
        candidate = Path(directory, name)
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct TCP ports free on `host` right now (all sockets are held until all are chosen)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def raise_inotify_instances(minimum: int) -> bool:
    """Raise fs.inotify.max_user_instances to at least `minimum` (root only); True if it now is.

    Every IDLE session costs Dovecot one inotify instance for the mail UID; all users are one UID here.
    """
    path = Path("/proc/sys/fs/inotify/max_user_instances")
    try:
        current = int(path.read_text())
        if current >= minimum:
            return True
        path.write_text(f"{minimum}\n")
        return int(path.read_text()) >= minimum
    except (OSError, ValueError):
        return False


# A name the test certificate also holds, for tests that resolve a host name of their own to the
# server's address (the .test TLD is reserved: it never resolves for real).
TEST_HOST_NAME = "mail.inboxlink.test"


def write_self_signed_cert(
    cert_path: Path, key_path: Path, host: str = "127.0.0.1", also: Sequence[str] = ()
) -> None:
    """A self-signed certificate for `host`: CN, DNS SAN and IP SAN all `host` (mbsync checks the DNS
    name against the host string and ignores IP SANs; Python's ssl checks the IP SAN), plus DNS SANs
    for the names in `also`."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    san: list[x509.GeneralName] = [x509.DNSName(host), *(x509.DNSName(n) for n in also)]
    with contextlib.suppress(ValueError):
        san.append(x509.IPAddress(ipaddress.ip_address(host)))
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)


def _maildir_letters(flags: str | Iterable[str]) -> tuple[str, list[str]]:
    """Flags -> (maildir info letters, keywords).

    IMAP flags ("\\Seen \\Flagged $Forwarded", or a list of them), or a string of maildir info letters
    ("S", "FRS": D draft, F flagged, P passed, R replied = \\Answered, S seen, T trashed = \\Deleted).
    """
    if isinstance(flags, str) and flags and flags.isalpha() and flags.isupper():
        unknown = set(flags) - set(_MAILDIR_LETTERS)
        if unknown:
            raise ValueError(
                f"not maildir flag letters: {''.join(sorted(unknown))} (use {_MAILDIR_LETTERS}: D draft, "
                "F flagged, P passed, R replied = \\Answered, S seen, T trashed = \\Deleted; or IMAP names)"
            )
        return "".join(sorted(set(flags))), []
    names = flags.split() if isinstance(flags, str) else list(flags)
    letters: set[str] = set()
    keywords: list[str] = []
    for name in names:
        letter = _SYSTEM_FLAG_LETTERS.get(name.lower())
        if letter is not None:
            letters.add(letter)
        elif name.startswith("\\"):
            raise ValueError(f"not a flag that can be stored in a Maildir: {name}")
        elif name not in keywords:
            keywords.append(name)
    return "".join(sorted(letters)), keywords


def _internal_date(raw: bytes) -> float | None:
    """The Date header as a POSIX timestamp (Maildir INTERNALDATE is the file's mtime)."""
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if i >= 0]
    header = raw[: min(ends)] if ends else raw
    match = _DATE_HEADER.search(header)
    if match is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(match.group(1).decode("ascii", "replace"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


class Dovecot:
    """A private Dovecot instance; see the module docstring. Use as a context manager or start()/stop().

    `root` is the parent of the instance's temp dir (default: the system temp dir; a benchmark may
    pass /dev/shm). `max_connections` sizes the limits for that many concurrent IMAP sessions.
    `push_url` turns on Dovecot's push_notification plugin with its OX driver, which PUTs a JSON
    notification to that URL when LMTP delivers to the INBOX of a user registered with
    `register_push` (see PUSH_TEMPLATE); None (the default) leaves the plugin off.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] | None = None,
        max_connections: int = 1200,
        idle_notify_interval: str = "2 mins",
        separator: str = ".",
        start_timeout: float = 15.0,
        keep_dir: bool = False,
        push_url: str | None = None,
    ) -> None:
        if separator not in {".", "/"}:
            raise ValueError("separator must be '.' or '/'")
        if push_url is not None and (
            not push_url.startswith(("http://", "https://")) or re.search(r"\s", push_url)
        ):
            raise ValueError(f"push_url must be an http(s) URL without spaces: {push_url!r}")
        self.push_url = push_url
        self._root_parent = Path(root) if root is not None else None
        self.max_connections = max_connections
        self.idle_notify_interval = idle_notify_interval
        self.separator = separator
        self.start_timeout = start_timeout
        self.keep_dir = keep_dir
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int, int] | None = None
        self._users: dict[str, MailUser] = {}
        self._folder_dirs: dict[tuple[str, str], Path] = {}
        self._queue = itertools.count(1)
        self._name_time = int(time.time())
        self._passwd_mtime: dict[str, int] = {}
        self._hostname = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"
        self._as_root = os.geteuid() == 0
        self.mail_uid = NOBODY_UID if self._as_root else os.geteuid()
        self.mail_gid = NOBODY_GID if self._as_root else os.getegid()

    # ------------------------------------------------------------------ paths and ports

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise DovecotError("Dovecot is not started")
        return self._dir

    @property
    def config_path(self) -> Path:
        return self.dir / "dovecot.conf"

    @property
    def base_dir(self) -> Path:
        return self.dir / "run"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def log_path(self) -> Path:
        return self.dir / "dovecot.log"

    @property
    def passwd_dir(self) -> Path:
        """One passwd-file per user, named after the address (passdb and userdb)."""
        return self.dir / "passwd.d"

    @property
    def ca_cert_path(self) -> Path:
        """The server's self-signed certificate: trust it (cafile=...) to connect to `imaps_port`."""
        return self.dir / "cert.pem"

    @property
    def homes_dir(self) -> Path:
        return self.dir / "home"

    def _port(self, index: int) -> int:
        if self._ports is None:
            raise DovecotError("Dovecot is not started")
        return self._ports[index]

    @property
    def imap_port(self) -> int:
        return self._port(0)

    @property
    def imaps_port(self) -> int:
        return self._port(1)

    @property
    def lmtp_port(self) -> int:
        return self._port(2)

    @property
    def pid(self) -> int | None:
        """The master's PID as written in base_dir/master.pid (None when not running)."""
        try:
            return int((self.base_dir / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError, DovecotError):
            return None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Dovecot:
        if self._process is not None:
            raise DovecotError("Dovecot is already started")
        binary = _find_binary("dovecot")
        if binary is None or _find_binary("doveadm") is None:
            raise DovecotError("dovecot/doveadm not installed (Debian: dovecot-imapd dovecot-lmtpd)")
        for attempt in range(3):
            root = Path(tempfile.mkdtemp(prefix="inboxlink-dovecot-", dir=self._root_parent))
            self._dir = root
            try:
                self._prepare(root)
                self._spawn(binary)
                self._wait_ready()
                return self
            except DovecotError as exc:
                self.stop()
                # a free port can be taken by someone else before Dovecot binds it: choose again
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _prepare(self, root: Path) -> None:
        for directory in (root, self.base_dir, self.state_dir, self.homes_dir, self.passwd_dir):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
        write_self_signed_cert(self.ca_cert_path, root / "key.pem", self.host, also=[TEST_HOST_NAME])
        self.ca_cert_path.chmod(0o644)
        self._ports = (imap, imaps, lmtp) = tuple(free_ports(3, self.host))  # type: ignore[assignment]
        client_limit = 2 * self.max_connections + 100
        if self._as_root:
            privileges = ""
            chroot = ""
        else:
            import grp
            import pwd

            user = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            privileges = (
                f"default_internal_user = {user}\ndefault_internal_group = {group}\n"
                f"default_login_user = {user}\n"
            )
            chroot = "  chroot =\n"
        push = ""
        if self.push_url:
            push = string.Template(PUSH_TEMPLATE).substitute(url=self.push_url.replace("%", "%%"))
        config = string.Template(CONFIG_TEMPLATE).substitute(
            instance_name=f"inboxlink-{root.name}",
            base_dir=self.base_dir,
            state_dir=self.state_dir,
            log_path=self.log_path,
            privileges=privileges,
            cert_path=self.ca_cert_path,
            key_path=root / "key.pem",
            passwd_dir=self.passwd_dir,
            first_valid_uid=min(self.mail_uid, 500) if self.mail_uid else 1,
            separator=self.separator,
            client_limit=client_limit,
            max_connections=self.max_connections,
            idle_notify_interval=self.idle_notify_interval,
            imap_port=imap,
            imaps_port=imaps,
            lmtp_port=lmtp,
            login_processes=max(1, os.cpu_count() or 1),
            login_chroot=chroot,
            anvil_chroot=chroot,
            imap_push=_PUSH_IMAP if self.push_url else "",
            lmtp_push=_PUSH_LMTP if self.push_url else "",
            push_notification=push,
        )
        self.config_path.write_text(config)
        self.config_path.chmod(0o644)

    def _spawn(self, binary: str) -> None:
        def raise_fd_limit() -> None:  # runs in the child, before exec
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft >= _NOFILE:
                return
            try:  # root may raise the hard limit too
                resource.setrlimit(resource.RLIMIT_NOFILE, (_NOFILE, max(_NOFILE, hard)))
            except (ValueError, OSError):
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

        stderr_path = self.dir / "dovecot.stderr"
        with open(stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                [binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                preexec_fn=raise_fd_limit,
                start_new_session=True,
                cwd=self.dir,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = {self.imap_port: b"* OK", self.imaps_port: b"", self.lmtp_port: b"220"}
        while pending:
            if self._process is not None and self._process.poll() is not None:
                raise DovecotError(f"dovecot exited with {self._process.returncode}:\n{self._diagnostics()}")
            if time.monotonic() > deadline:
                raise DovecotError(
                    f"dovecot did not come up in {self.start_timeout}s:\n{self._diagnostics()}"
                )
            for port, greeting in list(pending.items()):
                if _greets(self.host, port, greeting):
                    del pending[port]
            if pending:
                time.sleep(0.01)

    def _diagnostics(self) -> str:
        parts = []
        for path in (self.dir / "dovecot.stderr", self.log_path):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the master by the PID in master.pid and wait until none of its processes is left."""
        process, self._process = self._process, None
        if process is not None:
            pid = self.pid if self._dir is not None else None
            if pid is None or pid != process.pid:
                pid = process.pid  # master.pid not written yet: the master is our own child
            # 1. Mail sessions (imap/lmtp processes run as the mail user) first, while the master
            #    still reaps: on SIGTERM the master leaves processes that serve a client running.
            sessions = [child for child in _children_of(pid) if _uid_of(child[0]) == self.mail_uid]
            _terminate(sessions, grace=2.0)
            # 2. The master stops its other children at once, then sleeps a fixed second before it
            #    exits, and its log process exits after it. Once only the log process is left there
            #    is nothing to wait for: the master is killed and the log process follows.
            seen = set(_children_of(pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while process.poll() is None and time.monotonic() < deadline:
                live = _children_of(pid, zombies=True)  # wait until the master has reaped them
                seen.update(live)
                if all(_process_title(child).endswith("/log") for child, _ in live):
                    break
                time.sleep(0.005)
            _terminate(_children_of(pid), grace=2.0)  # only after a client connected mid-stop
            with contextlib.suppress(ProcessLookupError):
                if process.poll() is None:
                    os.kill(pid, signal.SIGKILL)
            process.wait()
            _terminate(sorted(seen), grace=2.0)
        if self._dir is not None and not self.keep_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._users.clear()
        self._folder_dirs.clear()

    # ------------------------------------------------------------------ users

    def _write_passwd(self, user: MailUser) -> None:
        """Write the user's own passwd-file (one file per user: see `set_password`)."""
        secret = base64.b64encode(user.password.encode()).decode()
        line = f"{user.email}:{{PLAIN.B64}}{secret}:{self.mail_uid}:{self.mail_gid}::{user.home}::\n"
        path = self.passwd_dir / user.email
        tmp = path.with_name(f".{user.email}.tmp")
        tmp.write_text(line)
        tmp.chmod(0o644)
        # Dovecot re-reads a passwd-file when its mtime (in seconds) or size changed.
        stamp = max(int(time.time()), self._passwd_mtime.get(user.email, 0) + 1)
        os.utime(tmp, (stamp, stamp))
        self._passwd_mtime[user.email] = stamp
        tmp.replace(path)

    def add_user(self, email_address: str, password: str) -> MailUser:
        """Create a mail user with an empty Maildir (INBOX); log in with the full address."""
        email_address = email_address.lower()
        if not re.fullmatch(r"[^\s/:@]+@[^\s/:@]+", email_address):
            raise ValueError(f"not a usable address: {email_address!r}")
        if email_address in self._users:
            raise ValueError(f"user exists: {email_address}")
        home = self.homes_dir / email_address
        maildir = home / "Maildir"
        for directory in (home, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
            directory.mkdir()
            directory.chmod(0o700 if directory != home else 0o755)
            os.chown(directory, self.mail_uid, self.mail_gid)
        user = MailUser(email_address, password, self.host, self.imap_port, self.imaps_port, home)
        self._users[email_address] = user
        self._write_passwd(user)
        return user

    def user(self, email_address: str) -> MailUser:
        try:
            return self._users[email_address.lower()]
        except KeyError:
            raise KeyError(f"no such user on this server: {email_address}") from None

    def set_password(self, email_address: str, password: str) -> MailUser:
        """Change a user's password: the old one fails from the next login on.

        Takes up to a second: Dovecot's auth process looks at a passwd-file at most once per second
        (`passwd_file_sync`), so we return only once the next second has begun. (A new user needs
        no wait: each user has a file of its own, and a file never looked at before is read at once.)
        """
        old = self.user(email_address)
        user = MailUser(old.email, password, old.host, old.port, old.imaps_port, old.home)
        self._users[old.email] = user
        self._write_passwd(user)
        now = time.time()
        time.sleep(math.floor(now) + 1.02 - now)
        return user

    # ------------------------------------------------------------------ doveadm

    def doveadm(self, *args: str, check: bool = True, timeout: float = 120.0) -> str:
        """Run `doveadm -c <this config> ARGS...`; return stdout (raise DovecotError on failure)."""
        binary = _find_binary("doveadm")
        if binary is None:
            raise DovecotError("doveadm not installed")
        result = subprocess.run(
            [binary, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout

    def folder_dir(self, email_address: str, folder: str) -> Path:
        """The Maildir directory of `folder` (as Dovecot names it: mUTF-7, maildir++ layout)."""
        user = self.user(email_address)
        key = (user.email, folder)
        path = self._folder_dirs.get(key)
        if path is None:
            if folder.upper() == "INBOX":
                path = user.maildir
            else:
                path = Path(self.doveadm("mailbox", "path", "-u", user.email, folder).strip())
            self._folder_dirs[key] = path
        return path

    def create_folder(self, email_address: str, name: str, *, subscribe: bool = True) -> Path:
        """Create (and subscribe) a folder; `name` uses the server's `separator` for hierarchy."""
        user = self.user(email_address)
        if name.upper() != "INBOX":
            path = self.folder_dir(user.email, name)
            if not path.is_dir():
                self.doveadm("mailbox", "create", *(["-s"] if subscribe else []), "-u", user.email, name)
        return self.folder_dir(user.email, name)

    def mailbox_status(self, email_address: str, folder: str, *fields: str) -> dict[str, str]:
        """`doveadm mailbox status` for one folder: e.g. fields ("messages", "uidvalidity", "uidnext")."""
        wanted = fields or ("messages", "uidvalidity", "uidnext", "highestmodseq")
        out = self.doveadm(
            "-f", "flow", "mailbox", "status", "-u", self.user(email_address).email, " ".join(wanted), folder
        )
        return dict(pair.split("=", 1) for pair in out.split() if "=" in pair)

    def change_uidvalidity(self, email_address: str, folder: str, uidvalidity: int | None = None) -> int:
        """Give `folder` a new UIDVALIDITY (default: current + 1) and return it; clients must resync."""
        user = self.user(email_address)
        self.create_folder(user.email, folder)
        if uidvalidity is None:
            current = int(self.mailbox_status(user.email, folder, "uidvalidity")["uidvalidity"])
            uidvalidity = current + 1
        self.doveadm("mailbox", "update", "-u", user.email, "--uid-validity", str(uidvalidity), folder)
        return uidvalidity

    # ------------------------------------------------------------------ push notifications

    def register_push(self, email_address: str, value: str | None = None) -> None:
        """Have the OX driver notify `push_url` of this user's deliveries.

        The driver stays silent for a user until the server attribute PUSH_REGISTRATION_KEY holds
        tab-separated key=value pairs with a `user` key (a registration without one is skipped
        with an error in the log); what an IMAP client would do with ``SETMETADATA "" (KEY "user=…")``.
        The notification then names the Dovecot user (this address), not the registered value.
        """
        if self.push_url is None:
            raise DovecotError("push notifications are off: start Dovecot with push_url=...")
        user = self.user(email_address)
        registration = value if value is not None else f"user={user.email}"
        self.doveadm(
            "mailbox", "metadata", "set", "-u", user.email, "-s", "", PUSH_REGISTRATION_KEY, registration
        )

    def unregister_push(self, email_address: str) -> None:
        """Stop the notifications of this user's deliveries (removes the registration)."""
        user = self.user(email_address)
        self.doveadm("mailbox", "metadata", "unset", "-u", user.email, "-s", "", PUSH_REGISTRATION_KEY)

    # ------------------------------------------------------------------ mail

    def write_messages(
        self,
        email_address: str,
        folder: str,
        messages: Iterable[bytes | tuple[bytes, str | Sequence[str]]],
        flags: str | Sequence[str] = "",
        *,
        lf_line_endings: bool = True,
    ) -> list[Path]:
        """Write messages straight into `folder`'s Maildir/cur (fast; no IMAP APPEND).

        Each item is raw RFC 5322 bytes (taking `flags`) or (raw, flags); flags are IMAP flags
        ("\\Seen \\Flagged", keywords such as "$Forwarded" too) or maildir letters ("S", "FRS").
        CRLF is stored as LF, as Dovecot's own delivery does, unless `lf_line_endings` is False.
        UIDs follow the order of `messages`; INTERNALDATE is the message's Date header (or now).
        Returns the paths written.
        """
        user = self.user(email_address)
        directory = self.create_folder(user.email, folder)
        keyword_letters = _KeywordFile(directory / "dovecot-keywords")
        default = _maildir_letters(flags)
        written: list[Path] = []
        tmp_dir, cur_dir = directory / "tmp", directory / "cur"
        for item in messages:
            raw, (letters, keywords) = (
                (item, default) if isinstance(item, bytes) else (item[0], _maildir_letters(item[1]))
            )
            if lf_line_endings:
                raw = raw.replace(b"\r\n", b"\n")
            if keywords:
                letters += keyword_letters.letters(keywords)
            size = len(raw)  # S= and W= (size with CRLF) spare Dovecot from reading the file for sizes
            vsize = size + raw.count(b"\n") - (raw.count(b"\r\n") if b"\r" in raw else 0)
            sequence = next(self._queue)
            base = (
                f"{self._name_time + sequence // 1_000_000}.M{sequence % 1_000_000}P{os.getpid()}"
                f"Q{sequence}.{self._hostname},S={size},W={vsize}"
            )
            tmp_path = tmp_dir / base
            final = cur_dir / f"{base}:2,{letters}"
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                if self._as_root:
                    os.fchown(fd, self.mail_uid, self.mail_gid)
                stamp = _internal_date(raw)
                if stamp is not None:
                    os.utime(fd, (stamp, stamp))
            finally:
                os.close(fd)
            os.rename(tmp_path, final)
            written.append(final)
        keyword_letters.save(self.mail_uid, self.mail_gid, chown=self._as_root)
        return written

    def deliver_lmtp(self, email_address: str, raw: bytes, *, sender: str = "sender@example.com") -> None:
        """Deliver one message to the user's INBOX through LMTP, as an MTA would."""
        import smtplib

        recipient = self.user(email_address).email
        try:
            with smtplib.LMTP(self.host, self.lmtp_port, timeout=30) as lmtp:
                refused = lmtp.sendmail(sender, [recipient], raw)
        except smtplib.SMTPException as exc:
            raise DovecotError(f"LMTP delivery to {recipient} failed: {exc}") from exc
        if refused:
            raise DovecotError(f"LMTP refused {recipient}: {refused}")

    def users(self) -> Iterator[MailUser]:
        return iter(list(self._users.values()))


class _KeywordFile:
    """Maildir keyword letters (a..z) <-> names, kept in the folder's dovecot-keywords file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: dict[int, str] = {}
        self.dirty = False
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                index, _, name = line.partition(" ")
                if index.isdigit() and name:
                    self.names[int(index)] = name

    def letters(self, keywords: Iterable[str]) -> str:
        by_name = {name: index for index, name in self.names.items()}
        out = []
        for keyword in keywords:
            index = by_name.get(keyword)
            if index is None:
                free = [i for i in range(26) if i not in self.names]
                if not free:
                    raise ValueError("a Maildir folder holds at most 26 keywords")
                index = free[0]
                self.names[index] = keyword
                by_name[keyword] = index
                self.dirty = True
            out.append(chr(ord("a") + index))
        return "".join(sorted(out))

    def save(self, uid: int, gid: int, *, chown: bool) -> None:
        if not self.dirty:
            return
        self.path.write_text("".join(f"{i} {name}\n" for i, name in sorted(self.names.items())))
        if chown:
            os.chown(self.path, uid, gid)
        self.dirty = False


def _greets(host: str, port: int, greeting: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            if not greeting:
                return True
            sock.settimeout(2.0)
            return sock.recv(64).startswith(greeting)
    except OSError:
        return False


def _children_of(pid: int, *, zombies: bool = False) -> list[tuple[int, str]]:
    """(pid, start time) of the direct children of `pid` (not yet reaped ones too if `zombies`)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid and (zombies or fields[0] != "Z"):
            children.append((int(entry), fields[19]))
    return children


def _still_alive(pid: int, start_time: str) -> bool:
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] == start_time and fields[0] != "Z"


def _process_title(pid: int) -> str:
    try:
        return Path("/proc", str(pid), "cmdline").read_bytes().rstrip(b"\0 ").decode(errors="replace")
    except OSError:
        return ""


def _uid_of(pid: int) -> int | None:
    try:
        return Path("/proc", str(pid)).stat().st_uid
    except OSError:
        return None


def _terminate(processes: Sequence[tuple[int, str]], grace: float) -> None:
    """SIGTERM each (pid, start time) still alive, SIGKILL what is left after `grace` seconds."""

    def alive() -> list[tuple[int, str]]:
        return [p for p in processes if _still_alive(*p)]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        remaining = alive()
        if not remaining:
            return
        for pid, _ in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.005)
