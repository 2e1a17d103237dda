"""Property visits booked with a lead (by a broker or by the agent)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from crm.db import Base, BigId, IdMixin, TimestampMixin
from crm.enums import str_enum


class VisitStatus(StrEnum):
    scheduled = "scheduled"
    completed = "completed"
    cancelled = "cancelled"
    no_show = "no_show"


class Visit(IdMixin, TimestampMixin, Base):
    __tablename__ = "visit"
    __table_args__ = (
        Index("ix_visit_broker_scheduled", "broker_id", "scheduled_at"),
        Index("ix_visit_lead", "lead_id"),
    )

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    lead_id: Mapped[int] = mapped_column(BigId, ForeignKey("lead.id", ondelete="CASCADE"))
    scheduled_at: Mapped[datetime] = mapped_column()
    duration_minutes: Mapped[int] = mapped_column(default=45)
    location: Mapped[str | None] = mapped_column(String(300))
    property_ref: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[VisitStatus] = mapped_column(
        str_enum(VisitStatus), default=VisitStatus.scheduled
    )
    notes: Mapped[str | None] = mapped_column(Text)
