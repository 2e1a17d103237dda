"""Property visits: booked, rescheduled and closed by the broker (the agent books through
the service). There is no DELETE: a visit that will not happen is cancelled, so the lead's
history keeps it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from pydantic import AwareDatetime

from crm.deps import Auth, CurrentBroker, DbSession, Paging
from crm.errors import InvalidInput, field_error
from crm.listing import Page, page
from crm.visits import service
from crm.visits.models import Visit, VisitStatus
from crm.visits.schemas import VisitCreate, VisitOut, VisitUpdate

router = APIRouter(prefix="/visits", tags=["visits"])


def get_current_visit(visit_id: int, broker: CurrentBroker, db: DbSession) -> Visit:
    return service.get_or_raise(db, broker_id=broker.id, visit_id=visit_id)


CurrentVisit = Annotated[Visit, Depends(get_current_visit)]


def visit_out(visit: Visit) -> VisitOut:
    return VisitOut.model_validate(
        {
            **{name: getattr(visit, name) for name in VisitOut.model_fields if name != "ends_at"},
            "ends_at": service.ends_at(visit),
        }
    )


@router.post("", response_model=VisitOut, status_code=status.HTTP_201_CREATED)
def book_visit(body: VisitCreate, auth: Auth, db: DbSession) -> VisitOut:
    visit = service.book(
        db,
        broker_id=auth.broker.id,
        lead_id=body.lead_id,
        scheduled_at=body.scheduled_at,
        duration_minutes=body.duration_minutes,
        location=body.location,
        property_ref=body.property_ref,
        notes=body.notes,
        actor=auth.actor,
    )
    db.commit()
    return visit_out(visit)


@router.get("", response_model=Page[VisitOut])
def list_visits(
    broker: CurrentBroker,
    db: DbSession,
    paging: Paging,
    lead_id: int | None = None,
    status: Annotated[list[VisitStatus] | None, Query(description="Any of these")] = None,
    start_from: Annotated[
        AwareDatetime | None, Query(alias="from", description="scheduled_at >= from")
    ] = None,
    start_to: Annotated[
        AwareDatetime | None, Query(alias="to", description="scheduled_at < to")
    ] = None,
) -> Page[VisitOut]:
    if start_from is not None and start_to is not None and start_to <= start_from:
        raise InvalidInput(
            "'to' must be after 'from'", errors=[field_error("to", "must be after 'from'")]
        )
    stmt = service.query(
        broker_id=broker.id,
        lead_id=lead_id,
        statuses=status or (),
        start_from=start_from,
        start_to=start_to,
    )
    rows, total = page(
        db,
        stmt,
        paging,
        sortable={"scheduled_at": Visit.scheduled_at, "created_at": Visit.created_at},
        default_sort="scheduled_at",
        id_column=Visit.id,
    )
    return Page[VisitOut](
        items=[visit_out(v) for v in rows], total=total, limit=paging.limit, offset=paging.offset
    )


@router.get("/{visit_id}", response_model=VisitOut)
def get_visit(visit: CurrentVisit) -> VisitOut:
    return visit_out(visit)


@router.patch("/{visit_id}", response_model=VisitOut)
def update_visit(body: VisitUpdate, visit: CurrentVisit, auth: Auth, db: DbSession) -> VisitOut:
    visit = service.update(db, visit=visit, patch=body, actor=auth.actor)
    db.commit()
    return visit_out(visit)
