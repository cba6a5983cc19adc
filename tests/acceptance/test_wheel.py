"""The built wheel alone carries everything: the command, the migrations, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_migrates_outside_the_source_tree(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("retention-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    command = str(env_dir / "bin" / "retention")
    workdir = tmp_path / "elsewhere"  # no source tree, no policies/ folder here
    workdir.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    url = f"sqlite:///{tmp_path / 'worker.sqlite3'}"

    def retention(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [command, "--database-url", url, *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert retention("--help").returncode == 0
    upgraded = retention("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert retention("db", "check").returncode == 0
    demo = retention("--state-dir", str(tmp_path / "state"), "demo", "--events", "3000")
    assert demo.returncode == 0, demo.stderr
    assert "Retention purge: run 1 succeeded" in demo.stdout
    # a dry run from the installed wheel alone, against the demo's data plane
    state = tmp_path / "state"
    dry = subprocess.run(
        [
            command,
            "--database-url",
            f"sqlite:///{state / 'demo.sqlite3'}",
            "--policy-dir",
            str(state / "demo-policies"),
            "purge",
            "--dry-run",
            "--format",
            "json",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True
