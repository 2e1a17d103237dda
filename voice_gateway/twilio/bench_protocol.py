"""Figures for the Twilio edge's per-message work: microseconds, printed, never asserted.

Every call sends 50 media messages a second each way, so at 200 calls one core parses
10,000 and serializes 10,000 a second. `bench_protocol` times the steps on that path
(parse, order check, serialize) next to the stdlib `json` + `base64` baseline, and the
per-call steps (token issue/verify, admission). Wire it as `voiceagent bench twilio`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

from voice_gateway.admission import Admission
from voice_gateway.twilio import protocol
from voice_gateway.twilio.tokens import CallTokens

_SID = "MZ" + "18ad3ab5" * 4
_CALL = "CA" + "9b1d4e7f" * 4
_ACCOUNT = "AC" + "3f2a9c1e" * 4


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    """Best of three runs of `n` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def _stdlib_parse(text: str) -> bytes:
    obj = json.loads(text)
    return base64.b64decode(obj["media"]["payload"], validate=True)


def bench_protocol(n: int = 100_000, *, out: Callable[[str], object] = print) -> dict[str, float]:
    """Time each step `n` times and print one line per figure; returns the figures."""
    frame = bytes((i * 37) % 256 for i in range(160))  # 20 ms of varied μ-law bytes
    inbound = protocol.serialize(
        protocol.Media(
            sequence_number=1234, stream_sid=_SID, chunk=1233, timestamp_ms=24640, payload=frame
        )
    )
    outbound = protocol.OutboundMedia(_SID, frame)
    state = protocol.StreamState()
    state.receive(protocol.Connected())
    state.receive(
        protocol.Start(sequence_number=1, stream_sid=_SID, account_sid=_ACCOUNT, call_sid=_CALL)
    )
    media = protocol.parse_inbound(inbound)
    tokens = CallTokens(secret=b"k" * 32, ttl_s=300)
    token = tokens.issue(4182)
    gate = Admission(10_000, hold_s=30)
    counter = iter(range(10**9))

    def admit_and_release() -> None:
        slot = gate.try_acquire(f"CA{next(counter)}")
        if slot is not None:
            gate.release(slot)

    figures = {
        "parse_inbound(media 160 B)": _per_call_us(lambda: protocol.parse_inbound(inbound), n),
        "stdlib json+base64 baseline": _per_call_us(lambda: _stdlib_parse(inbound), n),
        "StreamState.receive(media)": _per_call_us(lambda: state.receive(media), n),
        "serialize(OutboundMedia 160 B)": _per_call_us(lambda: protocol.serialize(outbound), n),
        "tokens.issue": _per_call_us(lambda: tokens.issue(4182), n // 10),
        "tokens.verify": _per_call_us(lambda: tokens.verify(token, call_id=4182), n // 10),
        "admission acquire+release": _per_call_us(admit_and_release, n // 10),
    }
    width = max(len(name) for name in figures)
    out(f"Twilio edge, per operation (best of 3 x {n:,}):")
    for name, micros in figures.items():
        out(f"  {name:<{width}}  {micros:7.2f} µs")
    return figures


if __name__ == "__main__":
    bench_protocol()
