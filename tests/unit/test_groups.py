"""How small targets are put together: logs and datasets first, then experiments (a group
is of one kind), in order within each kind, every target once, each group within the batch
size, where a target weighs its planned rows and registry entries and at least one (a
single target never exceeds the batch alone: larger ones are not eligible)."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from retention.grouped import groups
from retention.models import ObjectType, Target, TargetCounts
from tests.unit.test_kept_needed import RESOLUTION


def _target(rows: int, objects: int = 0, experiment: bool = False) -> Target:
    kind = ObjectType.EXPERIMENT if experiment else ObjectType.PROJECT_LOGS
    return Target(
        resolution=replace(RESOLUTION, object_type=kind),
        counts=replace(TargetCounts(), rows=rows, total_rows=rows, objects=objects),
    )


def _weight(target: Target) -> int:
    return max(target.counts.rows + target.counts.objects, 1)


@given(st.integers(1, 500), st.data())
def test_groups_keep_order_and_stay_within_the_batch(batch: int, data: st.DataObject) -> None:
    drawn = data.draw(
        st.lists(
            st.tuples(st.integers(0, batch), st.integers(0, batch), st.booleans()), max_size=60
        )
    )
    # a target over the batch is not eligible: rows and registry entries together fit
    targets = [_target(r, min(o, batch - r), e) for r, o, e in drawn]
    found = groups(targets, batch)
    kinds = [t.object_type is ObjectType.EXPERIMENT for t in targets]
    expected = [t for t, k in zip(targets, kinds, strict=True) if not k] + [
        t for t, k in zip(targets, kinds, strict=True) if k
    ]
    assert [t for g in found for t in g] == expected
    assert all(g for g in found)
    assert all(len({t.object_type for t in g}) == 1 for g in found)
    assert all(sum(_weight(t) for t in g) <= batch for g in found)
    # greedy: the next group's first target did not fit in the previous one of its kind
    for before, after in pairwise(found):
        if before[0].object_type is after[0].object_type:
            assert sum(_weight(t) for t in before) + _weight(after[0]) > batch


def test_many_small_targets_go_together() -> None:
    assert [len(g) for g in groups([_target(170)] * 50, 1000)] == [5] * 10


def test_targets_with_nothing_planned_still_count_one_each() -> None:
    """Targets with only segments to mark: a group of them stays within the batch."""
    assert [len(g) for g in groups([_target(0)] * 7, 3)] == [3, 3, 1]


def test_experiments_go_after_the_rows_in_groups_of_their_own() -> None:
    logs, experiment = _target(10), _target(5, 2, experiment=True)
    found = groups([experiment, logs, experiment, logs], 100)
    assert found == [[logs, logs], [experiment, experiment]]


def test_segments_to_mark_weigh_too() -> None:
    """A group's marks are bounded like its rows: a target weighs its planned segments."""
    marking = replace(_target(0), counts=replace(TargetCounts(), segments=40))
    assert [len(g) for g in groups([marking] * 5, 100)] == [2, 2, 1]
