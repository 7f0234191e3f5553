"""Team-wide linking settings, stored in `crm_settings` (one JSON value per key) and the blocklist.

| key              | default        | meaning                                                           |
|------------------|----------------|-------------------------------------------------------------------|
| auto_link        | all three      | record types that mail links to automatically (person/company/deal)|
| exclude_internal | true           | mail whose participants are all the team's own is linked nowhere  |
| auto_create      | "none"         | create people from mail: none / sent / sent_and_received          |

The blocklist (addresses and domains) is a table of its own: adding to it blocks new mail from
linking and purges the links of mail already imported (`crm.linking.purge_blocked`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, delete, select

from inboxlink.errors import ValidationError
from inboxlink.store.schema import blocklist, crm_settings
from inboxlink.sync.state import now

RecordType = Literal["person", "company", "deal"]
RECORD_TYPES: tuple[RecordType, ...] = ("person", "company", "deal")
AutoCreate = Literal["none", "sent", "sent_and_received"]
AUTO_CREATE: tuple[AutoCreate, ...] = ("none", "sent", "sent_and_received")


@dataclass
class LinkSettings:
    auto_link: list[str] = field(default_factory=lambda: list(RECORD_TYPES))
    exclude_internal: bool = True
    auto_create: str = "none"

    def validate(self) -> LinkSettings:
        bad = [t for t in self.auto_link if t not in RECORD_TYPES]
        if bad:
            raise ValidationError(f"auto_link: unknown record types {bad}; known: {list(RECORD_TYPES)}")
        if self.auto_create not in AUTO_CREATE:
            raise ValidationError(f"auto_create must be one of {list(AUTO_CREATE)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load(conn: Connection) -> LinkSettings:
    values = {r.key: r.value for r in conn.execute(select(crm_settings.c.key, crm_settings.c.value))}
    s = LinkSettings()
    if "auto_link" in values:
        s.auto_link = list(values["auto_link"])
    if "exclude_internal" in values:
        s.exclude_internal = bool(values["exclude_internal"])
    if "auto_create" in values:
        s.auto_create = str(values["auto_create"])
    return s


def save(conn: Connection, s: LinkSettings) -> None:
    s.validate()
    at = now()
    for key, value in s.to_dict().items():
        conn.execute(delete(crm_settings).where(crm_settings.c.key == key))
        conn.execute(crm_settings.insert().values(key=key, value=value, updated_at=at))


def blocked_values(conn: Connection) -> frozenset[str]:
    return frozenset(r.value for r in conn.execute(select(blocklist.c.value)))


def normalize_block(value: str) -> str:
    v = value.strip().lower().lstrip("@")
    if not v or " " in v or v.startswith(".") or "." not in v.rsplit("@", 1)[-1]:
        raise ValidationError(f"{value!r} is neither an email address nor a domain")
    return v


@lru_cache(maxsize=4)
def freemail_domains(home: Path | None = None) -> frozenset[str]:
    """The shipped list plus the operator's own additions under $INBOXLINK_HOME, when present."""
    text = resources.files("inboxlink.data").joinpath("freemail_domains.txt").read_text()
    if home is not None and (home / "freemail_domains.txt").is_file():
        text += "\n" + (home / "freemail_domains.txt").read_text()
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
