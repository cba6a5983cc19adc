"""The installed command against the fake control plane, on PostgreSQL (DESIGN §5-§6, issue 3).

Each fault that exhausts the retries or cannot be retried ends every planning command with
exit 3, one error line, no traceback, and not one row deleted. Every run in this file has its
stdout and stderr scanned for the tokens in play: a token never appears in any output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from tests.acceptance.cli import Result, clean_env, run
from tests.conftest import engine_for
from tests.fakecp import (
    FakeControlPlane,
    logs_alert_automation,
    project,
    retention_automation,
)
from tests.support import NOW, Expect, Scenario, generate, insert, surviving_rows

PROJECTS = "v1/project"
AUTOMATIONS = "v1/project_automation"
ORG = "v1/org_automation"
MAX_ATTEMPTS = 3
WRONG_TOKEN = "wrong-token-4f1b9c7e2d"
DELETED_PROJECT = UUID("dddddddd-0000-4000-8000-00000000000d")

PLANNING_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("purge", "--yes", "--allow-large-deletes"),
    ("purge", "--dry-run"),
    ("policies", "--explain"),
)


@dataclass
class Setup:
    url: str
    env: dict[str, str]
    fake: FakeControlPlane
    token_file: Path
    scenario: Scenario
    secrets: set[str]

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        """Run the command; every run is scanned for every token in play."""
        result = run(*args, env=env or self.env, timeout=timeout)
        for secret in self.secrets:
            assert secret not in result.stdout, f"token in stdout of {args}"
            assert secret not in result.stderr, f"token in stderr of {args}"
        return result


def _rows(url: str) -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one())
    finally:
        engine.dispose()


def _days(scenario: Scenario) -> dict[tuple[UUID, str], float]:
    p0, p1, _ = scenario.project_ids()
    return {
        (p0, "project_logs"): 30,
        (p0, "experiment"): 60,
        (p0, "dataset"): 45,
        (p1, "project_logs"): 90,
    }


@pytest.fixture
def other_cp() -> Iterator[FakeControlPlane]:
    fake = FakeControlPlane().start()
    yield fake
    fake.stop()


@pytest.fixture
def setup(pg_url: str, fake_cp: FakeControlPlane, token_file: Path, tmp_path: Path) -> Setup:
    scenario = generate(11, projects=3, events=600)
    insert(engine_for(pg_url), scenario)
    fake_cp.projects = [project(p, f"project-{i}") for i, p in enumerate(scenario.project_ids())]
    fake_cp.projects.append(project(DELETED_PROJECT, "gone", deleted=True))
    fake_cp.automations = [
        retention_automation(project_id, object_type, days)
        for (project_id, object_type), days in _days(scenario).items()
    ]
    fake_cp.automations.append(logs_alert_automation(scenario.project_ids()[2]))
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "none.toml").write_text("")  # the control plane's policies only
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        BRAINTRUST_API_URL=fake_cp.url,
        RETENTION_SERVICE_TOKEN_FILE=str(token_file),
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_API_BACKOFF_INITIAL="0.01",
        RETENTION_API_BACKOFF_MAX="0.05",
        RETENTION_API_READ_TIMEOUT="0.5",
        RETENTION_API_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
    )
    secrets = {*fake_cp.tokens, token_file.read_text().strip(), WRONG_TOKEN}
    return Setup(pg_url, env, fake_cp, token_file, scenario, secrets)


def _assert_one_error_line(result: Result) -> str:
    """Exit 3; the error is one line, the last on stderr; no traceback anywhere."""
    assert result.code == 3, (result.code, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("retention:")]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0]
    assert errors[0].startswith("retention: error: control plane")
    return errors[0]


# -- faults ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    apply: Callable[[Setup, FakeControlPlane], None]
    path: str  # where the fault bites
    requests: int  # requests to ``path`` per command
    message: str  # in the error line
    stalls: bool = False


def _fail(path: str, **kwargs: Any) -> Callable[[Setup, FakeControlPlane], None]:
    def apply(s: Setup, _other: FakeControlPlane) -> None:
        s.fake.fail(path, times=1000, **kwargs)

    return apply


def _schema_break(s: Setup, _other: FakeControlPlane) -> None:
    s.fake.automations.append(retention_automation(s.scenario.project_ids()[0], "logs", 30))


def _negative_days(s: Setup, _other: FakeControlPlane) -> None:
    s.fake.automations.append(retention_automation(s.scenario.project_ids()[1], "dataset", -1))


def _wrong_token(s: Setup, _other: FakeControlPlane) -> None:
    s.token_file.write_text(WRONG_TOKEN + "\n")


def _redirect_elsewhere(s: Setup, other: FakeControlPlane) -> None:
    other.projects = s.fake.projects
    s.fake.fail(PROJECTS, times=1000, redirect=f"{other.url}/v1/project")


FAULTS = {
    "5xx every time": Fault(
        _fail(AUTOMATIONS, status=503), AUTOMATIONS, MAX_ATTEMPTS, "HTTP 503 after 3 attempts"
    ),
    "429 every time": Fault(
        _fail(PROJECTS, status=429, headers={"Retry-After": "0"}),
        PROJECTS,
        MAX_ATTEMPTS,
        "HTTP 429 after 3 attempts",
    ),
    "500 on org automations": Fault(
        _fail(ORG, status=500), ORG, MAX_ATTEMPTS, "HTTP 500 after 3 attempts"
    ),
    "malformed JSON": Fault(
        _fail(PROJECTS, status=200, body=b'{"objects": [{"id": '), PROJECTS, 1, "malformed JSON"
    ),
    "schema break: object_type logs": Fault(_schema_break, AUTOMATIONS, 2, "breaks the spec"),
    "schema break: retention_days -1": Fault(_negative_days, AUTOMATIONS, 2, "breaks the spec"),
    "401 with a wrong token": Fault(_wrong_token, PROJECTS, 2, "refused the token"),
    "redirect to another host": Fault(_redirect_elsewhere, PROJECTS, 1, "another host"),
    "stall every time": Fault(
        _fail(PROJECTS, stall=3.0), PROJECTS, MAX_ATTEMPTS, "timeout", stalls=True
    ),
}


def _wait_for(fake: FakeControlPlane, path: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(fake.requests_to(path)) < count:
        assert time.monotonic() < deadline, (path, len(fake.requests_to(path)), count)
        time.sleep(0.05)


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_fault_that_cannot_be_overcome_exits_3_and_deletes_nothing(
    setup: Setup, other_cp: FakeControlPlane, fault: Fault
) -> None:
    fault.apply(setup, other_cp)
    before = _rows(setup.url)
    assert before == len(setup.scenario.events)
    for number, command in enumerate(PLANNING_COMMANDS, start=1):
        result = setup.cli(*command)
        line = _assert_one_error_line(result)
        assert fault.message in line, line
        assert _rows(setup.url) == before, command
        if fault.stalls:  # a stalled request is recorded when the fake finally answers
            _wait_for(setup.fake, fault.path, number * fault.requests)
        assert len(setup.fake.requests_to(fault.path)) == number * fault.requests, command
    assert other_cp.seen == []
    assert surviving_rows(engine_for(setup.url)) == {e["id"] for e in setup.scenario.events}


def test_one_line_on_stderr_at_log_level_error(setup: Setup) -> None:
    setup.fake.fail(PROJECTS, status=502, times=100)
    for command in PLANNING_COMMANDS:
        result = setup.cli(*command, "--log-level", "error")
        assert result.code == 3
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith("retention: error: control plane unavailable: ")
        assert result.stdout == ""


def test_a_transient_fault_is_retried_and_the_run_succeeds(setup: Setup) -> None:
    setup.fake.fail(PROJECTS, status=503)
    setup.fake.fail(AUTOMATIONS, status=429, headers={"Retry-After": "0"})
    result = setup.cli("purge", "--dry-run", "--format", "json")
    assert result.code == 0, result.stderr
    assert [s.status for s in setup.fake.requests_to(PROJECTS)] == [503, 200, 200]
    assert [s.status for s in setup.fake.requests_to(AUTOMATIONS)] == [429, 200, 200]
    assert "retry 1 of 2" in result.stderr
    assert _rows(setup.url) == len(setup.scenario.events)


def test_a_clean_run_deletes_exactly_the_expired_rows(setup: Setup) -> None:
    expected = Expect(days=_days(setup.scenario)).survivors(setup.scenario)
    assert 0 < len(expected) < len(setup.scenario.events)
    plan = setup.cli("purge", "--dry-run", "--format", "json")
    assert plan.code == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert planned["totals"]["rows"] == len(setup.scenario.events) - len(expected)
    result = setup.cli(
        "purge",
        "--yes",
        "--allow-large-deletes",
        "--format",
        "json",
        "--audit",
        "--log-level",
        "debug",
    )
    assert result.code == 0, result.stderr
    assert surviving_rows(engine_for(setup.url)) == expected
    doc = json.loads(result.stdout)
    assert doc["totals"]["rows"] == len(setup.scenario.events) - len(expected)
    assert "audit: user=" in result.stderr  # the audit lines were logged ...
    assert all(s.headers.get("x-bt-enable-audit") == "true" for s in setup.fake.seen[-5:])
    # ... and the requests: the dry run and the purge read projects, automations, org
    assert len(setup.fake.seen) == 10


def test_explain_names_the_automations_and_never_the_token(setup: Setup) -> None:
    result = setup.cli("policies", "--explain", "--audit", "--log-level", "debug")
    assert result.code == 0, result.stderr
    for automation in setup.fake.automations[:4]:
        assert automation["id"] in result.stdout


def test_debug_output_of_a_failure_never_shows_the_token(setup: Setup) -> None:
    setup.token_file.write_text(WRONG_TOKEN + "\n")
    env = {**setup.env, "RETENTION_DEBUG": "1", "RETENTION_AUDIT": "true"}
    for command in PLANNING_COMMANDS:
        result = setup.cli(*command, "--log-level", "debug", env=env)
        assert result.code == 3
        assert str(setup.token_file) in result.stderr
    assert _rows(setup.url) == len(setup.scenario.events)


def test_a_token_in_the_environment_is_never_shown(setup: Setup) -> None:
    env = {k: v for k, v in setup.env.items() if k != "RETENTION_SERVICE_TOKEN_FILE"}
    env["RETENTION_SERVICE_TOKEN"] = WRONG_TOKEN
    env["RETENTION_DEBUG"] = "1"
    result = setup.cli("purge", "--dry-run", "--log-level", "debug", "--audit", env=env)
    assert result.code == 3
    assert "RETENTION_SERVICE_TOKEN" in result.stderr
    ok = {**env, "RETENTION_SERVICE_TOKEN": next(iter(setup.fake.tokens))}
    result = setup.cli("controlplane", "check", "--log-level", "debug", env=ok)
    assert result.code == 0, result.stderr
    assert "token: RETENTION_SERVICE_TOKEN: accepted" in result.stdout


# -- controlplane check ----------------------------------------------------------------------


def test_controlplane_check_prints_what_it_found(setup: Setup) -> None:
    result = setup.cli("controlplane", "check")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"control plane: {setup.fake.url} (the token's organization)",
        f"token: the token file {setup.token_file} (RETENTION_SERVICE_TOKEN_FILE): accepted",
        "projects: 4 (3 live, 1 deleted)",
        "retention automations: 4 project",
        "org retention automations: none (the server has no /v1/org_automation)",
        "other automations (ignored): 1",
        "requests: 5",
    ]
    assert len(setup.fake.seen) == 5


def test_controlplane_check_with_a_bad_token_exits_3_naming_the_file(setup: Setup) -> None:
    setup.token_file.write_text(WRONG_TOKEN + "\n")
    result = setup.cli("controlplane", "check", "--audit", "--log-level", "debug")
    line = _assert_one_error_line(result)
    assert str(setup.token_file) in line
    assert result.stdout == ""
    assert [s.status for s in setup.fake.seen] == [401, 401]


def test_controlplane_check_without_an_api_url_exits_2(setup: Setup) -> None:
    env = {k: v for k, v in setup.env.items() if k != "BRAINTRUST_API_URL"}
    result = setup.cli("controlplane", "check", env=env)
    assert result.code == 2, result.stderr
    assert "BRAINTRUST_API_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert setup.fake.seen == []


def test_the_fixture_data_really_has_rows_to_delete(setup: Setup) -> None:
    """Guards the fault tests above: without the faults these rows would go."""
    expected = Expect(days=_days(setup.scenario)).survivors(setup.scenario)
    doomed = len(setup.scenario.events) - len(expected)
    assert doomed > 50
    assert len(setup.scenario.project_ids()) == 3
