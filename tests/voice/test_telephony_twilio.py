"""Twilio REST call control, through the real SDK, against the stand-in on loopback."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from crm.config import Environment
from tests.voice.standins.twilio_rest import TwilioRestStandIn, new_call_sid
from voice_gateway.config import GatewaySettings
from voice_gateway.providers.base import ProviderError, Telephony
from voice_gateway.providers.telephony_twilio import (
    MAX_TWIML_CHARS,
    MachineDetection,
    OutboundCall,
    RetryPolicy,
    TelephonyError,
    TelephonyFailure,
    TwilioTelephony,
    check_call_sid,
    check_e164,
    classify,
    say_locale,
    transfer_twiml,
)

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "stand-in-auth-token-5f1d"
LEAD = "+14155550100"
AGENT_LINE = "+14155550199"
HUMAN = "+34612345678"
TWIML = "<Response><Say>Hola</Say></Response>"


class Sleeps:
    """Back-off pauses, recorded instead of slept: retries cost no wall time."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def twilio() -> Iterator[TwilioRestStandIn]:
    with TwilioRestStandIn(SID, TOKEN) as standin:
        yield standin


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make(base_url: str, sleeps: Sleeps, **retry: float) -> TwilioTelephony:
    policy = RetryPolicy(**{"request_timeout_s": 2.0, "budget_s": 10.0, **retry})  # type: ignore[arg-type]
    return TwilioTelephony(
        account_sid=SID,
        auth_token=TOKEN,
        base_url=base_url,
        retry=policy,
        sleep=sleeps,
        rng=random.Random(7),
    )


@pytest_asyncio.fixture(loop_scope="function")
async def telephony(twilio: TwilioRestStandIn, sleeps: Sleeps) -> AsyncIterator[TwilioTelephony]:
    provider = make(twilio.base_url, sleeps)
    yield provider
    await provider.aclose()


def call_path(call_sid: str) -> str:
    return f"/2010-04-01/Accounts/{SID}/Calls/{call_sid}.json"


# ---------------------------------------------------------------- pure helpers


def test_it_is_a_telephony_provider() -> None:
    provider: Telephony = TwilioTelephony(account_sid=SID, auth_token=TOKEN)
    assert isinstance(provider, TwilioTelephony)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [("+14155550100", "+14155550100"), ("+1 (415) 555-0100", "+14155550100"), (HUMAN, HUMAN)],
)
def test_e164_numbers_are_normalised(raw: str, e164: str) -> None:
    assert check_e164(raw) == e164


@pytest.mark.parametrize(
    "raw", ["", "4155550100", "+1415", "+999123456789", "call me", "+1 415 555"]
)
def test_numbers_that_are_not_international_e164_are_refused(raw: str) -> None:
    with pytest.raises(TelephonyError) as exc:
        check_e164(raw)
    assert exc.value.failure is TelephonyFailure.invalid_request
    assert isinstance(exc.value, ProviderError)


@pytest.mark.parametrize(
    "sid", ["", "CA123", "ca" + "0" * 32, "CA" + "g" * 32, "CA" + "0" * 31 + "/", "../../Calls"]
)
def test_call_sids_are_checked_before_they_reach_a_url(sid: str) -> None:
    with pytest.raises(TelephonyError) as exc:
        check_call_sid(sid)
    assert exc.value.failure is TelephonyFailure.invalid_request


def test_transfer_twiml_says_then_dials() -> None:
    twiml = transfer_twiml(
        "+1 415 555 0111",
        announce="Le paso con <Ana> & Co.",
        language="es",
        caller_id=AGENT_LINE,
        ring_timeout_s=20,
    )
    assert twiml == (
        '<Response><Say language="es-US">Le paso con &lt;Ana&gt; &amp; Co.</Say>'
        f'<Dial callerId="{AGENT_LINE}" timeout="20">+14155550111</Dial></Response>'
    )


def test_transfer_twiml_without_announcement_or_caller_id() -> None:
    assert transfer_twiml(HUMAN) == f'<Response><Dial timeout="30">{HUMAN}</Dial></Response>'
    assert transfer_twiml(HUMAN, announce="   ") == transfer_twiml(HUMAN)


def test_transfer_twiml_posts_the_dial_outcome_to_the_action_url() -> None:
    twiml = transfer_twiml(HUMAN, action_url="https://voice.example.com/twilio/dial?call=7&x=1")
    assert 'action="https://voice.example.com/twilio/dial?call=7&amp;x=1" method="POST"' in twiml


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"to_number": "0800 123"}, r"E\.164"),
        ({"to_number": HUMAN, "caller_id": "12"}, r"E\.164"),
        ({"to_number": HUMAN, "announce": "a" * MAX_TWIML_CHARS}, "at most 4000"),
        ({"to_number": HUMAN, "ring_timeout_s": 0}, "ring timeout"),
        ({"to_number": HUMAN, "ring_timeout_s": 601}, "ring timeout"),
        ({"to_number": HUMAN, "action_url": "/relative"}, "absolute"),
    ],
)
def test_transfer_twiml_refuses_what_twilio_would(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(TelephonyError, match=reason) as exc:
        transfer_twiml(**kwargs)  # type: ignore[arg-type]
    assert exc.value.failure is TelephonyFailure.invalid_request


def test_say_locale_maps_the_gateway_languages() -> None:
    assert say_locale("es") == "es-US"
    assert say_locale("EN") == "en-US"
    assert say_locale("es-ES") == "es-ES"
    assert say_locale(None) is None


@pytest.mark.parametrize(
    ("status", "code", "failure"),
    [
        (404, 20404, TelephonyFailure.not_found),
        (400, 21220, TelephonyFailure.call_ended),
        (401, 20003, TelephonyFailure.auth),
        (403, 20003, TelephonyFailure.auth),
        (429, 20429, TelephonyFailure.rate_limited),
        (500, 20500, TelephonyFailure.unavailable),
        (503, None, TelephonyFailure.unavailable),
        (400, 21201, TelephonyFailure.rejected),
    ],
)
def test_twilio_errors_are_classified(
    status: int, code: int | None, failure: TelephonyFailure
) -> None:
    assert classify(status, code) is failure


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "exactly one of twiml, url"),
        ({"twiml": TWIML, "url": "https://x.example/voice"}, "exactly one"),
        ({"twiml": " "}, "empty"),
        ({"twiml": "x" * (MAX_TWIML_CHARS + 1)}, "at most 4000"),
        ({"url": "ftp://x.example/voice"}, "absolute http"),
        ({"twiml": TWIML, "status_callback": "status"}, "absolute http"),
        ({"twiml": TWIML, "status_callback_events": ("answered", "hungup")}, "hungup"),
        ({"twiml": TWIML, "amd_status_callback": "https://x.example/amd"}, "machine_detection"),
        ({"twiml": TWIML, "ring_timeout_s": 0}, "ring timeout"),
        ({"twiml": TWIML, "time_limit_s": 0}, "time limit"),
    ],
)
def test_outbound_calls_are_checked_on_construction(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(TelephonyError, match=reason) as exc:
        OutboundCall(to=LEAD, from_=AGENT_LINE, **kwargs)  # type: ignore[arg-type]
    assert exc.value.failure is TelephonyFailure.invalid_request


def test_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="positive"):
        RetryPolicy(request_timeout_s=0)


def test_base_url_must_be_a_bare_origin() -> None:
    for bad in ("api.twilio.com", "https://api.twilio.com/2010-04-01", "file:///tmp"):
        with pytest.raises(ValueError, match="base URL"):
            TwilioTelephony(account_sid=SID, auth_token=TOKEN, base_url=bad)


# ---------------------------------------------------------------- settings and secrets


def settings(**values: str) -> GatewaySettings:
    kwargs: dict[str, object] = {"_env_file": None, **values}
    return GatewaySettings(**kwargs)  # type: ignore[arg-type]


def test_from_settings_uses_the_configured_account_base_url_and_timeout() -> None:
    provider = TwilioTelephony.from_settings(
        settings(
            TWILIO_ACCOUNT_SID=SID,
            TWILIO_AUTH_TOKEN=TOKEN,
            TWILIO_API_BASE_URL="https://api.dublin.ie1.twilio.com",
            TWILIO_REST_TIMEOUT_S="2.5",
        )
    )
    assert provider.account_sid == SID
    assert provider.base_url == "https://api.dublin.ie1.twilio.com"
    assert provider.retry.request_timeout_s == 2.5
    assert provider.retry.budget_s >= 2 * provider.retry.request_timeout_s


def test_from_settings_needs_credentials() -> None:
    with pytest.raises(ValueError, match="TWILIO_AUTH_TOKEN"):
        TwilioTelephony.from_settings(settings(TWILIO_ACCOUNT_SID=SID))


def test_production_refuses_a_plain_http_base_url() -> None:
    base = settings(
        TWILIO_ACCOUNT_SID=SID, TWILIO_AUTH_TOKEN=TOKEN, TWILIO_API_BASE_URL="http://10.0.0.5:8080"
    )
    TwilioTelephony.from_settings(base)  # development: a local stand-in is fine
    production = base.model_copy(update={"environment": Environment.production})
    with pytest.raises(ValueError, match="https"):
        TwilioTelephony.from_settings(production)


def test_the_base_url_setting_must_be_an_origin() -> None:
    with pytest.raises(ValueError, match="TWILIO_API_BASE_URL"):
        settings(TWILIO_API_BASE_URL="https://api.twilio.com/2010-04-01")


def test_repr_never_shows_the_auth_token() -> None:
    provider = TwilioTelephony(account_sid=SID, auth_token=TOKEN)
    assert TOKEN not in repr(provider)
    assert SID in repr(provider)


# ---------------------------------------------------------------- hang-up


async def test_hang_up_completes_the_call_through_the_sdk(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    call_sid = twilio.add_call()
    await telephony.hang_up(call_sid)

    assert twilio.calls[call_sid].status == "completed"
    (request,) = twilio.requests
    assert (request.method, request.path) == ("POST", call_path(call_sid))
    assert request.form == {"Status": ["completed"]}
    assert request.username == SID
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["user-agent"].startswith("twilio-python/")


async def test_hang_up_of_an_unknown_call_is_not_an_error(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="voice_gateway"):
        await telephony.hang_up(new_call_sid())
    assert len(twilio.requests) == 1  # a 404 is an answer, not a reason to retry
    assert "already ended" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_hang_up_of_an_ended_call_is_not_an_error(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    call_sid = twilio.add_call(status="completed")
    await telephony.hang_up(call_sid)
    await telephony.hang_up(call_sid)
    assert twilio.calls[call_sid].status == "completed"


async def test_hang_up_treats_call_not_in_progress_as_ended(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    twilio.fail_next(400, code=21220, message="Call is not in-progress.")
    await telephony.hang_up(twilio.add_call())
    assert len(twilio.requests) == 1


async def test_hang_up_with_a_bad_sid_sends_nothing(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    with pytest.raises(TelephonyError) as exc:
        await telephony.hang_up("CA../../Accounts")
    assert exc.value.failure is TelephonyFailure.invalid_request
    assert twilio.requests == []


async def test_hang_ups_run_concurrently_on_one_connection_pool(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    sids = [twilio.add_call() for _ in range(20)]
    await asyncio.gather(*(telephony.hang_up(sid) for sid in sids))
    assert {twilio.calls[sid].status for sid in sids} == {"completed"}
    assert len(twilio.requests) == 20


async def test_ambient_twilio_region_does_not_redirect_requests(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "au1")
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    call_sid = twilio.add_call()
    await telephony.hang_up(call_sid)
    assert twilio.calls[call_sid].status == "completed"


# ---------------------------------------------------------------- transfer


async def test_transfer_replaces_the_twiml_with_say_and_dial(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    call_sid = twilio.add_call()
    await telephony.transfer(
        call_sid, "+1 415 555 0111", announce="Le paso con un asesor.", language="es"
    )
    (request,) = twilio.requests
    assert request.path == call_path(call_sid)
    assert request.field("Status") is None
    assert request.field("Twiml") == (
        '<Response><Say language="es-US">Le paso con un asesor.</Say>'
        '<Dial timeout="30">+14155550111</Dial></Response>'
    )
    assert twilio.calls[call_sid].twiml == request.field("Twiml")
    assert twilio.calls[call_sid].status == "in-progress"


async def test_transfer_uses_the_configured_caller_id_and_voice(
    twilio: TwilioRestStandIn, sleeps: Sleeps
) -> None:
    provider = TwilioTelephony(
        account_sid=SID,
        auth_token=TOKEN,
        base_url=twilio.base_url,
        transfer_caller_id=AGENT_LINE,
        say_voice="Polly.Lupe",
        sleep=sleeps,
    )
    try:
        await provider.transfer(twilio.add_call(), HUMAN, announce="Un momento.")
    finally:
        await provider.aclose()
    twiml = twilio.requests[0].field("Twiml")
    assert twiml is not None
    assert '<Say voice="Polly.Lupe">Un momento.</Say>' in twiml
    assert f'<Dial callerId="{AGENT_LINE}" timeout="30">{HUMAN}</Dial>' in twiml


async def test_transfer_to_an_invalid_number_sends_nothing(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    with pytest.raises(TelephonyError, match=r"E\.164") as exc:
        await telephony.transfer(twilio.add_call(), "555-0111")
    assert exc.value.failure is TelephonyFailure.invalid_request
    assert twilio.requests == []


async def test_transfer_of_an_unknown_call_fails_as_not_found(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    with pytest.raises(TelephonyError) as exc:
        await telephony.transfer(new_call_sid(), HUMAN)
    assert (exc.value.failure, exc.value.status, exc.value.code) == (
        TelephonyFailure.not_found,
        404,
        20404,
    )


async def test_transfer_of_an_ended_call_fails_as_call_ended(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    with pytest.raises(TelephonyError) as exc:
        await telephony.transfer(twilio.add_call(status="completed"), HUMAN)
    assert exc.value.failure is TelephonyFailure.call_ended
    assert exc.value.code == 21220
    assert "not in-progress" in str(exc.value)


# ---------------------------------------------------------------- outbound calls


async def test_outbound_call_sends_every_field_and_returns_the_sid(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    call_sid = await telephony.place_call(
        OutboundCall(
            "+1 415 555 0100",
            AGENT_LINE,
            TWIML,
            status_callback="https://voice.example.com/twilio/status",
            machine_detection=MachineDetection.detect_message_end,
            amd_status_callback="https://voice.example.com/twilio/amd",
            ring_timeout_s=25,
            time_limit_s=1200,
            record=True,
        )
    )
    assert twilio.calls[call_sid].status == "queued"
    (request,) = twilio.requests
    assert request.path == f"/2010-04-01/Accounts/{SID}/Calls.json"
    assert request.form == {
        "To": [LEAD],
        "From": [AGENT_LINE],
        "Twiml": [TWIML],
        "StatusCallback": ["https://voice.example.com/twilio/status"],
        "StatusCallbackMethod": ["POST"],
        "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
        "MachineDetection": ["DetectMessageEnd"],
        "AsyncAmd": ["true"],
        "AsyncAmdStatusCallback": ["https://voice.example.com/twilio/amd"],
        "AsyncAmdStatusCallbackMethod": ["POST"],
        "Timeout": ["25"],
        "TimeLimit": ["1200"],
        "Record": ["true"],
    }


async def test_outbound_call_by_url(twilio: TwilioRestStandIn, telephony: TwilioTelephony) -> None:
    call_sid = await telephony.place_call(
        OutboundCall(to=LEAD, from_=AGENT_LINE, url="https://voice.example.com/twilio/voice")
    )
    assert twilio.calls[call_sid].url == "https://voice.example.com/twilio/voice"
    assert twilio.requests[0].form == {
        "To": [LEAD],
        "From": [AGENT_LINE],
        "Url": ["https://voice.example.com/twilio/voice"],
        "Method": ["POST"],
        "Timeout": ["30"],
    }


async def test_outbound_call_refused_by_twilio_is_rejected_not_retried(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    twilio.fail_next(400, code=21215, message="Geo Permission configuration is not permitting call")
    with pytest.raises(TelephonyError, match="Geo Permission") as exc:
        await telephony.place_call(OutboundCall(LEAD, AGENT_LINE, TWIML))
    assert exc.value.failure is TelephonyFailure.rejected
    assert exc.value.code == 21215
    assert len(twilio.requests) == 1


# ---------------------------------------------------------------- auth


async def test_wrong_token_fails_as_auth_without_retry_or_leak(
    twilio: TwilioRestStandIn, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-token-that-must-not-leak"
    provider = TwilioTelephony(
        account_sid=SID, auth_token=wrong, base_url=twilio.base_url, sleep=sleeps
    )
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(TelephonyError) as exc:
            await provider.hang_up(twilio.add_call())
    finally:
        await provider.aclose()
    assert (exc.value.failure, exc.value.status, exc.value.code) == (
        TelephonyFailure.auth,
        401,
        20003,
    )
    assert len(twilio.requests) == 1
    assert sleeps.pauses == []
    for text in (str(exc.value), repr(exc.value), caplog.text, repr(provider)):
        assert wrong not in text


# ---------------------------------------------------------------- retries and timeouts


async def test_hang_up_retries_server_errors_with_growing_backoff(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony, sleeps: Sleeps
) -> None:
    call_sid = twilio.add_call()
    twilio.fail_next(503, code=20503, message="Service Unavailable", times=2)
    await telephony.hang_up(call_sid)
    assert twilio.calls[call_sid].status == "completed"
    assert len(twilio.requests) == 3
    first, second = sleeps.pauses
    assert 0.125 <= first <= 0.25
    assert 0.25 <= second <= 0.5


async def test_hang_up_gives_up_after_max_attempts(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony, sleeps: Sleeps
) -> None:
    twilio.fail_next(500, code=20500, times=5)
    with pytest.raises(TelephonyError) as exc:
        await telephony.hang_up(twilio.add_call())
    assert exc.value.failure is TelephonyFailure.unavailable
    assert exc.value.attempts == 3
    assert len(twilio.requests) == 3
    assert len(sleeps.pauses) == 2


async def test_hang_up_retries_a_dropped_connection(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    call_sid = twilio.add_call()
    twilio.drop_next()
    await telephony.hang_up(call_sid)
    assert twilio.calls[call_sid].status == "completed"
    assert len(twilio.requests) == 2


async def test_an_answer_that_is_not_json_is_retried_for_hang_ups_only(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    call_sid = twilio.add_call()
    twilio.garble_next()
    await telephony.hang_up(call_sid)
    assert twilio.calls[call_sid].status == "completed"
    assert len(twilio.requests) == 2

    twilio.garble_next()
    with pytest.raises(TelephonyError, match="unreadable answer") as exc:
        await telephony.place_call(OutboundCall(LEAD, AGENT_LINE, TWIML))
    assert exc.value.failure is TelephonyFailure.unavailable
    assert len(twilio.requests) == 3


async def test_hang_up_retries_after_a_timeout(twilio: TwilioRestStandIn, sleeps: Sleeps) -> None:
    provider = make(twilio.base_url, sleeps, request_timeout_s=0.2)
    call_sid = twilio.add_call()
    twilio.delay_next(5.0)
    try:
        await provider.hang_up(call_sid)
    finally:
        await provider.aclose()
    assert twilio.calls[call_sid].status == "completed"
    assert len(twilio.requests) == 2


async def test_hang_up_times_out_with_a_clear_error(
    twilio: TwilioRestStandIn, sleeps: Sleeps
) -> None:
    provider = make(twilio.base_url, sleeps, request_timeout_s=0.1, max_attempts=2)
    twilio.delay_next(5.0, times=2)
    try:
        with pytest.raises(TelephonyError, match="no answer within") as exc:
            await provider.hang_up(twilio.add_call())
    finally:
        await provider.aclose()
    assert exc.value.failure is TelephonyFailure.timeout
    assert exc.value.attempts == 2


async def test_the_overall_budget_caps_retries(twilio: TwilioRestStandIn, sleeps: Sleeps) -> None:
    provider = make(
        twilio.base_url, sleeps, request_timeout_s=0.15, max_attempts=10, budget_s=0.25, backoff_s=0
    )
    twilio.delay_next(5.0, times=10)
    try:
        with pytest.raises(TelephonyError) as exc:
            await provider.hang_up(twilio.add_call())
    finally:
        await provider.aclose()
    assert exc.value.failure is TelephonyFailure.timeout
    assert exc.value.attempts == 2  # 0.15 s, then the 0.10 s left of the budget


async def test_transfer_is_not_repeated_when_twilio_may_have_acted(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    twilio.fail_next(500, code=20500)
    with pytest.raises(TelephonyError) as exc:
        await telephony.transfer(twilio.add_call(), HUMAN)
    assert exc.value.failure is TelephonyFailure.unavailable
    assert len(twilio.requests) == 1

    twilio.drop_next()
    with pytest.raises(TelephonyError) as exc:
        await telephony.transfer(twilio.add_call(), HUMAN)
    assert exc.value.failure is TelephonyFailure.unavailable
    assert len(twilio.requests) == 2


async def test_transfer_timeout_is_not_retried(twilio: TwilioRestStandIn, sleeps: Sleeps) -> None:
    provider = make(twilio.base_url, sleeps, request_timeout_s=0.1)
    twilio.delay_next(5.0)
    try:
        with pytest.raises(TelephonyError) as exc:
            await provider.transfer(twilio.add_call(), HUMAN)
    finally:
        await provider.aclose()
    assert exc.value.failure is TelephonyFailure.timeout
    assert exc.value.attempts == 1


async def test_rate_limited_outbound_call_is_retried_and_placed_once(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony, sleeps: Sleeps
) -> None:
    twilio.fail_next(429, code=20429, message="Too Many Requests")
    call_sid = await telephony.place_call(OutboundCall(LEAD, AGENT_LINE, TWIML))
    assert len(twilio.requests) == 2
    assert list(twilio.calls) == [call_sid]
    assert len(sleeps.pauses) == 1


async def test_outbound_call_is_not_retried_after_a_server_error(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    twilio.fail_next(502, code=20502)
    with pytest.raises(TelephonyError) as exc:
        await telephony.place_call(OutboundCall(LEAD, AGENT_LINE, TWIML))
    assert exc.value.failure is TelephonyFailure.unavailable
    assert len(twilio.requests) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_refused_connections_are_retried_even_for_new_calls(sleeps: Sleeps) -> None:
    provider = make(f"http://127.0.0.1:{_closed_port()}", sleeps)
    try:
        with pytest.raises(TelephonyError, match="cannot connect") as exc:
            await provider.place_call(OutboundCall(LEAD, AGENT_LINE, TWIML))
    finally:
        await provider.aclose()
    assert exc.value.failure is TelephonyFailure.unavailable
    assert exc.value.attempts == 3
    assert len(sleeps.pauses) == 2


async def test_the_provider_can_be_closed_and_used_again(
    twilio: TwilioRestStandIn, telephony: TwilioTelephony
) -> None:
    await telephony.hang_up(twilio.add_call())
    await telephony.aclose()
    await telephony.aclose()
    call_sid = twilio.add_call()
    await telephony.hang_up(call_sid)
    assert twilio.calls[call_sid].status == "completed"
