"""Arrays passed to PostgreSQL as one literal (``tables.array_literal``): receipts, counts
and the block sweep's targets. Whatever the strings hold, the server reads back exactly
the values given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention.tables import array_literal
from tests.conftest import engine_for

# PostgreSQL text holds any character UTF-8 can encode (no lone surrogates) but NUL
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)


def _round_trip(url: str, literal: str, sql_type: str) -> list[object]:
    with engine_for(url).connect() as conn:
        value = conn.execute(sa.text(f"SELECT CAST(:v AS {sql_type}[])"), {"v": literal})
        return list(value.scalar_one())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.one_of(st.none(), TEXT, st.sampled_from(["NULL", "", "{}", '"', "\\", " a ", "a,b"]))
    )
)
def test_any_text_comes_back_exactly(pg_url: str, values: list[str | None]) -> None:
    assert _round_trip(pg_url, array_literal(values), "text") == values


def test_numbers_uuids_and_timestamps_come_back_exactly(pg_url: str) -> None:
    ids = [UUID(int=0), UUID("12345678-1234-5678-9abc-def012345678")]
    assert _round_trip(pg_url, array_literal(ids), "uuid") == ids
    numbers = [0, -1, 2**62, None]
    assert _round_trip(pg_url, array_literal(numbers), "bigint") == numbers
    days = [30.0, 0.5, 1e-6, None]
    assert _round_trip(pg_url, array_literal(days), "float8") == days
    times = [
        datetime(2026, 11, 27, 3, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        None,
    ]
    assert _round_trip(pg_url, array_literal(times), "timestamptz") == times


def test_naive_timestamps_and_booleans_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        array_literal([datetime(2026, 1, 1)])
    with pytest.raises(TypeError):
        array_literal([True])
