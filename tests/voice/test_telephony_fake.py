"""The in-memory telephony: Twilio's rules, recorded requests, latency and failures."""

from __future__ import annotations

import asyncio

import pytest

from voice_gateway.providers.base import ProviderError, Telephony
from voice_gateway.providers.telephony_fake import (
    FakeTelephony,
    HangUp,
    Operation,
    PlacedCall,
    TelephonyEvent,
    Transfer,
)
from voice_gateway.providers.telephony_twilio import (
    MachineDetection,
    OutboundCall,
    TelephonyError,
    TelephonyFailure,
    transfer_twiml,
)

CALL = "CA" + "ab" * 16
OTHER_CALL = "CA" + "cd" * 16
HUMAN = "+34612345678"
LEAD = "+14155550100"
LINE = "+14155550199"


class Clock:
    """Injected time: latency is a recorded sleep that advances it, not a wait."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def test_it_is_a_telephony_provider() -> None:
    provider: Telephony = FakeTelephony()
    assert isinstance(provider, FakeTelephony)


def test_negative_latency_is_refused() -> None:
    with pytest.raises(ValueError, match="latency"):
        FakeTelephony(latency_ms=-1)


async def test_hang_up_is_recorded_after_the_latency() -> None:
    clock = Clock()
    fake = FakeTelephony(latency_ms=120, sleep=clock.sleep, clock=clock)
    await fake.hang_up(CALL)
    assert clock.sleeps == [0.12]
    assert fake.hang_ups == [
        HangUp(call_sid=CALL, at=100.12, already_ended=False, after_transfer=False)
    ]
    assert fake.is_ended(CALL)
    assert not fake.is_ended(OTHER_CALL)


async def test_without_latency_nothing_sleeps() -> None:
    clock = Clock()
    fake = FakeTelephony(sleep=clock.sleep, clock=clock)
    await fake.hang_up(CALL)
    assert clock.sleeps == []


async def test_hanging_up_an_ended_call_is_a_recorded_no_op() -> None:
    fake = FakeTelephony()
    fake.end_call(CALL)
    await fake.hang_up(CALL)
    await fake.hang_up(OTHER_CALL)
    await fake.hang_up(OTHER_CALL)
    assert [(h.call_sid, h.already_ended) for h in fake.hang_ups] == [
        (CALL, True),
        (OTHER_CALL, False),
        (OTHER_CALL, True),
    ]


async def test_transfer_records_the_twiml_twilio_would_get() -> None:
    fake = FakeTelephony()
    await fake.transfer(CALL, "+34 612 34 56 78", announce="Le paso con Ana.", language="es")
    (transfer,) = fake.transfers
    assert transfer.call_sid == CALL
    assert transfer.to_number == HUMAN
    assert transfer.announce == "Le paso con Ana."
    assert transfer.twiml == transfer_twiml(HUMAN, announce="Le paso con Ana.", language="es")
    assert not fake.is_ended(CALL)


async def test_a_hang_up_after_a_transfer_is_flagged() -> None:
    """At Twilio it would cut off the human the caller was handed to."""
    fake = FakeTelephony()
    await fake.transfer(CALL, HUMAN)
    await fake.hang_up(CALL)
    assert fake.hang_ups[0].after_transfer


async def test_transfer_of_an_ended_call_fails_like_twilio() -> None:
    fake = FakeTelephony()
    await fake.hang_up(CALL)
    with pytest.raises(TelephonyError) as exc:
        await fake.transfer(CALL, HUMAN)
    assert (exc.value.failure, exc.value.code) == (TelephonyFailure.call_ended, 21220)
    assert fake.transfers == []


@pytest.mark.parametrize(
    ("call_sid", "number"), [("CA1", HUMAN), (CALL, "612 34 56 78"), (CALL, "+1415")]
)
async def test_bad_input_is_refused_as_the_real_provider_does(call_sid: str, number: str) -> None:
    fake = FakeTelephony()
    with pytest.raises(TelephonyError) as exc:
        await fake.transfer(call_sid, number)
    assert exc.value.failure is TelephonyFailure.invalid_request
    assert fake.events == []


async def test_bad_call_sid_on_hang_up_is_refused() -> None:
    with pytest.raises(TelephonyError):
        await FakeTelephony().hang_up("not-a-sid")


async def test_outbound_calls_get_distinct_sids_and_keep_the_request() -> None:
    fake = FakeTelephony()
    first = await fake.place_call(
        OutboundCall(
            "+1 415 555 0100",
            LINE,
            "<Response/>",
            status_callback="https://voice.example.com/twilio/status",
            machine_detection=MachineDetection.enable,
            amd_status_callback="https://voice.example.com/twilio/amd",
        )
    )
    second = await fake.place_call(OutboundCall(LEAD, LINE, url="https://voice.example.com/voice"))
    assert first != second
    assert first.startswith("CA")
    assert len(first) == 34
    placed = fake.placed_calls
    assert [p.call_sid for p in placed] == [first, second]
    assert placed[0].request.to == LEAD
    assert placed[0].request.machine_detection is MachineDetection.enable
    assert placed[1].request.url == "https://voice.example.com/voice"


async def test_outbound_call_input_is_checked() -> None:
    fake = FakeTelephony()
    with pytest.raises(TelephonyError, match="exactly one"):
        await fake.place_call(OutboundCall(LEAD, LINE))
    assert fake.events == []


async def test_injected_failures_apply_to_their_operation_in_order() -> None:
    fake = FakeTelephony()
    boom = ProviderError("twilio", "unavailable")
    fake.fail_next(Operation.hang_up, boom, times=2)
    await fake.transfer(CALL, HUMAN)  # other operations are unaffected
    for _ in range(2):
        with pytest.raises(ProviderError) as exc:
            await fake.hang_up(OTHER_CALL)
        assert exc.value is boom
    await fake.hang_up(OTHER_CALL)
    assert [type(e) for e in fake.events] == [Transfer, HangUp]


async def test_failure_injection_for_outbound_calls() -> None:
    fake = FakeTelephony()
    fake.fail_next(
        Operation.start_outbound_call,
        TelephonyError(TelephonyFailure.rate_limited, "429 Too Many Requests"),
    )
    with pytest.raises(TelephonyError) as exc:
        await fake.place_call(OutboundCall(LEAD, LINE, "<Response/>"))
    assert exc.value.failure is TelephonyFailure.rate_limited
    assert fake.placed_calls == []


async def test_a_request_cancelled_during_its_latency_never_happened() -> None:
    fake = FakeTelephony(latency_ms=10_000)
    task = asyncio.create_task(fake.hang_up(CALL))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.events == []
    assert not fake.is_ended(CALL)


async def test_wait_hang_up_returns_once_it_takes_effect() -> None:
    gate = asyncio.Event()

    async def sleep(_: float) -> None:
        await gate.wait()

    fake = FakeTelephony(latency_ms=50, sleep=sleep)
    waiter = asyncio.create_task(fake.wait_hang_up(CALL))
    hang_up = asyncio.create_task(fake.hang_up(CALL))
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.set()
    await hang_up
    result = await waiter
    assert result.call_sid == CALL
    # Waiting after the fact returns at once.
    assert await fake.wait_hang_up(CALL) == result


async def test_on_event_sees_each_request_as_it_takes_effect() -> None:
    seen: list[TelephonyEvent] = []
    fake = FakeTelephony(on_event=seen.append)
    await fake.transfer(CALL, HUMAN)
    await fake.hang_up(OTHER_CALL)
    sid = await fake.place_call(OutboundCall(LEAD, LINE, "<Response/>"))
    assert [type(e) for e in seen] == [Transfer, HangUp, PlacedCall]
    assert seen == fake.events
    assert isinstance(seen[2], PlacedCall)
    assert seen[2].call_sid == sid
    await fake.aclose()
