"""Score recomputation: asked for by any event, done once per lead per transaction.

Callers say `request_recompute(db, lead=…, trigger=…)` whenever they change an input of
the score (a field, a stage, an activity). Just before the transaction commits, each
lead asked for is scored once and one snapshot is stored, so a request that changes
five inputs leaves one snapshot, not five, and nothing is scored if the change rolls back.

A recompute writes no audit row of its own: the change that asked for it is audited by
its caller, and the snapshot (score, breakdown, trigger, time) is the score's own
append-only history. Explicit recomputes and bulk rescoring, which no other change
explains, are audited here.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, and_, event, exists, func, or_, select, true
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit import service as audit
from crm.brokers.models import Broker
from crm.leads.models import ActivityKind, Direction, Lead, LeadActivity
from crm.pipeline.stages import CLOSED_STAGES
from crm.scoring import engine
from crm.scoring.models import ScoreSnapshot
from crm.scoring.weights import DEFAULT_WEIGHTS, ScoringWeights
from crm.timeutil import utcnow

log = logging.getLogger(__name__)

_PENDING_KEY = "crm.scoring.pending"
_TRIGGER_LENGTH = 64

#: A snapshot older than this no longer shows the recency decay, so the periodic task
#: scores the lead again.
STALE_AFTER = timedelta(days=1)
DEFAULT_BATCH_SIZE = 500
#: Lead ids per engagement query, well under any driver's bind-parameter limit.
_QUERY_CHUNK = 1000

#: What the `status` of a call activity is when the lead picked up (crm.calls writes the
#: call's final status there); `"answered": true` in the data says so too.
ANSWERED_CALL_STATUS = "completed"


# --- weights ------------------------------------------------------------------------


def get_weights(broker: Broker) -> ScoringWeights:
    """The broker's effective weights: what it set, merged over the defaults."""
    if not broker.scoring_weights:
        return DEFAULT_WEIGHTS
    try:
        return ScoringWeights.model_validate(broker.scoring_weights)
    except ValidationError:
        # Stored by an older release with other rules: scoring must go on for every lead
        # write, so use the defaults and say so rather than fail those writes.
        log.warning("broker %s has invalid stored scoring weights; using defaults", broker.id)
        return DEFAULT_WEIGHTS


def is_customised(broker: Broker) -> bool:
    return get_weights(broker) != DEFAULT_WEIGHTS


def set_weights(db: Session, *, broker: Broker, weights: ScoringWeights, actor: Actor) -> bool:
    """Store the broker's weights; True when the effective weights changed (rescore them).

    Only what differs from the defaults is stored, so a setting the broker never touched
    follows the defaults of later releases.
    """
    before = get_weights(broker)
    changes = audit.diff(before.flat(), weights.flat())
    stored = weights.stored()
    if not changes and stored == broker.scoring_weights:
        return False
    broker.scoring_weights = stored
    audit.record(
        db,
        actor=actor,
        broker_id=broker.id,
        action="scoring.weights.update",
        object_type="broker",
        object_id=broker.id,
        changes=changes,
    )
    db.flush()
    return bool(changes)


# --- inputs -------------------------------------------------------------------------


def _json_is_true(db: Session, key: str) -> ColumnElement[bool]:
    element = LeadActivity.data[key]
    condition: ColumnElement[bool]
    if db.get_bind().dialect.name == "postgresql":
        # ->> turns JSON true into 'true'; a cast to boolean would fail on other values.
        condition = element.as_string() == "true"
    else:
        condition = element.as_boolean() == true()
    return condition


def engagement_counts(
    db: Session, *, lead_ids: Sequence[int], window_days: int, now: datetime
) -> dict[int, engine.EngagementCounts]:
    """Inbound messages, answered calls and notes per lead in the window: one query.

    Leads with no activity in the window are absent; callers default them to zero.
    """
    if not lead_ids:
        return {}
    kind, direction = LeadActivity.kind, LeadActivity.direction
    answered = and_(
        kind == ActivityKind.call,
        or_(
            LeadActivity.data["status"].as_string() == ANSWERED_CALL_STATUS,
            _json_is_true(db, "answered"),
        ),
    )
    stmt = (
        select(
            LeadActivity.lead_id,
            func.count().filter(and_(kind == ActivityKind.message, direction == Direction.inbound)),
            func.count().filter(answered),
            func.count().filter(kind == ActivityKind.note),
        )
        .where(
            LeadActivity.lead_id.in_(lead_ids),
            LeadActivity.occurred_at >= now - timedelta(days=window_days),
            LeadActivity.occurred_at <= now,
        )
        .group_by(LeadActivity.lead_id)
    )
    return {
        lead_id: engine.EngagementCounts(messages, calls, notes)
        for lead_id, messages, calls, notes in db.execute(stmt)
    }


def inputs_of(lead: Lead, engagement: engine.EngagementCounts) -> engine.LeadInputs:
    return engine.LeadInputs(
        stage=lead.stage,
        budget_min=lead.budget_min,
        budget_max=lead.budget_max,
        budget_currency=lead.budget_currency,
        areas=tuple(lead.areas or ()),
        property_type=lead.property_type,
        bedrooms=lead.bedrooms,
        timeline=lead.timeline,
        financing=lead.financing,
        intent=lead.intent,
        last_contacted_at=lead.last_contacted_at,
        last_activity_at=lead.last_activity_at,
        engagement=engagement,
    )


# --- scoring ------------------------------------------------------------------------


def _score_leads(
    db: Session, *, leads: Sequence[tuple[Lead, str]], now: datetime
) -> list[ScoreSnapshot]:
    """Score each (lead, trigger) and add one snapshot each.

    Leads of any brokers; engagement is counted with one aggregate query per broker and
    chunk, so scoring a whole import costs a handful of queries, not one per lead.
    """
    by_broker: dict[int, list[tuple[Lead, str]]] = defaultdict(list)
    for lead, trigger in leads:
        by_broker[lead.broker_id].append((lead, trigger))
    snapshots: list[ScoreSnapshot] = []
    for broker_id, group in by_broker.items():
        broker = db.get(Broker, broker_id)
        weights = DEFAULT_WEIGHTS if broker is None else get_weights(broker)
        for start in range(0, len(group), _QUERY_CHUNK):
            chunk = group[start : start + _QUERY_CHUNK]
            counts = engagement_counts(
                db,
                lead_ids=[lead.id for lead, _ in chunk],
                window_days=weights.engagement_window_days,
                now=now,
            )
            for lead, trigger in chunk:
                engagement = counts.get(lead.id, engine.EngagementCounts())
                result = engine.score(inputs_of(lead, engagement), weights, now=now)
                snapshot = ScoreSnapshot(
                    broker_id=lead.broker_id,
                    lead_id=lead.id,
                    score=result.score,
                    breakdown=result.to_dict(),
                    trigger=trigger[:_TRIGGER_LENGTH],
                    computed_at=now,
                )
                lead.score = result.score
                db.add(snapshot)
                snapshots.append(snapshot)
    return snapshots


def request_recompute(db: Session, *, lead: Lead, trigger: str) -> None:
    """Ask for `lead` to be scored when this transaction commits (once, however often asked)."""
    pending: dict[int, tuple[Lead, list[str]]] = db.info.setdefault(_PENDING_KEY, {})
    key = id(lead)
    if key in pending:
        pending[key][1].append(trigger)
    else:
        pending[key] = (lead, [trigger])


def _join_triggers(triggers: Iterable[str]) -> str:
    return ",".join(dict.fromkeys(triggers))


def recompute(
    db: Session, *, lead: Lead, trigger: str, now: datetime | None = None
) -> ScoreSnapshot:
    """Score `lead` now and store the snapshot.

    A pending request for the same lead is folded in (its triggers recorded here), so
    scoring now and committing does not store a second, identical snapshot.
    """
    pending: dict[int, tuple[Lead, list[str]]] = db.info.get(_PENDING_KEY, {})
    earlier = pending.pop(id(lead), (lead, []))[1]
    db.flush()
    (snapshot,) = _score_leads(
        db, leads=[(lead, _join_triggers([*earlier, trigger]))], now=now or utcnow()
    )
    db.flush()
    return snapshot


def recompute_by_request(
    db: Session, *, lead: Lead, actor: Actor, trigger: str = "api.recompute"
) -> ScoreSnapshot:
    """A recompute someone asked for: audited, since no other change explains it."""
    before = lead.score
    snapshot = recompute(db, lead=lead, trigger=trigger)
    audit.record(
        db,
        actor=actor,
        broker_id=lead.broker_id,
        action="lead.score.recompute",
        object_type="lead",
        object_id=lead.id,
        changes={"score": [before, snapshot.score]},
    )
    db.flush()
    return snapshot


@event.listens_for(Session, "before_commit")
def _recompute_pending(db: Session) -> None:
    pending: dict[int, tuple[Lead, list[str]]] = db.info.pop(_PENDING_KEY, {})
    if not pending:
        return
    db.flush()
    leads = [
        (lead, _join_triggers(triggers))
        for lead, triggers in pending.values()
        if lead.deleted_at is None and lead.id is not None
    ]
    _score_leads(db, leads=leads, now=utcnow())
    db.flush()


@event.listens_for(Session, "after_rollback")
def _forget_pending(db: Session) -> None:
    db.info.pop(_PENDING_KEY, None)


# --- reading ------------------------------------------------------------------------


def latest_snapshot(db: Session, *, broker_id: int, lead_id: int) -> ScoreSnapshot | None:
    return db.scalars(
        select(ScoreSnapshot)
        .where(ScoreSnapshot.broker_id == broker_id, ScoreSnapshot.lead_id == lead_id)
        .order_by(ScoreSnapshot.computed_at.desc(), ScoreSnapshot.id.desc())
        .limit(1)
    ).first()


def history(*, broker_id: int, lead_id: int) -> Select[ScoreSnapshot]:
    """The lead's snapshots, for `crm.listing.page`."""
    return select(ScoreSnapshot).where(
        ScoreSnapshot.broker_id == broker_id, ScoreSnapshot.lead_id == lead_id
    )


# --- bulk ---------------------------------------------------------------------------


def _live_open_leads() -> Select[Lead]:
    """Leads whose score can move: not deleted, not won or lost (their scores are fixed)."""
    return select(Lead).where(Lead.deleted_at.is_(None), Lead.stage.not_in(CLOSED_STAGES))


def _audit_batch(
    db: Session, *, snapshots: Sequence[ScoreSnapshot], before: dict[int, int], trigger: str
) -> None:
    per_broker: dict[int, list[ScoreSnapshot]] = defaultdict(list)
    for snapshot in snapshots:
        per_broker[snapshot.broker_id].append(snapshot)
    for broker_id, rows in per_broker.items():
        audit.record(
            db,
            actor=Actor.task(f"scoring.{trigger}"),
            broker_id=broker_id,
            action="lead.score.rescore",
            object_type="broker",
            object_id=broker_id,
            changes={
                "trigger": trigger,
                "leads": len(rows),
                "changed": sum(1 for s in rows if before[s.lead_id] != s.score),
                "lead_id_range": [rows[0].lead_id, rows[-1].lead_id],
            },
        )


def rescore_batch(
    db: Session,
    *,
    stmt: Select[Lead],
    after_id: int,
    batch_size: int,
    trigger: str,
    now: datetime,
) -> list[Lead]:
    """Score the next `batch_size` leads of `stmt` with id > `after_id`; flushes only.

    Rows are locked (PostgreSQL) so a lead changed by a request in flight is scored from
    what that request commits, not from the version it is replacing.
    """
    leads = db.scalars(
        stmt.where(Lead.id > after_id).order_by(Lead.id).limit(batch_size).with_for_update(of=Lead)
    ).all()
    if leads:
        before = {lead.id: lead.score for lead in leads}
        snapshots = _score_leads(db, leads=[(lead, trigger) for lead in leads], now=now)
        _audit_batch(db, snapshots=snapshots, before=before, trigger=trigger)
        db.flush()
    return list(leads)


def _run_batches(
    db: Session, *, stmt: Select[Lead], batch_size: int, trigger: str, now: datetime | None
) -> int:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    done = 0
    after_id = 0
    while True:
        leads = rescore_batch(
            db,
            stmt=stmt,
            after_id=after_id,
            batch_size=batch_size,
            trigger=trigger,
            now=now or utcnow(),
        )
        if not leads:
            return done
        after_id = leads[-1].id
        done += len(leads)
        db.commit()
        db.expunge_all()  # keep memory flat across 100k leads


def rescore_broker(db: Session, *, broker_id: int, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Score every live open lead of the broker again (after a weights change).

    A runner, not a service: it commits each batch, so 100k leads are never one
    transaction and a crash loses at most one batch; give it a session of its own.
    Returns how many leads were scored.
    """
    stmt = _live_open_leads().where(Lead.broker_id == broker_id)
    return _run_batches(db, stmt=stmt, batch_size=batch_size, trigger="weights", now=None)


def rescore_stale(
    db: Session,
    *,
    max_age: timedelta = STALE_AFTER,
    batch_size: int = DEFAULT_BATCH_SIZE,
    now: datetime | None = None,
) -> int:
    """Score again every live open lead (all brokers) with no snapshot newer than `max_age`.

    Recency decays as time passes with no event to trigger a recompute; this keeps the
    stored scores at most about `max_age` behind. Commits per batch, like `rescore_broker`.
    """
    cutoff = (now or utcnow()) - max_age
    fresh = exists().where(ScoreSnapshot.lead_id == Lead.id, ScoreSnapshot.computed_at >= cutoff)
    stmt = _live_open_leads().where(~fresh)
    return _run_batches(db, stmt=stmt, batch_size=batch_size, trigger="stale", now=now)
