"""Every stage change goes through `transition` (or `enter_initial` at creation).

It checks the move against the transition table, closes the open history row, opens
the next, updates the lead, writes the timeline entry and the audit row, all in the
caller's transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit import service as audit
from crm.errors import Conflict
from crm.leads.models import ActivityKind, Lead
from crm.leads.timeline import add_activity
from crm.pipeline.models import LeadStageHistory
from crm.pipeline.rules import PipelineEvent, advance_target
from crm.pipeline.stages import Stage, TransitionError, check_transition
from crm.timeutil import utcnow


def open_stay(db: Session, *, lead_id: int) -> LeadStageHistory | None:
    return db.scalars(
        select(LeadStageHistory).where(
            LeadStageHistory.lead_id == lead_id, LeadStageHistory.exited_at.is_(None)
        )
    ).first()


def enter_initial(
    db: Session, *, lead: Lead, actor: Actor, at: datetime | None = None
) -> LeadStageHistory:
    """Open the first history row for a just-created (flushed) lead."""
    when = at or lead.created_at or utcnow()
    stay = LeadStageHistory(
        broker_id=lead.broker_id,
        lead_id=lead.id,
        stage=lead.stage,
        from_stage=None,
        entered_at=when,
        reason="created",
        actor_type=actor.type,
        actor_id=actor.id,
    )
    lead.stage_entered_at = when
    db.add(stay)
    return stay


def transition(
    db: Session,
    *,
    lead: Lead,
    target: Stage,
    actor: Actor,
    reason: str = "manual",
    at: datetime | None = None,
) -> LeadStageHistory:
    """Move `lead` to `target`; `Conflict` (409) with the allowed list if not allowed."""
    current = lead.stage
    try:
        check_transition(current, target)
    except TransitionError as exc:
        raise Conflict(
            str(exc),
            current=current.value,
            target=target.value,
            allowed=[s.value for s in exc.allowed],
        ) from exc
    when = at or utcnow()
    stay = open_stay(db, lead_id=lead.id)
    if stay is not None:
        stay.exited_at = when
        db.flush()  # free the one-open-stay slot before opening the next
    new_stay = LeadStageHistory(
        broker_id=lead.broker_id,
        lead_id=lead.id,
        stage=target,
        from_stage=current,
        entered_at=when,
        reason=reason,
        actor_type=actor.type,
        actor_id=actor.id,
    )
    db.add(new_stay)
    lead.stage = target
    lead.stage_entered_at = when
    add_activity(
        db,
        lead=lead,
        kind=ActivityKind.stage_change,
        actor=actor,
        body=f"{current.value} → {target.value}",
        data={"from": current.value, "to": target.value, "reason": reason},
        occurred_at=when,
    )
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.stage_change",
        object_type="lead",
        object_id=lead.id,
        changes={"stage": [current.value, target.value], "reason": reason},
    )
    db.flush()
    return new_stay


def apply_event(
    db: Session,
    *,
    lead: Lead,
    event: PipelineEvent,
    actor: Actor,
    at: datetime | None = None,
) -> LeadStageHistory | None:
    """Advance `lead` as `event` implies (forward only); None when it stays where it is."""
    target = advance_target(lead.stage, event)
    if target is None:
        return None
    return transition(
        db, lead=lead, target=target, actor=actor, reason=f"auto:{event.value}", at=at
    )
