"""Offline English speech-to-text with PocketSphinx: the embedded default, demo-grade.

The `pocketsphinx` wheel ships a US English model, so nothing is downloaded. There is
no offline Spanish model (offline-speech.md): asking for Spanish fails at once with a
message that names the fix, rather than transcribing Spanish as English nonsense.

The model is trained on 16 kHz audio and does not work at 8 kHz, so each stream
upsamples the caller's PCM through its own streaming resampler. PocketSphinx's own
endpointer (a WebRTC-style VAD with a decision window) cuts the audio into utterances:
an utterance opens the decoder, interim hypotheses are taken every `interim_every_ms`
of speech, and the end of speech (or `close`) yields the final.

Decoding is CPU work that holds the GIL for the whole of each native call, so it runs
in worker threads one endpointer frame (30 ms) at a time: while a call is decoded the
event loop waits a few ms for the GIL at a time, not a whole utterance. Two native
calls are longer: the end-of-utterance second pass (~150 ms, `second_pass=False`
drops it at a cost in accuracy) and loading a model (~0.2 s, ~90 MB). So decoders are
loaded ahead (`warm_up`), pooled across calls, and simultaneous streams are capped:
this is the embedded, demo-grade recogniser, not one for many calls per process.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketsphinx import Decoder, Endpointer  # type: ignore[import-untyped]

from voice_gateway.audio.resample import StreamResampler
from voice_gateway.providers.base import SAMPLE_RATE, AudioFrame, ProviderError, Transcript

if TYPE_CHECKING:
    from voice_gateway.config import GatewaySettings

logger = logging.getLogger(__name__)

PROVIDER = "pocketsphinx"
MODEL_RATE = 16_000
_MODEL_BYTES_PER_MS = MODEL_RATE * 2 // 1000
_CALL_BYTES_PER_MS = SAMPLE_RATE * 2 // 1000

#: Starting cepstral mean for phone audio. The model's own (`40,3,-1,0,...`) describes
#: wideband speech; upsampled 8 kHz μ-law has nothing above 4 kHz, which shifts every
#: cepstral coefficient, and live CMN needs a few utterances to get there: until then
#: the first sentences of each call come out as nonsense. Measured by batch-decoding
#: eight sentences (none used in the tests) in five eSpeak NG voices through the phone
#: path; the five agreed closely because the shift comes from the channel, not the voice.
PHONE_CMN_INIT = "44.5,20.1,-30.9,41.0,-25.0,0.0,6.5,-29.3,8.0,-14.0,3.4,5.3,-15.1"


class PocketSphinxError(ProviderError):
    """PocketSphinx cannot serve this stream (language, capacity, decoder failure)."""

    def __init__(self, reason: str) -> None:
        super().__init__(PROVIDER, reason)


@dataclass(frozen=True, slots=True)
class PocketSphinxOptions:
    #: Acoustic model directory, language model and dictionary; None: the wheel's en-US.
    hmm: Path | None = None
    lm: Path | None = None
    dictionary: Path | None = None
    #: Initial cepstral mean (comma-separated); None: the model's wideband default.
    cmn_init: str | None = PHONE_CMN_INIT
    #: PocketSphinx's second search pass (fwdflat) when an utterance ends: far fewer
    #: errors on phone audio, but ~150 ms more per final, all of it holding the GIL.
    second_pass: bool = True
    #: Endpointer VAD aggressiveness, 0 (loose) to 3 (strict).
    vad_mode: int = 0
    #: Window (s) over which the endpointer decides speech vs silence; it is also
    #: roughly the silence that ends an utterance.
    vad_window_s: float = 0.3
    #: Fraction of the window that must agree to switch state.
    vad_ratio: float = 0.9
    #: Interim hypothesis every this much speech; None: finals only.
    interim_every_ms: int | None = 500
    #: Audio handed to a worker thread at once.
    chunk_ms: int = 120
    #: Streams open at once (each holds a decoder of ~90 MB).
    max_streams: int = 4
    #: Decoders kept loaded between calls.
    idle_decoders: int = 1
    #: Audio waiting for the decoder beyond this means the machine cannot keep up.
    max_backlog_ms: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.vad_mode <= 3:
            raise ValueError("vad_mode must be 0..3")
        if not 0.03 <= self.vad_window_s <= 3.0 or not 0.0 < self.vad_ratio < 1.0:
            raise ValueError("vad_window_s must be 0.03..3 s and vad_ratio within (0, 1)")
        if self.interim_every_ms is not None and self.interim_every_ms < 30:
            raise ValueError("interim_every_ms must be >= 30 (one endpointer frame)")
        if self.chunk_ms < 20 or self.max_backlog_ms < self.chunk_ms:
            raise ValueError("chunk_ms must be >= 20 and max_backlog_ms >= chunk_ms")
        if self.max_streams < 1 or self.idle_decoders < 0:
            raise ValueError("max_streams must be >= 1 and idle_decoders >= 0")


def check_language(language: str) -> None:
    """English only: anything else is refused with the way out."""
    base = language.strip().replace("_", "-").split("-", 1)[0].lower()
    if base == "en":
        return
    if base == "es":
        raise PocketSphinxError("no offline Spanish STT; use STT_PROVIDER=google")
    raise PocketSphinxError(
        f"offline STT speaks English only, not {language!r}; use STT_PROVIDER=google"
    )


# ---------------------------------------------------------------- worker-thread core


@dataclass(frozen=True, slots=True)
class Hypothesis:
    text: str
    is_final: bool
    #: End of the audio it covers, in ms of this stream's audio.
    end_ms: int


class Utterances:
    """One stream's recogniser: 16 kHz PCM in, hypotheses out. Synchronous, not
    thread-safe: it runs in a worker thread, one call at a time per stream."""

    def __init__(self, decoder: Any, options: PocketSphinxOptions) -> None:
        self._decoder = decoder
        self._endpointer = Endpointer(
            window=options.vad_window_s,
            ratio=options.vad_ratio,
            vad_mode=options.vad_mode,
            sample_rate=MODEL_RATE,
        )
        self._frame_bytes: int = self._endpointer.frame_bytes
        self._frame_ms = self._frame_bytes // _MODEL_BYTES_PER_MS
        self._interim_frames = (
            None
            if options.interim_every_ms is None
            else max(1, options.interim_every_ms // self._frame_ms)
        )
        self._buffer = bytearray()
        self._position_ms = 0
        self._in_utterance = False
        self._frames_since_interim = 0
        self._last_interim = ""

    def feed(self, pcm: bytes) -> list[Hypothesis]:
        self._buffer += pcm
        out: list[Hypothesis] = []
        size = self._frame_bytes
        whole = len(self._buffer) - len(self._buffer) % size
        for start in range(0, whole, size):
            speech = self._endpointer.process(bytes(self._buffer[start : start + size]))
            self._position_ms += self._frame_ms
            self._step(speech, out)
        del self._buffer[:whole]
        return out

    def finish(self) -> list[Hypothesis]:
        """End of audio: close the utterance in progress, if any."""
        out: list[Hypothesis] = []
        if self._endpointer.in_speech:
            tail = bytes(self._buffer[: self._frame_bytes])
            self._position_ms += len(tail) // _MODEL_BYTES_PER_MS
            # A whole frame, padded with silence: it refuses an empty one.
            speech = self._endpointer.end_stream(tail + bytes(self._frame_bytes - len(tail)))
            if speech is not None and self._in_utterance:
                self._decoder.process_raw(speech, False, False)
        self._buffer.clear()
        if self._in_utterance:
            out.extend(self._end_utterance(self._position_ms))
        return out

    def _step(self, speech: bytes | None, out: list[Hypothesis]) -> None:
        if speech is None:
            return
        if not self._in_utterance:
            self._decoder.start_utt()
            self._in_utterance = True
            self._frames_since_interim = 0
            self._last_interim = ""
        self._decoder.process_raw(speech, False, False)
        if not self._endpointer.in_speech:
            out.extend(self._end_utterance(round(self._endpointer.speech_end * 1000)))
            return
        if self._interim_frames is None:
            return
        self._frames_since_interim += 1
        if self._frames_since_interim >= self._interim_frames:
            self._frames_since_interim = 0
            hypothesis = self._decoder.hyp()
            text = hypothesis.hypstr.strip() if hypothesis is not None else ""
            if text and text != self._last_interim:
                self._last_interim = text
                out.append(Hypothesis(text, False, self._position_ms))

    def _end_utterance(self, end_ms: int) -> list[Hypothesis]:
        self._decoder.end_utt()
        self._in_utterance = False
        hypothesis = self._decoder.hyp()
        text = hypothesis.hypstr.strip() if hypothesis is not None else ""
        return [Hypothesis(text, True, end_ms)] if text else []


# ---------------------------------------------------------------- call clock


class CallClockMap:
    """Stream audio time → call clock, exact across gaps in Twilio's timestamps."""

    __slots__ = ("_calls", "_expected", "_fed_ms", "_streams")

    def __init__(self) -> None:
        self._streams: list[int] = []
        self._calls: list[int] = []
        self._fed_ms = 0
        self._expected: int | None = None

    def frame(self, timestamp_ms: int, duration_ms: int) -> None:
        if timestamp_ms != self._expected:
            self._streams.append(self._fed_ms)
            self._calls.append(timestamp_ms)
        self._fed_ms += duration_ms
        self._expected = timestamp_ms + duration_ms

    def to_call_ms(self, stream_ms: int) -> int:
        if not self._streams:
            return stream_ms
        index = max(0, bisect.bisect_right(self._streams, stream_ms) - 1)
        return self._calls[index] + stream_ms - self._streams[index]


# ---------------------------------------------------------------- the stream


class PocketSphinxStream:
    """One call's recognition; audio is resampled here and decoded in a worker thread."""

    def __init__(
        self,
        provider: PocketSphinxSpeechToText,
        decoder: Any,
        options: PocketSphinxOptions,
        executor: ThreadPoolExecutor,
    ) -> None:
        self._provider = provider
        self._decoder = decoder
        self._core = Utterances(decoder, options)
        self._executor = executor
        self._resampler = StreamResampler(SAMPLE_RATE, MODEL_RATE)
        self._clock = CallClockMap()
        self._chunk_bytes = options.chunk_ms * _MODEL_BYTES_PER_MS
        self._max_backlog = max(1, options.max_backlog_ms // options.chunk_ms)
        self._pending = bytearray()
        self._work: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._results: asyncio.Queue[Transcript | PocketSphinxError | None] = asyncio.Queue()
        self._error: PocketSphinxError | None = None
        self._closing = False
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="pocketsphinx")

    async def send(self, frame: AudioFrame) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise PocketSphinxError("send after close")
        self._clock.frame(frame.timestamp_ms, len(frame.pcm) // _CALL_BYTES_PER_MS)
        self._pending += self._resampler.process(frame.pcm)
        if len(self._pending) >= self._chunk_bytes:
            self._work.put_nowait(bytes(self._pending))
            self._pending.clear()
            if self._work.qsize() > self._max_backlog:
                error = PocketSphinxError("decoding is falling behind real time")
                self._fail(error)
                raise error

    async def results(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._results.get()
            if item is None:
                return
            if isinstance(item, PocketSphinxError):
                raise item
            yield item

    async def close(self) -> None:
        """Decode what is left, emit the last final, give the decoder back."""
        if not self._closing:
            self._closing = True
            self._pending += self._resampler.flush()
            if self._pending:
                self._work.put_nowait(bytes(self._pending))
                self._pending.clear()
            self._work.put_nowait(None)
        await asyncio.shield(self._worker)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        clean = False
        try:
            while (chunk := await self._work.get()) is not None:
                self._deliver(await loop.run_in_executor(self._executor, self._core.feed, chunk))
            self._deliver(await loop.run_in_executor(self._executor, self._core.finish))
            clean = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a decoder failure costs this call, not the process
            logger.exception("pocketsphinx: decoding failed")
            self._fail(PocketSphinxError(f"decoding failed: {exc}"))
        finally:
            # A decoder a worker thread may still be using is never handed to another call.
            self._provider._release(self._decoder, reusable=clean)
            self._results.put_nowait(None)

    def _deliver(self, hypotheses: list[Hypothesis]) -> None:
        for hypothesis in hypotheses:
            end_ms = self._clock.to_call_ms(hypothesis.end_ms)
            self._results.put_nowait(Transcript(hypothesis.text, hypothesis.is_final, None, end_ms))

    def _fail(self, error: PocketSphinxError) -> None:
        if self._error is None:
            self._error = error
            self._results.put_nowait(error)
        if not self._closing:  # let the worker finish and give the decoder back
            self._closing = True
            self._work.put_nowait(None)


# ---------------------------------------------------------------- the provider


class PocketSphinxSpeechToText:
    """Offline English STT (see the module docstring)."""

    name = "pocketsphinx"

    def __init__(
        self,
        options: PocketSphinxOptions | None = None,
        *,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.options = options or PocketSphinxOptions()
        self._executor = executor or ThreadPoolExecutor(
            max_workers=min(self.options.max_streams, os.cpu_count() or 1),
            thread_name_prefix="pocketsphinx",
        )
        self._owns_executor = executor is None
        self._idle: list[Any] = []
        self._open = 0

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> PocketSphinxSpeechToText:
        del settings  # nothing configurable yet beyond the defaults
        return cls()

    @property
    def open_streams(self) -> int:
        return self._open

    async def warm_up(self) -> None:
        """Load a decoder now (at server start) so the first call does not wait for it."""
        if not self._idle and self.options.idle_decoders:
            loop = asyncio.get_running_loop()
            self._idle.append(await loop.run_in_executor(self._executor, self._new_decoder))

    async def open_stream(self, *, language: str) -> PocketSphinxStream:
        check_language(language)
        if self._open >= self.options.max_streams:
            raise PocketSphinxError(
                f"{self._open} offline recognitions running, the most allowed "
                f"(max_streams={self.options.max_streams})"
            )
        self._open += 1
        try:
            if self._idle:
                decoder = self._idle.pop()
            else:
                loop = asyncio.get_running_loop()
                decoder = await loop.run_in_executor(self._executor, self._new_decoder)
            return PocketSphinxStream(self, decoder, self.options, self._executor)
        except BaseException:
            self._open -= 1
            raise

    def close(self) -> None:
        """Free idle decoders and the worker threads this provider created."""
        self._idle.clear()
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _release(self, decoder: Any, *, reusable: bool) -> None:
        self._open -= 1
        if reusable and len(self._idle) < self.options.idle_decoders:
            self._idle.append(decoder)

    def _new_decoder(self) -> Any:
        arguments: dict[str, Any] = {"samprate": MODEL_RATE, "loglevel": "FATAL"}
        if self.options.hmm is not None:
            arguments["hmm"] = str(self.options.hmm)
        if self.options.lm is not None:
            arguments["lm"] = str(self.options.lm)
        if self.options.dictionary is not None:
            arguments["dict"] = str(self.options.dictionary)
        if self.options.cmn_init is not None:
            arguments["cmninit"] = self.options.cmn_init
        if not self.options.second_pass:
            arguments["fwdflat"] = False
        try:
            return Decoder(**arguments)
        except (RuntimeError, ValueError) as exc:
            raise PocketSphinxError(f"cannot load the PocketSphinx model: {exc}") from exc
