"""``retention schedule`` keeps scheduling after a failed run, reports every run's
outcome on /metrics, and its jitter never costs a scheduled slot."""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retention import commands, metrics, scheduler
from retention.scheduler import CronSchedule, run_forever
from retention.settings import load_settings

T0 = datetime(2026, 11, 27, 1, 30, tzinfo=UTC)


class FakeTime:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def clock(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_schedule_goes_on_after_a_run_with_an_unexpected_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that ends with an unexpected error (exit 1: a bug, an exception a library did
    not translate) is one failed run, like exit 2, 3 or 4: the loop records its outcome on
    /metrics (retention_run_outcome{exit_code="1"}) and runs again at the next slot.
    ``commands.schedule``'s ``once`` only catches RetentionError, so the exception leaves
    ``run_forever`` and the whole scheduler exits: no later run ever happens, and /metrics
    still shows the previous run's values."""
    time = FakeTime(T0)
    calls: list[datetime] = []

    def deleting_run(*_args: Any, **_kwargs: Any) -> tuple[int, None]:
        calls.append(time.now)
        time.now += timedelta(seconds=5)
        if len(calls) == 1:
            raise RuntimeError("a bug in one run")
        return 0, None

    published: list[int] = []
    real_update = metrics.update

    def update(registry: metrics.CollectorRegistry, run: metrics.RunMetrics) -> None:
        published.append(run.exit_code)
        real_update(registry, run)

    real_loop = scheduler.run_forever

    def loop(schedule: CronSchedule, once: Any, **_kwargs: Any) -> list[int]:
        return real_loop(
            schedule,
            once,
            clock=time.clock,
            sleep=time.sleep,
            should_stop=lambda: False,
            max_runs=2,
        )

    monkeypatch.setattr(commands, "_deleting_run", deleting_run)
    monkeypatch.setattr(commands.engine, "last_success", lambda _worker: None)
    monkeypatch.setattr(commands.metrics, "update", update)
    monkeypatch.setattr(commands.scheduler, "run_forever", loop)
    settings = load_settings(
        schedule="*/5 * * * *", metrics_port=0, state_dir=tmp_path, policy_dir=tmp_path
    )
    args = argparse.Namespace(dry_run=False, yes=True, format="json", output=None, plan=None)

    code = commands.schedule(args, settings)

    assert code == 0
    assert calls == [
        datetime(2026, 11, 27, 1, 35, tzinfo=UTC),
        datetime(2026, 11, 27, 1, 40, tzinfo=UTC),
    ]
    assert published == [1, 0]


def test_jitter_never_pushes_a_run_past_the_next_slot() -> None:
    """``--cron '*/5 * * * *' --jitter 10m``: a random delay of up to 10 minutes is added to
    each start, so the 01:35 run may start at 01:44 and the loop then skips the 01:40 slot
    (it counts from the run's end): runs happen less often than the schedule says. The delay
    must stay within the slot: before the next scheduled time."""
    schedule = CronSchedule("*/5 * * * *", jitter=timedelta(minutes=10), rng=random.Random(3))
    for start in (T0 + timedelta(minutes=m) for m in range(0, 60, 5)):
        base = CronSchedule("*/5 * * * *").next_fire(start)
        fire = schedule.next_fire(start)
        assert base <= fire < base + timedelta(minutes=5), (start, fire)


def test_jitter_keeps_every_slot() -> None:
    """The same, through the loop: twelve quick runs of */5 with a 10-minute jitter take
    the twelve slots from 01:35 on, each run inside its own slot."""
    time = FakeTime(T0)
    started: list[datetime] = []

    def once() -> int:
        started.append(time.now)
        return 0

    run_forever(
        CronSchedule("*/5 * * * *", jitter=timedelta(minutes=10), rng=random.Random(3)),
        once,
        clock=time.clock,
        sleep=time.sleep,
        should_stop=lambda: False,
        max_runs=12,
    )
    first = datetime(2026, 11, 27, 1, 35, tzinfo=UTC)
    slots = [first + timedelta(minutes=5 * i) for i in range(12)]
    assert [
        slot <= at < slot + timedelta(minutes=5) for slot, at in zip(slots, started, strict=True)
    ] == [True] * 12, [s.isoformat() for s in started]
