"""How small targets are put together: in order, every target once, each group within the
batch size (a single target never exceeds it: larger ones are not eligible)."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from retention.grouped import groups
from retention.models import Target, TargetCounts
from tests.unit.test_kept_needed import RESOLUTION


def _targets(rows: list[int]) -> list[Target]:
    return [
        Target(resolution=RESOLUTION, counts=replace(TargetCounts(), rows=n, total_rows=n))
        for n in rows
    ]


@given(st.integers(1, 500), st.data())
def test_groups_keep_order_and_stay_within_the_batch(batch: int, data: st.DataObject) -> None:
    rows = data.draw(st.lists(st.integers(0, batch), max_size=60))
    targets = _targets(rows)
    found = groups(targets, batch)
    assert [t for g in found for t in g] == targets
    assert all(g for g in found)
    assert all(sum(t.counts.rows for t in g) <= batch for g in found)
    # greedy: the next group's first target did not fit in the previous group
    for before, after in pairwise(found):
        assert sum(t.counts.rows for t in before) + after[0].counts.rows > batch


def test_many_small_targets_go_together() -> None:
    assert [len(g) for g in groups(_targets([170] * 50), 1000)] == [5] * 10
