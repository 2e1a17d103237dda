"""Message templates: CRUD, validation, preview and rendering for a lead, on PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import AuditLog
from crm.enums import Channel, Language
from crm.errors import InvalidInput, NotFound
from crm.leads.models import Lead, PropertyType
from crm.pipeline.service import enter_initial
from crm.templates import service as templates
from crm.templates.models import MessageTemplate
from crm.timeutil import utcnow
from crm.visits import service as visits
from tests.conftest import Tenant

URL = "/api/v1/templates"


def make_lead(db: Session, broker_id: int, **fields: Any) -> Lead:
    fields.setdefault("full_name", "Ana García")
    lead = Lead(broker_id=broker_id, phone=f"+3461{random.randint(1000000, 9999999)}", **fields)
    db.add(lead)
    db.flush()
    enter_initial(db, lead=lead, actor=Actor.system())
    db.commit()
    return lead


def payload(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "welcome",
        "channel": "sms",
        "language": "es",
        "body": "Hola {{ lead.first_name }}, soy {{ agent.name }} de {{ broker.name }}.",
        **overrides,
    }


async def create(client: httpx.AsyncClient, tenant: Tenant, **overrides: Any) -> httpx.Response:
    return await client.post(URL, json=payload(**overrides), headers=tenant.headers)


def audit_actions(db: Session, template_id: int) -> list[str]:
    return list(
        db.scalars(
            select(AuditLog.action)
            .where(
                AuditLog.object_type == "message_template",
                AuditLog.object_id == str(template_id),
            )
            .order_by(AuditLog.id)
        )
    )


# -- create, read, update, delete ----------------------------------------------------------


async def test_create_and_get(client: httpx.AsyncClient, db: Session, tenant: Tenant) -> None:
    r = await create(client, tenant)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["variables"] == ["lead.first_name", "broker.name", "agent.name"]
    assert created["subject"] is None
    got = await client.get(f"{URL}/{created['id']}", headers=tenant.headers)
    assert got.json() == created
    assert audit_actions(db, created["id"]) == ["template.create"]


async def test_name_channel_language_is_unique_per_broker(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    first = await create(client, tenant)
    again = await create(client, tenant)
    assert again.status_code == 409
    assert again.json()["existing_template_id"] == first.json()["id"]
    assert (await create(client, tenant, language="en")).status_code == 201
    assert (await create(client, tenant, channel="whatsapp")).status_code == 201
    assert (await create(client, other_tenant)).status_code == 201


async def test_invalid_templates_are_refused_with_every_problem(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    r = await create(
        client,
        tenant,
        body="Hola {{ lead.nickname }}\n{{ lead.first_name | shout }}\n{{ secret }}",
    )
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    errors = r.json()["errors"]
    assert [(e["field"], e["line"], e["type"]) for e in errors] == [
        ("body", 1, "unknown_variable"),
        ("body", 3, "unknown_variable"),
        ("body", 2, "template_syntax"),
    ]
    assert errors[0]["message"] == "line 1: unknown variable lead.nickname"

    syntax = await create(client, tenant, body="Hola\n{% if lead.first_name %}")
    [error] = syntax.json()["errors"]
    assert (error["line"], error["type"]) == (2, "template_syntax")

    no_subject = await create(client, tenant, channel="email", body="<p>Hola</p>")
    assert no_subject.status_code == 422
    assert no_subject.json()["errors"][0]["field"] == "subject"

    listed = await client.get(URL, headers=tenant.headers)
    assert listed.json()["total"] == 0


async def test_list_filters(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    a = (await create(client, tenant)).json()
    b = (await create(client, tenant, language="en", body="Hi {{ lead.first_name }}")).json()
    c = (
        await create(
            client,
            tenant,
            name="reminder",
            channel="email",
            subject="Su visita",
            body="<p>{{ visit.date }}</p>",
        )
    ).json()
    await create(client, other_tenant)

    async def ids(**params: str) -> list[int]:
        r = await client.get(URL, params=params, headers=tenant.headers)
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["items"]]

    assert await ids(order="asc", sort="created_at") == [a["id"], b["id"], c["id"]]
    assert await ids(channel="email") == [c["id"]]
    assert await ids(language="en") == [b["id"]]
    assert sorted(await ids(name="welcome")) == [a["id"], b["id"]]
    assert await ids(name="welcome", language="es") == [a["id"]]
    assert (
        await client.get(URL, params={"channel": "fax"}, headers=tenant.headers)
    ).status_code == 422


async def test_update_rechecks_the_whole_template(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    tpl = (await create(client, tenant)).json()
    other = (await create(client, tenant, name="other")).json()
    url = f"{URL}/{tpl['id']}"

    ok = await client.patch(url, json={"body": "Hola {{ lead.full_name }}"}, headers=tenant.headers)
    assert ok.status_code == 200
    assert ok.json()["variables"] == ["lead.full_name"]

    bad = await client.patch(url, json={"body": "{{ lead.age }}"}, headers=tenant.headers)
    assert bad.status_code == 422
    to_email = await client.patch(url, json={"channel": "email"}, headers=tenant.headers)
    assert to_email.status_code == 422
    assert to_email.json()["errors"][0]["field"] == "subject"
    as_email = await client.patch(
        url,
        json={"channel": "email", "subject": "Hola {{ lead.first_name }}"},
        headers=tenant.headers,
    )
    assert as_email.status_code == 200
    clash = await client.patch(
        f"{URL}/{other['id']}",
        json={"name": "welcome", "channel": "email", "subject": "x"},
        headers=tenant.headers,
    )
    assert clash.status_code == 409
    null = await client.patch(url, json={"body": None}, headers=tenant.headers)
    assert null.status_code == 422

    unchanged = await client.patch(url, json={"name": "welcome"}, headers=tenant.headers)
    assert unchanged.status_code == 200
    current = (await client.get(url, headers=tenant.headers)).json()
    assert current["body"] == "Hola {{ lead.full_name }}"
    assert current["channel"] == "email"
    assert audit_actions(db, tpl["id"]) == ["template.create", "template.update", "template.update"]


async def test_delete(client: httpx.AsyncClient, db: Session, tenant: Tenant) -> None:
    tpl = (await create(client, tenant)).json()
    r = await client.delete(f"{URL}/{tpl['id']}", headers=tenant.headers)
    assert r.status_code == 204
    assert (await client.get(f"{URL}/{tpl['id']}", headers=tenant.headers)).status_code == 404
    assert audit_actions(db, tpl["id"]) == ["template.create", "template.delete"]
    assert (await create(client, tenant)).status_code == 201  # the name is free again


async def test_another_brokers_template_is_not_found(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    tpl = (await create(client, tenant)).json()
    url = f"{URL}/{tpl['id']}"
    h = other_tenant.headers
    assert (await client.get(url, headers=h)).status_code == 404
    assert (await client.patch(url, json={"name": "x"}, headers=h)).status_code == 404
    assert (await client.post(f"{url}/preview", json={}, headers=h)).status_code == 404
    assert (await client.delete(url, headers=h)).status_code == 404
    assert (await client.get(url, headers=tenant.headers)).status_code == 200


async def test_variable_catalogue(client: httpx.AsyncClient, tenant: Tenant) -> None:
    r = await client.get(f"{URL}/variables", headers=tenant.headers)
    names = [v["name"] for v in r.json()]
    assert {"lead.first_name", "broker.legal_name", "visit.date", "optout_text"} <= set(names)


# -- preview and rendering for a lead ---------------------------------------------------


async def test_preview_with_a_lead(
    client: httpx.AsyncClient, db: Session, make_tenant: Any
) -> None:
    tenant = make_tenant(name="Casa Sol", legal_name="Casa Sol Inmobiliaria S.L.")
    lead = make_lead(
        db,
        tenant.id,
        full_name="Ana María García",
        areas=["Chamberí", "Retiro"],
        budget_max=Decimal("350000"),
        budget_currency="EUR",
        property_type=PropertyType.apartment,
    )
    tpl = (
        await create(
            client,
            tenant,
            body=(
                "Hola {{ lead.first_name }}: {{ lead.property_type }} en {{ lead.areas }} "
                "hasta {{ lead.budget_max }}. {{ agent.name }}, {{ broker.legal_name }}. "
                "{{ optout_text }}"
            ),
        )
    ).json()
    r = await client.post(
        f"{URL}/{tpl['id']}/preview",
        json={"lead_id": lead.id, "variables": {"agent.name": "Lucía"}},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()["body"]
    assert body == (
        "Hola Ana: piso en Chamberí y Retiro hasta 350.000 €. Lucía, Casa Sol Inmobiliaria S.L.. "
        "Responde BAJA para no recibir más mensajes."
    )
    assert r.json()["length"] == len(body)
    assert r.json()["subject"] is None


async def test_preview_names_missing_and_unknown_variables(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id)
    tpl = (await create(client, tenant)).json()
    url = f"{URL}/{tpl['id']}/preview"

    missing = await client.post(url, json={"lead_id": lead.id}, headers=tenant.headers)
    assert missing.status_code == 422
    assert [(e["field"], e["type"]) for e in missing.json()["errors"]] == [
        ("agent.name", "missing_variable")
    ]
    unknown = await client.post(
        url, json={"variables": {"agent.name": "Lucía", "lead.age": 3}}, headers=tenant.headers
    )
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "variables.lead.age"

    foreign = make_lead(db, other_tenant.id)
    hidden = await client.post(url, json={"lead_id": foreign.id}, headers=tenant.headers)
    assert hidden.status_code == 404

    no_lead = await client.post(
        url,
        json={"variables": {"agent.name": "Lucía", "lead.first_name": "Pepe"}},
        headers=tenant.headers,
    )
    assert no_lead.status_code == 200
    assert no_lead.json()["body"].startswith("Hola Pepe, soy Lucía de Broker ")


def test_render_for_lead_uses_the_next_visit_on_the_leads_clock(
    db: Session, make_tenant: Any
) -> None:
    tenant = make_tenant(time_zone="America/New_York")
    actor = Actor.system("tests")
    madrid = make_lead(db, tenant.id, time_zone="Europe/Madrid")
    no_zone = make_lead(db, tenant.id, full_name="John Smith")
    day = (utcnow() + timedelta(days=10)).date()
    at = datetime(day.year, day.month, day.day, 22, 30, tzinfo=UTC)
    later = at + timedelta(days=5)
    for lead in (madrid, no_zone):
        visits.book(
            db,
            broker_id=tenant.id,
            lead_id=lead.id,
            scheduled_at=later,
            location="Far",
            actor=actor,
        )
        visits.book(
            db, broker_id=tenant.id, lead_id=lead.id, scheduled_at=at, location="Sol 3", actor=actor
        )
    es = templates.create(
        db,
        broker_id=tenant.id,
        name="reminder",
        channel=Channel.whatsapp,
        language=Language.es,
        body="{{ visit.date }} a las {{ visit.time }} en {{ visit.location }}",
        actor=actor,
    )
    en = templates.create(
        db,
        broker_id=tenant.id,
        name="reminder",
        channel=Channel.whatsapp,
        language=Language.en,
        body="{{ visit.date }} at {{ visit.time }}, {{ visit.location }}",
        actor=actor,
    )
    db.commit()

    def spoken(tz: str, language: Language) -> tuple[str, str]:
        from crm.templates import formatting

        return formatting.format_date(at, tz, language), formatting.format_time(at, tz, language)

    date, time = spoken("Europe/Madrid", Language.es)
    assert templates.render_for_lead(db, template=es, lead=madrid).body == (
        f"{date} a las {time} en Sol 3"
    )
    assert time == "00:30" or time == "23:30"  # the next day in Madrid, summer or winter
    date, time = spoken("America/New_York", Language.en)
    assert (
        templates.render_for_lead(db, template=en, lead=no_zone).body == f"{date} at {time}, Sol 3"
    )
    override = templates.render_for_lead(
        db, template=en, lead=no_zone, extra={"visit.location": "Gran Vía 1"}
    )
    assert override.body.endswith("Gran Vía 1")


def test_render_for_lead_without_a_visit_names_what_is_missing(
    db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id)
    tpl = templates.create(
        db,
        broker_id=tenant.id,
        name="reminder",
        channel=Channel.sms,
        language=Language.es,
        body="{{ visit.date }} {{ visit.time }}",
        actor=Actor.system(),
    )
    db.commit()
    with pytest.raises(InvalidInput) as exc:
        templates.render_for_lead(db, template=tpl, lead=lead)
    assert [e["field"] for e in exc.value.errors] == ["visit.date", "visit.time"]
    foreign = make_lead(db, other_tenant.id)
    with pytest.raises(NotFound):
        templates.render_for_lead(db, template=tpl, lead=foreign)


def test_find_for_lead_prefers_the_leads_language(db: Session, tenant: Tenant) -> None:
    actor = Actor.system()
    made: dict[Language, MessageTemplate] = {}
    for language in (Language.es, Language.en):
        made[language] = templates.create(
            db,
            broker_id=tenant.id,
            name="hello",
            channel=Channel.telegram,
            language=language,
            body="{{ lead.first_name }}",
            actor=actor,
        )
    db.commit()
    english = make_lead(db, tenant.id, language=Language.en)
    found = templates.find_for_lead(
        db, broker_id=tenant.id, name="hello", channel=Channel.telegram, lead=english
    )
    assert found is made[Language.en]
    assert (
        templates.find_for_lead(
            db, broker_id=tenant.id, name="hello", channel=Channel.sms, lead=english
        )
        is None
    )
