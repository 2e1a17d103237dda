"""The one audit call: `record`, in the caller's transaction.

Also the guard that makes audit rows append-only at the ORM level (PostgreSQL adds a
trigger): a flush that would update or delete one raises before touching the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import Select, event, inspect, select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import ActorType, AuditLog
from crm.timeutil import utcnow


class AuditImmutableError(RuntimeError):
    """Something tried to change or delete an audit row."""


@event.listens_for(Session, "before_flush")
def _refuse_audit_rewrites(session: Session, _ctx: Any, _instances: Any) -> None:
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, AuditLog) and (obj in session.deleted or session.is_modified(obj)):
            raise AuditImmutableError("audit rows are append-only")


def jsonable(value: Any) -> Any:
    """A value as JSON would carry it: enums by value, decimals and times as strings."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


def snapshot(obj: Any, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The column values of an ORM object (or the named ones), JSON-ready."""
    names = fields or [attr.key for attr in inspect(obj).mapper.column_attrs]
    return {name: jsonable(getattr(obj, name)) for name in names}


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """`{field: [old, new]}` for every field whose value changed."""
    keys = [*before.keys(), *(k for k in after if k not in before)]
    return {k: [before.get(k), after.get(k)] for k in keys if before.get(k) != after.get(k)}


def record(
    db: Session,
    *,
    actor: Actor,
    broker_id: int | None,
    action: str,
    object_type: str,
    object_id: int | str | None,
    changes: Mapping[str, Any] | None = None,
) -> AuditLog:
    """Add an audit row to the current transaction; the caller commits it with the change."""
    row = AuditLog(
        broker_id=broker_id,
        at=utcnow(),
        actor_type=actor.type,
        actor_id=actor.id,
        action=action,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        diff=jsonable(dict(changes)) if changes is not None else None,
        ip=actor.ip,
        request_id=actor.request_id,
    )
    db.add(row)
    return row


def query(
    *,
    broker_id: int,
    object_type: str | None = None,
    object_id: str | None = None,
    action: str | None = None,
    actor_type: ActorType | None = None,
    actor_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select[AuditLog]:
    """The filtered, broker-scoped statement behind the audit query endpoint."""
    stmt = select(AuditLog).where(AuditLog.broker_id == broker_id)
    conditions: Sequence[Any] = [
        c
        for c in (
            AuditLog.object_type == object_type if object_type else None,
            AuditLog.object_id == object_id if object_id else None,
            AuditLog.action == action if action else None,
            AuditLog.actor_type == actor_type if actor_type else None,
            AuditLog.actor_id == actor_id if actor_id else None,
            AuditLog.at >= since if since else None,
            AuditLog.at < until if until else None,
        )
        if c is not None
    ]
    return stmt.where(*conditions)
