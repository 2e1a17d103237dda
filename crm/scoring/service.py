"""Score recomputation: asked for by any event, done once per lead per transaction.

Callers say `request_recompute(db, lead=…, trigger=…)` whenever they change an input of
the score (a field, a stage, an activity). Just before the transaction commits, each
lead asked for is scored once and one snapshot is stored, so a request that changes
five inputs leaves one snapshot, not five, and nothing is scored if the change rolls back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from crm.leads.models import Lead
from crm.scoring import engine
from crm.scoring.models import ScoreSnapshot
from crm.timeutil import utcnow

_PENDING_KEY = "crm.scoring.pending"


def request_recompute(db: Session, *, lead: Lead, trigger: str) -> None:
    pending: dict[int, tuple[Lead, list[str]]] = db.info.setdefault(_PENDING_KEY, {})
    key = id(lead)
    if key in pending:
        pending[key][1].append(trigger)
    else:
        pending[key] = (lead, [trigger])


def recompute(db: Session, *, lead: Lead, trigger: str) -> ScoreSnapshot:
    """Score `lead` now and store the snapshot (the before-commit hook calls this)."""
    score, breakdown = engine.placeholder_score()
    snapshot = ScoreSnapshot(
        broker_id=lead.broker_id,
        lead_id=lead.id,
        score=score,
        breakdown=breakdown,
        trigger=trigger[:64],
        computed_at=utcnow(),
    )
    lead.score = score
    db.add(snapshot)
    return snapshot


@event.listens_for(Session, "before_commit")
def _recompute_pending(db: Session) -> None:
    pending: dict[int, tuple[Lead, list[str]]] = db.info.pop(_PENDING_KEY, {})
    if not pending:
        return
    db.flush()
    for lead, triggers in pending.values():
        if lead.deleted_at is None and lead.id is not None:
            recompute(db, lead=lead, trigger=",".join(dict.fromkeys(triggers)))
    db.flush()


@event.listens_for(Session, "after_rollback")
def _forget_pending(db: Session) -> None:
    db.info.pop(_PENDING_KEY, None)


def _unused(_: Any) -> None:  # keeps the Any import honest until the engine lands
    return None
