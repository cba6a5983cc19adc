"""The control-plane client against the fake server, fault by fault (DESIGN §6, issue 3).

Every test reads through ``ControlPlaneSource`` (or the client under it) with a recording
``sleep`` that waits for nothing, so the retries' waits are asserted exactly and the tests
stay fast. For each fault: the exact requests the fake saw, the exact waits, the outcome.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import httpx
import pytest

import retention.controlplane
from retention.controlplane import ClientConfig, ControlPlaneClient, TokenSource
from retention.errors import ControlPlaneError, ExitCode, UsageError
from retention.models import ObjectType, ProjectInfo, RetentionRule, SourceKind
from retention.ratelimit import RateLimiter
from retention.sources import ControlPlaneData, ControlPlaneSource
from tests.fakecp import (
    USER_ID,
    FakeControlPlane,
    audit_header,
    big_org,
    export_automation,
    logs_alert_automation,
    org_retention_automation,
    project,
    retention_automation,
)
from tests.pg import free_port

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
P2 = UUID("6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d")
P3 = UUID("7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f")
A1 = "a1a1a1a1-0000-4000-8000-000000000001"
A2 = "a2a2a2a2-0000-4000-8000-000000000002"

PROJECTS = "v1/project"
AUTOMATIONS = "v1/project_automation"
ORG = "v1/org_automation"

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 8.0
MAX_ATTEMPTS = 4
# the client adds uniform(0, 1) s of jitter to initial * 2**(n-1), capped at the maximum
JITTER = 1.0


class Sleeps(list[float]):
    """A ``sleep`` that records the requested waits and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def populated(fake_cp: FakeControlPlane) -> FakeControlPlane:
    """Three projects (one deleted) and four automations, two of them retention."""
    fake_cp.projects = [
        project(P1, "checkout"),
        project(P2, "search"),
        project(P3, "old", deleted=True),
    ]
    fake_cp.automations = [
        retention_automation(P1, "project_logs", 30, automation_id=A1, name="logs 30d"),
        logs_alert_automation(P1),
        retention_automation(P2, "experiment", 14.5, automation_id=A2, name="exp"),
        export_automation(P2),
    ]
    return fake_cp


EXPECTED_PROJECTS = (
    ProjectInfo(P1, "checkout", None),
    ProjectInfo(P2, "search", None),
    ProjectInfo(P3, "old", datetime(2026, 1, 31, tzinfo=UTC)),
)
EXPECTED_RULES = (
    RetentionRule(ObjectType.PROJECT_LOGS, 30.0, SourceKind.PROJECT_AUTOMATION, A1, P1, "logs 30d"),
    RetentionRule(ObjectType.EXPERIMENT, 14.5, SourceKind.PROJECT_AUTOMATION, A2, P2, "exp"),
)


def _config(fake: FakeControlPlane, **overrides: Any) -> ClientConfig:
    values: dict[str, Any] = dict(
        base_url=fake.url,
        backoff_initial=BACKOFF_INITIAL,
        backoff_max=BACKOFF_MAX,
        max_attempts=MAX_ATTEMPTS,
        connect_timeout=2.0,
        read_timeout=5.0,
    )
    values.update(overrides)
    return ClientConfig(**values)


def _source(
    fake: FakeControlPlane,
    token_file: Path,
    sleep: Callable[[float], None],
    *,
    limiter: RateLimiter | None = None,
    token: TokenSource | None = None,
    transport: httpx.BaseTransport | None = None,
    **config: Any,
) -> ControlPlaneSource:
    return ControlPlaneSource(
        config=_config(fake, **config),
        token=token or TokenSource(file=token_file),
        limiter=limiter,
        transport=transport,
        sleep=sleep,
    )


def _statuses(fake: FakeControlPlane, path: str) -> list[int]:
    return [s.status for s in fake.requests_to(path)]


def _wait_for_requests(fake: FakeControlPlane, path: str, count: int, timeout: float = 10) -> None:
    """A stalled request is recorded when the fake finally answers: poll with a deadline."""
    deadline = time.monotonic() + timeout
    while len(fake.requests_to(path)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the fake saw {len(fake.requests_to(path))} requests to {path}, expected {count}"
            )
        time.sleep(0.02)


def _assert_complete(data: ControlPlaneData) -> None:
    assert data.projects == EXPECTED_PROJECTS
    assert data.rules == EXPECTED_RULES
    assert data.org_rules == ()
    assert data.skipped_automations == 2
    assert data.org_endpoint is False


def _backoff_base(attempt: int, initial: float = BACKOFF_INITIAL) -> float:
    return initial * 2.0 ** (attempt - 1)


def _assert_backoff(
    wait: float, attempt: int, *, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX
) -> None:
    base = min(_backoff_base(attempt, initial), maximum)
    assert 0 <= wait <= maximum
    assert base <= wait <= min(base + JITTER, maximum)


@pytest.fixture
def jitter(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Pins the client's jitter: ``jitter.fraction`` of the way from its low to its high end."""
    state = SimpleNamespace(fraction=0.0)
    monkeypatch.setattr(
        retention.controlplane,
        "random",
        SimpleNamespace(uniform=lambda a, b: a + state.fraction * (b - a)),
    )
    return state


# -- the happy path and paging ----------------------------------------------------------


def test_a_complete_read_in_the_fewest_requests(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    data = _source(populated, token_file, sleeps).fetch()
    _assert_complete(data)
    assert _statuses(populated, PROJECTS) == [200, 200]  # one page, then the empty page
    assert _statuses(populated, AUTOMATIONS) == [200, 200]
    assert _statuses(populated, ORG) == [404]
    assert data.requests == 5
    assert len(populated.seen) == 5
    assert sleeps == []


def test_paging_uses_limit_and_the_last_id_as_cursor(
    fake_cp: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    ids = [str(uuid.UUID(int=i + 1, version=4)) for i in range(5)]
    fake_cp.projects = [project(i, f"p{n}") for n, i in enumerate(ids)]
    data = _source(fake_cp, token_file, sleeps, page_size=2, org_name="acme").fetch()
    assert [str(p.project_id) for p in data.projects] == ids
    seen = fake_cp.requests_to(PROJECTS)
    assert [s.query.get("limit") for s in seen] == [["2"]] * 4
    assert [s.query.get("org_name") for s in seen] == [["acme"]] * 4
    assert [s.query.get("starting_after") for s in seen] == [None, [ids[1]], [ids[3]], [ids[4]]]
    assert all(s.query.get("org_name") == ["acme"] for s in fake_cp.seen)


def test_a_short_page_does_not_end_paging(
    fake_cp: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    fake_cp.projects = [project(uuid.UUID(int=i + 1, version=4), f"p{i}") for i in range(5)]
    fake_cp.max_page = 2  # the server caps pages below the client's limit
    data = _source(fake_cp, token_file, sleeps, page_size=1000).fetch()
    assert len(data.projects) == 5
    assert _statuses(fake_cp, PROJECTS) == [200, 200, 200, 200]


def test_a_big_org_costs_a_few_requests(
    fake_cp: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    fake_cp.projects, fake_cp.automations = big_org(5000, 15000)
    data = _source(fake_cp, token_file, sleeps).fetch()
    assert len(data.projects) == 5000
    assert len(data.rules) == 5000
    assert data.skipped_automations == 10000
    # 5 + 1 pages of projects, 15 + 1 of automations, one 404 for org automations
    assert data.requests == 23 == len(fake_cp.seen)
    assert data.requests <= 40


def test_org_automations_are_read_when_the_endpoint_exists(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    org_rule = org_retention_automation("dataset", 60, name="org datasets")
    populated.org_automations = [org_rule, {**logs_alert_automation(P1), "project_id": None}]
    data = _source(populated, token_file, sleeps).fetch()
    assert data.org_endpoint is True
    assert data.org_rules == (
        RetentionRule(
            ObjectType.DATASET,
            60.0,
            SourceKind.ORG_AUTOMATION,
            org_rule["id"],
            None,
            "org datasets",
        ),
    )
    assert data.skipped_automations == 3
    assert _statuses(populated, ORG) == [200, 200]


def test_a_404_on_org_automations_means_none(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    populated.fail(ORG, status=404, body=b'{"error": "not found"}')
    populated.org_automations = [org_retention_automation("dataset", 60)]
    data = _source(populated, token_file, sleeps).fetch()
    assert data.org_endpoint is False
    assert data.org_rules == ()
    assert _statuses(populated, ORG) == [404]
    assert sleeps == []
    populated.fail(ORG, status=404, body=b"Not found")
    policy = _source(populated, token_file, sleeps).load()
    assert policy.rules == EXPECTED_RULES
    assert policy.projects == EXPECTED_PROJECTS


@pytest.mark.parametrize("status", [400, 403, 500])
def test_other_failures_on_org_automations_are_failures(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, status: int
) -> None:
    populated.fail(ORG, status=status, times=MAX_ATTEMPTS, body=b'{"error": "x"}')
    with pytest.raises(ControlPlaneError) as caught:
        _source(populated, token_file, sleeps).fetch()
    assert caught.value.exit_code == ExitCode.CONTROL_PLANE
    expected = MAX_ATTEMPTS if status == 500 else 1
    assert _statuses(populated, ORG) == [status] * expected
    assert len(sleeps) == expected - 1


def test_a_404_on_a_later_page_of_org_automations_is_a_failure(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    first = org_retention_automation("dataset", 60)
    populated.org_automations = [first, org_retention_automation("experiment", 90)]
    populated.fail(ORG, status=200, body=json.dumps({"objects": [first]}).encode())
    populated.fail(ORG, status=404, body=b"Not found")
    with pytest.raises(ControlPlaneError, match="404"):
        _source(populated, token_file, sleeps, page_size=1).fetch()
    assert _statuses(populated, ORG) == [200, 404]


# -- retries and waits ------------------------------------------------------------------


def test_429_with_retry_after_seconds_then_success(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    populated.fail(PROJECTS, status=429, headers={"Retry-After": "2"})
    data = _source(populated, token_file, sleeps).fetch()
    _assert_complete(data)
    assert sleeps == [2.0]
    assert _statuses(populated, PROJECTS) == [429, 200, 200]
    assert data.requests == 6 == len(populated.seen)


@pytest.mark.parametrize(("header", "expected"), [("0", 0.0), ("7", 7.0), ("1.5", 1.5)])
def test_retry_after_is_honoured_exactly(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, header: str, expected: float
) -> None:
    populated.fail(AUTOMATIONS, status=503, headers={"Retry-After": header})
    _assert_complete(_source(populated, token_file, sleeps).fetch())
    assert sleeps == [expected]
    assert _statuses(populated, AUTOMATIONS) == [503, 200, 200]


def test_retry_after_as_an_http_date(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=10)
    populated.fail(PROJECTS, status=429, headers={"Retry-After": format_datetime(when, True)})
    _assert_complete(_source(populated, token_file, sleeps).fetch())
    assert len(sleeps) == 1
    assert 8.0 < sleeps[0] <= 10.0  # whole seconds in the header; the read took < 1 s
    assert _statuses(populated, PROJECTS) == [429, 200, 200]


@pytest.mark.parametrize(
    ("offset", "expected"), [(timedelta(seconds=90), 90.0), (timedelta(seconds=-30), 0.0)]
)
def test_retry_after_http_date_exact_with_an_injected_wall_clock(
    populated: FakeControlPlane,
    token_file: Path,
    sleeps: Sleeps,
    offset: timedelta,
    expected: float,
) -> None:
    now = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
    populated.fail(
        PROJECTS, status=503, headers={"Retry-After": format_datetime(now + offset, True)}
    )
    client = ControlPlaneClient(
        _config(populated), TokenSource(file=token_file), sleep=sleeps, wall_clock=lambda: now
    )
    with client:
        items = client.list_all(PROJECTS)
    assert items is not None and len(items) == 3
    assert sleeps == [expected]
    assert client.requests == 3


def test_a_retry_after_beyond_the_cap_gives_up_at_once(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    populated.fail(PROJECTS, status=429, headers={"Retry-After": "3600"})
    with pytest.raises(ControlPlaneError, match="asked to wait 3600s"):
        _source(populated, token_file, sleeps).fetch()
    assert sleeps == []
    assert _statuses(populated, PROJECTS) == [429]


@pytest.mark.parametrize("header", ["soon", "nan", "inf", ""])
def test_an_unusable_retry_after_falls_back_to_backoff(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, header: str
) -> None:
    populated.fail(PROJECTS, status=429, headers={"Retry-After": header})
    _assert_complete(_source(populated, token_file, sleeps).fetch())
    assert len(sleeps) == 1
    _assert_backoff(sleeps[0], 1)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_a_transient_status_then_success(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, status: int
) -> None:
    populated.fail(PROJECTS, status=status, body=b'{"error": "transient"}')
    data = _source(populated, token_file, sleeps).fetch()
    _assert_complete(data)
    assert _statuses(populated, PROJECTS) == [status, 200, 200]
    assert len(sleeps) == 1
    _assert_backoff(sleeps[0], 1)


@pytest.mark.parametrize(
    ("status", "headers"), [(503, {}), (500, {}), (429, {"Retry-After": "1"}), (408, {})]
)
def test_all_attempts_failing_is_a_control_plane_error(
    populated: FakeControlPlane,
    token_file: Path,
    sleeps: Sleeps,
    status: int,
    headers: dict[str, str],
) -> None:
    populated.fail(PROJECTS, status=status, headers=headers, times=MAX_ATTEMPTS + 2)
    with pytest.raises(ControlPlaneError) as caught:
        _source(populated, token_file, sleeps).fetch()
    assert caught.value.exit_code == ExitCode.CONTROL_PLANE
    assert int(caught.value.exit_code) == 3
    assert f"HTTP {status}" in caught.value.message
    assert f"after {MAX_ATTEMPTS} attempts" in caught.value.message
    assert _statuses(populated, PROJECTS) == [status] * MAX_ATTEMPTS
    assert len(populated.seen) == MAX_ATTEMPTS  # nothing else was read
    assert len(populated.faults) == 2  # exactly MAX_ATTEMPTS faults were used up
    assert len(sleeps) == MAX_ATTEMPTS - 1
    if headers:
        assert sleeps == [1.0] * (MAX_ATTEMPTS - 1)
    else:
        for attempt, wait in enumerate(sleeps, start=1):
            _assert_backoff(wait, attempt)


def test_a_failure_after_pages_were_read_still_fails_the_whole_read(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    populated.fail(AUTOMATIONS, status=502, times=MAX_ATTEMPTS)
    with pytest.raises(ControlPlaneError, match="v1/project_automation"):
        _source(populated, token_file, sleeps).load()
    assert _statuses(populated, PROJECTS) == [200, 200]
    assert _statuses(populated, AUTOMATIONS) == [502] * MAX_ATTEMPTS


def test_exponential_backoff_grows_and_is_capped(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, jitter: SimpleNamespace
) -> None:
    populated.fail(PROJECTS, status=503, times=12)
    jitter.fraction = 0.0
    with pytest.raises(ControlPlaneError):
        _source(populated, token_file, sleeps, max_attempts=6, backoff_max=3.0).fetch()
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]
    sleeps.clear()
    jitter.fraction = 1.0  # the most jitter: one second on top, still capped
    with pytest.raises(ControlPlaneError):
        _source(populated, token_file, sleeps, max_attempts=6, backoff_max=3.0).fetch()
    assert sleeps == [1.5, 2.0, 3.0, 3.0, 3.0]
    assert _statuses(populated, PROJECTS) == [503] * 12


def test_backoff_with_real_jitter_stays_in_bounds_and_grows(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    populated.fail(PROJECTS, status=502, times=6)
    with pytest.raises(ControlPlaneError):
        _source(
            populated, token_file, sleeps, max_attempts=6, backoff_initial=1.0, backoff_max=100.0
        ).fetch()
    assert len(sleeps) == 5
    for attempt, wait in enumerate(sleeps, start=1):
        _assert_backoff(wait, attempt, initial=1.0, maximum=100.0)
    assert sleeps == sorted(sleeps)  # jitter (<= 1 s) never undoes the doubling from 1 s
    assert sleeps[-1] >= 16.0


def test_retries_emit_no_deprecation_warning(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    """A retry must not warn: with warnings as errors (``python -W error``) it would crash."""
    populated.fail(PROJECTS, status=503)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _assert_complete(_source(populated, token_file, sleeps).fetch())
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []
    assert len(sleeps) == 1


@pytest.mark.parametrize("status", [400, 403, 404, 405, 409, 422])
def test_other_4xx_are_not_retried(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, status: int
) -> None:
    populated.fail(PROJECTS, status=status, body=b'{"error": "no"}')
    with pytest.raises(ControlPlaneError) as caught:
        _source(populated, token_file, sleeps).fetch()
    assert caught.value.exit_code == 3
    assert str(status) in caught.value.message
    assert _statuses(populated, PROJECTS) == [status]
    assert len(populated.seen) == 1
    assert sleeps == []


def test_connection_refused_is_retried_then_fails(token_file: Path, sleeps: Sleeps) -> None:
    config = ClientConfig(
        base_url=f"http://127.0.0.1:{free_port()}",
        backoff_initial=BACKOFF_INITIAL,
        backoff_max=BACKOFF_MAX,
        max_attempts=MAX_ATTEMPTS,
        connect_timeout=1.0,
    )
    source = ControlPlaneSource(config=config, token=TokenSource(file=token_file), sleep=sleeps)
    with pytest.raises(ControlPlaneError, match="control plane unavailable") as caught:
        source.fetch()
    assert "ConnectError" in caught.value.message
    assert len(sleeps) == MAX_ATTEMPTS - 1
    for attempt, wait in enumerate(sleeps, start=1):
        _assert_backoff(wait, attempt)


def test_a_stalled_response_times_out_and_is_retried(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    populated.fail(PROJECTS, stall=3.0)
    started = time.monotonic()
    data = _source(populated, token_file, sleeps, read_timeout=0.3).fetch()
    assert time.monotonic() - started < 2.5  # it did not wait for the stalled answer
    _assert_complete(data)
    assert len(sleeps) == 1
    _assert_backoff(sleeps[0], 1)
    assert data.requests == 6
    _wait_for_requests(populated, PROJECTS, 3)  # the stalled one is recorded when it answers
    assert len(populated.requests_to(PROJECTS)) == 3


def test_stalling_every_time_fails_after_max_attempts(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    populated.fail(PROJECTS, stall=1.0, times=MAX_ATTEMPTS + 1)
    with pytest.raises(ControlPlaneError, match="timeout") as caught:
        _source(populated, token_file, sleeps, read_timeout=0.3).fetch()
    assert "ReadTimeout" in caught.value.message
    assert len(sleeps) == MAX_ATTEMPTS - 1
    _wait_for_requests(populated, PROJECTS, MAX_ATTEMPTS)
    time.sleep(0.2)  # nothing more arrives: the read stopped at MAX_ATTEMPTS
    assert len(populated.requests_to(PROJECTS)) == MAX_ATTEMPTS
    assert len(populated.faults) == 1


# -- payloads ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"<html>502 Bad Gateway</html>",
        b'{"objects": [NaN]}',
        b'{"objects": [{"id": "x", "n": Infinity}]}',
        b'{"objects": []} trailing',
    ],
)
def test_malformed_json_is_an_error_without_retry(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, body: bytes
) -> None:
    populated.fail(PROJECTS, status=200, body=body)
    with pytest.raises(ControlPlaneError, match="malformed JSON") as caught:
        _source(populated, token_file, sleeps).fetch()
    assert caught.value.exit_code == 3
    assert _statuses(populated, PROJECTS) == [200]
    assert sleeps == []


def _automation(**config: Any) -> dict[str, Any]:
    item = retention_automation(P1, "project_logs", 30)
    item["config"] = {**item["config"], **config}
    return item


def _without(item: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != key}


SCHEMA_BREAKS_AUTOMATIONS = {
    "object_type logs": _automation(object_type="logs"),
    "object_type missing": {
        **_automation(),
        "config": {"event_type": "retention", "retention_days": 3},
    },
    "retention_days -1": _automation(retention_days=-1),
    "retention_days string": _automation(retention_days="30"),
    "retention_days bool": _automation(retention_days=True),
    "retention_days null": _automation(retention_days=None),
    "retention_days NaN": _automation(retention_days=math.nan),
    "retention_days Infinity": _automation(retention_days=math.inf),
    "retention_days huge": _automation(retention_days=10**400),
    "retention_days beyond max": _automation(retention_days=10**9),
    "config not an object": {**_automation(), "config": "retention"},
    "config missing": _without(_automation(), "config"),
    "id not a uuid": {**_automation(), "id": "automation-1"},
    "id missing": _without(_automation(), "id"),
    "project_id not a uuid": {**_automation(), "project_id": "p1"},
    "project_id missing": _without(_automation(), "project_id"),
    "name not a string": {**_automation(), "name": 7},
    "item not an object": "retention",
}

SCHEMA_BREAKS_PROJECTS = {
    "project without id": _without(project(P1, "a"), "id"),
    "project id not a uuid": {**project(P1, "a"), "id": "not-a-uuid"},
    "project id a number": {**project(P1, "a"), "id": 7},
    "project name missing": _without(project(P1, "a"), "name"),
    "project org_id missing": _without(project(P1, "a"), "org_id"),
    "project deleted_at not a time": {**project(P1, "a"), "deleted_at": "yesterday"},
    "project deleted_at without offset": {**project(P1, "a"), "deleted_at": "2026-01-01T00:00"},
}


@pytest.mark.parametrize(
    "item", SCHEMA_BREAKS_AUTOMATIONS.values(), ids=SCHEMA_BREAKS_AUTOMATIONS.keys()
)
def test_an_automation_that_breaks_the_schema_fails_the_read(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, item: Any
) -> None:
    populated.automations = [*populated.automations, item]
    with pytest.raises(ControlPlaneError) as caught:
        _source(populated, token_file, sleeps).load()
    assert caught.value.exit_code == 3
    assert "project_automation" in caught.value.message  # names the endpoint or the item
    assert sleeps == []
    statuses = _statuses(populated, AUTOMATIONS)
    assert set(statuses) == {200} and len(statuses) <= 2  # no retry of a broken payload
    assert _statuses(populated, ORG) == []  # the read stopped there


@pytest.mark.parametrize("item", SCHEMA_BREAKS_PROJECTS.values(), ids=SCHEMA_BREAKS_PROJECTS.keys())
def test_a_project_that_breaks_the_schema_fails_the_read(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, item: Any
) -> None:
    populated.projects = [*populated.projects, item]
    with pytest.raises(ControlPlaneError) as caught:
        _source(populated, token_file, sleeps).load()
    assert caught.value.exit_code == 3
    assert sleeps == []
    assert _statuses(populated, AUTOMATIONS) == []


@pytest.mark.parametrize(
    "body",
    [
        {"objects": {}},
        {"objects": None},
        {"items": []},
        [],
        [{"id": str(P1)}],
        {"objects": [1]},
        {"objects": [{"name": "no id"}]},
        {"objects": [{"id": 12}]},
        "objects",
    ],
)
def test_a_page_of_the_wrong_shape_fails_the_read(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, body: Any
) -> None:
    populated.fail(PROJECTS, status=200, body=json.dumps(body).encode())
    with pytest.raises(ControlPlaneError) as caught:
        _source(populated, token_file, sleeps).fetch()
    assert caught.value.exit_code == 3
    assert _statuses(populated, PROJECTS) == [200]
    assert sleeps == []


def test_unknown_future_event_types_are_skipped(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    future = retention_automation(P1, "project_logs", 1)
    future["config"] = {"event_type": "quantum_archive", "object_type": "logs", "when": [1, 2]}
    no_type = retention_automation(P2, "dataset", 1)
    no_type["config"] = {"something": "new"}
    populated.automations = [*populated.automations, future, no_type]
    data = _source(populated, token_file, sleeps).fetch()
    assert data.rules == EXPECTED_RULES
    assert data.skipped_automations == 4  # the alert, the export and the two unknown ones


# -- paging failures ----------------------------------------------------------------------


def test_a_server_that_repeats_the_cursor_fails(
    fake_cp: FakeControlPlane,
    token_file: Path,
    sleeps: Sleeps,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_cp.projects = [project(uuid.UUID(int=i + 1, version=4), f"p{i}") for i in range(5)]
    fake_cp.max_page = 2

    def same_page(path: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        return (fake_cp.collection(path) or [])[: fake_cp.max_page]  # ignores starting_after

    monkeypatch.setattr(fake_cp, "page", same_page)
    with pytest.raises(ControlPlaneError, match="v1/project") as caught:
        _source(fake_cp, token_file, sleeps).fetch()
    assert caught.value.exit_code == 3
    assert _statuses(fake_cp, PROJECTS) == [200, 200]
    assert sleeps == []


def test_more_pages_than_the_cap_fails(
    fake_cp: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    fake_cp.projects = [project(uuid.UUID(int=i + 1, version=4), f"p{i}") for i in range(10)]
    with pytest.raises(ControlPlaneError, match="exceeded 3 pages"):
        _source(fake_cp, token_file, sleeps, page_size=2, max_pages=3).fetch()
    assert _statuses(fake_cp, PROJECTS) == [200, 200, 200]


def test_pages_within_the_cap_succeed(
    fake_cp: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    fake_cp.projects = [project(uuid.UUID(int=i + 1, version=4), f"p{i}") for i in range(4)]
    data = _source(fake_cp, token_file, sleeps, page_size=2, max_pages=3).fetch()
    assert len(data.projects) == 4
    assert _statuses(fake_cp, PROJECTS) == [200, 200, 200]


def test_duplicate_ids_across_pages_fail(
    fake_cp: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    items = [project(uuid.UUID(int=i + 1, version=4), f"p{i}") for i in range(3)]
    fake_cp.projects = [items[0], items[1], {**items[1], "name": "again"}, items[2]]
    with pytest.raises(ControlPlaneError, match=f"id {items[1]['id']} twice"):
        _source(fake_cp, token_file, sleeps, page_size=2).fetch()
    assert _statuses(fake_cp, PROJECTS) == [200, 200]


# -- token ----------------------------------------------------------------------------------


class CountingTokenSource(TokenSource):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0

    def read(self) -> Any:
        self.reads += 1
        return super().read()


def test_a_401_rereads_a_rotated_token_once_and_succeeds(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    old = next(iter(populated.tokens))
    new = "fake-token-rotated-0002"
    rotated = threading.Event()

    def rotate(path: str) -> None:
        if path == AUTOMATIONS and not rotated.is_set():
            rotated.set()
            populated.tokens = {new}  # the old token stops working ...
            token_file.write_text(new + "\n")  # ... and the mounted secret changes

    populated.on_request = rotate
    token = CountingTokenSource(file=token_file)
    data = _source(populated, token_file, sleeps, token=token).fetch()
    _assert_complete(data)
    assert token.reads == 2  # once at the start, once after the 401
    assert _statuses(populated, PROJECTS) == [200, 200]
    assert _statuses(populated, AUTOMATIONS) == [401, 200, 200]
    auth = [s.headers["authorization"] for s in populated.seen]
    assert auth == [f"Bearer {old}"] * 3 + [f"Bearer {new}"] * 3
    assert sleeps == []


def test_a_401_twice_fails_naming_the_token_file_never_the_token(
    populated: FakeControlPlane,
    token_file: Path,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = token_file.read_text().strip()
    populated.tokens = {"some-other-token"}
    token = CountingTokenSource(file=token_file)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ControlPlaneError) as caught:
        _source(populated, token_file, sleeps, token=token, audit=True).fetch()
    error = caught.value
    assert error.exit_code == 3
    assert str(token_file) in error.message
    assert "401" in error.message
    assert token.reads == 2
    assert _statuses(populated, PROJECTS) == [401, 401]
    assert len(populated.seen) == 2
    assert sleeps == []
    rendered = "".join(traceback.format_exception(error)) + repr(error) + str(error.args)
    assert secret not in rendered
    assert secret not in caplog.text


def test_a_401_with_a_token_from_the_environment_names_the_variable(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    from pydantic import SecretStr

    populated.tokens = {"some-other-token"}
    token = TokenSource(value=SecretStr("env-token-value-xyz"))
    with pytest.raises(ControlPlaneError) as caught:
        _source(populated, token_file, sleeps, token=token).fetch()
    assert "RETENTION_SERVICE_TOKEN" in caught.value.message
    assert "env-token-value-xyz" not in "".join(traceback.format_exception(caught.value))


def test_token_source_rejects_both_and_neither(token_file: Path) -> None:
    from pydantic import SecretStr

    with pytest.raises(UsageError, match="not both") as both:
        TokenSource(value=SecretStr("t"), file=token_file)
    assert both.value.exit_code == ExitCode.USAGE
    with pytest.raises(UsageError, match="no token"):
        TokenSource()


@pytest.mark.parametrize("content", ["", "\n", "   \n\t", "two words"])
def test_token_source_rejects_an_empty_or_malformed_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(UsageError, match="empty or malformed") as caught:
        TokenSource(file=path).read()
    assert str(path) in caught.value.message


def test_token_source_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(UsageError, match="cannot read") as caught:
        TokenSource(file=path).read()
    assert str(path) in caught.value.message


def test_token_source_rereads_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token\n")
    source = TokenSource(file=path)
    assert source.read().get_secret_value() == "first-token"
    path.write_text("second-token")
    assert source.read().get_secret_value() == "second-token"
    assert "second-token" not in repr(source.read())
    assert "second-token" not in source.describe()


# -- hosts, redirects, headers ---------------------------------------------------------------


class RecordingTransport(httpx.HTTPTransport):
    """Every request that leaves the client: method and URL."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, httpx.URL]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url))
        return super().handle_request(request)


@pytest.fixture
def other_cp() -> Iterator[FakeControlPlane]:
    fake = FakeControlPlane().start()
    yield fake
    fake.stop()


def test_a_redirect_to_another_host_is_refused(
    populated: FakeControlPlane, other_cp: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    other_cp.projects = populated.projects
    populated.fail(PROJECTS, redirect=f"{other_cp.url}/v1/project")
    transport = RecordingTransport()
    with pytest.raises(ControlPlaneError, match="another host") as caught:
        _source(populated, token_file, sleeps, transport=transport).fetch()
    assert caught.value.exit_code == 3
    assert _statuses(populated, PROJECTS) == [302]
    assert len(populated.seen) == 1
    time.sleep(0.1)
    assert other_cp.seen == []
    assert [(m, u.port) for m, u in transport.sent] == [("GET", int(populated.url.split(":")[-1]))]
    assert sleeps == []


@pytest.mark.parametrize("absolute", [True, False])
def test_a_same_host_redirect_is_followed(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, absolute: bool
) -> None:
    location = "/v1/project?limit=1000"
    populated.fail(PROJECTS, redirect=populated.url + location if absolute else location)
    transport = RecordingTransport()
    data = _source(populated, token_file, sleeps, transport=transport).fetch()
    _assert_complete(data)
    assert _statuses(populated, PROJECTS) == [302, 200, 200]
    token = next(iter(populated.tokens))
    assert all(s.headers["authorization"] == f"Bearer {token}" for s in populated.seen)
    assert {m for m, _ in transport.sent} == {"GET"}
    assert {u.host for _, u in transport.sent} == {"127.0.0.1"}


def test_a_redirect_loop_on_the_same_host_fails(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps
) -> None:
    populated.fail(PROJECTS, redirect="/v1/project", times=10)
    with pytest.raises(ControlPlaneError, match="too many redirects"):
        _source(populated, token_file, sleeps).fetch()
    assert _statuses(populated, PROJECTS) == [302] * 4
    assert sleeps == []


@pytest.mark.parametrize("audit", [False, True])
def test_every_request_is_a_get_with_the_token_and_audit_only_when_asked(
    populated: FakeControlPlane, token_file: Path, sleeps: Sleeps, audit: bool
) -> None:
    populated.fail(PROJECTS, status=503, headers={"Retry-After": "0"})
    transport = RecordingTransport()
    _assert_complete(
        _source(populated, token_file, sleeps, transport=transport, audit=audit).fetch()
    )
    token = next(iter(populated.tokens))
    assert len(populated.seen) == 6
    assert all(s.headers.get("authorization") == f"Bearer {token}" for s in populated.seen)
    expected = "true" if audit else None
    assert [s.headers.get("x-bt-enable-audit") for s in populated.seen] == [expected] * 6
    assert [m for m, _ in transport.sent] == ["GET"] * 6


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit:")]


def test_audit_headers_are_decoded_and_logged(
    populated: FakeControlPlane,
    token_file: Path,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    populated.audit_resources = audit_header(
        [{"type": "project", "id": str(P1), "name": "checkout"}, {"type": "org", "id": "o1"}]
    )
    caplog.set_level(logging.INFO, logger="retention")
    _assert_complete(_source(populated, token_file, sleeps, audit=True).fetch())
    lines = _audit_lines(caplog)
    resources = f"resources={[f'project:{P1}', 'org:o1']}"
    assert lines == [
        f"audit: user={USER_ID} url=/v1/project {resources}",
        f"audit: user={USER_ID} url=/v1/project {resources}",
        f"audit: user={USER_ID} url=/v1/project_automation {resources}",
        f"audit: user={USER_ID} url=/v1/project_automation {resources}",
        "audit: user=- url=- resources=-",  # the 404 of the absent org endpoint
    ]


def test_no_audit_lines_without_audit(
    populated: FakeControlPlane,
    token_file: Path,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    populated.audit_resources = audit_header([{"type": "project", "id": str(P1)}])
    caplog.set_level(logging.DEBUG, logger="retention")
    _source(populated, token_file, sleeps).fetch()
    assert _audit_lines(caplog) == []


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("garbage", "audit header is not JSON"),
        (
            audit_header([{"type": "project", "id": "x"}], version=2),
            "unsupported audit header version",
        ),
        ('{"v": 1, "p": "!!!"}', "audit payload is not base64"),
    ],
)
def test_an_undecodable_audit_header_is_logged_and_the_read_goes_on(
    populated: FakeControlPlane,
    token_file: Path,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
    header: str,
    reason: str,
) -> None:
    populated.audit_resources = header
    caplog.set_level(logging.INFO, logger="retention")
    _assert_complete(_source(populated, token_file, sleeps, audit=True).fetch())
    lines = _audit_lines(caplog)
    assert len(lines) == 5
    assert lines[0] == f"audit: user={USER_ID} url=/v1/project resources=undecodable ({reason})"


def test_a_deeply_nested_audit_header_does_not_fail_the_read(
    populated: FakeControlPlane,
    token_file: Path,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    populated.audit_resources = "[" * 5000  # within header limits; deeper than json can nest
    caplog.set_level(logging.INFO, logger="retention")
    _assert_complete(_source(populated, token_file, sleeps, audit=True).fetch())
    assert _audit_lines(caplog)[0].startswith(
        f"audit: user={USER_ID} url=/v1/project resources=undecodable ("
    )


# -- the rate limit ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.limiter_sleeps: list[float] = []
        self.retry_sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def limiter_sleep(self, seconds: float) -> None:
        self.limiter_sleeps.append(seconds)
        self.now += seconds

    def retry_sleep(self, seconds: float) -> None:
        self.retry_sleeps.append(seconds)
        self.now += seconds


def test_the_rate_limit_applies_to_every_request_including_retries(
    fake_cp: FakeControlPlane, token_file: Path
) -> None:
    fake_cp.projects = [project(uuid.UUID(int=i + 1, version=4), f"p{i}") for i in range(6)]
    clock = FakeClock()
    sent_at: list[float] = []
    fake_cp.on_request = lambda path: sent_at.append(clock.now)  # the client waits meanwhile
    fake_cp.fail(PROJECTS, status=503, headers={"Retry-After": "5"})
    limiter = RateLimiter(3, 60, clock=clock, sleep=clock.limiter_sleep)
    source = _source(fake_cp, token_file, clock.retry_sleep, limiter=limiter, page_size=2)
    data = source.fetch()
    assert len(data.projects) == 6
    # 503 + retry + 3 pages + the empty page of projects, one of automations, one of org
    assert [s.path for s in fake_cp.seen] == [PROJECTS] * 5 + [AUTOMATIONS, ORG]
    assert data.requests == 7
    assert clock.retry_sleeps == [5.0]
    # at 0 (503), 5 (retry), 5, then the window is full until 60; 60, then 65, 65, then 120
    assert sent_at == [0.0, 5.0, 5.0, 60.0, 65.0, 65.0, 120.0]
    assert clock.limiter_sleeps == [55.0, 5.0, 55.0]
    assert all(sent_at[i + 3] - sent_at[i] >= 60 for i in range(len(sent_at) - 3))


def test_a_four_page_read_at_three_per_window_waits_for_the_window(
    fake_cp: FakeControlPlane, token_file: Path
) -> None:
    fake_cp.projects = [project(uuid.UUID(int=i + 1, version=4), f"p{i}") for i in range(6)]
    clock = FakeClock()
    limiter = RateLimiter(3, 60, clock=clock, sleep=clock.limiter_sleep)
    client = ControlPlaneClient(
        _config(fake_cp, page_size=2),
        TokenSource(file=token_file),
        limiter=limiter,
        sleep=clock.retry_sleep,
    )
    with client:
        items = client.list_all(PROJECTS)
    assert items is not None and len(items) == 6
    assert client.requests == 4 == len(fake_cp.seen)
    assert clock.limiter_sleeps == [60.0]
    assert clock.retry_sleeps == []


def test_a_zero_limit_never_waits(fake_cp: FakeControlPlane, token_file: Path) -> None:
    fake_cp.projects = [project(uuid.UUID(int=i + 1, version=4), f"p{i}") for i in range(6)]
    clock = FakeClock()
    limiter = RateLimiter(0, 60, clock=clock, sleep=clock.limiter_sleep)
    data = _source(fake_cp, token_file, clock.retry_sleep, limiter=limiter, page_size=1).fetch()
    assert len(data.projects) == 6
    assert data.requests == 9
    assert clock.limiter_sleeps == []
