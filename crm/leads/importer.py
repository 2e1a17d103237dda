"""CSV of leads → validated rows and row errors. Pure: bytes or text in, values out.

Brokers export leads from portals, spreadsheets and other CRMs, so the reader is
forgiving about the shape (delimiter, BOM, header spelling in English or Spanish,
"$250,000" or "250.000 €", "Casa" or "house") and strict about the content: a row that
cannot be understood is reported with its spreadsheet row number, never guessed at.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from crm.enums import Language
from crm.leads.models import Financing, PropertyType, Timeline
from crm.leads.schemas import DEFAULT_REGION_KEY, ISO_4217, LeadCreate

#: Delimiters tried on the header line; `|` is left out because it separates areas.
DELIMITERS = (",", ";", "\t")
#: Separators between areas inside one cell.
AREA_SEPARATORS = re.compile(r"[;|]")


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (encoding, shape, missing phone column)."""

    def __init__(self, message: str, *, field: str = "file") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ImportTooLarge(ImportFileError):
    """Over the byte or row limit: refused before anything is written."""


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ImportRow:
    row: int
    data: LeadCreate


@dataclass(slots=True)
class ParsedFile:
    rows: list[ImportRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    #: Header cell → the lead field it fills.
    columns: dict[str, str] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    delimiter: str = ","
    #: Non-blank data rows read (valid and invalid).
    data_rows: int = 0

    @property
    def failed_rows(self) -> int:
        return len({e.row for e in self.errors})


def header_key(text: str) -> str:
    """`"Teléfono Móvil"` → `"telefono_movil"`: accents, case and punctuation ignored."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return re.sub(r"[^a-z0-9]+", "_", plain.lower()).strip("_")


def _keys(*names: str) -> frozenset[str]:
    return frozenset(header_key(n) for n in names)


#: Lead field → header spellings accepted for it (compared through `header_key`).
COLUMN_ALIASES: dict[str, frozenset[str]] = {
    "full_name": _keys("name", "full_name", "fullname", "nombre", "nombre_completo", "contact"),
    "phone": _keys(
        "phone",
        "phone_number",
        "telefono",
        "teléfono",
        "tel",
        "mobile",
        "mobile_phone",
        "cell",
        "celular",
        "movil",
        "móvil",
        "whatsapp",
    ),
    "email": _keys("email", "e-mail", "mail", "correo", "correo_electronico", "email_address"),
    "source": _keys("source", "lead_source", "origen", "fuente", "canal"),
    "budget_min": _keys("budget_min", "min_budget", "presupuesto_min", "presupuesto_minimo"),
    "budget_max": _keys(
        "budget_max", "max_budget", "budget", "presupuesto", "presupuesto_max", "presupuesto_maximo"
    ),
    "budget_currency": _keys("currency", "budget_currency", "moneda", "divisa"),
    "areas": _keys("areas", "area", "zones", "zonas", "zona", "neighborhoods", "barrios"),
    "property_type": _keys("property_type", "type", "tipo", "tipo_propiedad", "tipo_inmueble"),
    "bedrooms": _keys("bedrooms", "beds", "habitaciones", "recamaras", "dormitorios"),
    "timeline": _keys("timeline", "plazo", "horizonte"),
    "financing": _keys("financing", "financiamiento", "financiacion", "financiación"),
    "language": _keys("language", "lang", "idioma"),
    "notes": _keys("notes", "note", "notas", "comentarios", "comments"),
    "assigned_to": _keys("assigned_to", "agent", "owner", "asignado", "asignado_a", "agente"),
    "country": _keys("country", "pais", "país", "country_code"),
    "time_zone": _keys("time_zone", "timezone", "zona_horaria"),
}
_FIELD_BY_KEY = {key: name for name, keys in COLUMN_ALIASES.items() for key in keys}

#: Spellings of enum values seen in exports, by `header_key`; the values themselves
#: (`"mortgage_preapproved"`) are always accepted too.
VALUE_SYNONYMS: dict[type[StrEnum], dict[str, StrEnum]] = {
    PropertyType: {
        **dict.fromkeys(
            _keys("apartamento", "departamento", "depto", "piso", "flat", "condo"),
            PropertyType.apartment,
        ),
        **dict.fromkeys(_keys("casa", "chalet", "home"), PropertyType.house),
        **dict.fromkeys(_keys("adosado", "casa_adosada", "townhome"), PropertyType.townhouse),
        **dict.fromkeys(_keys("terreno", "lote", "solar", "lot", "parcela"), PropertyType.land),
        **dict.fromkeys(_keys("local", "local_comercial", "comercial"), PropertyType.commercial),
        **dict.fromkeys(_keys("oficina"), PropertyType.office),
        **dict.fromkeys(_keys("otro"), PropertyType.other),
    },
    Timeline: {
        **dict.fromkeys(_keys("now", "asap", "inmediato", "ya"), Timeline.immediate),
        **dict.fromkeys(_keys("3_months", "0-3 months", "3_meses"), Timeline.within_3_months),
        **dict.fromkeys(_keys("6_months", "3-6 months", "6_meses"), Timeline.within_6_months),
        **dict.fromkeys(
            _keys("12_months", "6-12 months", "12_meses", "1 year", "1 año"),
            Timeline.within_12_months,
        ),
        **dict.fromkeys(_keys("more_than_12_months", "mas de 12 meses"), Timeline.over_12_months),
        **dict.fromkeys(_keys("desconocido", "no se", "no sabe"), Timeline.unknown),
    },
    Financing: {
        **dict.fromkeys(_keys("contado", "efectivo"), Financing.cash),
        **dict.fromkeys(
            _keys("preapproved", "pre-approved", "preaprobado", "preaprobada"),
            Financing.mortgage_preapproved,
        ),
        **dict.fromkeys(
            _keys("in_process", "en_tramite", "en_proceso"), Financing.mortgage_in_process
        ),
        **dict.fromkeys(
            _keys("mortgage", "hipoteca", "credito", "crédito", "needs_financing"),
            Financing.needs_mortgage,
        ),
        **dict.fromkeys(_keys("desconocido", "no se"), Financing.unknown),
    },
    Language: {
        **dict.fromkeys(_keys("spanish", "español", "castellano"), Language.es),
        **dict.fromkeys(_keys("english", "inglés"), Language.en),
    },
}
_ENUM_FIELDS: dict[str, type[StrEnum]] = {
    "property_type": PropertyType,
    "timeline": Timeline,
    "financing": Financing,
    "language": Language,
}


# --- whole file ------------------------------------------------------------------------


def decode(data: bytes, *, max_bytes: int) -> str:
    """The file's text (UTF-8, with or without BOM), or why it cannot be read."""
    if len(data) > max_bytes:
        raise ImportTooLarge(f"the file is {len(data)} bytes; the limit is {max_bytes}")
    if not data.strip():
        raise ImportFileError("the file is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"the file is not UTF-8 text (byte {exc.start}); save it as 'CSV UTF-8'"
        ) from None
    if "\x00" in text:
        raise ImportFileError("the file contains NUL bytes: it is not a CSV text file")
    return text


def map_columns(header: list[str]) -> tuple[dict[int, str], list[str]]:
    """Column index → lead field; and the header cells that fill nothing (or a filled one)."""
    by_index: dict[int, str] = {}
    ignored: list[str] = []
    for index, cell in enumerate(header):
        name = _FIELD_BY_KEY.get(header_key(cell))
        if name is None or name in by_index.values():
            if cell.strip():
                ignored.append(cell.strip())
            continue
        by_index[index] = name
    return by_index, ignored


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def detect_delimiter(header_line: str) -> str:
    """The delimiter that splits the header into the most known columns (phone first)."""

    def quality(delimiter: str) -> tuple[bool, int]:
        cells = next(csv.reader([header_line], delimiter=delimiter), [])
        mapped, _ = map_columns(cells)
        return "phone" in mapped.values(), len(mapped)

    best = max(DELIMITERS, key=quality)
    if quality(best) == (False, 0):
        try:
            return csv.Sniffer().sniff(header_line, delimiters="".join(DELIMITERS)).delimiter
        except csv.Error:
            return ","
    return best


def _records(text: str, delimiter: str) -> Iterator[list[str]]:
    try:
        yield from csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    except csv.Error as exc:
        raise ImportFileError(f"the file is not valid CSV: {exc}") from None


def parse(text: str, *, max_rows: int, default_region: str) -> ParsedFile:
    """Every row of the file validated; a row with any error is reported and left out.

    Row numbers are spreadsheet rows: the header is row 1. A phone seen on an earlier
    row wins; the later row is reported as a duplicate.
    """
    text = text.removeprefix("\ufeff")
    lines_skipped = 0
    forced: str | None = None
    first = _first_line(text)
    if first.lower().startswith("sep=") and len(first.strip()) == 5:
        # Excel's "sep=;" hint line: obey it and read the header from the next line.
        forced = first.strip()[4]
        text = text.split("\n", 1)[1] if "\n" in text else ""
        lines_skipped = 1
        first = _first_line(text)
    delimiter = forced or detect_delimiter(first)
    records = _records(text, delimiter)
    header: list[str] | None = None
    row_number = lines_skipped
    for cells in records:
        row_number += 1
        if any(c.strip() for c in cells):
            header = cells
            break
    if header is None:
        raise ImportFileError("the file has no header row")
    by_index, ignored = map_columns(header)
    if "phone" not in by_index.values():
        raise ImportFileError(
            "no phone column: name one of "
            + ", ".join(sorted(COLUMN_ALIASES["phone"]))
            + f" (found: {', '.join(c.strip() for c in header if c.strip()) or 'nothing'})",
            field="phone",
        )
    parsed = ParsedFile(
        columns={header[i].strip(): name for i, name in by_index.items()},
        ignored_columns=ignored,
        delimiter=delimiter,
    )
    seen_phones: dict[str, int] = {}
    for cells in records:
        row_number += 1
        if not any(c.strip() for c in cells):
            continue
        parsed.data_rows += 1
        if parsed.data_rows > max_rows:
            raise ImportTooLarge(f"the file has more than {max_rows} rows; split it")
        raw = {name: cells[i].strip() for i, name in by_index.items() if i < len(cells)}
        row, errors = parse_row(row_number, raw, default_region=default_region)
        if row is not None:
            first_row = seen_phones.setdefault(row.data.phone, row_number)
            if first_row != row_number:
                errors = [RowError(row_number, "phone", f"duplicate of row {first_row}")]
                row = None
        if row is None:
            parsed.errors.extend(errors)
        else:
            parsed.rows.append(row)
    return parsed


# --- one row ---------------------------------------------------------------------------


def parse_row(
    row_number: int, raw: Mapping[str, str], *, default_region: str
) -> tuple[ImportRow | None, list[RowError]]:
    """One row's cells (by lead field) → the validated row, or every error it has."""
    values: dict[str, Any] = {}
    errors: list[RowError] = []
    for name, cell in raw.items():
        if not cell:
            continue  # a blank cell says nothing: it never clears a value
        try:
            values[name] = convert(name, cell)
        except ValueError as exc:
            errors.append(RowError(row_number, name, str(exc)))
    named: set[str] = set()
    for name in ("budget_min", "budget_max"):
        amount = values.get(name)
        if isinstance(amount, Amount):
            values[name] = amount.value
            if amount.currency:
                named.add(amount.currency)
    if "budget_currency" not in values and len(named) == 1:
        values["budget_currency"] = named.pop()  # "USD 250,000" says the currency too
    elif "budget_currency" not in values and len(named) > 1:
        errors.append(RowError(row_number, "budget_currency", "the budgets name two currencies"))
    if "phone" not in values and not any(e.field == "phone" for e in errors):
        errors.append(RowError(row_number, "phone", "phone is empty"))
    try:
        data = LeadCreate.model_validate(values, context={DEFAULT_REGION_KEY: default_region})
    except ValidationError as exc:
        for error in exc.errors():
            loc = error.get("loc", ())
            where = str(loc[0]) if loc else None
            if where == "phone" and "phone" not in values:
                continue  # already reported as empty
            errors.append(RowError(row_number, where, error.get("msg", "invalid")))
        return None, errors
    if errors:
        return None, errors
    return ImportRow(row_number, data), []


def convert(name: str, cell: str) -> Any:
    """A cell as the lead field wants it; `ValueError` with the reason if it is not one."""
    if name == "areas":
        return [a for a in AREA_SEPARATORS.split(cell) if a.strip()]
    if name in ("budget_min", "budget_max"):
        return parse_amount(cell)  # an Amount; `parse_row` splits value and currency
    if name == "bedrooms":
        return parse_count(cell)
    if name in _ENUM_FIELDS:
        return parse_choice(_ENUM_FIELDS[name], cell)
    return cell


def parse_choice(enum: type[StrEnum], cell: str) -> StrEnum:
    key = header_key(cell)
    for member in enum:
        if key == member.value:
            return member
    found = VALUE_SYNONYMS.get(enum, {}).get(key)
    if found is None and enum is Language and len(key) > 2 and key[2] == "_":
        found = VALUE_SYNONYMS[enum].get(key[:2]) or _member(enum, key[:2])  # es-MX → es
    if found is None:
        allowed = ", ".join(m.value for m in enum)
        raise ValueError(f"{cell!r} is not one of: {allowed}")
    return found


def _member(enum: type[StrEnum], value: str) -> StrEnum | None:
    return next((m for m in enum if m.value == value), None)


def parse_count(cell: str) -> int:
    text = cell.strip()
    if re.fullmatch(r"\d{1,3}(\.0+)?", text):
        return int(text.split(".")[0])
    raise ValueError(f"{cell!r} is not a whole number")


_SYMBOLS = {"€": "EUR", "£": "GBP", "¥": "JPY"}
#: Letters written before "$" that say whose dollar or peso it is.
_DOLLAR_PREFIXES = {"us": "USD", "mx": "MXN", "ar": "ARS", "cl": "CLP", "co": "COP", "ca": "CAD"}
_AMOUNT = re.compile(
    r"(?:(?P<lead>[a-z]{1,3})(?P<dollar>\$)?)?(?P<symbol>[$€£¥])?"
    r"(?P<num>\d[\d.,]*)(?P<suffix>k|mil|mm|m)?(?P<symbol2>[€£¥])?(?P<code>[a-z]{3})?"
)
_FACTORS = {"k": 1_000, "mil": 1_000, "m": 1_000_000, "mm": 1_000_000}


@dataclass(frozen=True, slots=True)
class Amount:
    value: Decimal
    #: The ISO 4217 code the cell named ("USD 250,000", "250.000 €"), if any.
    currency: str | None = None


def parse_amount(cell: str) -> Amount:
    """`"$250,000"`, `"250.000 €"`, `"USD 1,5M"`, `"250 mil"` → an Amount; else `ValueError`.

    One separator followed by exactly three digits is a thousands separator, as budgets
    are written ("250.000" is a quarter million in Madrid, not 250).
    """
    compact = re.sub(r"[\s\u00a0']", "", cell.lower())
    match = _AMOUNT.fullmatch(compact)
    if match is None:
        raise ValueError(f"{cell!r} is not an amount")
    lead, code = match.group("lead"), match.group("code")
    currency: str | None = None
    for candidate in (lead, code):
        if candidate is None:
            continue
        if candidate.upper() in ISO_4217:
            currency = candidate.upper()
        elif candidate is lead and match.group("dollar") and candidate in _DOLLAR_PREFIXES:
            currency = _DOLLAR_PREFIXES[candidate]
        else:
            raise ValueError(f"{cell!r} is not an amount")
    symbol = match.group("symbol") or match.group("symbol2")
    currency = currency or _SYMBOLS.get(symbol or "")
    suffix = match.group("suffix")
    number = _plain_number(match.group("num"), has_suffix=suffix is not None, cell=cell)
    return Amount(number * _FACTORS.get(suffix or "", 1), currency)


def _plain_number(num: str, *, has_suffix: bool, cell: str) -> Decimal:
    if "," in num and "." in num:
        decimal_sep = "," if num.rfind(",") > num.rfind(".") else "."
        thousands = "." if decimal_sep == "," else ","
        num = num.replace(thousands, "").replace(decimal_sep, ".")
    elif "," in num or "." in num:
        sep = "," if "," in num else "."
        parts = num.split(sep)
        grouped = all(len(p) == 3 for p in parts[1:])
        if len(parts) > 2 or (grouped and not has_suffix):
            if not grouped:
                raise ValueError(f"{cell!r} is not an amount")
            num = num.replace(sep, "")
        else:
            num = num.replace(sep, ".")
    try:
        return Decimal(num)
    except InvalidOperation:
        raise ValueError(f"{cell!r} is not an amount") from None
