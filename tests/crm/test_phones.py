from __future__ import annotations

import pytest

from crm import phones


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+34 612 34 56 78", "US", "+34612345678"),
        ("612 34 56 78", "ES", "+34612345678"),
        ("0034 612 345 678", "ES", "+34612345678"),
        ("(212) 555-1234", "US", "+12125551234"),
        ("212.555.1234", "US", "+12125551234"),
        ("55 1234 5678", "MX", "+525512345678"),
        ("  +1 212 555 1234  ", "ES", "+12125551234"),
    ],
)
def test_normalize_to_e164(raw: str, region: str, expected: str) -> None:
    assert phones.normalize(raw, region) == expected


def test_normalize_is_idempotent() -> None:
    e164 = phones.normalize("612 34 56 78", "ES")
    assert phones.normalize(e164, "US") == e164


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", "US", "empty"),
        ("   ", "US", "empty"),
        ("abc", "US", "not a phone number"),
        ("+999 1234 5678", "US", "unknown country code"),
        ("123", "US", "wrong length"),
        ("612 34 56 78", "US", "wrong length"),
        ("(212) 555-1234", "MX", "no such number range in MX"),
    ],
)
def test_invalid_numbers_say_why(raw: str, region: str, reason: str) -> None:
    with pytest.raises(phones.InvalidPhoneNumber) as info:
        phones.normalize(raw, region)
    assert reason in str(info.value)


def test_check_region_upper_cases_and_refuses_unknown() -> None:
    assert phones.check_region(" es ") == "ES"
    assert phones.check_region("mx") == "MX"
    for bad in ("ZZ", "", "ESP", "1"):
        with pytest.raises(phones.UnknownRegion):
            phones.check_region(bad)


def test_digits_keeps_ascii_digits_only() -> None:
    assert phones.digits("+34 (612) 34-56.78") == "34612345678"
    assert phones.digits("x²³y") == ""
    assert phones.digits("") == ""


def test_time_zone_from_number() -> None:
    assert phones.time_zone_for("+34612345678") == "Europe/Madrid"
    assert phones.time_zone_for("+525512345678") == "America/Mexico_City"
    assert phones.time_zone_for("+12125551234") == "America/New_York"
    assert phones.region_of("+34612345678") == "ES"
