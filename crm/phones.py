"""Phone numbers: E.164 normalisation and the time zone a number implies."""

from __future__ import annotations

import phonenumbers
from phonenumbers import timezone as pn_timezone


class InvalidPhoneNumber(ValueError):
    """Raised with a reason a person can act on."""


class UnknownRegion(ValueError):
    """A country hint that is not an ISO 3166-1 alpha-2 code phonenumbers knows."""


_REASONS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


def normalize(raw: str, default_region: str = "US") -> str:
    """`raw` as E.164 (`+5215512345678`), or `InvalidPhoneNumber` saying why not."""
    text = (raw or "").strip()
    if not text:
        raise InvalidPhoneNumber("phone number is empty")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        reason = _REASONS.get(exc.error_type, str(exc))
        raise InvalidPhoneNumber(f"{text!r} is not a valid phone number: {reason}") from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidPhoneNumber(f"{text!r} is not a valid phone number: wrong length")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber(
            f"{text!r} is not a valid phone number: no such number range in "
            f"{phonenumbers.region_code_for_number(number) or 'any region'}"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_region(code: str) -> str:
    """`code` as the upper-case region phonenumbers expects, or `UnknownRegion`."""
    region = (code or "").strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise UnknownRegion(
            f"{code!r} is not a known country code; use ISO 3166-1 alpha-2, e.g. ES"
        )
    return region


def digits(text: str) -> str:
    """Only the digits of `text`: how people type a number into a search box."""
    return "".join(ch for ch in text if ch in "0123456789")


#: Where a country's numbers span zones but nearly all people live in one, that zone.
#: Countries left out (US, CA, BR, AU, RU, …) are too wide to guess from a number.
_PRIMARY_ZONE = {
    "ES": "Europe/Madrid",
    "MX": "America/Mexico_City",
    "CL": "America/Santiago",
    "EC": "America/Guayaquil",
    "PT": "Europe/Lisbon",
    "AR": "America/Argentina/Buenos_Aires",
    "CO": "America/Bogota",
    "PE": "America/Lima",
}


def time_zones_for(e164: str) -> list[str]:
    """Every IANA zone the numbering plan allows for this number (for calling windows)."""
    number = phonenumbers.parse(e164, None)
    return [z for z in pn_timezone.time_zones_for_number(number) if z != "Etc/Unknown"]


def time_zone_for(e164: str) -> str | None:
    """The lead's zone when the number pins it: one candidate, or a country's main zone.

    A US mobile can be in any US zone: None there, so nobody schedules on a guess.
    """
    zones = time_zones_for(e164)
    if len(zones) == 1:
        return zones[0]
    primary = _PRIMARY_ZONE.get(region_of(e164) or "")
    return primary if primary in zones else None


def region_of(e164: str) -> str | None:
    return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
