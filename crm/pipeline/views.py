"""Stage changes of one lead, the transition table, the pipeline metrics and rotting."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import AwareDatetime

from crm.deps import Auth, CurrentBroker, CurrentLead, DbSession, Paging
from crm.leads.models import Lead
from crm.listing import Order, Page, PageRequest, page
from crm.pipeline import metrics, service
from crm.pipeline.models import LeadStageHistory
from crm.pipeline.rules import EVENT_STAGE
from crm.pipeline.schemas import (
    MetricsOut,
    RotDaysIn,
    RotDaysOut,
    RotStageOut,
    RottingLeadOut,
    RottingOut,
    StageChangeIn,
    StageChangeOut,
    StagesOut,
    StayOut,
    TransitionOut,
)
from crm.pipeline.stages import (
    CLOSED_STAGES,
    DEFAULT_ROT_DAYS,
    FUNNEL,
    ROT_DAYS_MAX,
    ROT_DAYS_MIN,
    TRANSITIONS,
    Stage,
    ordered,
    rot_overrides,
    rot_thresholds,
    stage_rank,
)
from crm.timeutil import utcnow

router = APIRouter(prefix="", tags=["pipeline"])

_SECONDS_PER_DAY = 86_400


def _order_unless_given(request: Request, paging: PageRequest, order: Order) -> PageRequest:
    """Paging's default order is newest first; history and rot lists read oldest first,
    so they use `order` unless the client asked for one."""
    if "order" in request.query_params:
        return paging
    return dataclasses.replace(paging, order=order)


def _stay_out(stay: LeadStageHistory, now: datetime) -> StayOut:
    return StayOut(
        id=stay.id,
        stage=stay.stage,
        from_stage=stay.from_stage,
        entered_at=stay.entered_at,
        exited_at=stay.exited_at,
        reason=stay.reason,
        actor_type=stay.actor_type,
        actor_id=stay.actor_id,
        is_open=stay.exited_at is None,
        seconds_in_stage=service.seconds_in_stage(stay, now=now),
    )


@router.post("/leads/{lead_id}/stage", response_model=StageChangeOut)
def change_stage(
    body: StageChangeIn, lead: CurrentLead, auth: Auth, db: DbSession
) -> StageChangeOut:
    """Move the lead to another stage; 409 with the allowed stages if the move is not."""
    previous = lead.stage
    stay = service.transition(
        db, lead=lead, target=body.stage, actor=auth.actor, reason=body.reason or "manual"
    )
    db.commit()
    return StageChangeOut(
        lead_id=lead.id,
        previous_stage=previous,
        stage=lead.stage,
        stage_entered_at=lead.stage_entered_at,
        stay=_stay_out(stay, utcnow()),
    )


@router.get("/leads/{lead_id}/stage-history", response_model=Page[StayOut])
def stage_history(
    request: Request, lead: CurrentLead, db: DbSession, paging: Paging
) -> Page[StayOut]:
    """The lead's stays, oldest first, each with its time in stage."""
    paging = _order_unless_given(request, paging, Order.asc)
    rows, total = page(
        db,
        service.history_query(broker_id=lead.broker_id, lead_id=lead.id),
        paging,
        sortable={"entered_at": LeadStageHistory.entered_at},
        default_sort="entered_at",
        id_column=LeadStageHistory.id,
    )
    now = utcnow()
    return Page[StayOut](
        items=[_stay_out(r, now) for r in rows],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.get("/pipeline/stages", response_model=StagesOut)
def stages(_auth: Auth) -> StagesOut:
    """The transition table and the auto-advance rules, as data for UIs."""
    return StagesOut(
        funnel=list(FUNNEL),
        stages=[
            TransitionOut(
                stage=stage,
                rank=stage_rank(stage),
                is_open=stage not in CLOSED_STAGES,
                is_final=not TRANSITIONS[stage],
                allowed=ordered(set(TRANSITIONS[stage])),
                rot_days_default=DEFAULT_ROT_DAYS.get(stage),
            )
            for stage in ordered(set(Stage))
        ],
        auto_advance=dict(EVENT_STAGE),
    )


@router.get("/pipeline/metrics", response_model=MetricsOut)
def pipeline_metrics(
    broker: CurrentBroker,
    db: DbSession,
    since: Annotated[
        AwareDatetime | None, Query(description="Window start (inclusive); default until - 30 days")
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="Window end (exclusive); default now")
    ] = None,
) -> MetricsOut:
    """Counts per stage, conversion, time in stage and wins/losses over [since, until)."""
    window = metrics.resolve_window(since, until)
    result = metrics.pipeline_metrics(db, broker_id=broker.id, window=window)
    return MetricsOut.model_validate(result)


@router.get("/pipeline/rotting", response_model=RottingOut)
def rotting(
    request: Request,
    broker: CurrentBroker,
    db: DbSession,
    paging: Paging,
    include_leads: Annotated[
        bool, Query(description="Also return a page of the rotting leads")
    ] = False,
    stage: Annotated[Stage | None, Query(description="Only this stage's leads in the page")] = None,
) -> RottingOut:
    """Leads with no activity for longer than their stage's threshold, per stage."""
    now = utcnow()
    thresholds = rot_thresholds(broker.rot_days)
    counts = metrics.rotting_counts(db, broker_id=broker.id, thresholds=thresholds, now=now)
    leads: Page[RottingLeadOut] | None = None
    if include_leads:
        paging = _order_unless_given(request, paging, Order.asc)
        stmt = metrics.rotting_leads(
            broker_id=broker.id, thresholds=thresholds, now=now, stage=stage
        )
        rows, total = page(
            db,
            stmt,
            paging,
            sortable={
                "last_activity_at": Lead.last_activity_at,
                "stage_entered_at": Lead.stage_entered_at,
                "score": Lead.score,
            },
            default_sort="last_activity_at",
            id_column=Lead.id,
        )
        leads = Page[RottingLeadOut](
            items=[
                RottingLeadOut(
                    id=r.id,
                    full_name=r.full_name,
                    phone=r.phone,
                    stage=r.stage,
                    stage_entered_at=r.stage_entered_at,
                    last_activity_at=r.last_activity_at,
                    days_inactive=int((now - r.last_activity_at).total_seconds())
                    // _SECONDS_PER_DAY,
                )
                for r in rows
            ],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )
    return RottingOut(
        as_of=now,
        total=sum(counts.values()),
        stages=[
            RotStageOut(stage=s, threshold_days=thresholds[s], rotting=counts[s]) for s in counts
        ],
        leads=leads,
    )


def _rot_days_out(stored: dict[str, Any] | None) -> RotDaysOut:
    return RotDaysOut(
        rot_days=rot_thresholds(stored), overrides=rot_overrides(stored), defaults=DEFAULT_ROT_DAYS
    )


@router.get("/pipeline/rot-days", response_model=RotDaysOut)
def get_rot_days(broker: CurrentBroker) -> RotDaysOut:
    """The rot thresholds in force for the broker, its overrides and the defaults."""
    return _rot_days_out(broker.rot_days)


@router.put("/pipeline/rot-days", response_model=RotDaysOut)
def put_rot_days(
    body: Annotated[
        RotDaysIn,
        Body(
            description="Days without activity before a lead rots, by open stage: whole "
            f"numbers from {ROT_DAYS_MIN} to {ROT_DAYS_MAX}, e.g. "
            '{"new": 1, "negotiating": 10}. Stages left out use the defaults; {} clears all.',
            examples=[{"new": 1, "negotiating": 10}],
        ),
    ],
    auth: Auth,
    db: DbSession,
) -> RotDaysOut:
    """Replace the broker's rot thresholds (stages left out go back to the defaults)."""
    broker = auth.broker
    service.set_rot_days(db, broker=broker, rot_days=body, actor=auth.actor)
    db.commit()
    return _rot_days_out(broker.rot_days)
