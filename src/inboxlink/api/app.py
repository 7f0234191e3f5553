"""The REST API (FastAPI; OpenAPI at /docs). Routes decode, authorize, delegate: no logic here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from inboxlink.api import (
    errors,
    routes_accounts,
    routes_crm,
    routes_oauth,
    routes_outbox,
    routes_push,
    routes_push_dovecot,
    routes_webhooks,
)
from inboxlink.api.errors import RESPONSES
from inboxlink.config import Settings
from inboxlink.crm.access import SYSTEM, Viewer, access_user, viewer_for_token
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
            scheduler.pushed = rt.gmail_pushes.live  # serve adds its IMAP watchers' (cli._with_push)
            scheduler.start()
            rt.queue.start_consumer()  # the outbox's send-later and the minute sweep (tasks.py)
        try:
            yield
        finally:
            if scheduler:
                rt.queue.stop_consumer()
                scheduler.stop()
            if runtime is None:
                rt.close()

    def check_token(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        x_inboxlink_user: Annotated[
            str | None, Header(description="act as this user (operator token)")
        ] = None,
    ) -> Viewer:
        """Who is calling (`crm.access.Viewer`): the operator's token (or no token, when none is
        configured) is the system, which may act as a user with `X-Inboxlink-User`; a user's own
        token is that user."""
        import hmac

        operator = settings.api_token.get_secret_value() if settings.api_token else None
        given = creds.credentials if creds else None
        rt: Runtime = request.app.state.runtime
        viewer: Viewer | None = None
        if (
            given is not None
            and operator is not None
            and hmac.compare_digest(given.encode(), operator.encode())
        ):
            viewer = SYSTEM
        elif given is not None:
            with rt.db.engine.connect() as conn:
                viewer = viewer_for_token(conn, given)
        elif operator is None:
            viewer = SYSTEM
        if viewer is None:
            raise HTTPException(
                status_code=401, detail="missing or wrong API token", headers={"WWW-Authenticate": "Bearer"}
            )
        if viewer.is_system and x_inboxlink_user:
            with rt.db.engine.connect() as conn:
                viewer = access_user(conn, x_inboxlink_user)
        request.state.viewer = viewer
        return viewer

    app = FastAPI(
        title="inboxlink",
        version="0.1.0",
        lifespan=lifespan,
        description="Mail, calendars and contacts of your team, in your CRM.",
    )

    errors.install(app)  # one error shape for ours, validation's and the token check's

    @app.get("/api/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    guarded = [Depends(check_token)]
    app.include_router(routes_accounts.router, prefix="/api/v1", dependencies=guarded, responses=RESPONSES)
    app.include_router(routes_oauth.router)  # start checks the API token itself; the state guards callback
    app.include_router(routes_webhooks.router, prefix="/api/v1", dependencies=guarded, responses=RESPONSES)
    app.include_router(routes_crm.router, prefix="/api/v1", dependencies=guarded, responses=RESPONSES)
    app.include_router(routes_outbox.router, prefix="/api/v1", dependencies=guarded, responses=RESPONSES)
    app.include_router(routes_push.router)  # Pub/Sub cannot send our token: a secret in the URL instead
    app.include_router(routes_push_dovecot.router)  # nor can Dovecot's OX driver: the same
    return app
