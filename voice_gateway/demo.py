"""The embedded main job's set-up: a migrated SQLite file with a demo broker and leads.

Idempotent: the broker and its leads are created on the first run and reused later;
every run issues a fresh API key (and revokes the previous demo keys), because a key
is shown only once and the person running the demo needs one now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import func, select

from crm.actor import Actor
from crm.brokers import service as broker_service
from crm.config import get_settings
from crm.db import session_scope
from crm.enums import Channel
from crm.leads import service as lead_service
from crm.leads.models import Direction, Financing, Lead, PropertyType, Timeline
from crm.leads.schemas import LeadCreate
from crm.migrate import upgrade
from crm.pipeline import service as pipeline_service
from crm.pipeline.rules import PipelineEvent
from crm.timeutil import utcnow

DEMO_BROKER = "Demo Realty"
DEMO_NUMBER = "+34910000001"


@dataclass(frozen=True)
class DemoInfo:
    database_url: str
    broker_id: int
    broker_name: str
    api_key: str
    leads: int


def _demo_leads() -> list[LeadCreate]:
    return [
        LeadCreate(
            phone="+34612345678",
            full_name="Lucía Fernández",
            email="lucia@example.com",
            source="idealista",
            budget_min=Decimal(250_000),
            budget_max=Decimal(320_000),
            budget_currency="EUR",
            areas=["Chamberí", "Salamanca"],
            property_type=PropertyType.apartment,
            bedrooms=3,
            timeline=Timeline.within_3_months,
            financing=Financing.mortgage_preapproved,
        ),
        LeadCreate(phone="+34655443322", full_name="Javier Ruiz", source="web", areas=["Retiro"]),
        LeadCreate(
            phone="+14155552671",
            full_name="Emily Carter",
            email="emily@example.com",
            source="referral",
            language="en",
            budget_max=Decimal(900_000),
            budget_currency="USD",
            property_type=PropertyType.house,
        ),
        LeadCreate(phone="+525512345678", full_name="Sofía Hernández", source="facebook"),
    ]


def prepare_demo() -> DemoInfo:
    """Migrate the configured database (SQLite by default) and seed the demo tenant."""
    settings = get_settings()
    upgrade()
    actor = Actor.cli("demo")
    with session_scope() as db:
        broker = broker_service.get_by_name(db, name=DEMO_BROKER)
        if broker is None:
            broker = broker_service.create(
                db,
                name=DEMO_BROKER,
                legal_name="Demo Realty S.L.",
                time_zone="Europe/Madrid",
                locale="es",
                twilio_numbers=[DEMO_NUMBER],
                actor=actor,
            )
            leads = [
                lead_service.create(db, broker_id=broker.id, data=data, actor=actor)
                for data in _demo_leads()
            ]
            lucia = leads[0]
            lead_service.add_consent(
                db,
                lead=lucia,
                actor=actor,
                channel=Channel.call,
                source="idealista contact form",
                granted_at=utcnow() - timedelta(days=2),
                text_shown="Acepto que Demo Realty me llame sobre inmuebles.",
            )
            lead_service.log_message(
                db,
                lead=lucia,
                channel=Channel.whatsapp,
                direction=Direction.inbound,
                body="Hola, me interesa el piso de Chamberí",
                actor=actor,
            )
            pipeline_service.apply_event(
                db, lead=lucia, event=PipelineEvent.qualification_completed, actor=actor
            )
        for key in broker_service.list_api_keys(db, broker_id=broker.id):
            if key.revoked_at is None:
                broker_service.revoke_api_key(db, broker_id=broker.id, key_id=key.id, actor=actor)
        _, api_key = broker_service.create_api_key(db, broker=broker, actor=actor, name="demo")
        count = db.scalar(
            select(func.count())
            .select_from(Lead)
            .where(Lead.broker_id == broker.id, Lead.deleted_at.is_(None))
        )
        return DemoInfo(
            database_url=settings.resolved_database_url,
            broker_id=broker.id,
            broker_name=broker.name,
            api_key=api_key,
            leads=int(count or 0),
        )


#: The demo caller speaks English: the only language with an offline recogniser
#: (PocketSphinx); Spanish calls need STT_PROVIDER=google.
DEMO_CALLER = "+14155552671"
DEMO_SCRIPT = """\
language en
wait
say Hi. I am looking for a three bedroom house near the beach.
wait
say My budget is about nine hundred thousand dollars.
wait
say Thank you. Goodbye.
wait 1500
"""

#: The embedded main job runs offline whatever the environment says.
EMBEDDED_PROVIDERS = {
    "STT_PROVIDER": "pocketsphinx",
    "TTS_PROVIDER": "espeak",
    "VAD": "webrtc",
    "TELEPHONY_PROVIDER": "fake",
    "TWILIO_VALIDATE_SIGNATURES": "true",
}


@dataclass(frozen=True)
class StoredTurn:
    role: str
    start_ms: int
    end_ms: int
    text: str
    interrupted: bool
    response_ms: int | None


@dataclass(frozen=True)
class StoredCall:
    call_id: int
    status: str
    end_reason: str | None
    duration_s: int | None
    recording_path: str | None
    turns: list[StoredTurn]
    lead_name: str | None
    lead_stage: str | None
    lead_score: int | None


def configure_embedded(port: int) -> str:
    """Point this process at offline providers and a local signing key; returns the key."""
    import os
    import secrets

    from crm import config as crm_config
    from crm import db as crm_db
    from voice_gateway import config as gateway_config
    from voice_gateway import runtime
    from voice_gateway.admission import get_admission
    from voice_gateway.twilio.tokens import get_call_tokens

    token = secrets.token_hex(16)
    os.environ.update(EMBEDDED_PROVIDERS)
    os.environ["TWILIO_AUTH_TOKEN"] = token
    os.environ.setdefault("CALL_TOKEN_SECRET", secrets.token_urlsafe(32))
    os.environ["PUBLIC_HOST"] = f"127.0.0.1:{port}"
    for cached in (
        crm_config.get_settings,
        crm_db.get_engine,
        crm_db.get_sessionmaker,
        gateway_config.get_settings,
        runtime.get_runtime,
        get_admission,
        get_call_tokens,
    ):
        cached.cache_clear()
    return token


def stored_call(call_id: int) -> StoredCall:
    """What the CRM kept of a call: the row, its turns, its lead."""
    from crm.calls.metrics import response_latency
    from crm.calls.models import Call

    with session_scope() as db:
        call = db.get(Call, call_id)
        if call is None:
            raise LookupError(f"call {call_id} was not stored")
        lead = db.get(Lead, call.lead_id) if call.lead_id is not None else None
        duration = (
            int((call.ended_at - call.started_at).total_seconds())
            if call.ended_at and call.started_at
            else None
        )
        return StoredCall(
            call_id=call.id,
            status=call.status.value,
            end_reason=call.end_reason,
            duration_s=duration,
            recording_path=call.recording_path,
            turns=[
                StoredTurn(
                    t.role.value,
                    t.start_ms,
                    t.end_ms,
                    t.text,
                    t.interrupted,
                    response_latency(t.latency),
                )
                for t in call.turns
            ],
            lead_name=lead.full_name if lead else None,
            lead_stage=lead.stage.value if lead else None,
            lead_score=lead.score if lead else None,
        )
