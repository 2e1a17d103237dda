"""Lead scores, their breakdowns and the broker's weights."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks

from crm.config import get_settings
from crm.deps import Auth, CurrentBroker, CurrentLead, DbSession, Paging
from crm.listing import Page, page
from crm.scoring import service, tasks
from crm.scoring.models import ScoreSnapshot
from crm.scoring.schemas import RescoreMode, ScoreOut, WeightsOut, WeightsUpdated
from crm.scoring.weights import ScoringWeights

router = APIRouter(prefix="", tags=["scoring"])


@router.get("/leads/{lead_id}/score", response_model=ScoreOut)
def get_score(lead: CurrentLead, db: DbSession) -> ScoreOut:
    """The lead's current score and the breakdown behind it (scored now if never scored)."""
    snapshot = service.latest_snapshot(db, broker_id=lead.broker_id, lead_id=lead.id)
    if snapshot is None:
        snapshot = service.recompute(db, lead=lead, trigger="first_read")
        db.commit()
    return ScoreOut.from_snapshot(snapshot)


@router.get("/leads/{lead_id}/score/history", response_model=Page[ScoreOut])
def get_score_history(lead: CurrentLead, db: DbSession, paging: Paging) -> Page[ScoreOut]:
    """Every computation of the lead's score, newest first unless `order=asc`."""
    rows, total = page(
        db,
        service.history(broker_id=lead.broker_id, lead_id=lead.id),
        paging,
        sortable={"computed_at": ScoreSnapshot.computed_at},
        default_sort="computed_at",
        id_column=ScoreSnapshot.id,
    )
    return Page[ScoreOut](
        items=[ScoreOut.from_snapshot(r) for r in rows],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.post("/leads/{lead_id}/score/recompute", response_model=ScoreOut)
def recompute_score(lead: CurrentLead, auth: Auth, db: DbSession) -> ScoreOut:
    snapshot = service.recompute_by_request(db, lead=lead, actor=auth.actor)
    db.commit()
    return ScoreOut.from_snapshot(snapshot)


@router.get("/scoring/weights", response_model=WeightsOut)
def get_weights(broker: CurrentBroker) -> WeightsOut:
    """The effective weights: the broker's settings over the defaults."""
    return WeightsOut.build(service.get_weights(broker), customised=service.is_customised(broker))


@router.put("/scoring/weights", response_model=WeightsUpdated)
def put_weights(
    body: ScoringWeights, auth: Auth, db: DbSession, background: BackgroundTasks
) -> WeightsUpdated:
    """Replace the weights (fields left out take the defaults) and rescore the live leads.

    The rescore runs after the response: in this process on the embedded default, on a
    Celery worker when Redis is configured. Won and lost leads keep their fixed scores.
    """
    broker = auth.broker
    changed = service.set_weights(db, broker=broker, weights=body, actor=auth.actor)
    db.commit()
    mode = RescoreMode.not_needed
    if changed and get_settings().redis_url:
        tasks.rescore_broker_task.delay(broker.id)
        mode = RescoreMode.queued
    elif changed:
        background.add_task(tasks.rescore_broker_in_background, broker.id)
        mode = RescoreMode.in_process
    out = WeightsOut.build(service.get_weights(broker), customised=service.is_customised(broker))
    return WeightsUpdated(**out.model_dump(), rescore=mode)
