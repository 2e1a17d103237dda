"""How values read inside a message, in Spanish or English: dates, times, money, lists.

Pure and table-driven (no locale database, no Babel): the two languages the product
speaks, written out, so a message renders the same on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm.enums import Language

_WEEKDAYS = {
    Language.es: ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
    Language.en: ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}
_MONTHS = {
    Language.es: (
        "enero", "febrero", "marzo", "abril", "mayo", "junio",
        "julio", "agosto", "septiembre", "octubre", "noviembre", "diciembre",
    ),
    Language.en: (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
}  # fmt: skip
_AND = {Language.es: "y", Language.en: "and"}
_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£"}
_PROPERTY_TYPES = {
    Language.es: {
        "apartment": "piso",
        "house": "casa",
        "townhouse": "adosado",
        "land": "terreno",
        "commercial": "local comercial",
        "office": "oficina",
        "other": "inmueble",
    },
    Language.en: {
        "apartment": "apartment",
        "house": "house",
        "townhouse": "townhouse",
        "land": "plot of land",
        "commercial": "commercial premises",
        "office": "office",
        "other": "property",
    },
}
OPTOUT_TEXT = {
    Language.es: "Responde BAJA para no recibir más mensajes.",
    Language.en: "Reply STOP to stop receiving messages.",
}


def zone(name: str | None) -> ZoneInfo:
    """The named zone, or UTC when it is missing or unknown (a message must still go)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_date(when: datetime, tz: str | None, language: Language) -> str:
    """`martes, 14 de mayo de 2025` / `Tuesday, May 14, 2025`, on the reader's calendar."""
    local = when.astimezone(zone(tz))
    weekday = _WEEKDAYS[language][local.weekday()]
    month = _MONTHS[language][local.month - 1]
    if language is Language.es:
        return f"{weekday}, {local.day} de {month} de {local.year}"
    return f"{weekday}, {month} {local.day}, {local.year}"


def format_time(when: datetime, tz: str | None, language: Language) -> str:
    """`17:30` in Spanish, `5:30 PM` in English, on the reader's clock."""
    local = when.astimezone(zone(tz))
    if language is Language.es:
        return f"{local.hour:02d}:{local.minute:02d}"
    hour = local.hour % 12 or 12
    return f"{hour}:{local.minute:02d} {'AM' if local.hour < 12 else 'PM'}"


def _grouped(whole: int, separator: str) -> str:
    return f"{whole:,}".replace(",", separator)


def format_money(amount: Decimal | int, currency: str | None, language: Language) -> str:
    """`350.000 €` / `€350,000`; cents only when there are any."""
    value = Decimal(amount)
    whole = int(value)
    cents = abs(value - whole)
    if language is Language.es:
        text = _grouped(whole, ".")
        if cents:
            text += "," + f"{cents:.2f}"[2:]
    else:
        text = _grouped(whole, ",")
        if cents:
            text += "." + f"{cents:.2f}"[2:]
    if not currency:
        return text
    code = currency.upper()
    symbol = _SYMBOLS.get(code)
    if symbol is None:
        return f"{text} {code}"
    return f"{text} {symbol}" if language is Language.es else f"{symbol}{text}"


def join_list(items: Sequence[str], language: Language) -> str:
    """`Chamberí, Retiro y Salamanca` / `Chamberí, Retiro and Salamanca`."""
    clean = [i.strip() for i in items if i and i.strip()]
    if len(clean) <= 1:
        return "".join(clean)
    return f"{', '.join(clean[:-1])} {_AND[language]} {clean[-1]}"


def property_type_label(value: str, language: Language) -> str:
    return _PROPERTY_TYPES[language].get(value, value)


def first_name(full_name: str | None) -> str | None:
    parts = (full_name or "").split()
    return parts[0] if parts else None
