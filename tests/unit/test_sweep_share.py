"""``auto``: the share of the table the block sweep would delete decides whether it runs
(``engine.sweep_share``). Rows that went with whole partitions count against the swept
targets only in proportion (a review in the seventh session: the first version subtracted
every target's dropped rows from the swept targets' alone)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from retention.engine import sweep_share

CUTOFF = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Counts:
    rows: int


@dataclass(frozen=True)
class _Resolution:
    cutoff: datetime | None


@dataclass(frozen=True)
class _Target:
    key: str
    counts: _Counts
    resolution: _Resolution


def _targets(*rows: int, cutoff: datetime | None = CUTOFF, prefix: str = "t") -> list[Any]:
    return [_Target(f"{prefix}{i}", _Counts(n), _Resolution(cutoff)) for i, n in enumerate(rows)]


def test_a_big_target_after_small_ones_went_with_their_partitions() -> None:
    """400k rows of one big target (swept) and 600k of 10,000 small ones (not swept), all
    of the small ones' dropped with whole partitions: the sweep still deletes 400k of 2M
    rows minus its proportional part, not (400k - 600k)."""
    targets = _targets(400_000, *([60] * 10_000))
    share = sweep_share(cast(Any, targets), {"t0"}, 600_000, 2_000_000)
    assert share == (400_000 - 600_000 * 400_000 / 1_000_000) / 2_000_000
    assert share > 0.05


def test_nothing_dropped_is_the_swept_rows_over_the_table() -> None:
    targets = _targets(300, 700)
    assert sweep_share(cast(Any, targets), {"t0", "t1"}, 0, 10_000) == 1_000 / 10_000
    assert sweep_share(cast(Any, targets), {"t1"}, 0, 10_000) == 700 / 10_000


def test_everything_dropped_leaves_nothing_to_sweep() -> None:
    targets = _targets(300, 700)
    assert sweep_share(cast(Any, targets), {"t0", "t1"}, 1_000, 10_000) == 0.0


def test_no_planned_rows_and_an_empty_table() -> None:
    assert sweep_share([], set(), 0, 0) == 0.0
    assert sweep_share(cast(Any, _targets(0, 0)), {"t0"}, 0, 0) == 0.0
    # targets with no cutoff (kept) do not count toward the rows dropped are shared over
    targets = _targets(500) + _targets(900, cutoff=None, prefix="kept")
    assert sweep_share(cast(Any, targets), {"t0"}, 250, 1_000) == 250 / 1_000
