"""Admission control: at most MAX_CONCURRENT_CALLS calls in this process, decided atomically.

A call is admitted twice over: the voice webhook *reserves* a slot before it answers
`<Connect><Stream>`, and the media stream *claims* it when its `start` arrives. Counting
reservations is what stops two webhooks racing for the last slot from both winning
(the admission race LiveKit's users hit): the count checked and the count taken are the
same number, under one lock. A reservation never claimed (the stream failed to open,
or went to another node behind the load balancer) expires after ADMISSION_HOLD_S, so
a lost stream costs a slot for seconds, not forever. Over the limit the webhook
answers with a spoken "all lines are busy" before any stream opens.

Nothing here waits or runs on a timer: expiry is checked against an injected clock on
every call (ask, don't block). The webhook runs in FastAPI's threadpool while sessions
run on the event loop, so state changes hold a `threading.Lock`; it is uncontended on
the loop and costs well under a microsecond.

Keys are Twilio CallSids: the webhook has one before any row exists, and `start`
carries it. Releasing is idempotent and only frees the grant it was given, so a late
release from an old session cannot free a newer session's slot for the same call.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from voice_gateway.config import get_settings


@dataclass(frozen=True, slots=True)
class Reservation:
    """A slot held at the webhook for `call_key`'s stream, until `expires_at` (clock s)."""

    call_key: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Slot:
    """A slot a live stream holds; give it back with `Admission.release` at teardown."""

    call_key: str
    #: Tells this grant apart from a later one for the same call.
    serial: int


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    limit: int
    active: int
    reserved: int
    #: Running totals since the process started.
    admitted: int
    refused: int
    expired: int

    @property
    def in_use(self) -> int:
        return self.active + self.reserved

    @property
    def available(self) -> int:
        return max(0, self.limit - self.in_use)


class Admission:
    """The per-process slot counter. Every method is atomic and returns at once."""

    def __init__(
        self, limit: int, *, hold_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1:
            raise ValueError("the call limit must be at least 1")
        if hold_s <= 0:
            raise ValueError("a reservation must be held a positive number of seconds")
        self.limit = limit
        self.hold_s = hold_s
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, Slot] = {}
        #: call key → expiry; insertion order is expiry order (one hold time for all).
        self._reserved: OrderedDict[str, float] = OrderedDict()
        self._serials = itertools.count(1)
        self._admitted = 0
        self._refused = 0
        self._expired = 0

    def _purge(self, now: float) -> None:
        reserved = self._reserved
        while reserved:
            key, expires_at = next(iter(reserved.items()))
            if expires_at > now:
                return
            del reserved[key]
            self._expired += 1

    def _full(self) -> bool:
        return len(self._active) + len(self._reserved) >= self.limit

    def reserve(self, call_key: str) -> Reservation | None:
        """Hold a slot for `call_key`'s coming stream, or None when the process is full.

        A repeat for the same call (Twilio retrying the webhook) renews the hold
        instead of taking a second slot.
        """
        with self._lock:
            now = self._clock()
            self._purge(now)
            expires_at = now + self.hold_s
            if call_key in self._active:
                return Reservation(call_key, expires_at)
            if call_key in self._reserved:
                self._reserved[call_key] = expires_at
                self._reserved.move_to_end(call_key)
                return Reservation(call_key, expires_at)
            if self._full():
                self._refused += 1
                return None
            self._reserved[call_key] = expires_at
            self._admitted += 1
            return Reservation(call_key, expires_at)

    def try_acquire(self, call_key: str) -> Slot | None:
        """The slot for `call_key`'s stream: its reservation, else a free one, else None.

        None too when a stream for this call already holds a slot: Twilio allows one
        bidirectional stream per call, so a second is refused rather than counted.
        """
        with self._lock:
            self._purge(self._clock())
            if call_key in self._active:
                self._refused += 1
                return None
            if self._reserved.pop(call_key, None) is None:
                if self._full():
                    self._refused += 1
                    return None
                self._admitted += 1
            slot = Slot(call_key, next(self._serials))
            self._active[call_key] = slot
            return slot

    def release(self, slot: Slot) -> bool:
        """Give `slot` back; False when it was already released (safe to call twice)."""
        with self._lock:
            if self._active.get(slot.call_key) != slot:
                return False
            del self._active[slot.call_key]
            return True

    def cancel(self, call_key: str) -> bool:
        """Drop `call_key`'s unclaimed reservation (its stream failed or the call ended).

        A slot a live stream holds is its session's to release, so it is left alone.
        """
        with self._lock:
            return self._reserved.pop(call_key, None) is not None

    def rekey(self, old_key: str, new_key: str) -> bool:
        """Move `old_key`'s unclaimed reservation to `new_key`, renewed; False when there
        is none (expired or claimed). An outbound call is reserved before Twilio names it,
        then held under the CallSid its stream will claim it with."""
        with self._lock:
            now = self._clock()
            self._purge(now)
            if self._reserved.pop(old_key, None) is None:
                return False
            self._reserved[new_key] = now + self.hold_s
            self._reserved.move_to_end(new_key)
            return True

    def stats(self) -> AdmissionStats:
        with self._lock:
            self._purge(self._clock())
            return AdmissionStats(
                limit=self.limit,
                active=len(self._active),
                reserved=len(self._reserved),
                admitted=self._admitted,
                refused=self._refused,
                expired=self._expired,
            )


@lru_cache
def get_admission() -> Admission:
    """This process's one counter (the webhook reserves, the media session claims)."""
    settings = get_settings()
    return Admission(settings.max_concurrent_calls, hold_s=settings.admission_hold_s)
