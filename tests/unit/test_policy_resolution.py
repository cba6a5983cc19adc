"""Effective policy resolution (DESIGN §2): shortest rule wins, floor clamps, holds beat all.

The property tests compare ``retention.policy.resolve`` with a small independent oracle
written straight from the contract, on random rules, holds, floors, projects and times.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from retention.models import (
    OBJECT_TYPES,
    Hold,
    ObjectType,
    PolicySet,
    Resolution,
    RetentionRule,
    SourceKind,
)
from retention.policy import DEFAULT_MIN_RETENTION_DAYS, resolve, resolve_one

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
P2 = UUID("0b7e3a52-8f0e-4c1b-9d6e-2a4b5c6d7e8f")
OBJ = UUID("9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d")

# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

# Retention in days: whole, fractional and zero, up to about 27 years.
days_st = st.one_of(
    st.just(0.0),
    st.integers(min_value=0, max_value=10_000).map(float),
    st.floats(min_value=0, max_value=10_000, allow_nan=False, allow_infinity=False),
)
floor_st = st.one_of(st.none(), days_st)
projects_st = st.uuids(version=4)
now_st = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.just(UTC),
)
object_type_st = st.sampled_from(OBJECT_TYPES)
ORG_KINDS = (SourceKind.LOCAL_DEFAULT, SourceKind.ORG_AUTOMATION)
PROJECT_KINDS = (SourceKind.LOCAL_PROJECT, SourceKind.PROJECT_AUTOMATION)


@st.composite
def rule_st(draw, projects: list[UUID], *, realistic: bool = False) -> RetentionRule:
    """A rule for one of ``projects`` or org-wide.

    ``realistic``: the scope follows the kind, as every real source produces it (defaults and
    org automations are org-wide, project rules and project automations name a project).
    """
    kind = draw(st.sampled_from(tuple(SourceKind)))
    if realistic:
        project = None if kind in ORG_KINDS else draw(st.sampled_from(projects))
    else:
        project = draw(st.one_of(st.none(), st.sampled_from(projects)))
    return RetentionRule(
        object_type=draw(object_type_st),
        days=draw(days_st),
        kind=kind,
        origin=draw(st.sampled_from(["a.toml", "b.toml", "automation-1", "automation-2"])),
        project_id=project,
        label=draw(st.sampled_from(["", "defaults", "projects[0]", "nightly"])),
    )


@st.composite
def hold_st(draw, projects: list[UUID], now: datetime, reason: str) -> Hold:
    expires_in = draw(
        st.one_of(
            st.none(),
            st.just(timedelta(0)),  # expires == now: already expired
            st.timedeltas(min_value=timedelta(days=-10), max_value=timedelta(days=10)),
        )
    )
    return Hold(
        project_id=draw(st.sampled_from(projects)),
        reason=reason,
        origin=draw(st.sampled_from(["a.toml", "holds.toml"])),
        object_type=draw(st.one_of(st.none(), object_type_st)),
        object_id=draw(st.one_of(st.none(), st.uuids(version=4))),
        expires=None if expires_in is None else now + expires_in,
    )


@dataclass(frozen=True)
class Scenario:
    policy_sets: tuple[PolicySet, ...]
    project_ids: tuple[UUID, ...]  # projects the data plane lists
    now: datetime
    min_retention_days: float | None

    @property
    def rules(self) -> list[RetentionRule]:
        return [r for s in self.policy_sets for r in s.rules]

    @property
    def holds(self) -> list[Hold]:
        return [h for s in self.policy_sets for h in s.holds]

    def run(self):
        return resolve(
            self.policy_sets,
            self.project_ids,
            self.now,
            min_retention_days=self.min_retention_days,
        )


@st.composite
def scenario_st(draw, *, realistic: bool = False) -> Scenario:
    projects = draw(st.lists(projects_st, min_size=1, max_size=4, unique=True))
    now = draw(now_st)
    rules = draw(st.lists(rule_st(projects, realistic=realistic), max_size=10))
    n_holds = draw(st.integers(min_value=0, max_value=4))
    holds = [draw(hold_st(projects, now, reason=f"reason-{i}")) for i in range(n_holds)]
    n_sets = draw(st.integers(min_value=1, max_value=3))
    sets = []
    for i in range(n_sets):
        sets.append(
            PolicySet(
                source=f"set-{i}",
                rules=tuple(rules[i::n_sets]),
                holds=tuple(holds[i::n_sets]),
                min_retention_days=draw(floor_st),
            )
        )
    # The data plane lists some of the projects; the others are named only by policies.
    listed = draw(st.lists(st.sampled_from(projects), unique=True))
    return Scenario(
        policy_sets=tuple(sets),
        project_ids=tuple(listed),
        now=now,
        min_retention_days=draw(floor_st),
    )


# --------------------------------------------------------------------------------------
# The oracle: the contract of DESIGN §2, written independently of the implementation
# --------------------------------------------------------------------------------------


def expected_floor(scenario: Scenario) -> float:
    stated = [s.min_retention_days for s in scenario.policy_sets]
    stated.append(scenario.min_retention_days)
    stated = [f for f in stated if f is not None]
    return max(stated) if stated else 1.0


def applicable_rules(scenario: Scenario, project: UUID, object_type: ObjectType):
    return [
        r
        for r in scenario.rules
        if r.object_type == object_type and r.project_id in (None, project)
    ]


def is_active(hold: Hold, now: datetime) -> bool:
    return hold.expires is None or now < hold.expires


def target_holds(scenario: Scenario, project: UUID, object_type: ObjectType) -> list[Hold]:
    return [
        h
        for h in scenario.holds
        if is_active(h, scenario.now)
        and h.project_id == project
        and h.object_id is None
        and h.object_type in (None, object_type)
    ]


def object_holds(scenario: Scenario, project: UUID, object_type: ObjectType) -> list[Hold]:
    del project
    return [
        h
        for h in scenario.holds
        if is_active(h, scenario.now)
        and h.object_id is not None
        and h.object_type in (None, object_type)
    ]  # object ids are unique: an object hold applies in whichever project holds the object


def expected_projects(scenario: Scenario) -> set[UUID]:
    named = {
        r.project_id
        for r in scenario.rules
        if r.project_id is not None and r.kind is SourceKind.LOCAL_PROJECT
    }
    named |= {h.project_id for h in scenario.holds}
    return set(scenario.project_ids) | named


def check_resolution(scenario: Scenario, res: Resolution, floor: float) -> None:
    project, object_type = res.project_id, res.object_type
    applicable = applicable_rules(scenario, project, object_type)
    holds_on_target = target_holds(scenario, project, object_type)

    assert Counter(res.candidates) == Counter(applicable)
    assert res.floor_days == floor
    assert res.now == scenario.now

    # Holds on single objects never null the cutoff; they are listed.
    expected_object_holds = object_holds(scenario, project, object_type)
    assert Counter(res.object_holds) == Counter(expected_object_holds)
    assert res.held_object_ids == {h.object_id for h in expected_object_holds}

    if applicable:
        shortest = min(r.days for r in applicable)
        assert res.winner is not None
        assert res.winner in applicable
        assert res.winner.days == shortest
    else:
        assert res.winner is None

    if holds_on_target:
        # A hold beats everything.
        assert res.hold in holds_on_target
        assert res.held
        assert res.cutoff is None
        assert res.retention_days is None
        assert not res.deletes
        assert not res.floor_applied
    elif not applicable:
        # No policy: keep forever.
        assert res.hold is None
        assert res.cutoff is None
        assert res.retention_days is None
        assert not res.floor_applied
    else:
        shortest = min(r.days for r in applicable)
        effective = max(shortest, floor)
        assert res.hold is None
        assert res.retention_days == effective
        assert res.cutoff == scenario.now - timedelta(days=effective)
        assert res.deletes
        assert res.floor_applied == (shortest < floor)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(scenario_st())
def test_resolve_matches_the_contract(scenario: Scenario) -> None:
    resolved = scenario.run()
    floor = expected_floor(scenario)
    assert resolved.floor_days == floor
    assert resolved.now == scenario.now

    pairs = [(r.project_id, r.object_type) for r in resolved.resolutions]
    assert len(pairs) == len(set(pairs)), "one resolution per (project, object type)"
    assert set(pairs) == {(p, t) for p in expected_projects(scenario) for t in OBJECT_TYPES}

    for res in resolved.resolutions:
        check_resolution(scenario, res, floor)
        assert resolved.get(res.project_id, res.object_type) is res


@settings(max_examples=200, deadline=None)
@given(scenario_st())
def test_every_expired_hold_is_ignored_with_a_warning(scenario: Scenario) -> None:
    resolved = scenario.run()
    expired = [h for h in scenario.holds if not is_active(h, scenario.now)]
    for hold in expired:
        assert any(hold.reason in w and "expired" in w for w in resolved.warnings), hold
        for res in resolved.resolutions:
            assert res.hold != hold
            assert hold not in res.object_holds
    assert sum("expired" in w for w in resolved.warnings) == len(expired)


@settings(max_examples=200, deadline=None)
@given(
    project=projects_st,
    other=projects_st,
    now=now_st,
    rules=st.lists(st.tuples(object_type_st, days_st, st.booleans()), max_size=8),
    hold_type=st.one_of(st.none(), object_type_st),
    floor=floor_st,
)
def test_active_target_hold_nulls_the_cutoff_whatever_the_rules(
    project, other, now, rules, hold_type, floor
) -> None:
    """Whatever rules apply, an active hold on the target keeps everything."""
    assume(other != project)
    policy_rules = tuple(
        RetentionRule(
            object_type=object_type,
            days=days,
            kind=SourceKind.LOCAL_PROJECT if scoped else SourceKind.LOCAL_DEFAULT,
            origin="rules.toml",
            project_id=project if scoped else None,
        )
        for object_type, days, scoped in rules
    )
    hold = Hold(project_id=project, reason="legal", origin="holds.toml", object_type=hold_type)
    policy = PolicySet(source="local", rules=policy_rules, holds=(hold,))
    resolved = resolve([policy], [project, other], now, min_retention_days=floor)
    for object_type in OBJECT_TYPES:
        res = resolved.get(project, object_type)
        if hold_type in (None, object_type):
            assert res.hold == hold
            assert res.cutoff is None
            assert res.retention_days is None
            assert not res.floor_applied
        else:
            assert res.hold is None
        # The hold names one project only.
        assert resolved.get(other, object_type).hold is None


@settings(max_examples=200, deadline=None)
@given(
    project=projects_st,
    object_ids=st.lists(st.uuids(version=4), min_size=1, max_size=4, unique=True),
    hold_type=st.one_of(st.none(), object_type_st),
    days=days_st,
    now=now_st,
)
def test_holds_on_single_objects_do_not_null_the_cutoff(
    project, object_ids, hold_type, days, now
) -> None:
    rules = tuple(
        RetentionRule(object_type=t, days=days, kind=SourceKind.LOCAL_DEFAULT, origin="d.toml")
        for t in OBJECT_TYPES
    )
    holds = tuple(
        Hold(
            project_id=project,
            reason=f"case {i}",
            origin="holds.toml",
            object_type=hold_type,
            object_id=object_id,
        )
        for i, object_id in enumerate(object_ids)
    )
    resolved = resolve([PolicySet(source="local", rules=rules, holds=holds)], [], now)
    effective = max(days, DEFAULT_MIN_RETENTION_DAYS)
    for object_type in OBJECT_TYPES:
        res = resolved.get(project, object_type)
        assert res.hold is None
        assert not res.held
        assert res.retention_days == effective
        assert res.cutoff == now - timedelta(days=effective)
        if hold_type in (None, object_type):
            assert res.object_holds == holds
            assert res.held_object_ids == frozenset(object_ids)
        else:
            assert res.object_holds == ()
            assert res.held_object_ids == frozenset()


@settings(max_examples=200, deadline=None)
@given(
    project=projects_st,
    now=now_st,
    expires_before=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)),
    days=days_st,
)
def test_expired_target_hold_does_not_keep_data(project, now, expires_before, days) -> None:
    """A hold whose expiry is at or before ``now`` is ignored: the rule applies again."""
    hold = Hold(project_id=project, reason="ended", origin="h.toml", expires=now - expires_before)
    rule = RetentionRule(
        object_type=ObjectType.DATASET, days=days, kind=SourceKind.LOCAL_DEFAULT, origin="d.toml"
    )
    resolved = resolve([PolicySet(source="local", rules=(rule,), holds=(hold,))], [project], now)
    res = resolved.get(project, ObjectType.DATASET)
    effective = max(days, 1.0)
    assert res.hold is None
    assert res.cutoff == now - timedelta(days=effective)
    assert any("ended" in w and "expired" in w for w in resolved.warnings)


@settings(max_examples=200, deadline=None)
@given(
    project=projects_st,
    now=now_st,
    expires_after=st.timedeltas(
        min_value=timedelta(microseconds=1), max_value=timedelta(days=3650)
    ),
)
def test_hold_expiring_after_now_is_active(project, now, expires_after) -> None:
    hold = Hold(project_id=project, reason="open", origin="h.toml", expires=now + expires_after)
    rule = RetentionRule(
        object_type=ObjectType.DATASET, days=5, kind=SourceKind.LOCAL_DEFAULT, origin="d.toml"
    )
    resolved = resolve([PolicySet(source="local", rules=(rule,), holds=(hold,))], [project], now)
    res = resolved.get(project, ObjectType.DATASET)
    assert res.hold == hold
    assert res.cutoff is None
    assert not any("expired" in w for w in resolved.warnings)


@settings(max_examples=200, deadline=None)
@given(
    project=projects_st,
    other=projects_st,
    now=now_st,
    days=days_st,
    object_type=object_type_st,
)
def test_rule_scope(project, other, now, days, object_type) -> None:
    """A project rule applies to its project only, and to its object type only."""
    rule = RetentionRule(
        object_type=object_type,
        days=days,
        kind=SourceKind.LOCAL_PROJECT,
        origin="p.toml",
        project_id=project,
    )
    resolved = resolve(
        [PolicySet(source="local", rules=(rule,))], [other], now, min_retention_days=0
    )
    for t in OBJECT_TYPES:
        res = resolved.get(project, t)
        if t == object_type:
            assert res.winner == rule
            assert res.cutoff == now - timedelta(days=days)
        else:
            assert res.winner is None
            assert res.cutoff is None
        if other != project:
            assert resolved.get(other, t).winner is None
            assert resolved.get(other, t).cutoff is None


@settings(max_examples=200, deadline=None)
@given(
    projects=st.lists(projects_st, min_size=1, max_size=5, unique=True),
    now=now_st,
    days=days_st,
    object_type=object_type_st,
)
def test_org_rule_applies_to_every_project(projects, now, days, object_type) -> None:
    rule = RetentionRule(
        object_type=object_type, days=days, kind=SourceKind.ORG_AUTOMATION, origin="org-auto"
    )
    resolved = resolve([PolicySet(source="cp", rules=(rule,))], projects, now)
    assert {r.project_id for r in resolved.resolutions} == set(projects)
    for project in projects:
        res = resolved.get(project, object_type)
        assert res.winner == rule
        assert res.cutoff == now - timedelta(days=max(days, 1.0))


@settings(max_examples=200, deadline=None)
@given(
    set_floors=st.lists(floor_st, min_size=1, max_size=4),
    configured=floor_st,
    now=now_st,
    days=days_st,
)
def test_floor_is_the_highest_stated_floor(set_floors, configured, now, days) -> None:
    sets = [
        PolicySet(source=f"s{i}", min_retention_days=floor) for i, floor in enumerate(set_floors)
    ]
    rule = RetentionRule(
        object_type=ObjectType.PROJECT_LOGS,
        days=days,
        kind=SourceKind.LOCAL_PROJECT,
        origin="p.toml",
        project_id=P1,
    )
    sets.append(PolicySet(source="rules", rules=(rule,)))
    resolved = resolve(sets, [], now, min_retention_days=configured)
    stated = [f for f in [*set_floors, configured] if f is not None]
    floor = max(stated) if stated else 1.0
    assert resolved.floor_days == floor
    res = resolved.get(P1, ObjectType.PROJECT_LOGS)
    assert res.floor_days == floor
    assert res.retention_days == max(days, floor)
    assert res.cutoff == now - timedelta(days=max(days, floor))
    assert res.floor_applied == (days < floor)


@settings(max_examples=200, deadline=None)
@given(scenario_st(realistic=True), st.randoms(use_true_random=False))
def test_resolution_does_not_depend_on_input_order(scenario: Scenario, rnd) -> None:
    """Shuffling policy sets, rules, holds and projects changes nothing."""
    first = scenario.run()
    shuffled_sets = []
    for policy_set in scenario.policy_sets:
        rules = list(policy_set.rules)
        holds = list(policy_set.holds)
        rnd.shuffle(rules)
        rnd.shuffle(holds)
        shuffled_sets.append(
            PolicySet(
                source=policy_set.source,
                rules=tuple(rules),
                holds=tuple(holds),
                min_retention_days=policy_set.min_retention_days,
            )
        )
    rnd.shuffle(shuffled_sets)
    projects = list(scenario.project_ids)
    rnd.shuffle(projects)
    second = resolve(
        shuffled_sets, projects, scenario.now, min_retention_days=scenario.min_retention_days
    )

    def key(resolved):
        return sorted(
            (
                (r.project_id, r.object_type),
                r.winner,
                r.retention_days,
                r.cutoff,
                r.hold is not None,
                r.held_object_ids,
            )
            for r in resolved.resolutions
        )

    assert key(first) == key(second)
    assert first.floor_days == second.floor_days


# --------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------


def _rule(kind: SourceKind, days: float, origin: str = "o", label: str = "", project=None):
    if project is None and kind in PROJECT_KINDS:
        project = P1
    return RetentionRule(
        object_type=ObjectType.PROJECT_LOGS,
        days=days,
        kind=kind,
        origin=origin,
        project_id=project,
        label=label,
    )


def test_tie_between_kinds_names_the_most_specific_rule_in_any_order() -> None:
    rules = [
        _rule(SourceKind.LOCAL_DEFAULT, 30, "defaults.toml"),
        _rule(SourceKind.ORG_AUTOMATION, 30, "org-automation-1"),
        _rule(SourceKind.LOCAL_PROJECT, 30, "projects.toml"),
        _rule(SourceKind.PROJECT_AUTOMATION, 30, "automation-7"),
    ]
    winners = set()
    for order in itertools.permutations(rules):
        res = resolve_one(P1, ObjectType.PROJECT_LOGS, rules=order, holds=(), floor=1.0, now=NOW)
        winners.add(res.winner)
    assert winners == {rules[3]}
    res = resolve_one(P1, ObjectType.PROJECT_LOGS, rules=rules, holds=(), floor=1.0, now=NOW)
    assert res.source == "project-automation:automation-7"
    assert res.retention_days == 30
    assert res.cutoff == datetime(2026, 10, 28, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rules", "expected_index"),
    [
        # Kind order without the project automation: local project rule next.
        (
            [
                _rule(SourceKind.LOCAL_DEFAULT, 7, "a.toml"),
                _rule(SourceKind.ORG_AUTOMATION, 7, "auto"),
                _rule(SourceKind.LOCAL_PROJECT, 7, "z.toml"),
            ],
            2,
        ),
        # Org automation before local default.
        (
            [
                _rule(SourceKind.LOCAL_DEFAULT, 7, "a.toml"),
                _rule(SourceKind.ORG_AUTOMATION, 7, "z"),
            ],
            1,
        ),
        # Same kind: the first origin by name.
        (
            [
                _rule(SourceKind.LOCAL_DEFAULT, 7, "b.toml"),
                _rule(SourceKind.LOCAL_DEFAULT, 7, "a.toml"),
            ],
            1,
        ),
        # Same kind and origin: the first label by name.
        (
            [
                _rule(SourceKind.LOCAL_PROJECT, 7, "p.toml", "projects[1]"),
                _rule(SourceKind.LOCAL_PROJECT, 7, "p.toml", "projects[0]"),
            ],
            1,
        ),
        # A shorter rule always beats a more specific one.
        (
            [
                _rule(SourceKind.PROJECT_AUTOMATION, 7.5, "auto"),
                _rule(SourceKind.LOCAL_DEFAULT, 7.25, "defaults.toml"),
            ],
            1,
        ),
    ],
)
def test_tie_breaking_is_deterministic(rules, expected_index) -> None:
    for order in itertools.permutations(rules):
        res = resolve_one(P1, ObjectType.PROJECT_LOGS, rules=order, holds=(), floor=1.0, now=NOW)
        assert res.winner == rules[expected_index]


def test_projects_named_only_by_rules_or_holds_get_resolutions() -> None:
    named_by_rule = PolicySet(
        source="local",
        rules=(
            RetentionRule(
                object_type=ObjectType.DATASET,
                days=14,
                kind=SourceKind.LOCAL_PROJECT,
                origin="p.toml",
                project_id=P1,
            ),
        ),
    )
    named_by_hold = PolicySet(
        source="holds",
        holds=(Hold(project_id=P2, reason="audit", origin="h.toml"),),
    )
    resolved = resolve([named_by_rule, named_by_hold], [], NOW)
    assert sorted((r.project_id, r.object_type) for r in resolved.resolutions) == sorted(
        (p, t) for p in (P1, P2) for t in OBJECT_TYPES
    )
    dataset = resolved.get(P1, ObjectType.DATASET)
    assert dataset.retention_days == 14
    assert dataset.cutoff == datetime(2026, 11, 13, 3, 0, tzinfo=UTC)
    assert resolved.get(P1, ObjectType.EXPERIMENT).cutoff is None
    for t in OBJECT_TYPES:
        held = resolved.get(P2, t)
        assert held.held
        assert held.cutoff is None
        assert held.has_policy_or_hold


def test_org_rule_alone_names_no_project() -> None:
    rule = RetentionRule(
        object_type=ObjectType.DATASET, days=3, kind=SourceKind.LOCAL_DEFAULT, origin="d.toml"
    )
    resolved = resolve([PolicySet(source="local", rules=(rule,))], [], NOW)
    assert resolved.resolutions == ()
    with pytest.raises(KeyError):
        resolved.get(P1, ObjectType.DATASET)


def test_a_hold_on_an_object_names_its_project() -> None:
    hold = Hold(project_id=P2, reason="case", origin="h.toml", object_id=OBJ)
    resolved = resolve([PolicySet(source="holds", holds=(hold,))], [], NOW)
    res = resolved.get(P2, ObjectType.EXPERIMENT)
    assert res.held_object_ids == {OBJ}
    assert res.has_policy_or_hold
    assert res.cutoff is None  # no rule: keep forever


def test_no_policy_keeps_everything() -> None:
    resolved = resolve([], [P1], NOW)
    assert resolved.floor_days == DEFAULT_MIN_RETENTION_DAYS == 1.0
    for t in OBJECT_TYPES:
        res = resolved.get(P1, t)
        assert res.winner is None
        assert res.cutoff is None
        assert res.retention_days is None
        assert not res.deletes
        assert not res.has_policy_or_hold
        assert res.source == "none"
    assert resolved.warnings == ()


def test_floor_clamps_and_warns() -> None:
    rule = _rule(SourceKind.LOCAL_PROJECT, 0.25, "p.toml")
    resolved = resolve([PolicySet(source="local", rules=(rule,), min_retention_days=2)], [], NOW)
    res = resolved.get(P1, ObjectType.PROJECT_LOGS)
    assert res.winner == rule
    assert res.floor_applied
    assert res.retention_days == 2
    assert res.cutoff == datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    floor_warnings = [w for w in resolved.warnings if "floor" in w]
    assert len(floor_warnings) == 1
    assert f"{P1}/project_logs" in floor_warnings[0]
    assert "0.25 days" in floor_warnings[0]


def test_rule_equal_to_the_floor_is_not_clamped() -> None:
    rule = _rule(SourceKind.LOCAL_DEFAULT, 1.0, "d.toml")
    res = resolve([PolicySet(source="local", rules=(rule,))], [P1], NOW).get(
        P1, ObjectType.PROJECT_LOGS
    )
    assert res.retention_days == 1.0
    assert not res.floor_applied


def test_held_target_reports_no_floor_even_below_floor() -> None:
    rule = _rule(SourceKind.LOCAL_PROJECT, 0, "p.toml")
    hold = Hold(project_id=P1, reason="legal", origin="h.toml", object_type=ObjectType.PROJECT_LOGS)
    resolved = resolve([PolicySet(source="local", rules=(rule,), holds=(hold,))], [], NOW)
    res = resolved.get(P1, ObjectType.PROJECT_LOGS)
    assert res.winner == rule
    assert res.hold == hold
    assert res.retention_days is None
    assert res.cutoff is None
    assert not res.floor_applied
    assert not any("floor" in w for w in resolved.warnings)


def test_zero_retention_with_zero_floor_cuts_at_now() -> None:
    rule = _rule(SourceKind.LOCAL_DEFAULT, 0, "d.toml")
    res = resolve([PolicySet(source="local", rules=(rule,))], [P1], NOW, min_retention_days=0).get(
        P1, ObjectType.PROJECT_LOGS
    )
    assert res.retention_days == 0
    assert res.cutoff == NOW
    assert not res.floor_applied


def test_fractional_retention_cutoff_is_exact() -> None:
    rule = _rule(SourceKind.LOCAL_DEFAULT, 1.5, "d.toml")
    res = resolve([PolicySet(source="local", rules=(rule,))], [P1], NOW).get(
        P1, ObjectType.PROJECT_LOGS
    )
    assert res.cutoff == datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


def test_now_is_converted_to_utc() -> None:
    local_now = datetime(2026, 11, 27, 8, 0, tzinfo=timezone(timedelta(hours=5)))
    rule = _rule(SourceKind.LOCAL_DEFAULT, 30, "d.toml")
    resolved = resolve([PolicySet(source="local", rules=(rule,))], [P1], local_now)
    assert resolved.now == NOW
    assert resolved.now.utcoffset() == timedelta(0)
    assert resolved.get(P1, ObjectType.PROJECT_LOGS).cutoff == datetime(
        2026, 10, 28, 3, 0, tzinfo=UTC
    )


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        resolve([], [P1], datetime(2026, 11, 27, 3, 0))


def test_hold_of_one_type_leaves_other_types_to_the_rules() -> None:
    rules = (
        _rule(SourceKind.LOCAL_DEFAULT, 10, "d.toml"),
        RetentionRule(
            object_type=ObjectType.EXPERIMENT,
            days=20,
            kind=SourceKind.LOCAL_DEFAULT,
            origin="d.toml",
        ),
    )
    hold = Hold(project_id=P1, reason="x", origin="h.toml", object_type=ObjectType.EXPERIMENT)
    resolved = resolve([PolicySet(source="local", rules=rules, holds=(hold,))], [], NOW)
    assert resolved.get(P1, ObjectType.EXPERIMENT).cutoff is None
    assert resolved.get(P1, ObjectType.PROJECT_LOGS).cutoff == NOW - timedelta(days=10)
    assert resolved.get(P1, ObjectType.DATASET).cutoff is None  # no rule for datasets


def test_an_object_hold_naming_the_wrong_project_still_keeps_the_object() -> None:
    named, actual = UUID(int=1, version=4), UUID(int=2, version=4)
    experiment = UUID(int=3, version=4)
    hold = Hold(
        project_id=named,
        reason="baseline",
        origin="h.toml",
        object_type=ObjectType.EXPERIMENT,
        object_id=experiment,
    )
    rules = (
        RetentionRule(
            object_type=ObjectType.EXPERIMENT,
            days=10,
            kind=SourceKind.LOCAL_DEFAULT,
            origin="d.toml",
        ),
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    resolved = resolve([PolicySet(source="s", rules=rules, holds=(hold,))], [actual], now)
    assert resolved.get(actual, ObjectType.EXPERIMENT).held_object_ids == {experiment}
    assert resolved.get(actual, ObjectType.DATASET).held_object_ids == frozenset()


def test_thousands_of_projects_each_get_their_own_rules_in_source_order() -> None:
    """An org with an automation per project: each target's candidates are the org rules
    and its own, in the order the sources gave them (rules are looked up by target, not
    scanned for each one), and an object hold reaches every target of its type."""
    projects = [UUID(int=i + 1) for i in range(3_000)]
    default = RetentionRule(ObjectType.PROJECT_LOGS, 90, SourceKind.LOCAL_DEFAULT, "d.toml")
    own = {
        p: RetentionRule(
            ObjectType.PROJECT_LOGS, 10 + i % 50, SourceKind.PROJECT_AUTOMATION, f"a{i}", p
        )
        for i, p in enumerate(projects)
    }
    late = RetentionRule(ObjectType.PROJECT_LOGS, 95, SourceKind.ORG_AUTOMATION, "org")
    rules = (own[projects[0]], default, *list(own.values())[1:], late)
    object_hold = Hold(projects[7], "audit", "h.toml", ObjectType.DATASET, OBJ)
    whole = Hold(projects[9], "legal", "h.toml")
    policy = PolicySet("x", rules=rules, holds=(object_hold, whole))
    resolved = resolve([policy], projects, NOW, min_retention_days=1)
    assert len(resolved.resolutions) == 3 * len(projects)
    by_key = {(r.project_id, r.object_type): r for r in resolved.resolutions}
    for i, p in enumerate(projects):
        logs = by_key[(p, ObjectType.PROJECT_LOGS)]
        expected = (own[p], default, late) if i == 0 else (default, own[p], late)
        assert logs.candidates == expected
        assert logs.winner == own[p]  # a hold on the target keeps it whatever wins
        assert logs.hold == (whole if i == 9 else None)
        assert logs.cutoff == (None if i == 9 else NOW - timedelta(days=10 + i % 50))
        assert by_key[(p, ObjectType.DATASET)].object_holds == (object_hold,)
        assert by_key[(p, ObjectType.DATASET)].candidates == ()
        assert by_key[(p, ObjectType.EXPERIMENT)].object_holds == ()
