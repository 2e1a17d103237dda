"""Leads: the broker-scoped CRUD, filters and the rules that keep a lead consistent.

Every function flushes and never commits; each change adds its timeline entry and its
audit row to the caller's transaction, so they land with the change or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from crm import phones
from crm.actor import Actor
from crm.audit import service as audit
from crm.brokers import service as broker_service
from crm.config import get_settings
from crm.enums import Channel, Language
from crm.errors import Conflict, InvalidInput, NotFound, field_error
from crm.leads.models import ActivityKind, Direction, Lead, LeadActivity, LeadConsent
from crm.leads.schemas import LeadCreate, LeadFilters, LeadUpdate
from crm.leads.timeline import add_activity
from crm.listing import PageRequest, page, scoped
from crm.pipeline import service as pipeline_service
from crm.pipeline.rules import PipelineEvent
from crm.scoring import service as scoring_service
from crm.timeutil import ensure_utc, utcnow

#: The fields a broker (or an import) sets; the rest is the system's.
EDITABLE_FIELDS: tuple[str, ...] = (
    "full_name",
    "phone",
    "email",
    "source",
    "assigned_to",
    "budget_min",
    "budget_max",
    "budget_currency",
    "areas",
    "property_type",
    "bedrooms",
    "timeline",
    "financing",
    "language",
    "time_zone",
    "notes",
)
DNC_FIELDS: tuple[str, ...] = ("do_not_call", "dnc_reason", "dnc_at")

SORTABLE: dict[str, InstrumentedAttribute[Any]] = {
    "created_at": Lead.created_at,
    "updated_at": Lead.updated_at,
    "score": Lead.score,
    "last_activity_at": Lead.last_activity_at,
    "full_name": Lead.full_name,
    "stage_entered_at": Lead.stage_entered_at,
}
DEFAULT_SORT = "created_at"

#: Clock skew tolerated on a consent's `granted_at` before it counts as "in the future".
CONSENT_FUTURE_SKEW = timedelta(minutes=5)
#: Fewer digits than this match too many numbers to be a useful phone search.
MIN_PHONE_SEARCH_DIGITS = 3


# --- lookups ---------------------------------------------------------------------------


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


def find_by_phone(db: Session, *, broker_id: int, phone: str) -> Lead | None:
    """The broker's live lead with this number, however it is written; None if unparseable.

    Callers pass what a carrier hands over ("anonymous", a national number, E.164); an
    unparseable one simply has no lead.
    """
    try:
        e164 = phones.normalize(phone, get_settings().default_region)
    except phones.InvalidPhoneNumber:
        return None
    return db.scalars(_live_by_phone(broker_id, e164)).first()


def _live_by_phone(broker_id: int, e164: str) -> Select[Lead]:
    return select(Lead).where(
        Lead.broker_id == broker_id, Lead.phone == e164, Lead.deleted_at.is_(None)
    )


def _duplicate(existing_id: int, phone: str) -> Conflict:
    return Conflict(
        f"lead {existing_id} already has phone {phone}",
        errors=[field_error("phone", f"already used by lead {existing_id}", "duplicate")],
        existing_lead_id=existing_id,
    )


def _check_phone_free(db: Session, *, broker_id: int, phone: str, lead_id: int | None) -> None:
    existing = db.scalars(_live_by_phone(broker_id, phone)).first()
    if existing is not None and existing.id != lead_id:
        raise _duplicate(existing.id, phone)


@contextmanager
def _phone_guard(db: Session, *, broker_id: int, phone: str) -> Iterator[None]:
    """A savepoint around a write that may lose the race for a phone to another request.

    The unique index is the real guard; losing to it rolls back only this savepoint, so
    the caller gets the same 409 as the pre-check gives and the transaction stays usable.
    """
    try:
        with db.begin_nested():
            yield
            db.flush()
    except IntegrityError:
        winner = db.scalars(_live_by_phone(broker_id, phone)).first()
        if winner is None:
            raise
        raise _duplicate(winner.id, phone) from None


# --- create, update, delete ------------------------------------------------------------


def _default_language(db: Session, *, broker_id: int) -> Language:
    broker = broker_service.get(db, broker_id=broker_id)
    try:
        return Language((broker.locale if broker else "")[:2].lower())
    except ValueError:
        return Language.es


def create(db: Session, *, broker_id: int, data: LeadCreate, actor: Actor) -> Lead:
    """A new lead in the first stage, with its timeline entry, audit row and score request."""
    _check_phone_free(db, broker_id=broker_id, phone=data.phone, lead_id=None)
    values = data.model_dump(exclude={"country"})
    values["language"] = data.language or _default_language(db, broker_id=broker_id)
    values["time_zone"] = data.time_zone or phones.time_zone_for(data.phone)
    lead = Lead(broker_id=broker_id, **values)
    with _phone_guard(db, broker_id=broker_id, phone=data.phone):
        db.add(lead)
    pipeline_service.enter_initial(db, lead=lead, actor=actor)
    add_activity(
        db,
        lead=lead,
        kind=ActivityKind.created,
        actor=actor,
        body="Lead created" + (f" from {lead.source}" if lead.source else ""),
        data={"source": lead.source},
        occurred_at=lead.created_at,
    )
    audit.record(
        db,
        actor=actor,
        broker_id=broker_id,
        action="lead.create",
        object_type="lead",
        object_id=lead.id,
        changes=audit.snapshot(lead, ("stage", *EDITABLE_FIELDS)),
    )
    scoring_service.request_recompute(db, lead=lead, trigger="lead.create")
    db.flush()
    return lead


def update(db: Session, *, lead: Lead, data: LeadUpdate, actor: Actor) -> Lead:
    """Apply the fields sent; an update that changes nothing writes nothing."""
    apply_update(db, lead=lead, data=data, actor=actor)
    return lead


def apply_update(
    db: Session, *, lead: Lead, data: LeadUpdate, actor: Actor
) -> dict[str, list[Any]]:
    """`update`, answering with `{field: [old, new]}` so an import can count what changed."""
    sent = data.model_dump(exclude_unset=True, exclude={"country"})
    wanted = {name: value for name, value in sent.items() if getattr(lead, name) != value}
    if "phone" in wanted:
        _check_phone_free(db, broker_id=lead.broker_id, phone=wanted["phone"], lead_id=lead.id)
        if "time_zone" not in sent and lead.time_zone == phones.time_zone_for(lead.phone):
            # The zone came from the old number, not from a person: follow the new one.
            derived = phones.time_zone_for(wanted["phone"])
            if derived != lead.time_zone:
                wanted["time_zone"] = derived
    low = wanted.get("budget_min", lead.budget_min)
    high = wanted.get("budget_max", lead.budget_max)
    if low is not None and high is not None and low > high:
        field = "budget_max" if "budget_max" in wanted else "budget_min"
        raise InvalidInput(
            f"budget_min {low} is above budget_max {high}",
            errors=[field_error(field, "budget_min must not be above budget_max")],
        )
    if not wanted:
        return {}
    before = audit.snapshot(lead, wanted)
    if "phone" in wanted:
        with _phone_guard(db, broker_id=lead.broker_id, phone=wanted["phone"]):
            for name, value in wanted.items():
                setattr(lead, name, value)
    else:
        for name, value in wanted.items():
            setattr(lead, name, value)
    changes = audit.diff(before, audit.snapshot(lead, wanted))
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.update",
        object_type="lead",
        object_id=lead.id,
        changes=changes,
    )
    scoring_service.request_recompute(db, lead=lead, trigger="lead.update")
    db.flush()
    return changes


def delete(db: Session, *, lead: Lead, actor: Actor) -> None:
    """Soft delete: the lead vanishes from every read, its number is free, history stays."""
    snapshot = audit.snapshot(lead)
    lead.deleted_at = utcnow()
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.delete",
        object_type="lead",
        object_id=lead.id,
        changes={"deleted": snapshot},
    )
    db.flush()


# --- lists -----------------------------------------------------------------------------


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _text_search(q: str) -> ColumnElement[bool]:
    """Name, email or phone contains `q`; a typed number matches however it was written.

    With no trigram index this reads every live lead of the broker, so the per-row test
    is kept cheap. ILIKE lowers the pattern again on every row; on a UTF-8 database it is
    `lower(column) LIKE lower(pattern)`, written here so the pattern is lowered once.
    When `q` has no letters at all (a phone number, a lead number) case cannot change
    the match, and a plain LIKE gives the same rows for a fraction of the cost.
    """
    pattern = f"%{_escape_like(q)}%"
    caseless = q.isascii() and not any(c.isalpha() for c in q)

    def contains(column: InstrumentedAttribute[str | None]) -> ColumnElement[bool]:
        if caseless:
            return column.like(pattern, escape="\\")
        return func.lower(column).like(func.lower(pattern), escape="\\")

    conditions: list[ColumnElement[bool]] = [
        contains(Lead.full_name),
        contains(Lead.email),
        Lead.phone.like(pattern, escape="\\"),
    ]
    digits = phones.digits(q)
    if len(digits) >= MIN_PHONE_SEARCH_DIGITS:
        if digits != q:  # otherwise the same test as the phone LIKE above
            conditions.append(Lead.phone.like(f"%{digits}%"))
        with suppress(phones.InvalidPhoneNumber):
            conditions.append(Lead.phone == phones.normalize(q, get_settings().default_region))
    return or_(*conditions)


def search(*, broker_id: int, filters: LeadFilters, now: datetime | None = None) -> Select[Lead]:
    """The broker's live leads matching `filters`, unsorted: the statement behind the list."""
    stmt = scoped(Lead, broker_id).where(Lead.deleted_at.is_(None))
    if filters.stages:
        stmt = stmt.where(Lead.stage.in_(filters.stages))
    if filters.score_min is not None:
        stmt = stmt.where(Lead.score >= filters.score_min)
    if filters.score_max is not None:
        stmt = stmt.where(Lead.score <= filters.score_max)
    if filters.source:
        stmt = stmt.where(func.lower(Lead.source) == filters.source.lower())
    if filters.assigned_to:
        stmt = stmt.where(Lead.assigned_to == filters.assigned_to)
    if filters.inactive_days is not None:
        cutoff = (now or utcnow()) - timedelta(days=filters.inactive_days)
        stmt = stmt.where(Lead.last_activity_at < cutoff)
    if filters.q and filters.q.strip():
        stmt = stmt.where(_text_search(filters.q.strip()))
    if filters.created_from is not None:
        stmt = stmt.where(Lead.created_at >= filters.created_from)
    if filters.created_to is not None:
        stmt = stmt.where(Lead.created_at < filters.created_to)
    if filters.do_not_call is not None:
        stmt = stmt.where(Lead.do_not_call.is_(filters.do_not_call))
    if filters.languages:
        stmt = stmt.where(Lead.language.in_(filters.languages))
    return stmt


def list_leads(
    db: Session, *, broker_id: int, filters: LeadFilters, paging: PageRequest
) -> tuple[Sequence[Lead], int]:
    return page(
        db,
        search(broker_id=broker_id, filters=filters),
        paging,
        sortable=SORTABLE,
        default_sort=DEFAULT_SORT,
        id_column=Lead.id,
    )


# --- consent and do-not-call -----------------------------------------------------------


def list_consents(db: Session, *, lead: Lead) -> Sequence[LeadConsent]:
    return db.scalars(
        scoped(LeadConsent, lead.broker_id)
        .where(LeadConsent.lead_id == lead.id)
        .order_by(LeadConsent.id)
    ).all()


def get_consent_or_raise(db: Session, *, lead: Lead, consent_id: int) -> LeadConsent:
    consent = db.scalars(
        scoped(LeadConsent, lead.broker_id).where(
            LeadConsent.id == consent_id, LeadConsent.lead_id == lead.id
        )
    ).first()
    if consent is None:
        raise NotFound(f"consent {consent_id} not found")
    return consent


def add_consent(
    db: Session,
    *,
    lead: Lead,
    channel: Channel,
    source: str,
    text_shown: str,
    actor: Actor,
    granted_at: datetime | None = None,
) -> LeadConsent:
    """Record what the lead agreed to, where and when: the proof a compliance check needs."""
    now = utcnow()
    when = ensure_utc(granted_at) if granted_at else now
    if when > now + CONSENT_FUTURE_SKEW:
        raise InvalidInput(
            "granted_at is in the future",
            errors=[field_error("granted_at", "consent cannot be granted in the future")],
        )
    consent = LeadConsent(
        broker_id=lead.broker_id,
        lead_id=lead.id,
        channel=channel,
        source=source,
        granted_at=when,
        text_shown=text_shown,
    )
    db.add(consent)
    db.flush()
    add_activity(
        db,
        lead=lead,
        kind=ActivityKind.consent,
        actor=actor,
        channel=channel,
        body=f"Consent to be contacted by {channel.value} ({source})",
        data={"action": "granted", "consent_id": consent.id, "channel": channel.value},
        occurred_at=when,
    )
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.consent.grant",
        object_type="lead",
        object_id=lead.id,
        changes={
            "consent_id": consent.id,
            "channel": channel,
            "source": source,
            "granted_at": when,
        },
    )
    db.flush()
    return consent


def revoke_consent(
    db: Session, *, lead: Lead, consent_id: int, actor: Actor, reason: str | None = None
) -> LeadConsent:
    """Revoke once; revoking again keeps the first time and writes nothing."""
    consent = get_consent_or_raise(db, lead=lead, consent_id=consent_id)
    if consent.revoked_at is not None:
        return consent
    consent.revoked_at = utcnow()
    add_activity(
        db,
        lead=lead,
        kind=ActivityKind.consent,
        actor=actor,
        channel=consent.channel,
        body=f"Consent for {consent.channel.value} revoked" + (f": {reason}" if reason else ""),
        data={"action": "revoked", "consent_id": consent.id, "reason": reason},
        occurred_at=consent.revoked_at,
    )
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.consent.revoke",
        object_type="lead",
        object_id=lead.id,
        changes={
            "consent_id": consent.id,
            "revoked_at": [None, consent.revoked_at],
            "reason": reason,
        },
    )
    db.flush()
    return consent


def _live_call_consents(db: Session, *, lead: Lead) -> Sequence[LeadConsent]:
    return db.scalars(
        scoped(LeadConsent, lead.broker_id).where(
            LeadConsent.lead_id == lead.id,
            LeadConsent.channel == Channel.call,
            LeadConsent.revoked_at.is_(None),
        )
    ).all()


def mark_do_not_call(db: Session, *, lead: Lead, reason: str, actor: Actor) -> Lead:
    """Put the lead on the internal do-not-call list, honoured at once, and revoke call consent.

    Marking an already-listed lead keeps the first reason and time; it only revokes call
    consents recorded since, and writes nothing when there are none.
    """
    live = _live_call_consents(db, lead=lead)
    if lead.do_not_call and not live:
        return lead
    now = utcnow()
    before = audit.snapshot(lead, DNC_FIELDS)
    if not lead.do_not_call:
        lead.do_not_call, lead.dnc_reason, lead.dnc_at = True, reason, now
    for consent in live:
        consent.revoked_at = now
    revoked = [c.id for c in live]
    add_activity(
        db,
        lead=lead,
        kind=ActivityKind.do_not_call,
        actor=actor,
        body=f"Added to do-not-call: {reason}",
        data={"action": "added", "reason": reason, "revoked_consent_ids": revoked},
        occurred_at=now,
    )
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.do_not_call.set",
        object_type="lead",
        object_id=lead.id,
        changes={
            **audit.diff(before, audit.snapshot(lead, DNC_FIELDS)),
            "reason": reason,
            "revoked_consent_ids": revoked,
        },
    )
    scoring_service.request_recompute(db, lead=lead, trigger="lead.do_not_call")
    db.flush()
    return lead


def clear_do_not_call(db: Session, *, lead: Lead, reason: str, actor: Actor) -> Lead:
    """Take the lead off the list; revoked consents stay revoked (ask again, record anew)."""
    if not lead.do_not_call:
        return lead
    before = audit.snapshot(lead, DNC_FIELDS)
    previous_reason = lead.dnc_reason
    lead.do_not_call, lead.dnc_reason, lead.dnc_at = False, None, None
    add_activity(
        db,
        lead=lead,
        kind=ActivityKind.do_not_call,
        actor=actor,
        body=f"Removed from do-not-call: {reason}",
        data={"action": "removed", "reason": reason, "previous_reason": previous_reason},
    )
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.do_not_call.clear",
        object_type="lead",
        object_id=lead.id,
        changes={**audit.diff(before, audit.snapshot(lead, DNC_FIELDS)), "reason": reason},
    )
    scoring_service.request_recompute(db, lead=lead, trigger="lead.do_not_call")
    db.flush()
    return lead


# --- timeline --------------------------------------------------------------------------


def list_activities(
    db: Session,
    *,
    lead: Lead,
    paging: PageRequest,
    kinds: Sequence[ActivityKind] = (),
) -> tuple[Sequence[LeadActivity], int]:
    stmt = scoped(LeadActivity, lead.broker_id).where(LeadActivity.lead_id == lead.id)
    if kinds:
        stmt = stmt.where(LeadActivity.kind.in_(kinds))
    return page(
        db,
        stmt,
        paging,
        sortable={"occurred_at": LeadActivity.occurred_at},
        default_sort="occurred_at",
        id_column=LeadActivity.id,
    )


def add_note(db: Session, *, lead: Lead, body: str, actor: Actor) -> LeadActivity:
    activity = add_activity(db, lead=lead, kind=ActivityKind.note, actor=actor, body=body)
    db.flush()
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.note.add",
        object_type="lead",
        object_id=lead.id,
        changes={"activity_id": activity.id, "body": body},
    )
    scoring_service.request_recompute(db, lead=lead, trigger="lead.note")
    db.flush()
    return activity


def log_message(
    db: Session,
    *,
    lead: Lead,
    channel: Channel,
    direction: Direction,
    body: str,
    actor: Actor,
    occurred_at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> LeadActivity:
    """A message sent or received on any channel; a reply from the lead is a contact made.

    The audit row names the message but does not copy its text: the timeline holds it.
    """
    activity = add_activity(
        db,
        lead=lead,
        kind=ActivityKind.message,
        actor=actor,
        channel=channel,
        direction=direction,
        body=body,
        data=data,
        occurred_at=occurred_at,
    )
    db.flush()
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.message.log",
        object_type="lead",
        object_id=lead.id,
        changes={
            "activity_id": activity.id,
            "channel": channel,
            "direction": direction,
        },
    )
    if direction is Direction.inbound:
        pipeline_service.apply_event(
            db,
            lead=lead,
            event=PipelineEvent.contact_succeeded,
            actor=actor,
            at=activity.occurred_at,
        )
    scoring_service.request_recompute(db, lead=lead, trigger=f"message.{direction.value}")
    db.flush()
    return activity
