"""Admission control: the per-process call limit, webhook reservations, their expiry on an
injected clock, idempotent release, and the race for the last slot."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from voice_gateway import admission as admission_module
from voice_gateway import config as gateway_config
from voice_gateway.admission import Admission, AdmissionStats, Reservation, Slot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, limit: int = 2, hold_s: float = 30) -> Admission:
    return Admission(limit, hold_s=hold_s, clock=clock)


def test_reservations_count_against_the_limit(clock: Clock) -> None:
    gate = make(clock, limit=2)
    assert gate.reserve("CA1") == Reservation("CA1", 1030.0)
    assert gate.reserve("CA2") is not None
    assert gate.reserve("CA3") is None
    assert gate.try_acquire("CA4") is None
    assert gate.stats() == AdmissionStats(
        limit=2, active=0, reserved=2, admitted=2, refused=2, expired=0
    )


def test_a_stream_claims_its_reservation_without_a_second_slot(clock: Clock) -> None:
    gate = make(clock, limit=1)
    gate.reserve("CA1")
    slot = gate.try_acquire("CA1")
    assert slot is not None
    assert slot.call_key == "CA1"
    stats = gate.stats()
    assert (stats.active, stats.reserved, stats.in_use, stats.available) == (1, 0, 1, 0)
    assert stats.admitted == 1


def test_a_stream_without_a_reservation_takes_a_free_slot(clock: Clock) -> None:
    gate = make(clock, limit=1)
    assert gate.try_acquire("CA-outbound") is not None
    assert gate.try_acquire("CA-other") is None
    assert gate.reserve("CA-webhook") is None


def test_two_webhooks_cannot_both_take_the_last_slot(clock: Clock) -> None:
    gate = make(clock, limit=3)
    gate.try_acquire("CA-live-1")
    gate.try_acquire("CA-live-2")
    answers = [gate.reserve("CA-a"), gate.reserve("CA-b")]
    assert sum(a is not None for a in answers) == 1
    # The loser's stream (if Twilio opened one anyway) finds no slot either.
    assert gate.try_acquire("CA-b") is None


def test_the_race_for_the_last_slots_across_threads() -> None:
    gate = Admission(25, hold_s=30)
    start = threading.Barrier(8)
    won: list[str] = []
    lock = threading.Lock()

    def caller(worker: int) -> None:
        start.wait()
        for n in range(50):
            key = f"CA{worker}-{n}"
            granted = gate.reserve(key) if n % 2 else gate.try_acquire(key)
            if granted is not None:
                with lock:
                    won.append(key)

    threads = [threading.Thread(target=caller, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = gate.stats()
    assert len(won) == 25
    assert stats.in_use == 25
    assert stats.admitted == 25
    assert stats.refused == 8 * 50 - 25


def test_an_unclaimed_reservation_expires(clock: Clock) -> None:
    gate = make(clock, limit=1, hold_s=30)
    gate.reserve("CA-lost")
    clock.now += 29.9
    assert gate.reserve("CA-next") is None
    clock.now += 0.1
    assert gate.reserve("CA-next") is not None
    assert gate.stats().expired == 1
    # The lost stream turning up late must find its hold gone, and the process full.
    assert gate.try_acquire("CA-lost") is None


def test_a_retried_webhook_renews_its_hold_instead_of_taking_another(clock: Clock) -> None:
    gate = make(clock, limit=2, hold_s=30)
    gate.reserve("CA-a")  # expires at 1030
    clock.now += 10
    gate.reserve("CA-b")  # expires at 1040
    clock.now += 10
    renewed = gate.reserve("CA-a")  # now expires at 1050
    assert renewed == Reservation("CA-a", 1050.0)
    assert gate.stats().reserved == 2
    clock.now = 1045.0
    stats = gate.stats()
    assert (stats.reserved, stats.expired) == (1, 1)
    assert gate.try_acquire("CA-a") is not None
    assert gate.stats().admitted == 2


def test_a_webhook_repeated_after_the_stream_started_takes_nothing(clock: Clock) -> None:
    gate = make(clock, limit=1)
    gate.reserve("CA1")
    gate.try_acquire("CA1")
    assert gate.reserve("CA1") is not None
    stats = gate.stats()
    assert (stats.active, stats.reserved) == (1, 0)


def test_one_stream_per_call(clock: Clock) -> None:
    gate = make(clock, limit=5)
    assert gate.try_acquire("CA1") is not None
    assert gate.try_acquire("CA1") is None
    assert gate.stats().active == 1


def test_release_is_idempotent(clock: Clock) -> None:
    gate = make(clock, limit=1)
    slot = gate.try_acquire("CA1")
    assert slot is not None
    assert gate.release(slot) is True
    assert gate.release(slot) is False
    assert gate.stats().in_use == 0
    assert gate.try_acquire("CA2") is not None


def test_a_stale_slot_cannot_free_a_newer_one_for_the_same_call(clock: Clock) -> None:
    gate = make(clock, limit=2)
    old = gate.try_acquire("CA1")
    assert old is not None
    gate.release(old)
    new = gate.try_acquire("CA1")
    assert new is not None
    assert new != old
    assert gate.release(old) is False
    assert gate.stats().active == 1
    assert gate.release(Slot("CA1", serial=999)) is False
    assert gate.release(new) is True


def test_cancel_drops_only_an_unclaimed_reservation(clock: Clock) -> None:
    gate = make(clock, limit=2)
    gate.reserve("CA-failed")
    assert gate.cancel("CA-failed") is True
    assert gate.cancel("CA-failed") is False
    gate.reserve("CA-live")
    gate.try_acquire("CA-live")
    assert gate.cancel("CA-live") is False
    assert gate.stats().active == 1


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0, hold_s=30)
    with pytest.raises(ValueError, match="positive"):
        Admission(1, hold_s=0)


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    gateway_config.get_settings.cache_clear()
    admission_module.get_admission.cache_clear()
    yield monkeypatch
    gateway_config.get_settings.cache_clear()
    admission_module.get_admission.cache_clear()


def test_the_process_counter_follows_the_settings(fresh_settings: pytest.MonkeyPatch) -> None:
    fresh_settings.setenv("MAX_CONCURRENT_CALLS", "7")
    fresh_settings.setenv("ADMISSION_HOLD_S", "12")
    gate = admission_module.get_admission()
    assert (gate.limit, gate.hold_s) == (7, 12)
    assert admission_module.get_admission() is gate
