"""A Google simulator: OAuth 2.0 / OpenID Connect and the Gmail API v1, in memory.

Use :class:`GoogleSim` in tests (uvicorn in a thread, a free port, Python methods to seed and to
inject faults), :func:`create_app` to get the ASGI app, or ``python -m inboxlink_sim google`` to
run it standalone. The official ``google-api-python-client`` works against it when built from
:func:`discovery_for` (``GoogleSim.discovery_document()``), and ``google-auth`` credentials refresh
against its ``/token``.

What is simulated, and how faithfully
-------------------------------------
* **OAuth/OIDC** (:mod:`.oauth`): authorization-code flow with consent page, PKCE, refresh,
  revocation, incremental consent, RS256 ID tokens with a JWKS, userinfo, tokeninfo; Google's error
  codes and wording.
* **Gmail v1** (:mod:`.gmail`): profile, labels (list/get/create/patch/update/delete), messages
  (list/get in minimal/metadata/full/raw, attachments.get, insert, import, send, modify,
  batchModify, trash/untrash, delete, batchDelete), threads (list/get/modify/trash/untrash/delete),
  drafts (create/get/list/update/send/delete), history.list, watch/stop, settings.sendAs.list/get;
  media uploads (simple, multipart, resumable) and the batch endpoint; ``fields`` partial
  responses. Scopes per method are the discovery document's (:mod:`.scopes`); every response the
  test-suite exercises validates against the discovery schemas.
* **Semantics**: Gmail-like ids, threading (References/In-Reply-To + subject; explicit threadId),
  history records per change with a monotonic, irregularly-stepping ``historyId``, a retained
  history window (older ``startHistoryId`` -> 404), spam/trash excluded from lists unless asked,
  ``gmail.metadata`` restrictions, ``Delegation denied`` for other users, sending delivers to
  other simulated users and is recorded in an outbox.
* **Push**: Pub/Sub push messages POSTed to a configured endpoint on each change of a watched
  mailbox (:mod:`.push`).
* **Seeding** (:mod:`.mailgen`, or ``inboxlink.testing.mailgen`` with ``generator="inboxlink"``):
  deterministic realistic mailboxes -- multipart, attachments, inline images, invitations,
  forwards, non-ASCII headers, threads -- labelled like Gmail (INBOX/SENT/categories/UNREAD/...).
* **Faults** (:mod:`.control`): N next calls -> 429 with ``Retry-After`` / 403 rate limits / 5xx,
  optionally per method or user, counted per batch part; next refresh -> ``invalid_grant``;
  history expiry; password change; access-token expiry; a movable clock.

Not simulated (known gaps)
--------------------------
* Quota accounting (units per method), real rate limiting, concurrency limits, latency.
* Search beyond the subset in :mod:`.query` (no ``OR``/parentheses, dates in UTC).
* Spam/category classification, filters, forwarding, vacation, most ``settings.*`` methods,
  S/MIME, client-side encryption, delegates, ``messages.insert`` ``deleted=true`` (Vault-only
  messages), ``neverMarkSpam``/``processForCalendar``.
* Size limits (35 MB messages, 5 MB metadata bodies), label colour palette validation.
* ``message/rfc822`` parts are not expanded in ``payload``; ``metadata`` payloads carry the top
  part only; the exact ``snippet`` algorithm and ``sizeEstimate`` are approximations.
* Gmail's coalescing/1-per-second cap on push notifications, Pub/Sub authentication.
* Whether ``drafts.send`` keeps the draft's message id (here the sent message gets a new id).
* Service accounts / domain-wide delegation, sign-in and sessions, the unverified-app screen.
"""

from .app import create_app
from .discovery import discovery_for, load_gmail_discovery, validate, validate_method_response
from .server import GoogleSim
from .state import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimState

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "GoogleSim",
    "SimState",
    "create_app",
    "discovery_for",
    "load_gmail_discovery",
    "validate",
    "validate_method_response",
]
