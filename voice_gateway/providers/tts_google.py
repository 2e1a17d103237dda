"""Google Cloud Text-to-Speech: μ-law 8 kHz straight from Google, so nothing is resampled.

One unary `SynthesizeSpeech` per sentence (the session already sends text sentence by
sentence, and a sentence comes back in a few hundred ms). The response is a WAV file even
for MULAW; its header is removed by walking the RIFF chunks (`read_wav`), never by a
fixed offset, and its format is checked (μ-law, 8 kHz, mono) before a caller hears it.
Audio is handed on in `chunk_ms` slices so the sender can pace it and a barge-in can
drop what is left. Text over Google's 5,000-byte limit is split at sentence
(then clause, then word) boundaries and requested piece by piece.

Only UNAVAILABLE is retried, inside one deadline per piece: on a call, a fallback phrase
now beats a perfect answer later. Every failure leaves as `ProviderError`.

`streaming_synthesize` (bidirectional) in the installed texttospeech 2.38 accepts MULAW in
`StreamingAudioConfig`, but only for Chirp 3 HD voices, and whether its μ-law chunks carry
a WAV header is not documented; with sentence-sized requests it would save little, so the
unary call is the one implemented.

The client is made on first use, inside the running event loop that its gRPC channel
binds to. Tests hand in a channel to a local stand-in (`channel_client`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import grpc
from google.api_core import exceptions as google_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import credentials as auth_credentials
from google.auth import exceptions as auth_exceptions
from google.cloud import texttospeech_v1 as tts
from google.cloud.texttospeech_v1.services.text_to_speech.transports.grpc_asyncio import (
    TextToSpeechGrpcAsyncIOTransport,
)
from google.oauth2 import service_account

from voice_gateway.audio.wav import WavEncoding, read_wav
from voice_gateway.providers.base import FRAME_MS, SAMPLE_RATE, ProviderError

if TYPE_CHECKING:
    from voice_gateway.config import GatewaySettings

PROVIDER = "google-tts"

#: Google rejects a `SynthesisInput` over this many bytes of UTF-8.
MAX_INPUT_BYTES: Final = 5000
TELEPHONY_PROFILE: Final = "telephony-class-application"
#: Neural2 voices take the telephony profile and SSML-free text; Chirp 3 HD names
#: ("es-US-Chirp3-HD-Kore") work the same way here.
DEFAULT_VOICES: Final[Mapping[str, str]] = {
    "es": "es-US-Neural2-A",
    "en": "en-US-Neural2-F",
}
_SCOPES: Final = ("https://www.googleapis.com/auth/cloud-platform",)
_LOOPBACK: Final = ("127.0.0.1", "localhost", "[::1]", "::1")

ClientFactory = Callable[[], tts.TextToSpeechAsyncClient]


def language_code_of(voice_name: str) -> str:
    """The BCP-47 locale a Google voice name starts with: "es-US-Neural2-A" → "es-US"."""
    parts = voice_name.split("-")
    if len(parts) < 3 or not parts[0].isalpha() or not parts[1].isalnum():
        raise ValueError(f"not a Google voice name (locale-Family-Name): {voice_name!r}")
    return f"{parts[0]}-{parts[1]}"


_SEPARATORS: Final = (
    re.compile(r"(?<=[.!?…])\s+"),  # sentences
    re.compile(r"(?<=[,;:])\s+"),  # clauses
    re.compile(r"\s+"),  # words
)


def split_text(text: str, max_bytes: int = MAX_INPUT_BYTES) -> list[str]:
    """Cut `text` into pieces of at most `max_bytes` UTF-8 bytes, at the largest boundary
    that fits (sentence, clause, word, and only as a last resort inside a word)."""
    if max_bytes < 4:
        raise ValueError("max_bytes must hold at least one UTF-8 character")
    text = text.strip()
    if not text:
        return []
    return _pack(_fit(text, 0, max_bytes), max_bytes)


def _fit(segment: str, level: int, max_bytes: int) -> list[str]:
    """Split `segment` into parts each within `max_bytes`, coarsest boundaries first."""
    if len(segment.encode()) <= max_bytes:
        return [segment]
    if level == len(_SEPARATORS):
        return _hard_cut(segment, max_bytes)
    parts: list[str] = []
    for part in _SEPARATORS[level].split(segment):
        if part:
            parts.extend(_fit(part, level + 1, max_bytes))
    return parts


def _hard_cut(segment: str, max_bytes: int) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for char in segment:
        width = len(char.encode())
        if size + width > max_bytes:
            parts.append("".join(current))
            current, size = [], 0
        current.append(char)
        size += width
    parts.append("".join(current))
    return parts


def _pack(parts: list[str], max_bytes: int) -> list[str]:
    """Join consecutive parts back together while they fit, so requests stay few."""
    pieces: list[str] = []
    current = ""
    for part in parts:
        candidate = f"{current} {part}" if current else part
        if len(candidate.encode()) <= max_bytes:
            current = candidate
        else:
            pieces.append(current)
            current = part
    if current:
        pieces.append(current)
    return pieces


def cloud_client(
    *, credentials_file: Path | None = None, endpoint: str | None = None
) -> ClientFactory:
    """Google's real service: a service-account key file, or the ambient credentials
    (GOOGLE_APPLICATION_CREDENTIALS, workload identity, gcloud)."""

    def make() -> tts.TextToSpeechAsyncClient:
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        if credentials_file is None:
            return tts.TextToSpeechAsyncClient(client_options=options)
        # A service-account key only: a generic loader would also run external-account
        # configurations (commands, URLs) from whatever file the setting names.
        load: Callable[..., auth_credentials.Credentials] = (
            service_account.Credentials.from_service_account_file  # untyped in google-auth
        )
        credentials = load(str(credentials_file), scopes=list(_SCOPES))
        return tts.TextToSpeechAsyncClient(credentials=credentials, client_options=options)

    return make


def channel_client(channel_factory: Callable[[], grpc.aio.Channel]) -> ClientFactory:
    """A client on a channel you make (a local stand-in, a proxy): no credentials."""

    def make() -> tts.TextToSpeechAsyncClient:
        transport = TextToSpeechGrpcAsyncIOTransport(channel=channel_factory())
        return tts.TextToSpeechAsyncClient(transport=transport)

    return make


class GoogleTts:
    """`TextToSpeech` on Google Cloud TTS, MULAW 8 kHz, one voice name per language."""

    name = "google"

    def __init__(
        self,
        *,
        client_factory: ClientFactory | None = None,
        voices: Mapping[str, str] = DEFAULT_VOICES,
        speaking_rate: float = 1.0,
        pitch: float = 0.0,
        effects_profile: Sequence[str] = (TELEPHONY_PROFILE,),
        timeout_s: float = 5.0,
        attempts: int = 2,
        retry_backoff_s: float = 0.05,
        chunk_ms: int = 100,
        max_input_bytes: int = MAX_INPUT_BYTES,
    ) -> None:
        if not voices:
            raise ValueError("at least one language needs a voice")
        if not 0.25 <= speaking_rate <= 2.0:
            raise ValueError("speaking_rate must be within 0.25–2.0")
        if not -20.0 <= pitch <= 20.0:
            raise ValueError("pitch must be within -20–20 semitones")
        if timeout_s <= 0 or attempts < 1 or retry_backoff_s < 0:
            raise ValueError("timeout_s > 0, attempts ≥ 1 and retry_backoff_s ≥ 0 are required")
        if chunk_ms < FRAME_MS or chunk_ms % FRAME_MS:
            raise ValueError(f"chunk_ms must be a multiple of {FRAME_MS}")
        self._voices = {
            tag.lower(): tts.VoiceSelectionParams(language_code=language_code_of(name), name=name)
            for tag, name in voices.items()
        }
        self._audio_config = tts.AudioConfig(
            audio_encoding=tts.AudioEncoding.MULAW,
            sample_rate_hertz=SAMPLE_RATE,
            speaking_rate=speaking_rate,
            pitch=pitch,
            effects_profile_id=list(effects_profile),
        )
        self._settings_key = f"rate={speaking_rate}|pitch={pitch}|fx={','.join(effects_profile)}"
        self._client_factory = client_factory or cloud_client()
        self._client: tts.TextToSpeechAsyncClient | None = None
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._retry_backoff_s = retry_backoff_s
        self._chunk_bytes = SAMPLE_RATE * chunk_ms // 1000
        self._max_input_bytes = max_input_bytes

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> GoogleTts:
        """GOOGLE_TTS_*; an endpoint on loopback is a stand-in reached over plain gRPC."""
        endpoint = settings.google_tts_endpoint
        if endpoint and endpoint.rsplit(":", 1)[0] in _LOOPBACK:
            factory = channel_client(lambda: grpc.aio.insecure_channel(endpoint))
        else:
            factory = cloud_client(
                credentials_file=settings.google_application_credentials, endpoint=endpoint
            )
        return cls(
            client_factory=factory,
            voices={"es": settings.google_tts_voice_es, "en": settings.google_tts_voice_en},
            timeout_s=settings.google_tts_timeout_s,
        )

    def voice_key(self, language: str) -> str:
        """What, besides the text, decides the audio: for the phrase cache's key."""
        return f"{self._voice_for(language).name}|{self._settings_key}"

    def _voice_for(self, language: str) -> tts.VoiceSelectionParams:
        tag = language.strip().lower().replace("_", "-")
        voice = self._voices.get(tag) or self._voices.get(tag.split("-", 1)[0])
        if voice is None:
            raise ProviderError(PROVIDER, f"no voice configured for language {language!r}")
        return voice

    def _get_client(self) -> tts.TextToSpeechAsyncClient:
        if self._client is None:
            try:
                self._client = self._client_factory()
            except (auth_exceptions.GoogleAuthError, OSError, ValueError) as exc:
                raise ProviderError(PROVIDER, f"cannot create the client: {exc}") from exc
        return self._client

    async def synthesize(self, text: str, *, language: str) -> AsyncGenerator[bytes, None]:
        voice = self._voice_for(language)
        chunk = self._chunk_bytes
        for piece in split_text(text, self._max_input_bytes):
            audio = await self._request(piece, voice)
            for start in range(0, len(audio), chunk):
                yield audio[start : start + chunk]

    async def _request(self, text: str, voice: tts.VoiceSelectionParams) -> bytes:
        """One piece of text → headerless μ-law, within one deadline, retrying UNAVAILABLE."""
        client = self._get_client()
        request = tts.SynthesizeSpeechRequest(
            input=tts.SynthesisInput(text=text), voice=voice, audio_config=self._audio_config
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        attempt = 1
        while True:
            remaining = deadline - loop.time()
            try:
                async with asyncio.timeout(remaining):
                    response = await client.synthesize_speech(
                        request=request, retry=None, timeout=remaining
                    )
                break
            except (TimeoutError, google_exceptions.DeadlineExceeded) as exc:
                raise ProviderError(PROVIDER, f"timed out after {self._timeout_s:g} s") from exc
            except google_exceptions.ServiceUnavailable as exc:
                pause = self._retry_backoff_s * 2 ** (attempt - 1)
                if attempt >= self._attempts or loop.time() + pause >= deadline:
                    raise ProviderError(PROVIDER, _describe(exc)) from exc
                attempt += 1
                await asyncio.sleep(pause)
            except google_exceptions.GoogleAPICallError as exc:
                raise ProviderError(PROVIDER, _describe(exc)) from exc
            except auth_exceptions.GoogleAuthError as exc:
                raise ProviderError(PROVIDER, f"credentials: {exc}") from exc
        return _mulaw_of(response.audio_content)

    async def aclose(self) -> None:
        """Close the gRPC channel; the next synthesis makes a new client."""
        client, self._client = self._client, None
        if client is not None:
            close: Callable[[], Awaitable[None]] = client.transport.close  # untyped in the SDK
            await close()


def _mulaw_of(content: bytes) -> bytes:
    """The μ-law samples of Google's WAV answer, refusing any other format: played to
    a caller, PCM or another rate would be loud noise."""
    try:
        wav = read_wav(content)
    except ValueError as exc:
        raise ProviderError(PROVIDER, f"unreadable audio in the response: {exc}") from exc
    found = wav.format
    if (found.encoding, found.sample_rate, found.channels) != (WavEncoding.MULAW, SAMPLE_RATE, 1):
        raise ProviderError(
            PROVIDER,
            f"expected μ-law {SAMPLE_RATE} Hz mono, got format {found.format_tag} "
            f"at {found.sample_rate} Hz, {found.channels} channel(s)",
        )
    return wav.data


def _describe(exc: google_exceptions.GoogleAPICallError) -> str:
    status = exc.grpc_status_code.name if exc.grpc_status_code is not None else exc.code
    return f"{status}: {exc.message}"
