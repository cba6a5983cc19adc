"""The installed command with a control plane: reports, orphans, explain, check."""

from __future__ import annotations

import json
from pathlib import Path

from tests.acceptance.cli import clean_env, run
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane, project, retention_automation
from tests.support import NOW, generate, insert


def test_dry_run_report_lists_orphans_and_purge_orphans_deletes(
    pg_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    scenario = generate(51, projects=3, events=900)
    live, deleted, unknown = scenario.project_ids()
    insert(engine_for(pg_url), scenario)
    fake_cp.projects = [project(live, "live"), project(deleted, "gone", deleted=True)]
    fake_cp.automations = [retention_automation(live, "project_logs", 15, name="logs 15d")]
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "none.toml").write_text("")  # the control plane's policies only
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(tmp_path / "policies"),
        RETENTION_NOW=NOW.isoformat(),
        BRAINTRUST_API_URL=fake_cp.url,
        RETENTION_SERVICE_TOKEN_FILE=str(token_file),
    )
    rows = {p: sum(1 for e in scenario.events if e["project_id"] == p) for p in (deleted, unknown)}

    dry = run("purge", "--dry-run", "--format", "json", env=env)
    assert dry.code == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["orphans"] == [
        {"project_id": str(p), "reason": reason, "rows": rows[p], "segments": 0, "bytes": 0}
        for p, reason in sorted([(deleted, "deleted"), (unknown, "unknown")])
    ]
    assert [(t["project_id"], t["object_type"]) for t in doc["targets"]] == [
        (str(live), "project_logs")
    ]
    assert "logs 15d" in doc["targets"][0]["source"]

    table = run("purge", "--dry-run", env=env)
    assert "Orphaned projects (left out; --purge-orphans deletes them):" in table.stdout
    assert f"{deleted} (deleted): {rows[deleted]:,} rows" in table.stdout

    done = run(
        "purge", "--yes", "--allow-large-deletes", "--purge-orphans", "--format", "json", env=env
    )
    assert done.code == 0, done.stderr
    doc = json.loads(done.stdout)
    cutoff = NOW.timestamp() - 86400  # the safety floor keeps the last day of orphans
    kept_orphan_rows = sum(
        1
        for e in scenario.events
        if e["project_id"] in (deleted, unknown)
        and (
            e["created"].timestamp() >= cutoff
            if e["object_type"] != "experiment"
            else next(
                o["created"] for o in scenario.objects if o["object_id"] == e["object_id"]
            ).timestamp()
            >= cutoff
        )
    )
    engine = engine_for(pg_url)
    with engine.connect() as conn:
        remaining = conn.exec_driver_sql(
            "SELECT count(*) FROM events WHERE project_id IN (%s, %s)",
            (str(deleted), str(unknown)),
        ).scalar()
    engine.dispose()
    assert remaining == kept_orphan_rows


def test_controlplane_check_prints_what_it_found(
    tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    p = "5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11"
    fake_cp.projects = [
        project(p, "a"),
        project("6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d", "b", deleted=True),
    ]
    fake_cp.automations = [retention_automation(p, "dataset", 7)]
    env = clean_env(
        BRAINTRUST_API_URL=fake_cp.url,
        RETENTION_SERVICE_TOKEN_FILE=str(token_file),
        BRAINTRUST_ORG_NAME="acme",
    )
    result = run("controlplane", "check", env=env)
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"control plane: {fake_cp.url} (acme)",
        f"token: the token file {token_file} (RETENTION_SERVICE_TOKEN_FILE): accepted",
        "projects: 2 (1 live, 1 deleted)",
        "retention automations: 1 project",
        "org retention automations: none (the server has no /v1/org_automation)",
        "other automations (ignored): 0",
        "requests: 5",
    ]


def test_check_of_a_token_that_sees_no_projects_is_exit_3(
    fake_cp: FakeControlPlane, token_file: Path
) -> None:
    """A token that lists nothing (another organization's, or scoped to nothing) would make
    every project in the data plane an orphan: the check says so and fails."""
    env = clean_env(BRAINTRUST_API_URL=fake_cp.url, RETENTION_SERVICE_TOKEN_FILE=str(token_file))
    result = run("controlplane", "check", env=env)
    assert result.code == 3, result.stderr
    assert "projects: 0 (0 live, 0 deleted)" in result.stdout
    assert result.stderr.strip().splitlines() == [
        "retention: error: the control plane lists no projects for this token: is it this "
        "organization's token? (a run would then keep every project's data as an orphan's)"
    ]
