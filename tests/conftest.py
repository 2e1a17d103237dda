"""Test wiring: a fresh PostgreSQL database per run, real sessions, an async API client.

Tests isolate through tenancy itself: each test makes its own broker(s), so committed
rows of one test are invisible to the next, exactly as they are to another broker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest

from tests import services

_DB_NAME = f"va_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
os.environ.setdefault("ENVIRONMENT", "test")
os.environ["DATABASE_URL"] = services.sqlalchemy_url(_DB_NAME)
os.environ.pop("REDIS_URL", None)

import httpx  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from crm.actor import Actor  # noqa: E402
from crm.brokers import service as broker_service  # noqa: E402
from crm.brokers.models import Broker  # noqa: E402
from crm.db import Base, get_engine, get_sessionmaker  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """Create the run's database with every table (migrations are tested on their own)."""
    try:
        url = services.create_database(_DB_NAME)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    import crm.models  # noqa: F401

    Base.metadata.create_all(get_engine())
    yield url
    get_engine().dispose()
    services.drop_database(_DB_NAME)


@pytest.fixture
def db() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@dataclass
class Tenant:
    broker: Broker
    key: str

    @property
    def id(self) -> int:
        return self.broker.id

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def make_tenant() -> Callable[..., Tenant]:
    """Committed brokers with a live API key; each call makes a new, isolated tenant."""

    def make(name: str | None = None, **kwargs: object) -> Tenant:
        with get_sessionmaker()() as session:
            broker = broker_service.create(
                session,
                name=name or f"Broker {uuid.uuid4().hex[:8]}",
                actor=Actor.system("tests"),
                **kwargs,  # type: ignore[arg-type]
            )
            _, key = broker_service.create_api_key(
                session, broker=broker, actor=Actor.system("tests")
            )
            session.commit()
            session.refresh(broker)
            session.expunge(broker)
            return Tenant(broker=broker, key=key)

    return make


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant()


@pytest.fixture
def other_tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    from voice_gateway.app import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
