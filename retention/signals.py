"""SIGTERM and SIGINT: finish the batch in flight, record the run as partial, exit 5.

The first signal sets a flag that the engine reads between batches (a batch is one short
transaction). A second signal exits at once; the database rolls back the open batch, and
the next run resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import ExitCode

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is not None:
            os._exit(int(ExitCode.PARTIAL))  # second signal: stop now; the batch rolls back
        self.signal = signum
        log.warning(
            "%s received: stopping after the batch in flight (again to stop at once)",
            signal.Signals(signum).name,
        )


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    flag = StopFlag()
    previous = {s: signal.signal(s, flag._handle) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
