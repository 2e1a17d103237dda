"""Leads, their consent records and their activity timeline."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, Numeric, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.audit.models import ActorType
from crm.db import Base, BigId, IdMixin, JsonType, TimestampMixin
from crm.enums import Channel, Language, str_enum
from crm.pipeline.stages import Stage
from crm.timeutil import utcnow


class PropertyType(StrEnum):
    apartment = "apartment"
    house = "house"
    townhouse = "townhouse"
    land = "land"
    commercial = "commercial"
    office = "office"
    other = "other"


class Timeline(StrEnum):
    immediate = "immediate"
    within_3_months = "within_3_months"
    within_6_months = "within_6_months"
    within_12_months = "within_12_months"
    over_12_months = "over_12_months"
    unknown = "unknown"


class Financing(StrEnum):
    cash = "cash"
    mortgage_preapproved = "mortgage_preapproved"
    mortgage_in_process = "mortgage_in_process"
    needs_mortgage = "needs_mortgage"
    unknown = "unknown"


class ActivityKind(StrEnum):
    note = "note"
    message = "message"
    call = "call"
    stage_change = "stage_change"
    visit = "visit"
    consent = "consent"
    do_not_call = "do_not_call"
    created = "created"


class Direction(StrEnum):
    inbound = "inbound"
    outbound = "outbound"


class Lead(IdMixin, TimestampMixin, Base):
    __tablename__ = "lead"
    __table_args__ = (
        # One live lead per phone per broker; a soft-deleted one frees the number.
        Index(
            "uq_lead_broker_phone_live",
            "broker_id",
            "phone",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
        # Lists, rotting and the per-stage counts read only live leads, so the stage index
        # holds only those: counts answer from the index alone, with no heap visit to
        # check `deleted_at`.
        Index(
            "ix_lead_broker_stage_activity_live",
            "broker_id",
            "stage",
            "last_activity_at",
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
        # "Inactive for N days", sorted by last activity: the page is a short walk back
        # from the cutoff, `id` settles ties in index order, and the total counts the
        # range from the index alone.
        Index(
            "ix_lead_broker_activity_live",
            "broker_id",
            "last_activity_at",
            "id",
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
        # The few soft-deleted leads, which the pipeline metrics leave out by id.
        Index(
            "ix_lead_broker_deleted",
            "broker_id",
            postgresql_where=text("deleted_at IS NOT NULL"),
            sqlite_where=text("deleted_at IS NOT NULL"),
        ),
        Index("ix_lead_broker_score", "broker_id", "score"),
        Index("ix_lead_broker_created", "broker_id", "created_at"),
        Index("ix_lead_broker_assigned", "broker_id", "assigned_to"),
    )

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    full_name: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(254))
    source: Mapped[str | None] = mapped_column(String(100))
    assigned_to: Mapped[str | None] = mapped_column(String(100))
    stage: Mapped[Stage] = mapped_column(str_enum(Stage), default=Stage.new)
    stage_entered_at: Mapped[datetime] = mapped_column(default=utcnow)
    score: Mapped[int] = mapped_column(default=0)

    budget_min: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    budget_max: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    budget_currency: Mapped[str | None] = mapped_column(String(3))
    areas: Mapped[list[str]] = mapped_column(JsonType, default=list)
    property_type: Mapped[PropertyType | None] = mapped_column(str_enum(PropertyType))
    bedrooms: Mapped[int | None] = mapped_column()
    timeline: Mapped[Timeline | None] = mapped_column(str_enum(Timeline))
    financing: Mapped[Financing | None] = mapped_column(str_enum(Financing))
    language: Mapped[Language] = mapped_column(str_enum(Language, 8), default=Language.es)
    time_zone: Mapped[str | None] = mapped_column(String(64))
    notes: Mapped[str | None] = mapped_column(Text)
    #: What the last conversation showed of the lead's intent, 0..1 (the agent sets it).
    intent: Mapped[float | None] = mapped_column()

    do_not_call: Mapped[bool] = mapped_column(default=False)
    dnc_reason: Mapped[str | None] = mapped_column(String(200))
    dnc_at: Mapped[datetime | None] = mapped_column()

    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_contacted_at: Mapped[datetime | None] = mapped_column()
    deleted_at: Mapped[datetime | None] = mapped_column()

    consents: Mapped[list[LeadConsent]] = relationship(
        back_populates="lead", cascade="all, delete-orphan", order_by="LeadConsent.id"
    )


class LeadConsent(IdMixin, Base):
    """Proof that the lead agreed to be contacted on a channel: what they saw, when, where."""

    __tablename__ = "lead_consent"

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    lead_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("lead.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[Channel] = mapped_column(str_enum(Channel))
    source: Mapped[str] = mapped_column(String(200))
    granted_at: Mapped[datetime] = mapped_column()
    text_shown: Mapped[str] = mapped_column(Text)
    revoked_at: Mapped[datetime | None] = mapped_column()

    lead: Mapped[Lead] = relationship(back_populates="consents")


class LeadActivity(IdMixin, Base):
    """One entry of a lead's timeline: a note, a message, a call, a stage change, …"""

    __tablename__ = "lead_activity"
    __table_args__ = (Index("ix_lead_activity_lead_at", "lead_id", "occurred_at"),)

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    lead_id: Mapped[int] = mapped_column(BigId, ForeignKey("lead.id", ondelete="CASCADE"))
    kind: Mapped[ActivityKind] = mapped_column(str_enum(ActivityKind))
    channel: Mapped[Channel | None] = mapped_column(str_enum(Channel))
    direction: Mapped[Direction | None] = mapped_column(str_enum(Direction))
    body: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[ActorType] = mapped_column(str_enum(ActorType))
    actor_id: Mapped[str | None] = mapped_column(String(100))
