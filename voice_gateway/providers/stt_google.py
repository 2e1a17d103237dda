"""Google Cloud Speech-to-Text v1 streaming recognition for one call at a time.

Twilio's μ-law goes to Google as is (MULAW 8 kHz, the telephony model), batched into
~100 ms requests: small enough for prompt results, far below the 25 KB request limit,
and five times fewer messages than one per 20 ms frame.

A Google stream lives about five minutes (OUT_OF_RANGE after 305 s), calls last longer,
so the stream restarts itself, the way Google's "infinite streaming" sample does:
- from `restart_after_s` (240 s) on, at the first moment no utterance is in progress
  (no interim since the last final), or unconditionally at `restart_deadline_s`;
- the audio sent since the last final result is kept (bounded) and replayed at the
  start of the new stream, so no word is lost;
- the old stream is dropped at once and anything it still says is ignored. A final
  that was on its way from the old stream is therefore not delivered twice: its audio
  was replayed, and the new stream recognises it again;
- result times restart at 0 on every stream, so they are mapped back to the call
  clock through the chunks sent (which also absorbs gaps in Twilio's timestamps).

Failures: OUT_OF_RANGE restarts (expected). UNAVAILABLE, DEADLINE_EXCEEDED and
INTERNAL get one reconnect with replay (INTERNAL because grpc-python's asyncio client
reports a server's status as INTERNAL "Internal error from Core" when a write races
the end of the stream, grpc/grpc#36066); the counter resets once the new stream
answers. Anything else, or a second failure in a row, ends the stream with
`GoogleSttError`, which `results()` raises and `send()` re-raises.

The batching, replay and restart decisions are small pure classes below, tested
without a network; `GoogleSttStream` only wires them to gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.api_core import exceptions as google_exceptions
from google.api_core.client_options import ClientOptions
from google.cloud import speech_v1
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcAsyncIOTransport

from voice_gateway.providers.base import AudioFrame, ProviderError, Transcript

if TYPE_CHECKING:
    from voice_gateway.config import GatewaySettings

logger = logging.getLogger(__name__)

PROVIDER = "google-stt"
BYTES_PER_MS = 8  # μ-law, 8 kHz, mono
#: Google accepts 25 KB of audio per request; replayed audio goes in pieces this big.
MAX_REQUEST_BYTES = 24_000
#: Google ends a stream after this long; restarts must happen before it.
GOOGLE_STREAM_LIMIT_S = 305.0
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


class GoogleSttError(ProviderError):
    """Google STT failed for this stream; `code` is the gRPC status name when there is one."""

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(PROVIDER, reason)
        self.code = code


# ---------------------------------------------------------------- options


def _default_languages() -> dict[str, str]:
    return {"es": "es-US", "en": "en-US"}


@dataclass(frozen=True)
class GoogleSttOptions:
    model: str = "telephony"
    #: Call language or broker locale → Google language code ("es-CL" → "es-US" ...).
    languages: Mapping[str, str] = field(default_factory=_default_languages)
    use_enhanced: bool = False
    automatic_punctuation: bool = True
    interim_results: bool = True
    #: Audio per request.
    batch_ms: int = 100
    #: Restart a stream this old at the first moment no utterance is in progress...
    restart_after_s: float = 240.0
    #: ...and this old in any case (replaying the unfinished utterance).
    restart_deadline_s: float = 285.0
    #: Most audio kept for replay (the unfinalised tail of the call).
    max_replay_ms: int = 20_000
    #: Audio waiting for the network beyond this means the stream is stuck.
    max_backlog_ms: int = 5_000
    #: Reconnects in a row after transient errors before giving up.
    reconnects: int = 1
    #: How long `close()` waits for the last results after half-closing.
    close_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must not be empty")
        if not 20 <= self.batch_ms <= MAX_REQUEST_BYTES // BYTES_PER_MS:
            raise ValueError(f"batch_ms must be within 20..{MAX_REQUEST_BYTES // BYTES_PER_MS}")
        if not 0 < self.restart_after_s <= self.restart_deadline_s < GOOGLE_STREAM_LIMIT_S:
            raise ValueError("need 0 < restart_after_s <= restart_deadline_s < 305 s")
        if self.max_replay_ms < self.batch_ms or self.max_backlog_ms < self.batch_ms:
            raise ValueError("max_replay_ms and max_backlog_ms must hold at least one batch")
        if self.reconnects < 0 or self.close_timeout_s <= 0:
            raise ValueError("reconnects must be >= 0 and close_timeout_s > 0")

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> GoogleSttOptions:
        restart = float(settings.google_stt_restart_s)
        return cls(
            model=settings.google_stt_model,
            languages=dict(settings.google_stt_languages),
            restart_after_s=restart,
            restart_deadline_s=max(restart, min(restart + 45.0, GOOGLE_STREAM_LIMIT_S - 15.0)),
        )


def resolve_language(language: str, languages: Mapping[str, str]) -> str:
    """The Google language code for a call language ("es") or broker locale ("es-CL").

    Exact entry first, then the base language's entry; a full locale with no entry
    goes to Google as is (Google knows more locales than any mapping lists).
    """
    wanted = language.strip().replace("_", "-").lower()
    folded = {key.strip().replace("_", "-").lower(): value for key, value in languages.items()}
    if wanted in folded:
        return folded[wanted]
    base, _, region = wanted.partition("-")
    if base.isalpha() and 2 <= len(base) <= 3 and region.isalnum() and 2 <= len(region) <= 3:
        return f"{base}-{region.upper()}"
    raise GoogleSttError(
        f"no Google language code for {language!r}; add it to GOOGLE_STT_LANGUAGES"
    )


def streaming_config(
    options: GoogleSttOptions, language_code: str
) -> speech_v1.StreamingRecognitionConfig:
    return speech_v1.StreamingRecognitionConfig(
        config=speech_v1.RecognitionConfig(
            encoding=speech_v1.RecognitionConfig.AudioEncoding.MULAW,
            sample_rate_hertz=8000,
            audio_channel_count=1,
            language_code=language_code,
            model=options.model,
            use_enhanced=options.use_enhanced,
            enable_automatic_punctuation=options.automatic_punctuation,
            max_alternatives=1,
        ),
        interim_results=options.interim_results,
    )


# ---------------------------------------------------------------- pure cores


@dataclass(frozen=True, slots=True)
class Batch:
    data: bytes
    #: Call-clock time of the first byte.
    call_ms: int


class FrameBatcher:
    """20 ms frames in, ~`batch_ms` requests out; a gap in timestamps closes a batch early
    so that each batch is contiguous on the call clock."""

    __slots__ = ("_batch_bytes", "_buffer", "_next_ms", "_start_ms")

    def __init__(self, batch_ms: int) -> None:
        self._batch_bytes = batch_ms * BYTES_PER_MS
        self._buffer = bytearray()
        self._start_ms = 0
        self._next_ms = 0

    def push(self, mulaw: bytes, timestamp_ms: int) -> Batch | None:
        """Add a frame; returns the batch it completed, if any (a gap completes the old one)."""
        done: Batch | None = None
        if self._buffer and timestamp_ms != self._next_ms:
            done = self.flush()
        if not self._buffer:
            self._start_ms = timestamp_ms
        self._buffer += mulaw
        self._next_ms = timestamp_ms + len(mulaw) // BYTES_PER_MS
        if done is None and len(self._buffer) >= self._batch_bytes:
            done = self.flush()
        return done

    def flush(self) -> Batch | None:
        if not self._buffer:
            return None
        batch = Batch(bytes(self._buffer), self._start_ms)
        self._buffer.clear()
        return batch


@dataclass(slots=True)
class _Chunk:
    stream_ms: int
    call_ms: int
    data: bytes

    @property
    def end_stream_ms(self) -> int:
        return self.stream_ms + len(self.data) // BYTES_PER_MS


class ReplayBuffer:
    """The audio the current stream has heard that no final result covers yet.

    It answers two questions: where on the call clock a stream time falls (results
    count from the start of their stream) and what to replay into the next stream.
    """

    __slots__ = (
        "_anchor_call_ms",
        "_anchor_stream_ms",
        "_chunks",
        "_held_ms",
        "_max_ms",
        "stream_ms",
    )

    def __init__(self, max_ms: int) -> None:
        self._max_ms = max_ms
        self._chunks: deque[_Chunk] = deque()
        self._held_ms = 0
        #: Audio sent on the current stream so far (replay included).
        self.stream_ms = 0
        # Where the audio no longer held ended: maps times before the first held chunk.
        self._anchor_stream_ms = 0
        self._anchor_call_ms = 0

    @property
    def held_ms(self) -> int:
        return self._held_ms

    def append(self, data: bytes, call_ms: int) -> None:
        if not self._chunks and self.stream_ms == 0 and self._anchor_call_ms == 0:
            self._anchor_call_ms = call_ms
        self._chunks.append(_Chunk(self.stream_ms, call_ms, data))
        duration = len(data) // BYTES_PER_MS
        self.stream_ms += duration
        self._held_ms += duration
        while self._held_ms > self._max_ms and len(self._chunks) > 1:
            self._drop_first()

    def finalized(self, stream_ms: int) -> None:
        """A final result covers the stream's audio up to `stream_ms`: stop holding it."""
        while self._chunks and self._chunks[0].end_stream_ms <= stream_ms:
            self._drop_first()
        if self._chunks and self._chunks[0].stream_ms < stream_ms:
            head = self._chunks[0]
            cut = stream_ms - head.stream_ms
            head.data = head.data[cut * BYTES_PER_MS :]
            head.stream_ms += cut
            head.call_ms += cut
            self._held_ms -= cut
            self._anchor_stream_ms, self._anchor_call_ms = head.stream_ms, head.call_ms

    def to_call_ms(self, stream_ms: int) -> int:
        """Call-clock time of a point in the current stream's audio."""
        for chunk in reversed(self._chunks):
            if chunk.stream_ms <= stream_ms:
                return chunk.call_ms + (stream_ms - chunk.stream_ms)
        return self._anchor_call_ms + (stream_ms - self._anchor_stream_ms)

    def restart(self) -> list[bytes]:
        """Begin a new stream: the held audio re-based at stream time 0, in request-sized pieces."""
        pieces: list[bytes] = []
        current = bytearray()
        position = 0
        for chunk in self._chunks:
            chunk.stream_ms = position
            position += len(chunk.data) // BYTES_PER_MS
            if current and len(current) + len(chunk.data) > MAX_REQUEST_BYTES:
                pieces.append(bytes(current))
                current.clear()
            current += chunk.data
        if current:
            pieces.append(bytes(current))
        # Nothing held: the new stream starts where the old one's audio ended.
        self._anchor_call_ms = (
            self.to_call_ms(self.stream_ms) if not self._chunks else (self._chunks[0].call_ms)
        )
        self._anchor_stream_ms = 0
        self.stream_ms = position
        return pieces

    def _drop_first(self) -> None:
        dropped = self._chunks.popleft()
        self._held_ms -= len(dropped.data) // BYTES_PER_MS
        self._anchor_stream_ms = dropped.end_stream_ms
        self._anchor_call_ms = dropped.call_ms + len(dropped.data) // BYTES_PER_MS


class Next(StrEnum):
    finish = "finish"
    restart = "restart"
    reconnect = "reconnect"
    fail = "fail"


_TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"})


def after_stream_end(
    code: str | None, *, closing: bool, answered: bool, failures: int, reconnects: int
) -> Next:
    """What to do when a stream ends with status `code` (None: ended cleanly).

    `answered`: the stream produced at least one response (it was working).
    `failures`: reconnects already made in a row without an answer since.
    """
    if closing:
        return Next.finish
    if code is None or code == "OUT_OF_RANGE":
        # Google's duration limit or its own end of stream: expected, unless nothing worked.
        if answered or failures < reconnects:
            return Next.restart
        return Next.fail
    if code in _TRANSIENT and failures < reconnects:
        return Next.reconnect
    return Next.fail


def restart_due(
    age_s: float, *, utterance_open: bool, restart_after_s: float, restart_deadline_s: float
) -> bool:
    """Restart between utterances after `restart_after_s`, or at the deadline regardless."""
    if age_s >= restart_deadline_s:
        return True
    return age_s >= restart_after_s and not utterance_open


# ---------------------------------------------------------------- the stream


@dataclass(eq=False)
class _Leg:
    """One gRPC StreamingRecognize call; a recognition stream is a chain of them."""

    number: int
    opened_at: float
    requests: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    call: Any = None
    task: asyncio.Task[None] | None = None
    answered: bool = False
    abandoned: bool = False


class _Abandoned(Exception):
    """Raised into gRPC's request consumer: it cancels the call (a clean end would
    half-close it and make Google finish recognising audio nobody will read)."""


class GoogleSttStream:
    """One call's recognition; see the module docstring."""

    def __init__(
        self,
        client: speech_v1.SpeechAsyncClient,
        config: speech_v1.StreamingRecognitionConfig,
        options: GoogleSttOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._config_request = speech_v1.StreamingRecognizeRequest(streaming_config=config)
        self._options = options
        self._clock = clock
        self._batcher = FrameBatcher(options.batch_ms)
        self._replay = ReplayBuffer(options.max_replay_ms)
        self._results: asyncio.Queue[Transcript | GoogleSttError | None] = asyncio.Queue()
        self._max_backlog = max(1, options.max_backlog_ms // options.batch_ms)
        self._legs = 0
        self._failures = 0
        self._utterance_open = False
        self._closing = False
        self._done = False
        self._error: GoogleSttError | None = None
        self._leg = self._start_leg([])

    @property
    def restarts(self) -> int:
        """Streams opened after the first (restarts and reconnects)."""
        return self._legs - 1

    async def send(self, frame: AudioFrame) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise GoogleSttError("send after close")
        batch = self._batcher.push(frame.mulaw, frame.timestamp_ms)
        if batch is not None:
            self._send_batch(batch)
        age = self._clock() - self._leg.opened_at
        if restart_due(
            age,
            utterance_open=self._utterance_open,
            restart_after_s=self._options.restart_after_s,
            restart_deadline_s=self._options.restart_deadline_s,
        ):
            logger.info("google stt: restarting stream after %.0f s", age)
            self._switch()

    async def results(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._results.get()
            if item is None:
                return
            if isinstance(item, GoogleSttError):
                raise item
            yield item

    async def close(self) -> None:
        """Half-close: send what is batched, let Google finish the last utterance, drain."""
        if self._closing:
            return
        self._closing = True
        if self._done:
            return
        batch = self._batcher.flush()
        if batch is not None:
            self._send_batch(batch, check_backlog=False)
        leg = self._leg
        leg.requests.put_nowait(None)
        if leg.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(leg.task), self._options.close_timeout_s)
            except TimeoutError:
                logger.warning(
                    "google stt: no end of stream %.1f s after close", self._options.close_timeout_s
                )
                self._abandon(leg)
        self._finish()

    # ---------------------------------------------------------------- internals

    def _send_batch(self, batch: Batch, *, check_backlog: bool = True) -> None:
        self._replay.append(batch.data, batch.call_ms)
        self._leg.requests.put_nowait(batch.data)
        if check_backlog and self._leg.requests.qsize() > self._max_backlog:
            error = GoogleSttError("stream stalled: Google is not taking the audio")
            self._fail(error)
            raise error

    def _start_leg(self, replay: list[bytes]) -> _Leg:
        self._legs += 1
        leg = _Leg(number=self._legs, opened_at=self._clock())
        leg.task = asyncio.get_running_loop().create_task(
            self._run_leg(leg, replay), name=f"google-stt-leg-{leg.number}"
        )
        return leg

    def _switch(self) -> None:
        """Replace the current leg by a new one that first hears the unfinalised audio."""
        old = self._leg
        self._utterance_open = False
        self._leg = self._start_leg(self._replay.restart())
        self._abandon(old)

    def _abandon(self, leg: _Leg) -> None:
        leg.abandoned = True
        leg.requests.put_nowait(None)
        if leg.call is not None:
            leg.call.cancel()
        if leg.task is not None and leg.task is not asyncio.current_task():
            leg.task.cancel()

    async def _requests(
        self, leg: _Leg, replay: list[bytes]
    ) -> AsyncIterator[speech_v1.StreamingRecognizeRequest]:
        yield self._config_request
        for piece in replay:
            yield speech_v1.StreamingRecognizeRequest(audio_content=piece)
        while (data := await leg.requests.get()) is not None:
            yield speech_v1.StreamingRecognizeRequest(audio_content=data)
        if leg.abandoned:
            raise _Abandoned

    async def _run_leg(self, leg: _Leg, replay: list[bytes]) -> None:
        code: str | None = None
        details = ""
        try:
            call = await self._client.streaming_recognize(
                requests=self._requests(leg, replay),
                retry=None,
                timeout=GOOGLE_STREAM_LIMIT_S + 60.0,
            )
            leg.call = call
            async for response in call:
                if leg is not self._leg:
                    return
                self._on_response(leg, response)
        except google_exceptions.GoogleAPICallError as exc:
            status = exc.grpc_status_code
            code = status.name if status is not None else "UNKNOWN"
            details = exc.message
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code().name, exc.details() or ""
        except _ResponseError as exc:
            code, details = exc.code, exc.details
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a library surprise: fail this call, not the process
            logger.exception("google stt: unexpected error")
            code, details = "UNKNOWN", repr(exc)
        if leg is self._leg:
            self._on_leg_end(leg, code, details)

    def _on_response(self, leg: _Leg, response: speech_v1.StreamingRecognizeResponse) -> None:
        leg.answered = True
        self._failures = 0
        if response.error.code:
            # v1 may carry an error in the message instead of the call status.
            raise _ResponseError(_code_name(response.error.code), response.error.message)
        interim: list[str] = []
        interim_end: int | None = None
        for result in response.results:
            text = result.alternatives[0].transcript if result.alternatives else ""
            end_stream_ms = _ms(result.result_end_time)
            if result.is_final:
                end_ms = self._replay.to_call_ms(end_stream_ms)
                self._replay.finalized(end_stream_ms)
                self._utterance_open = False
                if text.strip():
                    confidence = result.alternatives[0].confidence or None
                    self._results.put_nowait(Transcript(text.strip(), True, confidence, end_ms))
            elif text:
                interim.append(text)
                interim_end = self._replay.to_call_ms(end_stream_ms)
        joined = "".join(interim).strip()
        if joined:
            self._utterance_open = True
            self._results.put_nowait(Transcript(joined, False, None, interim_end))

    def _on_leg_end(self, leg: _Leg, code: str | None, details: str) -> None:
        step = after_stream_end(
            code,
            closing=self._closing,
            answered=leg.answered,
            failures=self._failures,
            reconnects=self._options.reconnects,
        )
        if step is Next.finish:
            if code is not None:
                logger.warning("google stt: stream ended with %s while closing: %s", code, details)
            self._finish()
        elif step is Next.fail:
            reason = f"{code}: {details}" if code else "stream ended and could not be restarted"
            self._fail(GoogleSttError(reason, code=code))
        else:
            if step is Next.reconnect or not leg.answered:
                self._failures += 1
            logger.info("google stt: %s after %s %s", step.value, code or "end of stream", details)
            self._switch()

    def _fail(self, error: GoogleSttError) -> None:
        if self._error is None and not self._done:
            self._error = error
            self._abandon(self._leg)
            self._results.put_nowait(error)
            self._done = True

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._results.put_nowait(None)


def _ms(offset: Any) -> int:
    """A proto Duration (a timedelta through proto-plus) in whole milliseconds."""
    return int(offset.total_seconds() * 1000) if offset is not None else 0


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


class _ResponseError(Exception):
    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


# ---------------------------------------------------------------- the provider


class GoogleSpeechToText:
    """Google Cloud STT (v1 streaming). One client (one gRPC channel) for all calls."""

    name = "google"

    def __init__(
        self,
        options: GoogleSttOptions | None = None,
        *,
        client: speech_v1.SpeechAsyncClient | None = None,
        api_endpoint: str | None = None,
        insecure: bool = False,
        credentials_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Production: no arguments (GOOGLE_APPLICATION_CREDENTIALS or ambient credentials)
        or `credentials_file`. `api_endpoint` ("host:port") picks another endpoint (a
        regional one); with `insecure=True` it is reached over plain gRPC without
        credentials, which is only for local stand-ins. `client` is used as given."""
        if insecure and api_endpoint is None:
            raise ValueError("insecure needs an api_endpoint")
        self.options = options or GoogleSttOptions()
        self._client = client
        self._owns_client = client is None
        self._api_endpoint = api_endpoint
        self._insecure = insecure
        self._credentials_file = credentials_file
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> GoogleSpeechToText:
        endpoint = settings.google_stt_endpoint
        host = (endpoint or "").rsplit(":", 1)[0]
        return cls(
            GoogleSttOptions.from_settings(settings),
            api_endpoint=endpoint,
            insecure=endpoint is not None and host in _LOOPBACK,
            credentials_file=settings.google_application_credentials,
        )

    def _get_client(self) -> speech_v1.SpeechAsyncClient:
        if self._client is None:
            self._client = self._build_client()
        return self._client

    def _build_client(self) -> speech_v1.SpeechAsyncClient:
        if self._insecure:
            assert self._api_endpoint is not None
            channel = grpc.aio.insecure_channel(self._api_endpoint)
            return speech_v1.SpeechAsyncClient(
                transport=SpeechGrpcAsyncIOTransport(channel=channel)
            )
        client_options = (
            ClientOptions(api_endpoint=self._api_endpoint) if self._api_endpoint else None
        )
        try:
            if self._credentials_file is not None:
                from_file = speech_v1.SpeechAsyncClient.from_service_account_file
                client: speech_v1.SpeechAsyncClient = from_file(
                    str(self._credentials_file), client_options=client_options
                )
                return client
            return speech_v1.SpeechAsyncClient(client_options=client_options)
        except Exception as exc:  # google.auth raises several kinds for missing/bad credentials
            raise GoogleSttError(f"cannot create the Google STT client: {exc}") from exc

    async def open_stream(self, *, language: str) -> GoogleSttStream:
        language_code = resolve_language(language, self.options.languages)
        config = streaming_config(self.options, language_code)
        return GoogleSttStream(self._get_client(), config, self.options, clock=self._clock)

    async def aclose(self) -> None:
        """Close the gRPC channel this provider created (not one it was given)."""
        if self._client is not None and self._owns_client:
            with contextlib.suppress(Exception):
                await self._client.transport.close()  # type: ignore[no-untyped-call]
            self._client = None
