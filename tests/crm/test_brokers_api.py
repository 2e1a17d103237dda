from __future__ import annotations

import httpx

from tests.conftest import Tenant


async def test_me_requires_a_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/broker")
    assert response.status_code == 401
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert body["status"] == 401
    assert "missing API key" in body["detail"]


async def test_me_with_bearer_and_x_api_key(client: httpx.AsyncClient, tenant: Tenant) -> None:
    by_bearer = await client.get("/api/v1/broker", headers=tenant.headers)
    by_header = await client.get("/api/v1/broker", headers={"X-API-Key": tenant.key})
    assert by_bearer.status_code == by_header.status_code == 200
    assert by_bearer.json()["id"] == by_header.json()["id"] == tenant.id


async def test_revoked_key_is_refused(client: httpx.AsyncClient, tenant: Tenant) -> None:
    created = await client.post(
        "/api/v1/broker/api-keys", json={"name": "ci"}, headers=tenant.headers
    )
    assert created.status_code == 201
    new_key = created.json()["key"]
    revoked = await client.delete(
        f"/api/v1/broker/api-keys/{created.json()['id']}", headers=tenant.headers
    )
    assert revoked.json()["revoked_at"] is not None
    response = await client.get("/api/v1/broker", headers={"X-API-Key": new_key})
    assert response.status_code == 401
    listed = await client.get("/api/v1/broker/api-keys", headers=tenant.headers)
    assert all("key" not in k for k in listed.json())


async def test_phone_number_is_one_tenants(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    import random

    number = f"+1212555{random.randint(1000, 9999)}"
    first = await client.post(
        "/api/v1/broker/phone-numbers", json={"number": number}, headers=tenant.headers
    )
    assert first.status_code == 201, first.text
    second = await client.post(
        "/api/v1/broker/phone-numbers", json={"number": number}, headers=other_tenant.headers
    )
    assert second.status_code == 409
    bad = await client.post(
        "/api/v1/broker/phone-numbers", json={"number": "123456"}, headers=tenant.headers
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "twilio_number"
