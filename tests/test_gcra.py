"""The GCRA arithmetic every store backend shares (gcra_interval, gcra_wait), pure and without a store.

The SQL that applies it is tested through the store contract (tests/store_contract.py); these pin the
numbers a refused client is told in Retry-After, and are the mutation run's yardstick for them
(bench/mutation limits).
"""

from __future__ import annotations

import pytest

from gateway.config import Rate
from gateway.store import gcra_interval, gcra_wait

T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    ("rate", "interval"),
    [(Rate(count=3, period_s=60), 20.0), (Rate(count=5, period_s=60), 12.0), (Rate(count=1, period_s=3600), 3600.0),
     (Rate(count=7, period_s=60), 60 / 7), (Rate(count=120, period_s=60), 0.5)],
)  # fmt: skip
def test_gcra_interval_is_the_period_shared_by_the_count(rate: Rate, interval: float) -> None:
    assert gcra_interval(rate) == interval


def test_gcra_wait_after_a_burst_is_one_interval() -> None:
    # 3/minute taken three times at T0: the row time is a full period ahead; one hit frees 20 s later.
    assert gcra_wait(T0 + 60, rate=Rate(count=3, period_s=60), now=T0) == 20
    # later in the same wait, less of it is left
    assert gcra_wait(T0 + 60, rate=Rate(count=3, period_s=60), now=T0 + 15) == 5


def test_gcra_wait_rounds_a_fraction_up_to_whole_seconds() -> None:
    # 7/minute: one hit every 8.57 s; telling the client 8 would have it refused again.
    assert gcra_wait(T0 + 60, rate=Rate(count=7, period_s=60), now=T0) == 9
    assert gcra_wait(T0 + 60.5, rate=Rate(count=3, period_s=60), now=T0) == 21


def test_gcra_wait_is_at_least_one_second() -> None:
    rate = Rate(count=3, period_s=60)
    # exactly one second left, and a fraction of one: both are 1
    assert gcra_wait(T0 + 41, rate=rate, now=T0) == 1
    assert gcra_wait(T0 + 40.2, rate=rate, now=T0) == 1
    # a row time at or behind `now` (the key is free again) still answers a positive wait, never 0 or less
    assert gcra_wait(T0, rate=rate, now=T0) == 1
    assert gcra_wait(T0 - 500, rate=rate, now=T0) == 1


def test_gcra_wait_counts_from_now_when_the_row_time_is_past() -> None:
    # With a count of 1 the interval is the whole period: a row time in the past counts from `now`,
    # so the answer is the smallest wait (1), not a negative or a period-long one.
    rate = Rate(count=1, period_s=60)
    assert gcra_wait(T0 - 30, rate=rate, now=T0) == 1
    assert gcra_wait(T0 + 30, rate=rate, now=T0) == 30
