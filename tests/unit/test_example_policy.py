"""The example shipped in policies/ parses, and changes nothing while commented out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from retention.models import ObjectType, SourceKind
from retention.policyfiles import load_policy_dir, load_policy_file

EXAMPLE = Path(__file__).resolve().parents[2] / "policies" / "example.toml"


def test_example_as_shipped_changes_nothing() -> None:
    policy_set = load_policy_dir(EXAMPLE.parent)
    assert policy_set.rules == () and policy_set.holds == ()
    assert policy_set.min_retention_days is None


def test_example_uncommented_is_valid(tmp_path: Path) -> None:
    lines = [
        line[2:] if line.startswith("# ") else line
        for line in EXAMPLE.read_text().splitlines()
        if not line.startswith("##")
    ]
    path = tmp_path / "example.toml"
    path.write_text("\n".join(lines))
    policy_set = load_policy_file(path)
    rules = {(r.kind, r.project_id, r.object_type): r.days for r in policy_set.rules}
    project = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
    assert rules == {
        (SourceKind.LOCAL_DEFAULT, None, ObjectType.PROJECT_LOGS): 90,
        (SourceKind.LOCAL_DEFAULT, None, ObjectType.EXPERIMENT): 365,
        (SourceKind.LOCAL_DEFAULT, None, ObjectType.DATASET): 180,
        (SourceKind.LOCAL_PROJECT, project, ObjectType.PROJECT_LOGS): 30,
        (SourceKind.LOCAL_PROJECT, project, ObjectType.DATASET): 14,
    }
    (hold,) = policy_set.holds
    assert hold.reason == "legal matter 2026-14"
    assert hold.expires == datetime(2027, 2, 1, tzinfo=UTC)
    assert policy_set.min_retention_days == 1
