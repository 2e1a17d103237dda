"""What the call session needs from each kind of provider, and nothing more.

One small `Protocol` per kind, no base classes: a vendor file implements the methods
and the registry picks one from configuration. Audio inside the gateway is 8 kHz mono
(telephony): `AudioFrame` carries both μ-law (what Twilio and Google's MULAW config
use) and PCM16 little-endian (what VAD, PocketSphinx and recordings use), so no
provider converts what another already converted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from voice_gateway.providers.telephony_twilio import OutboundCall

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160 samples: one Twilio media payload


class ProviderError(Exception):
    """A provider failed or timed out; the session answers with a fallback, never crashes."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """20 ms of caller audio. `timestamp_ms` is Twilio's media timestamp (call clock)."""

    mulaw: bytes
    pcm: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recognition result. Interim results may change; a final one will not."""

    text: str
    is_final: bool
    confidence: float | None = None
    #: Call-clock ms of the audio the result ends at, when the provider says.
    end_ms: int | None = None


class SttStream(Protocol):
    """One streaming recognition for one call (the provider restarts it as it must)."""

    async def send(self, frame: AudioFrame) -> None: ...

    def results(self) -> AsyncIterator[Transcript]:
        """Results in order until `close`; raises `ProviderError` on failure."""
        ...

    async def close(self) -> None: ...


class SpeechToText(Protocol):
    name: str

    async def open_stream(self, *, language: str) -> SttStream:
        """Start recognising 8 kHz audio in `language` ("es" or "en")."""
        ...


class TextToSpeech(Protocol):
    name: str

    def synthesize(self, text: str, *, language: str) -> AsyncIterator[bytes]:
        """μ-law 8 kHz mono audio for `text`, in chunks as they are ready (no headers)."""
        ...


class Telephony(Protocol):
    """Call control outside the media stream (Twilio REST in production)."""

    async def hang_up(self, call_sid: str) -> None: ...

    async def transfer(self, call_sid: str, to_number: str, *, announce: str | None = None) -> None:
        """Move the live call to `to_number` (a `<Dial>`), ending our media stream."""
        ...

    async def place_call(self, request: OutboundCall) -> str:
        """Dial out; the CallSid of the call now queued (the rest comes as callbacks)."""
        ...
