"""The one clock of every simulated call in an event loop.

Twilio sends a caller's audio as a steady 20 ms beat. Two hundred calls each sleeping
20 ms in their own loop would be two hundred timers drifting apart and waking the loop
10,000 times a second; instead one ticker wakes every 20 ms and lets every call send
the frames that are due, advance its playback buffer and check its script's wait. Calls
register while their stream is open and must not block in `tick` (they skip a beat when
their socket is backed up rather than wait).

Real calls are not in step: each phone's 20 ms beat has its own phase, so a gateway
sees frames from many calls spread over every 20 ms, not all in the same millisecond.
With `phases` > 1 the ticker fires that many times per period and each firing beats the
calls of one phase; streams take the phases in turn (`align`). One phase (the default)
is the worst case: every call's frame in one burst.

It also watches itself: how late each beat fires and how long the calls take inside it.
A simulator that falls behind would blame the server for its own delays, so the load
report prints these figures next to the latencies.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from voice_gateway.providers.base import FRAME_MS

log = logging.getLogger(__name__)


class Tickable(Protocol):
    async def tick(self, now_ms: float) -> None:
        """Do what is due at `now_ms`; never raise, never wait for the network."""
        ...


class Ticker:
    """A fixed beat on `clock` (seconds), shared by the calls added to it, in `phases`
    groups spread evenly over the period.

    Use as `async with Ticker() as ticker:`; the beat runs while the block does.
    """

    def __init__(
        self,
        *,
        period_ms: float = FRAME_MS,
        phases: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if period_ms <= 0:
            raise ValueError("period_ms must be positive")
        if phases < 1:
            raise ValueError("phases must be at least 1")
        self.period_ms = period_ms
        self.phases = phases
        self._step = period_ms / phases
        self._clock = clock
        self._origin = clock() * 1000.0
        self._groups: list[dict[Tickable, None]] = [{} for _ in range(phases)]
        self._group_of: dict[Tickable, int] = {}
        self._next_phase = 0
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        #: Beats that fired more than a whole period late (the loop was blocked).
        self.late_ticks = 0
        self.max_lag_ms = 0.0
        #: Seconds spent inside `tick` of every call, all beats together.
        self.busy_s = 0.0

    def now_ms(self) -> float:
        return self._clock() * 1000.0

    def align(self, now_ms: float) -> float:
        """A stream start at or before `now_ms`, half a beat off its phase's grid (each
        stream takes the next phase).

        A frame k is due at start + k·period; with the start half a period off the grid
        each beat finds exactly one new frame due even when it fires a few ms early or
        late, so the caller's audio leaves at an even 20 ms pace.
        """
        phase, self._next_phase = self._next_phase, (self._next_phase + 1) % self.phases
        period = self.period_ms
        grid = self._origin + phase * self._step
        beats = math.floor((now_ms - grid) / period + 0.5)
        return grid + beats * period - period / 2

    def add(self, call: Tickable, *, start_ms: float | None = None) -> None:
        """Beat `call` from now on, in the phase of its `start_ms` (from `align`)."""
        group = 0
        if start_ms is not None:
            offset = (start_ms + self.period_ms / 2 - self._origin) % self.period_ms
            group = round(offset / self._step) % self.phases
        self.discard(call)
        self._groups[group][call] = None
        self._group_of[call] = group

    def discard(self, call: Tickable) -> None:
        group = self._group_of.pop(call, None)
        if group is not None:
            self._groups[group].pop(call, None)

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run(), name="simulator-ticker")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # The beat's own CancelledError is a result here; ours still propagates.
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        period = self.period_ms
        step = self._step
        beat = math.floor((self.now_ms() - self._origin) / step) + 1
        clock = self._clock
        while True:
            target = self._origin + beat * step
            delay = target - self.now_ms()
            if delay > 0:
                await asyncio.sleep(delay / 1000.0)
            started = clock()
            now = started * 1000.0
            lag = now - target
            if lag > self.max_lag_ms:
                self.max_lag_ms = lag
            group = self._groups[beat % self.phases]
            if lag > period:
                # Blocked for whole beats: resume on the grid; calls catch up by time.
                self.late_ticks += 1
                beat = math.floor((now - self._origin) / step)
            beat += 1
            self.ticks += 1
            for call in tuple(group):
                try:
                    await call.tick(now)
                except Exception:  # one call's bug must not stop every other call's audio
                    log.exception("a simulated call failed in its tick; dropping it")
                    self.discard(call)
            self.busy_s += clock() - started
