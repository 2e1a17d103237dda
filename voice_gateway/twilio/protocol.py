"""Twilio Media Streams on the wire, with no I/O: text in, typed messages out, and back.

Modelled on python-websockets' sans-I/O core: this module never touches a socket, so
the call session (which owns the socket) and the call simulator (which plays Twilio)
share one definition of every message, and the tests drive plain strings. Each peer
mistake raises `ProtocolError`, whose kind decides the outcome in one table: ignore it
(as Twilio ignores what it does not understand) or close with one WebSocket code.

`StreamState` is the h11-style half: the order Twilio promises (connected → start →
media/mark/dtmf… → stop) kept as data, so a message out of order is named, refused and
leaves the state as it was.

Media messages arrive 50 times a second per call, so parsing is one `orjson.loads`,
a handful of dict lookups and one strict base64 decode: a few microseconds (see
`voice_gateway/twilio/bench_protocol.py`). Logs never carry audio: the `repr` of a
media message names the payload's size, never its bytes.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Final

import orjson

#: Largest text message accepted, in characters (Twilio's JSON is ASCII, so bytes).
#: An inbound 20 ms frame is ~300; the limit leaves room for seconds of outbound audio.
MAX_MESSAGE_CHARS: Final = 64 * 1024
#: Largest decoded audio payload in one media message (6 s of 8 kHz μ-law).
MAX_PAYLOAD_BYTES: Final = 48_000
#: Longest decimal string read as a counter; 18 digits always fits in 63 bits.
_MAX_DIGITS: Final = 18
#: Longest text shown back from a peer's message in an error reason.
_SHOWN: Final = 40

MULAW: Final = "audio/x-mulaw"
MULAW_RATE: Final = 8000
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")


class CloseCode(IntEnum):
    """The WebSocket close codes (RFC 6455 §7.4.1) this protocol ends a stream with."""

    NORMAL_CLOSURE = 1000
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class ErrorKind(StrEnum):
    """What went wrong; `OUTCOMES` turns each kind into "ignore" or a close code."""

    binary_frame = "binary_frame"
    invalid_utf8 = "invalid_utf8"
    invalid_json = "invalid_json"
    not_an_object = "not_an_object"
    missing_field = "missing_field"
    wrong_type = "wrong_type"
    bad_value = "bad_value"
    bad_base64 = "bad_base64"
    empty_payload = "empty_payload"
    unsupported_media_format = "unsupported_media_format"
    message_too_big = "message_too_big"
    payload_too_big = "payload_too_big"
    unknown_event = "unknown_event"
    out_of_order = "out_of_order"
    wrong_stream = "wrong_stream"
    after_stop = "after_stop"
    # Decided by the call session, named here so every outcome lives in one table.
    unknown_call = "unknown_call"
    bad_token = "bad_token"  # noqa: S105 - an error kind, not a secret
    # Our own misuse (sending outside a live stream): a bug, not the peer's fault.
    local_misuse = "local_misuse"


#: The one place an error kind becomes an outcome. None: log it and keep going, which
#: is what Twilio does with events it does not know and what a stopped stream deserves.
OUTCOMES: Final[Mapping[ErrorKind, CloseCode | None]] = {
    ErrorKind.binary_frame: CloseCode.UNSUPPORTED_DATA,
    ErrorKind.unsupported_media_format: CloseCode.UNSUPPORTED_DATA,
    ErrorKind.invalid_utf8: CloseCode.INVALID_DATA,
    ErrorKind.invalid_json: CloseCode.INVALID_DATA,
    ErrorKind.not_an_object: CloseCode.INVALID_DATA,
    ErrorKind.missing_field: CloseCode.INVALID_DATA,
    ErrorKind.wrong_type: CloseCode.INVALID_DATA,
    ErrorKind.bad_value: CloseCode.INVALID_DATA,
    ErrorKind.bad_base64: CloseCode.INVALID_DATA,
    ErrorKind.empty_payload: CloseCode.INVALID_DATA,
    ErrorKind.message_too_big: CloseCode.MESSAGE_TOO_BIG,
    ErrorKind.payload_too_big: CloseCode.MESSAGE_TOO_BIG,
    ErrorKind.out_of_order: CloseCode.POLICY_VIOLATION,
    ErrorKind.wrong_stream: CloseCode.POLICY_VIOLATION,
    ErrorKind.unknown_call: CloseCode.POLICY_VIOLATION,
    ErrorKind.bad_token: CloseCode.POLICY_VIOLATION,
    ErrorKind.local_misuse: CloseCode.INTERNAL_ERROR,
    ErrorKind.unknown_event: None,
    ErrorKind.after_stop: None,
}


class ProtocolError(Exception):
    """A message that breaks the protocol, with a reason fit for a log line (no audio).

    `close_code` is None when the message is to be logged and ignored; otherwise the
    session closes the socket with it (and a short reason) in its one `except`.
    """

    def __init__(self, kind: ErrorKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.close_code: int | None = OUTCOMES[kind]

    @property
    def ignore(self) -> bool:
        return self.close_code is None

    def __repr__(self) -> str:
        return f"ProtocolError({self.kind.value}, {self.reason!r}, close_code={self.close_code})"


# -- messages, Twilio → server ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str = MULAW
    sample_rate: int = MULAW_RATE
    channels: int = 1


@dataclass(frozen=True, slots=True)
class Connected:
    """The first message on every stream, before `start`."""

    protocol: str = "Call"
    version: str = "1.0.0"


@dataclass(frozen=True, slots=True)
class Start:
    """Stream metadata; `custom_parameters` are the TwiML `<Parameter>`s (call id, token)."""

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...] = ("inbound",)
    media_format: MediaFormat = MediaFormat()
    custom_parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, repr=False)
class Media:
    """Caller audio: μ-law 8 kHz; `timestamp_ms` is on the stream's clock (use it, not
    chunk counts: Twilio may skip silent chunks)."""

    sequence_number: int
    stream_sid: str
    chunk: int
    timestamp_ms: int
    payload: bytes
    track: str = "inbound"

    def __repr__(self) -> str:
        return (
            f"Media(sequence_number={self.sequence_number}, stream_sid={self.stream_sid!r}, "
            f"chunk={self.chunk}, timestamp_ms={self.timestamp_ms}, track={self.track!r}, "
            f"payload=<{len(self.payload)} bytes>)"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Mark:
    """Echo of a mark we sent: the audio before it has played, or was cleared."""

    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    sequence_number: int
    stream_sid: str
    digit: str
    track: str = "inbound_track"


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream ended: the caller hung up, the call was redirected, or it ended."""

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str


# -- messages, server → Twilio ---------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class OutboundMedia:
    """Agent audio for Twilio to buffer and play: raw μ-law 8 kHz, no file header."""

    stream_sid: str
    payload: bytes

    def __repr__(self) -> str:
        return f"OutboundMedia(stream_sid={self.stream_sid!r}, payload=<{len(self.payload)} bytes>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class OutboundMark:
    """Asks Twilio to echo `name` once the audio sent before it has played."""

    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Clear:
    """Drops the audio Twilio has buffered; every pending mark is echoed at once."""

    stream_sid: str


InboundMessage = Connected | Start | Media | Mark | Dtmf | Stop
OutboundMessage = OutboundMedia | OutboundMark | Clear
Message = InboundMessage | OutboundMessage


# -- reading fields --------------------------------------------------------------------


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _missing(where: str) -> ProtocolError:
    return ProtocolError(ErrorKind.missing_field, f"{where} is missing")


def _wrong(where: str, expected: str, value: object) -> ProtocolError:
    return ProtocolError(
        ErrorKind.wrong_type, f"{where} must be {expected}, not {_type_name(value)}"
    )


def _object(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if type(value) is dict:
        return value
    raise _missing(where) if value is None else _wrong(where, "an object", value)


def _text(parent: dict[str, Any], key: str, where: str) -> str:
    value = parent.get(key)
    if type(value) is str:
        if value:
            return value
        raise ProtocolError(ErrorKind.bad_value, f"{where} is empty")
    raise _missing(where) if value is None else _wrong(where, "a string", value)


def _counter(parent: dict[str, Any], key: str, where: str) -> int:
    """A non-negative integer Twilio sends as a decimal string ("4"); a JSON number too."""
    value = parent.get(key)
    if type(value) is str:
        if 0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit():
            return int(value)
        raise ProtocolError(
            ErrorKind.bad_value, f"{where} must be a decimal counter, not {_shown(value)}"
        )
    if type(value) is int:
        if 0 <= value < 10**_MAX_DIGITS:
            return value
        raise ProtocolError(ErrorKind.bad_value, f"{where} is out of range: {value}")
    raise _missing(where) if value is None else _wrong(where, "a decimal string", value)


def _number(parent: dict[str, Any], key: str, where: str) -> int:
    value = parent.get(key)
    if type(value) is int:
        return value
    raise _missing(where) if value is None else _wrong(where, "an integer", value)


def _audio(parent: dict[str, Any], where: str, max_payload: int) -> bytes:
    encoded = _payload_text(parent, where)
    # 4 base64 characters carry 3 bytes: refuse before decoding what would be too big.
    if len(encoded) > (max_payload + 2) // 3 * 4:
        raise ProtocolError(
            ErrorKind.payload_too_big,
            f"{where} decodes to more than {max_payload} bytes",
        )
    try:
        audio = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(ErrorKind.bad_base64, f"{where} is not valid base64: {exc}") from None
    if not audio:
        raise ProtocolError(ErrorKind.empty_payload, f"{where} is empty")
    return audio


def _payload_text(parent: dict[str, Any], where: str) -> str:
    value = parent.get("payload")
    if type(value) is str:
        if value:
            return value
        raise ProtocolError(ErrorKind.empty_payload, f"{where} is empty")
    raise _missing(where) if value is None else _wrong(where, "a base64 string", value)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if type(value) is not list:
        raise _missing(where) if value is None else _wrong(where, "a list of strings", value)
    for item in value:
        if type(item) is not str:
            raise _wrong(f"{where}[]", "a string", item)
    return tuple(value)


def _parameters(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise _wrong(where, "an object", value)
    for key, item in value.items():
        if type(item) is not str:
            raise _wrong(f"{where}.{key}", "a string", item)
    return value


def _media_format(value: object, where: str) -> MediaFormat:
    if type(value) is not dict:
        raise _missing(where) if value is None else _wrong(where, "an object", value)
    found = MediaFormat(
        encoding=_text(value, "encoding", f"{where}.encoding"),
        sample_rate=_number(value, "sampleRate", f"{where}.sampleRate"),
        channels=_number(value, "channels", f"{where}.channels"),
    )
    if found != MediaFormat():
        raise ProtocolError(
            ErrorKind.unsupported_media_format,
            f"media format {found.encoding} {found.sample_rate} Hz x{found.channels} "
            f"is not {MULAW} {MULAW_RATE} Hz mono",
        )
    return found


# -- parsing ---------------------------------------------------------------------------


def decode_text(frame: bytes) -> str:
    """The text of a text frame received undecoded; bad UTF-8 is the peer's error (1007)."""
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            ErrorKind.invalid_utf8, f"text frame is not UTF-8 at byte {exc.start}"
        ) from None


def _load(data: str | bytes | bytearray | memoryview, max_size: int) -> dict[str, Any]:
    if not isinstance(data, str):
        raise ProtocolError(
            ErrorKind.binary_frame, f"binary frame of {len(data)} bytes; Twilio sends text"
        )
    if len(data) > max_size:
        raise ProtocolError(
            ErrorKind.message_too_big, f"message of {len(data)} characters exceeds {max_size}"
        )
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(ErrorKind.invalid_utf8, "text is not valid Unicode") from None
        raise ProtocolError(ErrorKind.invalid_json, f"invalid JSON: {exc}") from None
    if type(obj) is not dict:
        raise ProtocolError(
            ErrorKind.not_an_object, f"message must be a JSON object, not {_type_name(obj)}"
        )
    return obj


def _event(obj: dict[str, Any]) -> str:
    value = obj.get("event")
    if type(value) is str:
        return value
    raise _missing("event") if value is None else _wrong("event", "a string", value)


def _parse_connected(obj: dict[str, Any], max_payload: int) -> Connected:
    return Connected(
        protocol=_text(obj, "protocol", "protocol"), version=_text(obj, "version", "version")
    )


def _parse_start(obj: dict[str, Any], max_payload: int) -> Start:
    stream_sid = _text(obj, "streamSid", "streamSid")
    body = _object(obj, "start", "start")
    inner_sid = body.get("streamSid")
    if inner_sid is not None and inner_sid != stream_sid:
        raise ProtocolError(
            ErrorKind.bad_value, "start.streamSid differs from the message's streamSid"
        )
    return Start(
        sequence_number=_counter(obj, "sequenceNumber", "sequenceNumber"),
        stream_sid=stream_sid,
        account_sid=_text(body, "accountSid", "start.accountSid"),
        call_sid=_text(body, "callSid", "start.callSid"),
        tracks=_strings(body.get("tracks"), "start.tracks"),
        media_format=_media_format(body.get("mediaFormat"), "start.mediaFormat"),
        custom_parameters=_parameters(body.get("customParameters"), "start.customParameters"),
    )


def _is_counter(value: object) -> bool:
    return (
        type(value) is str and 0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit()
    )


def _parse_media(obj: dict[str, Any], max_payload: int) -> Media:
    # The fast path takes a well-formed message in one pass; anything unusual falls
    # through to the checked path below, which names exactly what is wrong.
    body = obj.get("media")
    if type(body) is dict:
        seq, chunk, stamp = obj.get("sequenceNumber"), body.get("chunk"), body.get("timestamp")
        sid, track, encoded = obj.get("streamSid"), body.get("track"), body.get("payload")
        if (
            _is_counter(seq)
            and _is_counter(chunk)
            and _is_counter(stamp)
            and type(sid) is str
            and sid
            and type(track) is str
            and track
            and type(encoded) is str
            and 0 < len(encoded) <= (max_payload + 2) // 3 * 4
        ):
            try:
                audio = binascii.a2b_base64(encoded, strict_mode=True)
            except (binascii.Error, ValueError):
                audio = b""
            if audio:
                return Media(int(seq), sid, int(chunk), int(stamp), audio, track)  # type: ignore[arg-type]
    body = _object(obj, "media", "media")
    return Media(
        sequence_number=_counter(obj, "sequenceNumber", "sequenceNumber"),
        stream_sid=_text(obj, "streamSid", "streamSid"),
        chunk=_counter(body, "chunk", "media.chunk"),
        timestamp_ms=_counter(body, "timestamp", "media.timestamp"),
        payload=_audio(body, "media.payload", max_payload),
        track=_text(body, "track", "media.track"),
    )


def _parse_mark(obj: dict[str, Any], max_payload: int) -> Mark:
    return Mark(
        sequence_number=_counter(obj, "sequenceNumber", "sequenceNumber"),
        stream_sid=_text(obj, "streamSid", "streamSid"),
        name=_text(_object(obj, "mark", "mark"), "name", "mark.name"),
    )


def _parse_dtmf(obj: dict[str, Any], max_payload: int) -> Dtmf:
    body = _object(obj, "dtmf", "dtmf")
    digit = _text(body, "digit", "dtmf.digit")
    if digit not in DTMF_DIGITS:
        raise ProtocolError(ErrorKind.bad_value, f"dtmf.digit {_shown(digit)} is not a key")
    return Dtmf(
        sequence_number=_counter(obj, "sequenceNumber", "sequenceNumber"),
        stream_sid=_text(obj, "streamSid", "streamSid"),
        digit=digit,
        track=_text(body, "track", "dtmf.track"),
    )


def _parse_stop(obj: dict[str, Any], max_payload: int) -> Stop:
    body = _object(obj, "stop", "stop")
    return Stop(
        sequence_number=_counter(obj, "sequenceNumber", "sequenceNumber"),
        stream_sid=_text(obj, "streamSid", "streamSid"),
        account_sid=_text(body, "accountSid", "stop.accountSid"),
        call_sid=_text(body, "callSid", "stop.callSid"),
    )


def _parse_outbound_media(obj: dict[str, Any], max_payload: int) -> OutboundMedia:
    return OutboundMedia(
        stream_sid=_text(obj, "streamSid", "streamSid"),
        payload=_audio(_object(obj, "media", "media"), "media.payload", max_payload),
    )


def _parse_outbound_mark(obj: dict[str, Any], max_payload: int) -> OutboundMark:
    return OutboundMark(
        stream_sid=_text(obj, "streamSid", "streamSid"),
        name=_text(_object(obj, "mark", "mark"), "name", "mark.name"),
    )


def _parse_clear(obj: dict[str, Any], max_payload: int) -> Clear:
    return Clear(stream_sid=_text(obj, "streamSid", "streamSid"))


_INBOUND: Final[Mapping[str, Callable[[dict[str, Any], int], InboundMessage]]] = {
    "media": _parse_media,
    "mark": _parse_mark,
    "dtmf": _parse_dtmf,
    "start": _parse_start,
    "connected": _parse_connected,
    "stop": _parse_stop,
}
_OUTBOUND: Final[Mapping[str, Callable[[dict[str, Any], int], OutboundMessage]]] = {
    "media": _parse_outbound_media,
    "mark": _parse_outbound_mark,
    "clear": _parse_clear,
}


def parse_inbound(
    data: str | bytes | bytearray | memoryview,
    *,
    max_size: int = MAX_MESSAGE_CHARS,
    max_payload: int = MAX_PAYLOAD_BYTES,
) -> InboundMessage:
    """One WebSocket message from Twilio as a typed message, or `ProtocolError`.

    `data` is what the socket library hands over: `str` for a text frame, `bytes` for
    a binary one (which Twilio never sends). Fields Twilio may add later are ignored.
    """
    obj = _load(data, max_size)
    event = _event(obj)
    parse = _INBOUND.get(event)
    if parse is None:
        raise ProtocolError(ErrorKind.unknown_event, f"unknown event {_shown(event)}")
    return parse(obj, max_payload)


def parse_outbound(
    data: str | bytes | bytearray | memoryview,
    *,
    max_size: int = MAX_MESSAGE_CHARS,
    max_payload: int = MAX_PAYLOAD_BYTES,
) -> OutboundMessage:
    """What the server sent, read as Twilio reads it (the call simulator's side)."""
    obj = _load(data, max_size)
    event = _event(obj)
    parse = _OUTBOUND.get(event)
    if parse is None:
        raise ProtocolError(ErrorKind.unknown_event, f"unknown event {_shown(event)}")
    return parse(obj, max_payload)


# -- serializing -----------------------------------------------------------------------


def _b64(payload: bytes) -> str:
    return binascii.b2a_base64(payload, newline=False).decode("ascii")


def _connected_json(msg: Connected) -> dict[str, Any]:
    return {"event": "connected", "protocol": msg.protocol, "version": msg.version}


def _start_json(msg: Start) -> dict[str, Any]:
    fmt = msg.media_format
    return {
        "event": "start",
        "sequenceNumber": str(msg.sequence_number),
        "start": {
            "accountSid": msg.account_sid,
            "streamSid": msg.stream_sid,
            "callSid": msg.call_sid,
            "tracks": list(msg.tracks),
            "mediaFormat": {
                "encoding": fmt.encoding,
                "sampleRate": fmt.sample_rate,
                "channels": fmt.channels,
            },
            "customParameters": dict(msg.custom_parameters),
        },
        "streamSid": msg.stream_sid,
    }


def _media_json(msg: Media) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(msg.sequence_number),
        "media": {
            "track": msg.track,
            "chunk": str(msg.chunk),
            "timestamp": str(msg.timestamp_ms),
            "payload": _b64(msg.payload),
        },
        "streamSid": msg.stream_sid,
    }


def _mark_json(msg: Mark) -> dict[str, Any]:
    return {
        "event": "mark",
        "sequenceNumber": str(msg.sequence_number),
        "streamSid": msg.stream_sid,
        "mark": {"name": msg.name},
    }


def _dtmf_json(msg: Dtmf) -> dict[str, Any]:
    return {
        "event": "dtmf",
        "streamSid": msg.stream_sid,
        "sequenceNumber": str(msg.sequence_number),
        "dtmf": {"track": msg.track, "digit": msg.digit},
    }


def _stop_json(msg: Stop) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": str(msg.sequence_number),
        "streamSid": msg.stream_sid,
        "stop": {"accountSid": msg.account_sid, "callSid": msg.call_sid},
    }


def _outbound_media_json(msg: OutboundMedia) -> dict[str, Any]:
    return {"event": "media", "streamSid": msg.stream_sid, "media": {"payload": _b64(msg.payload)}}


def _outbound_mark_json(msg: OutboundMark) -> dict[str, Any]:
    return {"event": "mark", "streamSid": msg.stream_sid, "mark": {"name": msg.name}}


def _clear_json(msg: Clear) -> dict[str, Any]:
    return {"event": "clear", "streamSid": msg.stream_sid}


_JSON: Final[Mapping[type[Any], Callable[[Any], dict[str, Any]]]] = {
    OutboundMedia: _outbound_media_json,
    OutboundMark: _outbound_mark_json,
    Clear: _clear_json,
    Media: _media_json,
    Mark: _mark_json,
    Dtmf: _dtmf_json,
    Start: _start_json,
    Connected: _connected_json,
    Stop: _stop_json,
}


def to_json(msg: Message) -> dict[str, Any]:
    """`msg` as the JSON object Twilio sends or expects (sequence numbers as strings)."""
    return _JSON[type(msg)](msg)


def serialize(msg: Message) -> str:
    """`msg` as the text of one WebSocket message, in either direction."""
    return orjson.dumps(_JSON[type(msg)](msg)).decode()


# -- the order of a stream -------------------------------------------------------------


class StreamPhase(StrEnum):
    awaiting_connected = "awaiting_connected"
    awaiting_start = "awaiting_start"
    streaming = "streaming"
    stopped = "stopped"


_P = StreamPhase

#: Every legal move. A `stop` may end the stream from any live phase: ending is never
#: worth refusing, and Twilio sends it however far the stream got.
TRANSITIONS: Final[Mapping[tuple[StreamPhase, type[InboundMessage]], StreamPhase]] = {
    (_P.awaiting_connected, Connected): _P.awaiting_start,
    (_P.awaiting_start, Start): _P.streaming,
    (_P.streaming, Media): _P.streaming,
    (_P.streaming, Mark): _P.streaming,
    (_P.streaming, Dtmf): _P.streaming,
    (_P.awaiting_connected, Stop): _P.stopped,
    (_P.awaiting_start, Stop): _P.stopped,
    (_P.streaming, Stop): _P.stopped,
}

_EVENT_NAMES: Final[Mapping[type[InboundMessage], str]] = {
    Connected: "connected",
    Start: "start",
    Media: "media",
    Mark: "mark",
    Dtmf: "dtmf",
    Stop: "stop",
}


class StreamState:
    """Where one stream is in Twilio's promised order, and who it belongs to.

    `receive` accepts a parsed message or raises `ProtocolError` naming the phase and
    the message; a refused message leaves every attribute as it was. The builders
    (`media`, `mark`, `clear`) stamp the stream's sid and refuse to send outside a live
    stream, which would be our bug, not Twilio's.
    """

    __slots__ = ("last_sequence_number", "phase", "sequence_gaps", "start")

    def __init__(self) -> None:
        self.phase = StreamPhase.awaiting_connected
        self.start: Start | None = None
        self.last_sequence_number = 0
        #: Messages Twilio numbered but we never saw (sequence numbers skipped).
        self.sequence_gaps = 0

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start is not None else None

    @property
    def call_sid(self) -> str | None:
        return self.start.call_sid if self.start is not None else None

    def receive(self, msg: InboundMessage) -> StreamPhase:
        """Take `msg` in order and return the new phase, or raise without changing state."""
        phase = self.phase
        following = TRANSITIONS.get((phase, type(msg)))
        if following is None:
            raise self._refusal(msg)
        if not isinstance(msg, Connected):
            self._check_stream(msg)
        if type(msg) is Start:
            self.start = msg
        sequence = getattr(msg, "sequence_number", None)
        if sequence is not None:
            if sequence > self.last_sequence_number + 1 and self.last_sequence_number:
                self.sequence_gaps += sequence - self.last_sequence_number - 1
            self.last_sequence_number = max(sequence, self.last_sequence_number)
        self.phase = following
        return following

    def _check_stream(self, msg: Start | Media | Mark | Dtmf | Stop) -> None:
        start = self.start
        if start is None:
            return
        if msg.stream_sid != start.stream_sid:
            raise ProtocolError(
                ErrorKind.wrong_stream,
                f"{_EVENT_NAMES[type(msg)]} for stream {_shown(msg.stream_sid)} "
                f"on stream {start.stream_sid}",
            )
        if type(msg) is Stop and msg.call_sid != start.call_sid:
            raise ProtocolError(
                ErrorKind.wrong_stream,
                f"stop for call {_shown(msg.call_sid)} on call {start.call_sid}",
            )

    def _refusal(self, msg: InboundMessage) -> ProtocolError:
        name = _EVENT_NAMES[type(msg)]
        phase = self.phase
        if phase is StreamPhase.stopped:
            return ProtocolError(ErrorKind.after_stop, f"{name} after stop (state {phase})")
        if type(msg) is Start:
            what = "second start" if phase is StreamPhase.streaming else "start before connected"
        elif type(msg) is Connected:
            what = "second connected"
        elif phase is not StreamPhase.streaming:
            what = f"{name} before start"
        else:
            what = f"{name} out of order"
        return ProtocolError(ErrorKind.out_of_order, f"{what} (state {phase})")

    def _live_sid(self, what: str) -> str:
        if self.phase is not StreamPhase.streaming or self.start is None:
            raise ProtocolError(ErrorKind.local_misuse, f"cannot send {what} in state {self.phase}")
        return self.start.stream_sid

    def media(self, payload: bytes) -> OutboundMedia:
        if not payload:
            raise ProtocolError(ErrorKind.local_misuse, "refusing to send an empty payload")
        return OutboundMedia(self._live_sid("media"), payload)

    def mark(self, name: str) -> OutboundMark:
        if not name:
            raise ProtocolError(ErrorKind.local_misuse, "refusing to send a mark with no name")
        return OutboundMark(self._live_sid("mark"), name)

    def clear(self) -> Clear:
        return Clear(self._live_sid("clear"))
