"""Visits: booking (by a broker or the agent's booking tool), rescheduling, outcomes.

A lead's scheduled visits never overlap: booking and rescheduling lock the lead's row
first, so two bookings racing for the same lead are checked one after the other. A lead
on the do-not-call list can still have visits: the visit is their own appointment.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit import service as audit
from crm.brokers import service as broker_service
from crm.errors import Conflict, InvalidInput, NotFound, field_error
from crm.leads import service as lead_service
from crm.leads.models import ActivityKind, Lead
from crm.leads.timeline import add_activity
from crm.pipeline import service as pipeline_service
from crm.pipeline.rules import PipelineEvent
from crm.scoring import service as scoring_service
from crm.timeutil import ensure_utc, utcnow
from crm.visits import states
from crm.visits.models import Visit, VisitStatus
from crm.visits.schemas import (
    DURATION_MAX,
    DURATION_MIN,
    LOCATION_MAX,
    NOTES_MAX,
    PROPERTY_REF_MAX,
    VisitUpdate,
)

AUDITED = ["scheduled_at", "duration_minutes", "location", "property_ref", "status", "notes"]

_STATUS_TEXT = {
    VisitStatus.completed: "Visit completed",
    VisitStatus.cancelled: "Visit cancelled",
    VisitStatus.no_show: "Lead did not show up for the visit",
}


def ends_at(visit: Visit) -> datetime:
    return visit.scheduled_at + timedelta(minutes=visit.duration_minutes)


def get(db: Session, *, broker_id: int, visit_id: int) -> Visit | None:
    return db.scalars(
        select(Visit).where(Visit.id == visit_id, Visit.broker_id == broker_id)
    ).first()


def get_or_raise(db: Session, *, broker_id: int, visit_id: int) -> Visit:
    visit = get(db, broker_id=broker_id, visit_id=visit_id)
    if visit is None:
        raise NotFound(f"visit {visit_id} not found")
    return visit


def query(
    *,
    broker_id: int,
    lead_id: int | None = None,
    statuses: Collection[VisitStatus] = (),
    start_from: datetime | None = None,
    start_to: datetime | None = None,
) -> Select[Visit]:
    """The broker's visits; `start_from` inclusive and `start_to` exclusive on the start."""
    stmt = select(Visit).where(Visit.broker_id == broker_id)
    if lead_id is not None:
        stmt = stmt.where(Visit.lead_id == lead_id)
    if statuses:
        stmt = stmt.where(Visit.status.in_(list(statuses)))
    if start_from is not None:
        stmt = stmt.where(Visit.scheduled_at >= start_from)
    if start_to is not None:
        stmt = stmt.where(Visit.scheduled_at < start_to)
    return stmt


def next_scheduled(db: Session, *, lead: Lead, now: datetime | None = None) -> Visit | None:
    """The lead's next upcoming visit: what a reminder message is about."""
    return db.scalars(
        select(Visit)
        .where(
            Visit.lead_id == lead.id,
            Visit.broker_id == lead.broker_id,
            Visit.status == VisitStatus.scheduled,
            Visit.scheduled_at >= (now or utcnow()),
        )
        .order_by(Visit.scheduled_at, Visit.id)
    ).first()


def find_overlap(
    db: Session,
    *,
    lead_id: int,
    start: datetime,
    minutes: int,
    exclude_id: int | None = None,
) -> Visit | None:
    """A scheduled visit of the lead that shares any minute with [start, start+minutes).

    Candidates are narrowed in SQL by start time (no visit lasts over DURATION_MAX), and
    the end of each is checked here, which keeps the query the same on every database.
    """
    end = start + timedelta(minutes=minutes)
    stmt = select(Visit).where(
        Visit.lead_id == lead_id,
        Visit.status == VisitStatus.scheduled,
        Visit.scheduled_at < end,
        Visit.scheduled_at > start - timedelta(minutes=DURATION_MAX),
    )
    if exclude_id is not None:
        stmt = stmt.where(Visit.id != exclude_id)
    for other in db.scalars(stmt.order_by(Visit.scheduled_at, Visit.id)):
        if ends_at(other) > start:
            return other
    return None


def _check_time(scheduled_at: datetime, minutes: int, now: datetime) -> datetime:
    if scheduled_at.tzinfo is None:
        raise InvalidInput(
            "scheduled_at needs a UTC offset",
            errors=[field_error("scheduled_at", "include a time zone offset")],
        )
    scheduled_at = ensure_utc(scheduled_at)
    if scheduled_at <= now:
        raise InvalidInput(
            "a visit must be scheduled in the future",
            errors=[field_error("scheduled_at", "must be in the future")],
        )
    if not DURATION_MIN <= minutes <= DURATION_MAX:
        raise InvalidInput(
            f"a visit lasts {DURATION_MIN}..{DURATION_MAX} minutes",
            errors=[field_error("duration_minutes", f"{DURATION_MIN}..{DURATION_MAX}")],
        )
    return scheduled_at


def _text(value: str | None, field: str, limit: int) -> str | None:
    value = (value or "").strip() or None
    if value is not None and len(value) > limit:
        raise InvalidInput(
            f"{field} is over {limit} characters", errors=[field_error(field, f"at most {limit}")]
        )
    return value


def _lock_lead(db: Session, lead: Lead) -> None:
    db.execute(select(Lead.id).where(Lead.id == lead.id).with_for_update())


def _refuse_overlap(
    db: Session, *, lead_id: int, start: datetime, minutes: int, exclude_id: int | None = None
) -> None:
    other = find_overlap(db, lead_id=lead_id, start=start, minutes=minutes, exclude_id=exclude_id)
    if other is not None:
        raise Conflict(
            f"the lead already has visit {other.id} from {other.scheduled_at.isoformat()} "
            f"to {ends_at(other).isoformat()}",
            conflicting_visit_id=other.id,
        )


def _local(db: Session, lead: Lead, when: datetime) -> str:
    """`when` on the lead's clock (or the broker's), for a timeline a person reads."""
    name = lead.time_zone
    if not name:
        broker = broker_service.get(db, broker_id=lead.broker_id)
        name = broker.time_zone if broker else "UTC"
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def _summary(visit: Visit) -> dict[str, Any]:
    return audit.snapshot(visit, ["scheduled_at", "duration_minutes", "status"]) | {
        "visit_id": visit.id,
        "location": visit.location,
        "property_ref": visit.property_ref,
    }


def book(
    db: Session,
    *,
    broker_id: int,
    lead_id: int,
    scheduled_at: datetime,
    actor: Actor,
    duration_minutes: int = 45,
    location: str | None = None,
    property_ref: str | None = None,
    notes: str | None = None,
    now: datetime | None = None,
) -> Visit:
    """Book a visit; moves the lead to visit_scheduled if it was further back."""
    lead = lead_service.get_or_raise(db, broker_id=broker_id, lead_id=lead_id)
    start = _check_time(scheduled_at, duration_minutes, now or utcnow())
    visit = Visit(
        broker_id=broker_id,
        lead_id=lead.id,
        scheduled_at=start,
        duration_minutes=duration_minutes,
        location=_text(location, "location", LOCATION_MAX),
        property_ref=_text(property_ref, "property_ref", PROPERTY_REF_MAX),
        notes=_text(notes, "notes", NOTES_MAX),
        status=VisitStatus.scheduled,
    )
    _lock_lead(db, lead)
    _refuse_overlap(db, lead_id=lead.id, start=start, minutes=duration_minutes)
    db.add(visit)
    db.flush()
    where = f" at {visit.location}" if visit.location else ""
    add_activity(
        db,
        lead=lead,
        kind=ActivityKind.visit,
        actor=actor,
        body=f"Visit booked for {_local(db, lead, start)}{where}",
        data=_summary(visit),
    )
    audit.record(
        db,
        actor=actor,
        broker_id=broker_id,
        action="visit.create",
        object_type="visit",
        object_id=visit.id,
        changes=audit.snapshot(visit, ["lead_id", *AUDITED]),
    )
    pipeline_service.apply_event(db, lead=lead, event=PipelineEvent.visit_booked, actor=actor)
    scoring_service.request_recompute(db, lead=lead, trigger="visit.booked")
    db.flush()
    return visit


def update(
    db: Session,
    *,
    visit: Visit,
    patch: VisitUpdate,
    actor: Actor,
    now: datetime | None = None,
) -> Visit:
    """Apply the fields sent: reschedule, edit, or move the status out of scheduled.

    A visit in a final status keeps its facts; only its notes may still change (what
    the broker learned at the visit is often written afterwards).
    """
    sent = patch.model_fields_set
    current = visit.status
    target = patch.status if "status" in sent and patch.status is not None else current
    try:
        states.check(current, target)
    except states.VisitTransitionError as exc:
        raise Conflict(
            str(exc), current=current.value, target=target.value, allowed=exc.allowed
        ) from exc

    start = patch.scheduled_at if "scheduled_at" in sent else None
    minutes = patch.duration_minutes if "duration_minutes" in sent else None
    new_start = ensure_utc(start) if start is not None else visit.scheduled_at
    new_minutes = minutes if minutes is not None else visit.duration_minutes
    moved = new_start != visit.scheduled_at or new_minutes != visit.duration_minutes
    location = _text(patch.location, "location", LOCATION_MAX)
    property_ref = _text(patch.property_ref, "property_ref", PROPERTY_REF_MAX)
    edits_facts = moved or ("location" in sent and location != visit.location)
    edits_facts = edits_facts or ("property_ref" in sent and property_ref != visit.property_ref)
    if edits_facts and (current in states.FINAL or target is not VisitStatus.scheduled):
        raise Conflict(
            f"a visit that is {target.value} cannot be rescheduled or moved; "
            "only its notes can change",
            current=current.value,
        )

    lead = lead_service.get(db, broker_id=visit.broker_id, lead_id=visit.lead_id)
    if moved:
        if new_start != visit.scheduled_at:
            new_start = _check_time(new_start, new_minutes, now or utcnow())
        if lead is not None:
            _lock_lead(db, lead)
        _refuse_overlap(
            db, lead_id=visit.lead_id, start=new_start, minutes=new_minutes, exclude_id=visit.id
        )

    before = audit.snapshot(visit, AUDITED)
    visit.scheduled_at = new_start
    visit.duration_minutes = new_minutes
    if "location" in sent:
        visit.location = location
    if "property_ref" in sent:
        visit.property_ref = property_ref
    if "notes" in sent:
        visit.notes = _text(patch.notes, "notes", NOTES_MAX)
    visit.status = target
    changes = audit.diff(before, audit.snapshot(visit, AUDITED))
    if not changes:
        return visit
    audit.record(
        db,
        actor=actor,
        broker_id=visit.broker_id,
        action="visit.update",
        object_type="visit",
        object_id=visit.id,
        changes=changes,
    )
    if lead is not None:
        _follow_up(db, visit=visit, lead=lead, actor=actor, moved=moved, previous=current)
    db.flush()
    return visit


def _follow_up(
    db: Session, *, visit: Visit, lead: Lead, actor: Actor, moved: bool, previous: VisitStatus
) -> None:
    """The timeline, pipeline and score consequences of a visit change."""
    if moved:
        add_activity(
            db,
            lead=lead,
            kind=ActivityKind.visit,
            actor=actor,
            body=f"Visit rescheduled to {_local(db, lead, visit.scheduled_at)}",
            data=_summary(visit),
        )
        scoring_service.request_recompute(db, lead=lead, trigger="visit.rescheduled")
    if visit.status is not previous:
        add_activity(
            db,
            lead=lead,
            kind=ActivityKind.visit,
            actor=actor,
            body=_STATUS_TEXT[visit.status],
            data=_summary(visit),
        )
        if visit.status is VisitStatus.completed:
            pipeline_service.apply_event(
                db, lead=lead, event=PipelineEvent.visit_completed, actor=actor
            )
        scoring_service.request_recompute(db, lead=lead, trigger=f"visit.{visit.status.value}")
