"""Receipts an auditor can check, and holds that take effect mid-run."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from retention import engine as engine_module
from retention.errors import PolicyError
from retention.models import RunStatus
from tests.acceptance.cli import clean_env, run
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, generate, insert, policy_toml, surviving_rows


def _sequence_ids(url: str) -> dict[str, tuple[str, str, str, int, int]]:
    """Before the purge: (project, type, created, sequence_id, heap block) by row id.

    The heap block (PostgreSQL's ctid) places a row in a block-range sweep's batch.
    """
    engine = engine_for(url)
    block = "(ctid::text::point)[0]::bigint" if engine.dialect.name == "postgresql" else "-1"
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT id, project_id, object_type, created, sequence_id, {block} FROM events"
        ).all()
    engine.dispose()
    return {r[0]: (str(r[1]), r[2], str(r[3]), int(r[4]), int(r[5])) for r in rows}


@pytest.mark.parametrize("strategy", ["keyset", "blocks"])
def test_receipt_digests_match_the_deleted_keys(db_url: str, tmp_path: Path, strategy: str) -> None:
    scenario = generate(61, projects=3, events=900)
    insert(engine_for(db_url), scenario)
    with engine_for(db_url).begin() as conn:  # new row versions at the heap's end: the
        # heap order is no longer the key order that the digest is defined in
        conn.exec_driver_sql(
            "UPDATE events SET _xact_id = _xact_id WHERE sequence_id / 2 * 2 = sequence_id"
        )
    before = _sequence_ids(db_url)
    policies = write_policies(
        tmp_path / "p", policy_toml(defaults={"project_logs": 30, "dataset": 45})
    )
    report = purge(worker(db_url, policies, batch_size=17, delete_strategy=strategy))
    assert report.status is RunStatus.SUCCEEDED
    deleted_ids = set(before) - surviving_rows(engine_for(db_url))
    deleted = sorted(before[i][3] for i in deleted_ids)

    found = engine_module.receipts(worker(db_url, policies), action="delete")
    assert sum(r["rows"] for r in found) == len(deleted)
    swept = strategy == "blocks" and db_url.startswith("postgresql")
    assert all(r["first_key"].startswith("blocks ") is swept for r in found if r["rows"])
    # every receipt's digest is the SHA-256 of its batch's keys, recomputed here from the
    # keys that were deleted between its first and last key
    covered: list[int] = []
    for receipt in found:
        if not receipt["rows"]:
            continue
        first = int(receipt["first_key"].replace(":", "/").rpartition("/")[2])
        last = int(receipt["last_key"].replace(":", "/").rpartition("/")[2])
        project, object_type = receipt["project_id"], receipt["object_type"]
        keys = sorted(
            before[i][3]
            for i in deleted_ids
            if before[i][0] == project
            and before[i][1] == object_type
            and _in_batch(before[i], receipt)
        )
        assert len(keys) == receipt["rows"]
        digest = hashlib.sha256("".join(f"{k}\n" for k in keys).encode()).hexdigest()
        assert receipt["keys_digest"] == digest
        assert first in keys and last in keys
        covered.extend(keys)
    assert sorted(covered) == deleted  # each deleted key in exactly one receipt


def _in_batch(row: tuple[str, str, str, int, int], receipt: dict) -> bool:
    """Keyset batches cover (created, sequence_id) from first to last key; a block sweep's
    batch ("blocks LO-HI:...") covers the heap blocks LO to HI."""
    if receipt["first_key"].startswith("blocks "):
        lo, _, hi = receipt["first_key"].removeprefix("blocks ").partition(":")[0].partition("-")
        return int(lo) <= row[4] < int(hi)
    first_created, _, first_seq = receipt["first_key"].rpartition("/")
    last_created, _, last_seq = receipt["last_key"].rpartition("/")
    key = (_norm(row[2]), row[3])
    return (_norm(first_created), int(first_seq)) <= key <= (_norm(last_created), int(last_seq))


def _norm(text: str) -> str:
    from datetime import UTC, datetime

    value = datetime.fromisoformat(text.replace(" ", "T").replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def test_receipts_command_filters_and_formats(pg_url: str, tmp_path: Path) -> None:
    scenario = generate(62, projects=2, events=400)
    a, b = scenario.project_ids()
    insert(engine_for(pg_url), scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    purge(worker(pg_url, policies))
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
    )
    result = run("receipts", "--project", str(a), "--format", "json", env=env)
    assert result.code == 0, result.stderr
    found = json.loads(result.stdout)
    expected = sum(
        1
        for e in scenario.events
        if e["project_id"] == a
        and e["object_type"] == "project_logs"
        and e["created"] < NOW - timedelta(days=30)
    )
    assert found and {r["project_id"] for r in found} == {str(a)}
    assert sum(r["rows"] for r in found) == expected
    sample = found[0]
    assert sample["retention_days"] == 30.0
    assert sample["cutoff"] == (NOW - timedelta(days=30)).isoformat()
    assert "local-default" in sample["policy_source"] and sample["action"] == "delete"
    assert sample["run_id"] == 1 and sample["keys_digest"]

    as_csv = run("receipts", "--format", "csv", env=env)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {r["project_id"] for r in rows} == {str(a), str(b)}
    assert rows[0].keys() >= {
        "run_id",
        "project_id",
        "object_type",
        "cutoff",
        "rows",
        "segments",
        "bytes",
        "keys_digest",
    }
    later = run("receipts", "--since", "2999-01-01T00:00:00Z", "--format", "json", env=env)
    assert json.loads(later.stdout) == []
    table = run("receipts", "--object-type", "project_logs", env=env)
    assert table.code == 0 and table.stdout.strip().endswith(f"{len(rows)} receipts")
    assert run("receipts", "--since", "yesterday", env=env).code == 2


def test_receipts_survive_the_deleted_data(db_url: str, tmp_path: Path) -> None:
    scenario = generate(63, projects=1, events=200)
    insert(engine_for(db_url), scenario)
    policies = write_policies(
        tmp_path / "p",
        policy_toml(defaults={"project_logs": 1, "experiment": 1, "dataset": 1}, floor=0.5),
    )
    purge(worker(db_url, policies))
    with engine_for(db_url).begin() as conn:
        conn.exec_driver_sql("DELETE FROM events")
        conn.exec_driver_sql("DELETE FROM objects")
    found = engine_module.receipts(worker(db_url, policies))
    assert sum(r["rows"] for r in found) > 0


def test_holds_command_lists_active_and_expired(tmp_path: Path) -> None:
    project = "5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11"
    policies = write_policies(
        tmp_path / "p",
        f"""
[[holds]]
project = "{project}"
reason = "legal matter 2026-14"
expires = 2027-01-31

[[holds]]
project = "{project}"
object_type = "experiment"
object_id = "0b7e0000-0000-4000-8000-00000000e001"
reason = "baseline"

[[holds]]
project = "{project}"
reason = "old matter"
expires = 2020-01-01
""",
    )
    env = clean_env(RETENTION_POLICY_DIR=str(policies), RETENTION_NOW=NOW.isoformat())
    result = run("holds", env=env)
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{project}: legal matter 2026-14 (until 2027-02-01T00:00:00+00:00; {policies}/"
        "policy.toml)",
        f"{project}/experiment/0b7e0000-0000-4000-8000-00000000e001: baseline (no expiry; "
        f"{policies}/policy.toml)",
        "2 active holds",
    ]
    everything = json.loads(run("holds", "--all", "--format", "json", env=env).stdout)
    assert [h["active"] for h in everything] == [True, True, False]
    assert everything[2]["reason"] == "old matter"


def _two_projects(
    url: str, tmp_path: Path, seed: int, events: int, hold_at: int
) -> tuple[UUID, UUID, Path, dict[UUID, set[str]], Callable[[], bool]]:
    """Two projects' logs expiring after 5 days: (held, other, policy folder, expired ids
    by project, a should_stop that writes a hold on ``held`` at its ``hold_at``-th call)."""
    scenario = generate(seed, projects=2, events=events)
    held, other = sorted(scenario.project_ids())  # targets run in project order: held first
    insert(engine_for(url), scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 5}))
    expired = {
        p: {
            e["id"]
            for e in scenario.events
            if e["project_id"] == p
            and e["object_type"] == "project_logs"
            and e["created"] < NOW - timedelta(days=5)
        }
        for p in (held, other)
    }
    calls = {"n": 0}

    def add_hold() -> bool:
        calls["n"] += 1
        if calls["n"] == hold_at:
            (policies / "legal.toml").write_text(
                f'[[holds]]\nproject = "{held}"\nreason = "legal matter arrived mid-run"\n'
            )
        return False

    return held, other, policies, expired, add_hold


def test_a_hold_added_during_the_run_stops_that_target_at_the_next_batch(
    db_url: str, tmp_path: Path
) -> None:
    # at the third check the first target has done two batches: a hold arrives
    held, other, policies, expired, add_hold_after_two_batches = _two_projects(
        db_url, tmp_path, 64, 1200, hold_at=3
    )

    report = purge(worker(db_url, policies, batch_size=10, should_stop=add_hold_after_two_batches))
    assert report.status is RunStatus.SUCCEEDED
    outcome = next(
        o
        for o in report.outcomes
        if o.target.project_id == held and o.target.object_type == "project_logs"
    )
    assert outcome.rows == 20  # two batches, then the hold stopped it
    assert outcome.note == "held during the run: legal matter arrived mid-run"
    left = surviving_rows(engine_for(db_url))
    assert len(expired[held] & left) == len(expired[held]) - 20
    # the other project is not held: all its expired rows are gone
    other_outcome = next(
        o
        for o in report.outcomes
        if o.target.project_id == other and o.target.object_type == "project_logs"
    )
    assert other_outcome.rows == len(expired[other])
    assert not expired[other] & left


def test_an_object_hold_added_during_the_run_keeps_that_object(db_url: str, tmp_path: Path) -> None:
    scenario = generate(65, projects=1, events=1500)
    (project,) = scenario.project_ids()
    datasets = sorted(
        (o["object_id"] for o in scenario.objects if o["object_type"] == "dataset"), key=str
    )
    insert(engine_for(db_url), scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"dataset": 5}))
    calls = {"n": 0}
    keep: UUID = datasets[1]

    def hold_one_dataset() -> bool:
        calls["n"] += 1
        if calls["n"] == 2:
            (policies / "hold.toml").write_text(
                f'[[holds]]\nproject = "{project}"\nobject_type = "dataset"\n'
                f'object_id = "{keep}"\nreason = "keep this one"\n'
            )
        return False

    report = purge(worker(db_url, policies, batch_size=5, should_stop=hold_one_dataset))
    assert report.status is RunStatus.SUCCEEDED
    left = surviving_rows(engine_for(db_url))
    expired_kept = {
        e["id"]
        for e in scenario.events
        if e["object_id"] == keep and e["created"] < NOW - timedelta(days=5)
    }
    outcome = next(o for o in report.outcomes if o.target.object_type == "dataset")
    gone_of_kept = expired_kept - left
    assert len(gone_of_kept) <= 5  # at most the first batch, before the hold arrived
    assert outcome.rows == sum(
        1
        for e in scenario.events
        if e["object_type"] == "dataset" and e["created"] < NOW - timedelta(days=5)
    ) - (len(expired_kept) - len(gone_of_kept))


@pytest.mark.parametrize("how", ["unmounted", "emptied"])
def test_a_policy_folder_gone_during_the_run_stops_it(
    db_url: str, tmp_path: Path, how: str
) -> None:
    """Holds that cannot be read are not taken as no holds: the folder unmounted (or
    removed) during the run, or left there empty (a volume unmounted over its mount
    point), stops it at the next batch (exit 2), and the held project's rows stay, as do
    the rows of every batch not yet run."""
    scenario = generate(66, projects=2, events=1200)
    _first, second = sorted(scenario.project_ids())
    insert(engine_for(db_url), scenario)
    policies = write_policies(
        tmp_path / "p",
        policy_toml(
            defaults={"project_logs": 5},
            holds=[{"project": str(second), "reason": "legal matter"}],
        ),
    )
    before = surviving_rows(engine_for(db_url))
    held = {e["id"] for e in scenario.events if e["project_id"] == second}
    calls = {"n": 0}

    def lose_it_after_two_batches() -> bool:
        calls["n"] += 1
        if calls["n"] == 3:
            if how == "unmounted":
                policies.rename(tmp_path / "unmounted")
            else:
                (policies / "policy.toml").unlink()
        return False

    message = "is gone during the run" if how == "unmounted" else "lost all its"
    with pytest.raises(PolicyError, match=message):
        purge(worker(db_url, policies, batch_size=10, should_stop=lose_it_after_two_batches))
    left = surviving_rows(engine_for(db_url))
    assert held <= left
    assert len(before - left) == 20  # the two batches before the folder went


@pytest.mark.parametrize("connections", [1, 2])
def test_a_hold_added_during_a_block_sweep_stops_its_target_at_the_next_batch(
    pg_url: str, tmp_path: Path, connections: int
) -> None:
    """The block sweep re-applies holds only when they change (a batch must not cost per
    target of the run): a hold that arrives mid-sweep still takes its target out of every
    later batch, on the leader's connection and a helper's. The held project keeps every
    expired row the batches before the hold did not reach; the other goes entirely."""
    held, other, policies, expired, add_hold_after_some_batches = _two_projects(
        pg_url, tmp_path, 66, 1500, hold_at=6
    )

    report = purge(
        worker(
            pg_url,
            policies,
            delete_strategy="blocks",
            sweep_blocks=1,
            sweep_unit_blocks=4,
            sweep_connections=connections,
            batch_target_seconds=0.0001,  # the sizer stays at one block a batch
            should_stop=add_hold_after_some_batches,
        )
    )
    assert report.status is RunStatus.SUCCEEDED
    by_target = {
        (o.target.project_id, o.target.object_type): o
        for o in report.outcomes
        if o.target.object_type == "project_logs"
    }
    outcome = by_target[(held, "project_logs")]
    assert outcome.note == "held during the run: legal matter arrived mid-run"
    left = surviving_rows(engine_for(pg_url))
    gone = expired[held] - left
    assert 0 < len(gone) < len(expired[held]) // 2  # a few batches, then nothing more
    assert outcome.rows == len(gone)
    assert by_target[(other, "project_logs")].rows == len(expired[other])
    assert not expired[other] & left
