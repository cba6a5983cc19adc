"""The schedule loop's fire times across a DST change (pure logic, injected clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from retention.scheduler import CronSchedule, run_forever


def test_a_daily_schedule_runs_once_on_the_fall_back_night() -> None:
    """``schedule --cron '30 1 * * *' --time-zone America/New_York``: 01:30 happens twice on
    the night clocks go back, and croniter returns both; the loop runs once, as cron and
    systemd timers do (DESIGN: "runs `run` on a cron expression": once a day)."""
    now = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT, the fall-back night
    started: list[datetime] = []

    def clock() -> datetime:
        return now

    def sleep(seconds: float) -> None:
        nonlocal now
        now += timedelta(seconds=seconds)

    def once() -> int:
        nonlocal now
        started.append(now)
        now += timedelta(minutes=5)
        return 0

    run_forever(
        CronSchedule("30 1 * * *", time_zone="America/New_York"),
        once,
        clock=clock,
        sleep=sleep,
        should_stop=lambda: now >= datetime(2026, 11, 2, 0, 0, tzinfo=UTC),
    )
    assert len(started) == 1, [s.isoformat() for s in started]
