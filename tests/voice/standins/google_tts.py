"""A local stand-in for Google Cloud Text-to-Speech v1 `SynthesizeSpeech`.

It serves the real gRPC method (`/google.cloud.texttospeech.v1.TextToSpeech/SynthesizeSpeech`,
unary, the GAPIC proto-plus messages on the wire) on 127.0.0.1, so the production
client runs unchanged against it. The GAPIC package ships no servicer stubs, hence a
generic handler with the messages' own serialize/deserialize.

What it imitates, because the client must cope with it:
- validation: no text (or SSML) → INVALID_ARGUMENT; input over 5,000 bytes →
  INVALID_ARGUMENT; no language code, or a voice name from another locale →
  INVALID_ARGUMENT; an encoding other than MULAW, or a rate other than 8000 Hz
  (the only format it synthesizes) → INVALID_ARGUMENT;
- the answer is a WAV file even for MULAW: a RIFF header with `fmt ` (format 7), an
  odd-sized `LIST` chunk with its pad byte and a `fact` chunk before `data`, so a
  client that slices a fixed 44 bytes gets noise;
- latency (`latency_s`), a hang (`hold()` until `release()`), and failures of the next
  requests with any status (`fail_next`).

The audio is real speech from eSpeak NG (the offline provider), or whatever
`synthesize` returns, so tests can compare the client's output with the exact μ-law the
server wrapped.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.cloud import texttospeech_v1 as tts

from tests.voice.standins.grpc_server import GrpcStandIn
from voice_gateway.providers.tts_espeak import EspeakTts

SERVICE = "google.cloud.texttospeech.v1.TextToSpeech"
METHOD = "SynthesizeSpeech"
MAX_INPUT_BYTES = 5000
_WAVE_FORMAT_MULAW = 7

Synthesizer = Callable[[str, str], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Failure:
    code: grpc.StatusCode
    details: str


async def espeak_speech(text: str, language_code: str) -> bytes:
    """Real speech for the stand-in's answers: the offline voice, μ-law 8 kHz."""
    voice = EspeakTts()
    return b"".join([chunk async for chunk in voice.synthesize(text, language=language_code)])


def mulaw_wav(audio: bytes, *, rate: int = 8000) -> bytes:
    """A μ-law WAV laid out as encoders do in the wild: extra chunks before `data`."""
    fmt = struct.pack("<HHIIHHH", _WAVE_FORMAT_MULAW, 1, rate, rate, 1, 8, 0)
    software = b"standin!\0"  # 9 bytes: the LIST chunk is 21 bytes long, odd, so padded
    info = b"INFO" + b"ISFT" + struct.pack("<I", len(software)) + software
    chunks = [
        _chunk(b"fmt ", fmt),
        _chunk(b"LIST", info),
        _chunk(b"fact", struct.pack("<I", len(audio))),
        _chunk(b"data", audio),
    ]
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunk(chunk_id: bytes, payload: bytes) -> bytes:
    pad = b"\0" if len(payload) % 2 else b""
    return chunk_id + struct.pack("<I", len(payload)) + payload + pad


class GoogleTtsStandIn(GrpcStandIn):
    """See the module docstring. Use as `async with GoogleTtsStandIn() as standin:`."""

    def __init__(
        self,
        *,
        synthesize: Synthesizer = espeak_speech,
        container: Callable[[bytes], bytes] = mulaw_wav,
        latency_s: float = 0.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.synthesize = synthesize
        self.container = container
        self.latency_s = latency_s
        super().__init__(host=host)
        #: Every request received, valid or not, in order.
        self.requests: list[tts.SynthesizeSpeechRequest] = []
        #: The μ-law audio of each successful answer (before it was wrapped in WAV).
        self.answers: list[bytes] = []
        self._failures: list[Failure] = []

    def channel(self) -> grpc.aio.Channel:
        """A fresh client channel to this stand-in (for `channel_client`)."""
        return grpc.aio.insecure_channel(self.address)

    async def start(self) -> str:
        handler = grpc.unary_unary_rpc_method_handler(
            self._synthesize_speech,
            request_deserializer=tts.SynthesizeSpeechRequest.deserialize,
            response_serializer=tts.SynthesizeSpeechResponse.serialize,
        )
        return await self._serve(SERVICE, METHOD, handler)

    def fail_next(self, code: grpc.StatusCode, details: str = "stand-in failure") -> None:
        """The next request fails with `code` (queue several for several requests)."""
        self._failures.append(Failure(code, details))

    async def _synthesize_speech(
        self, request: tts.SynthesizeSpeechRequest, context: Any
    ) -> tts.SynthesizeSpeechResponse:
        self.requests.append(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        await self._gate.wait()
        if self._failures:
            failure = self._failures.pop(0)
            await context.abort(failure.code, failure.details)
        problem = _invalid(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        audio = await self.synthesize(request.input.text, request.voice.language_code)
        self.answers.append(audio)
        return tts.SynthesizeSpeechResponse(audio_content=self.container(audio))


def _invalid(request: tts.SynthesizeSpeechRequest) -> str | None:
    """Google's checks that a client can trip (messages close to Google's own)."""
    given = request.input.text or request.input.ssml
    if not given.strip():
        return "Either `input.text` or `input.ssml` needs to be set."
    if len(given.encode()) > MAX_INPUT_BYTES:
        return (
            f"Either `input.text` or `input.ssml` is longer than the limit of "
            f"{MAX_INPUT_BYTES} bytes. This limit is different from quotas."
        )
    if request.input.ssml:
        return "The stand-in does not read SSML."
    voice = request.voice
    if not voice.language_code:
        return "Voice language code is required."
    if voice.name and not voice.name.lower().startswith(voice.language_code.lower() + "-"):
        return f"Voice '{voice.name}' does not exist for language '{voice.language_code}'."
    config = request.audio_config
    if config.audio_encoding != tts.AudioEncoding.MULAW:
        return f"The stand-in only returns MULAW, not {config.audio_encoding.name}."
    if config.sample_rate_hertz not in (0, 8000):
        return f"The stand-in only synthesizes 8000 Hz, not {config.sample_rate_hertz}."
    return None
