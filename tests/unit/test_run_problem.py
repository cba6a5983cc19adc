"""What a run records as its problem (``runs.run_problem``), which ``retention status``
reads: a stop (time budget, signal) is no problem, but a target given up after lock waits
before the stop came still is."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from retention.deleter import gave_up_note
from retention.models import ObjectType, Phase, Resolution, Target, TargetOutcome
from retention.runs import STOPPED_BY_SIGNAL, run_problem

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _outcome(n: int, phase: Phase, note: str = "") -> TargetOutcome:
    resolution = Resolution(
        project_id=UUID(int=n),
        object_type=ObjectType.PROJECT_LOGS,
        now=NOW,
        candidates=(),
        winner=None,
        floor_days=0,
        retention_days=30,
        cutoff=NOW,
    )
    return TargetOutcome(target=Target(resolution=resolution), phase=phase, note=note)


def test_a_stop_alone_is_no_problem_beyond_itself() -> None:
    stopped = [_outcome(1, Phase.DONE), _outcome(2, Phase.ROWS, "stopped")]
    assert run_problem(STOPPED_BY_SIGNAL, stopped, {}, None) == STOPPED_BY_SIGNAL


def test_a_target_given_up_before_a_stop_is_still_a_problem() -> None:
    given_up = _outcome(1, Phase.ROWS, gave_up_note(5))
    stopped = _outcome(2, Phase.ROWS, "stopped")
    problem = run_problem(STOPPED_BY_SIGNAL, [given_up, stopped], {}, None)
    assert problem == (
        f"{STOPPED_BY_SIGNAL}; unfinished: {given_up.target.key} ({gave_up_note(5)})"
    )
