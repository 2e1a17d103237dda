"""Prometheus metrics of the gateway, and the `/metrics` route that exposes them.

The call session reports through a small typed facade (`call_started`, `observe_turn`,
`barge_in`, `error`...) and never touches prometheus_client itself, so metric names,
units and buckets live here, in one place. Units are Prometheus base units (seconds),
converted from the milliseconds the session measures.

Labels come only from small fixed sets. Free-form values (an end reason, a provider
name) go through `BoundedLabel`, which admits a few dozen distinct values and folds the
rest into "other": a bug that passes a call id as a reason costs one series, not one per
call. No call or lead identifiers ever become labels.

Each gateway process keeps its own registry and is scraped on its own (one process per
container); prometheus_client's multiprocess mode is not used.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import threading
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from crm.calls.metrics import STAGES, check_latency, response_latency
from voice_gateway.config import get_settings

log = logging.getLogger(__name__)

NAMESPACE = "voiceagent"
OTHER = "other"

#: End of caller turn → first agent audio: 100 ms (excellent) to 5 s (the call is lost).
TURN_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
#: Speech onset → `clear`; the target is under 200 ms.
BARGE_IN_BUCKETS = (0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 2.0)
#: One stage of a reply (STT final, first LLM token, first TTS byte, first audio sent).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
#: Whole calls: a wrong number to the longest qualification.
CALL_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)

#: Stage label → the gap of `crm.calls.metrics.STAGES` it measures, named after the mark
#: it ends at (so "llm_first_token" is STT final → first LLM token).
STAGE_LABELS: dict[str, str] = {end: name for name, (_start, end) in STAGES.items()}

_LABEL_VALUE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")


class ErrorKind(StrEnum):
    #: STT, TTS, LLM or telephony failed or timed out.
    provider = "provider"
    #: The peer broke the protocol: a malformed Twilio message, a bad signature.
    protocol = "protocol"
    #: Our own bug: anything unexpected.
    internal = "internal"


class Direction(StrEnum):
    inbound = "inbound"
    outbound = "outbound"


class BoundedLabel:
    """Admits at most `limit` distinct label values; later newcomers become "other".

    Values must look like identifiers (lower case, digits, `_.-`, up to 48 chars);
    anything else is "other" from the start.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, value: str) -> str:
        value = str(value)
        if value in self._seen:
            return value
        if not _LABEL_VALUE.match(value):
            self._warn_once(f"{value[:60]!r} is not an identifier")
            return OTHER
        with self._lock:
            if len(self._seen) >= self.limit:
                self._warn_once(f"more than {self.limit} distinct values (now {value!r})")
                return OTHER
            self._seen.add(value)
        return value

    def _warn_once(self, why: str) -> None:
        """One warning per label: a bug that repeats per call must not flood the log."""
        if not self._warned:
            self._warned = True
            log.warning("metrics: %s label: %s; counting such values as %r", self.name, why, OTHER)


class GatewayMetrics:
    """The gateway's metrics in their own registry (tests make as many as they like).

    Every method is cheap (a few µs) and never raises for a value the session measured;
    misuse (an unknown error kind, a negative latency) raises `ValueError`.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        process_collectors: bool = True,
        label_limit: int = 32,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self._active = 0
        self._active_lock = threading.Lock()
        self._reason = BoundedLabel("reason", label_limit)
        self._provider = BoundedLabel("provider", label_limit)
        self._kind = BoundedLabel("kind", label_limit)

        self.active_calls_gauge = Gauge(
            "active_calls", "Calls with a media stream open now.", namespace=NAMESPACE, registry=r
        )
        self.calls_started = Counter(
            "calls_started",
            "Calls whose media stream started.",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.calls_ended = Counter(
            "calls_ended",
            "Calls torn down, by end reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.call_duration = Histogram(
            "call_duration_seconds",
            "Length of finished calls.",
            namespace=NAMESPACE,
            registry=r,
            buckets=CALL_BUCKETS,
        )
        self.turn_response = Histogram(
            "turn_response_seconds",
            "End of the caller's turn to the first agent audio sent: what the caller waits.",
            namespace=NAMESPACE,
            registry=r,
            buckets=TURN_BUCKETS,
        )
        self.stage_latency = Histogram(
            "turn_stage_seconds",
            "One stage of a reply, named after the mark it ends at "
            "(stt_final: endpoint to STT final; llm_first_token: STT final to first token; "
            "tts_first_byte: first token to first TTS byte; first_audio_sent: to the socket).",
            ["stage"],
            namespace=NAMESPACE,
            registry=r,
            buckets=STAGE_BUCKETS,
        )
        self.barge_in_latency = Histogram(
            "barge_in_seconds",
            "Caller speech onset to `clear` sent while the agent was speaking.",
            namespace=NAMESPACE,
            registry=r,
            buckets=BARGE_IN_BUCKETS,
        )
        self.barge_ins = Counter(
            "barge_ins", "Agent speech interrupted by the caller.", namespace=NAMESPACE, registry=r
        )
        self.false_interruptions = Counter(
            "false_interruptions",
            "Interruptions that were a backchannel or noise; the reply resumed.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.errors = Counter(
            "errors",
            "Errors by kind: provider, protocol (the peer's fault), internal (ours), or a "
            "finer kind the session names.",
            ["kind"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.provider_errors = Counter(
            "provider_errors",
            "Provider failures and timeouts, by provider.",
            ["provider"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.admission_refusals = Counter(
            "admission_refusals",
            "Calls refused because the process was at its concurrent-call limit.",
            namespace=NAMESPACE,
            registry=r,
        )
        # Fixed label sets are exported from the start, at zero, so rates and alerts work
        # before the first event instead of seeing a missing series.
        for direction in Direction:
            self.calls_started.labels(direction=direction.value)
        for stage in STAGE_LABELS:
            self.stage_latency.labels(stage=stage)
        for kind in ErrorKind:
            self.errors.labels(kind=self._kind(kind.value))

    # ------------------------------------------------------------ calls

    @property
    def active_calls(self) -> int:
        return self._active

    def call_started(self, direction: Direction | str = Direction.inbound) -> None:
        direction = Direction(direction)
        with self._active_lock:
            self._active += 1
            self.active_calls_gauge.set(self._active)
        self.calls_started.labels(direction=direction.value).inc()

    def call_ended(self, reason: str, *, duration_s: float | None = None) -> None:
        """Once per call, from its one teardown path."""
        seconds = None if duration_s is None else _non_negative(duration_s, "duration_s")
        with self._active_lock:
            if self._active == 0:
                log.warning("metrics: call_ended(%r) with no call started", reason)
            else:
                self._active -= 1
            self.active_calls_gauge.set(self._active)
        self.calls_ended.labels(reason=self._reason(reason)).inc()
        if seconds is not None:
            self.call_duration.observe(seconds)

    def admission_refused(self) -> None:
        self.admission_refusals.inc()

    # ------------------------------------------------------------ turns

    def observe_turn(self, latency: Mapping[str, Any]) -> None:
        """An agent turn's latency marks (ms on the call clock, as stored on `CallTurn`).

        Stages whose two marks were both measured are observed; the response time when
        `endpoint` and `first_audio_sent` were. An interrupted turn that never reached
        the socket simply contributes fewer stages.
        """
        marks = check_latency(latency)
        response = response_latency(marks)
        if response is not None:
            self.turn_response.observe(response / 1000)
        for end, name in STAGE_LABELS.items():
            start = STAGES[name][0]
            a, b = marks.get(start), marks.get(end)
            if a is not None and b is not None and b >= a:
                self.stage_latency.labels(stage=end).observe((b - a) / 1000)

    def barge_in(self, latency_ms: float) -> None:
        """The caller interrupted the agent; `latency_ms` from speech onset to `clear`."""
        seconds = _non_negative(latency_ms, "latency_ms") / 1000
        self.barge_ins.inc()
        self.barge_in_latency.observe(seconds)

    def false_interruption(self) -> None:
        self.false_interruptions.inc()

    # ------------------------------------------------------------ errors

    def error(self, kind: ErrorKind | str, *, provider: str | None = None) -> None:
        """Count an error. `ErrorKind` names the three families; a finer identifier the
        session uses ("tts", "agent_timeout") is its own series, within the label limit."""
        self.errors.labels(kind=self._kind(str(kind))).inc()
        if provider is not None:
            self.provider_errors.labels(provider=self._provider(provider)).inc()

    # ------------------------------------------------------------ exposition

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for, and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _non_negative(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, not {value!r}")
    return value


@lru_cache
def get_metrics() -> GatewayMetrics:
    """The process's metrics, shared by every call session and the `/metrics` route."""
    return GatewayMetrics()


# ---------------------------------------------------------------- the route


def _check_scraper(authorization: Annotated[str | None, Header()] = None) -> None:
    """With METRICS_TOKEN set, only a scraper sending it as a bearer token gets in."""
    token = get_settings().metrics_token
    expected = token.get_secret_value().strip().encode() if token is not None else b""
    if not expected:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required for /metrics",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )


router = APIRouter()


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(_check_scraper)])
def metrics_endpoint(accept: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus scrape target (text format, or OpenMetrics when asked for)."""
    body, content_type = get_metrics().render(accept)
    return Response(content=body, headers={"Content-Type": content_type})
