"""The sliding-window rate limiter on its own: exact window edges, waits, releases and the key sweep."""

from __future__ import annotations

import pytest

import gateway.limits as limits
from gateway.config import Rate
from gateway.limits import RateLimiter

T0 = 1_000_000.0


def limiter(count: int = 3, period_s: int = 60) -> RateLimiter:
    return RateLimiter(Rate(count=count, period_s=period_s))


def test_take_allows_count_events_then_answers_the_wait() -> None:
    rl = limiter(3, 60)
    assert [rl.take("k", now=T0 + i) for i in range(3)] == [0, 0, 0]
    # The first event (T0) leaves the window at T0 + 60: from T0 + 3 that is 57 s away.
    assert rl.take("k", now=T0 + 3) == 57
    assert rl.retry_after("k", now=T0 + 3) == 57


def test_a_refused_take_is_not_counted() -> None:
    rl = limiter(1, 10)
    assert rl.take("k", now=T0) == 0
    for i in range(5):
        assert rl.take("k", now=T0 + 1 + i) > 0
    assert rl.take("k", now=T0 + 10) == 0  # only the one accepted event had to slide out


def test_window_edge_an_event_exactly_one_period_old_has_left() -> None:
    rl = limiter(1, 60)
    assert rl.take("k", now=T0) == 0
    assert rl.retry_after("k", now=T0 + 59.999) == 1
    assert rl.retry_after("k", now=T0 + 60) == 0
    assert rl.take("k", now=T0 + 60) == 0


def test_retry_after_rounds_up_and_is_at_least_one_second() -> None:
    rl = limiter(1, 60)
    rl.hit("k", now=T0)
    assert rl.retry_after("k", now=T0 + 0.5) == 60  # 59.5 s rounds up
    assert rl.retry_after("k", now=T0 + 59.5) == 1
    assert rl.retry_after("k", now=T0 + 59.9999) == 1


def test_retry_after_counts_from_the_oldest_event_in_the_window() -> None:
    rl = limiter(2, 60)
    rl.hit("k", now=T0)
    rl.hit("k", now=T0 + 30)
    assert rl.retry_after("k", now=T0 + 40) == 20
    assert rl.retry_after("k", now=T0 + 61) == 0  # the oldest slid out; one event in the window
    assert rl.take("k", now=T0 + 61) == 0
    assert rl.retry_after("k", now=T0 + 61) == 29  # now T0 + 30 is the oldest of two


def test_retry_after_does_not_record_an_event() -> None:
    rl = limiter(1, 60)
    for _ in range(5):
        assert rl.retry_after("k", now=T0) == 0
    assert rl.take("k", now=T0) == 0


def test_hit_records_even_past_the_limit() -> None:
    rl = limiter(1, 60)
    rl.hit("k", now=T0)
    rl.hit("k", now=T0 + 50)
    assert rl.retry_after("k", now=T0 + 61) == 49  # the later hit still holds the window


def test_keys_are_counted_apart() -> None:
    rl = limiter(1, 60)
    assert rl.take("a", now=T0) == 0
    assert rl.take("b", now=T0) == 0
    assert rl.take("a", now=T0) > 0
    assert rl.retry_after("c", now=T0) == 0


def test_release_gives_back_exactly_the_event_at_that_time() -> None:
    rl = limiter(2, 60)
    rl.hit("k", now=T0)
    rl.hit("k", now=T0 + 5)
    assert rl.retry_after("k", now=T0 + 6) == 54
    rl.release("k", at=T0)
    assert rl.retry_after("k", now=T0 + 6) == 0
    assert rl.take("k", now=T0 + 6) == 0
    assert rl.retry_after("k", now=T0 + 7) == 58  # T0 + 5 is now the oldest


def test_release_of_an_unknown_key_or_time_changes_nothing() -> None:
    rl = limiter(1, 60)
    rl.release("nobody", at=T0)
    rl.hit("k", now=T0)
    rl.release("k", at=T0 + 1)  # no event at that time
    assert rl.retry_after("k", now=T0 + 2) == 58


def test_release_after_the_event_slid_out_is_harmless() -> None:
    rl = limiter(1, 60)
    rl.hit("k", now=T0)
    assert rl.take("k", now=T0 + 61) == 0  # T0 slid out, T0 + 61 recorded
    rl.release("k", at=T0)
    assert rl.retry_after("k", now=T0 + 62) == 59


def test_sweep_drops_only_keys_with_nothing_left_in_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "_MAX_KEYS", 3)
    rl = limiter(1, 60)
    rl.hit("old", now=T0)
    rl.hit("edge", now=T0 + 40)
    rl.hit("recent", now=T0 + 90)
    # A fourth key at T0 + 100 sweeps: "old" (T0) is out of the window, "edge" (T0 + 40) is exactly
    # one period old and out too, "recent" stays.
    assert rl.take("new", now=T0 + 100) == 0
    assert set(rl._events) == {"recent", "new"}
    assert rl.retry_after("recent", now=T0 + 100) == 50


def test_sweep_runs_only_when_the_table_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "_MAX_KEYS", 3)
    rl = limiter(1, 60)
    rl.hit("old", now=T0)
    rl.hit("new", now=T0 + 100)
    assert set(rl._events) == {"old", "new"}  # two keys of three: no sweep yet
    assert rl.retry_after("old", now=T0 + 100) == 0


def test_sweep_keeps_a_key_whose_latest_event_is_live(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "_MAX_KEYS", 1)
    rl = limiter(2, 60)
    rl.hit("k", now=T0)
    rl.hit("k", now=T0 + 50)
    assert rl.take("other", now=T0 + 70) == 0
    assert "k" in rl._events


@pytest.mark.parametrize("period", [1, 3600, 86400])
def test_rates_of_other_periods(period: int) -> None:
    rl = limiter(2, period)
    assert rl.take("k", now=T0) == 0
    assert rl.take("k", now=T0) == 0
    assert rl.take("k", now=T0) == period
    assert rl.take("k", now=T0 + period) == 0
