"""``SweepSet.with_holds``: what a worker other than the leader deletes by, checked against
``Hold`` semantics target by target (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from retention.blocksweep import SweepSet, SweepTarget
from retention.models import Hold, ObjectType

NOW = datetime(2026, 11, 27, 3, tzinfo=UTC)
PROJECTS = [UUID(int=n) for n in range(1, 4)]
OBJECTS = [UUID(int=100 + n) for n in range(4)]
TYPES = [ObjectType.PROJECT_LOGS, ObjectType.DATASET]


def _target(project: UUID, object_type: ObjectType) -> SweepTarget:
    return SweepTarget(
        key=f"{project}/{object_type.value}",
        project_id=project,
        object_type=object_type,
        cutoff=NOW - timedelta(days=30),
        retention_days=30,
        policy_source="local:p.toml [defaults]",
    )


holds = st.builds(
    Hold,
    project_id=st.sampled_from(PROJECTS),
    reason=st.just("r"),
    origin=st.just("local:h.toml"),
    object_type=st.none() | st.sampled_from([*TYPES, ObjectType.EXPERIMENT]),
    object_id=st.none() | st.sampled_from(OBJECTS),
    expires=st.none() | st.sampled_from([NOW - timedelta(seconds=1), NOW + timedelta(days=1)]),
)
sweeps = st.builds(
    SweepSet,
    targets=st.lists(st.tuples(st.sampled_from(PROJECTS), st.sampled_from(TYPES)), unique=True).map(
        lambda pairs: tuple(_target(p, t) for p, t in pairs)
    ),
    held=st.frozensets(st.sampled_from(OBJECTS), max_size=2),
)


@given(sweeps, st.lists(holds, max_size=5))
def test_holds_remove_targets_and_add_objects(sweep: SweepSet, found: list[Hold]) -> None:
    result = sweep.with_holds(found, NOW)
    active = [h for h in found if h.expires is None or h.expires > NOW]
    for target in sweep.targets:
        whole = any(h.covers_target(target.project_id, target.object_type) for h in active)
        assert (target in result.targets) is not whole
    assert all(t in sweep.targets for t in result.targets)
    assert sweep.held <= result.held  # what was held stays held
    for hold in active:
        if hold.object_id is not None and any(
            hold.covers_object(t.project_id, t.object_type) for t in result.targets
        ):
            assert hold.object_id in result.held
    assert result.with_holds(found, NOW) == result  # applying again changes nothing


def test_an_expired_hold_and_an_experiment_hold_change_nothing() -> None:
    sweep = SweepSet(targets=(_target(PROJECTS[0], ObjectType.PROJECT_LOGS),))
    expired = Hold(PROJECTS[0], "r", "o", expires=NOW)  # expires at the run's now
    experiment = Hold(PROJECTS[0], "r", "o", ObjectType.EXPERIMENT, OBJECTS[0])
    assert sweep.with_holds([expired, experiment], NOW) == sweep
    assert sweep.with_holds([expired], NOW - timedelta(seconds=1)).targets == ()
