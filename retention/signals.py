"""SIGTERM and SIGINT: finish the batch in flight, record the run as partial, exit 5.

The first signal sets a flag that the engine reads between batches (a batch is one short
transaction) and arms a timer: if the process has not stopped within the bound (default
10 s, inside Kubernetes' 30 s grace), it exits at once. A second signal exits at once too.
Either way the database rolls back the open batch, and the next run resumes from the last
checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import ExitCode

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    def __init__(self, bound: float | None = None) -> None:
        self.signal: int | None = None
        self.bound = bound
        self._stopped = threading.Event()

    def __call__(self) -> bool:
        return self.signal is not None

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less if a stop signal comes (an idle scheduler stops at
        once, well inside the bound, instead of sleeping on until the timer gives up)."""
        self._stopped.wait(seconds)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is not None:
            os._exit(int(ExitCode.PARTIAL))  # second signal: stop now; the batch rolls back
        self.signal = signum
        self._stopped.set()
        log.warning(
            "%s received: stopping after the batch in flight (again to stop at once)",
            signal.Signals(signum).name,
        )
        if self.bound is not None:
            timer = threading.Timer(self.bound, _give_up, args=(self.bound,))
            timer.daemon = True
            timer.start()

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


def _give_up(bound: float) -> None:
    log.error("not stopped within %.0fs of the signal: exiting now; the batch rolls back", bound)
    os._exit(int(ExitCode.PARTIAL))


@contextmanager
def stop_on_signals(bound: float | None = None) -> Iterator[StopFlag]:
    flag = StopFlag(bound)
    previous = {s: signal.signal(s, flag._handle) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
