"""Segments through the installed command: reports, sweep, restore, check, and SIGKILL."""

from __future__ import annotations

import json
import random
import shutil
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from retention.db import make_engine, parse_database_url, use_wal
from tests.acceptance.cli import clean_env, kill_when, run
from tests.conftest import PgServer, engine_for
from tests.stores import FileStore
from tests.support import NOW, Scenario, insert, policy_toml

P = UUID("30000000-0000-4000-8000-000000000003")


def _scenario(segments: int, store: FileStore) -> Scenario:
    """Log segments of one project: a third expired (60 days), a third unused, a third new."""
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(segments):
        kind = i % 3
        if kind == 0:
            row = s.add_segment(
                "project_logs", P, P, NOW - timedelta(days=90), NOW - timedelta(days=60), size=10
            )
        elif kind == 1:
            row = s.add_segment(
                "project_logs",
                P,
                P,
                NOW - timedelta(days=120),
                NOW - timedelta(days=100),
                size=10,
                state="unused",
                unused_at=NOW - timedelta(days=3),
            )
        else:
            row = s.add_segment(
                "project_logs", P, P, NOW - timedelta(days=5), NOW - timedelta(days=1), size=10
            )
        store.write(row["object_key"])
    for i in range(300):
        s.add_event("project_logs", P, P, NOW - timedelta(days=i % 100), f"r{i}")
    return s


def _env(url: str, policies: Path, store: FileStore, **extra: str) -> dict[str, str]:
    return clean_env(
        RETENTION_DATABASE_URL=url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_OBJECT_STORE_URL=store.url,
        RETENTION_LOG_LEVEL="WARNING",
        **extra,
    )


def _policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.toml").write_text(policy_toml(projects=[(P, {"project_logs": 30})]))
    return folder


def _index(url: str) -> dict[str, tuple[str, str]]:
    """object_key -> (segment id, state)."""
    database = parse_database_url(url)
    engine = make_engine(database, read_only=True) if database.is_sqlite else engine_for(url)
    try:
        with engine.connect() as conn:
            return {
                r[0]: (str(r[1]), r[2])
                for r in conn.exec_driver_sql("SELECT object_key, segment_id, state FROM segments")
            }
    finally:
        engine.dispose()


def test_reports_sweep_restore_and_check_commands(
    db_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    scenario = _scenario(30, file_store)
    insert(engine_for(db_url), scenario)
    policies = _policies(tmp_path)
    env = _env(db_url, policies, file_store)

    dry = run("purge", "--dry-run", "--format", "json", env=env)
    assert dry.code == 0, dry.stderr
    doc = json.loads(dry.stdout)
    (target,) = doc["targets"]
    assert (target["segments"], target["bytes"], target["straddling_segments"]) == (10, 100, 0)
    assert doc["unused_segments"] == {
        "segments": 10,
        "bytes": 100,
        "sweepable": 10,
        "sweepable_bytes": 100,
        "next_sweepable_at": None,
    }
    assert doc["totals"]["segments"] == 10 and doc["totals"]["bytes"] == 100

    done = run("purge", "--yes", "--allow-large-deletes", "--format", "json", env=env)
    assert done.code == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["targets"][0]["segments"] == 10  # marked
    assert doc["sweep"]["files"] == 10 and doc["sweep"]["failed"] == 0
    states = [state for _, state in _index(db_url).values()]
    assert states.count("unused") == 10 and states.count("live") == 10

    restored = run("restore", "--project", str(P), "--format", "json", env=env)
    assert restored.code == 0, restored.stderr
    assert json.loads(restored.stdout)["restored"] == 10
    text = run("restore", "--project", str(P), env=env)
    assert "No unused segment matched" in text.stdout

    purged_again = run("purge", "--yes", env=env)
    assert purged_again.code == 0, purged_again.stderr
    past_grace = env | {"RETENTION_GRACE_PERIOD": "0"}
    budget = run("sweep", "--max-runtime", "0s", "--format", "json", env=past_grace)
    assert budget.code == 5, budget.stderr  # spent before the first batch: resumable
    assert json.loads(budget.stdout)["status"] == "partial"
    assert json.loads(budget.stdout)["files"] == 0 and len(file_store.keys()) == 20
    swept = run("sweep", "--format", "json", env=past_grace)
    assert swept.code == 0, swept.stderr
    assert json.loads(swept.stdout)["files"] == 10
    assert len(file_store.keys()) == 10

    file_store.write("project_logs/stray.seg")
    check = run("segments", "check", "--format", "json", env=env)
    assert check.code == 0, check.stderr
    assert json.loads(check.stdout)["unindexed_files"] == ["project_logs/stray.seg"]


def test_command_errors(db_url: str, tmp_path: Path, file_store: FileStore) -> None:
    insert(engine_for(db_url), _scenario(6, file_store))
    policies = _policies(tmp_path)
    env = _env(db_url, policies, file_store)
    no_store = {k: v for k, v in env.items() if k != "RETENTION_OBJECT_STORE_URL"}
    result = run("sweep", env=no_store)
    assert result.code == 2 and "RETENTION_OBJECT_STORE_URL is not set" in result.stderr
    missing = env | {"RETENTION_OBJECT_STORE_URL": f"file://{tmp_path}/nope"}
    for args in (("sweep",), ("purge", "--yes", "--allow-large-deletes")):
        result = run(*args, env=missing)
        assert result.code == 4, result.stderr
        assert "object store file://" in result.stderr and "unavailable" in result.stderr
    bad = env | {"RETENTION_OBJECT_STORE_URL": "ftp://x/y"}
    assert run("sweep", env=bad).code == 2
    assert run("restore", "--project", "not-a-uuid", env=env).code == 2
    assert run("restore", env=env).code == 2  # --project or --segment is required
    assert all(state == "live" or state == "unused" for _, state in _index(db_url).values())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_sigkill_during_mark_and_sweep_then_rerun(
    backend: str, pg_server: PgServer, pg_template: str, sqlite_template: Path, tmp_path: Path
) -> None:
    stores = {name: FileStore(tmp_path / name) for name in ("killed", "calm")}
    for store in stores.values():
        store.root.mkdir()
    scenario = _scenario(1200, stores["killed"])
    for row in scenario.segments:
        stores["calm"].write(row["object_key"])
    if backend == "postgresql":
        name = f"seg_{int(time.time() * 1000)}"
        urls = {
            "killed": pg_server.create(name, template=pg_template),
            "calm": pg_server.create(name + "_c", template=pg_template),
        }
    else:
        urls = {}
        for key in ("killed", "calm"):
            path = tmp_path / f"{key}.sqlite3"
            shutil.copyfile(sqlite_template, path)
            urls[key] = f"sqlite:///{path}"
            # As 'retention db upgrade' leaves it: write-ahead logging, so the test's polling
            # reads never wait on (or starve behind) the purge's commits.
            use_wal(engine_for(urls[key]))
    for url in urls.values():
        insert(engine_for(url), scenario)
    policies = _policies(tmp_path)
    command = ["purge", "--yes", "--allow-large-deletes"]

    def env(key: str) -> dict[str, str]:
        return _env(
            urls[key],
            policies,
            stores[key],
            RETENTION_BATCH_SIZE="7",
            RETENTION_SWEEP_BATCH_SIZE="7",
            RETENTION_GRACE_PERIOD="0",
        )

    calm = run(*command, env=env("calm"))
    assert calm.code == 0, calm.stderr

    rng = random.Random(11)
    landed = 0
    # two kills while marking (unused count grows), two while sweeping (index shrinks)
    for _ in range(2):
        start = sum(1 for _, s in _index(urls["killed"]).values() if s == "unused")
        goal = start + rng.randint(5, 60)
        landed += kill_when(
            command,
            env("killed"),
            lambda goal=goal: (
                sum(1 for _, s in _index(urls["killed"]).values() if s == "unused") >= goal
            ),
        )
    for _ in range(2):
        goal = len(_index(urls["killed"])) - rng.randint(5, 60)
        landed += kill_when(
            command, env("killed"), lambda goal=goal: len(_index(urls["killed"])) <= goal
        )
    assert landed >= 2

    final = run(*command, env=env("killed"))
    assert final.code == 0, final.stderr
    killed_index, calm_index = _index(urls["killed"]), _index(urls["calm"])
    assert killed_index == calm_index
    assert set(killed_index) == stores["killed"].keys() == stores["calm"].keys()
    assert {s for _, s in killed_index.values()} == {"live"}
    assert len(killed_index) == 400  # only the new third is left
    if backend == "postgresql":
        pg_server.drop(name)
        pg_server.drop(name + "_c")
