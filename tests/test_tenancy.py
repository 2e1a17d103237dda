"""Every route of the app, called by one broker against another broker's data.

The route list comes from the app's own OpenAPI document, and every route must have a
case here: a new route without one fails this test, so tenancy is never opt-in. Routes
with ids in the path get the owner's ids and must answer 404 (never 403, never 200);
routes without ids run as the intruder and must show none of the owner's data. Last,
everything the owner has in the database is compared before and after: no route may
have changed it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

import crm.models
from crm.actor import Actor
from crm.brokers import service as broker_service
from crm.calls import service as call_service
from crm.calls.models import TurnRole
from crm.db import Base, get_sessionmaker
from crm.enums import Channel, Language
from crm.leads import service as lead_service
from crm.leads.models import Direction
from crm.leads.schemas import LeadCreate
from crm.templates import service as template_service
from crm.timeutil import utcnow
from crm.visits import service as visit_service
from tests.conftest import Tenant

#: Not broker routes: health checks, and Twilio's webhooks, which are authenticated by
#: Twilio's signature instead of an API key (tests/voice/test_twilio_webhooks.py).
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/twilio/voice"),
    ("POST", "/twilio/status"),
    ("POST", "/twilio/stream-status"),
    ("POST", "/twilio/amd"),
}


@dataclass
class World:
    marker: str
    owner: Tenant
    intruder: Tenant
    ids: dict[str, int]
    intruder_ids: dict[str, int]


def _future() -> str:
    return (utcnow() + timedelta(days=3)).isoformat()


#: Bodies for routes that take one. Valid on their own, so a 404 can only be tenancy.
def _bodies(w: World) -> dict[tuple[str, str], Any]:
    return {
        ("PATCH", "/api/v1/broker"): {"legal_name": "Intruder S.L."},
        ("POST", "/api/v1/broker/phone-numbers"): {"number": _fresh_number()},
        ("POST", "/api/v1/broker/api-keys"): {"name": "intruder"},
        ("POST", "/api/v1/leads"): {"phone": _fresh_mobile(), "full_name": "Intruder lead"},
        ("PATCH", "/api/v1/leads/{lead_id}"): {"full_name": "Stolen"},
        ("POST", "/api/v1/leads/{lead_id}/notes"): {"body": "intruder note"},
        ("POST", "/api/v1/leads/{lead_id}/consents"): {
            "channel": "call",
            "source": "intruder",
            "text_shown": "yes",
        },
        ("POST", "/api/v1/leads/{lead_id}/consents/{consent_id}/revoke"): {"reason": "x"},
        ("POST", "/api/v1/leads/{lead_id}/do-not-call"): {"reason": "intruder"},
        ("DELETE", "/api/v1/leads/{lead_id}/do-not-call"): {"reason": "intruder"},
        ("POST", "/api/v1/leads/{lead_id}/stage"): {"stage": "contacted", "reason": "intruder"},
        ("PUT", "/api/v1/scoring/weights"): {"recency_half_life_days": 10},
        ("PUT", "/api/v1/pipeline/rot-days"): {"new": 3},
        ("POST", "/api/v1/visits"): {"lead_id": w.ids["lead_id"], "scheduled_at": _future()},
        ("PATCH", "/api/v1/visits/{visit_id}"): {"notes": "intruder"},
        ("POST", "/api/v1/templates"): {
            "name": f"intruder {uuid.uuid4().hex[:6]}",
            "channel": "sms",
            "language": "es",
            "body": "Hola {{ lead.first_name }}",
        },
        ("PATCH", "/api/v1/templates/{template_id}"): {"body": "stolen"},
        ("POST", "/api/v1/templates/{template_id}/preview"): {"lead_id": w.ids["lead_id"]},
        ("POST", "/api/v1/calls"): {"lead_id": w.ids["lead_id"]},
    }


#: Routes without ids in the path, and the statuses the intruder may get there.
#: POST /visits names the owner's lead in its body, so it must be a 404 too.
NO_ID_ROUTES: dict[tuple[str, str], set[int]] = {
    ("GET", "/api/v1/broker"): {200},
    ("PATCH", "/api/v1/broker"): {200},
    ("POST", "/api/v1/broker/phone-numbers"): {201},
    ("GET", "/api/v1/broker/api-keys"): {200},
    ("POST", "/api/v1/broker/api-keys"): {201},
    ("POST", "/api/v1/leads"): {201},
    ("GET", "/api/v1/leads"): {200},
    ("POST", "/api/v1/leads/import"): {200},
    ("GET", "/api/v1/scoring/weights"): {200},
    ("PUT", "/api/v1/scoring/weights"): {200},
    ("GET", "/api/v1/pipeline/stages"): {200},
    ("GET", "/api/v1/pipeline/metrics"): {200},
    ("GET", "/api/v1/pipeline/rotting"): {200},
    ("GET", "/api/v1/pipeline/rot-days"): {200},
    ("PUT", "/api/v1/pipeline/rot-days"): {200},
    ("POST", "/api/v1/visits"): {404},
    ("GET", "/api/v1/visits"): {200},
    ("GET", "/api/v1/calls"): {200},
    # Phoning the owner's lead (named in the body) is a 404, and nothing is dialled.
    ("POST", "/api/v1/calls"): {404},
    ("GET", "/api/v1/templates/variables"): {200},
    ("GET", "/api/v1/templates"): {200},
    ("POST", "/api/v1/templates"): {201},
    ("GET", "/api/v1/audit"): {200},
    # Twilio's webhooks take no API key: an unsigned request is refused outright.
    ("POST", "/twilio/voice"): {403},
    ("POST", "/twilio/status"): {403},
    ("POST", "/twilio/stream-status"): {403},
    ("POST", "/twilio/amd"): {403},
}


#: Intruder-owned objects combined with the owner's: the cross-references must 404 too.
def _cross_cases(w: World) -> list[tuple[str, str, Any]]:
    return [
        (
            "POST",
            f"/api/v1/templates/{w.intruder_ids['template_id']}/preview",
            {"lead_id": w.ids["lead_id"]},
        ),
        # The compliance verdict with every query parameter set is still the owner's only.
        (
            "GET",
            f"/api/v1/leads/{w.ids['lead_id']}/compliance"
            "?channel=whatsapp&automated=false&at=2026-06-10T12:00:00%2B00:00",
            None,
        ),
    ]


#: Filters naming the owner's objects must come back empty, not with the owner's rows.
def _filtered_lists(w: World) -> list[str]:
    lead = w.ids["lead_id"]
    return [
        f"/api/v1/calls?lead_id={lead}",
        f"/api/v1/visits?lead_id={lead}",
        f"/api/v1/audit?object_type=lead&object_id={lead}",
        f"/api/v1/leads?q={w.marker}",
    ]


_counter = iter(range(10**6))


def _fresh_number() -> str:
    return f"+1212555{uuid.uuid4().int % 10_000:04d}"


def _fresh_mobile() -> str:
    return f"+3461{uuid.uuid4().int % 10**7:07d}"


def _build(db: Session, tenant: Tenant, marker: str) -> dict[str, int]:
    actor = Actor.system("tenancy-test")
    broker = broker_service.get_or_raise(db, broker_id=tenant.id)
    number = broker_service.add_phone_number(
        db, broker=broker, number=_fresh_number(), label=marker, actor=actor
    )
    key, _ = broker_service.create_api_key(db, broker=broker, actor=actor, name=marker)
    lead = lead_service.create(
        db,
        broker_id=tenant.id,
        data=LeadCreate(phone=_fresh_mobile(), full_name=f"{marker} Lead", email=f"{marker}@x.es"),
        actor=actor,
    )
    consent = lead_service.add_consent(
        db, lead=lead, channel=Channel.call, source=marker, text_shown=marker, actor=actor
    )
    lead_service.add_note(db, lead=lead, body=f"{marker} note", actor=actor)
    lead_service.log_message(
        db,
        lead=lead,
        channel=Channel.whatsapp,
        direction=Direction.inbound,
        body=f"{marker} message",
        actor=actor,
    )
    visit = visit_service.book(
        db,
        broker_id=tenant.id,
        lead_id=lead.id,
        scheduled_at=utcnow() + timedelta(days=2),
        location=f"{marker} street",
        actor=actor,
    )
    call = call_service.create_call(
        db,
        broker_id=tenant.id,
        lead_id=lead.id,
        direction=Direction.outbound,
        from_number=number.e164,
        to_number=lead.phone,
        actor=actor,
        twilio_call_sid=f"CA{uuid.uuid4().hex}",
    )
    call_service.add_turn(
        db, call=call, role=TurnRole.caller, text=f"{marker} says hi", start_ms=0, end_ms=900
    )
    call_service.set_outcome(
        db, call=call, summary=f"{marker} summary", extracted={"marker": marker}, actor=actor
    )
    template = template_service.create(
        db,
        broker_id=tenant.id,
        name=f"{marker} template",
        channel=Channel.sms,
        language=Language.es,
        body=f"{marker} {{{{ lead.first_name }}}}",
        actor=actor,
    )
    db.flush()
    return {
        "lead_id": lead.id,
        "consent_id": consent.id,
        "visit_id": visit.id,
        "call_id": call.id,
        "template_id": template.id,
        "key_id": key.id,
        "number_id": number.id,
    }


def _owned_rows(db: Session, broker_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the broker owns, as plain tuples (bookkeeping columns left out)."""
    _ = crm.models  # every table registered
    dump: dict[str, list[tuple[Any, ...]]] = {}
    for table in Base.metadata.sorted_tables:
        column = table.c.get("broker_id") if table.name != "broker" else table.c.id
        if column is None:
            continue
        columns = [c for c in table.c if c.name != "last_used_at"]
        rows = db.execute(select(*columns).where(column == broker_id).order_by(table.c.id)).all()
        dump[table.name] = [tuple(r) for r in rows]
    return dump


@pytest.fixture
def world(make_tenant: Callable[..., Tenant]) -> World:
    marker = f"OWNER{uuid.uuid4().hex[:10]}"
    owner, intruder = make_tenant(), make_tenant()
    with get_sessionmaker()() as db:
        ids = _build(db, owner, marker)
        intruder_ids = _build(db, intruder, f"INTRUDER{uuid.uuid4().hex[:8]}")
        db.commit()
    return World(marker, owner, intruder, ids, intruder_ids)


def _routes(client_app_spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, operations in client_app_spec["paths"].items()
        for method in operations
    ]


async def _call(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    if path.endswith("/leads/import"):
        files = {"file": ("leads.csv", f"phone,name\n{_fresh_mobile()},Imported\n", "text/csv")}
        return await client.request(method, path, files=files, headers=headers)
    return await client.request(method, path, json=body, headers=headers)


async def test_no_route_reaches_another_brokers_data(
    client: httpx.AsyncClient, world: World
) -> None:
    spec = (await client.get("/openapi.json")).json()
    routes = _routes(spec)
    bodies = _bodies(world)
    with get_sessionmaker()() as db:
        before = _owned_rows(db, world.owner.id)

    unclassified = []
    failures = []
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        body = bodies.get((method, path))
        if "{" in path:
            url = path
            for name, value in world.ids.items():
                url = url.replace("{" + name + "}", str(value))
            if "{" in url:
                unclassified.append(f"{method} {path}: no owner id for its path parameter")
                continue
            response = await _call(client, method, url, body, world.intruder.headers)
            if response.status_code != 404:
                failures.append(f"{method} {url}: {response.status_code} {response.text[:200]}")
            continue
        expected = NO_ID_ROUTES.get((method, path))
        if expected is None:
            unclassified.append(f"{method} {path}: add it to NO_ID_ROUTES")
            continue
        response = await _call(client, method, path, body, world.intruder.headers)
        if response.status_code not in expected:
            failures.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
        if world.marker in response.text:
            failures.append(f"{method} {path}: shows the owner's data")

    for method, url, body in _cross_cases(world):
        response = await _call(client, method, url, body, world.intruder.headers)
        if response.status_code != 404:
            failures.append(f"{method} {url} (cross): {response.status_code} {response.text[:200]}")
    for url in _filtered_lists(world):
        response = await client.get(url, headers=world.intruder.headers)
        if response.status_code != 200 or world.marker in response.text:
            failures.append(f"GET {url}: {response.status_code} leaks or fails")
        elif response.json()["total"] != 0:
            failures.append(f"GET {url}: {response.json()['total']} rows for another's filter")

    assert not unclassified, "routes without a tenancy case:\n" + "\n".join(unclassified)
    assert not failures, "\n".join(failures)
    stale = [r for r in NO_ID_ROUTES if r not in routes]
    assert not stale, f"NO_ID_ROUTES names routes the app no longer has: {stale}"
    with get_sessionmaker()() as db:
        after = _owned_rows(db, world.owner.id)
    changed = [name for name in before if before[name] != after[name]]
    assert not changed, f"the intruder's requests changed the owner's rows in: {changed}"


async def test_the_owner_sees_its_own_objects(client: httpx.AsyncClient, world: World) -> None:
    """The same ids answer 200 for their owner, so the 404s above are tenancy, not typos."""
    owner = world.owner.headers
    for url in (
        f"/api/v1/leads/{world.ids['lead_id']}",
        f"/api/v1/visits/{world.ids['visit_id']}",
        f"/api/v1/calls/{world.ids['call_id']}",
        f"/api/v1/templates/{world.ids['template_id']}",
        f"/api/v1/leads/{world.ids['lead_id']}/consents",
        f"/api/v1/leads/{world.ids['lead_id']}/compliance",
    ):
        response = await client.get(url, headers=owner)
        assert response.status_code == 200, (url, response.text)
        assert world.marker in response.text or url.endswith(("/consents", "/compliance"))
