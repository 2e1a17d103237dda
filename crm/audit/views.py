"""Read-only access to the broker's audit trail; there is no write route, by design."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from crm.audit import service
from crm.audit.models import ActorType, AuditLog
from crm.audit.schemas import AuditLogOut
from crm.deps import CurrentBroker, DbSession, Paging
from crm.listing import Page, page

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=Page[AuditLogOut])
def list_audit(
    broker: CurrentBroker,
    db: DbSession,
    paging: Paging,
    object_type: Annotated[str | None, Query(max_length=64)] = None,
    object_id: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor_type: ActorType | None = None,
    actor_id: Annotated[str | None, Query(max_length=100)] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
) -> Page[AuditLogOut]:
    stmt = service.query(
        broker_id=broker.id,
        object_type=object_type,
        object_id=object_id,
        action=action,
        actor_type=actor_type,
        actor_id=actor_id,
        since=since,
        until=until,
    )
    rows, total = page(
        db, stmt, paging, sortable={"at": AuditLog.at}, default_sort="at", id_column=AuditLog.id
    )
    return Page[AuditLogOut](
        items=[AuditLogOut.model_validate(r) for r in rows],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )
