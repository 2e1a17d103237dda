"""The leads API end to end, on the real PostgreSQL, one fresh broker per test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import AuditLog
from crm.db import get_sessionmaker
from crm.leads.models import Lead, LeadActivity
from crm.pipeline import service as pipeline_service
from crm.pipeline.stages import Stage
from crm.scoring import service as scoring_service
from crm.timeutil import utcnow
from tests.conftest import Tenant

API = "/api/v1/leads"


def us_phone(n: int) -> str:
    return f"+1212555{n:04d}"


async def make_lead(
    client: httpx.AsyncClient, tenant: Tenant, n: int, **fields: Any
) -> dict[str, Any]:
    response = await client.post(API, json={"phone": us_phone(n), **fields}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def fresh() -> Iterator[Session]:
    """A session that sees what the app committed, for checks and for setting up state."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def audit_actions(session: Session, broker_id: int, object_id: int | None = None) -> list[str]:
    stmt = select(AuditLog.action).where(AuditLog.broker_id == broker_id).order_by(AuditLog.id)
    if object_id is not None:
        stmt = stmt.where(AuditLog.object_type == "lead", AuditLog.object_id == str(object_id))
    return list(session.scalars(stmt))


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# --- CRUD ------------------------------------------------------------------------------


async def test_crud_round_trip(client: httpx.AsyncClient, tenant: Tenant, fresh: Session) -> None:
    created = await make_lead(
        client,
        tenant,
        1,
        full_name="  Ana García ",
        email="Ana@Example.COM",
        source="portal",
        budget_min=200000,
        budget_max="350000.5",
        budget_currency="usd",
        areas=[" Centro ", "centro", "Chamberí", ""],
        property_type="apartment",
        bedrooms=3,
        timeline="within_3_months",
        financing="cash",
        language="en",
    )
    lead_id = created["id"]
    assert created["full_name"] == "Ana García"
    assert created["email"] == "Ana@example.com"
    assert created["budget_min"] == "200000.00"
    assert created["budget_max"] == "350000.50"
    assert created["budget_currency"] == "USD"
    assert created["areas"] == ["Centro", "Chamberí"]
    assert created["stage"] == "new"
    assert created["time_zone"] == "America/New_York"
    assert created["intent"] is None
    assert created["do_not_call"] is False

    got = await client.get(f"{API}/{lead_id}", headers=tenant.headers)
    assert got.status_code == 200
    assert got.json() == created

    patched = await client.patch(
        f"{API}/{lead_id}",
        json={"bedrooms": 2, "notes": "prefers mornings", "email": None},
        headers=tenant.headers,
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["bedrooms"], body["notes"], body["email"]) == (2, "prefers mornings", None)
    assert body["full_name"] == "Ana García"  # untouched

    deleted = await client.delete(f"{API}/{lead_id}", headers=tenant.headers)
    assert deleted.status_code == 204
    assert (await client.get(f"{API}/{lead_id}", headers=tenant.headers)).status_code == 404
    assert lead_id not in ids(await client.get(API, headers=tenant.headers))

    assert audit_actions(fresh, tenant.id, lead_id) == ["lead.create", "lead.update", "lead.delete"]
    update = fresh.scalars(
        select(AuditLog).where(AuditLog.object_id == str(lead_id), AuditLog.action == "lead.update")
    ).one()
    assert update.diff == {
        "bedrooms": [3, 2],
        "notes": [None, "prefers mornings"],
        "email": ["Ana@example.com", None],
    }


async def test_create_normalises_phone_and_derives_zone_and_language(
    client: httpx.AsyncClient, make_tenant: Any
) -> None:
    spanish = make_tenant(locale="en")
    lead = await client.post(
        API, json={"phone": "612 34 56 78", "country": "es"}, headers=spanish.headers
    )
    assert lead.status_code == 201, lead.text
    body = lead.json()
    assert body["phone"] == "+34612345678"
    assert body["time_zone"] == "Europe/Madrid"
    assert body["language"] == "en"  # the broker's locale when not given

    explicit = await client.post(
        API,
        json={"phone": "+34 699 00 11 22", "time_zone": "Atlantic/Canary", "language": "es"},
        headers=spanish.headers,
    )
    assert explicit.json()["time_zone"] == "Atlantic/Canary"
    assert explicit.json()["language"] == "es"


@pytest.mark.parametrize(
    ("phone", "reason"),
    [("123", "wrong length"), ("hello", "not a phone number"), ("+999 555 1234", "country code")],
)
async def test_invalid_phone_is_422_with_reason(
    client: httpx.AsyncClient, tenant: Tenant, phone: str, reason: str
) -> None:
    response = await client.post(API, json={"phone": phone}, headers=tenant.headers)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == ["phone"]
    assert reason in errors[0]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"budget_min": 500, "budget_max": 100}, "budget_max"),
        ({"budget_min": -1}, "budget_min"),
        ({"budget_max": "1.005"}, "budget_max"),
        ({"budget_currency": "XYZ"}, "budget_currency"),
        ({"budget_currency": "EURO"}, "budget_currency"),
        ({"bedrooms": 21}, "bedrooms"),
        ({"bedrooms": -1}, "bedrooms"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"language": "fr"}, "language"),
        ({"email": "not-an-email"}, "email"),
        ({"country": "ZZ"}, "country"),
        ({"intent": 0.9}, "intent"),
        ({"stage": "won"}, "stage"),
        ({"score": 99}, "score"),
        ({"areas": ["x" * 101]}, "areas"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session, body: dict[str, Any], field: str
) -> None:
    response = await client.post(API, json={"phone": us_phone(1), **body}, headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]
    assert audit_actions(fresh, tenant.id) == ["broker.create", "api_key.create"]


async def test_duplicate_phone_is_409_with_existing_id(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, fresh: Session
) -> None:
    first = await make_lead(client, tenant, 10)
    again = await client.post(API, json={"phone": "(212) 555-0010"}, headers=tenant.headers)
    assert again.status_code == 409
    problem = again.json()
    assert problem["existing_lead_id"] == first["id"]
    assert problem["errors"][0]["field"] == "phone"
    assert audit_actions(fresh, tenant.id).count("lead.create") == 1
    # Another broker may have a lead with the same number.
    assert (await make_lead(client, other_tenant, 10))["id"] != first["id"]


async def test_update_to_a_taken_phone_is_409(client: httpx.AsyncClient, tenant: Tenant) -> None:
    first = await make_lead(client, tenant, 20)
    second = await make_lead(client, tenant, 21)
    response = await client.patch(
        f"{API}/{second['id']}", json={"phone": us_phone(20)}, headers=tenant.headers
    )
    assert response.status_code == 409
    assert response.json()["existing_lead_id"] == first["id"]
    unchanged = await client.get(f"{API}/{second['id']}", headers=tenant.headers)
    assert unchanged.json()["phone"] == us_phone(21)
    # Its own number, written another way, is no change at all.
    same = await client.patch(
        f"{API}/{second['id']}", json={"phone": "212-555-0021"}, headers=tenant.headers
    )
    assert same.status_code == 200


async def test_update_that_changes_nothing_writes_no_audit_row(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session
) -> None:
    lead = await make_lead(client, tenant, 30, full_name="Bo", areas=["Norte"])
    response = await client.patch(
        f"{API}/{lead['id']}",
        json={"full_name": " Bo ", "areas": [" Norte", "norte"]},
        headers=tenant.headers,
    )
    assert response.status_code == 200
    assert response.json()["updated_at"] == lead["updated_at"]
    assert audit_actions(fresh, tenant.id, lead["id"]) == ["lead.create"]


async def test_update_checks_the_budget_against_stored_values(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    lead = await make_lead(client, tenant, 31, budget_max=100000)
    response = await client.patch(
        f"{API}/{lead['id']}", json={"budget_min": 200000}, headers=tenant.headers
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "budget_min"
    nulls = await client.patch(
        f"{API}/{lead['id']}", json={"phone": None, "areas": None}, headers=tenant.headers
    )
    assert nulls.status_code == 422
    assert {e["field"] for e in nulls.json()["errors"]} == {"phone", "areas"}


async def test_soft_delete_hides_the_lead_everywhere_and_frees_the_phone(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session
) -> None:
    lead = await make_lead(client, tenant, 40, full_name="Gone")
    lead_id = lead["id"]
    assert (await client.delete(f"{API}/{lead_id}", headers=tenant.headers)).status_code == 204

    h = tenant.headers
    for method, path, body in [
        ("GET", f"{API}/{lead_id}", None),
        ("PATCH", f"{API}/{lead_id}", {"full_name": "x"}),
        ("DELETE", f"{API}/{lead_id}", None),
        ("GET", f"{API}/{lead_id}/timeline", None),
        ("POST", f"{API}/{lead_id}/notes", {"body": "x"}),
        ("GET", f"{API}/{lead_id}/consents", None),
        ("POST", f"{API}/{lead_id}/do-not-call", {"reason": "x"}),
    ]:
        response = await client.request(method, path, json=body, headers=h)
        assert response.status_code == 404, (method, path)
    assert lead_id not in ids(await client.get(API, params={"q": "Gone"}, headers=h))

    delete_row = fresh.scalars(
        select(AuditLog).where(AuditLog.object_id == str(lead_id), AuditLog.action == "lead.delete")
    ).one()
    assert delete_row.diff is not None
    assert delete_row.diff["deleted"]["full_name"] == "Gone"
    assert delete_row.diff["deleted"]["phone"] == us_phone(40)

    reborn = await make_lead(client, tenant, 40)
    assert reborn["id"] != lead_id


async def test_failing_request_leaves_no_lead_and_no_audit_row(
    tenant: Tenant, fresh: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voice_gateway.app import create_app

    def explode(*_: Any, **__: Any) -> None:
        raise RuntimeError("scoring is down")

    monkeypatch.setattr(scoring_service, "request_recompute", explode)
    transport = httpx.ASGITransport(app=create_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(API, json={"phone": us_phone(50)}, headers=tenant.headers)
    assert response.status_code == 500
    assert fresh.scalars(select(Lead).where(Lead.broker_id == tenant.id)).all() == []
    assert (
        fresh.scalars(select(LeadActivity).where(LeadActivity.broker_id == tenant.id)).all() == []
    )
    assert audit_actions(fresh, tenant.id) == ["broker.create", "api_key.create"]


async def test_another_brokers_lead_is_404_on_every_route(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    lead = await make_lead(client, tenant, 60)
    consent = await client.post(
        f"{API}/{lead['id']}/consents",
        json={"channel": "call", "source": "web form", "text_shown": "You may call me"},
        headers=tenant.headers,
    )
    base = f"{API}/{lead['id']}"
    h = other_tenant.headers
    for method, path, body in [
        ("GET", base, None),
        ("PATCH", base, {"full_name": "x"}),
        ("DELETE", base, None),
        ("GET", f"{base}/timeline", None),
        ("POST", f"{base}/notes", {"body": "x"}),
        ("GET", f"{base}/consents", None),
        ("POST", f"{base}/consents", {"channel": "call", "source": "x", "text_shown": "x"}),
        ("POST", f"{base}/consents/{consent.json()['id']}/revoke", None),
        ("POST", f"{base}/do-not-call", {"reason": "x"}),
        ("DELETE", f"{base}/do-not-call", {"reason": "x"}),
    ]:
        response = await client.request(method, path, json=body, headers=h)
        assert response.status_code == 404, (method, path, response.text)
    assert lead["id"] not in ids(await client.get(API, headers=h))
    still = await client.get(base, headers=tenant.headers)
    assert still.json()["full_name"] is None
    assert still.json()["do_not_call"] is False


# --- lists -----------------------------------------------------------------------------


async def test_filter_by_stage_one_or_several(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session
) -> None:
    a = await make_lead(client, tenant, 100)
    b = await make_lead(client, tenant, 101)
    c = await make_lead(client, tenant, 102)
    for lead_id, stage in ((b["id"], Stage.contacted), (c["id"], Stage.qualified)):
        lead = fresh.get_one(Lead, lead_id)
        pipeline_service.transition(fresh, lead=lead, target=stage, actor=Actor.system("tests"))
    fresh.commit()
    h = tenant.headers
    assert ids(await client.get(API, params={"stage": "new"}, headers=h)) == [a["id"]]
    several = await client.get(
        API, params=[("stage", "contacted"), ("stage", "qualified")], headers=h
    )
    assert sorted(ids(several)) == [b["id"], c["id"]]
    commas = await client.get(API, params={"stage": "new,qualified"}, headers=h)
    assert sorted(ids(commas)) == [a["id"], c["id"]]
    bad = await client.get(API, params={"stage": "sleeping"}, headers=h)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "stage"


async def test_filter_by_score_range(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session
) -> None:
    leads = [await make_lead(client, tenant, 110 + i) for i in range(3)]
    for lead, score in zip(leads, (10, 50, 90), strict=True):
        fresh.get_one(Lead, lead["id"]).score = score
    fresh.commit()
    h = tenant.headers
    middle = await client.get(API, params={"score_min": 20, "score_max": 60}, headers=h)
    assert ids(middle) == [leads[1]["id"]]
    assert sorted(ids(await client.get(API, params={"score_min": 50}, headers=h))) == [
        leads[1]["id"],
        leads[2]["id"],
    ]
    assert ids(await client.get(API, params={"score_max": 10}, headers=h)) == [leads[0]["id"]]
    inverted = await client.get(API, params={"score_min": 60, "score_max": 20}, headers=h)
    assert inverted.status_code == 422


async def test_filter_by_source_and_assignee(client: httpx.AsyncClient, tenant: Tenant) -> None:
    a = await make_lead(client, tenant, 120, source="Zillow", assigned_to="maria")
    b = await make_lead(client, tenant, 121, source="referral", assigned_to="maria")
    await make_lead(client, tenant, 122, source="referral", assigned_to="juan")
    h = tenant.headers
    assert ids(await client.get(API, params={"source": "zillow"}, headers=h)) == [a["id"]]
    both = await client.get(API, params={"source": "referral", "assigned_to": "maria"}, headers=h)
    assert ids(both) == [b["id"]]


async def test_filter_inactive_for_n_days(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session
) -> None:
    stale = await make_lead(client, tenant, 130)
    await make_lead(client, tenant, 131)
    fresh.get_one(Lead, stale["id"]).last_activity_at = utcnow() - timedelta(days=10)
    fresh.commit()
    h = tenant.headers
    assert ids(await client.get(API, params={"inactive_days": 7}, headers=h)) == [stale["id"]]
    assert ids(await client.get(API, params={"inactive_days": 11}, headers=h)) == []
    assert (await client.get(API, params={"inactive_days": 0}, headers=h)).status_code == 422


async def test_text_search_over_name_email_and_phone(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    ana = await make_lead(client, tenant, 140, full_name="Ana María López", email="ana@casa.mx")
    bob = await make_lead(client, tenant, 141, full_name="Bob 100%_Real", email="bob@x.com")
    h = tenant.headers

    async def search(q: str) -> list[int]:
        return sorted(ids(await client.get(API, params={"q": q}, headers=h)))

    assert await search("maría") == [ana["id"]]
    assert await search("LÓPEZ") == [ana["id"]]
    assert await search("casa.mx") == [ana["id"]]
    assert await search("100%_") == [bob["id"]]  # LIKE wildcards are taken literally
    assert await search("%") == [bob["id"]]
    assert await search("2125550140") == [ana["id"]]  # digits without + or spaces
    assert await search("(212) 555-0141") == [bob["id"]]
    assert await search("+1 212 555 0140") == [ana["id"]]
    assert await search("555014") == [ana["id"], bob["id"]]
    assert await search("nobody") == []


async def test_filter_by_created_range(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session
) -> None:
    old = await make_lead(client, tenant, 150)
    new = await make_lead(client, tenant, 151)
    fresh.get_one(Lead, old["id"]).created_at = datetime(2024, 1, 15, tzinfo=UTC)
    fresh.commit()
    h = tenant.headers
    january = {"created_from": "2024-01-01T00:00:00Z", "created_to": "2024-02-01T00:00:00+00:00"}
    assert ids(await client.get(API, params=january, headers=h)) == [old["id"]]
    since = await client.get(API, params={"created_from": "2024-06-01T00:00:00Z"}, headers=h)
    assert ids(since) == [new["id"]]
    naive = await client.get(API, params={"created_from": "2024-01-01T00:00:00"}, headers=h)
    assert naive.status_code == 422
    assert naive.json()["errors"][0]["field"] == "created_from"


async def test_pagination_is_stable_with_equal_sort_values(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    made = {(await make_lead(client, tenant, 160 + i))["id"] for i in range(7)}
    h = tenant.headers
    for order in ("asc", "desc"):
        seen: list[int] = []
        for offset in range(0, 9, 3):
            response = await client.get(
                API,
                params={"sort": "score", "order": order, "limit": 3, "offset": offset},
                headers=h,
            )
            assert response.json()["total"] == 7
            seen.extend(ids(response))
        assert len(seen) == len(set(seen)) == 7
        assert set(seen) == made
        assert seen == sorted(seen, reverse=order == "desc")  # equal scores: id decides


async def test_sorting_by_whitelisted_columns(client: httpx.AsyncClient, tenant: Tenant) -> None:
    made = {}
    for i, name in enumerate(["Carla", "Alberto", "Bea"]):
        made[name] = (await make_lead(client, tenant, 170 + i, full_name=name))["id"]
    h = tenant.headers
    asc = ids(await client.get(API, params={"sort": "created_at", "order": "asc"}, headers=h))
    assert asc == [made["Carla"], made["Alberto"], made["Bea"]]
    desc = ids(await client.get(API, headers=h))  # default: newest first
    assert desc == list(reversed(asc))
    by_name = await client.get(API, params={"sort": "full_name", "order": "asc"}, headers=h)
    assert [i["full_name"] for i in by_name.json()["items"]] == ["Alberto", "Bea", "Carla"]
    by_name_desc = await client.get(API, params={"sort": "full_name"}, headers=h)
    assert [i["full_name"] for i in by_name_desc.json()["items"]] == ["Carla", "Bea", "Alberto"]
    bad = await client.get(API, params={"sort": "phone"}, headers=h)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "sort"


# --- consent, do-not-call, timeline --------------------------------------------------------


async def test_consent_grant_list_revoke(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session
) -> None:
    lead = await make_lead(client, tenant, 200)
    base = f"{API}/{lead['id']}"
    h = tenant.headers
    granted_at = "2025-03-01T10:00:00+01:00"
    made = await client.post(
        f"{base}/consents",
        json={
            "channel": "whatsapp",
            "source": "landing page",
            "granted_at": granted_at,
            "text_shown": "I agree to be contacted on WhatsApp",
        },
        headers=h,
    )
    assert made.status_code == 201, made.text
    consent = made.json()
    assert datetime.fromisoformat(consent["granted_at"]) == datetime(2025, 3, 1, 9, tzinfo=UTC)
    assert consent["revoked_at"] is None
    now_consent = await client.post(
        f"{base}/consents",
        json={"channel": "call", "source": "call recording", "text_shown": "Yes, call me"},
        headers=h,
    )
    assert now_consent.status_code == 201

    listed = await client.get(f"{base}/consents", headers=h)
    assert [c["id"] for c in listed.json()] == [consent["id"], now_consent.json()["id"]]

    revoked = await client.post(
        f"{base}/consents/{consent['id']}/revoke", json={"reason": "asked by text"}, headers=h
    )
    assert revoked.status_code == 200
    revoked_at = revoked.json()["revoked_at"]
    assert revoked_at is not None
    again = await client.post(f"{base}/consents/{consent['id']}/revoke", headers=h)
    assert again.json()["revoked_at"] == revoked_at  # the first revocation stands
    assert (await client.post(f"{base}/consents/999999999/revoke", headers=h)).status_code == 404

    timeline = await client.get(f"{base}/timeline", params={"kind": "consent"}, headers=h)
    actions = [a["data"]["action"] for a in timeline.json()["items"]]
    assert sorted(actions) == ["granted", "granted", "revoked"]
    assert audit_actions(fresh, tenant.id, lead["id"]) == [
        "lead.create",
        "lead.consent.grant",
        "lead.consent.grant",
        "lead.consent.revoke",
    ]


@pytest.mark.parametrize(
    ("granted_at", "field"),
    [
        ((utcnow() + timedelta(days=1)).isoformat(), "granted_at"),
        ("2025-03-01T10:00:00", "granted_at"),
    ],
)
async def test_consent_time_must_be_aware_and_past(
    client: httpx.AsyncClient, tenant: Tenant, granted_at: str, field: str
) -> None:
    lead = await make_lead(client, tenant, 210)
    response = await client.post(
        f"{API}/{lead['id']}/consents",
        json={"channel": "call", "source": "x", "text_shown": "x", "granted_at": granted_at},
        headers=tenant.headers,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


async def test_do_not_call_revokes_call_consent_and_clears_with_a_reason(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session
) -> None:
    lead = await make_lead(client, tenant, 220)
    base = f"{API}/{lead['id']}"
    h = tenant.headers
    call = await client.post(
        f"{base}/consents",
        json={"channel": "call", "source": "form", "text_shown": "ok"},
        headers=h,
    )
    email = await client.post(
        f"{base}/consents",
        json={"channel": "email", "source": "form", "text_shown": "ok"},
        headers=h,
    )

    assert (await client.post(f"{base}/do-not-call", json={}, headers=h)).status_code == 422
    marked = await client.post(f"{base}/do-not-call", json={"reason": "asked on call"}, headers=h)
    assert marked.status_code == 200
    body = marked.json()
    assert body["do_not_call"] is True
    assert body["dnc_reason"] == "asked on call"
    assert body["dnc_at"] is not None
    consents = {c["id"]: c for c in (await client.get(f"{base}/consents", headers=h)).json()}
    assert consents[call.json()["id"]]["revoked_at"] is not None
    assert consents[email.json()["id"]]["revoked_at"] is None

    listed = await client.get(API, params={"do_not_call": "true"}, headers=h)
    assert ids(listed) == [lead["id"]]

    no_body = await client.request("DELETE", f"{base}/do-not-call", headers=h)
    assert no_body.status_code == 422
    blank = await client.request("DELETE", f"{base}/do-not-call", json={"reason": " "}, headers=h)
    assert blank.status_code == 422
    cleared = await client.request(
        "DELETE", f"{base}/do-not-call", json={"reason": "written consent received"}, headers=h
    )
    assert cleared.status_code == 200
    assert (cleared.json()["do_not_call"], cleared.json()["dnc_reason"]) == (False, None)

    timeline = await client.get(f"{base}/timeline", params={"kind": "do_not_call"}, headers=h)
    assert [a["data"]["action"] for a in timeline.json()["items"]] == ["removed", "added"]
    rows = fresh.scalars(
        select(AuditLog)
        .where(AuditLog.object_id == str(lead["id"]), AuditLog.action.like("lead.do_not_call%"))
        .order_by(AuditLog.id)
    ).all()
    assert [r.action for r in rows] == ["lead.do_not_call.set", "lead.do_not_call.clear"]
    assert rows[0].diff is not None
    assert rows[1].diff is not None
    assert rows[0].diff["revoked_consent_ids"] == [call.json()["id"]]
    assert rows[0].diff["do_not_call"] == [False, True]
    assert rows[1].diff["reason"] == "written consent received"


async def test_timeline_notes_newest_first_paged_and_filtered(
    client: httpx.AsyncClient, tenant: Tenant, fresh: Session
) -> None:
    lead = await make_lead(client, tenant, 230)
    base = f"{API}/{lead['id']}"
    h = tenant.headers
    for text in ("first", "second", "third"):
        note = await client.post(f"{base}/notes", json={"body": text}, headers=h)
        assert note.status_code == 201
        assert note.json()["kind"] == "note"
        assert note.json()["actor_type"] == "api_key"
    assert (await client.post(f"{base}/notes", json={"body": "  "}, headers=h)).status_code == 422

    everything = await client.get(f"{base}/timeline", headers=h)
    kinds = [a["kind"] for a in everything.json()["items"]]
    assert kinds == ["note", "note", "note", "created"]
    page = await client.get(f"{base}/timeline", params={"kind": "note", "limit": 2}, headers=h)
    assert page.json()["total"] == 3
    assert [a["body"] for a in page.json()["items"]] == ["third", "second"]
    rest = await client.get(
        f"{base}/timeline", params={"kind": "note", "limit": 2, "offset": 2}, headers=h
    )
    assert [a["body"] for a in rest.json()["items"]] == ["first"]
    after = await client.get(base, headers=h)
    assert after.json()["last_activity_at"] >= lead["last_activity_at"]
    assert audit_actions(fresh, tenant.id, lead["id"]).count("lead.note.add") == 3
