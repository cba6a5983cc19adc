"""Plan files read once: applying a plan looks up every target in it."""

from __future__ import annotations

import json
from pathlib import Path

from retention import planfile


def _document(targets: int) -> dict[str, object]:
    return planfile.seal(
        {
            "now": "2026-11-01T00:00:00+00:00",
            "newest_row": 7,
            "dry_run": True,
            "targets": [
                {"project_id": f"00000000-0000-4000-8000-{i:012d}", "object_type": kind}
                for i in range(targets)
                for kind in ("project_logs", "experiment")
            ],
        }
    )


def test_a_plans_targets_are_keyed_once(tmp_path: Path) -> None:
    """``targets`` is worked out once per plan file: at thousands of targets, building it
    for each lookup made applying a plan quadratic (12 s at 6,000 targets)."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_document(3)), encoding="utf-8")
    reviewed = planfile.parse(path.read_text(encoding="utf-8"), path)
    first = reviewed.targets
    assert reviewed.targets is first
    assert sorted(first) == sorted(
        f"00000000-0000-4000-8000-{i:012d}/{kind}"
        for i in range(3)
        for kind in ("project_logs", "experiment")
    )
    assert first["00000000-0000-4000-8000-000000000001/experiment"]["object_type"] == "experiment"
