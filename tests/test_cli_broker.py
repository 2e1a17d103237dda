"""`voiceagent broker …` against the test database (the CLI commits through session_scope)."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select
from typer.testing import CliRunner

from crm.audit.models import AuditLog
from crm.brokers import service as broker_service
from crm.brokers.models import ApiKey, Broker
from voice_gateway.cli import app

runner = CliRunner()
KEY = re.compile(r"va_[0-9a-f]{12}_[A-Za-z0-9_-]+")


def _create(name: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["broker", "create", name, *args])
    assert result.exit_code == 0, result.output
    broker_id = int(re.search(r"broker (\d+) created", result.output).group(1))  # type: ignore[union-attr]
    key = KEY.search(result.output)
    assert key is not None, result.output
    return broker_id, key.group(0)


def test_create_prints_a_working_key_once(db) -> None:
    name = f"CLI Realty {uuid.uuid4().hex[:6]}"
    broker_id, key = _create(
        name, "--time-zone", "Europe/Madrid", "--legal-name", "CLI Realty S.L."
    )
    broker = db.get(Broker, broker_id)
    assert broker.time_zone == "Europe/Madrid"
    assert broker.legal_name == "CLI Realty S.L."
    stored = broker_service.authenticate(db, plaintext=key)
    assert stored is not None
    assert stored.broker_id == broker_id
    assert key not in stored.key_hash
    db.commit()
    actions = db.scalars(select(AuditLog.action).where(AuditLog.broker_id == broker_id)).all()
    assert {"broker.create", "api_key.create"} <= set(actions)


def test_create_with_twilio_numbers_and_bad_input(db) -> None:
    number = f"+1415555{uuid.uuid4().int % 10_000:04d}"
    broker_id, _ = _create(f"Numbers {uuid.uuid4().hex[:6]}", "--twilio-number", number)
    found = broker_service.get_by_phone_number(db, e164=number)
    assert found is not None
    assert found.id == broker_id

    bad_zone = runner.invoke(app, ["broker", "create", "Nowhere", "--time-zone", "Mars/Olympus"])
    assert bad_zone.exit_code == 1
    assert "unknown time zone" in bad_zone.output
    assert db.scalars(select(Broker).where(Broker.name == "Nowhere")).first() is None

    taken = runner.invoke(app, ["broker", "create", "Copycat", "--twilio-number", number])
    assert taken.exit_code == 1
    assert "already assigned" in taken.output
    assert db.scalars(select(Broker).where(Broker.name == "Copycat")).first() is None


def test_rotate_revokes_old_keys_and_revoke_key(db) -> None:
    broker_id, old_key = _create(f"Rotate {uuid.uuid4().hex[:6]}")
    rotated = runner.invoke(app, ["broker", "rotate-key", str(broker_id)])
    assert rotated.exit_code == 0, rotated.output
    new_key = KEY.search(rotated.output).group(0)  # type: ignore[union-attr]
    assert broker_service.authenticate(db, plaintext=old_key) is None
    live = broker_service.authenticate(db, plaintext=new_key)
    assert live is not None
    db.commit()  # authenticate touched last_used_at; release the row lock for the CLI

    revoked = runner.invoke(app, ["broker", "revoke-key", str(broker_id), str(live.id)])
    assert revoked.exit_code == 0, revoked.output
    db.expire_all()
    assert broker_service.authenticate(db, plaintext=new_key) is None

    missing = runner.invoke(app, ["broker", "revoke-key", str(broker_id), "999999999"])
    assert missing.exit_code == 1
    assert "not found" in missing.output
    keys = db.scalars(select(ApiKey).where(ApiKey.broker_id == broker_id)).all()
    assert all(k.revoked_at is not None for k in keys)
