"""The append-only audit log.

Rows are written in the same transaction as the change they record. The ORM refuses to
update or delete them (crm.audit.service), and on PostgreSQL a trigger refuses it too,
so not even a raw UPDATE through the app's connection can rewrite history.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DDL, Index, String, event
from sqlalchemy.orm import Mapped, mapped_column

from crm.db import Base, BigId, IdMixin
from crm.enums import str_enum
from crm.timeutil import utcnow


class ActorType(StrEnum):
    api_key = "api_key"
    user = "user"
    agent = "agent"
    task = "task"
    system = "system"
    cli = "cli"


class AuditLog(IdMixin, Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_broker_at", "broker_id", "at"),
        Index("ix_audit_log_broker_object", "broker_id", "object_type", "object_id"),
    )

    broker_id: Mapped[int | None] = mapped_column(BigId)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[ActorType] = mapped_column(str_enum(ActorType))
    actor_id: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(64))
    diff: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)


#: Shared by create_all (tests) and the migration, so both databases refuse rewrites.
AUDIT_APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = 'audit_log is append-only (' || TG_OP || ' refused)';
END;
$$ LANGUAGE plpgsql
"""
AUDIT_APPEND_ONLY_TRIGGER = """
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
"""
AUDIT_APPEND_ONLY_SQLITE = [
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (UPDATE refused)'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only (DELETE refused)'); END",
]


def _ddl(statement: str, dialect: str) -> DDL:
    return DDL(statement).execute_if(dialect=dialect)  # type: ignore[no-untyped-call]


_table = AuditLog.__table__
event.listen(_table, "after_create", _ddl(AUDIT_APPEND_ONLY_FUNCTION, "postgresql"))
event.listen(_table, "after_create", _ddl(AUDIT_APPEND_ONLY_TRIGGER, "postgresql"))
for _statement in AUDIT_APPEND_ONLY_SQLITE:
    event.listen(_table, "after_create", _ddl(_statement, "sqlite"))
