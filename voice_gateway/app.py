"""The ASGI app factory: the broker API, health checks and (with the voice issue) Twilio."""

from __future__ import annotations

import gc
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from sqlalchemy import text

from crm.api import API_PREFIX, build_router
from crm.db import get_sessionmaker
from crm.errors import install_handlers
from voice_gateway.metrics import router as metrics_router
from voice_gateway.outbound_views import router as outbound_router
from voice_gateway.twilio.amd_webhook import router as amd_router
from voice_gateway.twilio.media import router as media_router
from voice_gateway.twilio.webhooks import router as twilio_router

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"


def create_app() -> FastAPI:
    app = FastAPI(
        title="voiceagent",
        summary="Real-time voice agent and CRM for real-estate brokers",
        version="0.1.0",
    )
    install_handlers(app)

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        rid = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        request.state.request_id = rid
        response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(response: Response) -> dict[str, str]:
        """Readiness: the database answers."""
        try:
            with get_sessionmaker()() as db:
                db.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("readiness check failed: %s", type(exc).__name__)
            response.status_code = 503
            return {"status": "unavailable", "database": "down"}
        return {"status": "ok", "database": "up"}

    app.include_router(build_router())
    app.include_router(outbound_router, prefix=API_PREFIX)
    app.include_router(twilio_router)
    app.include_router(amd_router)
    app.include_router(media_router)
    app.include_router(metrics_router)
    return app


def create_served_app() -> FastAPI:
    """The app as `voiceagent serve` runs it, in each worker process.

    Everything alive once the app is built (modules, routes, schemas, settings) lives as
    long as the process; left in the collector's care, every full collection walks it
    again, and on one core each such walk stalls every live call's event loop by ~90 ms
    at 175 calls (measured: it starved Twilio's playback and broke the latency bound).
    Frozen, a full collection walks only what the calls themselves keep.

    The database work of the calls runs in worker threads; when the event loop lets go
    of the GIL (every poll for I/O) one of them takes it, and the loop waits up to the
    switch interval to get it back before it can hand the next frame on. 1 ms instead of
    5 ms bounds that wait: at 200 calls on one core the agent's 200 ms first-token timer
    fired at p95 219-249 ms with it against 278-311 ms without.
    """
    app = create_app()
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.001)
    return app
