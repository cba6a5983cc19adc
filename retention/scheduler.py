"""``retention schedule``: a foreground loop that runs ``run`` on a cron expression.

For hosts without cron. The expression is validated up front (croniter) and read in a time
zone setting. After a long pause (a suspended host, a run longer than the interval) the
loop runs once and then goes back on schedule: no catch-up storm. The run lock keeps a
scheduled run from overlapping any other runner (a run that finds it taken exits 7 and the
loop carries on).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import UsageError

log = logging.getLogger(__name__)

MAX_NAP = timedelta(seconds=30)  # wake up this often to notice a stop request


class CronSchedule:
    def __init__(
        self,
        expression: str,
        *,
        time_zone: str = "UTC",
        jitter: timedelta = timedelta(0),
        rng: random.Random | None = None,
    ) -> None:
        if not croniter.is_valid(expression):
            raise UsageError(f"invalid cron expression {expression!r}")
        try:
            self.zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"unknown time zone {time_zone!r} (RETENTION_SCHEDULE_TZ)") from None
        self.expression = expression
        self.jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311 - spreading start times, not security

    def next_fire(self, after: datetime) -> datetime:
        """The first scheduled time after ``after``, plus a random jitter in [0, jitter],
        kept before the scheduled time after it (a jitter longer than the interval would
        push runs into the next slot, and the loop, counting from a run's end, would skip
        slots).

        On the night the clocks go back, a wall-clock time happens twice; like cron and
        systemd timers, the schedule fires at its first occurrence only."""
        fire = self._scheduled(after)
        if not self.jitter:
            return fire
        gap = (self._scheduled(fire) - fire).total_seconds()
        delay = self._rng.uniform(0, min(self.jitter.total_seconds(), max(gap - 1.0, 0.0)))
        return fire + timedelta(seconds=delay)

    def _scheduled(self, after: datetime) -> datetime:
        local = after.astimezone(self.zone)
        times = croniter(self.expression, local)
        fire: datetime = times.get_next(datetime)
        while fire.fold == 1 or _repeated(fire):
            fire = times.get_next(datetime)
        return fire.astimezone(UTC)


def _repeated(fire: datetime) -> bool:
    """``fire`` is the second occurrence of its wall-clock time (the hour repeated when the
    clocks go back): an hour earlier in UTC, the same wall-clock time was already there."""
    earlier = (fire.astimezone(UTC) - timedelta(hours=1)).astimezone(fire.tzinfo)
    return earlier.replace(tzinfo=None) == fire.replace(tzinfo=None)


def run_forever(
    schedule: CronSchedule,
    run_once: Callable[[], int],
    *,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
    should_stop: Callable[[], bool],
    max_runs: int | None = None,
) -> list[int]:
    """Run on schedule until told to stop; the exit codes of the runs, in order."""
    codes: list[int] = []
    due = schedule.next_fire(clock())
    log.info("schedule %r: next run at %s", schedule.expression, due.isoformat())
    while not should_stop() and (max_runs is None or len(codes) < max_runs):
        now = clock()
        if now < due:
            sleep(min(due - now, MAX_NAP).total_seconds())
            continue
        code = run_once()
        codes.append(code)
        # From the time the run ended: a late or long run never queues up missed ones.
        due = schedule.next_fire(clock())
        log.info("run ended with exit code %d; next run at %s", code, due.isoformat())
    return codes
