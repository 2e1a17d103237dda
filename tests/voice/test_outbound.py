"""The pure parts of placing an outbound call and of answering-machine detection.

What the REST request says (the inbound TwiML inline, callbacks, AMD), which number a
call comes from, what each AnsweredBy does under each AMD_MODE, the call-control
messages and the in-process channel, and the admission hold moved to Twilio's sid.
The flow with the database and Twilio is tested end to end (test_outbound_e2e.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from crm.errors import InvalidInput
from voice_gateway.admission import Admission
from voice_gateway.amd import AmdAction, AnsweredBy, decide, parse_answered_by, spoken_number
from voice_gateway.call_control import (
    ControlEvent,
    ControlKind,
    LocalCallControl,
    RedisCallControl,
    channel_of,
    from_redis_url,
)
from voice_gateway.config import AmdMode, GatewaySettings
from voice_gateway.outbound import (
    Callbacks,
    NotConfigured,
    build_request,
    callbacks_of,
    check_idempotency_key,
    choose_from_number,
    machine_detection_for,
)
from voice_gateway.providers.telephony_twilio import MachineDetection
from voice_gateway.simulator import dial
from voice_gateway.twilio.tokens import CallTokens

CALLBACKS = Callbacks(
    media_url="wss://voice.example.com/twilio/media",
    stream_status_url="https://voice.example.com/twilio/stream-status",
    status_url="https://voice.example.com/twilio/status",
    amd_url="https://voice.example.com/twilio/amd",
)


def settings(**values: str) -> GatewaySettings:
    kwargs: dict[str, Any] = {"_env_file": None, **values}
    return GatewaySettings(**kwargs)


# -- where Twilio reaches us ----------------------------------------------------------


def test_callbacks_come_from_the_public_host() -> None:
    assert callbacks_of(settings(PUBLIC_HOST="voice.example.com")) == CALLBACKS
    local = callbacks_of(settings(PUBLIC_HOST="http://127.0.0.1:8000"))
    assert local.media_url == "ws://127.0.0.1:8000/twilio/media"
    assert local.amd_url == "http://127.0.0.1:8000/twilio/amd"


def test_without_a_public_host_the_error_names_the_variable() -> None:
    with pytest.raises(NotConfigured) as caught:
        callbacks_of(settings(PUBLIC_HOST=""))
    problem = caught.value.to_dict()
    assert problem["status"] == 503
    assert problem["missing"] == ["PUBLIC_HOST"]
    assert "public_http_base" in problem["detail"]
    assert "public_ws_base" in problem["detail"]


# -- which number -----------------------------------------------------------------------


def test_the_first_number_is_the_default_and_a_requested_one_must_be_owned() -> None:
    owned = ["+34910000001", "+34910000002"]
    assert choose_from_number(owned, None) == "+34910000001"
    assert choose_from_number(owned, "+34910000002") == "+34910000002"
    with pytest.raises(InvalidInput) as caught:
        choose_from_number(owned, "+34910000003")
    assert caught.value.errors[0]["field"] == "from_number"
    assert "+34910000001" in caught.value.errors[0]["message"]


def test_a_broker_without_numbers_cannot_call() -> None:
    with pytest.raises(InvalidInput) as caught:
        choose_from_number([], None)
    assert "no phone number" in caught.value.detail


# -- the REST request ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "detection"),
    [
        (AmdMode.off, None),
        (AmdMode.hangup, MachineDetection.enable),
        (AmdMode.voicemail, MachineDetection.detect_message_end),
    ],
)
def test_amd_mode_picks_the_detection(mode: AmdMode, detection: MachineDetection | None) -> None:
    assert machine_detection_for(mode) is detection


def test_the_request_carries_the_inbound_twiml_and_every_callback() -> None:
    tokens = CallTokens(secret=b"k" * 32, ttl_s=300, clock=lambda: 1_000_000)
    token = tokens.issue(42)
    request = build_request(
        to="+12125550123",
        from_="+34910000001",
        call_id=42,
        token=token,
        callbacks=CALLBACKS,
        amd_mode=AmdMode.voicemail,
        max_call_seconds=900,
    )
    params = request.sdk_kwargs()
    assert params["to"] == "+12125550123"
    assert params["from_"] == "+34910000001"
    assert params["status_callback"] == CALLBACKS.status_url
    assert params["status_callback_method"] == "POST"
    assert params["status_callback_event"] == ["initiated", "ringing", "answered", "completed"]
    assert params["machine_detection"] == "DetectMessageEnd"
    assert params["async_amd"] == "true"
    assert params["async_amd_status_callback"] == CALLBACKS.amd_url
    assert params["time_limit"] == 960
    # The same stream an inbound call gets: our socket, the call id and a valid token.
    target = dial.read_twiml(params["twiml"])
    assert target.url == CALLBACKS.media_url
    assert target.parameters == {"call_id": "42", "token": token}
    assert tokens.verify(target.parameters["token"], call_id="42").call_id == 42
    assert 'statusCallback="https://voice.example.com/twilio/stream-status"' in params["twiml"]


def test_without_amd_no_detection_is_asked_for() -> None:
    request = build_request(
        to="+12125550123",
        from_="+34910000001",
        call_id=1,
        token="t",
        callbacks=CALLBACKS,
        amd_mode=AmdMode.off,
        max_call_seconds=4 * 3600,
    )
    params = request.sdk_kwargs()
    assert "machine_detection" not in params
    assert "async_amd" not in params
    assert params["time_limit"] == 4 * 3600  # Twilio's cap, never above it


@pytest.mark.parametrize("key", ["", " padded", "x" * 101, "tab\there"])
def test_bad_idempotency_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_idempotency_key(key)
    assert caught.value.errors[0]["field"] == "Idempotency-Key"


def test_a_good_idempotency_key_passes() -> None:
    assert check_idempotency_key("campaign-7/lead-9/step-2") == "campaign-7/lead-9/step-2"
    assert check_idempotency_key(None) is None


# -- what an AMD verdict does -------------------------------------------------------------

N, H, V = AmdAction.nothing, AmdAction.hang_up, AmdAction.leave_voicemail

#: AnsweredBy → the action under AMD_MODE off, hangup, voicemail.
DECISIONS = {
    AnsweredBy.human: (N, N, N),
    AnsweredBy.unknown: (N, N, N),
    AnsweredBy.machine_start: (N, H, N),
    AnsweredBy.machine_end_beep: (N, H, V),
    AnsweredBy.machine_end_silence: (N, H, V),
    AnsweredBy.machine_end_other: (N, H, V),
    AnsweredBy.fax: (H, H, H),
}


@pytest.mark.parametrize("answered_by", list(AnsweredBy))
def test_each_verdict_under_each_mode(answered_by: AnsweredBy) -> None:
    modes = (AmdMode.off, AmdMode.hangup, AmdMode.voicemail)
    assert tuple(decide(answered_by, mode) for mode in modes) == DECISIONS[answered_by]


def test_answered_by_is_read_leniently_and_unknown_values_are_none() -> None:
    assert parse_answered_by(" Machine_End_Beep ") is AnsweredBy.machine_end_beep
    assert parse_answered_by("robot") is None
    assert parse_answered_by(None) is None


def test_the_callback_number_is_spoken_in_national_format() -> None:
    assert spoken_number("+34911234567") == "911 23 45 67"
    assert spoken_number("+12125550123") == "(212) 555-0123"
    assert spoken_number("not a number") == "not a number"


# -- the call-control channel -------------------------------------------------------------


def test_control_events_round_trip_and_garbage_is_refused() -> None:
    event = ControlEvent(ControlKind.answered_by, "machine_end_beep")
    assert ControlEvent.decode(event.encode()) == event
    assert ControlEvent.decode(event.encode().encode()) == event
    for raw in ("not json", "[]", '{"kind": "answered_by"}', '{"kind": "x", "value": "y"}'):
        with pytest.raises(ValueError, match=r"JSON|kind|valid ControlKind"):
            ControlEvent.decode(raw)
    with pytest.raises(ValueError, match="too large"):
        ControlEvent.decode("x" * 2000)


def test_the_channel_is_redis_only_when_a_url_is_configured() -> None:
    assert isinstance(from_redis_url(None), LocalCallControl)
    assert isinstance(from_redis_url("redis://127.0.0.1:6379/15"), RedisCallControl)
    assert channel_of(7) == "voiceagent:call-control:7"
    assert "6379" not in repr(from_redis_url("redis://:secret@127.0.0.1:6379/15"))


async def test_in_process_delivery_reaches_only_that_calls_subscribers() -> None:
    control = LocalCallControl()
    got: dict[int, list[ControlEvent]] = {1: [], 2: []}
    arrived = asyncio.Event()

    async def listen(call_id: int) -> None:
        async with contextlib.aclosing(control.subscribe(call_id)) as events:
            async for event in events:
                got[call_id].append(event)
                arrived.set()

    tasks = [asyncio.create_task(listen(1)), asyncio.create_task(listen(2))]
    await asyncio.sleep(0)  # both subscribed
    beep = ControlEvent(ControlKind.answered_by, "machine_end_beep")
    await control.publish(1, beep)
    await control.publish(3, beep)  # nobody listens: dropped, no error
    await asyncio.wait_for(arrived.wait(), 1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert got == {1: [beep], 2: []}
    assert control._subscribers == {}  # cancelled subscribers are gone


async def test_in_process_delivery_crosses_threads() -> None:
    """The webhook may publish from FastAPI's threadpool, the session lives on the loop."""
    control = LocalCallControl()
    events = control.subscribe(5)
    first = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0)
    event = ControlEvent(ControlKind.answered_by, "human")
    await asyncio.to_thread(asyncio.run, control.publish(5, event))
    assert await asyncio.wait_for(first, 1) == event
    await events.aclose()


# -- admission: the hold follows the call to its sid ----------------------------------------


def test_a_reservation_is_moved_to_the_sid_and_renewed() -> None:
    now = [0.0]
    admission = Admission(1, hold_s=30, clock=lambda: now[0])
    assert admission.reserve("outbound:abc") is not None
    now[0] = 20.0
    assert admission.rekey("outbound:abc", "CA1")
    assert admission.reserve("other") is None  # still full: the slot moved, not freed
    now[0] = 45.0  # past the first hold, within the renewed one
    assert admission.stats().reserved == 1
    assert admission.try_acquire("CA1") is not None  # the stream claims it by sid
    assert admission.stats().admitted == 1


def test_moving_an_expired_or_unknown_reservation_fails() -> None:
    now = [0.0]
    admission = Admission(2, hold_s=30, clock=lambda: now[0])
    admission.reserve("outbound:abc")
    now[0] = 31.0
    assert not admission.rekey("outbound:abc", "CA1")
    assert not admission.rekey("nothing", "CA2")
    assert admission.stats().reserved == 0
