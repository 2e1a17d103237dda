"""The broker REST API: every domain's router under one prefix.

The app factory (voice_gateway.app) mounts this; a domain adds itself here and nowhere else.
"""

from __future__ import annotations

from fastapi import APIRouter

from crm.audit.views import router as audit_router
from crm.brokers.views import router as broker_router
from crm.calls.views import router as calls_router
from crm.compliance.views import router as compliance_router
from crm.leads.views import router as leads_router
from crm.pipeline.views import router as pipeline_router
from crm.scoring.views import router as scoring_router
from crm.templates.views import router as templates_router
from crm.visits.views import router as visits_router

API_PREFIX = "/api/v1"

DOMAIN_ROUTERS = (
    broker_router,
    leads_router,
    pipeline_router,
    scoring_router,
    visits_router,
    calls_router,
    compliance_router,
    templates_router,
    audit_router,
)


def build_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)
    for domain_router in DOMAIN_ROUTERS:
        router.include_router(domain_router)
    return router
