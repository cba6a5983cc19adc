"""Local policy files (DESIGN §2): every ``*.toml`` in the folder, strict keys and values."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention.errors import ExitCode, PolicyError
from retention.models import MAX_RETENTION_DAYS, Hold, ObjectType, PolicySet, SourceKind
from retention.policyfiles import load_policy_dir, load_policy_file, parse_policy_document

P1 = "5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11"
P2 = "0b7e3a52-8f0e-4c1b-9d6e-2a4b5c6d7e8f"
OBJ = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"

DESIGN_EXAMPLE = f"""
[defaults]                      # org-wide, per object type, in days (fractions allowed)
project_logs = 90
experiment = 365
dataset = 180

[[projects]]                    # per-project rules
id = "{P1}"
project_logs = 30
dataset = 14

[[holds]]                       # never delete what a hold covers
project = "{P1}"
object_type = "experiment"      # optional: every type when absent
object_id = "{OBJ}"             # optional: one object
reason = "legal matter 2026-14"
expires = 2027-01-31            # optional; an expired hold is ignored with a warning

[safety]
min_retention_days = 1
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def parse(text: str, origin: str = "policy.toml") -> PolicySet:
    return parse_policy_document(tomllib.loads(text), origin=origin)


def rule_map(policy: PolicySet) -> dict[tuple[str | None, ObjectType], float]:
    return {
        (str(r.project_id) if r.project_id else None, r.object_type): r.days for r in policy.rules
    }


HOLD_HEAD = f'[[holds]]\nproject = "{P1}"\nreason = "legal"\n'


# --------------------------------------------------------------------------------------
# Valid documents
# --------------------------------------------------------------------------------------


def test_design_example_parses(tmp_path: Path) -> None:
    path = write(tmp_path, "retention.toml", DESIGN_EXAMPLE)
    policy = load_policy_file(path)

    assert rule_map(policy) == {
        (None, ObjectType.PROJECT_LOGS): 90.0,
        (None, ObjectType.EXPERIMENT): 365.0,
        (None, ObjectType.DATASET): 180.0,
        (P1, ObjectType.PROJECT_LOGS): 30.0,
        (P1, ObjectType.DATASET): 14.0,
    }
    assert len(policy.rules) == 5
    for rule in policy.rules:
        assert rule.origin == str(path)
        assert isinstance(rule.days, float)
        if rule.project_id is None:
            assert rule.kind == SourceKind.LOCAL_DEFAULT
        else:
            assert rule.kind == SourceKind.LOCAL_PROJECT
            assert rule.project_id == UUID(P1)

    assert policy.holds == (
        Hold(
            project_id=UUID(P1),
            reason="legal matter 2026-14",
            origin=str(path),
            object_type=ObjectType.EXPERIMENT,
            object_id=UUID(OBJ),
            expires=datetime(2027, 2, 1, 0, 0, tzinfo=UTC),
        ),
    )
    assert policy.min_retention_days == 1.0
    assert policy.warnings == ()
    assert policy.projects is None


def test_fractional_and_zero_days() -> None:
    policy = parse("[defaults]\nproject_logs = 0.5\ndataset = 0\n[safety]\nmin_retention_days = 0")
    assert rule_map(policy) == {
        (None, ObjectType.PROJECT_LOGS): 0.5,
        (None, ObjectType.DATASET): 0.0,
    }
    assert policy.min_retention_days == 0.0


def test_max_retention_days_is_allowed() -> None:
    policy = parse(f"[defaults]\nexperiment = {MAX_RETENTION_DAYS}")
    assert rule_map(policy) == {(None, ObjectType.EXPERIMENT): MAX_RETENTION_DAYS}


def test_empty_document_is_an_empty_policy() -> None:
    policy = parse("")
    assert policy.rules == ()
    assert policy.holds == ()
    assert policy.min_retention_days is None


def test_project_name_labels_its_rules() -> None:
    policy = parse(
        f'[[projects]]\nid = "{P1}"\nname = "billing"\nexperiment = 7\n'
        f'[[projects]]\nid = "{P2}"\ndataset = 3\n'
    )
    labels = {(str(r.project_id), r.object_type): r.label for r in policy.rules}
    assert labels == {
        (P1, ObjectType.EXPERIMENT): "billing",
        (P2, ObjectType.DATASET): "projects[1]",
    }


def test_hold_without_optional_keys_covers_every_type_forever() -> None:
    policy = parse(HOLD_HEAD)
    assert policy.holds == (Hold(project_id=UUID(P1), reason="legal", origin="policy.toml"),)


def test_hold_reason_is_stripped() -> None:
    policy = parse(f'[[holds]]\nproject = "{P1}"\nreason = "  audit  "\n')
    assert policy.holds[0].reason == "audit"


def test_several_files_combine(tmp_path: Path) -> None:
    write(
        tmp_path,
        "10-defaults.toml",
        "[defaults]\nproject_logs = 90\n[safety]\nmin_retention_days = 2",
    )
    write(tmp_path, "20-projects.toml", f'[[projects]]\nid = "{P1}"\nproject_logs = 30\n')
    write(
        tmp_path,
        "30-holds.toml",
        f'[[holds]]\nproject = "{P2}"\nreason = "audit"\n[safety]\nmin_retention_days = 3.5',
    )
    write(tmp_path, "40-more.toml", "[defaults]\nproject_logs = 60\n")

    policy = load_policy_dir(tmp_path)

    assert sorted((r.days, str(r.project_id), Path(r.origin).name) for r in policy.rules) == [
        (30.0, P1, "20-projects.toml"),
        (60.0, "None", "40-more.toml"),
        (90.0, "None", "10-defaults.toml"),
    ]
    assert [(h.project_id, h.reason, Path(h.origin).name) for h in policy.holds] == [
        (UUID(P2), "audit", "30-holds.toml")
    ]
    # The highest stated floor wins.
    assert policy.min_retention_days == 3.5


def test_folder_without_floor_states_none(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[defaults]\ndataset = 5")
    assert load_policy_dir(tmp_path).min_retention_days is None


def test_non_toml_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "rules.toml", "[defaults]\ndataset = 5")
    write(tmp_path, "README.md", "this = is not = toml [")
    write(tmp_path, "rules.toml.bak", "garbage [[[")
    write(tmp_path, "notes.txt", "[defaults]\ndataset = 1")
    write(tmp_path, "toml", "[defaults]\ndataset = 1")
    policy = load_policy_dir(tmp_path)
    assert rule_map(policy) == {(None, ObjectType.DATASET): 5.0}


def test_empty_folder_is_an_empty_policy_only_when_not_required(tmp_path: Path) -> None:
    """The default folder may be empty; a configured one without a *.toml file is how an
    unmounted volume looks, and is refused. An empty file is an empty policy."""
    policy = load_policy_dir(tmp_path, required=False)
    assert (policy.rules, policy.holds, policy.min_retention_days) == ((), (), None)
    with pytest.raises(PolicyError, match=r"holds no \*\.toml policy files"):
        load_policy_dir(tmp_path)
    (tmp_path / "none.toml").write_text("")
    policy = load_policy_dir(tmp_path)
    assert (policy.rules, policy.holds, policy.min_retention_days) == ((), (), None)


def test_missing_folder_is_an_error_when_required(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(PolicyError, match="nope") as info:
        load_policy_dir(missing, required=True)
    assert "does not exist" in info.value.message
    assert info.value.exit_code == ExitCode.USAGE
    # required is the default
    with pytest.raises(PolicyError):
        load_policy_dir(missing)


def test_missing_folder_is_empty_when_not_required(tmp_path: Path) -> None:
    policy = load_policy_dir(tmp_path / "nope", required=False)
    assert policy.rules == ()
    assert policy.holds == ()
    assert policy.min_retention_days is None


def test_a_file_where_the_folder_should_be_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "policies", "[defaults]\ndataset = 1")
    with pytest.raises(PolicyError, match="not a folder"):
        load_policy_dir(path, required=False)


def test_one_bad_file_fails_the_folder(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[defaults]\ndataset = 5")
    write(tmp_path, "b.toml", "[defaults]\ndatset = 5")
    with pytest.raises(PolicyError) as info:
        load_policy_dir(tmp_path)
    assert "b.toml" in info.value.message
    assert "datset" in info.value.message


# --------------------------------------------------------------------------------------
# Hold expiry
# --------------------------------------------------------------------------------------


def test_date_expiry_keeps_the_hold_through_that_whole_day_utc() -> None:
    hold = parse(HOLD_HEAD + "expires = 2027-01-31").holds[0]
    assert hold.expires == datetime(2027, 2, 1, 0, 0, tzinfo=UTC)
    assert hold.active(datetime(2027, 1, 31, 0, 0, tzinfo=UTC))
    assert hold.active(datetime(2027, 1, 31, 23, 59, 59, 999999, tzinfo=UTC))
    assert not hold.active(datetime(2027, 2, 1, 0, 0, tzinfo=UTC))


def test_offset_datetime_expiry_is_used_as_is() -> None:
    hold = parse(HOLD_HEAD + "expires = 2027-01-31T12:30:00+02:00").holds[0]
    assert hold.expires == datetime(2027, 1, 31, 10, 30, tzinfo=UTC)
    assert hold.expires.utcoffset() == timedelta(0)


def test_utc_datetime_expiry() -> None:
    hold = parse(HOLD_HEAD + "expires = 2027-01-31T12:30:00Z").holds[0]
    assert hold.expires == datetime(2027, 1, 31, 12, 30, tzinfo=UTC)


def test_local_datetime_expiry_is_an_error() -> None:
    with pytest.raises(PolicyError) as info:
        parse(HOLD_HEAD + "expires = 2027-01-31T12:30:00", origin="holds.toml")
    assert "holds.toml" in info.value.message
    assert "holds[0].expires" in info.value.message
    assert "offset" in info.value.message


@pytest.mark.parametrize("value", ["12:30:00", '"2027-01-31"', "20270131", "true"])
def test_expiry_that_is_not_a_date_is_an_error(value: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(HOLD_HEAD + f"expires = {value}", origin="holds.toml")
    assert "holds.toml" in info.value.message
    assert "holds[0].expires" in info.value.message


def test_last_representable_date_keeps_the_hold_through_that_day() -> None:
    """``expires = 9999-12-31`` is a valid TOML date: the hold lasts through that day.

    Anything but a PolicySet or a PolicyError here would end the run as an unexpected error
    (exit 1) instead of a policy error (exit 2).
    """
    hold = parse(HOLD_HEAD + "expires = 9999-12-31").holds[0]
    assert hold.active(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))


@pytest.mark.parametrize("value", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00"])
def test_expiry_out_of_utc_range_is_a_policy_error(value: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(HOLD_HEAD + f"expires = {value}", origin="holds.toml")
    assert "holds.toml" in info.value.message
    assert "holds[0].expires" in info.value.message


# --------------------------------------------------------------------------------------
# Invalid documents: PolicyError naming the file and the key
# --------------------------------------------------------------------------------------

BAD_DOCUMENTS = {
    "unknown top-level key": ("[default]\ndataset = 1", "default"),
    "unknown top-level scalar": ("retention_days = 5", "retention_days"),
    "unknown key in defaults": ("[defaults]\nlogs = 5", "defaults.logs"),
    "unknown key in projects": (
        f'[[projects]]\nid = "{P1}"\nproject_log = 5',
        "projects[0].project_log",
    ),
    "unknown key in second project": (
        f'[[projects]]\nid = "{P1}"\n[[projects]]\nid = "{P2}"\nretention = 5',
        "projects[1].retention",
    ),
    "unknown key in holds": (HOLD_HEAD + "until = 2027-01-01", "holds[0].until"),
    "unknown key in safety": ("[safety]\nmin_retention = 1", "safety.min_retention"),
    "unknown object type in defaults": ("[defaults]\nexperiments = 5", "defaults.experiments"),
    "unknown object type in hold": (
        HOLD_HEAD + 'object_type = "experiments"',
        "holds[0].object_type",
    ),
    "non-string object type in hold": (HOLD_HEAD + "object_type = 3", "holds[0].object_type"),
    "negative days": ("[defaults]\ndataset = -1", "defaults.dataset"),
    "negative fractional days": ("[defaults]\ndataset = -0.5", "defaults.dataset"),
    "nan days": ("[defaults]\ndataset = nan", "defaults.dataset"),
    "inf days": ("[defaults]\ndataset = inf", "defaults.dataset"),
    "-inf days": ("[defaults]\ndataset = -inf", "defaults.dataset"),
    "boolean days": ("[defaults]\ndataset = true", "defaults.dataset"),
    "string days": ('[defaults]\ndataset = "30"', "defaults.dataset"),
    "array days": ("[defaults]\ndataset = [30]", "defaults.dataset"),
    "days above the maximum": (
        f"[defaults]\ndataset = {MAX_RETENTION_DAYS + 1}",
        "defaults.dataset",
    ),
    "huge integer days": ("[defaults]\ndataset = 9223372036854775807", "defaults.dataset"),
    "bad project days": (f'[[projects]]\nid = "{P1}"\nexperiment = -3', "projects[0].experiment"),
    "nan floor": ("[safety]\nmin_retention_days = nan", "safety.min_retention_days"),
    "negative floor": ("[safety]\nmin_retention_days = -1", "safety.min_retention_days"),
    "string floor": ('[safety]\nmin_retention_days = "1"', "safety.min_retention_days"),
    "project id not a UUID": ('[[projects]]\nid = "billing"\ndataset = 3', "projects[0].id"),
    "project id an integer": ("[[projects]]\nid = 42\ndataset = 3", "projects[0].id"),
    "missing project id": ("[[projects]]\ndataset = 3", "projects[0]"),
    "project name not a string": (f'[[projects]]\nid = "{P1}"\nname = 5', "projects[0].name"),
    "hold project not a UUID": ('[[holds]]\nproject = "x"\nreason = "r"', "holds[0].project"),
    "hold without project": ('[[holds]]\nreason = "r"', "holds[0]"),
    "hold object id not a UUID": (HOLD_HEAD + 'object_id = "0b7e…"', "holds[0].object_id"),
    "missing hold reason": (f'[[holds]]\nproject = "{P1}"', "holds[0]"),
    "empty hold reason": (f'[[holds]]\nproject = "{P1}"\nreason = ""', "holds[0].reason"),
    "blank hold reason": (f'[[holds]]\nproject = "{P1}"\nreason = "   "', "holds[0].reason"),
    "non-string hold reason": (f'[[holds]]\nproject = "{P1}"\nreason = 5', "holds[0].reason"),
    "projects as a table": (f'[projects]\nid = "{P1}"\ndataset = 3', "projects"),
    "holds as a table": (f'[holds]\nproject = "{P1}"\nreason = "r"', "holds"),
    "projects as an array of scalars": ("projects = [1, 2]", "projects[0]"),
    "defaults as an array of tables": ("[[defaults]]\ndataset = 3", "defaults"),
    "safety as a scalar": ("safety = 1", "safety"),
}


@pytest.mark.parametrize(("text", "key"), list(BAD_DOCUMENTS.values()), ids=list(BAD_DOCUMENTS))
def test_bad_document_is_a_policy_error_naming_file_and_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write(tmp_path, "broken-policy.toml", text)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    message = info.value.message
    assert str(path) in message
    assert key in message
    assert info.value.exit_code == ExitCode.USAGE == 2


def test_missing_key_messages_name_the_missing_key() -> None:
    with pytest.raises(PolicyError, match=r"holds\[0\]: missing required key 'reason'"):
        parse(f'[[holds]]\nproject = "{P1}"')
    with pytest.raises(PolicyError, match=r"projects\[0\]: missing required key 'id'"):
        parse("[[projects]]\ndataset = 3")


def test_unknown_key_message_lists_the_expected_keys() -> None:
    with pytest.raises(PolicyError) as info:
        parse("[safety]\nmin_retention = 1", origin="x.toml")
    assert info.value.message == (
        "x.toml: unknown key 'safety.min_retention' (expected one of min_retention_days)"
    )


@pytest.mark.parametrize(
    "text",
    [
        "[defaults\ndataset = 1",
        "[defaults]\ndataset = ",
        "[defaults]\ndataset = 1\ndataset = 2",
        "= 3",
        "[defaults]\ndataset = 1,",
    ],
)
def test_malformed_toml_is_a_policy_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "malformed.toml", text)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert str(path) in info.value.message
    assert "invalid TOML" in info.value.message


def test_non_utf8_file_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[[holds]]\nreason = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert str(path) in info.value.message


def test_malformed_file_in_folder_names_that_file(tmp_path: Path) -> None:
    write(tmp_path, "good.toml", "[defaults]\ndataset = 1")
    write(tmp_path, "bad.toml", "[defaults\n")
    with pytest.raises(PolicyError, match=r"bad\.toml"):
        load_policy_dir(tmp_path)


# --------------------------------------------------------------------------------------
# Fuzzing: only a PolicySet or a PolicyError, never anything else
# --------------------------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def load_or_policy_error(path: Path) -> None:
    """A PolicySet, or a PolicyError that names the file; any other exception fails."""
    message = None
    try:
        result = load_policy_file(path)
    except PolicyError as error:
        message = error.message
    if message is None:
        assert isinstance(result, PolicySet)
    else:
        assert str(path) in message


@FUZZ_SETTINGS
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_random_text_is_a_policy_set_or_a_policy_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    load_or_policy_error(path)


@FUZZ_SETTINGS
@given(data=st.binary())
def test_random_bytes_are_a_policy_set_or_a_policy_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    load_or_policy_error(path)


# Plausible-looking documents reach much deeper than random text: valid TOML built from
# the real keys with values of every TOML type, including extreme dates and numbers.
def toml_float(value: float) -> str:
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return repr(value)


toml_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.floats().map(toml_float),
    st.sampled_from(["true", "false", "[]", "{}", "[1, 2]", "{ a = 1 }"]),
    st.sampled_from([P1, P2, OBJ, "", "x", "  ", "experiment", "dataset", "0b7e…"]).map(
        lambda s: f'"{s}"'
    ),
    st.dates().map(date.isoformat),
    st.datetimes().map(datetime.isoformat),  # local date-time: no offset
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    st.tuples(st.datetimes(), st.integers(min_value=-23, max_value=23)).map(
        lambda t: f"{t[0].isoformat()}{t[1]:+03d}:00"
    ),
    st.times().map(lambda t: t.isoformat()),
)
days_values = st.one_of(
    st.integers(min_value=0, max_value=10_000).map(str),
    st.floats(min_value=0, max_value=2 * MAX_RETENTION_DAYS).map(toml_float),
)
uuid_values = st.sampled_from([P1, P2, OBJ]).map(lambda s: f'"{s}"')
expiry_values = st.one_of(
    st.dates().map(date.isoformat),
    # The edges of what Python dates hold, with offsets that push them past it in UTC.
    st.sampled_from(["0001-01-01", "9999-12-31"]),
    st.tuples(
        st.sampled_from(["0001-01-01T00:30:00", "9999-12-31T23:30:00"]),
        st.integers(min_value=-23, max_value=23),
    ).map(lambda t: f"{t[0]}{t[1]:+03d}:00"),
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    st.tuples(st.datetimes(), st.integers(min_value=-23, max_value=23)).map(
        lambda t: f"{t[0].isoformat()}{t[1]:+03d}:00"
    ),
)
# Per section: its keys with plausible values; any value now and then.
SECTIONS = {
    "[defaults]": {"project_logs": days_values, "experiment": days_values, "dataset": days_values},
    "[[projects]]": {
        "id": uuid_values,
        "name": st.just('"billing"'),
        "project_logs": days_values,
        "experiment": days_values,
        "dataset": days_values,
    },
    "[[holds]]": {
        "project": uuid_values,
        "reason": st.sampled_from(['"legal"', '""', '" "']),
        "object_type": st.sampled_from(['"experiment"', '"dataset"', '"project_logs"']),
        "object_id": uuid_values,
        "expires": expiry_values,
    },
    "[safety]": {"min_retention_days": days_values},
    "[projects]": {"id": uuid_values},
    "[holds]": {"project": uuid_values},
    "[other]": {"other": st.just("1")},
}


def rarely(draw) -> bool:
    """True one time out of ten."""
    return draw(st.integers(min_value=0, max_value=9)) == 0


@st.composite
def policy_like_documents(draw) -> str:
    """Mostly valid documents, with now and then a wrong section, key or value."""
    headers = draw(
        st.lists(
            st.sampled_from(["[defaults]", "[[projects]]", "[[holds]]", "[safety]"]),
            min_size=1,
            max_size=5,
        )
    )
    headers = [h for i, h in enumerate(headers) if h.startswith("[[") or h not in headers[:i]]
    if rarely(draw):
        headers.append(draw(st.sampled_from(["[projects]", "[holds]", "[other]"])))
    lines = []
    for header in headers:
        lines.append(header)
        section = SECTIONS[header]
        chosen = [key for key in section if not rarely(draw)]
        if rarely(draw):
            chosen.append("other")
        for key in chosen:
            plausible = section.get(key)
            value = draw(toml_values if plausible is None or rarely(draw) else plausible)
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


@FUZZ_SETTINGS
@given(text=policy_like_documents())
def test_policy_like_documents_are_a_policy_set_or_a_policy_error(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    load_or_policy_error(path)


@settings(max_examples=200, deadline=None)
@given(day=st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)))
def test_any_date_expiry_is_the_next_midnight_utc(day: date) -> None:
    hold = parse(HOLD_HEAD + f"expires = {day.isoformat()}").holds[0]
    assert hold.expires == datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
