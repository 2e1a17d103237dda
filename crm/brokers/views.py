"""The broker's own account: profile, Twilio numbers, API keys."""

from __future__ import annotations

from fastapi import APIRouter, status

from crm.brokers import service
from crm.brokers.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    BrokerOut,
    BrokerUpdate,
    PhoneNumberIn,
    PhoneNumberOut,
)
from crm.deps import Auth, DbSession

router = APIRouter(prefix="/broker", tags=["broker"])


@router.get("", response_model=BrokerOut)
def get_me(auth: Auth) -> BrokerOut:
    return BrokerOut.model_validate(auth.broker)


@router.patch("", response_model=BrokerOut)
def update_me(body: BrokerUpdate, auth: Auth, db: DbSession) -> BrokerOut:
    broker = service.update(
        db, broker=auth.broker, actor=auth.actor, **body.model_dump(exclude_unset=True)
    )
    db.commit()
    db.refresh(broker)
    return BrokerOut.model_validate(broker)


@router.post("/phone-numbers", response_model=PhoneNumberOut, status_code=status.HTTP_201_CREATED)
def add_phone_number(body: PhoneNumberIn, auth: Auth, db: DbSession) -> PhoneNumberOut:
    row = service.add_phone_number(
        db, broker=auth.broker, number=body.number, label=body.label, actor=auth.actor
    )
    db.commit()
    return PhoneNumberOut.model_validate(row)


@router.delete("/phone-numbers/{number_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_phone_number(number_id: int, auth: Auth, db: DbSession) -> None:
    service.remove_phone_number(db, broker=auth.broker, number_id=number_id, actor=auth.actor)
    db.commit()


@router.get("/api-keys", response_model=list[ApiKeyOut])
def list_api_keys(auth: Auth, db: DbSession) -> list[ApiKeyOut]:
    return [
        ApiKeyOut.model_validate(k) for k in service.list_api_keys(db, broker_id=auth.broker.id)
    ]


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_api_key(body: ApiKeyCreate, auth: Auth, db: DbSession) -> ApiKeyCreated:
    key, plaintext = service.create_api_key(
        db, broker=auth.broker, actor=auth.actor, name=body.name
    )
    db.commit()
    return ApiKeyCreated.model_validate(
        {**ApiKeyOut.model_validate(key).model_dump(), "key": plaintext}
    )


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(key_id: int, auth: Auth, db: DbSession) -> ApiKeyOut:
    key = service.revoke_api_key(db, broker_id=auth.broker.id, key_id=key_id, actor=auth.actor)
    db.commit()
    return ApiKeyOut.model_validate(key)
