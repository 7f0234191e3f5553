"""One exception tree for inboxlink.

    InboxlinkError                 base of everything we raise on purpose
    ├── ConfigError                the operator must change a setting
    ├── ValidationError            input rejected before any I/O (bad email, bad port ...)
    ├── NotFound                   a row the caller may not see or that does not exist
    ├── Forbidden                  the caller is known but may not do this (operator-only actions)
    ├── Conflict                   a state clash
    │   └── WrongAccount           re-pairing with another mailbox than the account's
    ├── HostRefused                the network guard refused a user-entered host
    ├── OAuthFlowError             an OAuth pairing flow could not finish (auth/oauth.py)
    │   ├── OAuthStateInvalid      the callback's state is forged, expired or already used
    │   └── ConsentDenied          the user declined on the provider's consent page
    └── ProviderError              raised by adapters, translated at the boundary (`raise ... from exc`)
        ├── AuthError              credentials rejected / revoked  -> account goes to auth_error at once
        ├── TransientError         network, timeout, 5xx, 429      -> back off and retry
        │   └── RateLimited        carries `retry_after` seconds when the server said so
        ├── CursorExpired          the server forgot our cursor    -> full resync, no duplicates
        ├── UnsupportedServer      e.g. Exchange older than SE     -> account goes to unsupported
        └── SendRejected           the server refused this message (not the account): the draft stays
            ├── RecipientsRejected every recipient, or some, refused (`fields["rejected"]`)
            └── MessageTooLarge    over the server's size limit (`fields["limit"]` when known)

Every error has a stable `code` (used by the API and the CLI) and a message that is safe to show:
no secret ever goes into an error text.
"""

from __future__ import annotations


class InboxlinkError(Exception):
    code = "error"
    http_status = 500

    def __init__(self, message: str, **fields: object) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class ConfigError(InboxlinkError):
    code = "config_error"
    http_status = 500


class ValidationError(InboxlinkError):
    code = "invalid"
    http_status = 422


class NotFound(InboxlinkError):
    code = "not_found"
    http_status = 404


class Forbidden(InboxlinkError):
    code = "forbidden"
    http_status = 403


class Conflict(InboxlinkError):
    code = "conflict"
    http_status = 409


class WrongAccount(Conflict):
    code = "wrong_account"


class HostRefused(InboxlinkError):
    code = "host_refused"
    http_status = 422


class OAuthFlowError(InboxlinkError):
    code = "oauth_failed"
    http_status = 400


class OAuthStateInvalid(OAuthFlowError):
    code = "oauth_state_invalid"


class ConsentDenied(OAuthFlowError):
    code = "access_denied"
    http_status = 403


class ProviderError(InboxlinkError):
    code = "provider_error"
    http_status = 502


class AuthError(ProviderError):
    code = "auth_error"
    http_status = 401


class TransientError(ProviderError):
    code = "connect_error"
    http_status = 503


class RateLimited(TransientError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: float | None = None, **fields: object) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class CursorExpired(ProviderError):
    code = "cursor_expired"


class UnsupportedServer(ProviderError):
    code = "unsupported"
    http_status = 422


class SendRejected(ProviderError):
    code = "send_rejected"
    http_status = 422


class RecipientsRejected(SendRejected):
    code = "recipients_rejected"


class MessageTooLarge(SendRejected):
    code = "message_too_large"
    http_status = 413
