"""The one clock of every simulated call in an event loop.

Twilio sends a caller's audio as a steady 20 ms beat. Two hundred calls each sleeping
20 ms in their own loop would be two hundred timers drifting apart and waking the loop
10,000 times a second; instead one ticker wakes every 20 ms and lets every call send
the frames that are due, advance its playback buffer and check its script's wait. Calls
register while their stream is open and must not block in `tick` (they skip a beat when
their socket is backed up rather than wait).

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
    """A fixed beat on `clock` (seconds), shared by the calls added to it.

    Use as `async with Ticker() as ticker:`; the beat runs while the block does.
    """

    def __init__(
        self,
        *,
        period_ms: float = FRAME_MS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if period_ms <= 0:
            raise ValueError("period_ms must be positive")
        self.period_ms = period_ms
        self._clock = clock
        self._origin = clock() * 1000.0
        self._calls: dict[Tickable, None] = {}
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
        """A stream start at or before `now_ms`, half a beat off the beat's grid.

        A frame k is due at start + k·period; with the start half a period off the grid
        each beat finds exactly one new frame due even when it fires a few ms early or
        late, so the caller's audio leaves at an even 20 ms pace.
        """
        period = self.period_ms
        beats = math.floor((now_ms - self._origin) / period + 0.5)
        return self._origin + beats * period - period / 2

    def add(self, call: Tickable) -> None:
        self._calls[call] = None

    def discard(self, call: Tickable) -> None:
        self._calls.pop(call, None)

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
        beat = math.floor((self.now_ms() - self._origin) / period) + 1
        clock = self._clock
        while True:
            target = self._origin + beat * period
            delay = target - self.now_ms()
            if delay > 0:
                await asyncio.sleep(delay / 1000.0)
            started = clock()
            now = started * 1000.0
            lag = now - target
            if lag > self.max_lag_ms:
                self.max_lag_ms = lag
            if lag > period:
                # Blocked for whole beats: resume on the grid; calls catch up by time.
                self.late_ticks += 1
                beat = math.floor((now - self._origin) / period)
            beat += 1
            self.ticks += 1
            for call in tuple(self._calls):
                try:
                    await call.tick(now)
                except Exception:  # one call's bug must not stop every other call's audio
                    log.exception("a simulated call failed in its tick; dropping it")
                    self.discard(call)
            self.busy_s += clock() - started
