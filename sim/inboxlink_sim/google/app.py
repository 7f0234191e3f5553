"""The ASGI application: :func:`create_app` wires OAuth, Gmail, uploads, batch and the admin API.

HTTP surface:

* OAuth/OIDC -- see :mod:`.oauth`.
* ``/gmail/v1/...`` -- see :mod:`.gmail`.
* ``/upload/gmail/v1/...`` and ``/resumable/upload/gmail/v1/...`` -- media uploads for send, insert,
  import and drafts: ``uploadType=media`` (the body is the ``message/rfc822``), ``multipart``
  (``multipart/related``: JSON metadata then the message) and ``resumable`` (a POST with the
  metadata answered with a ``Location`` session URL, then PUTs with ``Content-Range``, answered 308
  ``Range: bytes=0-N`` until complete). Media types other than ``message/*`` are refused.
* ``/batch/gmail/v1`` (and ``/batch``) -- Google's batch protocol: a ``multipart/mixed`` body of
  ``application/http`` parts, each a whole HTTP request with an optional ``Content-ID``; every part
  runs through the same dispatcher (auth, scopes, faults count per part) and the reply is a
  ``multipart/mixed`` of ``application/http`` responses with ``Content-ID: <response-ID>``. At most
  100 parts (400 otherwise); parts may omit ``Authorization`` to inherit the outer request's.
* ``/discovery/v1/apis/gmail/v1/rest`` and ``/$discovery/rest?version=v1`` -- the Gmail discovery
  document from google-api-python-client, re-rooted at the simulator (404 if not installed).
* ``/_sim/...`` -- the JSON admin API, see :mod:`.admin`.
"""

from __future__ import annotations

import contextlib
import http
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import admin, discovery, oauth
from .errors import ApiError, bad_request
from .gmail import ApiRequest, ApiResponse, dispatch, error_response
from .state import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimState

MAX_BATCH = 100


def _base(state: SimState, request: Request) -> str:
    return oauth.issuer(state, request)


def _to_response(resp: ApiResponse) -> Response:
    return Response(resp.body, status_code=resp.status, headers=resp.headers)


def _query(request: Request, drop: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k not in drop]


async def gmail_endpoint(request: Request) -> Response:
    state: SimState = request.app.state.sim
    req = ApiRequest(
        method=request.method,
        path=request.path_params["path"],
        query=_query(request),
        headers=dict(request.headers),
        body=await request.body(),
        base_url=_base(state, request),
    )
    return _to_response(dispatch(state, req))


# --- multipart helpers ---------------------------------------------------------------------


def _boundary(content_type: str) -> str | None:
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    return m.group(1) if m else None


def _split_head(data: bytes) -> tuple[dict[str, str], bytes]:
    """Headers (lower-case names, folding undone) and the rest of an HTTP/MIME entity."""
    if data.startswith(b"\r\n"):
        return {}, data[2:]
    if data.startswith(b"\n"):
        return {}, data[1:]
    m = re.search(rb"\r?\n\r?\n", data)
    head, rest = (data[: m.start()], data[m.end() :]) if m else (data, b"")
    headers: dict[str, str] = {}
    last = None
    for line in re.split(rb"\r?\n", head):
        text = line.decode("latin-1")
        if text[:1] in (" ", "\t") and last:
            headers[last] += " " + text.strip()
            continue
        name, sep, value = text.partition(":")
        if sep:
            last = name.strip().lower()
            headers[last] = value.strip()
    return headers, rest


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    segments = re.split(rb"\r?\n--" + re.escape(boundary.encode()), b"\r\n" + body)
    parts = []
    for seg in segments[1:]:
        if seg.startswith(b"--"):
            break
        newline = seg.find(b"\n")
        seg = seg[newline + 1 :] if newline >= 0 else b""
        parts.append(_split_head(seg))
    return parts


# --- uploads -------------------------------------------------------------------------------


def _check_media_type(media_type: str) -> None:
    if not media_type.lower().split(";")[0].strip().startswith("message/"):
        raise bad_request(f"Media type '{media_type}' is not supported. Valid media types: [message/*]")


async def upload_endpoint(request: Request) -> Response:
    state: SimState = request.app.state.sim
    path = request.path_params["path"]
    upload_type = request.query_params.get("uploadType", "")
    body = await request.body()
    base = _base(state, request)
    query = _query(request, ("uploadType", "upload_id"))
    try:
        upload_id = request.query_params.get("upload_id")
        if upload_id:
            return _resume_upload(state, request, upload_id, body)
        meta, media = b"", body
        if upload_type == "media":
            _check_media_type(request.headers.get("content-type", ""))
        elif upload_type == "multipart":
            boundary = _boundary(request.headers.get("content-type", ""))
            parts = split_multipart(body, boundary) if boundary else []
            if len(parts) != 2:
                raise bad_request("Multipart upload needs exactly two parts: metadata and media")
            (_, meta), (media_headers, media) = parts
            _check_media_type(media_headers.get("content-type", ""))
        elif upload_type == "resumable":
            media_type = request.headers.get("x-upload-content-type", "message/rfc822")
            _check_media_type(media_type)
            session = secrets.token_urlsafe(24)
            total = request.headers.get("x-upload-content-length")
            with state.lock:
                state.uploads[session] = {
                    "method": request.method,
                    "path": path,
                    "query": query,
                    "headers": dict(request.headers),
                    "meta": body,
                    "total": int(total) if total and total.isdigit() else None,
                    "data": bytearray(),
                }
            location = f"{base}/upload/gmail/v1/{path}?" + urllib.parse.urlencode(
                [*query, ("uploadType", "resumable"), ("upload_id", session)]
            )
            return Response(
                b"", status_code=200, headers={"Location": location, "X-GUploader-UploadID": session}
            )
        else:
            raise bad_request(
                "Upload requests must include an uploadType URL parameter and a URL path "
                "beginning with /upload/"
            )
    except ApiError as err:
        return _to_response(error_response(err))
    req = ApiRequest(request.method, path, query, dict(request.headers), meta, base, media=media)
    return _to_response(dispatch(state, req))


def _resume_upload(state: SimState, request: Request, upload_id: str, chunk: bytes) -> Response:
    with state.lock:
        session = state.uploads.get(upload_id)
        if session is None:
            return _to_response(error_response(ApiError(404, "Upload session not found.", reason="notFound")))
        data: bytearray = session["data"]
        content_range = request.headers.get("content-range", "")
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
        status_only = re.fullmatch(r"bytes \*/(\d+|\*)", content_range.strip())
        if m:
            if int(m.group(1)) != len(data):
                return _to_response(error_response(bad_request("Content-Range does not continue the upload")))
            data.extend(chunk)
            if m.group(3) != "*":
                session["total"] = int(m.group(3))
        elif status_only:
            if status_only.group(1) != "*":
                session["total"] = int(status_only.group(1))
        else:
            data.extend(chunk)
            session["total"] = len(data)
        total = session["total"]
        if total is None or len(data) < total:
            headers = {"Range": f"bytes=0-{len(data) - 1}"} if data else {}
            return Response(b"", status_code=308, headers=headers)
        del state.uploads[upload_id]
    req = ApiRequest(
        session["method"],
        session["path"],
        session["query"],
        session["headers"],
        session["meta"],
        _base(state, request),
        media=bytes(data),
    )
    return _to_response(dispatch(state, req))


# --- batch ---------------------------------------------------------------------------------


def _parse_inner(data: bytes) -> tuple[str, str, dict[str, str], bytes]:
    line_end = data.find(b"\n")
    request_line = data[: line_end if line_end >= 0 else len(data)].decode("latin-1").strip()
    rest = data[line_end + 1 :] if line_end >= 0 else b""
    pieces = request_line.split()
    if len(pieces) < 2:
        raise bad_request("Malformed batch part: no request line")
    headers, body = _split_head(rest)
    length = headers.get("content-length")
    if length and length.isdigit():
        body = body[: int(length)]
    elif not body.strip():
        body = b""
    return pieces[0].upper(), pieces[1], headers, body


def _http_part(content_id: str | None, resp: ApiResponse) -> bytes:
    lines = ["Content-Type: application/http"]
    if content_id:
        lines.append(f"Content-ID: <response-{content_id.strip().strip('<>')}>")
    phrase = http.HTTPStatus(resp.status).phrase if resp.status in http.HTTPStatus._value2member_map_ else ""
    inner = [f"HTTP/1.1 {resp.status} {phrase}"]
    inner += [f"{k}: {v}" for k, v in resp.headers.items()]
    inner.append(f"Content-Length: {len(resp.body)}")
    head = "\r\n".join(lines) + "\r\n\r\n" + "\r\n".join(inner) + "\r\n\r\n"
    return head.encode() + resp.body


async def batch_endpoint(request: Request) -> Response:
    state: SimState = request.app.state.sim
    base = _base(state, request)
    content_type = request.headers.get("content-type", "")
    boundary = _boundary(content_type)
    if not content_type.lower().startswith("multipart/mixed") or not boundary:
        return _to_response(error_response(bad_request("Batch requests must be multipart/mixed")))
    parts = split_multipart(await request.body(), boundary)
    if len(parts) > MAX_BATCH:
        return _to_response(
            error_response(bad_request(f"Too many requests in batch: {len(parts)} (max {MAX_BATCH})"))
        )
    outer_auth = request.headers.get("authorization")
    envelope = dispatch_envelope_fault(state)
    if envelope is not None:
        return _to_response(envelope)
    out_boundary = "batch_" + secrets.token_urlsafe(18).replace("-", "A").replace("_", "B")
    chunks: list[bytes] = []
    for part_headers, payload in parts:
        content_id = part_headers.get("content-id")
        try:
            method, target, headers, body = _parse_inner(payload)
            url = urllib.parse.urlsplit(target)
            if not url.path.startswith("/gmail/v1/"):
                raise ApiError(404, f"Not found: {url.path}", reason="notFound")
            if "authorization" not in headers and outer_auth:
                headers["authorization"] = outer_auth
            req = ApiRequest(
                method,
                url.path[len("/gmail/v1/") :],
                urllib.parse.parse_qsl(url.query, keep_blank_values=True),
                headers,
                body,
                base,
                batch=True,
            )
            resp = dispatch(state, req)
        except ApiError as err:
            resp = error_response(err)
        chunks.append(b"--" + out_boundary.encode() + b"\r\n" + _http_part(content_id, resp) + b"\r\n")
    chunks.append(b"--" + out_boundary.encode() + b"--\r\n")
    return Response(
        b"".join(chunks),
        status_code=200,
        headers={
            "Content-Type": f"multipart/mixed; boundary={out_boundary}",
            "Vary": "Origin, X-Origin, Referer",
        },
    )


def dispatch_envelope_fault(state: SimState) -> ApiResponse | None:
    """A fault aimed at ``"batch"`` fails the whole batch request."""
    from .gmail import fault_error, take_fault

    with state.lock:
        fault = take_fault(state, "batch", None)
        return error_response(fault_error(state, fault)) if fault else None


# --- discovery -----------------------------------------------------------------------------


async def discovery_endpoint(request: Request) -> Response:
    state: SimState = request.app.state.sim
    try:
        doc = discovery.discovery_for(_base(state, request))
    except FileNotFoundError as exc:
        return _to_response(error_response(ApiError(404, str(exc), reason="notFound")))
    return JSONResponse(doc)


# --- app -----------------------------------------------------------------------------------


def create_app(state: SimState | None = None) -> Starlette:
    """The simulator as an ASGI app. A new state gets the default OAuth client registered."""
    if state is None:
        state = SimState()
    if not state.clients:
        state.add_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        state.close()

    gmail_methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes = [
        Route("/.well-known/openid-configuration", oauth.openid_configuration, methods=["GET"]),
        Route("/o/oauth2/v2/auth", oauth.authorize, methods=["GET", "POST"]),
        Route("/o/oauth2/auth", oauth.authorize, methods=["GET", "POST"]),
        Route("/o/oauth2/v2/consent", oauth.consent, methods=["POST"]),
        Route("/token", oauth.token, methods=["POST"]),
        Route("/oauth2/v4/token", oauth.token, methods=["POST"]),
        Route("/revoke", oauth.revoke, methods=["POST", "GET"]),
        Route("/o/oauth2/revoke", oauth.revoke, methods=["POST", "GET"]),
        Route("/v1/userinfo", oauth.userinfo, methods=["GET", "POST"]),
        Route("/oauth2/v3/userinfo", oauth.userinfo, methods=["GET", "POST"]),
        Route("/tokeninfo", oauth.tokeninfo, methods=["GET", "POST"]),
        Route("/oauth2/v3/tokeninfo", oauth.tokeninfo, methods=["GET", "POST"]),
        Route("/oauth2/v3/certs", oauth.certs_v3, methods=["GET"]),
        Route("/oauth2/v1/certs", oauth.certs_v1, methods=["GET"]),
        Route("/gmail/v1/{path:path}", gmail_endpoint, methods=gmail_methods),
        Route("/upload/gmail/v1/{path:path}", upload_endpoint, methods=["POST", "PUT"]),
        Route("/resumable/upload/gmail/v1/{path:path}", upload_endpoint, methods=["POST", "PUT"]),
        Route("/batch/gmail/v1", batch_endpoint, methods=["POST"]),
        Route("/batch", batch_endpoint, methods=["POST"]),
        Route("/discovery/v1/apis/gmail/v1/rest", discovery_endpoint, methods=["GET"]),
        Route("/$discovery/rest", discovery_endpoint, methods=["GET"]),
        *admin.routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sim = state
    return app
