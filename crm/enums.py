"""Column type for Python string enums, stored as their values in a plain VARCHAR.

Not a native database enum: adding a value later is a code change, not a migration.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import Enum


def str_enum(enum_cls: type[StrEnum], length: int = 32) -> Enum:
    return Enum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Channel(StrEnum):
    """Ways the system reaches a lead or a lead reaches it."""

    call = "call"
    whatsapp = "whatsapp"
    telegram = "telegram"
    email = "email"
    sms = "sms"
    web = "web"


class Language(StrEnum):
    es = "es"
    en = "en"
