"""Every stage change goes through `transition` (or `enter_initial` at creation).

It checks the move against the transition table, closes the open history row, opens
the next, updates the lead, writes the timeline entry and the audit row and asks for a
score recompute, all in the caller's transaction. The broker's rot thresholds are set
here too, since they are pipeline configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit import service as audit
from crm.brokers.models import Broker
from crm.errors import Conflict, InvalidInput, field_error
from crm.leads.models import ActivityKind, Lead
from crm.leads.timeline import add_activity
from crm.pipeline.models import LeadStageHistory
from crm.pipeline.rules import PipelineEvent, advance_target
from crm.pipeline.stages import (
    InvalidRotDays,
    Stage,
    TransitionError,
    check_rot_days,
    check_transition,
    ordered,
    rot_thresholds,
)
from crm.scoring import service as scoring_service
from crm.timeutil import ensure_utc, utcnow

#: The history column is this wide; a longer reason is refused rather than cut.
REASON_MAX = 100


def open_stay(db: Session, *, lead_id: int) -> LeadStageHistory | None:
    return db.scalars(
        select(LeadStageHistory).where(
            LeadStageHistory.lead_id == lead_id, LeadStageHistory.exited_at.is_(None)
        )
    ).first()


def history_query(*, broker_id: int, lead_id: int) -> Select[LeadStageHistory]:
    """The lead's stays, broker-scoped; the caller orders and pages them."""
    return select(LeadStageHistory).where(
        LeadStageHistory.broker_id == broker_id, LeadStageHistory.lead_id == lead_id
    )


def history(db: Session, *, lead: Lead) -> Sequence[LeadStageHistory]:
    """Every stay of `lead`, oldest first (ties broken by id, the order they were written)."""
    stmt = history_query(broker_id=lead.broker_id, lead_id=lead.id)
    return db.scalars(stmt.order_by(LeadStageHistory.entered_at, LeadStageHistory.id)).all()


def seconds_in_stage(stay: LeadStageHistory, *, now: datetime | None = None) -> float:
    """How long the stay lasted, or has lasted so far when it is still open."""
    end = stay.exited_at or now or utcnow()
    return max(0.0, (end - stay.entered_at).total_seconds())


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


def _check_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise InvalidInput("the reason is empty", errors=[field_error("reason", "required")])
    if len(reason) > REASON_MAX:
        raise InvalidInput(
            f"the reason is longer than {REASON_MAX} characters",
            errors=[field_error("reason", f"at most {REASON_MAX} characters")],
        )
    return reason


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("naive datetime given for a stage change; use crm.timeutil.utcnow()")
    return ensure_utc(at)


def _lock_stage(db: Session, *, lead: Lead) -> Stage:
    """The lead's stage as the database has it, with the row locked until commit.

    Two concurrent changes of one lead (a broker's click and the agent's auto-advance)
    would otherwise both pass the table check against the stage they read and leave
    history that skips a step. SQLite has no row locks; its single writer serialises.
    """
    stage = db.scalar(select(Lead.stage).where(Lead.id == lead.id).with_for_update())
    return lead.stage if stage is None else stage


def transition(
    db: Session,
    *,
    lead: Lead,
    target: Stage,
    actor: Actor,
    reason: str = "manual",
    at: datetime | None = None,
) -> LeadStageHistory:
    """Move `lead` to `target`; `Conflict` (409) with the allowed list if not allowed.

    `at` backdates the change (an event that happened a moment ago); it may not fall
    before the current stay began, or time in stage would come out negative.
    """
    reason = _check_reason(reason)
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
    locked = _lock_stage(db, lead=lead)
    if locked != current:
        raise Conflict(
            f"the lead moved to {locked.value} meanwhile; reload it and try again",
            current=locked.value,
            target=target.value,
        )
    stay = open_stay(db, lead_id=lead.id)
    when = _aware(at) if at is not None else utcnow()
    started = stay.entered_at if stay is not None else lead.stage_entered_at
    if started is not None and when < started:
        raise InvalidInput(
            f"the change cannot happen before the current stage began ({started.isoformat()})",
            errors=[field_error("at", "must not be before the current stay's entered_at")],
        )
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
    scoring_service.request_recompute(db, lead=lead, trigger="stage_change")
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
    """Advance `lead` as `event` implies (forward only); None when it stays where it is.

    An event older than the current stay (a message imported late, say) still moves the
    lead, at the moment the stay began: the event is real, but history cannot run back.
    """
    target = advance_target(lead.stage, event)
    if target is None:
        return None
    if at is not None:
        at = _aware(at)
        stay = open_stay(db, lead_id=lead.id)
        started = stay.entered_at if stay is not None else lead.stage_entered_at
        if started is not None and at < started:
            at = started
    return transition(
        db, lead=lead, target=target, actor=actor, reason=f"auto:{event.value}", at=at
    )


def set_rot_days(
    db: Session, *, broker: Broker, rot_days: Mapping[str, object], actor: Actor
) -> dict[Stage, int]:
    """Replace the broker's rot thresholds; stages left out use the defaults again.

    Returns the effective thresholds. An empty mapping clears every override.
    """
    try:
        checked = check_rot_days(rot_days)
    except InvalidRotDays as exc:
        raise InvalidInput(
            "some rot thresholds are not valid",
            errors=[field_error(key, message) for key, message in exc.problems],
        ) from exc
    before = broker.rot_days
    after = {s.value: checked[s] for s in ordered(set(checked))} or None
    if after != before:
        broker.rot_days = after
        audit.record(
            db,
            actor=actor,
            broker_id=broker.id,
            action="broker.rot_days.update",
            object_type="broker",
            object_id=broker.id,
            changes={"rot_days": [before, after]},
        )
        db.flush()
    return rot_thresholds(broker.rot_days)
