"""The cron loop with an injected clock: fire times, jitter bounds, no catch-up storm."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.errors import UsageError
from retention.scheduler import CronSchedule, run_forever

T0 = datetime(2026, 11, 27, 1, 30, tzinfo=UTC)


class FakeTime:
    def __init__(self, start: datetime) -> None:
        self.now = start
        self.naps: list[float] = []

    def clock(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += timedelta(seconds=seconds)


def test_next_fire_times() -> None:
    daily = CronSchedule("0 3 * * *")
    assert daily.next_fire(T0) == datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    assert daily.next_fire(datetime(2026, 11, 27, 3, 0, tzinfo=UTC)) == datetime(
        2026, 11, 28, 3, 0, tzinfo=UTC
    )


def test_time_zone_setting() -> None:
    berlin = CronSchedule("0 3 * * *", time_zone="Europe/Berlin")
    # 01:30 UTC is 02:30 in Berlin (CET): the next 03:00 there is 02:00 UTC the same day
    assert berlin.next_fire(T0) == datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), minutes=st.integers(0, 120))
def test_jitter_stays_within_bounds(seed: int, minutes: int) -> None:
    jittered = CronSchedule("0 3 * * *", jitter=timedelta(minutes=minutes), rng=random.Random(seed))
    fire = jittered.next_fire(T0)
    base = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    assert base <= fire <= base + timedelta(minutes=minutes)


@pytest.mark.parametrize("bad", ["", "61 * * * *", "every day", "* * *"])
def test_invalid_expressions_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid cron expression"):
        CronSchedule(bad)


def test_unknown_time_zone_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown time zone 'Mars/Olympus'"):
        CronSchedule("0 3 * * *", time_zone="Mars/Olympus")


def test_runs_on_schedule() -> None:
    time = FakeTime(T0)
    started: list[datetime] = []

    def run() -> int:
        started.append(time.now)
        time.now += timedelta(minutes=20)  # a run takes 20 minutes
        return 0

    codes = run_forever(
        CronSchedule("0 3 * * *"),
        run,
        clock=time.clock,
        sleep=time.sleep,
        should_stop=lambda: False,
        max_runs=3,
    )
    assert codes == [0, 0, 0]
    assert started == [datetime(2026, 11, day, 3, 0, tzinfo=UTC) for day in (27, 28, 29)]
    assert max(time.naps) <= 30  # wakes up to notice a stop request


def test_no_catch_up_storm_after_a_long_pause() -> None:
    time = FakeTime(T0)
    started: list[datetime] = []

    def run() -> int:
        started.append(time.now)
        if len(started) == 1:
            time.now += timedelta(days=3, hours=5)  # the host slept through three runs
        return 0

    run_forever(
        CronSchedule("0 3 * * *"),
        run,
        clock=time.clock,
        sleep=time.sleep,
        should_stop=lambda: False,
        max_runs=2,
    )
    # one run after the pause's end, back on schedule: not three runs in a row
    assert started == [
        datetime(2026, 11, 27, 3, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 3, 0, tzinfo=UTC),
    ]


def test_a_locked_run_does_not_stop_the_loop() -> None:
    time = FakeTime(T0)
    results = iter([7, 0])

    def run() -> int:
        time.now += timedelta(minutes=1)
        return next(results)

    codes = run_forever(
        CronSchedule("*/5 * * * *"),
        run,
        clock=time.clock,
        sleep=time.sleep,
        should_stop=lambda: False,
        max_runs=2,
    )
    assert codes == [7, 0]


def test_stops_when_asked() -> None:
    time = FakeTime(T0)
    stops = iter([False, False, True])
    codes = run_forever(
        CronSchedule("0 3 * * *"),
        lambda: 0,
        clock=time.clock,
        sleep=time.sleep,
        should_stop=lambda: next(stops),
    )
    assert codes == []
