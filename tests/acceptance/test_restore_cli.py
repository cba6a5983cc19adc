"""``retention restore``: its exit code says so when a segment could not come back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from tests.acceptance.cli import clean_env, run
from tests.conftest import engine_for
from tests.stores import FileStore
from tests.support import Scenario, insert, policy_toml, segment_states

P = UUID("30000000-0000-4000-8000-000000000003")


def test_restore_of_a_segment_whose_file_is_gone_does_not_exit_0(
    db_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    """`retention restore --segment ID` for a segment marked an hour ago (in grace) whose
    file is no longer in the store cannot restore it: it prints "were not restored" but
    exits 0, so an operator's script takes it as restored. Expected: a non-zero exit."""
    real = datetime.now(UTC)
    s = Scenario()
    s.add_object("project_logs", P, P, real - timedelta(days=400))
    kept = s.add_segment(
        "project_logs", P, P, real - timedelta(days=5), real - timedelta(days=1)
    )  # live, its file there (the store is the data plane's)
    gone = s.add_segment(
        "project_logs",
        P,
        P,
        real - timedelta(days=90),
        real - timedelta(days=60),
        state="unused",
        unused_at=real - timedelta(hours=1),
    )
    insert(engine_for(db_url), s)
    file_store.write(kept["object_key"])  # not the unused one: its file is gone
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.toml").write_text(policy_toml(projects=[(P, {"project_logs": 30})]))
    env = clean_env(
        RETENTION_DATABASE_URL=db_url,
        RETENTION_POLICY_DIR=str(folder),
        RETENTION_OBJECT_STORE_URL=file_store.url,
        RETENTION_LOG_LEVEL="WARNING",
    )
    result = run("restore", "--segment", str(gone["segment_id"]), "--format", "json", env=env)
    doc = json.loads(result.stdout)
    assert doc["restored"] == 0 and doc["missing"] == [str(gone["segment_id"])]
    assert segment_states(engine_for(db_url))[str(gone["segment_id"])][0] == "unused"
    assert result.code != 0, "restore exit 0 though the segment could not be restored"
