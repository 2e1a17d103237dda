"""Every recompute of a lead's score, with the breakdown that explains it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from crm.db import Base, BigId, IdMixin


class ScoreSnapshot(IdMixin, Base):
    __tablename__ = "score_snapshot"
    __table_args__ = (Index("ix_score_snapshot_lead_computed", "lead_id", "computed_at"),)

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    lead_id: Mapped[int] = mapped_column(BigId, ForeignKey("lead.id", ondelete="CASCADE"))
    score: Mapped[int] = mapped_column()
    breakdown: Mapped[dict[str, Any]] = mapped_column()
    trigger: Mapped[str] = mapped_column(String(64))
    computed_at: Mapped[datetime] = mapped_column()
