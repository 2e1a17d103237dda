"""Template checking, rendering and formatting: pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from crm.enums import Channel, Language
from crm.templates import formatting
from crm.templates.render import (
    BODY_LIMITS,
    CATALOGUE,
    Problem,
    RenderError,
    check_source,
    check_template,
    render,
    variables_used,
)


def problems_of(source: str) -> list[tuple[int | None, str, str]]:
    return [(p.line, p.kind, p.message) for p in check_source(source, field="body")]


# -- checking -----------------------------------------------------------------------------


def test_a_valid_template_has_no_problems() -> None:
    source = (
        "Hola {{ lead.first_name }},\n"
        "{% if lead.areas %}Buscamos en {{ lead.areas }}.{% endif %}\n"
        "{% for word in ['a', 'b'] %}{{ word | upper }}{{ loop.index }}{% endfor %}\n"
        "{% set who = broker.name %}{{ who }} — {{ lead['full_name'] }}\n"
        "{{ optout_text }}"
    )
    assert check_source(source, field="body") == []


def test_unknown_variables_are_listed_each_with_its_line() -> None:
    source = "Hola {{ lead.first_name }}\n{{ lead.nickname }} {{ foo }}\n\n{{ lead.budjet_max }}"
    assert problems_of(source) == [
        (2, "unknown_variable", "unknown variable lead.nickname"),
        (2, "unknown_variable", "unknown variable foo"),
        (4, "unknown_variable", "unknown variable lead.budjet_max (did you mean lead.budget_max?)"),
    ]


def test_a_group_cannot_be_used_whole_or_by_computed_key() -> None:
    whole, computed = problems_of("{{ lead }}\n{{ broker[field] }}")[:2]
    assert whole[0] == 1
    assert whole[2].startswith("lead is a group of variables; use one of: lead.first_name")
    assert computed[0] == 2
    assert computed[2].startswith("broker is a group of variables")


def test_a_syntax_error_gives_its_line() -> None:
    [(line, kind, message)] = problems_of("Hola\n\n{% if lead.first_name %}sin cerrar")
    assert (line, kind) == (3, "template_syntax")
    assert "endif" in message


def test_unknown_filters_includes_and_private_attributes_are_refused() -> None:
    found = problems_of(
        "{{ lead.first_name | shout }}\n{% include 'other.txt' %}\n{{ lead.first_name.__class__ }}"
    )
    assert (1, "template_syntax", "No filter named 'shout'.") in found
    assert (2, "template_syntax", "templates cannot extend, include or import other templates") in (
        found
    )
    assert (3, "template_syntax", "attribute __class__ is private; templates cannot read it") in (
        found
    )


def test_check_template_applies_channel_rules_and_checks_both_fields() -> None:
    email = check_template(channel=Channel.email, subject=None, body="Hola")
    assert [(p.field, p.kind) for p in email] == [("subject", "channel_rule")]
    sms = check_template(channel=Channel.sms, subject="Hi", body="Hola")
    assert [(p.field, p.message) for p in sms] == [("subject", "sms messages have no subject")]
    both = check_template(channel=Channel.email, subject="{{ bad }}", body="{{ worse }}")
    assert [(p.field, p.line) for p in both] == [("subject", 1), ("body", 1)]
    empty = check_template(channel=Channel.whatsapp, subject=None, body="   ")
    assert [p.message for p in empty] == ["the body is empty"]


def test_problem_as_api_error() -> None:
    problem = Problem("body", "unknown variable foo", "unknown_variable", 3)
    assert problem.as_error() == {
        "field": "body",
        "message": "line 3: unknown variable foo",
        "type": "unknown_variable",
        "line": 3,
    }


def test_variables_used_in_catalogue_order() -> None:
    used = variables_used("{{ optout_text }} {{ lead.first_name }} {{ visit.date }}")
    assert used == ["lead.first_name", "visit.date", "optout_text"]
    assert set(used) <= set(CATALOGUE)


# -- rendering ----------------------------------------------------------------------------


def test_text_channels_are_rendered_verbatim() -> None:
    out = render(
        channel=Channel.sms,
        subject=None,
        body="  Hola {{ lead.full_name }}.\n{{ optout_text }}  ",
        values={"lead.full_name": "Smith & <Co>", "optout_text": "Responde BAJA."},
    )
    assert out.subject is None
    assert out.body == "Hola Smith & <Co>.\nResponde BAJA."


def test_email_body_is_escaped_and_subject_is_one_plain_line() -> None:
    out = render(
        channel=Channel.email,
        subject="Visita para {{ lead.full_name }}",
        body="<p>Hola {{ lead.full_name }}</p>",
        values={"lead.full_name": "Smith & <Co>\r\nBcc: all@example.com"},
    )
    assert out.subject == "Visita para Smith & <Co> Bcc: all@example.com"
    assert out.body == "<p>Hola Smith &amp; &lt;Co&gt;\r\nBcc: all@example.com</p>"


def test_a_guarded_optional_value_renders_the_other_branch() -> None:
    body = "Hola{% if lead.first_name %} {{ lead.first_name }}{% else %} de nuevo{% endif %}."
    assert render(channel=Channel.sms, subject=None, body=body, values={}).body == "Hola de nuevo."
    with_name = render(
        channel=Channel.sms, subject=None, body=body, values={"lead.first_name": "Ana"}
    )
    assert with_name.body == "Hola Ana."


def test_every_missing_value_is_named() -> None:
    with pytest.raises(RenderError) as exc:
        render(
            channel=Channel.email,
            subject="{{ visit.date }}",
            body="{{ lead.first_name }}: {{ visit.date }} {{ visit.time }} {{ agent.name }}",
            values={"lead.first_name": "Ana", "visit.time": None},
        )
    assert [(p.field, p.kind) for p in exc.value.problems] == [
        ("visit.date", "missing_variable"),
        ("visit.time", "missing_variable"),
        ("agent.name", "missing_variable"),
    ]
    assert exc.value.problems[0].message == "no value for visit.date"


def test_a_missing_value_used_in_arithmetic_is_still_named() -> None:
    with pytest.raises(RenderError) as exc:
        render(
            channel=Channel.sms,
            subject=None,
            body="{{ visit.duration_minutes + 15 }} min",
            values={},
        )
    assert [p.field for p in exc.value.problems] == ["visit.duration_minutes"]


@pytest.mark.parametrize("channel", [Channel.sms, Channel.whatsapp, Channel.telegram])
def test_body_length_limits(channel: Channel) -> None:
    limit = BODY_LIMITS[channel]
    ok = render(
        channel=channel, subject=None, body="{{ agent.name }}", values={"agent.name": "a" * limit}
    )
    assert len(ok.body) == limit
    with pytest.raises(RenderError) as exc:
        render(
            channel=channel,
            subject=None,
            body="{{ agent.name }}!",
            values={"agent.name": "a" * limit},
        )
    [problem] = exc.value.problems
    assert problem.kind == "too_long"
    assert f"the limit is {limit}" in problem.message


def test_an_email_whose_subject_renders_empty_is_refused() -> None:
    with pytest.raises(RenderError) as exc:
        render(
            channel=Channel.email,
            subject="{% if lead.first_name %}{{ lead.first_name }}{% endif %}",
            body="Hola",
            values={},
        )
    assert [p.message for p in exc.value.problems] == ["the subject rendered empty"]


def test_the_sandbox_refuses_what_slips_past_the_check() -> None:
    with pytest.raises(RenderError) as exc:
        render(
            channel=Channel.sms,
            subject=None,
            body="{{ lead.first_name.__class__.__mro__ }}",
            values={"lead.first_name": "Ana"},
        )
    assert "unsafe" in exc.value.problems[0].message


# -- formatting ---------------------------------------------------------------------------

LATE_EVENING_UTC = datetime(2025, 5, 13, 22, 30, tzinfo=UTC)  # already the 14th in Madrid


def test_dates_on_the_readers_calendar_and_in_their_words() -> None:
    assert (
        formatting.format_date(LATE_EVENING_UTC, "Europe/Madrid", Language.es)
        == "miércoles, 14 de mayo de 2025"
    )
    assert (
        formatting.format_date(LATE_EVENING_UTC, "America/New_York", Language.en)
        == "Tuesday, May 13, 2025"
    )
    assert formatting.format_time(LATE_EVENING_UTC, "Europe/Madrid", Language.es) == "00:30"
    assert formatting.format_time(LATE_EVENING_UTC, "America/New_York", Language.en) == "6:30 PM"
    noon = datetime(2025, 5, 14, 12, 5, tzinfo=UTC)
    assert formatting.format_time(noon, "UTC", Language.en) == "12:05 PM"
    assert formatting.format_time(noon.replace(hour=0), None, Language.en) == "12:05 AM"


def test_an_unknown_time_zone_falls_back_to_utc() -> None:
    assert formatting.format_time(LATE_EVENING_UTC, "Mars/Olympus", Language.es) == "22:30"


@pytest.mark.parametrize(
    ("amount", "currency", "language", "expected"),
    [
        (Decimal("350000.00"), "EUR", Language.es, "350.000 €"),
        (Decimal("350000.00"), "EUR", Language.en, "€350,000"),
        (Decimal("1250.50"), "usd", Language.en, "$1,250.50"),
        (Decimal("1250.50"), "USD", Language.es, "1.250,50 $"),
        (Decimal("2000000"), "MXN", Language.es, "2.000.000 MXN"),
        (900, None, Language.en, "900"),
    ],
)
def test_money(
    amount: Decimal | int, currency: str | None, language: Language, expected: str
) -> None:
    assert formatting.format_money(amount, currency, language) == expected


def test_lists_names_and_labels() -> None:
    assert formatting.join_list(["Chamberí", "Retiro", "Salamanca"], Language.es) == (
        "Chamberí, Retiro y Salamanca"
    )
    assert formatting.join_list(["Brooklyn", " Queens "], Language.en) == "Brooklyn and Queens"
    assert formatting.join_list(["", "Sol"], Language.es) == "Sol"
    assert formatting.join_list([], Language.es) == ""
    assert formatting.first_name("  Ana  María García ") == "Ana"
    assert formatting.first_name(None) is None
    assert formatting.property_type_label("apartment", Language.es) == "piso"
    assert formatting.property_type_label("land", Language.en) == "plot of land"
