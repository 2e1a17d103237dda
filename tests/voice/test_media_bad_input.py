"""Bad input on the media WebSocket, one test each, against the real gateway.

One gateway serves the whole module, and one good call stays up on it from the first
test to the last (`good`): while each bad stream does its worst, the good call's caller
speaks and must be answered (`good_call_is_served`), so each test shows that a peer's
mistake costs its own stream, never another call on the process. Each refusal is
checked three ways: the close code the protocol module assigns to the mistake, the
reason in the log, and what the CRM kept.

What Twilio itself would ignore (an unknown event, a mark we never sent, anything after
`stop`) is ignored here too, and the stream that sent it goes on working.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from websockets.exceptions import InvalidStatus

from crm.calls.models import TurnRole
from tests.voice.gateway_server import (
    AUTH_TOKEN,
    CALL_TOKEN_SECRET,
    Gateway,
    Line,
    TwilioStream,
    call_by_sid,
    connect_stream,
    ended_call,
    make_line,
    ring,
    running_gateway,
    turns_of,
)
from voice_gateway.events import EndReason
from voice_gateway.providers.stt_fake import FakeSpeechToText
from voice_gateway.providers.tts_fake import speech_frames
from voice_gateway.simulator import dial
from voice_gateway.twilio import protocol as tw
from voice_gateway.twilio.tokens import CallTokens

# The good call's stream lives in the module's event loop; every test shares that loop.
pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="session")]

MEDIA_LOG = "voice_gateway.twilio.media"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(
        tmp_path_factory.mktemp("bad-input"), MEDIA_TIMEOUT_MS="1000", MAX_CONCURRENT_CALLS="100"
    ) as running:
        running.runtime.stt = FakeSpeechToText(script=["Busco un piso."])
        yield running


@pytest.fixture(scope="module")
async def good(gateway: Gateway) -> AsyncIterator[TwilioStream]:
    """A well-behaved call that lives through every test of the module."""
    stream = await TwilioStream.dial(gateway, make_line())
    await stream.agent_reply(0)
    yield stream
    await stream.stop()
    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.caller_hung_up.value
    roles = [t.role for t in turns_of(stored.id)]
    assert roles[0] is TurnRole.agent
    assert roles.count(TurnRole.caller) >= 1


@pytest.fixture
def line() -> Line:
    return make_line()


@pytest.fixture(autouse=True)
async def good_call_is_served(good: TwilioStream) -> AsyncIterator[None]:
    """While each test sends its bad input, the good call's caller speaks; after the
    test, the good call must still be open and must have been answered."""
    assert not good.closed.done(), good.closed.result()
    spoke_at = good.now_ms()
    speaking = asyncio.create_task(good.say(300))
    yield
    await speaking
    await good.agent_reply(spoke_at)
    assert not good.closed.done(), good.closed.result()


def logged(caplog: pytest.LogCaptureFixture, *fragments: str) -> bool:
    return any(
        r.name == MEDIA_LOG
        and r.levelno >= logging.WARNING
        and all(f in r.getMessage() for f in fragments)
        for r in caplog.records
    )


async def refused_with(
    stream: TwilioStream, code: int, caplog: pytest.LogCaptureFixture, *reason: str
) -> None:
    closed = await stream.wait_closed()
    assert closed.code == code, closed
    assert logged(caplog, f"({code})", *reason), [r.getMessage() for r in caplog.records]


def media_json(stream: TwilioStream, payload_b64: str) -> str:
    """A media message with a payload written by hand (possibly not base64 at all)."""
    chunk = stream.next_seq()
    return orjson.dumps(
        {
            "event": "media",
            "sequenceNumber": str(chunk),
            "streamSid": stream.stream_sid,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload_b64},
        }
    ).decode()


# -- the signed upgrade ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}], ids=["unsigned", "forged"]
)
async def test_an_unsigned_or_forged_upgrade_is_refused_with_403(
    gateway: Gateway,
    line: Line,
    headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = await ring(gateway, line, dial.new_sid("CA"))
    with pytest.raises(InvalidStatus) as refused:
        await connect_stream(gateway, target.url, headers=headers)
    assert refused.value.response.status_code == 403
    assert any(
        r.name == MEDIA_LOG and "refused before upgrade" in r.getMessage() for r in caplog.records
    )


async def test_an_upgrade_signed_for_another_url_is_refused(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    target = await ring(gateway, line, dial.new_sid("CA"))
    signed_elsewhere = dial.sign(AUTH_TOKEN, "wss://attacker.example/twilio/media", {})
    with pytest.raises(InvalidStatus) as refused:
        await connect_stream(gateway, target.url, headers=signed_elsewhere)
    assert refused.value.response.status_code == 403
    assert any("signature does not match" in r.getMessage() for r in caplog.records)


# -- the per-call token ----------------------------------------------------------------


def token_for(call_id: int, *, issued_s_ago: float = 0) -> str:
    """A token signed with the server's secret, issued `issued_s_ago` seconds ago."""
    tokens = CallTokens(
        secret=CALL_TOKEN_SECRET.encode(), ttl_s=60, clock=lambda: time.time() - issued_s_ago
    )
    return tokens.issue(call_id)


async def test_a_wrong_token_is_refused(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line, start=False)
    held = gateway.runtime.admission.stats().reserved
    params = dict(stream.target.parameters)
    params["token"] = params["token"][:-4] + "AAAA"
    await stream.send(tw.serialize(tw.Connected()))
    await stream.send(stream.start_message(custom_parameters=params))
    await refused_with(stream, 1008, caplog, "token signature does not match")
    # The slot the webhook held for this call's stream is given back at once.
    assert gateway.runtime.admission.stats().reserved == held - 1


async def test_an_expired_token_is_refused(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line, start=False)
    params = dict(stream.target.parameters)
    params["token"] = token_for(int(params["call_id"]), issued_s_ago=120)
    await stream.send(tw.serialize(tw.Connected()))
    await stream.send(stream.start_message(custom_parameters=params))
    await refused_with(stream, 1008, caplog, "expired")


async def test_an_unknown_call_id_is_refused(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line, start=False)
    unknown = 987_654_321
    params = {"call_id": str(unknown), "token": token_for(unknown)}
    await stream.send(tw.serialize(tw.Connected()))
    await stream.send(stream.start_message(custom_parameters=params))
    await refused_with(stream, 1008, caplog, f"unknown or ended call {unknown}")


async def test_a_token_for_another_call_is_refused(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    mine = await TwilioStream.dial(gateway, line, start=False)
    theirs = await ring(gateway, make_line(), dial.new_sid("CA"))
    # Their token with my call id: the token names another call.
    params = {"call_id": mine.target.parameters["call_id"], "token": theirs.parameters["token"]}
    await mine.send(tw.serialize(tw.Connected()))
    await mine.send(mine.start_message(custom_parameters=params))
    await refused_with(mine, 1008, caplog, "token is for call")
    # Their call id and token, on my CallSid: the call belongs to another CallSid.
    again = await TwilioStream.dial(gateway, line, start=False)
    await again.send(tw.serialize(tw.Connected()))
    await again.send(again.start_message(custom_parameters=dict(theirs.parameters)))
    await refused_with(again, 1008, caplog, "belongs to another CallSid")
    # Neither refusal touched the calls they named.
    assert call_by_sid(again.call_sid) is not None


# -- messages --------------------------------------------------------------------------


async def test_a_binary_frame_closes_with_1003(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line)
    await stream.send(b"\x00\x01binary audio")
    await refused_with(stream, 1003, caplog, "binary frame")
    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.protocol_error.value


async def test_invalid_json_closes_with_1007(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line)
    await stream.send('{"event": "media", "media": {')
    await refused_with(stream, 1007, caplog, "invalid JSON")
    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.protocol_error.value


async def test_an_unknown_event_is_ignored_and_the_stream_goes_on(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=MEDIA_LOG)
    stream = await TwilioStream.dial(gateway, line)
    await stream.agent_reply(0)
    await stream.send(orjson.dumps({"event": "transcription", "streamSid": "x"}).decode())
    spoke_at = stream.now_ms()
    await stream.say(400)
    await stream.agent_reply(spoke_at)
    assert any("unknown event 'transcription'" in r.getMessage() for r in caplog.records)
    await stream.stop()
    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.caller_hung_up.value


async def test_media_before_start_closes_with_1008(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line, start=False)
    await stream.send(tw.serialize(tw.Connected()))
    await stream.send(stream.media_message(speech_frames()[0]))
    await refused_with(stream, 1008, caplog, "media before start")


async def test_a_second_start_closes_with_1008(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line)
    await stream.send(stream.start_message())
    await refused_with(stream, 1008, caplog, "second start")
    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.protocol_error.value


async def test_bad_base64_closes_with_1007(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line)
    await stream.send(media_json(stream, "not*base64!"))
    await refused_with(stream, 1007, caplog, "not valid base64")


async def test_payloads_of_any_size_are_heard_but_a_huge_one_closes_with_1009(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    """Twilio sends 20 ms frames without promising it: a 40 ms or an odd-sized payload
    is still audio (and the caller speaking in 40 ms payloads is answered); one past the
    protocol's payload limit is refused."""
    stream = await TwilioStream.dial(gateway, line)
    await stream.agent_reply(0)
    stream.go_silent()
    frames = speech_frames()
    spoke_at = stream.now_ms()
    for i in range(0, 30, 2):  # 600 ms of speech, 40 ms a message
        await stream.send(stream.media_message(frames[i] + frames[i + 1]))
        await asyncio.sleep(0.04)
    await stream.send(stream.media_message(b"\xff" * 161))  # odd size: 20.125 ms
    stream.stream()
    await stream.agent_reply(spoke_at)
    assert not stream.closed.done()

    too_big = b"\xff" * (tw.MAX_PAYLOAD_BYTES + 8)
    await stream.send(stream.media_message(too_big))
    await refused_with(stream, 1009, caplog, "decodes to more than")


async def test_an_oversized_message_closes_with_1009(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line)
    padding = "x" * (tw.MAX_MESSAGE_CHARS + 1)
    await stream.send(orjson.dumps({"event": "mark", "padding": padding}).decode())
    await refused_with(stream, 1009, caplog, "exceeds")


async def test_marks_with_unknown_names_are_ignored(gateway: Gateway, line: Line) -> None:
    stream = await TwilioStream.dial(gateway, line)
    await stream.agent_reply(0)
    for name in ("seg-999", "not-ours", "x" * 300):
        await stream.send(tw.serialize(tw.Mark(stream.next_seq(), stream.stream_sid, name)))
    spoke_at = stream.now_ms()
    await stream.say(400)
    await stream.agent_reply(spoke_at)
    assert not stream.closed.done()
    await stream.stop()
    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.caller_hung_up.value


async def test_messages_after_stop_are_ignored(gateway: Gateway, line: Line) -> None:
    stream = await TwilioStream.dial(gateway, line)
    await stream.agent_reply(0)
    stream.go_silent()
    stop = tw.Stop(stream.next_seq(), stream.stream_sid, stream.account_sid, stream.call_sid)
    await stream.send(tw.serialize(stop))
    for _ in range(5):  # a sloppy peer keeps talking after it said goodbye
        await stream.send(stream.media_message(speech_frames()[0]))
        await stream.send(stream.start_message())
    closed = await stream.wait_closed()
    assert closed.code == 1000
    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.caller_hung_up.value
    assert [t.role for t in turns_of(stored.id)] == [TurnRole.agent]


async def test_a_stream_that_never_starts_is_closed(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await TwilioStream.dial(gateway, line, start=False)
    await stream.send(tw.serialize(tw.Connected()))
    closed = await stream.wait_closed()
    assert closed.code == 1008
    assert logged(caplog, "no start within")


async def test_a_session_that_cannot_be_set_up_closes_with_1011_and_ends_the_call(
    gateway: Gateway, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = gateway.runtime
    working = runtime.session_config

    def broken() -> object:
        raise RuntimeError("a setting no session can run with")

    runtime.session_config = broken  # type: ignore[assignment,method-assign]
    try:
        stream = await TwilioStream.dial(gateway, line)
        closed = await stream.wait_closed()
    finally:
        runtime.session_config = working  # type: ignore[method-assign]
    assert closed.code == 1011
    assert logged(caplog, "could not be set up")
    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.internal_error.value
    assert runtime.admission.stats().active == 1  # only the good call holds a slot
