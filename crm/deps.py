"""FastAPI dependencies: the DB session, and the one tenancy dependency.

Every broker route takes `CurrentBroker` (or `Auth`), resolved from the API key in
`Authorization: Bearer …` or `X-API-Key`. Services then require that broker's id, so
another broker's object is simply not found (404), never forbidden (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import ActorType
from crm.brokers import service as broker_service
from crm.brokers.models import Broker
from crm.config import get_settings
from crm.db import get_db
from crm.errors import InvalidInput, Unauthorized, field_error
from crm.leads import service as lead_service
from crm.leads.models import Lead
from crm.listing import Order, PageRequest

DbSession = Annotated[Session, Depends(get_db)]


@dataclass(frozen=True, slots=True)
class AuthContext:
    broker: Broker
    actor: Actor


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def request_id(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def get_auth(request: Request, db: DbSession) -> AuthContext:
    plaintext = _presented_key(request)
    if not plaintext:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
    key = broker_service.authenticate(db, plaintext=plaintext)
    if key is None:
        raise Unauthorized("invalid or revoked API key")
    if db.dirty:
        db.commit()  # last_used_at is bookkeeping; keep it even if the route only reads
    broker = broker_service.get_or_raise(db, broker_id=key.broker_id)
    actor = Actor(
        ActorType.api_key, f"{key.prefix}", ip=client_ip(request), request_id=request_id(request)
    )
    return AuthContext(broker=broker, actor=actor)


Auth = Annotated[AuthContext, Depends(get_auth)]


def get_current_broker(auth: Auth) -> Broker:
    return auth.broker


CurrentBroker = Annotated[Broker, Depends(get_current_broker)]


def get_page_request(
    limit: Annotated[int, Query(ge=1, description="Rows per page")] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    sort: Annotated[str | None, Query(description="Column to sort by")] = None,
    order: Order = Order.desc,
) -> PageRequest:
    cap = get_settings().page_size_max
    if limit > cap:
        raise InvalidInput(
            f"limit {limit} is over the maximum page size",
            errors=[field_error("limit", f"at most {cap}")],
        )
    return PageRequest(limit=limit, offset=offset, sort=sort, order=order)


Paging = Annotated[PageRequest, Depends(get_page_request)]


def get_current_lead(lead_id: int, broker: CurrentBroker, db: DbSession) -> Lead:
    """The path's `lead_id`, loaded once and scoped to the caller's broker (else 404)."""
    return lead_service.get_or_raise(db, broker_id=broker.id, lead_id=lead_id)


CurrentLead = Annotated[Lead, Depends(get_current_lead)]
