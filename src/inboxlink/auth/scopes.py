"""Permissions as data: which OAuth scopes each feature needs, per provider (Google, Graph).

The table is `inboxlink/data/scopes.json`, which says when it was last checked against the
providers' documentation; an operator may update it without touching code. This module only reads it
and answers four questions:

- *what to ask for when pairing* (`scopes_for`): the scopes of the enabled features, reduced to a
  least set: a scope implied by another one in the request is dropped. (Beyond least privilege this
  matters for Gmail: a token carrying `gmail.metadata` is refused `q` searches even when it also
  carries `gmail.readonly`.) The identity scopes (`identity_scopes`) come on top.
- *what is missing when a feature is enabled later* (`missing`): only the scopes the granted ones do
  not cover; the OAuth flow asks for those alone (incremental consent).
- *does a feature work* (`covers`): each of its scopes is granted, or implied by a granted one
  (`gmail.modify` covers `gmail.readonly`; the implications are checked against the scopes each
  method accepts in Google's discovery documents, see tests/test_oauth.py).
- *what does a granted scope power* (`permissions`): plain words, and the features it serves.

Scope names: Google scopes in the file may be short (`gmail.readonly`); they are expanded with the
file's `google_prefix`. `email`/`profile` are kept bare when asking (Google's convention) and
compared through their aliases (`.../userinfo.email`), which is how Google's token responses name
them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from inboxlink.errors import ValidationError

Provider = Literal["google", "graph"]
PROVIDERS: tuple[Provider, ...] = ("google", "graph")
_BARE = frozenset({"openid", "email", "profile", "offline_access"})


@dataclass(frozen=True)
class Feature:
    id: str
    title: str
    description: str
    scopes: Mapping[str, tuple[str, ...] | None]  # provider -> full scope names; None: not offered

    def available(self, provider: Provider) -> bool:
        return self.scopes.get(provider) is not None


@dataclass(frozen=True)
class GrantedScope:
    scope: str
    description: str
    powers: list[str]  # feature ids this scope serves (alone or with others)


@dataclass(frozen=True)
class FeatureStatus:
    id: str
    title: str
    description: str
    enabled: bool
    works: bool
    missing_scopes: list[str]


@dataclass(frozen=True)
class Permissions:
    provider: str
    checked: str
    scopes: list[GrantedScope] = field(default_factory=list)
    features: list[FeatureStatus] = field(default_factory=list)


class ScopeCatalog:
    """The parsed `scopes.json`. Build with `catalog()` (cached) or from a dict in tests."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.checked = str(data.get("checked", "unknown"))
        self._prefix = str(data["google_prefix"])
        self._aliases: dict[str, dict[str, str]] = {
            p: {str(k): str(v) for k, v in (data.get("aliases", {}).get(p) or {}).items()} for p in PROVIDERS
        }
        self._identity = {p: [str(s) for s in data["identity"][p]] for p in PROVIDERS}
        self.features: dict[str, Feature] = {}
        for fid, spec in data["features"].items():
            self.features[fid] = Feature(
                id=fid,
                title=str(spec["title"]),
                description=str(spec["description"]),
                scopes={
                    p: None if spec.get(p) is None else tuple(self._full(p, s) for s in spec[p])
                    for p in PROVIDERS
                },
            )
        self.default_features = tuple(str(f) for f in data["default_features"])
        unknown = [f for f in self.default_features if f not in self.features]
        if unknown:
            raise ValueError(f"scopes.json: default_features names unknown features {unknown}")
        self._implied_by: dict[str, dict[str, frozenset[str]]] = {
            p: {
                self.canonical(p, self._full(p, k)): frozenset(self.canonical(p, self._full(p, b)) for b in v)
                for k, v in (data.get("implied_by", {}).get(p) or {}).items()
            }
            for p in PROVIDERS
        }
        self._descriptions: dict[str, dict[str, str]] = {
            p: {
                self.canonical(p, self._full(p, k)): str(v)
                for k, v in (data.get("scopes", {}).get(p) or {}).items()
            }
            for p in PROVIDERS
        }

    # -- names ---------------------------------------------------------------------------------
    def _full(self, provider: str, scope: str) -> str:
        if provider == "google" and scope not in _BARE and ":" not in scope and "/" not in scope:
            return self._prefix + scope
        return scope

    def canonical(self, provider: Provider | str, scope: str) -> str:
        """The name a token response uses for `scope` (`email` -> `.../userinfo.email`)."""
        return self._aliases.get(provider, {}).get(scope, scope)

    def normalize(self, provider: Provider, scopes: Iterable[str]) -> frozenset[str]:
        return frozenset(self.canonical(provider, s) for s in scopes if s)

    # -- features ------------------------------------------------------------------------------
    def parse_features(self, provider: Provider, text: str | Sequence[str] | None) -> list[str]:
        """Feature ids from "a,b" (or a list); unknown or unavailable ones are a `ValidationError`.
        Nothing given: the default features."""
        if text is None:
            return list(self.default_features)
        items = text.split(",") if isinstance(text, str) else list(text)
        wanted = list(dict.fromkeys(i.strip() for i in items if i.strip()))
        if not wanted:
            return list(self.default_features)
        unknown = [f for f in wanted if f not in self.features]
        if unknown:
            raise ValidationError(
                f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(self.features)}",
                unknown=unknown,
            )
        unavailable = [f for f in wanted if not self.features[f].available(provider)]
        if unavailable:
            raise ValidationError(
                f"feature(s) {', '.join(unavailable)} are not available with {provider}",
                unavailable=unavailable,
            )
        return wanted

    def identity_scopes(self, provider: Provider) -> list[str]:
        return list(self._identity[provider])

    def covers(self, provider: Provider, granted: Iterable[str], scope: str) -> bool:
        """Whether `granted` includes `scope` or a scope that implies it."""
        have = self.normalize(provider, granted)
        wanted = self.canonical(provider, scope)
        return wanted in have or bool(self._implied_by[provider].get(wanted, frozenset()) & have)

    def _needed(self, provider: Provider, features: Iterable[str]) -> list[str]:
        out: list[str] = []
        for fid in features:
            scopes = self.features[fid].scopes.get(provider)
            if scopes is None:
                raise ValidationError(f"feature {fid} is not available with {provider}")
            out.extend(s for s in scopes if s not in out)
        return out

    def _least(self, provider: Provider, scopes: Sequence[str]) -> list[str]:
        """`scopes` without those another one of them implies (order kept)."""
        return [s for s in scopes if not any(o != s and self.covers(provider, [o], s) for o in scopes)]

    def scopes_for(self, provider: Provider, features: Iterable[str]) -> list[str]:
        """The least set of scopes the features need (identity scopes not included)."""
        return self._least(provider, self._needed(provider, features))

    def missing(self, provider: Provider, features: Iterable[str], granted: Iterable[str]) -> list[str]:
        """What to ask for so that `features` work, given what is already `granted`."""
        have = list(granted)
        needed = self._needed(provider, features)
        return self._least(provider, [s for s in needed if not self.covers(provider, have, s)])

    def works(self, provider: Provider, feature: str, granted: Iterable[str]) -> bool:
        return not self.missing(provider, [feature], granted)

    # -- explaining ----------------------------------------------------------------------------
    def describe(self, provider: Provider, scope: str) -> str:
        return self._descriptions[provider].get(self.canonical(provider, scope), "not used by inboxlink")

    def permissions(self, provider: Provider, enabled: Iterable[str], granted: Iterable[str]) -> Permissions:
        """Each granted scope with what it powers, and each feature: enabled, works, missing scopes."""
        granted_list = sorted(self.normalize(provider, granted))
        enabled_set = set(enabled)
        identity = self.normalize(provider, self._identity[provider])
        scopes = []
        for scope in granted_list:
            powers = [
                f.id
                for f in self.features.values()
                if f.available(provider)
                and any(self.covers(provider, [scope], s) for s in f.scopes[provider] or ())
            ]
            if scope in identity:
                powers.insert(0, "sign_in")
            scopes.append(GrantedScope(scope, self.describe(provider, scope), powers))
        features = []
        for f in self.features.values():
            if not f.available(provider):
                continue
            missing = self.missing(provider, [f.id], granted_list)
            features.append(
                FeatureStatus(f.id, f.title, f.description, f.id in enabled_set, not missing, missing)
            )
        return Permissions(provider, self.checked, scopes, features)


@lru_cache(maxsize=1)
def catalog() -> ScopeCatalog:
    """The catalog shipped in `inboxlink/data/scopes.json`."""
    text = resources.files("inboxlink").joinpath("data/scopes.json").read_text(encoding="utf-8")
    return ScopeCatalog(json.loads(text))
