"""Leads: the broker-scoped CRUD, filters and the rules that keep a lead consistent."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.errors import NotFound
from crm.leads.models import Lead


def get(db: Session, *, broker_id: int, lead_id: int) -> Lead | None:
    """The broker's live lead, or None (another broker's or a deleted lead is None too)."""
    return db.scalars(
        select(Lead).where(
            Lead.id == lead_id, Lead.broker_id == broker_id, Lead.deleted_at.is_(None)
        )
    ).first()


def get_or_raise(db: Session, *, broker_id: int, lead_id: int) -> Lead:
    lead = get(db, broker_id=broker_id, lead_id=lead_id)
    if lead is None:
        raise NotFound(f"lead {lead_id} not found")
    return lead
