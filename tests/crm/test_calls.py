"""Calls: status ordering and latency arithmetic (pure), the gateway's write service and
the broker's read API, on the real PostgreSQL."""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import AuditLog
from crm.calls import metrics, transcript
from crm.calls import service as calls
from crm.calls.models import Call, CallStatus, CallTurn, TurnRole
from crm.calls.status import FINAL_STATUSES, accepts, is_final
from crm.calls.views import get_recordings_dir
from crm.db import get_sessionmaker
from crm.errors import Conflict, InvalidInput, NotFound
from crm.leads.models import ActivityKind, Direction, Lead, LeadActivity
from crm.pipeline.service import enter_initial
from crm.pipeline.stages import Stage
from crm.scoring.models import ScoreSnapshot
from tests.conftest import Tenant

T0 = datetime(2025, 5, 14, 10, 0, tzinfo=UTC)
GATEWAY = Actor.system("voice_gateway")


# -- helpers ----------------------------------------------------------------------------


def make_lead(db: Session, broker_id: int, name: str = "Ana García") -> Lead:
    lead = Lead(
        broker_id=broker_id, phone=f"+3461{random.randint(1000000, 9999999)}", full_name=name
    )
    db.add(lead)
    db.flush()
    enter_initial(db, lead=lead, actor=Actor.system())
    db.commit()
    return lead


def make_call(
    db: Session,
    broker_id: int,
    lead: Lead | None = None,
    direction: Direction = Direction.outbound,
    **kwargs: object,
) -> Call:
    call = calls.create_call(
        db,
        broker_id=broker_id,
        lead_id=lead.id if lead else None,
        direction=direction,
        from_number="+34910000000",
        to_number=lead.phone if lead else "+34612345678",
        actor=GATEWAY,
        **kwargs,  # type: ignore[arg-type]
    )
    db.commit()
    return call


def turn(db: Session, call: Call, role: TurnRole, text: str, start: int, end: int, **kw: object):
    return calls.add_turn(db, call=call, role=role, text=text, start_ms=start, end_ms=end, **kw)  # type: ignore[arg-type]


def audit_actions(db: Session, broker_id: int, object_id: int) -> list[str]:
    return list(
        db.scalars(
            select(AuditLog.action)
            .where(
                AuditLog.broker_id == broker_id,
                AuditLog.object_type == "call",
                AuditLog.object_id == str(object_id),
            )
            .order_by(AuditLog.id)
        )
    )


# -- pure: status order ---------------------------------------------------------------


def test_status_moves_forward_only() -> None:
    assert accepts(CallStatus.queued, CallStatus.ringing)
    assert accepts(CallStatus.queued, CallStatus.completed)
    assert accepts(CallStatus.ringing, CallStatus.in_progress)
    assert not accepts(CallStatus.in_progress, CallStatus.ringing)
    assert not accepts(CallStatus.ringing, CallStatus.ringing)


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
def test_final_status_is_never_replaced(final: CallStatus) -> None:
    assert is_final(final)
    for other in CallStatus:
        assert not accepts(final, other)


# -- pure: latency ------------------------------------------------------------------------

FULL = {
    "endpoint": 1000,
    "stt_final": 1150,
    "llm_first_token": 1500,
    "tts_first_byte": 1700,
    "first_audio_sent": 1720,
}


def test_response_latency_and_stages() -> None:
    assert metrics.response_latency(FULL) == 720
    assert metrics.stage_breakdown(FULL) == {
        "endpointing_ms": None,
        "stt_ms": 150,
        "llm_ms": 350,
        "tts_ms": 200,
        "send_ms": 20,
    }


def test_response_latency_counts_endpointing_when_speech_end_is_known() -> None:
    with_speech_end = {**FULL, "speech_end": FULL["endpoint"] - 600}
    assert metrics.response_latency(with_speech_end) == 720 + 600
    assert metrics.stage_breakdown(with_speech_end)["endpointing_ms"] == 600


def test_latency_gaps_need_both_marks_in_order() -> None:
    partial = {"endpoint": 1000, "llm_first_token": 900}
    assert metrics.response_latency(partial) is None
    assert metrics.response_latency(None) is None
    assert metrics.stage_breakdown(partial) == dict.fromkeys(metrics.STAGES)


@pytest.mark.parametrize(
    ("latency", "reason"),
    [
        ({"endpoint": 1, "bogus": 2}, "unknown latency marks: bogus"),
        ({"endpoint": -5}, "endpoint must be"),
        ({"endpoint": 1.5}, "endpoint must be"),
        ({"endpoint": True}, "endpoint must be"),
    ],
)
def test_check_latency_refuses(latency: dict[str, object], reason: str) -> None:
    with pytest.raises(metrics.LatencyError, match=reason):
        metrics.check_latency(latency)


def test_check_latency_drops_unmeasured_marks() -> None:
    assert metrics.check_latency({"endpoint": 5, "stt_final": None}) == {"endpoint": 5}


def test_percentile_is_nearest_rank() -> None:
    assert metrics.percentile([], 50) is None
    assert metrics.percentile([300], 50) == 300
    assert metrics.percentile([400, 100, 300, 200], 50) == 200
    assert metrics.percentile([400, 100, 300, 200], 95) == 400
    assert metrics.percentile([5, 1, 3], 50) == 3


def test_call_stats_count_barge_ins_on_agent_turns_only() -> None:
    facts = [
        metrics.TurnFacts("agent", False, {"endpoint": 0, "first_audio_sent": 500}),
        metrics.TurnFacts("caller", True, None),
        metrics.TurnFacts("agent", True, {"endpoint": 0, "first_audio_sent": 900}),
        metrics.TurnFacts("agent", False, None),
    ]
    stats = metrics.call_stats(facts)
    assert (stats.turns, stats.caller_turns, stats.agent_turns) == (4, 1, 3)
    assert stats.barge_ins == 1
    assert stats.measured_responses == 2
    assert stats.response_latency_p50_ms == 500
    assert stats.response_latency_max_ms == 900


def test_transcript_text() -> None:
    text = transcript.as_text(
        [
            transcript.Line("agent", "Hola,  ¿hablo\ncon Ana?", interrupted=True),
            transcript.Line("caller", "Sí, soy yo."),
        ]
    )
    assert text == "Agent: Hola, ¿hablo con Ana? [interrupted]\nCaller: Sí, soy yo.\n"
    assert transcript.as_text([]) == ""


# -- service: creating and status callbacks ------------------------------------------


def test_create_call_is_audited_and_starts_in_the_right_status(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    outbound = make_call(db, tenant.id, lead, twilio_call_sid=f"CA{random.getrandbits(64):x}")
    inbound = make_call(db, tenant.id, None, direction=Direction.inbound)
    assert outbound.status is CallStatus.queued
    assert inbound.status is CallStatus.ringing
    assert outbound.started_at is not None
    assert audit_actions(db, tenant.id, outbound.id) == ["call.create"]
    assert calls.get_by_sid(db, sid=outbound.twilio_call_sid or "") is outbound


def test_create_call_refuses_another_brokers_lead_and_a_repeated_sid(
    db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    foreign = make_lead(db, other_tenant.id)
    with pytest.raises(NotFound):
        make_call(db, tenant.id, foreign)
    db.rollback()
    sid = f"CA{random.getrandbits(64):x}"
    first = make_call(db, tenant.id, twilio_call_sid=sid)
    with pytest.raises(Conflict) as exc:
        make_call(db, tenant.id, twilio_call_sid=sid)
    assert exc.value.extra["call_id"] == first.id


def test_create_call_refuses_bad_numbers(db: Session, tenant: Tenant) -> None:
    with pytest.raises(InvalidInput):
        calls.create_call(
            db,
            broker_id=tenant.id,
            lead_id=None,
            direction=Direction.inbound,
            from_number="   ",
            to_number="+34910000000",
            actor=GATEWAY,
        )


def test_status_callbacks_out_of_order(db: Session, tenant: Tenant) -> None:
    call = make_call(db, tenant.id)
    assert calls.update_status(db, call=call, status=CallStatus.ringing, at=T0)
    assert calls.update_status(
        db, call=call, status=CallStatus.in_progress, at=T0 + timedelta(seconds=5)
    )
    # A repeat, then a late `ringing`: neither changes anything.
    assert not calls.update_status(
        db, call=call, status=CallStatus.in_progress, at=T0 + timedelta(seconds=9)
    )
    assert not calls.update_status(db, call=call, status=CallStatus.ringing, at=T0)
    assert calls.update_status(
        db, call=call, status=CallStatus.completed, at=T0 + timedelta(seconds=65)
    )
    # A final status is never replaced, even by another final one.
    assert not calls.update_status(
        db, call=call, status=CallStatus.failed, at=T0 + timedelta(seconds=70)
    )
    db.commit()
    db.refresh(call)
    assert call.status is CallStatus.completed
    assert call.answered_at == T0 + timedelta(seconds=5)
    assert call.ended_at == T0 + timedelta(seconds=65)
    assert calls.duration_seconds(call) == 60


def test_completed_before_in_progress_stays_completed(db: Session, tenant: Tenant) -> None:
    call = make_call(db, tenant.id)
    calls.update_status(db, call=call, status=CallStatus.completed, at=T0 + timedelta(minutes=2))
    calls.update_status(db, call=call, status=CallStatus.in_progress, at=T0)
    db.commit()
    assert call.status is CallStatus.completed
    assert call.answered_at is None


def test_status_decision_uses_the_committed_row(db: Session, tenant: Tenant) -> None:
    """A stale copy of the call in one worker must not undo another worker's final status."""
    call = make_call(db, tenant.id)
    with get_sessionmaker()() as other:
        theirs = other.get_one(Call, call.id)
        calls.update_status(other, call=theirs, status=CallStatus.no_answer, at=T0)
        other.commit()
    assert call.status is CallStatus.queued  # stale in this session
    assert not calls.update_status(db, call=call, status=CallStatus.ringing, at=T0)
    assert call.status.value == "no_answer"


# -- service: turns -----------------------------------------------------------------


def test_turns_are_numbered_in_order(db: Session, tenant: Tenant) -> None:
    call = make_call(db, tenant.id)
    first = turn(db, call, TurnRole.agent, "Hola", 0, 900, latency=FULL)
    second = turn(db, call, TurnRole.caller, "Sí", 1000, 1400)
    db.commit()
    assert (first.seq, second.seq) == (1, 2)
    assert first.latency == FULL
    assert [t.seq for t in calls.list_turns(db, call=call)] == [1, 2]


@pytest.mark.parametrize(
    ("start", "end", "latency"),
    [(-1, 10, None), (500, 100, None), (0, 10, {"endpoint": -3}), (0, 10, {"nope": 1})],
)
def test_bad_turns_are_refused_and_write_nothing(
    db: Session, tenant: Tenant, start: int, end: int, latency: dict[str, int] | None
) -> None:
    call = make_call(db, tenant.id)
    with pytest.raises(InvalidInput):
        turn(db, call, TurnRole.agent, "x", start, end, latency=latency)
    db.commit()
    assert calls.list_turns(db, call=call) == []


def test_a_second_writer_waits_for_the_first_and_takes_the_next_seq(
    db: Session, tenant: Tenant
) -> None:
    call = make_call(db, tenant.id)
    first = turn(db, call, TurnRole.agent, "first writer", 0, 100)  # holds the call row lock
    result: dict[str, object] = {}

    def second_writer() -> None:
        with get_sessionmaker()() as s2:
            mine = s2.get_one(Call, call.id)
            try:
                result["seq"] = turn(s2, mine, TurnRole.caller, "second writer", 100, 200).seq
                s2.commit()
            except Exception as exc:
                result["error"] = exc

    thread = threading.Thread(target=second_writer)
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive(), "the second writer should wait on the call row lock"
    db.commit()
    thread.join(timeout=10)
    assert "error" not in result
    assert first.seq == 1
    assert result["seq"] == 2


def test_many_concurrent_writers_never_collide(db: Session, tenant: Tenant) -> None:
    call = make_call(db, tenant.id)
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer(n: int) -> None:
        start.wait()
        for i in range(5):
            with get_sessionmaker()() as s:
                mine = s.get_one(Call, call.id)
                try:
                    turn(s, mine, TurnRole.agent, f"w{n}-{i}", i, i + 1)
                    s.commit()
                except BaseException as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert [t.seq for t in calls.list_turns(db, call=call)] == list(range(1, 31))


def test_add_turn_retries_when_a_writer_without_the_lock_took_the_seq(
    db: Session, tenant: Tenant
) -> None:
    """Something that inserted a turn without locking the call (a SQLite writer, a raw
    insert) makes the unique key fail; add_turn takes the next number instead."""
    call = make_call(db, tenant.id)
    db.add(
        CallTurn(
            broker_id=tenant.id,
            call_id=call.id,
            seq=1,
            role=TurnRole.system,
            text="raw",
            start_ms=0,
            end_ms=0,
        )
    )
    db.flush()  # uncommitted: the other writer cannot see it, only collide with it
    result: dict[str, object] = {}

    def writer() -> None:
        with get_sessionmaker()() as s2:
            try:
                result["seq"] = turn(s2, s2.get_one(Call, call.id), TurnRole.agent, "x", 0, 1).seq
                s2.commit()
            except Exception as exc:
                result["error"] = exc

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive(), "the writer should wait on the unique index"
    db.commit()
    thread.join(timeout=10)
    assert "error" not in result
    assert result["seq"] == 2


def test_append_turn_is_scoped_to_the_broker_and_leaves_nothing_on_refusal(
    db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    """The gateway's path names the call by id: another broker's id is not found, and a
    bad turn is refused before anything is written."""
    call = make_call(db, tenant.id)
    with pytest.raises(NotFound):
        calls.append_turn(
            db,
            broker_id=other_tenant.id,
            call_id=call.id,
            role=TurnRole.agent,
            text="hola",
            start_ms=0,
            end_ms=10,
        )
    with pytest.raises(InvalidInput):
        calls.append_turn(
            db,
            broker_id=tenant.id,
            call_id=call.id,
            role=TurnRole.agent,
            text="hola",
            start_ms=10,
            end_ms=5,
        )
    assert calls.list_turns(db, call=call) == []
    first = calls.append_turn(
        db,
        broker_id=tenant.id,
        call_id=call.id,
        role=TurnRole.caller,
        text="Busco un piso.",
        start_ms=0,
        end_ms=900,
        latency=None,
    )
    second = calls.append_turn(
        db,
        broker_id=tenant.id,
        call_id=call.id,
        role=TurnRole.agent,
        text="¿En qué zona?",
        start_ms=1500,
        end_ms=2500,
        interrupted=True,
    )
    assert (first, second) == (1, 2)
    stored = calls.list_turns(db, call=call)
    assert [(t.seq, t.role, t.text, t.interrupted) for t in stored] == [
        (1, TurnRole.caller, "Busco un piso.", False),
        (2, TurnRole.agent, "¿En qué zona?", True),
    ]
    assert all(t.broker_id == tenant.id for t in stored)


# -- service: ending and outcome -------------------------------------------------------


def _activities(db: Session, lead: Lead) -> list[LeadActivity]:
    return list(
        db.scalars(
            select(LeadActivity)
            .where(LeadActivity.lead_id == lead.id, LeadActivity.kind == ActivityKind.call)
            .order_by(LeadActivity.id)
        )
    )


def test_end_call_logs_the_call_advances_the_lead_and_rescores(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    call = make_call(db, tenant.id, lead, started_at=T0)
    calls.update_status(db, call=call, status=CallStatus.in_progress, at=T0 + timedelta(seconds=3))
    turn(db, call, TurnRole.agent, "Hola, ¿hablo con Ana?", 0, 1500)
    turn(db, call, TurnRole.caller, "Sí", 1600, 1900)
    calls.end_call(db, call=call, reason="hangup", at=T0 + timedelta(seconds=195))
    db.commit()

    assert call.status is CallStatus.completed
    assert call.end_reason == "hangup"
    db.refresh(lead)
    assert lead.stage is Stage.contacted
    assert lead.last_contacted_at == T0
    [activity] = _activities(db, lead)
    assert activity.direction is Direction.outbound
    assert activity.body == "Outbound call, 3 min 12 s"
    assert activity.data == {
        "call_id": call.id,
        "status": "completed",
        "end_reason": "hangup",
        "duration_seconds": 192,
        "answered": True,
    }
    triggers = db.scalars(select(ScoreSnapshot.trigger).where(ScoreSnapshot.lead_id == lead.id))
    assert any("call.ended" in t for t in triggers)
    assert "call.end" in audit_actions(db, tenant.id, call.id)


def test_end_call_is_idempotent(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    call = make_call(db, tenant.id, lead)
    turn(db, call, TurnRole.caller, "¿Diga?", 0, 500)
    calls.end_call(db, call=call, reason="hangup", at=T0)
    db.commit()
    calls.end_call(db, call=call, reason="stop", at=T0 + timedelta(seconds=9))
    calls.update_status(db, call=call, status=CallStatus.completed, at=T0 + timedelta(seconds=9))
    db.commit()
    assert call.end_reason == "hangup"
    assert call.ended_at == T0
    assert len(_activities(db, lead)) == 1
    assert audit_actions(db, tenant.id, call.id).count("call.end") == 1


def test_an_unanswered_call_is_logged_but_is_not_contact(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    call = make_call(db, tenant.id, lead, started_at=T0)
    calls.update_status(db, call=call, status=CallStatus.busy, at=T0 + timedelta(seconds=20))
    calls.end_call(db, call=call, reason="busy", at=T0 + timedelta(seconds=21))
    db.commit()
    db.refresh(lead)
    assert call.status is CallStatus.busy  # a final status survives end_call
    assert call.ended_at == T0 + timedelta(seconds=20)
    assert lead.stage is Stage.new
    [activity] = _activities(db, lead)
    assert activity.body == "Outbound call, busy"
    assert activity.data is not None
    assert activity.data["answered"] is False


def test_set_outcome_is_audited_once_per_change(db: Session, tenant: Tenant) -> None:
    call = make_call(db, tenant.id)
    actor = Actor.task("summarize_call")
    extracted = {"budget_max": 350000, "areas": ["Chamberí"]}
    calls.set_outcome(db, call=call, summary=" Wants a flat. ", extracted=extracted, actor=actor)
    calls.set_outcome(db, call=call, summary="Wants a flat.", extracted=extracted, actor=actor)
    db.commit()
    assert call.summary == "Wants a flat."
    assert call.extracted == extracted
    assert audit_actions(db, tenant.id, call.id) == ["call.create", "call.outcome"]


# -- API ----------------------------------------------------------------------------------


def _seed_reviewable_call(db: Session, tenant: Tenant) -> tuple[Lead, Call]:
    lead = make_lead(db, tenant.id)
    call = make_call(db, tenant.id, lead, started_at=T0)
    turn(db, call, TurnRole.agent, "Hola, soy Lucía.", 0, 1200)
    turn(db, call, TurnRole.caller, "Hola.", 1500, 1900)
    turn(
        db,
        call,
        TurnRole.agent,
        "¿Busca piso en Madrid?",
        2500,
        3100,
        interrupted=True,
        latency={**FULL, "endpoint": 1900, "first_audio_sent": 2400},
    )
    turn(db, call, TurnRole.caller, "Sí, en Chamberí.", 3000, 4000)
    turn(
        db,
        call,
        TurnRole.agent,
        "Perfecto.",
        4700,
        5200,
        latency={"endpoint": 4000, "first_audio_sent": 4700},
    )
    calls.set_outcome(db, call=call, summary="Wants Chamberí.", extracted={"a": 1}, actor=GATEWAY)
    calls.end_call(db, call=call, reason="hangup", at=T0 + timedelta(seconds=6))
    db.commit()
    return lead, call


async def test_get_call_with_turns_latency_and_stats(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    _, call = _seed_reviewable_call(db, tenant)
    response = await client.get(f"/api/v1/calls/{call.id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [t["seq"] for t in body["turns"]] == [1, 2, 3, 4, 5]
    assert [t["role"] for t in body["turns"]] == ["agent", "caller", "agent", "caller", "agent"]
    third = body["turns"][2]
    assert third["interrupted"] is True
    assert third["duration_ms"] == 600
    assert third["response_latency_ms"] == 500
    assert third["latency"]["endpoint"] == 1900
    assert third["latency"]["llm_ms"] == 350
    assert body["turns"][1]["latency"] is None
    assert body["stats"] == {
        "turns": 5,
        "caller_turns": 2,
        "agent_turns": 3,
        "barge_ins": 1,
        "measured_responses": 2,
        "response_latency_p50_ms": 500,
        "response_latency_p95_ms": 700,
        "response_latency_max_ms": 700,
    }
    assert body["summary"] == "Wants Chamberí."
    assert body["extracted"] == {"a": 1}
    assert body["has_summary"] is True
    assert body["duration_seconds"] == 6


async def test_list_calls_filters(client: httpx.AsyncClient, db: Session, tenant: Tenant) -> None:
    lead, summarized = _seed_reviewable_call(db, tenant)
    inbound = make_call(
        db, tenant.id, None, direction=Direction.inbound, started_at=T0 - timedelta(days=2)
    )
    calls.update_status(db, call=inbound, status=CallStatus.no_answer, at=T0)
    db.commit()

    async def ids(**params: str | int | list[str]) -> list[int]:
        r = await client.get("/api/v1/calls", params=params, headers=tenant.headers)
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["items"]]

    assert await ids() == [summarized.id, inbound.id]
    assert await ids(order="asc") == [inbound.id, summarized.id]
    assert await ids(lead_id=lead.id) == [summarized.id]
    assert await ids(direction="inbound") == [inbound.id]
    assert await ids(status=["no_answer", "busy"]) == [inbound.id]
    assert set(await ids(status=["no_answer", "completed"])) == {inbound.id, summarized.id}
    assert await ids(has_summary="true") == [summarized.id]
    assert await ids(has_summary="false") == [inbound.id]
    assert await ids(since=(T0 - timedelta(days=1)).isoformat()) == [summarized.id]
    assert await ids(until=T0.isoformat()) == [inbound.id]
    assert await ids(sort="created_at", order="asc") == [summarized.id, inbound.id]


async def test_list_calls_refuses_bad_parameters(client: httpx.AsyncClient, tenant: Tenant) -> None:
    for params in (
        {"since": "2025-05-14T10:00:00"},  # naive
        {"since": T0.isoformat(), "until": (T0 - timedelta(hours=1)).isoformat()},
        {"sort": "summary"},
        {"status": "hung"},
    ):
        r = await client.get("/api/v1/calls", params=params, headers=tenant.headers)
        assert r.status_code == 422, params
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_another_brokers_call_is_not_found(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    _, call = _seed_reviewable_call(db, tenant)
    for path in ("", "/transcript", "/recording"):
        r = await client.get(f"/api/v1/calls/{call.id}{path}", headers=other_tenant.headers)
        assert r.status_code == 404, path
    listed = await client.get("/api/v1/calls", headers=other_tenant.headers)
    assert listed.json()["total"] == 0


async def test_transcript_as_text_and_json(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    _, call = _seed_reviewable_call(db, tenant)
    text = await client.get(f"/api/v1/calls/{call.id}/transcript", headers=tenant.headers)
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == (
        "Agent: Hola, soy Lucía.\n"
        "Caller: Hola.\n"
        "Agent: ¿Busca piso en Madrid? [interrupted]\n"
        "Caller: Sí, en Chamberí.\n"
        "Agent: Perfecto.\n"
    )
    as_json = await client.get(
        f"/api/v1/calls/{call.id}/transcript", params={"format": "json"}, headers=tenant.headers
    )
    lines = as_json.json()["lines"]
    assert as_json.json()["call_id"] == call.id
    assert [(line["speaker"], line["seq"]) for line in lines][:2] == [("Agent", 1), ("Caller", 2)]
    assert lines[2]["interrupted"] is True


# -- recordings ----------------------------------------------------------------------------


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    root = tmp_path / "recordings"
    root.mkdir()
    return root


@pytest.fixture
async def rec_client(recordings: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its recordings directory pointed at a temporary one."""
    from voice_gateway.app import create_app

    app = create_app()
    app.dependency_overrides[get_recordings_dir] = lambda: recordings
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF-not-yours")
    return secret


def _call_with_recording(db: Session, tenant: Tenant, path: str | None) -> Call:
    call = make_call(db, tenant.id)
    call.recording_path = path
    db.commit()
    return call


async def test_recording_is_served_from_the_recordings_directory(
    rec_client: httpx.AsyncClient, db: Session, tenant: Tenant, recordings: Path
) -> None:
    (recordings / "2025").mkdir()
    (recordings / "2025" / "call.wav").write_bytes(b"RIFF....WAVE")
    call = _call_with_recording(db, tenant, "2025/call.wav")
    r = await rec_client.get(f"/api/v1/calls/{call.id}/recording", headers=tenant.headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/wav"
    assert r.content == b"RIFF....WAVE"
    absolute = _call_with_recording(db, tenant, str(recordings / "2025" / "call.wav"))
    r = await rec_client.get(f"/api/v1/calls/{absolute.id}/recording", headers=tenant.headers)
    assert r.status_code == 200


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "missing", "none", "not_wav"])
async def test_recording_outside_the_directory_or_missing_is_not_found(
    rec_client: httpx.AsyncClient,
    db: Session,
    tenant: Tenant,
    recordings: Path,
    outside: Path,
    kind: str,
) -> None:
    (recordings / "notes.txt").write_text("not audio")
    (recordings / "link.wav").symlink_to(outside)
    stored = {
        "dotdot": "../secret.wav",
        "absolute": str(outside),
        "symlink": "link.wav",
        "missing": "gone.wav",
        "none": None,
        "not_wav": "notes.txt",
    }[kind]
    call = _call_with_recording(db, tenant, stored)
    r = await rec_client.get(f"/api/v1/calls/{call.id}/recording", headers=tenant.headers)
    assert r.status_code == 404
    assert b"RIFF-not-yours" not in r.content
