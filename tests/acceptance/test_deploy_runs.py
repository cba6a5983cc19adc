"""The deployment files, run (not only schema-checked; a review in the sixth session).

Each Kubernetes container, the cron line and the systemd env file are executed as the
installed ``retention`` command against a real PostgreSQL, the way the pod or host would:

- the env is the Dockerfile's ``ENV``, then the ConfigMap (``envFrom``), then the container's
  ``env`` (secrets resolved: ``PG_URL`` -> the test database, the token file -> a mounted
  Secret);
- the volumes are laid out as the kubelet does (``..data`` symlink to a timestamped folder,
  one symlink per key), at temporary paths that replace the manifests' mount paths;
- the process runs as an unprivileged user (uid/gid 65534, standing in for 10001) with
  ``HOME`` unset and only the state folder and ``TMPDIR`` writable (readOnlyRootFilesystem);
- ``BRAINTRUST_API_URL`` (https://api.braintrust.dev in the ConfigMap) points at the fake
  control plane on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from tests.acceptance.cli import clean_env, retention_command
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane, project, retention_automation
from tests.support import generate, insert

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
CRONTAB = ROOT / "deploy" / "cron" / "retention.crontab"
DOCKERFILE = ROOT / "Dockerfile"

POLICY_MOUNT = "/etc/retention/policies"
TOKEN_MOUNT = "/var/run/secrets/retention"
STATE_MOUNT = "/var/lib/retention"
PLAN_MOUNT = "/etc/retention/plan"
NOBODY = 65534

Doc = dict[str, Any]


# -- the manifests -----------------------------------------------------------------------------


def _docs(name: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _find(kind: str, name: str) -> Doc:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _docs(path.name):
            if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
                return doc
    raise AssertionError(f"no {kind}/{name}")


def _pod(workload: Doc) -> Doc:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: Doc = spec["template"]["spec"]
    return pod


def _dockerfile_env() -> dict[str, str]:
    """The ``ENV`` lines of the Dockerfile (``KEY=value`` pairs, backslash continuations)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line[4:]):
                env[key] = value
    return env


# -- a pod, simulated --------------------------------------------------------------------------


def _configmap_volume(folder: Path, data: dict[str, str], mode: int, gid: int | None) -> None:
    """The kubelet's layout: ``..<timestamp>/KEY``, ``..data -> ..<timestamp>``, ``KEY ->
    ..data/KEY``."""
    folder.mkdir(parents=True)
    stamp = folder / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir()
    for key, value in data.items():
        (stamp / key).write_text(value)
        (stamp / key).chmod(mode)
        if gid is not None and os.geteuid() == 0:
            os.chown(stamp / key, 0, gid)
        (folder / key).symlink_to(f"..data/{key}")
    (folder / "..data").symlink_to(stamp.name)
    os.chmod(stamp, 0o755)
    os.chmod(folder, 0o755)


@dataclass
class Pod:
    """The mounts of one pod, at temporary paths."""

    root: Path
    pg_url: str
    api_url: str

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def plan(self) -> Path:
        return self.root / "plan"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def mount(self, policies: dict[str, str], token: str) -> None:
        # `retention` on PATH, as in the image; it drops to uid/gid 65534 first when the
        # tests run as root (the venv's interpreter may sit where that user cannot exec it
        # from a shell, so the switch happens in the exec itself)
        self.bin.mkdir()
        drop = ""
        if os.geteuid() == 0:
            drop = f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
        wrapper = self.bin / "retention"
        wrapper.write_text(f'#!/bin/sh\nexec {drop}{retention_command()} "$@"\n')
        wrapper.chmod(0o755)
        _configmap_volume(self.policies, policies, 0o644, None)
        _configmap_volume(self.secrets, {"token": token + "\n"}, 0o440, NOBODY)  # fsGroup
        for writable in (self.state, self.tmp):
            writable.mkdir()
            if os.geteuid() == 0:
                os.chown(writable, NOBODY, NOBODY)

    def mount_plan(self, text: str) -> None:
        """The ConfigMap ``retention-plan`` (``--from-file=plan.json``)."""
        _configmap_volume(self.plan, {"plan.json": text}, 0o644, None)

    def path(self, value: str) -> str:
        return (
            value.replace(POLICY_MOUNT, str(self.policies))
            .replace(PLAN_MOUNT, str(self.plan))
            .replace(TOKEN_MOUNT, str(self.secrets))
            .replace(STATE_MOUNT, str(self.state))
        )

    def env(self, container: Doc, **extra: str) -> dict[str, str]:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "TMPDIR": str(self.tmp), "LANG": "C.UTF-8"}
        env.update({k: self.path(v) for k, v in _dockerfile_env().items()})
        for source in container.get("envFrom", []):
            name = source["configMapRef"]["name"]
            env.update({k: self.path(str(v)) for k, v in _find("ConfigMap", name)["data"].items()})
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = self.path(entry["value"])
            elif entry["valueFrom"]["secretKeyRef"] == {
                "name": "braintrust-secrets",
                "key": "PG_URL",
            }:
                env[entry["name"]] = self.pg_url
            else:
                raise AssertionError(f"unknown env source {entry}")
        if env.get("BRAINTRUST_API_URL"):
            env["BRAINTRUST_API_URL"] = self.api_url
        env.update(extra)
        return env

    def run(
        self, container: Doc, *, merge: bool = False, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The container's command (ENTRYPOINT ``retention`` unless it sets ``command``)."""
        argv = [
            *container.get("command", [str(self.bin / "retention")]),
            *(self.path(a) for a in container.get("args", [])),
        ]
        return subprocess.run(
            argv,
            env=self.env(container, **(extra or {})),
            cwd=self.state,  # WORKDIR /var/lib/retention
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge else subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
        )


@pytest.fixture
def pod_root() -> Iterator[Path]:
    # pytest's tmp_path sits under a 0700 folder that the unprivileged user cannot enter
    root = Path(tempfile.mkdtemp(prefix="retention-pod-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _shipped_policies() -> dict[str, str]:
    data: dict[str, str] = _find("ConfigMap", "retention-policies")["data"]
    return data


def _control_plane_with_data(fake_cp: FakeControlPlane, pg_url: str) -> int:
    """A data plane with expired logs, and a 30-day logs automation per project in the
    control plane. Returns the number of event rows."""
    scenario = generate(11, projects=3, events=1500)
    insert(engine_for(pg_url), scenario)
    fake_cp.projects = [project(p, f"p{i}") for i, p in enumerate(scenario.project_ids())]
    fake_cp.automations = [
        retention_automation(p, "project_logs", 30) for p in scenario.project_ids()
    ]
    return len(scenario.events)


def _rows(pg_url: str) -> int:
    with engine_for(pg_url).connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one())


def _container(workload: Doc, name: str | None = None) -> Doc:
    pod = _pod(workload)
    if name is None:
        (found,) = pod["containers"]
        return found  # type: ignore[no-any-return]
    (found,) = [
        c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == name
    ]
    return found  # type: ignore[no-any-return]


# -- Kubernetes ------------------------------------------------------------------------------


def test_dry_run_job_logs_are_the_reviewable_plan_file(
    pg_url: str, fake_cp: FakeControlPlane, pod_root: Path
) -> None:
    """deploy/README.md: `kubectl logs job/retention-dry-run > plan.json   # review it`.
    `kubectl logs` returns the container's stdout and stderr. With the shipped ConfigMap
    (BRAINTRUST_API_URL set, RETENTION_LOG_FORMAT=json) the dry run logged an INFO line about
    the control plane to stderr, so plan.json was a log line followed by the plan: not JSON,
    and `purge --plan plan.json` refused it (exit 6). The Job now logs at ERROR only."""
    _control_plane_with_data(fake_cp, pg_url)
    pod = Pod(pod_root, pg_url, fake_cp.url)
    pod.mount(_shipped_policies(), next(iter(fake_cp.tokens)))
    job = _container(_find("Job", "retention-dry-run"))

    logs = pod.run(job, merge=True)  # what `kubectl logs` shows
    assert logs.returncode == 0, logs.stdout[-2000:]
    assert json.loads(logs.stdout)["totals"]["rows"] > 0
    plan = pod.state / "plan.json"
    plan.write_text(logs.stdout)

    # the reviewed plan, checked for drift the way README "Reviewed plans" does it
    check = pod.run({**job, "args": ["purge", "--dry-run", "--plan", str(plan)]})
    assert check.returncode == 0, (check.stderr[-600:], logs.stdout[:400])


def test_kubernetes_deployment_makes_its_first_real_run_from_the_reviewed_plan(
    pg_url: str, fake_cp: FakeControlPlane, pod_root: Path
) -> None:
    """The documented Kubernetes flow on a database with expired data: the migrate Job, the
    dry-run Job, then the CronJob. The first purge needs review (first-run guard, exit 6),
    and no shipped workload could apply a reviewed plan: the CronJob failed with exit 6
    (FailJob) every night and nothing was ever deleted. job-first-run.yaml applies the dry
    run's plan from a ConfigMap; after it, the CronJob's nightly run succeeds by itself."""
    total = _control_plane_with_data(fake_cp, pg_url)
    pod = Pod(pod_root, pg_url, fake_cp.url)
    pod.mount(_shipped_policies(), next(iter(fake_cp.tokens)))

    migrate = pod.run(_container(_find("Job", "retention-db-upgrade")))
    assert migrate.returncode == 0, migrate.stderr
    dry = pod.run(_container(_find("Job", "retention-dry-run")), merge=True)
    assert dry.returncode == 0, dry.stdout
    expired = json.loads(dry.stdout)["totals"]["rows"]
    assert expired > 0  # reviewed: there is work to do

    cron = _find("CronJob", "retention")
    assert pod.run(_container(cron, "db-upgrade")).returncode == 0
    refused = pod.run(_container(cron, "retention"))
    assert refused.returncode == 6, refused.stderr  # the first-run guard
    assert _rows(pg_url) == total

    pod.mount_plan(dry.stdout)  # kubectl create configmap retention-plan --from-file=plan.json
    first = pod.run(_container(_find("Job", "retention-first-run")))
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["status"] == "succeeded"
    assert _rows(pg_url) == total - expired

    nightly = pod.run(_container(cron, "retention"))
    assert nightly.returncode == 0, nightly.stderr[-2000:]


def test_empty_policies_volume_stops_the_cronjob_before_deleting(
    pg_url: str, fake_cp: FakeControlPlane, pod_root: Path
) -> None:
    """passes: checks that a policies ConfigMap without a *.toml key (an empty volume would
    look the same) stops the CronJob's run with exit 2 before anything is deleted, while the
    control plane has retention automations (local holds would otherwise silently vanish).
    Also runs the init container and the run as uid 65534 with the kubelet's symlink layout,
    HOME unset and only the state folder writable."""
    total = _control_plane_with_data(fake_cp, pg_url)
    pod = Pod(pod_root, pg_url, fake_cp.url)
    pod.mount({"policies": "[[holds]]\n"}, next(iter(fake_cp.tokens)))  # key without .toml
    cron = _find("CronJob", "retention")
    assert pod.run(_container(cron, "db-upgrade")).returncode == 0
    done = pod.run(_container(cron, "retention"), extra={"RETENTION_MAX_DELETE_FRACTION": "1"})
    assert done.returncode == 2, done.stderr
    assert "no *.toml policy files" in done.stderr
    assert _rows(pg_url) == total
    assert not any(p for p in pod.state.iterdir()), "nothing written to the state folder"


# -- cron and the shared env file -------------------------------------------------------------


def _cron_command() -> str:
    for line in CRONTAB.read_text().splitlines():
        if line.strip() and not line.startswith("#") and not re.match(r"^[A-Z_]+=", line):
            return line.split(None, 6)[6]
    raise AssertionError("no cron line")


def _systemd_env(path: Path) -> dict[str, str]:
    """EnvironmentFile= as systemd reads it: KEY=value, the value taken literally (quotes
    removed), comments and blank lines skipped."""
    env = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def test_env_file_gives_cron_the_database_url_that_systemd_gets(
    pg_url: str, tmp_path: Path
) -> None:
    """retention.env.example is shared by systemd (EnvironmentFile=) and cron (`. file` in
    sh). Its rule was "quote a value with double quotes only if it has spaces". A PG_URL
    with a libpq query string (`?sslmode=require&application_name=...`, as managed databases
    ask for) has no spaces, so it stayed unquoted: systemd read it whole, but sh took `&` as
    "run in the background", so PG_URL was never set for the cron run. The worker then fell
    back to the embedded SQLite file and exited 4, every night. Values are single-quoted."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "none.toml").write_text("")
    url = pg_url + "?sslmode=disable&application_name=retention-cron"
    text = (SYSTEMD / "retention.env.example").read_text()
    # the example's PG_URL, quoted as the file says to quote it, with this URL
    text, found = re.subn(r"(?m)^PG_URL='[^']*'$", f"PG_URL='{url}'", text)
    assert found == 1, "the example's PG_URL is single-quoted"
    text = re.sub(r"(?m)^BRAINTRUST_API_URL=.*$", "BRAINTRUST_API_URL=", text)
    text = re.sub(r"(?m)^RETENTION_SERVICE_TOKEN_FILE=.*$", "RETENTION_SERVICE_TOKEN_FILE=", text)
    text = text.replace("/etc/retention/policies", str(policies))
    text = text.replace("/var/lib/retention", str(tmp_path / "state"))
    env_file = tmp_path / "retention.env"
    env_file.write_text(text)

    # systemd: EnvironmentFile=, then ExecStart=/usr/local/bin/retention run
    systemd = subprocess.run(
        [retention_command(), "run"],
        env={**clean_env(), **_systemd_env(env_file)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert systemd.returncode == 0, systemd.stderr

    # cron: the crontab's command, as /bin/sh runs it
    log = tmp_path / "syslog"
    command = (
        _cron_command()
        .replace("/etc/retention/retention.env", str(env_file))
        .replace("/usr/local/bin/retention", retention_command())
        .replace("logger -t retention", f"cat > {log}")
    )
    subprocess.run(["sh", "-c", command], env=clean_env(), timeout=120, check=True)
    lines = log.read_text().splitlines()
    assert lines[-1] == "retention run exited with status 0", lines[-3:]
