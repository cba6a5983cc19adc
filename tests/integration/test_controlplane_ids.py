"""Control-plane reads that must fail closed (DESIGN §2, §6; README "Failing closed").

A duplicate id in a list read is a failure (exit 3), whatever spelling of the UUID the server
uses: otherwise one project can be listed both live and deleted, and the live entry wins, so a
deleted project's data is planned under the policies instead of being kept as an orphan.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retention.controlplane import ClientConfig, TokenSource
from retention.errors import ControlPlaneError, ExitCode
from retention.sources import ControlPlaneSource
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane, project, retention_automation
from tests.integration.helpers import purge, worker, write_policies
from tests.support import generate, insert, policy_toml, surviving_rows

P = uuid.UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")

# Spellings that uuid.UUID() (and so the payload parser) accepts as the same id.
SPELLINGS: dict[str, Callable[[uuid.UUID], str]] = {
    "hex": lambda u: u.hex,
    "braces": lambda u: "{" + str(u) + "}",
    "urn": lambda u: u.urn,
    "upper-hex": lambda u: u.hex.upper(),
}


def _source(fake: FakeControlPlane, token_file: Path, **config: Any) -> ControlPlaneSource:
    return ControlPlaneSource(
        config=ClientConfig(base_url=fake.url, **config),
        token=TokenSource(file=token_file),
        sleep=lambda _: None,
    )


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_a_project_listed_twice_under_two_uuid_spellings_fails_the_read(
    fake_cp: FakeControlPlane, token_file: Path, spelling: str
) -> None:
    """The same project id twice in GET /v1/project, once canonical and live, once in another
    spelling of the same UUID and deleted (on the next page), is a duplicate id: the read
    fails with ControlPlaneError (exit 3) instead of listing the project twice."""
    fake_cp.projects = [
        project(P, "alive"),
        {**project(P, "gone", deleted=True), "id": SPELLINGS[spelling](P)},
    ]
    with pytest.raises(ControlPlaneError, match="twice") as info:
        _source(fake_cp, token_file, page_size=1).load()
    assert info.value.exit_code == ExitCode.CONTROL_PLANE


def test_an_automation_listed_twice_under_two_uuid_spellings_fails_the_read(
    fake_cp: FakeControlPlane, token_file: Path
) -> None:
    """The same automation id twice in GET /v1/project_automation (canonical, then without
    hyphens) is a duplicate id: the read fails with ControlPlaneError (exit 3)."""
    automation = "a0000000-0000-4000-8000-00000000000a"
    fake_cp.projects = [project(P, "alpha")]
    fake_cp.automations = [
        retention_automation(P, "project_logs", 30, automation_id=automation),
        retention_automation(P, "project_logs", 2, automation_id=uuid.UUID(automation).hex),
    ]
    with pytest.raises(ControlPlaneError, match="twice"):
        _source(fake_cp, token_file, page_size=1).load()


def test_a_deleted_project_relisted_as_live_under_another_spelling_deletes_nothing(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    """End to end: the control plane lists project `gone` as deleted and, under the same UUID
    without hyphens, as live. The purge must fail closed (ControlPlaneError, exit 3) and
    delete nothing; it must not plan the deleted project under the 1-day default (the live
    spelling once won in split_orphans, and the project's old logs were deleted)."""
    scenario = generate(71, projects=2, events=400)
    live, gone = scenario.project_ids()
    insert(engine_for(db_url), scenario)
    fake_cp.projects = [
        project(live, "live"),
        project(gone, "gone", deleted=True),
        {**project(gone, "gone"), "id": gone.hex},
    ]
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 1}))
    w = worker(db_url, policies, api_url=fake_cp.url, service_token_file=token_file)
    with pytest.raises(ControlPlaneError):
        purge(w)
    assert len(surviving_rows(engine_for(db_url))) == 400
