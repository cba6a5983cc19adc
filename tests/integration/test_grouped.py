"""Small targets many per transaction (PostgreSQL, ``RETENTION_DELETE_STRATEGY=auto``):
the same exact result and receipts as target by target, in fewer transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from retention import blocksweep
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker
from tests.integration.test_plans import _make_plan
from tests.integration.test_purge import _setup
from tests.support import registry, surviving_rows


def _delete_receipts(engine: sa.Engine) -> list[tuple[str, str, int, str]]:
    """(target, transaction id, rows, first key) of every row receipt, oldest first."""
    with engine.connect() as conn:
        return [
            (f"{p}/{t}", str(x), int(n), str(k))
            for p, t, x, n, k in conn.exec_driver_sql(
                "SELECT project_id, object_type, xmin::text, rows, first_key "
                "FROM retention_receipts WHERE action = 'delete' ORDER BY id"
            )
        ]


@pytest.mark.parametrize("strategy", ["auto", "keyset", "auto, a reviewed plan"])
def test_small_targets_share_transactions_with_the_same_result(
    pg_url: str, tmp_path: Path, strategy: str
) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=41)
    settings: dict[str, Any] = {
        "delete_strategy": strategy.partition(",")[0],
        "batch_size": 100_000,
    }
    reviewed = None
    if "plan" in strategy:  # the plan's list of experiments does not matter to logs rows
        reviewed = _make_plan(worker(pg_url, policy_dir), tmp_path / "plan.json")
    report = purge(worker(pg_url, policy_dir, **settings), plan_file=reviewed)

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    assert registry(engine) == expect.registry(scenario)
    receipts = _delete_receipts(engine)
    deleted = len(scenario.events) - len(expect.survivors(scenario))
    assert sum(n for _, _, n, _ in receipts) == sum(o.rows for o in report.outcomes) == deleted
    logs_and_datasets = [r for r in receipts if not r[0].endswith("/experiment")]
    assert len({target for target, *_ in logs_and_datasets}) == len(logs_and_datasets) > 2
    transactions = {x for _, x, _, _ in logs_and_datasets}
    # auto: every small target's rows in one transaction; keyset: one per target
    assert len(transactions) == (len(logs_and_datasets) if strategy == "keyset" else 1)


def test_groups_are_bounded_by_the_batch_size(pg_url: str, tmp_path: Path) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=42)
    report = purge(worker(pg_url, policy_dir, batch_size=150))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    receipts = _delete_receipts(engine)
    rows_by_transaction: dict[str, int] = {}
    for _, x, n, _ in receipts:
        rows_by_transaction[x] = rows_by_transaction.get(x, 0) + n
    assert max(rows_by_transaction.values()) <= 150
    deleted = len(scenario.events) - len(expect.survivors(scenario))
    assert sum(rows_by_transaction.values()) == deleted


@pytest.mark.parametrize("stops", [1, 2, 3])
def test_a_stopped_run_resumes_grouped_targets_exactly(
    pg_url: str, tmp_path: Path, stops: int
) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=43)
    first = purge(worker(pg_url, policy_dir, batch_size=200, should_stop=StopAfter(stops)))
    assert first.status is RunStatus.PARTIAL
    second = purge(worker(pg_url, policy_dir, batch_size=200))
    assert second.resumed and second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    receipts = _delete_receipts(engine)
    deleted = len(scenario.events) - len(expect.survivors(scenario))
    assert sum(n for _, _, n, _ in receipts) == deleted


@contextmanager
def _locked_row(url: str, project_id: str) -> Iterator[None]:
    """Hold a row lock on one expired log row of ``project_id``."""
    with engine_for(url).connect() as conn:
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql(
            "SELECT 1 FROM events WHERE project_id = %(p)s AND object_type = 'project_logs' "
            "ORDER BY created LIMIT 1 FOR UPDATE",
            {"p": project_id},
        )
        yield
        conn.exec_driver_sql("ROLLBACK")


def test_a_locked_group_falls_back_to_one_target_at_a_time(pg_url: str, tmp_path: Path) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=44)
    locked = str(scenario.project_ids()[0])  # 30 days: its oldest log row has expired
    with _locked_row(pg_url, locked):
        report = purge(
            worker(
                pg_url,
                policy_dir,
                batch_size=100_000,
                lock_timeout="0.2s",
                lock_retries=1,
            )
        )
    assert report.status is RunStatus.PARTIAL
    notes = {o.target.key: o.note for o in report.outcomes if o.note}
    assert list(notes) == [f"{locked}/project_logs"]
    assert "gave up" in notes[f"{locked}/project_logs"]
    # every other logs and dataset target went, one transaction each (the experiment
    # targets are a group of their own, which the lock did not stop)
    receipts = _delete_receipts(engine)
    alone = [r for r in receipts if not r[0].endswith("/experiment")]
    assert len({x for _, x, _, _ in alone}) == len(alone)
    together = [r for r in receipts if r[0].endswith("/experiment") and r[2]]
    assert len({x for _, x, _, _ in together}) < len(together)
    assert not any(t.startswith(locked + "/project_logs") for t, *_ in receipts)

    again = purge(worker(pg_url, policy_dir))
    assert again.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)


def _expired_by_target(scenario: Any, survivors: set[str]) -> dict[str, int]:
    expired: dict[str, int] = {}
    for e in scenario.events:
        if e["id"] not in survivors and e["object_type"] != "experiment":
            key = f"{e['project_id']}/{e['object_type']}"
            expired[key] = expired.get(key, 0) + 1
    return expired


@pytest.mark.parametrize("limit", ["rows per receipt", "max targets"])
def test_auto_sweeps_only_targets_worth_it(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    """With the block sweep chosen, only targets with enough expired rows per expected
    batch, and at most SWEEP_MAX_TARGETS of the largest, are swept; the rest go by index
    (grouped when small: one receipt each). Swept, a target with few rows spread over the
    heap gets a receipt in nearly every batch, and thousands of them (projects) made each
    batch's bookkeeping cost more than its deletes. The result is exact either way."""
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=44)
    survivors = expect.survivors(scenario)
    expired = _expired_by_target(scenario, survivors)
    ranked = sorted(expired, key=lambda k: (-expired[k], k))
    if limit == "rows per receipt":  # one expected batch: at least the median's rows
        median = expired[ranked[len(ranked) // 2]]
        monkeypatch.setattr(blocksweep, "SWEEP_BATCH_ROWS", sum(expired.values()))
        monkeypatch.setattr(blocksweep, "SWEEP_ROWS_PER_RECEIPT", median)
        wanted = {k for k, n in expired.items() if n >= median}
    else:
        monkeypatch.setattr(blocksweep, "SWEEP_MAX_TARGETS", 2)
        monkeypatch.setattr(blocksweep, "SWEEP_ROWS_PER_RECEIPT", 0)
        wanted = set(ranked[:2])
    assert 0 < len(wanted) < len(expired)
    batch = sorted(expired.values())[len(expired) // 2]
    report = purge(
        worker(
            pg_url,
            policy_dir,
            batch_size=batch,
            block_sweep_min_rows=0,
            block_sweep_fraction=0,
            sweep_blocks=2,
        )
    )

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == survivors
    receipts = _delete_receipts(engine)
    assert {t for t, _, _, key in receipts if key.startswith("blocks ")} == wanted
    by_target: dict[str, int] = {}
    for target, _, n, _ in receipts:
        if not target.endswith("/experiment"):
            by_target[target] = by_target.get(target, 0) + n
    assert by_target == expired
    for key, n in expired.items():
        if key not in wanted and n <= batch:  # grouped: one receipt
            assert sum(1 for t, *_ in receipts if t == key) == 1, key


def test_existing_checkpoints_finds_exactly_the_runs_targets(pg_url: str, tmp_path: Path) -> None:
    """Which of a group's targets have a checkpoint in the run, whatever the keys spell."""
    from retention import state

    _, _, policy_dir, engine = _setup(pg_url, tmp_path, seed=45)
    report = purge(worker(pg_url, policy_dir))
    assert report.run_id is not None
    keys = [o.target.key for o in report.outcomes if o.rows or o.objects]
    assert keys
    odd = ['x"y/z', "back\\slash", "{brace},comma"]
    with engine.connect() as conn:
        found = state.existing_checkpoints(conn, report.run_id, [*keys, *odd])
        assert found == set(keys)
        assert state.existing_checkpoints(conn, report.run_id + 1, keys) == set()
