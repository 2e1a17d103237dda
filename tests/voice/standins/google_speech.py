"""A local stand-in for Google Cloud Speech-to-Text v1 `StreamingRecognize`.

It speaks the real gRPC method (`/google.cloud.speech.v1.Speech/StreamingRecognize`,
bidirectional streaming, the GAPIC proto-plus messages on the wire) on 127.0.0.1, so
the production client runs unchanged against it. The GAPIC package ships no servicer
stubs, hence a generic handler with the messages' own serialize/deserialize.

What it imitates, because the client must cope with it:
- the first request must carry `streaming_config` and no audio, later ones audio only
  (else INVALID_ARGUMENT), audio requests are limited to 25,600 bytes;
- a stream may carry only so much audio (`max_stream_ms`, Google: ~305 s), then it ends
  with OUT_OF_RANGE "Exceeded maximum allowed stream duration of 305 seconds.";
- interim results grow word by word while speech goes on, then one final with
  `result_end_time` measured from the start of *this* stream's audio;
- half-closing the request stream finalises the utterance in progress;
- responses can be delayed (`latency_s`) or held back (`hold()`/`release()`), and the
  next streams can be told to fail (`fail_next_stream`) with any status.

How it "recognises": speech segments are found in the μ-law audio by frame energy;
when one ends it emits a scripted transcript. With plain strings the script is read in
order; with `Utterance(text, duration_ms=...)` each segment gets the text whose
duration is nearest to its own, which makes recognition depend on the audio alone, so
audio replayed into a new stream after a restart is recognised again as the same words.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio
from google.cloud import speech_v1

from tests.voice.standins.grpc_server import GrpcStandIn
from voice_gateway.providers.stt_fake import (
    EnergySegmenter,
    SegmenterConfig,
    SpeechEnded,
    SpeechStarted,
)

SERVICE = "google.cloud.speech.v1.Speech"
METHOD = "StreamingRecognize"
MAX_AUDIO_REQUEST_BYTES = 25_600
GOOGLE_MAX_STREAM_MS = 305_000
_FRAME_BYTES = 160  # 20 ms of μ-law at 8 kHz
_BYTES_PER_MS = 8


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    #: Recognise this text for a speech segment about this long (marker mode).
    duration_ms: int | None = None
    confidence: float = 0.92


@dataclass(frozen=True, slots=True)
class FailurePlan:
    #: The status to end the stream with; None: stop reading audio and answer nothing.
    code: grpc.StatusCode | None
    details: str
    #: Audio (ms) the stream receives before it fails.
    after_ms: int = 0


@dataclass
class StreamLog:
    """What one StreamingRecognize call saw and did, for assertions."""

    config: speech_v1.StreamingRecognitionConfig | None = None
    request_sizes: list[int] = field(default_factory=list)
    audio_bytes: int = 0
    #: Finals the stand-in recognised, delivered or not (a cancelled stream drops some).
    recognised: list[str] = field(default_factory=list)
    #: Results actually sent to the client.
    interims: list[str] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    #: "open", "half-closed", "cancelled" or "error: CODE".
    outcome: str = "open"

    @property
    def audio_ms(self) -> int:
        return self.audio_bytes // _BYTES_PER_MS


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


_END = object()


class GoogleSpeechStandIn(GrpcStandIn):
    """See the module docstring. Use as `async with GoogleSpeechStandIn(...) as s:`."""

    def __init__(
        self,
        script: Sequence[str | Utterance] = (),
        *,
        latency_s: float = 0.0,
        interim_every_ms: int = 200,
        max_stream_ms: int = GOOGLE_MAX_STREAM_MS,
        segmenter: SegmenterConfig | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.script = [u if isinstance(u, Utterance) else Utterance(u) for u in script]
        self._markers = bool(self.script) and all(u.duration_ms is not None for u in self.script)
        self._next = 0
        self.latency_s = latency_s
        self.interim_every_ms = interim_every_ms
        self.max_stream_ms = max_stream_ms
        self.segmenter = segmenter or SegmenterConfig()
        super().__init__(host=host)
        self.streams: list[StreamLog] = []
        self._failures: list[FailurePlan] = []

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> str:
        handler = grpc.stream_stream_rpc_method_handler(
            self._streaming_recognize,
            request_deserializer=speech_v1.StreamingRecognizeRequest.deserialize,
            response_serializer=speech_v1.StreamingRecognizeResponse.serialize,
        )
        # Fixed HTTP/2 windows (no BDP growth), so a stalled stream pushes back on the
        # client after ~64 KB instead of after megabytes.
        return await self._serve(SERVICE, METHOD, handler, [("grpc.http2.bdp_probe", 0)])

    # ---------------------------------------------------------------- test controls

    def fail_next_stream(
        self, code: grpc.StatusCode, details: str = "stand-in failure", *, after_ms: int = 0
    ) -> None:
        """The next stream opened (one per call; queue several for several streams) fails."""
        self._failures.append(FailurePlan(code, details, after_ms))

    def stall_next_stream(self, *, after_ms: int = 0) -> None:
        """The next stream stops reading audio (a hung backend): gRPC flow control then
        stops the client's writes, and nothing more is answered."""
        self._failures.append(FailurePlan(None, "stalled", after_ms))

    @property
    def finals(self) -> list[str]:
        """Every final sent to a client, in stream order."""
        return [text for log in self.streams for text in log.finals]

    # ---------------------------------------------------------------- the RPC

    async def _streaming_recognize(
        self, requests: AsyncIterator[speech_v1.StreamingRecognizeRequest], context: Any
    ) -> AsyncIterator[speech_v1.StreamingRecognizeResponse]:
        log = StreamLog()
        self.streams.append(log)
        failure = self._failures.pop(0) if self._failures else None
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue[tuple[float, object]] = asyncio.Queue()
        reader = asyncio.create_task(self._read(requests, log, failure, outbox))
        try:
            while True:
                due, item = await outbox.get()
                if item is _END:
                    log.outcome = "half-closed"
                    return
                if isinstance(item, _Abort):
                    log.outcome = f"error: {item.code.name}"
                    context.set_code(item.code)
                    context.set_details(item.details)
                    return
                await self._gate.wait()
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                assert isinstance(item, speech_v1.StreamingRecognizeResponse)
                yield item
                for result in item.results:
                    sent = log.finals if result.is_final else log.interims
                    sent.append(result.alternatives[0].transcript)
        except asyncio.CancelledError:
            if log.outcome == "open":
                log.outcome = "cancelled"
            raise
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(
        self,
        requests: AsyncIterator[speech_v1.StreamingRecognizeRequest],
        log: StreamLog,
        failure: FailurePlan | None,
        outbox: asyncio.Queue[tuple[float, object]],
    ) -> None:
        loop = asyncio.get_running_loop()
        recogniser = _Recogniser(self, log)

        def emit(response: speech_v1.StreamingRecognizeResponse) -> None:
            outbox.put_nowait((loop.time() + self.latency_s, response))

        try:
            first = True
            async for request in requests:
                log.request_sizes.append(len(request.audio_content))
                kind = speech_v1.StreamingRecognizeRequest.pb(request).WhichOneof(
                    "streaming_request"
                )
                if first:
                    first = False
                    log.config = _check_config(request, kind)
                    if failure is not None and failure.after_ms <= 0:
                        await _fail(failure)
                    continue
                if kind != "audio_content":
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "Malordered Data Received. "
                        "Send exactly one config, followed by audio data.",
                    )
                audio = request.audio_content
                if len(audio) > MAX_AUDIO_REQUEST_BYTES:
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Request audio can be a maximum of {MAX_AUDIO_REQUEST_BYTES} bytes.",
                    )
                log.audio_bytes += len(audio)
                for response in recogniser.feed(audio):
                    emit(response)
                if log.audio_ms > self.max_stream_ms:
                    raise _Abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        "Exceeded maximum allowed stream duration of "
                        f"{self.max_stream_ms // 1000} seconds.",
                    )
                if failure is not None and log.audio_ms >= failure.after_ms:
                    await _fail(failure)
            if first:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "No config was sent.")
            for response in recogniser.finish():
                emit(response)
            outbox.put_nowait((loop.time() + self.latency_s, _END))
        except _Abort as abort:
            outbox.put_nowait((loop.time(), abort))

    # ---------------------------------------------------------------- the "model"

    def _choose(self, duration_ms: int) -> Utterance | None:
        if not self.script:
            return None
        if not self._markers:
            chosen = self.script[self._next % len(self.script)]
            self._next += 1
            return chosen
        best = min(self.script, key=lambda u: abs((u.duration_ms or 0) - duration_ms))
        tolerance = max(120, (best.duration_ms or 0) // 4)
        return best if abs((best.duration_ms or 0) - duration_ms) <= tolerance else None

    def _preview(self, spoken_ms: int) -> Utterance | None:
        """What the interim results show while a segment is still going."""
        if not self.script:
            return None
        if not self._markers:
            return self.script[self._next % len(self.script)]
        longer = [u for u in self.script if (u.duration_ms or 0) >= spoken_ms]
        return min(longer, key=lambda u: u.duration_ms or 0) if longer else None


async def _fail(plan: FailurePlan) -> None:
    if plan.code is None:
        await asyncio.Event().wait()  # until the call is cancelled
        raise AssertionError("unreachable")
    raise _Abort(plan.code, plan.details)


def _check_config(
    request: speech_v1.StreamingRecognizeRequest, kind: str | None
) -> speech_v1.StreamingRecognitionConfig:
    if kind != "streaming_config":
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "Malordered Data Received. Expected audio but none was set. "
            "Send exactly one config, followed by audio data.",
        )
    config = request.streaming_config
    recognition = config.config
    if not recognition.language_code:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid recognition 'config': no language.")
    if recognition.encoding != speech_v1.RecognitionConfig.AudioEncoding.MULAW:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "stand-in understands MULAW audio only")
    if recognition.sample_rate_hertz != 8000:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "stand-in understands 8000 Hz audio only")
    return config


class _Recogniser:
    """One stream's "recognition": energy segments in, scripted results out."""

    def __init__(self, owner: GoogleSpeechStandIn, log: StreamLog) -> None:
        self._owner = owner
        self._log = log
        self._segmenter = EnergySegmenter(owner.segmenter)
        self._position_ms = 0
        self._carry = b""
        self._last_interim_ms = 0
        self._preview_text = ""

    def feed(self, audio: bytes) -> list[speech_v1.StreamingRecognizeResponse]:
        data = self._carry + audio
        whole = len(data) - len(data) % _FRAME_BYTES
        self._carry = data[whole:]
        out: list[speech_v1.StreamingRecognizeResponse] = []
        for start in range(0, whole, _FRAME_BYTES):
            frame = data[start : start + _FRAME_BYTES]
            event = self._segmenter.push_mulaw(frame, self._position_ms)
            self._position_ms += _FRAME_BYTES // _BYTES_PER_MS
            if isinstance(event, SpeechEnded):
                out.extend(self._final(event))
            elif isinstance(event, SpeechStarted):
                self._last_interim_ms = event.start_ms
                self._preview_text = ""
            elif self._segmenter.in_speech and self._wants_interims():
                out.extend(self._interim())
        return out

    def _wants_interims(self) -> bool:
        return self._log.config is not None and bool(self._log.config.interim_results)

    def finish(self) -> list[speech_v1.StreamingRecognizeResponse]:
        ended = self._segmenter.flush()
        return self._final(ended) if ended is not None else []

    def _interim(self) -> list[speech_v1.StreamingRecognizeResponse]:
        if self._position_ms - self._last_interim_ms < self._owner.interim_every_ms:
            return []
        self._last_interim_ms = self._position_ms
        spoken = self._position_ms - self._segmenter.speech_start_ms
        preview = self._owner._preview(spoken)
        if preview is None:
            return []
        words = preview.text.split()
        count = max(1, min(len(words), spoken // self._owner.interim_every_ms))
        text = " ".join(words[:count])
        if text == self._preview_text:
            return []
        self._preview_text = text
        result = speech_v1.StreamingRecognitionResult(
            alternatives=[speech_v1.SpeechRecognitionAlternative(transcript=text)],
            is_final=False,
            stability=0.8,
            result_end_time=timedelta(milliseconds=self._position_ms),
        )
        return [speech_v1.StreamingRecognizeResponse(results=[result])]

    def _final(self, ended: SpeechEnded) -> list[speech_v1.StreamingRecognizeResponse]:
        chosen = self._owner._choose(ended.duration_ms)
        if chosen is None:
            return []
        self._log.recognised.append(chosen.text)
        result = speech_v1.StreamingRecognitionResult(
            alternatives=[
                speech_v1.SpeechRecognitionAlternative(
                    transcript=chosen.text, confidence=chosen.confidence
                )
            ],
            is_final=True,
            result_end_time=timedelta(milliseconds=ended.end_ms),
        )
        return [speech_v1.StreamingRecognizeResponse(results=[result])]
