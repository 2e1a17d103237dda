"""Turn latency arithmetic, pure: what a reviewer reads to find where a reply was slow.

Every mark is milliseconds on the call's own clock. The stages of one reply are the gaps
between consecutive marks (endpoint → STT final → first LLM token → first TTS byte →
first audio sent); the response latency the caller felt is end of speech → first audio.
A gap is only reported when both of its marks were measured and are in order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The marks a turn's latency may carry, in the order they happen.
MARKS: tuple[str, ...] = (
    "speech_end",
    "endpoint",
    "stt_final",
    "llm_first_token",
    "tts_first_byte",
    "first_audio_sent",
)

#: Stage name → (from mark, to mark).
STAGES: dict[str, tuple[str, str]] = {
    "endpointing_ms": ("speech_end", "endpoint"),
    "stt_ms": ("endpoint", "stt_final"),
    "llm_ms": ("stt_final", "llm_first_token"),
    "tts_ms": ("llm_first_token", "tts_first_byte"),
    "send_ms": ("tts_first_byte", "first_audio_sent"),
}


class LatencyError(ValueError):
    """A latency mapping the gateway should not have produced."""


def check_latency(latency: Mapping[str, Any]) -> dict[str, int]:
    """`latency` with only known marks, each a non-negative whole number of ms."""
    unknown = sorted(set(latency) - set(MARKS))
    if unknown:
        raise LatencyError(f"unknown latency marks: {', '.join(unknown)}")
    clean: dict[str, int] = {}
    for mark, value in latency.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LatencyError(f"latency mark {mark} must be a whole number of ms >= 0")
        clean[mark] = value
    return clean


def _gap(latency: Mapping[str, Any], start: str, end: str) -> int | None:
    a, b = latency.get(start), latency.get(end)
    if isinstance(a, int) and isinstance(b, int) and b >= a:
        return b - a
    return None


def response_latency(latency: Mapping[str, Any] | None) -> int | None:
    """Caller stops speaking → first agent audio leaves: the delay the caller hears.

    Measured from the end of the caller's speech when the gateway recorded it (so the
    endpointing silence counts, as the caller feels it), else from the endpoint.
    """
    if not latency:
        return None
    start = "speech_end" if isinstance(latency.get("speech_end"), int) else "endpoint"
    return _gap(latency, start, "first_audio_sent")


def stage_breakdown(latency: Mapping[str, Any] | None) -> dict[str, int | None]:
    latency = latency or {}
    return {name: _gap(latency, a, b) for name, (a, b) in STAGES.items()}


def percentile(values: Sequence[int], pct: float) -> int | None:
    """Nearest-rank percentile: always a value that was measured, never an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class TurnFacts:
    """What the aggregates need to know about one turn."""

    role: str
    interrupted: bool
    latency: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class CallStats:
    turns: int
    caller_turns: int
    agent_turns: int
    barge_ins: int
    measured_responses: int
    response_latency_p50_ms: int | None
    response_latency_p95_ms: int | None
    response_latency_max_ms: int | None


def call_stats(turns: Iterable[TurnFacts]) -> CallStats:
    """Counts and response-latency figures for a whole call."""
    listed = list(turns)
    agent = [t for t in listed if t.role == "agent"]
    latencies = [v for t in agent if (v := response_latency(t.latency)) is not None]
    return CallStats(
        turns=len(listed),
        caller_turns=sum(1 for t in listed if t.role == "caller"),
        agent_turns=len(agent),
        barge_ins=sum(1 for t in agent if t.interrupted),
        measured_responses=len(latencies),
        response_latency_p50_ms=percentile(latencies, 50),
        response_latency_p95_ms=percentile(latencies, 95),
        response_latency_max_ms=max(latencies) if latencies else None,
    )
