"""Every error answer of the API has one shape, the one the README documents:

    {"error": {"code": "not_found", "message": "no account acc_1"}}
    {"error": {"code": "invalid", "message": "imap_port: Input should be ...", "fields": [...]}}

Three sources produce errors, and each is mapped here:

    InboxlinkError (errors.py)        its `code` and `http_status`
    request validation (pydantic)     422 "invalid"; `fields` lists each problem as {"loc", "msg",
                                      "type"}, never the input: FastAPI's own answer echoes the whole
                                      request body, a pairing password included
    HTTPException (the token check)   its status, a code named after it ("unauthorized", ...), its
                                      detail as the message and its headers (WWW-Authenticate)

`RESPONSES` declares the shape in the OpenAPI document for the statuses every authenticated route
can answer with (and replaces FastAPI's default 422 schema, which is not what we send).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from inboxlink.errors import InboxlinkError

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: list[FieldProblem] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong API token"},
    422: {"model": ErrorBody, "description": "the request is invalid (`fields` says where)"},
    "default": {"model": ErrorBody, "description": "any other error, in the same shape"},
}


def _body(code: str, message: str, fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        detail["fields"] = fields
    return {"error": detail}


def _where(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(parts) or "request"


def install(app: FastAPI) -> None:
    @app.exception_handler(InboxlinkError)
    async def _inboxlink(_request: Request, exc: InboxlinkError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content=_body(exc.code, exc.message))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # loc, msg and type only: pydantic's "input" and "ctx" may carry what the client sent
        fields = [
            {
                "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        message = "; ".join(f"{_where(f['loc'])}: {f['msg']}" for f in fields) or "invalid request"
        return JSONResponse(status_code=422, content=_body("invalid", message, fields))

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(status_code=exc.status_code, content=_body(code, message), headers=exc.headers)
