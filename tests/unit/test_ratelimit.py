"""The client-side rate limit (DESIGN §6), held exactly with an injected clock, not wall time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.ratelimit import RateLimiter


class FakeClock:
    """Monotonic seconds that move only when someone sleeps (or the test advances them)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        # a limiter that must wait always waits a positive time; a zero (or negative) sleep
        # means it would spin forever on an injected clock
        assert seconds > 0, f"asked to sleep {seconds!r} at {self.now!r}"
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _limiter(n: int, window: float, clock: FakeClock) -> RateLimiter:
    return RateLimiter(n, window, clock=clock, sleep=clock.sleep)


def _max_in_any_window(times: list[float], window: float) -> int:
    """The most sends in any half-open window [t, t + window) of the recorded times."""
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t < start + window))
    return best


def test_n_requests_in_a_window_pass_without_waiting() -> None:
    clock = FakeClock()
    limiter = _limiter(5, 60, clock)
    for _ in range(5):
        assert limiter.acquire() == 0.0
        clock.advance(1)
    assert clock.sleeps == []
    assert clock.now == 1005.0


def test_request_n_plus_one_waits_exactly_until_the_oldest_leaves_the_window() -> None:
    clock = FakeClock()
    limiter = _limiter(3, 60, clock)
    sends = []
    for _ in range(3):
        limiter.acquire()
        sends.append(clock.now)
        clock.advance(10)  # sends at 1000, 1010, 1020; now 1030
    assert limiter.acquire() == 30.0
    assert clock.sleeps == [30.0]
    assert clock.now == sends[0] + 60  # the oldest just left the window
    # the next one waits for the second oldest, no longer
    assert limiter.acquire() == 10.0
    assert clock.now == sends[1] + 60
    assert clock.sleeps == [30.0, 10.0]


def test_a_request_exactly_one_window_later_does_not_wait() -> None:
    clock = FakeClock()
    limiter = _limiter(2, 60, clock)
    limiter.acquire()
    limiter.acquire()
    clock.advance(60)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == 0.0
    assert clock.sleeps == []
    assert limiter.acquire() == 60.0


def test_a_steady_stream_of_1000_requests_never_exceeds_n_in_any_window() -> None:
    n, window = 100, 60.0
    clock = FakeClock()
    limiter = _limiter(n, window, clock)
    sends: list[float] = []
    waits: list[float] = []
    for _ in range(1000):
        waits.append(limiter.acquire())
        sends.append(clock.now)
        clock.advance(0.25)  # the caller asks four times a second, faster than allowed
    # every window of W seconds holds at most N sends ...
    assert all(sends[i + n] - sends[i] >= window for i in range(len(sends) - n))
    assert _max_in_any_window(sends, window) == n
    # ... and the limiter waited no longer than needed: each wait ends when a slot frees
    for i, waited in enumerate(waits):
        if waited:
            assert sends[i] == sends[i - n] + window
    assert sum(waits) == pytest.approx(sum(clock.sleeps))
    # 1000 requests at 100 per minute: the last goes out in the 10th window
    assert sends[-1] - sends[0] == 9 * window + 99 * 0.25


def test_zero_disables_the_limit() -> None:
    clock = FakeClock()
    limiter = _limiter(0, 60, clock)
    for _ in range(10_000):
        assert limiter.acquire() == 0.0
    assert clock.sleeps == []


def test_the_default_clock_works_without_injection() -> None:
    limiter = RateLimiter(3, 60)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("max_requests", "window"),
    [(-1, 60), (5, 0), (5, -1), (0, 0), (5, -0.001)],
)
def test_invalid_arguments_raise_value_error(max_requests: int, window: float) -> None:
    with pytest.raises(ValueError, match="max_requests must be >= 0 and window_seconds > 0"):
        RateLimiter(max_requests, window)


@pytest.mark.parametrize("window", [math.nan, math.inf])
def test_a_non_finite_window_raises_value_error(window: float) -> None:
    """NaN or infinity would make the limiter sleep NaN/forever; they are invalid arguments."""
    with pytest.raises(ValueError, match="window"):
        RateLimiter(5, window)


def test_a_window_end_that_rounds_does_not_spin() -> None:
    """55.63584761356655 + 60 - 60 == 55.63584761356654 in floating point.

    After sleeping until ``oldest + W`` the oldest send must count as gone; otherwise the
    limiter computes a pause of 0.0 and, with an injected clock, sleeps 0 s forever.
    """
    clock = FakeClock(start=55.63584761356655)
    limiter = _limiter(1, 60.0, clock)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(60.0)
    assert clock.sleeps == [pytest.approx(60.0)]


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=8),
    window=st.integers(min_value=1, max_value=500),
    gaps=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=120),
)
def test_property_send_times_match_the_ideal_sliding_window(
    n: int, window: int, gaps: list[int]
) -> None:
    """Whole seconds keep float arithmetic exact, so the model is compared with ``==``.

    The ideal limiter sends request i at max(arrival_i, send_{i-n} + W): never more than n
    in a window, and never later than that.
    """
    clock = FakeClock(start=0.0)
    limiter = _limiter(n, float(window), clock)
    sends: list[float] = []
    expected: list[float] = []
    for i, gap in enumerate(gaps):
        clock.advance(gap)
        arrival = clock.now
        earliest = arrival if i < n else max(arrival, expected[i - n] + window)
        expected.append(earliest)
        waited = limiter.acquire()
        sends.append(clock.now)
        assert waited == clock.now - arrival
    assert sends == expected
    assert all(sends[i + n] - sends[i] >= window for i in range(len(sends) - n))
    assert _max_in_any_window(sends, float(window)) <= n
    assert all(s > 0 for s in clock.sleeps)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=6),
    window=st.floats(min_value=0.001, max_value=1000, allow_nan=False, allow_infinity=False),
    gaps=st.lists(
        st.floats(min_value=0, max_value=100, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=60,
    ),
)
def test_property_random_float_times_never_exceed_n_per_window(
    n: int, window: float, gaps: list[float]
) -> None:
    clock = FakeClock(start=0.0)
    limiter = _limiter(n, window, clock)
    sends: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        arrival = clock.now
        limiter.acquire()
        assert clock.now >= arrival
        sends.append(clock.now)
    assert sends == sorted(sends)
    # n + 1 consecutive sends always span at least one window (float rounding aside)
    tolerance = 1e-9 * max(1.0, sends[-1])
    assert all(sends[i + n] - sends[i] >= window - tolerance for i in range(len(sends) - n))
