"""Google's two error shapes.

* Google APIs (Gmail): ``{"error": {"code", "message", "errors": [{"message", "domain", "reason", ...}],
  "status"}}`` -- :class:`ApiError`.
* OAuth 2.0 endpoints (token, revoke, tokeninfo): ``{"error": "invalid_grant", "error_description": "..."}``
  -- :class:`OAuthError`.
"""

from __future__ import annotations

import json
from typing import Any

#: canonical google.rpc status per HTTP status, as Google's JSON errors carry it.
RPC_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    413: "OUT_OF_RANGE",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}

_DEFAULT_REASON: dict[int, str] = {
    400: "invalidArgument",
    401: "authError",
    403: "forbidden",
    404: "notFound",
    409: "duplicate",
    412: "failedPrecondition",
    429: "rateLimitExceeded",
    500: "backendError",
    503: "backendError",
}


class ApiError(Exception):
    """An error of a Google API call, rendered in Google's JSON error shape."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        domain: str = "global",
        status: str | None = None,
        headers: dict[str, str] | None = None,
        location: str | None = None,
        location_type: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _DEFAULT_REASON.get(code, "backendError")
        self.domain = domain
        self.status = status or RPC_STATUS.get(code, "UNKNOWN")
        self.headers = dict(headers or {})
        self.location = location
        self.location_type = location_type
        self.details = details

    def body(self) -> dict[str, Any]:
        item: dict[str, Any] = {"message": self.message, "domain": self.domain, "reason": self.reason}
        if self.location:
            item["location"] = self.location
            item["locationType"] = self.location_type or "parameter"
        err: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "errors": [item],
            "status": self.status,
        }
        if self.details:
            err["details"] = self.details
        return {"error": err}

    def to_bytes(self) -> bytes:
        return json.dumps(self.body(), indent=2).encode()


def not_found(message: str = "Requested entity was not found.") -> ApiError:
    return ApiError(404, message, reason="notFound")


def bad_request(message: str, *, reason: str = "invalidArgument", status: str | None = None) -> ApiError:
    return ApiError(400, message, reason=reason, status=status)


def unauthenticated(missing: bool = False) -> ApiError:
    """401 exactly as Google answers a missing or an invalid/expired/revoked access token."""
    if missing:
        return ApiError(
            401,
            "Request is missing required authentication credential. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential. "
            "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            reason="required",
            location="Authorization",
            location_type="header",
            headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
        )
    return ApiError(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
        "or other valid authentication credential. "
        "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        reason="authError",
        location="Authorization",
        location_type="header",
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
    )


def insufficient_scopes(method_id: str, accepted: frozenset[str]) -> ApiError:
    return ApiError(
        403,
        "Request had insufficient authentication scopes.",
        reason="insufficientPermissions",
        headers={
            "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="insufficient_scope", '
            f'scope="{" ".join(sorted(accepted))}"'
        },
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                "domain": "googleapis.com",
                "metadata": {"service": "gmail.googleapis.com", "method": method_id},
            }
        ],
    )


class OAuthError(Exception):
    """An OAuth 2.0 endpoint error: ``{"error": ..., "error_description": ...}``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}
