"""The one way to add an entry to a lead's timeline (and keep `last_activity_at` true).

Kept apart from `crm.leads.service` so pipeline, calls, visits and messages can write
timeline entries without importing the lead CRUD (and without import cycles).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.enums import Channel
from crm.leads.models import ActivityKind, Direction, Lead, LeadActivity
from crm.timeutil import utcnow

#: Kinds that are an exchange with the lead, so they count as contact for recency.
CONTACT_KINDS = frozenset({ActivityKind.message, ActivityKind.call})


def add_activity(
    db: Session,
    *,
    lead: Lead,
    kind: ActivityKind,
    actor: Actor,
    body: str | None = None,
    channel: Channel | None = None,
    direction: Direction | None = None,
    data: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> LeadActivity:
    when = occurred_at or utcnow()
    activity = LeadActivity(
        broker_id=lead.broker_id,
        lead_id=lead.id,
        kind=kind,
        channel=channel,
        direction=direction,
        body=body,
        data=data,
        occurred_at=when,
        actor_type=actor.type,
        actor_id=actor.id,
    )
    db.add(activity)
    if when > lead.last_activity_at:
        lead.last_activity_at = when
    if kind in CONTACT_KINDS and (lead.last_contacted_at is None or when > lead.last_contacted_at):
        lead.last_contacted_at = when
    return activity
