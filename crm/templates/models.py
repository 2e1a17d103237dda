"""Message templates: per broker, channel and language, rendered with a sandbox."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from crm.db import Base, BigId, IdMixin, TimestampMixin
from crm.enums import Channel, Language, str_enum


class MessageTemplate(IdMixin, TimestampMixin, Base):
    __tablename__ = "message_template"
    __table_args__ = (UniqueConstraint("broker_id", "name", "channel", "language"),)

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    channel: Mapped[Channel] = mapped_column(str_enum(Channel))
    language: Mapped[Language] = mapped_column(str_enum(Language, 8))
    subject: Mapped[str | None] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    #: The WhatsApp-approved template name, where the channel needs one outside 24 h.
    provider_template_id: Mapped[str | None] = mapped_column(String(200))
