"""Brokers (tenants), their Twilio numbers and their API keys.

Keys look like `va_<prefix>_<secret>`. Only SHA-256 of the whole key is stored: the
secret has 256 bits of entropy, so a slow hash buys nothing, and the prefix finds the
row with one indexed lookup before a constant-time compare.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm import phones
from crm.actor import Actor
from crm.audit import service as audit
from crm.brokers.models import ApiKey, Broker, BrokerPhoneNumber
from crm.errors import Conflict, InvalidInput, NotFound, field_error
from crm.timeutil import utcnow

KEY_PREFIX = "va"
#: `last_used_at` is written at most this often per key, so reads stay reads.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(
            f"unknown time zone {name!r}",
            errors=[field_error("time_zone", "use an IANA name such as Europe/Madrid")],
        ) from exc
    return name


def get(db: Session, *, broker_id: int) -> Broker | None:
    return db.get(Broker, broker_id)


def get_or_raise(db: Session, *, broker_id: int) -> Broker:
    broker = get(db, broker_id=broker_id)
    if broker is None:
        raise NotFound(f"broker {broker_id} not found")
    return broker


def get_by_name(db: Session, *, name: str) -> Broker | None:
    return db.scalars(select(Broker).where(Broker.name == name).order_by(Broker.id)).first()


def get_by_phone_number(db: Session, *, e164: str) -> Broker | None:
    """The broker that owns a Twilio number: how an inbound call finds its tenant."""
    return db.scalars(
        select(Broker).join(BrokerPhoneNumber).where(BrokerPhoneNumber.e164 == e164)
    ).first()


def create(
    db: Session,
    *,
    name: str,
    actor: Actor,
    legal_name: str | None = None,
    time_zone: str = "UTC",
    locale: str = "es",
    twilio_numbers: Sequence[str] = (),
) -> Broker:
    name = name.strip()
    if not name:
        raise InvalidInput("broker name is empty", errors=[field_error("name", "required")])
    broker = Broker(
        name=name,
        legal_name=(legal_name or name).strip(),
        time_zone=check_time_zone(time_zone),
        locale=locale,
    )
    db.add(broker)
    db.flush()
    for number in twilio_numbers:
        add_phone_number(db, broker=broker, number=number, actor=actor)
    audit.record(
        db,
        actor=actor,
        broker_id=broker.id,
        action="broker.create",
        object_type="broker",
        object_id=broker.id,
        changes=audit.snapshot(broker, ["name", "legal_name", "time_zone", "locale"]),
    )
    return broker


def add_phone_number(
    db: Session, *, broker: Broker, number: str, actor: Actor, label: str | None = None
) -> BrokerPhoneNumber:
    try:
        e164 = phones.normalize(number)
    except phones.InvalidPhoneNumber as exc:
        raise InvalidInput(str(exc), errors=[field_error("twilio_number", str(exc))]) from exc
    taken = db.scalars(select(BrokerPhoneNumber).where(BrokerPhoneNumber.e164 == e164)).first()
    if taken is not None:
        # Same answer whether it is this broker's or another's: a number is one tenant's.
        raise Conflict(f"{e164} is already assigned to a broker")
    row = BrokerPhoneNumber(broker_id=broker.id, e164=e164, label=label)
    db.add(row)
    db.flush()
    audit.record(
        db,
        actor=actor,
        broker_id=broker.id,
        action="broker.phone_number.add",
        object_type="broker_phone_number",
        object_id=row.id,
        changes={"e164": e164, "label": label},
    )
    return row


def remove_phone_number(db: Session, *, broker: Broker, number_id: int, actor: Actor) -> None:
    row = db.get(BrokerPhoneNumber, number_id)
    if row is None or row.broker_id != broker.id:
        raise NotFound(f"phone number {number_id} not found")
    audit.record(
        db,
        actor=actor,
        broker_id=broker.id,
        action="broker.phone_number.remove",
        object_type="broker_phone_number",
        object_id=row.id,
        changes={"e164": row.e164},
    )
    db.delete(row)
    db.flush()


def create_api_key(
    db: Session, *, broker: Broker, actor: Actor, name: str = "default"
) -> tuple[ApiKey, str]:
    """A new key row and the plaintext key, which is never stored and shown only now."""
    prefix = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        broker_id=broker.id,
        name=name,
        prefix=prefix,
        key_hash=_hash(plaintext),
        created_at=utcnow(),
    )
    db.add(key)
    db.flush()
    audit.record(
        db,
        actor=actor,
        broker_id=broker.id,
        action="api_key.create",
        object_type="api_key",
        object_id=key.id,
        changes={"name": name, "prefix": prefix},
    )
    return key, plaintext


def list_api_keys(db: Session, *, broker_id: int) -> Sequence[ApiKey]:
    return db.scalars(select(ApiKey).where(ApiKey.broker_id == broker_id).order_by(ApiKey.id)).all()


def revoke_api_key(db: Session, *, broker_id: int, key_id: int, actor: Actor) -> ApiKey:
    key = db.get(ApiKey, key_id)
    if key is None or key.broker_id != broker_id:
        raise NotFound(f"API key {key_id} not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        audit.record(
            db,
            actor=actor,
            broker_id=broker_id,
            action="api_key.revoke",
            object_type="api_key",
            object_id=key.id,
            changes={"revoked_at": [None, key.revoked_at]},
        )
        db.flush()
    return key


def rotate_api_keys(db: Session, *, broker: Broker, actor: Actor) -> tuple[ApiKey, str]:
    """Revoke every live key of the broker and issue one new key."""
    for key in list_api_keys(db, broker_id=broker.id):
        if key.revoked_at is None:
            revoke_api_key(db, broker_id=broker.id, key_id=key.id, actor=actor)
    return create_api_key(db, broker=broker, actor=actor, name="rotated")


def authenticate(db: Session, *, plaintext: str) -> ApiKey | None:
    """The live key matching `plaintext`, or None; touches `last_used_at` sparingly."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    key = db.scalars(select(ApiKey).where(ApiKey.prefix == parts[1])).first()
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(key.key_hash, _hash(plaintext)):
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        key.last_used_at = now
        db.flush()
    return key


def update(
    db: Session,
    *,
    broker: Broker,
    actor: Actor,
    name: str | None = None,
    legal_name: str | None = None,
    time_zone: str | None = None,
    locale: str | None = None,
) -> Broker:
    fields = ["name", "legal_name", "time_zone", "locale"]
    before = audit.snapshot(broker, fields)
    if time_zone is not None:
        broker.time_zone = check_time_zone(time_zone)
    if name is not None:
        broker.name = name.strip()
    if legal_name is not None:
        broker.legal_name = legal_name.strip()
    if locale is not None:
        broker.locale = locale
    changes = audit.diff(before, audit.snapshot(broker, fields))
    if changes:
        audit.record(
            db,
            actor=actor,
            broker_id=broker.id,
            action="broker.update",
            object_type="broker",
            object_id=broker.id,
            changes=changes,
        )
        db.flush()
    return broker
