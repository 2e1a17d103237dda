"""An in-memory `Telephony` for session tests, the simulator and benchmarks.

It keeps Twilio's rules so tests that pass against it pass against Twilio: the same
checks on numbers, sids and TwiML (the shared helpers of `telephony_twilio`), a hang-up
of an ended call is not an error, a transfer of an ended call is. Each request waits
`latency_ms` before it takes effect, as a REST round trip would; a request cancelled
while waiting never happened. Failures are injected per operation.

What it records is plain frozen data, in order, with the time it took effect, so a test
can assert what the session asked for and when (e.g. the goodbye finished playing
before the hang-up), and can `await wait_hang_up(sid)` instead of polling.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from voice_gateway.providers.base import ProviderError
from voice_gateway.providers.telephony_twilio import (
    OutboundCall,
    TelephonyError,
    TelephonyFailure,
    check_call_sid,
    check_e164,
    transfer_twiml,
)


class Operation(StrEnum):
    hang_up = "hang_up"
    transfer = "transfer"
    start_outbound_call = "start_outbound_call"


@dataclass(frozen=True, slots=True)
class HangUp:
    call_sid: str
    at: float
    #: The call had already ended (Twilio answers 404; the hang-up is a no-op).
    already_ended: bool
    #: The call had been transferred: a real hang-up now would cut off the human.
    after_transfer: bool


@dataclass(frozen=True, slots=True)
class Transfer:
    call_sid: str
    to_number: str
    announce: str | None
    twiml: str
    at: float


@dataclass(frozen=True, slots=True)
class PlacedCall:
    call_sid: str
    request: OutboundCall
    at: float


TelephonyEvent = HangUp | Transfer | PlacedCall


class FakeTelephony:
    """Records what the gateway asks of the phone network; never talks to one."""

    name = "fake"

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[TelephonyEvent], None] | None = None,
    ) -> None:
        if latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        self.latency_ms = latency_ms
        self._sleep = sleep
        self._clock = clock
        #: Called as each request takes effect (the simulator ends its stream on a hang-up).
        self.on_event = on_event
        self.events: list[TelephonyEvent] = []
        self._ended: set[str] = set()
        self._transferred: set[str] = set()
        self._failures: dict[Operation, deque[ProviderError]] = {op: deque() for op in Operation}
        self._hung_up: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------ what happened

    @property
    def hang_ups(self) -> list[HangUp]:
        return [e for e in self.events if isinstance(e, HangUp)]

    @property
    def transfers(self) -> list[Transfer]:
        return [e for e in self.events if isinstance(e, Transfer)]

    @property
    def placed_calls(self) -> list[PlacedCall]:
        return [e for e in self.events if isinstance(e, PlacedCall)]

    def is_ended(self, call_sid: str) -> bool:
        return call_sid in self._ended

    async def wait_hang_up(self, call_sid: str) -> HangUp:
        """The hang-up of `call_sid`, as soon as it has taken effect."""
        await self._hang_up_event(call_sid).wait()
        return next(h for h in self.hang_ups if h.call_sid == call_sid)

    # ------------------------------------------------------------ test controls

    def end_call(self, call_sid: str) -> None:
        """The other side hung up: later transfers fail as they would at Twilio."""
        self._ended.add(check_call_sid(call_sid))

    def fail_next(self, operation: Operation, error: ProviderError, *, times: int = 1) -> None:
        """Make the next `times` requests of `operation` raise `error` after the latency."""
        self._failures[operation].extend([error] * times)

    # ------------------------------------------------------------ Telephony

    async def hang_up(self, call_sid: str) -> None:
        sid = check_call_sid(call_sid)
        await self._round_trip(Operation.hang_up)
        event = HangUp(
            call_sid=sid,
            at=self._clock(),
            already_ended=sid in self._ended,
            after_transfer=sid in self._transferred,
        )
        self._ended.add(sid)
        self._record(event)
        self._hang_up_event(sid).set()

    async def transfer(
        self,
        call_sid: str,
        to_number: str,
        *,
        announce: str | None = None,
        language: str | None = None,
        caller_id: str | None = None,
        ring_timeout_s: int = 30,
        action_url: str | None = None,
    ) -> None:
        sid = check_call_sid(call_sid)
        twiml = transfer_twiml(
            to_number,
            announce=announce,
            language=language,
            caller_id=caller_id,
            ring_timeout_s=ring_timeout_s,
            action_url=action_url,
        )
        await self._round_trip(Operation.transfer)
        if sid in self._ended:
            raise TelephonyError(
                TelephonyFailure.call_ended,
                "Call is not in-progress. Cannot redirect.",
                status=400,
                code=21220,
                attempts=1,
            )
        self._transferred.add(sid)
        self._record(
            Transfer(
                call_sid=sid,
                to_number=check_e164(to_number),
                announce=announce,
                twiml=twiml,
                at=self._clock(),
            )
        )

    async def place_call(self, request: OutboundCall) -> str:
        await self._round_trip(Operation.start_outbound_call)
        sid = "CA" + uuid.uuid4().hex
        self._record(PlacedCall(call_sid=sid, request=request, at=self._clock()))
        return sid

    async def aclose(self) -> None:
        """Nothing to release; here so the fake and the real provider close alike."""

    # ------------------------------------------------------------ internals

    async def _round_trip(self, operation: Operation) -> None:
        if self.latency_ms:
            await self._sleep(self.latency_ms / 1000)
        failures = self._failures[operation]
        if failures:
            raise failures.popleft()

    def _record(self, event: TelephonyEvent) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _hang_up_event(self, call_sid: str) -> asyncio.Event:
        event = self._hung_up.get(call_sid)
        if event is None:
            event = self._hung_up[call_sid] = asyncio.Event()
        return event
