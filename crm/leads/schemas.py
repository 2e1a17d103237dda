"""What the leads API accepts and returns.

Input models do the normalising (E.164 phones, upper-case currencies, trimmed and
deduplicated areas, 2-place budgets), so the service, the CSV importer and the API
store the same value for the same input, and a re-import compares equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import available_timezones

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from crm import phones
from crm.audit.models import ActorType
from crm.config import get_settings
from crm.enums import Channel, Language
from crm.leads.models import ActivityKind, Direction, Financing, PropertyType, Timeline
from crm.pipeline.stages import Stage

#: Active ISO 4217 codes a price can be quoted in (funds such as CLF, the Chilean UF,
#: included; precious metals, SDRs and test codes left out).
_ISO_4217_CODES = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL
    BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF
    DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF
    IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR
    LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO
    NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK
    SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH
    UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
"""
ISO_4217 = frozenset(_ISO_4217_CODES.split())

MAX_AREAS = 50
AREA_MAX_LENGTH = 100
_CENTS = Decimal("0.01")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

#: Validation context key: the region assumed for numbers written without a country code
#: (the importer passes its own; the API falls back to DEFAULT_PHONE_REGION).
DEFAULT_REGION_KEY = "default_region"

Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2)]


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _error(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message reaches `errors[].message` verbatim."""
    return PydanticCustomError(kind, message)


def clean_areas(values: list[str]) -> list[str]:
    """Trimmed, inner whitespace collapsed, empties dropped, first spelling of each kept."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in values:
        area = " ".join(raw.split())
        if not area:
            continue
        if len(area) > AREA_MAX_LENGTH:
            raise _error("area_too_long", f"an area is at most {AREA_MAX_LENGTH} characters")
        key = area.casefold()
        if key not in seen:
            seen.add(key)
            out.append(area)
    if len(out) > MAX_AREAS:
        raise _error("too_many_areas", f"at most {MAX_AREAS} areas")
    return out


def check_time_zone(value: str) -> str:
    if value not in _zones():
        raise _error(
            "time_zone", f"unknown time zone {value!r}; use an IANA name like Europe/Madrid"
        )
    return value


def normalize_phone(value: str, info: ValidationInfo) -> str:
    """E.164 from what was typed, the `country` hint, or the default region, in that order."""
    region = info.data.get("country") or (info.context or {}).get(DEFAULT_REGION_KEY)
    try:
        return phones.normalize(value, region or get_settings().default_region)
    except phones.InvalidPhoneNumber as exc:
        raise _error("phone", str(exc)) from None


class _LeadFields(BaseModel):
    """Validators shared by create and update; every field is optional here."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    #: Region hint for a number written without a country code; not stored.
    country: str | None = Field(default=None, min_length=2, max_length=2)

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return phones.check_region(value)
        except phones.UnknownRegion as exc:
            raise _error("country", str(exc)) from None

    @field_validator("full_name", "email", "source", "assigned_to", "notes", check_fields=False)
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("email", check_fields=False)
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _EMAIL.match(value):
            raise _error("email", f"{value!r} is not an email address")
        local, _, domain = value.rpartition("@")
        return f"{local}@{domain.lower()}"

    @field_validator("budget_min", "budget_max", check_fields=False)
    @classmethod
    def _cents(cls, value: Decimal | None) -> Decimal | None:
        return None if value is None else value.quantize(_CENTS)

    @field_validator("budget_max", check_fields=False)
    @classmethod
    def _budget_order(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        low = info.data.get("budget_min")
        if value is not None and low is not None and low > value:
            raise _error("budget_range", f"budget_max {value} is below budget_min {low}")
        return value

    @field_validator("budget_currency", check_fields=False)
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        code = value.upper()
        if code not in ISO_4217:
            raise _error("currency", f"{value!r} is not an ISO 4217 currency code")
        return code

    @field_validator("areas", check_fields=False)
    @classmethod
    def _areas(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else clean_areas(value)

    @field_validator("time_zone", check_fields=False)
    @classmethod
    def _time_zone(cls, value: str | None) -> str | None:
        return None if value is None else check_time_zone(value)


class LeadCreate(_LeadFields):
    """A new lead. `intent`, `stage` and `score` are not here: the system sets them."""

    phone: str = Field(min_length=1, max_length=32)
    full_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=254)
    source: str | None = Field(default=None, max_length=100)
    assigned_to: str | None = Field(default=None, max_length=100)
    budget_min: Money | None = None
    budget_max: Money | None = None
    budget_currency: str | None = Field(default=None, max_length=3)
    areas: list[str] = Field(default_factory=list, max_length=MAX_AREAS * 4)
    property_type: PropertyType | None = None
    bedrooms: int | None = Field(default=None, ge=0, le=20)
    timeline: Timeline | None = None
    financing: Financing | None = None
    #: Unset: the broker's locale (es when the broker's is neither es nor en).
    language: Language | None = None
    #: Unset: derived from the phone number when the number pins one zone.
    time_zone: str | None = Field(default=None, max_length=64)
    notes: str | None = Field(default=None, max_length=10_000)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str, info: ValidationInfo) -> str:
        return normalize_phone(value, info)


class LeadUpdate(_LeadFields):
    """A partial change: only the fields sent are touched; `null` clears an optional one."""

    phone: str | None = Field(default=None, min_length=1, max_length=32)
    full_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=254)
    source: str | None = Field(default=None, max_length=100)
    assigned_to: str | None = Field(default=None, max_length=100)
    budget_min: Money | None = None
    budget_max: Money | None = None
    budget_currency: str | None = Field(default=None, max_length=3)
    areas: list[str] | None = Field(default=None, max_length=MAX_AREAS * 4)
    property_type: PropertyType | None = None
    bedrooms: int | None = Field(default=None, ge=0, le=20)
    timeline: Timeline | None = None
    financing: Financing | None = None
    language: Language | None = None
    time_zone: str | None = Field(default=None, max_length=64)
    notes: str | None = Field(default=None, max_length=10_000)

    @field_validator("phone", "language", "areas", mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        # Only runs for fields that were sent: an explicit null would break the row.
        if value is None:
            hint = " (send [] to clear)" if info.field_name == "areas" else ""
            raise _error("not_nullable", f"{info.field_name} cannot be null{hint}")
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else normalize_phone(value, info)


class LeadOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    full_name: str | None
    phone: str
    email: str | None
    source: str | None
    assigned_to: str | None
    stage: Stage
    stage_entered_at: datetime
    score: int
    budget_min: Decimal | None
    budget_max: Decimal | None
    budget_currency: str | None
    areas: list[str]
    property_type: PropertyType | None
    bedrooms: int | None
    timeline: Timeline | None
    financing: Financing | None
    language: Language
    time_zone: str | None
    notes: str | None
    intent: float | None
    do_not_call: bool
    dnc_reason: str | None
    dnc_at: datetime | None
    last_activity_at: datetime
    last_contacted_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class LeadFilters:
    """The list filters; every one is optional and they combine with AND."""

    stages: tuple[Stage, ...] = ()
    score_min: int | None = None
    score_max: int | None = None
    source: str | None = None
    assigned_to: str | None = None
    #: Leads with no activity for at least this many days.
    inactive_days: int | None = None
    q: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    do_not_call: bool | None = None
    languages: tuple[Language, ...] = ()


class ConsentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    channel: Channel
    source: str = Field(min_length=1, max_length=200, description="Where it was given")
    #: Unset: now. Not in the future: consent is a record of something that happened.
    granted_at: AwareDatetime | None = None
    text_shown: str = Field(min_length=1, max_length=10_000)


class ConsentRevoke(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str | None = Field(default=None, max_length=200)


class ConsentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    lead_id: int
    channel: Channel
    source: str
    granted_at: datetime
    text_shown: str
    revoked_at: datetime | None


class DoNotCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=1, max_length=200)


class NoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    body: str = Field(min_length=1, max_length=10_000)


class ActivityOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    lead_id: int
    kind: ActivityKind
    channel: Channel | None
    direction: Direction | None
    body: str | None
    data: dict[str, Any] | None
    occurred_at: datetime
    actor_type: ActorType
    actor_id: str | None


class RowErrorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    row: int = Field(description="Spreadsheet row number: the header is row 1")
    field: str | None
    message: str


class ImportReportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    rows: int
    created: int
    updated: int
    unchanged: int
    failed: int
    errors: list[RowErrorOut]
    ignored_columns: list[str]
