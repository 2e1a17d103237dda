"""Brokers are the tenants; every other broker-owned row points at one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.db import Base, BigId, IdMixin, TimestampMixin


class Broker(IdMixin, TimestampMixin, Base):
    __tablename__ = "broker"

    name: Mapped[str] = mapped_column(String(200))
    legal_name: Mapped[str] = mapped_column(String(300))
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    locale: Mapped[str] = mapped_column(String(16), default="es")
    #: Per-broker scoring weights; None means the defaults in crm.scoring.engine.
    scoring_weights: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    #: Days without activity after which a lead "rots", per stage; None: defaults.
    rot_days: Mapped[dict[str, Any] | None] = mapped_column(default=None)

    phone_numbers: Mapped[list[BrokerPhoneNumber]] = relationship(
        back_populates="broker", cascade="all, delete-orphan", order_by="BrokerPhoneNumber.id"
    )


class BrokerPhoneNumber(IdMixin, Base):
    """A Twilio number the broker owns; inbound calls find their broker by it."""

    __tablename__ = "broker_phone_number"

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    e164: Mapped[str] = mapped_column(String(20), unique=True)
    label: Mapped[str | None] = mapped_column(String(100), default=None)

    broker: Mapped[Broker] = relationship(back_populates="phone_numbers")


class ApiKey(IdMixin, Base):
    """A broker's API key: only a hash is stored; the prefix finds the row in one lookup."""

    __tablename__ = "api_key"

    broker_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("broker.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100), default="default")
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
