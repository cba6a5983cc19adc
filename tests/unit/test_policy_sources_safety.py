"""Policy sources that must never widen a rule or lose a hold: an org automation naming a
project, a hold file rewritten with the same size and mtime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from uuid import UUID

from retention.automations import parse_automations
from retention.errors import ControlPlaneError
from retention.policyfiles import HoldWatcher

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
ORG_AUTOMATION = "b0000000-0000-4000-8000-00000000000b"


def _org_item(**extra: Any) -> dict[str, Any]:
    return {
        "id": ORG_AUTOMATION,
        "org_id": "0a0a0a0a-0000-4000-8000-000000000001",
        "user_id": None,
        "created": "2026-02-01T00:00:00Z",
        "name": "checkout datasets 3d",
        "description": None,
        "config": {"event_type": "retention", "object_type": "dataset", "retention_days": 3},
        **extra,
    }


def test_an_org_automation_item_scoped_to_a_project_never_becomes_org_wide() -> None:
    """An item from GET /v1/org_automation that carries a project_id (the README assumes
    such items have none) is not read as an org-wide rule: either the read fails closed
    (ControlPlaneError, exit 3) or the rule stays scoped to that project. (It was once read
    as a 3-day dataset rule for every project in the org.)"""
    try:
        rules, skipped = parse_automations([_org_item(project_id=str(P1))], org=True)
    except ControlPlaneError:
        return
    assert skipped == 0
    assert [(r.project_id, r.days) for r in rules] == [(P1, 3.0)]


HOLD = f'[[holds]]\nproject = "{P1}"\nreason = "legal"\nexpires = {{}}\n'


def test_a_hold_file_rewritten_with_the_same_size_and_mtime_is_read_again(
    tmp_path: Path,
) -> None:
    """HoldWatcher re-reads a policy file whose content changed during the run, even when the
    new content has the same size and the same modification time (a coarse-timestamp file
    system, or a copy that preserves mtime such as `cp -p`): an expired hold renewed mid-run
    (expires 2020-01-01 -> 2099-01-01) is active at the next batch. (A watcher keyed only
    on name, mtime and size kept returning the stale, expired hold.)"""
    path = tmp_path / "holds.toml"
    path.write_text(HOLD.format("2020-01-01"), encoding="utf-8")
    before = path.stat()
    watcher = HoldWatcher(tmp_path)
    assert [h.expires.year for h in watcher() if h.expires] == [2020]

    path.write_text(HOLD.format("2099-01-01"), encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size

    assert [h.expires.year for h in watcher() if h.expires] == [2099]
