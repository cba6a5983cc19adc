"""The block-range sweep (PostgreSQL's fast path for a backlog) against the same expectations
as the keyset batches: exact final rows, receipts that add up, resume from the checkpointed
block, holds and lock waits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from retention.blocksweep import MAX_BLOCKS, MIN_BLOCKS, BlockSizer
from retention.bulk import SWEEP_KEY
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker
from tests.integration.test_purge import _setup
from tests.support import registry, surviving_rows

SMALL = {"sweep_blocks": 2}  # a few blocks per batch: many batches on test-sized data


def _receipted(engine: sa.Engine) -> tuple[int, int]:
    """(sum of receipted rows, receipts of block ranges)."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT coalesce(sum(rows), 0) FROM retention_receipts")
        total = int(rows.scalar_one())
        blocks = conn.execute(
            sa.text("SELECT count(*) FROM retention_receipts WHERE first_key LIKE 'blocks %'")
        ).scalar_one()
    return total, int(blocks)


@pytest.mark.parametrize(
    ("strategy", "extra", "sweeps"),
    [
        ("keyset", {}, False),
        ("blocks", {}, True),
        ("auto", {"block_sweep_min_rows": 0}, True),  # much expired: the sweep
        ("auto", {}, False),  # a table this small goes by keyset batches
        ("auto", {"block_sweep_min_rows": 0, "block_sweep_fraction": 1}, False),
    ],
)
def test_every_strategy_deletes_exactly_what_expired(
    pg_url: str, tmp_path: Path, strategy: str, extra: dict[str, float], sweeps: bool
) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=31)
    survivors = expect.survivors(scenario)

    report = purge(worker(pg_url, policy_dir, delete_strategy=strategy, **SMALL, **extra))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == survivors
    assert registry(engine) == expect.registry(scenario)
    deleted = len(scenario.events) - len(survivors)
    receipted, block_receipts = _receipted(engine)
    assert sum(o.rows for o in report.outcomes) == receipted == deleted
    assert (block_receipts > 0) is sweeps


def test_sqlite_ignores_the_block_strategy(sqlite_url: str, tmp_path: Path) -> None:
    scenario, expect, policy_dir, engine = _setup(sqlite_url, tmp_path, seed=32)
    report = purge(worker(sqlite_url, policy_dir, delete_strategy="blocks"))
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    assert _receipted(engine)[1] == 0


@pytest.mark.parametrize("stops", [1, 2, 3])
def test_a_stopped_sweep_resumes_from_its_block(pg_url: str, tmp_path: Path, stops: int) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=33)
    first = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=StopAfter(stops), **SMALL)
    )
    assert first.status is RunStatus.PARTIAL
    deleted = len(scenario.events) - len(surviving_rows(engine))
    assert 0 < deleted < len(scenario.events) - len(expect.survivors(scenario))
    assert _receipted(engine)[0] == deleted  # receipts commit with their batch
    with engine.connect() as conn:
        block = conn.execute(
            sa.text("SELECT last_block FROM retention_checkpoints WHERE target = :k"),
            {"k": SWEEP_KEY},
        ).scalar_one()
        seen = conn.exec_driver_sql("SELECT max(id) FROM retention_receipts").scalar_one()
    assert block > 0

    second = purge(worker(pg_url, policy_dir, delete_strategy="blocks", **SMALL))

    assert second.resumed and second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    total = len(scenario.events) - len(expect.survivors(scenario))
    assert _receipted(engine)[0] == total
    with engine.connect() as conn:
        resumed = [
            int(k.removeprefix("blocks ").split("-")[0])
            for (k,) in conn.execute(
                sa.text(
                    "SELECT first_key FROM retention_receipts "
                    "WHERE first_key LIKE 'blocks %' AND id > :seen"
                ),
                {"seen": seen},
            )
        ]
    assert resumed and min(resumed) >= block  # the resumed sweep began at its checkpoint


def test_a_hold_added_before_the_resume_is_kept(pg_url: str, tmp_path: Path) -> None:
    scenario, _, policy_dir, engine = _setup(pg_url, tmp_path, seed=34)
    p = scenario.project_ids()
    purge(worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=StopAfter(2), **SMALL))
    before = surviving_rows(engine)
    # project 0's logs put on hold before the resume: its rows that are left stay
    (policy_dir / "hold.toml").write_text(
        f'[[holds]]\nproject = "{p[0]}"\nobject_type = "project_logs"\nreason = "audit"\n'
    )
    report = purge(worker(pg_url, policy_dir, delete_strategy="blocks", **SMALL))
    assert report.status is RunStatus.SUCCEEDED
    left = {
        e["id"]
        for e in scenario.events
        if e["project_id"] == p[0] and e["object_type"] == "project_logs"
    }
    after = surviving_rows(engine)
    assert left & before == left & after  # nothing of the held target went in the resume
    assert after < before  # the other targets did finish


@contextmanager
def _locked(url: str, row_id: str) -> Iterator[sa.Connection]:
    """Another session holding a row lock on one row until it rolls back."""
    engine = sa.create_engine(engine_for(url).url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1 FROM events WHERE id = %(i)s FOR UPDATE", {"i": row_id})
        try:
            yield conn
        finally:
            conn.rollback()
    engine.dispose()


def test_a_locked_row_makes_the_sweep_wait_then_give_up_resumably(
    pg_url: str, tmp_path: Path
) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=35)
    expired = sorted({e["id"] for e in scenario.events} - expect.survivors(scenario))
    settings = dict(delete_strategy="blocks", lock_timeout="0.2s", lock_retries=2, **SMALL)
    with _locked(pg_url, expired[len(expired) // 2]):
        stuck = purge(worker(pg_url, policy_dir, **settings))
    assert stuck.status is RunStatus.PARTIAL
    assert sum(o.lock_waits for o in stuck.outcomes) == 3
    assert any("lock waits" in o.note for o in stuck.outcomes)
    deleted = len(scenario.events) - len(surviving_rows(engine))
    assert _receipted(engine)[0] == deleted

    done = purge(worker(pg_url, policy_dir, **settings))

    assert done.resumed and done.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)


@given(st.integers(MIN_BLOCKS, MAX_BLOCKS), st.floats(0.0001, 100), st.floats(0.01, 5))
def test_block_sizer_stays_in_bounds_and_moves_toward_the_target(
    blocks: int, seconds: float, target: float
) -> None:
    sizer = BlockSizer(blocks=blocks, target=target)
    sizer.update(seconds)
    assert MIN_BLOCKS <= sizer.blocks <= MAX_BLOCKS
    assert sizer.blocks <= max(MIN_BLOCKS, blocks * 2)  # grows at most 2x a batch
    assert sizer.blocks >= min(MAX_BLOCKS, int(blocks / 4))  # shrinks at most 4x
    if seconds > target * 1.01:
        assert sizer.blocks <= blocks
    elif seconds < target * 0.99:
        assert sizer.blocks >= blocks
