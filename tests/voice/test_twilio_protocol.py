"""The Twilio Media Streams wire protocol: recorded sequences both ways, round trips of
every message type, one test per kind of bad input, and the stream's order as data."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_gateway.twilio import protocol as p
from voice_gateway.twilio.protocol import (
    OUTCOMES,
    Clear,
    CloseCode,
    Connected,
    Dtmf,
    ErrorKind,
    Mark,
    Media,
    MediaFormat,
    OutboundMark,
    OutboundMedia,
    ProtocolError,
    Start,
    Stop,
    StreamPhase,
    StreamState,
    decode_text,
    parse_inbound,
    parse_outbound,
    serialize,
)

DATA = Path(__file__).parent / "data"
SID = "MZ" + "18ad3ab5" * 4
CALL = "CA" + "9b1d4e7f" * 4
ACCOUNT = "AC" + "3f2a9c1e" * 4
SILENCE = b"\xff" * 160


def lines(name: str) -> list[str]:
    return (DATA / name).read_text(encoding="utf-8").splitlines()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def media_json(**changes: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "event": "media",
        "sequenceNumber": "3",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": b64(SILENCE)},
        "streamSid": SID,
    }
    for key, value in changes.items():
        if key.startswith("media_"):
            msg["media"][key.removeprefix("media_")] = value
        else:
            msg[key] = value
    return msg


def start_json(**media_format: Any) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": ACCOUNT,
            "streamSid": SID,
            "callSid": CALL,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
            | media_format,
            "customParameters": {"call_id": "7", "token": "t"},
        },
        "streamSid": SID,
    }


def drop(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(obj))
    target = copy
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return copy


def refused(data: str | bytes | dict[str, Any], **kwargs: Any) -> ProtocolError:
    text = json.dumps(data) if isinstance(data, dict) else data
    with pytest.raises(ProtocolError) as exc:
        parse_inbound(text, **kwargs)
    return exc.value


def streaming() -> StreamState:
    state = StreamState()
    state.receive(Connected())
    state.receive(parse_inbound(json.dumps(start_json())))
    return state


MEDIA = Media(sequence_number=2, stream_sid=SID, chunk=1, timestamp_ms=0, payload=SILENCE)


# -- recorded sequences ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["twilio_inbound_call.jsonl", "twilio_hangup_at_once.jsonl"])
def test_recorded_inbound_sequences_round_trip(name: str) -> None:
    state = StreamState()
    for line in lines(name):
        msg = parse_inbound(line)
        assert orjson.loads(serialize(msg)) == json.loads(line)
        assert parse_inbound(serialize(msg)) == msg
        state.receive(msg)
    assert state.phase is StreamPhase.stopped
    assert state.sequence_gaps == 0


def test_recorded_call_reads_as_twilio_meant_it() -> None:
    messages = [parse_inbound(line) for line in lines("twilio_inbound_call.jsonl")]
    assert messages[0] == Connected(protocol="Call", version="1.0.0")
    start = messages[1]
    assert isinstance(start, Start)
    assert start.sequence_number == 1
    assert (start.stream_sid, start.call_sid, start.account_sid) == (SID, CALL, ACCOUNT)
    assert start.tracks == ("inbound",)
    assert start.media_format == MediaFormat("audio/x-mulaw", 8000, 1)
    assert start.custom_parameters["call_id"] == "4182"
    assert start.custom_parameters["FirstName"] == "Jane"
    media = [m for m in messages if isinstance(m, Media)]
    assert len(media) == 35
    assert all(len(m.payload) == 160 for m in media)
    assert media[0].payload == SILENCE
    # Twilio skipped silent chunks: the clock comes from the timestamps, not the count.
    assert [m.timestamp_ms for m in media[24:26]] == [480, 600]
    assert [m.chunk for m in media[24:26]] == [25, 31]
    assert [m.digit for m in messages if isinstance(m, Dtmf)] == ["1", "#"]
    assert [m.name for m in messages if isinstance(m, Mark)] == [
        "turn1-seg1",
        "turn2 seg/1 «adiós»",
    ]
    stop = messages[-1]
    assert stop == Stop(sequence_number=41, stream_sid=SID, account_sid=ACCOUNT, call_sid=CALL)


def test_recorded_outbound_sequence_round_trips() -> None:
    kinds = []
    for line in lines("twilio_outbound_agent.jsonl"):
        msg = parse_outbound(line)
        assert orjson.loads(serialize(msg)) == json.loads(line)
        assert parse_outbound(serialize(msg)) == msg
        kinds.append(type(msg).__name__)
    assert kinds == ["OutboundMedia"] * 4 + ["OutboundMark", "OutboundMedia", "OutboundMark"] + [
        "Clear"
    ]
    sizes = [len(parse_outbound(line).payload) for line in lines("twilio_outbound_agent.jsonl")[:4]]  # type: ignore[union-attr]
    assert sizes == [160, 320, 800, 1]


def test_stdlib_json_formatting_reads_the_same() -> None:
    """Spaces, key order and \\u escapes (json.dumps' defaults) change nothing."""
    for line in lines("twilio_inbound_call.jsonl"):
        obj = json.loads(line)
        spaced = json.dumps(dict(reversed(list(obj.items()))), ensure_ascii=True, indent=1)
        assert parse_inbound(spaced) == parse_inbound(line)


def test_fields_twilio_may_add_later_are_ignored() -> None:
    msg = media_json(future="x", media_extra={"a": 1})
    assert parse_inbound(json.dumps(msg)) == parse_inbound(json.dumps(media_json()))


def test_sequence_numbers_may_be_json_numbers() -> None:
    parsed = parse_inbound(json.dumps(media_json(sequenceNumber=3, media_chunk=1)))
    assert isinstance(parsed, Media)
    assert (parsed.sequence_number, parsed.chunk) == (3, 1)


def test_custom_parameters_may_be_absent() -> None:
    msg = start_json()
    del msg["start"]["customParameters"]
    parsed = parse_inbound(json.dumps(msg))
    assert isinstance(parsed, Start)
    assert parsed.custom_parameters == {}


@pytest.mark.parametrize("size", [1, 80, 160, 161, 320, p.MAX_PAYLOAD_BYTES])
def test_payloads_of_any_size_up_to_the_limit(size: int) -> None:
    parsed = parse_inbound(json.dumps(media_json(media_payload=b64(b"\x7f" * size))))
    assert isinstance(parsed, Media)
    assert len(parsed.payload) == size


# -- round trips of every type -----------------------------------------------------------

texts = st.text(min_size=1, max_size=40)
counters = st.integers(min_value=0, max_value=10**18 - 1)
payloads = st.binary(min_size=1, max_size=2000)

inbound = st.one_of(
    st.builds(Connected, protocol=texts, version=texts),
    st.builds(
        Start,
        sequence_number=counters,
        stream_sid=texts,
        account_sid=texts,
        call_sid=texts,
        tracks=st.lists(st.text(max_size=10), max_size=3).map(tuple),
        media_format=st.just(MediaFormat()),
        custom_parameters=st.dictionaries(st.text(max_size=20), st.text(max_size=60), max_size=4),
    ),
    st.builds(
        Media,
        sequence_number=counters,
        stream_sid=texts,
        chunk=counters,
        timestamp_ms=counters,
        payload=payloads,
        track=texts,
    ),
    st.builds(Mark, sequence_number=counters, stream_sid=texts, name=texts),
    st.builds(
        Dtmf,
        sequence_number=counters,
        stream_sid=texts,
        digit=st.sampled_from(sorted(p.DTMF_DIGITS)),
        track=texts,
    ),
    st.builds(Stop, sequence_number=counters, stream_sid=texts, account_sid=texts, call_sid=texts),
)
outbound = st.one_of(
    st.builds(OutboundMedia, stream_sid=texts, payload=payloads),
    st.builds(OutboundMark, stream_sid=texts, name=texts),
    st.builds(Clear, stream_sid=texts),
)


@given(inbound)
def test_inbound_messages_round_trip(msg: p.InboundMessage) -> None:
    assert parse_inbound(serialize(msg)) == msg


@given(outbound)
def test_outbound_messages_round_trip(msg: p.OutboundMessage) -> None:
    assert parse_outbound(serialize(msg)) == msg


def test_outbound_messages_have_twilios_shape() -> None:
    assert json.loads(serialize(OutboundMedia(SID, b"\x00\xff"))) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": "AP8="},
    }
    assert json.loads(serialize(OutboundMark(SID, "turn3-seg1"))) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "turn3-seg1"},
    }
    assert json.loads(serialize(Clear(SID))) == {"event": "clear", "streamSid": SID}


def test_logs_never_carry_audio() -> None:
    encoded = b64(SILENCE)
    for text in (repr(MEDIA), str(MEDIA), f"{MEDIA}"):
        assert encoded not in text
        assert "\\xff" not in text
        assert "payload=<160 bytes>" in text
    out = OutboundMedia(SID, b"\x01" * 320)
    assert "payload=<320 bytes>" in repr(out)
    assert "\\x01" not in str(out)


# -- bad input, one test per kind --------------------------------------------------------


def test_every_error_kind_has_one_outcome() -> None:
    assert set(OUTCOMES) == set(ErrorKind)


def test_binary_frame() -> None:
    err = refused(json.dumps(media_json()).encode())
    assert err.kind is ErrorKind.binary_frame
    assert err.close_code == 1003
    assert "binary frame" in err.reason


def test_text_frame_that_is_not_utf8() -> None:
    with pytest.raises(ProtocolError) as exc:
        decode_text(b'{"event":"\xff"}')
    assert exc.value.kind is ErrorKind.invalid_utf8
    assert exc.value.close_code == 1007
    assert decode_text(b'{"event":"mark"}') == '{"event":"mark"}'


def test_text_with_lone_surrogates() -> None:
    err = refused('{"event":"\ud800"}')
    assert err.kind is ErrorKind.invalid_utf8
    assert err.close_code == 1007


@pytest.mark.parametrize("text", ['{"event":"media"', "", "not json", '{"event":NaN}', "[" * 5000])
def test_invalid_json(text: str) -> None:
    err = refused(text)
    assert err.kind is ErrorKind.invalid_json
    assert err.close_code == 1007
    assert err.reason.startswith("invalid JSON")


@pytest.mark.parametrize(
    ("text", "name"), [("[1, 2]", "list"), ('"media"', "str"), ("null", "null")]
)
def test_json_that_is_not_an_object(text: str, name: str) -> None:
    err = refused(text)
    assert err.kind is ErrorKind.not_an_object
    assert err.close_code == 1007
    assert err.reason == f"message must be a JSON object, not {name}"


def test_unknown_event_is_ignored_as_twilio_would() -> None:
    err = refused({"event": "recording", "streamSid": SID})
    assert err.kind is ErrorKind.unknown_event
    assert err.close_code is None
    assert err.ignore
    assert "'recording'" in err.reason


def test_unknown_event_name_is_cut_short_in_the_reason() -> None:
    err = refused({"event": "x" * 500})
    assert len(err.reason) < 80


def test_missing_event() -> None:
    err = refused({"streamSid": SID})
    assert err.kind is ErrorKind.missing_field
    assert err.reason == "event is missing"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (("media", "payload"), "media.payload is missing"),
        (("media",), "media is missing"),
        (("streamSid",), "streamSid is missing"),
        (("sequenceNumber",), "sequenceNumber is missing"),
        (("media", "timestamp"), "media.timestamp is missing"),
    ],
)
def test_missing_media_fields(path: tuple[str, ...], reason: str) -> None:
    err = refused(drop(media_json(), *path))
    assert err.kind is ErrorKind.missing_field
    assert err.close_code == 1007
    assert err.reason == reason


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (("start", "callSid"), "start.callSid is missing"),
        (("start", "mediaFormat"), "start.mediaFormat is missing"),
        (("start", "tracks"), "start.tracks is missing"),
        (("start",), "start is missing"),
    ],
)
def test_missing_start_fields(path: tuple[str, ...], reason: str) -> None:
    err = refused(drop(start_json(), *path))
    assert err.kind is ErrorKind.missing_field
    assert err.reason == reason


def test_missing_stop_and_mark_fields() -> None:
    assert refused({"event": "mark", "sequenceNumber": "4", "streamSid": SID}).reason == (
        "mark is missing"
    )
    stop = {"event": "stop", "sequenceNumber": "5", "streamSid": SID, "stop": {"callSid": CALL}}
    assert refused(stop).reason == "stop.accountSid is missing"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sequenceNumber": [3]}, "sequenceNumber must be a decimal string, not list"),
        ({"media_payload": 12}, "media.payload must be a base64 string, not int"),
        ({"media": "x"}, "media must be an object, not str"),
        ({"streamSid": 5}, "streamSid must be a string, not int"),
        ({"media_chunk": 1.5}, "media.chunk must be a decimal string, not float"),
        ({"media_track": None}, "media.track is missing"),
        ({"event": 7}, "event must be a string, not int"),
    ],
)
def test_wrong_types(changes: dict[str, Any], reason: str) -> None:
    err = refused(media_json(**changes))
    assert err.kind in (ErrorKind.wrong_type, ErrorKind.missing_field)
    assert err.close_code == 1007
    assert err.reason == reason


def test_wrong_types_in_start() -> None:
    msg = start_json()
    msg["start"]["customParameters"] = {"call_id": 7}
    assert refused(msg).reason == "start.customParameters.call_id must be a string, not int"
    msg = start_json()
    msg["start"]["tracks"] = "inbound"
    assert refused(msg).kind is ErrorKind.wrong_type
    assert refused(start_json(sampleRate="8000")).reason == (
        "start.mediaFormat.sampleRate must be an integer, not str"
    )


@pytest.mark.parametrize("value", ["-1", "1.5", " 1", "+1", "1_000", "", "٣", "1" * 19, True])
def test_counters_must_be_plain_decimals(value: object) -> None:
    err = refused(media_json(sequenceNumber=value))
    assert err.close_code == 1007
    assert err.kind in (ErrorKind.bad_value, ErrorKind.wrong_type)


def test_empty_strings_are_refused() -> None:
    err = refused(media_json(streamSid=""))
    assert err.kind is ErrorKind.bad_value
    assert err.reason == "streamSid is empty"


@pytest.mark.parametrize("payload", ["not base64!", "AAA", "A===", "AA==AA==", "/w==\n", "ÿÿÿÿ"])
def test_bad_base64(payload: str) -> None:
    err = refused(media_json(media_payload=payload))
    assert err.kind is ErrorKind.bad_base64
    assert err.close_code == 1007
    assert err.reason.startswith("media.payload is not valid base64")


@pytest.mark.parametrize("payload", ["", "===="])
def test_empty_payload(payload: str) -> None:
    err = refused(media_json(media_payload=payload))
    assert err.kind in (ErrorKind.empty_payload, ErrorKind.bad_base64)
    assert err.close_code == 1007


def test_empty_payload_reason() -> None:
    err = refused(media_json(media_payload=""))
    assert err.kind is ErrorKind.empty_payload
    assert err.reason == "media.payload is empty"


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "audio/l16"},
        {"sampleRate": 16000},
        {"channels": 2},
    ],
)
def test_wrong_media_format(media_format: dict[str, Any]) -> None:
    err = refused(start_json(**media_format))
    assert err.kind is ErrorKind.unsupported_media_format
    assert err.close_code == CloseCode.UNSUPPORTED_DATA
    assert "is not audio/x-mulaw 8000 Hz mono" in err.reason


def test_start_with_two_stream_sids() -> None:
    msg = start_json()
    msg["start"]["streamSid"] = "MZother"
    assert refused(msg).kind is ErrorKind.bad_value


def test_dtmf_that_is_not_a_key() -> None:
    msg = {"event": "dtmf", "sequenceNumber": "5", "streamSid": SID, "dtmf": {"track": "t"}}
    msg["dtmf"]["digit"] = "12"  # type: ignore[index]
    err = refused(msg)
    assert err.kind is ErrorKind.bad_value
    assert "dtmf.digit '12' is not a key" in err.reason


def test_oversized_message() -> None:
    err = refused(json.dumps(media_json()) + " " * p.MAX_MESSAGE_CHARS)
    assert err.kind is ErrorKind.message_too_big
    assert err.close_code == 1009


def test_oversized_message_limit_is_a_parameter() -> None:
    text = json.dumps(media_json())
    assert parse_inbound(text, max_size=len(text))
    assert refused(text, max_size=len(text) - 1).close_code == 1009


def test_oversized_payload() -> None:
    err = refused(media_json(media_payload=b64(b"\x00" * 400)), max_payload=300)
    assert err.kind is ErrorKind.payload_too_big
    assert err.close_code == 1009


def test_outbound_parse_refuses_the_same_garbage() -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_outbound('{"event":"media","streamSid":"MZ1","media":{"payload":"%%%"}}')
    assert exc.value.kind is ErrorKind.bad_base64
    with pytest.raises(ProtocolError) as exc:
        parse_outbound(b'{"event":"clear","streamSid":"MZ1"}')
    assert exc.value.close_code == 1003
    with pytest.raises(ProtocolError) as exc:
        parse_outbound('{"event":"stop","streamSid":"MZ1"}')
    assert exc.value.ignore


# -- the order of a stream ---------------------------------------------------------------


def assert_refused(state: StreamState, msg: p.InboundMessage, kind: ErrorKind, reason: str) -> None:
    before = (state.phase, state.start, state.last_sequence_number, state.sequence_gaps)
    with pytest.raises(ProtocolError) as exc:
        state.receive(msg)
    assert exc.value.kind is kind
    assert exc.value.reason == reason
    after = (state.phase, state.start, state.last_sequence_number, state.sequence_gaps)
    assert after == before, "a refused message must leave the state as it was"


def test_media_before_start() -> None:
    state = StreamState()
    state.receive(Connected())
    assert_refused(
        state, MEDIA, ErrorKind.out_of_order, "media before start (state awaiting_start)"
    )
    with pytest.raises(ProtocolError) as exc:
        state.receive(MEDIA)
    assert exc.value.close_code == 1008


def test_media_before_connected() -> None:
    assert_refused(
        StreamState(),
        MEDIA,
        ErrorKind.out_of_order,
        "media before start (state awaiting_connected)",
    )


def test_start_before_connected() -> None:
    start = parse_inbound(json.dumps(start_json()))
    assert_refused(
        StreamState(),
        start,
        ErrorKind.out_of_order,
        "start before connected (state awaiting_connected)",
    )


def test_second_start() -> None:
    state = streaming()
    start = parse_inbound(json.dumps(start_json()))
    assert_refused(state, start, ErrorKind.out_of_order, "second start (state streaming)")


def test_second_connected() -> None:
    assert_refused(
        streaming(), Connected(), ErrorKind.out_of_order, "second connected (state streaming)"
    )


def test_mark_before_start() -> None:
    state = StreamState()
    state.receive(Connected())
    mark = Mark(sequence_number=2, stream_sid=SID, name="m")
    assert_refused(state, mark, ErrorKind.out_of_order, "mark before start (state awaiting_start)")


def test_dtmf_before_start() -> None:
    state = StreamState()
    state.receive(Connected())
    dtmf = Dtmf(sequence_number=2, stream_sid=SID, digit="5")
    assert_refused(state, dtmf, ErrorKind.out_of_order, "dtmf before start (state awaiting_start)")


def test_messages_after_stop_are_ignored() -> None:
    state = streaming()
    state.receive(Stop(sequence_number=2, stream_sid=SID, account_sid=ACCOUNT, call_sid=CALL))
    for msg in (
        MEDIA,
        Mark(sequence_number=3, stream_sid=SID, name="m"),
        Stop(sequence_number=4, stream_sid=SID, account_sid=ACCOUNT, call_sid=CALL),
        Connected(),
    ):
        name = type(msg).__name__.lower()
        assert_refused(state, msg, ErrorKind.after_stop, f"{name} after stop (state stopped)")
        with pytest.raises(ProtocolError) as exc:
            state.receive(msg)
        assert exc.value.ignore


def test_media_for_another_stream() -> None:
    other = Media(sequence_number=2, stream_sid="MZother", chunk=1, timestamp_ms=0, payload=b"\xff")
    assert_refused(
        streaming(), other, ErrorKind.wrong_stream, f"media for stream 'MZother' on stream {SID}"
    )


def test_stop_for_another_call() -> None:
    stop = Stop(sequence_number=2, stream_sid=SID, account_sid=ACCOUNT, call_sid="CAother")
    assert_refused(
        streaming(), stop, ErrorKind.wrong_stream, f"stop for call 'CAother' on call {CALL}"
    )


def test_stop_ends_a_stream_that_never_started() -> None:
    state = StreamState()
    state.receive(Connected())
    stop = Stop(sequence_number=1, stream_sid=SID, account_sid=ACCOUNT, call_sid=CALL)
    assert state.receive(stop) is StreamPhase.stopped


def test_state_knows_the_stream_and_counts_skipped_messages() -> None:
    state = streaming()
    assert (state.stream_sid, state.call_sid) == (SID, CALL)
    state.receive(MEDIA)
    state.receive(
        Media(sequence_number=6, stream_sid=SID, chunk=5, timestamp_ms=80, payload=b"\xff")
    )
    assert state.last_sequence_number == 6
    assert state.sequence_gaps == 3


def test_transitions_are_data() -> None:
    assert p.TRANSITIONS[(StreamPhase.streaming, Media)] is StreamPhase.streaming
    assert (StreamPhase.awaiting_start, Media) not in p.TRANSITIONS
    assert all(phase is not StreamPhase.stopped for phase, _ in p.TRANSITIONS)


def test_outbound_builders_stamp_the_stream() -> None:
    state = streaming()
    assert state.media(b"\x01\x02") == OutboundMedia(SID, b"\x01\x02")
    assert state.mark("turn1-seg1") == OutboundMark(SID, "turn1-seg1")
    assert state.clear() == Clear(SID)
    assert parse_outbound(serialize(state.media(SILENCE))) == OutboundMedia(SID, SILENCE)


@pytest.mark.parametrize("phase", ["before start", "after stop"])
def test_sending_outside_a_live_stream_is_our_bug(phase: str) -> None:
    state = StreamState()
    state.receive(Connected())
    if phase == "after stop":
        state = streaming()
        state.receive(Stop(sequence_number=2, stream_sid=SID, account_sid=ACCOUNT, call_sid=CALL))
    for send in (lambda: state.media(SILENCE), lambda: state.mark("m"), state.clear):
        with pytest.raises(ProtocolError) as exc:
            send()
        assert exc.value.kind is ErrorKind.local_misuse
        assert exc.value.close_code == CloseCode.INTERNAL_ERROR


def test_empty_outbound_audio_or_mark_is_refused() -> None:
    state = streaming()
    with pytest.raises(ProtocolError):
        state.media(b"")
    with pytest.raises(ProtocolError):
        state.mark("")
