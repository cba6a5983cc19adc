"""Every environment variable the deployment files set is one the worker reads, with
a value the real Settings loader accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from retention.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Read by something else than the worker's settings.
NOT_SETTINGS = {"PYTHONUNBUFFERED", "JOB_COMPLETION_INDEX", "SHELL", "PATH"}


def _aliases() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias: Any = field.validation_alias
        names.update(str(choice) for choice in alias.choices)
    return names


def _kubernetes_envs() -> list[tuple[str, dict[str, str]]]:
    """(container, env as the pod sees it: ConfigMap envFrom, then env; secrets stand-ins)."""
    docs = [
        d
        for p in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]
    config = {
        d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"
    }
    found = []
    for doc in docs:
        if doc.get("kind") not in ("CronJob", "Job"):
            continue
        spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        pod = spec["template"]["spec"]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            env: dict[str, str] = {}
            for source in c.get("envFrom", []):
                env.update(config[source["configMapRef"]["name"]])
            for entry in c.get("env", []):
                env[entry["name"]] = entry.get("value", "postgresql://u@db.example:5432/bt")
            found.append((f"{doc['metadata']['name']}/{c['name']}", env))
    return found


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def _dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return {
        k: v
        for line in text.splitlines()
        if line.startswith("ENV ")
        for k, v in re.findall(r"(\w+)=(\S+)", line[4:])
    }


def _all_envs() -> list[tuple[str, dict[str, str]]]:
    crontab = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"(?m)^([A-Z_]+)=(\S*)$", (DEPLOY / "cron" / "retention.crontab").read_text()
        )
    }
    return [
        *(("Dockerfile+" + name, {**_dockerfile_env(), **env}) for name, env in _kubernetes_envs()),
        ("retention.env.example", _env_file(DEPLOY / "systemd" / "retention.env.example")),
        ("Dockerfile", _dockerfile_env()),
        ("crontab", crontab),
    ]


@pytest.mark.parametrize(("where", "env"), _all_envs(), ids=[w for w, _ in _all_envs()])
def test_every_deploy_env_variable_is_read_and_accepted(
    where: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """passes: checks that each variable set by the Dockerfile, the ConfigMap and the Jobs'
    containers, retention.env.example and the crontab is a name Settings reads (a typo would
    be ignored silently: extra="ignore"), and that load_settings accepts the values."""
    unknown = set(env) - _aliases() - NOT_SETTINGS
    assert not unknown, f"{where}: not read by the worker: {sorted(unknown)}"
    for name in _aliases():
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        if key not in NOT_SETTINGS:
            monkeypatch.setenv(key, value)
    settings = load_settings()
    if "RETENTION_MAX_RUNTIME" in env:
        assert settings.max_runtime is not None and settings.max_runtime.total_seconds() == 3000
    if "RETENTION_POLICY_DIR" in env:
        assert settings.policy_dir_required
