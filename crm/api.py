"""The broker REST API: every domain's router under one prefix.

The app factory (voice_gateway.app) mounts this; a domain adds itself here and nowhere else.
"""

from __future__ import annotations

from fastapi import APIRouter

from crm.audit.views import router as audit_router
from crm.brokers.views import router as broker_router

API_PREFIX = "/api/v1"


def build_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)
    for domain_router in (broker_router, audit_router):
        router.include_router(domain_router)
    return router
