"""A client-side sliding-window rate limit: at most N requests in any window of W seconds.

Time is injected (``clock`` in seconds, monotonic; ``sleep``), so tests hold it exactly.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        max_requests: int,
        window_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_requests < 0 or not math.isfinite(window_seconds) or window_seconds <= 0:
            raise ValueError("max_requests must be >= 0 and window_seconds > 0 (finite)")
        self.max_requests = max_requests  # 0: no limit
        self.window = window_seconds
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()

    def acquire(self) -> float:
        """Wait until one more request fits in the window; return the seconds waited."""
        if self.max_requests == 0:
            return 0.0
        waited = 0.0
        now = self._clock()
        while True:
            # A request leaves the window at its deadline; one comparison decides both the
            # pop and the pause, so float rounding cannot leave a zero-length pause looping.
            while self._sent and self._sent[0] + self.window <= now:
                self._sent.popleft()
            if len(self._sent) < self.max_requests:
                self._sent.append(now)
                return waited
            deadline = self._sent[0] + self.window
            pause = deadline - now
            self._sleep(pause)
            waited += pause
            now = max(self._clock(), deadline)
