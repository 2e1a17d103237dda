"""The audit log's append-only triggers, for migrations to create and drop.

Autogenerate sees tables, not triggers, so the initial revision calls these two after
its generated operations (scripts/regen-initial-migration re-adds the calls). The SQL is
the same that `create_all` runs (crm.audit.models), so tests built either way refuse
rewrites alike.

A later SQLite batch migration that recreates `audit_log` drops its triggers with the
old table: such a revision must call `create()` again after the batch.
"""

from __future__ import annotations

from alembic import op

from crm.audit.models import (
    AUDIT_APPEND_ONLY_FUNCTION,
    AUDIT_APPEND_ONLY_SQLITE,
    AUDIT_APPEND_ONLY_TRIGGER,
)

SQLITE_TRIGGERS = ("audit_log_no_update", "audit_log_no_delete")


def create() -> None:
    """After the tables: the dialect comes from the context, so offline `--sql` works too."""
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute(AUDIT_APPEND_ONLY_FUNCTION)
        op.execute(AUDIT_APPEND_ONLY_TRIGGER)
    elif dialect == "sqlite":
        for statement in AUDIT_APPEND_ONLY_SQLITE:
            op.execute(statement)


def drop() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    elif dialect == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
