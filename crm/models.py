"""Every table, imported once so metadata (Alembic, create_all) sees them all."""

from crm.audit.models import AuditLog
from crm.brokers.models import ApiKey, Broker, BrokerPhoneNumber
from crm.calls.models import Call, CallTurn
from crm.db import Base
from crm.leads.models import Lead, LeadActivity, LeadConsent
from crm.pipeline.models import LeadStageHistory
from crm.scoring.models import ScoreSnapshot
from crm.templates.models import MessageTemplate
from crm.visits.models import Visit

__all__ = [
    "ApiKey",
    "AuditLog",
    "Base",
    "Broker",
    "BrokerPhoneNumber",
    "Call",
    "CallTurn",
    "Lead",
    "LeadActivity",
    "LeadConsent",
    "LeadStageHistory",
    "MessageTemplate",
    "ScoreSnapshot",
    "Visit",
]
