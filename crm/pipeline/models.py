"""Stage history: one row per stay in a stage, so time in stage is `exited_at - entered_at`.

The two range indexes serve the metrics (crm.pipeline.metrics): stays are read by
`entered_at` (entries, durations, short-window conversion) and by `exited_at` (durations
of stays entered earlier); the (broker, lead, entered) index hands a long window's stays
to the conversion already grouped by lead. On PostgreSQL they carry the other columns
those queries read, so a vacuumed table answers from the index alone.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from crm.audit.models import ActorType
from crm.db import Base, BigId, IdMixin
from crm.enums import str_enum
from crm.pipeline.stages import Stage


class LeadStageHistory(IdMixin, Base):
    __tablename__ = "lead_stage_history"
    __table_args__ = (
        Index(
            "ix_lead_stage_history_broker_entered",
            "broker_id",
            "entered_at",
            postgresql_include=["lead_id", "stage", "from_stage", "exited_at"],
        ),
        Index(
            "ix_lead_stage_history_broker_exited",
            "broker_id",
            "exited_at",
            postgresql_include=["stage", "entered_at", "lead_id"],
        ),
        Index(
            "ix_lead_stage_history_broker_lead",
            "broker_id",
            "lead_id",
            "entered_at",
            postgresql_include=["stage"],
        ),
        Index("ix_lead_stage_history_lead_entered", "lead_id", "entered_at"),
        # At most one open stay per lead: the current stage.
        Index(
            "uq_lead_stage_history_open",
            "lead_id",
            unique=True,
            postgresql_where=text("exited_at IS NULL"),
            sqlite_where=text("exited_at IS NULL"),
        ),
    )

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    lead_id: Mapped[int] = mapped_column(BigId, ForeignKey("lead.id", ondelete="CASCADE"))
    stage: Mapped[Stage] = mapped_column(str_enum(Stage))
    from_stage: Mapped[Stage | None] = mapped_column(str_enum(Stage))
    entered_at: Mapped[datetime] = mapped_column()
    exited_at: Mapped[datetime | None] = mapped_column()
    reason: Mapped[str | None] = mapped_column(String(100))
    actor_type: Mapped[ActorType] = mapped_column(str_enum(ActorType))
    actor_id: Mapped[str | None] = mapped_column(String(100))
