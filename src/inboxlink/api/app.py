"""The REST API (FastAPI; OpenAPI at /docs). Routes decode, authorize, delegate: no logic here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from inboxlink.api import routes_accounts, routes_oauth, routes_webhooks
from inboxlink.config import Settings
from inboxlink.errors import InboxlinkError
from inboxlink.outbound.webhooks import WebhookLoop
from inboxlink.runtime import Runtime
from inboxlink.sync.scheduler import Scheduler

_bearer = HTTPBearer(auto_error=False)


def create_app(
    settings: Settings, *, background_sync: bool = False, runtime: Runtime | None = None
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or Runtime.open(settings)
        app.state.runtime = rt
        scheduler = (
            Scheduler(
                rt.engine,
                interval=settings.sync_interval_seconds,
                also=[WebhookLoop(rt.db, rt.box, settings)],
            )
            if background_sync
            else None
        )
        app.state.scheduler = scheduler
        if scheduler:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler:
                scheduler.stop()
            if runtime is None:
                rt.close()

    async def check_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        if token is None:
            return
        import hmac

        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(
                status_code=401, detail="missing or wrong API token", headers={"WWW-Authenticate": "Bearer"}
            )

    app = FastAPI(
        title="inboxlink",
        version="0.1.0",
        lifespan=lifespan,
        description="Mail, calendars and contacts of your team, in your CRM.",
    )

    @app.exception_handler(InboxlinkError)
    async def _error(_request: Request, exc: InboxlinkError) -> JSONResponse:
        body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
        return JSONResponse(status_code=exc.http_status, content=body)

    @app.get("/api/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(routes_accounts.router, prefix="/api/v1", dependencies=[Depends(check_token)])
    app.include_router(routes_oauth.router)  # start checks the API token itself; the state guards callback
    app.include_router(routes_webhooks.router, prefix="/api/v1", dependencies=[Depends(check_token)])
    return app
