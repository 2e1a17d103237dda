"""Offline text-to-speech with eSpeak NG, in Spanish and English, with no system package.

`espeakng-loader` ships `libespeak-ng.so` and its data in the wheel; we drive the library
through ctypes in synchronous mode, so each synthesis runs in the calling thread and hands
its audio to a callback every `BUFFER_MS` of speech. The library keeps global state (one
current voice, one callback) and is not thread-safe, so every process has exactly one
`_Engine`: one worker thread that owns the library and runs jobs one at a time. The event
loop never waits on it; each callback's audio (22.05 kHz PCM16) is resampled to 8 kHz,
μ-law encoded in the worker and posted to the caller's queue, so the first chunk of a
phrase can leave before the phrase is finished. A consumer that stops listening (barge-in)
cancels its job: the next callback returns 1 and the library abandons the phrase.

The same text does not always give the same bytes: libespeak-ng keeps its pitch-flutter
and roughness phases in static variables that neither the API nor `espeak_Initialize`
resets, so a phrase differs from its previous rendering by a few samples (< 1 % in
length). What is said, and how, is the same; the phrase cache makes repeats identical.

Robotic, but intelligible, instant (a few ms per second of audio) and free: the embedded
demo, the simulator's caller voice, and a fallback when the cloud is down.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from voice_gateway.audio import mulaw
from voice_gateway.audio.resample import StreamResampler
from voice_gateway.providers.base import SAMPLE_RATE, ProviderError

if TYPE_CHECKING:
    from voice_gateway.config import GatewaySettings

PROVIDER = "espeak"

#: Milliseconds of speech per synth callback: small enough that the first chunk of a phrase
#: is ready in about a millisecond, large enough that callbacks stay cheap.
BUFFER_MS: Final = 60

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000
_CHARS_UTF8: Final = 1
_POS_CHARACTER: Final = 1
_EE_OK: Final = 0
_EE_NOT_FOUND: Final = 2
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True, slots=True)
class EspeakVoice:
    """One eSpeak voice and its prosody; the whole value is part of the phrase-cache key."""

    #: An eSpeak voice name: "es-419" (Latin American Spanish), "es", "en-us", "en"…
    name: str
    #: Words per minute, 80–450 (eSpeak's default is 175).
    rate_wpm: int = 165
    #: Base pitch and pitch range, 0–100 (50 is eSpeak's default).
    pitch: int = 50
    pitch_range: int = 50
    #: Amplitude, 0–200 (100 is the default; more clips).
    volume: int = 100
    #: Extra pause between words, in units of 10 ms at the default speed.
    word_gap: int = 0

    def __post_init__(self) -> None:
        if not self.name or not self.name.isascii() or any(c.isspace() for c in self.name):
            raise ValueError(f"not an eSpeak voice name: {self.name!r}")
        for label, value, low, high in (
            ("rate_wpm", self.rate_wpm, 80, 450),
            ("pitch", self.pitch, 0, 100),
            ("pitch_range", self.pitch_range, 0, 100),
            ("volume", self.volume, 0, 200),
            ("word_gap", self.word_gap, 0, 100),
        ):
            if not low <= value <= high:
                raise ValueError(f"{label} must be within {low}–{high}, not {value}")

    @property
    def key(self) -> str:
        return (
            f"{self.name}|rate={self.rate_wpm}|pitch={self.pitch}|range={self.pitch_range}"
            f"|volume={self.volume}|gap={self.word_gap}"
        )


DEFAULT_VOICES: Final[Mapping[str, EspeakVoice]] = {
    "es": EspeakVoice("es-419"),
    "en": EspeakVoice("en-us"),
}


def voice_for(voices: Mapping[str, EspeakVoice], language: str) -> EspeakVoice:
    """The voice for `language` ("es", "es-CL", "en-US"…): exact tag first, then its base."""
    tag = language.strip().lower().replace("_", "-")
    voice = voices.get(tag) or voices.get(tag.split("-", 1)[0])
    if voice is None:
        raise ProviderError(PROVIDER, f"no voice configured for language {language!r}")
    return voice


class _End:
    """Marks the end of one job's audio in its queue."""


_END: Final = _End()


_Item = bytes | _End | ProviderError


@dataclass(eq=False)
class _Job:
    """One phrase on its way through the worker. The worker hands each item to `sink`;
    `telephone` jobs are resampled to 8 kHz and μ-law encoded on the way, others are
    left as the library's PCM16."""

    text: bytes
    voice: EspeakVoice
    sink: Callable[[_Item], None]
    telephone: bool = True
    cancelled: threading.Event = field(default_factory=threading.Event)
    resampler: StreamResampler | None = None

    def post(self, item: _Item) -> None:
        try:
            self.sink(item)
        except RuntimeError:  # the event loop is closed: nobody listens any more
            self.cancelled.set()

    def convert(self, pcm: bytes) -> bytes:
        if not self.telephone:
            return pcm
        assert self.resampler is not None
        return mulaw.encode(self.resampler.process(pcm))

    def tail(self) -> bytes:
        if not self.telephone:
            return b""
        assert self.resampler is not None
        return mulaw.encode(self.resampler.flush())


class _Engine:
    """The process's one libespeak-ng: loaded, initialised and used on one worker thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self._lib: Any = None
        self._sample_rate = 0
        self._job: _Job | None = None
        #: Worker seconds spent on finished phrases (library, resampling, μ-law), and how
        #: many: read by `measure_speed`. Written by the worker thread only.
        self.compute_s = 0.0
        self.phrases = 0
        # Keep the ctypes callback alive for as long as the library may call it.
        self._callback = _SynthCallback(self._on_audio)

    def submit(self, job: _Job) -> Future[None]:
        return self._executor.submit(self._run, job)

    @property
    def sample_rate(self) -> int:
        """The library's output rate (22050 for the voices shipped); 0 until loaded."""
        return self._sample_rate

    # Everything below runs on the worker thread only.

    def _load(self) -> None:
        if self._lib is not None:
            return
        try:
            loader = importlib.import_module("espeakng_loader")
            library_path: str = loader.get_library_path()
            data_path: str = loader.get_data_path()
            lib = ctypes.CDLL(library_path)
        except (ImportError, OSError, RuntimeError) as exc:
            raise ProviderError(PROVIDER, f"libespeak-ng is not available: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise ProviderError(PROVIDER, f"espeak_Initialize failed with data at {data_path}")
        self._lib = lib
        self._sample_rate = rate

    def _apply(self, voice: EspeakVoice) -> None:
        """Voice, prosody and callback for the next phrase, every time: it costs well under
        a millisecond and nothing set by an earlier phrase (or by other code that loaded
        the same library) can leak into this one."""
        self._lib.espeak_SetSynthCallback(self._callback)
        status = self._lib.espeak_SetVoiceByName(voice.name.encode())
        if status != _EE_OK:
            reason = "not found" if status == _EE_NOT_FOUND else f"error {status}"
            raise ProviderError(PROVIDER, f"voice {voice.name!r}: {reason}")
        for parameter, value in (
            (_RATE, voice.rate_wpm),
            (_PITCH, voice.pitch),
            (_RANGE, voice.pitch_range),
            (_VOLUME, voice.volume),
            (_WORDGAP, voice.word_gap),
        ):
            if self._lib.espeak_SetParameter(parameter, value, 0) != _EE_OK:
                raise ProviderError(PROVIDER, f"voice {voice.name!r}: parameter {parameter}")

    def _run(self, job: _Job) -> None:
        if job.cancelled.is_set():
            return
        started = time.perf_counter()
        try:
            self._load()
            self._apply(job.voice)
            if job.telephone:
                job.resampler = StreamResampler(self._sample_rate, SAMPLE_RATE)
            self._job = job
            status = self._lib.espeak_Synth(
                job.text, len(job.text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            self._job = None
            if job.cancelled.is_set():
                return
            if status != _EE_OK:
                raise ProviderError(PROVIDER, f"espeak_Synth returned {status}")
            tail = job.tail()
            if tail:
                job.post(tail)
            self.compute_s += time.perf_counter() - started
            self.phrases += 1
            job.post(_END)
        except ProviderError as exc:
            job.post(exc)
        except Exception as exc:  # a bug must reach the caller as a provider failure, not hang it
            job.post(ProviderError(PROVIDER, f"{type(exc).__name__}: {exc}"))
        finally:
            self._job = None

    def _on_audio(self, wav: Any, count: int, _events: int | None) -> int:
        """The library's synth callback: 0 continues, 1 abandons the phrase."""
        job = self._job
        if job is None or job.cancelled.is_set():
            return 1
        if not wav or count <= 0:
            return 0
        try:
            chunk = job.convert(ctypes.string_at(wav, count * 2))
        except Exception as exc:  # exceptions cannot cross the C boundary
            job.post(ProviderError(PROVIDER, f"audio conversion failed: {exc}"))
            job.cancelled.set()
            return 1
        if chunk:
            job.post(chunk)
        return 0


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
        return _engine


def render_pcm(text: str, voice: EspeakVoice) -> tuple[bytes, int]:
    """`text` as the library's own PCM16 and its sample rate, synthesized on the one
    engine thread. Blocking: for scripts and test audio that must share the process's
    libespeak-ng with the provider (two users of its global state would garble each
    other), never for the event loop's thread."""
    items: list[_Item] = []
    job = _Job(text.strip().encode("utf-8") + b"\0", voice, items.append, telephone=False)
    engine = _get_engine()
    engine.submit(job).result()
    for item in items:
        if isinstance(item, ProviderError):
            raise item
    return b"".join(item for item in items if isinstance(item, bytes)), engine.sample_rate


class EspeakTts:
    """`TextToSpeech` on eSpeak NG: μ-law 8 kHz, streamed per synth callback."""

    name = PROVIDER

    def __init__(self, voices: Mapping[str, EspeakVoice] = DEFAULT_VOICES) -> None:
        if not voices:
            raise ValueError("at least one language needs a voice")
        self._voices = {tag.lower(): voice for tag, voice in voices.items()}

    @classmethod
    def with_prosody(cls, *, rate_wpm: int, pitch: int) -> EspeakTts:
        """The default voices at another speed and pitch (the gateway's settings)."""
        return cls(
            {
                tag: EspeakVoice(voice.name, rate_wpm=rate_wpm, pitch=pitch)
                for tag, voice in DEFAULT_VOICES.items()
            }
        )

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> EspeakTts:
        """ESPEAK_RATE_WPM and ESPEAK_PITCH on the default voices."""
        return cls.with_prosody(rate_wpm=settings.espeak_rate_wpm, pitch=settings.espeak_pitch)

    def voice_key(self, language: str) -> str:
        """What, besides the text, decides the audio: for the phrase cache's key."""
        return voice_for(self._voices, language).key

    async def synthesize(self, text: str, *, language: str) -> AsyncGenerator[bytes, None]:
        voice = voice_for(self._voices, language)
        text = text.strip()
        if not text:
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()

        def sink(item: _Item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job = _Job(text.encode("utf-8") + b"\0", voice, sink)
        _get_engine().submit(job)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, ProviderError):
                    raise item
                yield item
        finally:
            # Stopped early (barge-in, error, cancellation): let the worker drop the phrase.
            job.cancelled.set()

    async def aclose(self) -> None:
        """Nothing per instance: the engine is shared and lives as long as the process."""


@dataclass(frozen=True, slots=True)
class SpeedFigures:
    phrases: int
    audio_s: float
    #: Worker time (library + resampling + μ-law) per second of audio produced.
    compute_ms_per_audio_s: float
    #: Wall time from the request to the first chunk, as a caller sees it.
    first_chunk_ms_p50: float
    first_chunk_ms_max: float


async def measure_speed(
    tts: EspeakTts, phrases: Sequence[tuple[str, str]], *, rounds: int = 3
) -> SpeedFigures:
    """Synthesize (text, language) pairs `rounds` times, one after another: the figures
    `voiceagent bench` prints for the offline voice."""
    engine = _get_engine()
    compute_before = engine.compute_s
    audio_bytes = 0
    first: list[float] = []
    for _ in range(rounds):
        for text, language in phrases:
            started = time.perf_counter()
            got_first = False
            async for chunk in tts.synthesize(text, language=language):
                if not got_first:
                    first.append((time.perf_counter() - started) * 1000)
                    got_first = True
                audio_bytes += len(chunk)
    # The worker updates its total before posting a phrase's end, so it is complete here.
    compute_s = engine.compute_s - compute_before
    audio_s = audio_bytes / SAMPLE_RATE
    first.sort()
    return SpeedFigures(
        phrases=len(phrases) * rounds,
        audio_s=audio_s,
        compute_ms_per_audio_s=compute_s * 1000 / audio_s if audio_s else 0.0,
        first_chunk_ms_p50=first[len(first) // 2] if first else 0.0,
        first_chunk_ms_max=first[-1] if first else 0.0,
    )
