"""Running the installed ``retention`` command as a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def retention_command() -> str:
    """The console script installed next to this interpreter."""
    candidate = Path(sys.executable).parent / "retention"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("retention")
    if not found:
        raise RuntimeError("the retention command is not installed (pip install -e .)")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RETENTION_", "BRAINTRUST_", "OUTBOUND_")) and k != "PG_URL"
    }
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> Result:
    done = subprocess.run(
        [retention_command(), *args],
        env=env if env is not None else clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text (a textfile, a scrape): sample name with labels -> value."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def scrape_metrics(port: int) -> dict[str, float]:
    """``/metrics`` on ``port``; empty while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return parse_metrics(r.read().decode())
    except OSError:
        return {}


def start_schedule(
    env: dict[str, str], port: int, stderr: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """``retention schedule`` firing every 2 seconds and serving ``/metrics`` on ``port``."""
    return subprocess.Popen(
        [
            retention_command(),
            "schedule",
            "--cron",
            "* * * * * */2",
            "--metrics-port",
            str(port),
            "--allow-large-deletes",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def kill_when(args: list[str], env: dict[str, str], ready: Callable[[], bool]) -> bool:
    """Run ``retention *args`` and SIGKILL it once ``ready()``; True if it died mid-run.

    A run that ends by itself before ``ready()`` must have succeeded (exit 0); its stderr is
    printed otherwise. ``ready()`` is polled every few milliseconds, so it must not wait on
    the run (tests put SQLite files in write-ahead logging, as 'retention db upgrade' does).
    """
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            [retention_command(), *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    assert process.returncode == 0, f"the run failed ({process.returncode})"
                    return False
                if ready():
                    process.send_signal(signal.SIGKILL)
                    process.wait(timeout=30)
                    return process.returncode == -signal.SIGKILL
                time.sleep(0.005)
            raise AssertionError("the run made no progress")
        except AssertionError:
            stderr.seek(0)
            print(stderr.read()[-2000:])
            raise
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
