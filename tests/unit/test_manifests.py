"""The deployment files in deploy/: Kubernetes manifests, systemd units, the crontab line.

The manifests are parsed with PyYAML and checked field by field (the contract with the
worker: commands, exit codes, time budget, settings, secrets, security), then validated
against the Kubernetes JSON schemas shipped by ``kubernetes-validate`` (offline).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from retention.policyfiles import load_policy_file

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
CRONTAB = DEPLOY / "cron" / "retention.crontab"

EXAMPLE_SECRET = "secret-example.yaml"
INDEXED = "job-indexed.yaml"  # applied by hand for a backlog, not by kustomize
FIRST_RUN = "job-first-run.yaml"  # applied by hand once, with the reviewed plan
KUSTOMIZATION = "kustomization.yaml"
TOKEN_DIR = "/var/run/secrets/retention"
TOKEN_FILE = f"{TOKEN_DIR}/token"
POLICY_DIR = "/etc/retention/policies"
STATE_DIR = "/var/lib/retention"
UID = 10001
# The worker stops within this many seconds of SIGTERM (issue 5).
STOP_BOUND = 10
# Kubernetes schema versions: the oldest we claim to support, then the newest shipped.
SCHEMA_VERSION = "1.30"

Doc = dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """Seconds of a duration as the worker spells it: ``90s``, ``10m``, ``24h``, ``7d``, ``90``."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    assert match, f"not a duration: {text!r}"
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * unit


def manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def load(path: Path) -> list[Doc]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path.name} is empty"
    return docs


def objects() -> list[tuple[str, Doc]]:
    """Every Kubernetes object (not the kustomization) with its file name."""
    return [
        (path.name, doc)
        for path in manifest_files()
        if path.name != KUSTOMIZATION
        for doc in load(path)
    ]


def find(kind: str, name: str) -> Doc:
    found = [doc for _, doc in objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def only(path: str) -> Doc:
    (doc,) = load(K8S / path)
    return doc


def cronjob() -> Doc:
    return find("CronJob", "retention")


def job_spec() -> Doc:
    spec: Doc = cronjob()["spec"]["jobTemplate"]["spec"]
    return spec


def pod_spec(workload: Doc) -> Doc:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: Doc = spec["template"]["spec"]
    return pod


def container(pod: Doc, name: str) -> Doc:
    (found,) = [c for c in pod["containers"] if c["name"] == name]
    return found  # type: ignore[no-any-return]


def workloads() -> list[Doc]:
    return [doc for _, doc in objects() if doc["kind"] in ("CronJob", "Job")]


def all_containers() -> list[tuple[str, Doc, Doc]]:
    """(workload name, pod spec, container) for every container and init container."""
    return [
        (doc["metadata"]["name"], pod, c)
        for doc in workloads()
        for pod in [pod_spec(doc)]
        for c in [*pod.get("initContainers", []), *pod["containers"]]
    ]


def env_of(c: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in c.get("env", [])}


def config_data() -> dict[str, str]:
    data: dict[str, str] = find("ConfigMap", "retention-config")["data"]
    return data


# -- files and layout ------------------------------------------------------------------------


def test_every_expected_manifest_exists() -> None:
    names = {path.name for path in manifest_files()}
    assert names == {
        "serviceaccount.yaml",
        "configmap.yaml",
        "secret-example.yaml",
        "cronjob.yaml",
        "job-dry-run.yaml",
        "job-migrate.yaml",
        INDEXED,
        FIRST_RUN,
        KUSTOMIZATION,
    }


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    kustomization = only(KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization lists missing {resource}"
    expected = {p.name for p in manifest_files()} - {
        EXAMPLE_SECRET,
        INDEXED,
        FIRST_RUN,
        KUSTOMIZATION,
    }
    assert set(resources) == expected
    assert "namespace" not in kustomization  # left to the operator (commented out)


def test_no_object_hardcodes_a_namespace() -> None:
    for name, doc in objects():
        assert "namespace" not in doc["metadata"], f"{name}: {doc['kind']} sets a namespace"


def test_app_label_on_every_object_and_pod_template() -> None:
    for name, doc in objects():
        assert doc["metadata"].get("labels", {}).get("app") == "retention", name
    for doc in workloads():
        spec = doc["spec"]
        if doc["kind"] == "CronJob":
            assert spec["jobTemplate"]["metadata"]["labels"]["app"] == "retention"
            spec = spec["jobTemplate"]["spec"]
        assert spec["template"]["metadata"]["labels"]["app"] == "retention"


# -- ServiceAccount, ConfigMaps, Secret ------------------------------------------------------


def test_service_account_mounts_no_token() -> None:
    account = find("ServiceAccount", "retention")
    assert account["apiVersion"] == "v1"
    assert account["automountServiceAccountToken"] is False


def test_config_map_settings() -> None:
    data = config_data()
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values are strings"
    assert data["RETENTION_POLICY_DIR"] == POLICY_DIR
    assert data["RETENTION_STATE_DIR"] == STATE_DIR
    assert data["RETENTION_LOG_FORMAT"] == "json"
    assert parse_duration(data["RETENTION_MAX_RUNTIME"]) == 3000
    parse_duration(data["RETENTION_GRACE_PERIOD"])
    for key in (
        "BRAINTRUST_API_URL",
        "BRAINTRUST_ORG_NAME",
        "RETENTION_OBJECT_STORE_URL",
        "RETENTION_PUSHGATEWAY_URL",
    ):
        assert key in data
    # No secrets in the ConfigMap: they come from Secrets.
    for key in data:
        assert key not in ("PG_URL", "RETENTION_DATABASE_URL", "RETENTION_SERVICE_TOKEN")
        assert not key.startswith("RETENTION_S3_SECRET")


def test_example_policy_file_is_commented_out_and_valid_when_uncommented(
    tmp_path: Path,
) -> None:
    policies = find("ConfigMap", "retention-policies")["data"]
    assert set(policies) == {"policies.toml"}
    text = policies["policies.toml"]
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(line.startswith("#") for line in lines), "the example must be commented out"

    shipped = tmp_path / "shipped.toml"
    shipped.write_text(text)
    policy_set = load_policy_file(shipped)
    assert policy_set.rules == () and policy_set.holds == ()
    assert policy_set.min_retention_days is None

    uncommented = tmp_path / "uncommented.toml"
    uncommented.write_text(
        "\n".join(
            line[2:] if line.startswith("# ") else line
            for line in text.splitlines()
            if not line.startswith("##")
        )
    )
    policy_set = load_policy_file(uncommented)
    assert len(policy_set.rules) == 4 and len(policy_set.holds) == 1
    assert policy_set.min_retention_days == 1


def test_example_secret_is_marked_and_has_a_placeholder_token() -> None:
    text = (K8S / EXAMPLE_SECRET).read_text()
    assert "DO NOT APPLY AS IS" in text
    secret = only(EXAMPLE_SECRET)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "retention-service-token"
    assert set(secret["stringData"]) == {"token"}
    assert "REPLACE-ME" in secret["stringData"]["token"]


# -- the CronJob -----------------------------------------------------------------------------


def test_cronjob_schedule_and_concurrency() -> None:
    spec = cronjob()["spec"]
    assert cronjob()["apiVersion"] == "batch/v1"
    assert spec["schedule"] == "0 3 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    # Present, positive, and shorter than the schedule's period (a day).
    assert 0 < spec["startingDeadlineSeconds"] < 86400
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1


def test_active_deadline_matches_the_time_budget() -> None:
    budget = parse_duration(config_data()["RETENTION_MAX_RUNTIME"])
    deadline = job_spec()["activeDeadlineSeconds"]
    margin = 300  # planning, migration, the final sweep and shutdown
    assert budget + margin <= deadline < 2 * budget
    assert deadline == 3600
    # The comment explains the relation.
    text = (K8S / "cronjob.yaml").read_text()
    assert "RETENTION_MAX_RUNTIME" in text


def test_cronjob_retries_and_pod_failure_policy() -> None:
    spec = job_spec()
    assert spec["backoffLimit"] == 2
    rules = spec["podFailurePolicy"]["rules"]
    fail_on = [
        rule["onExitCodes"]
        for rule in rules
        if rule["action"] == "FailJob" and "onExitCodes" in rule
    ]
    assert {"containerName": "retention", "operator": "In", "values": [2, 6]} in fail_on
    # Every FailJob rule targets the worker container with "In" and known codes.
    failing = {code for codes in fail_on for code in codes["values"]}
    assert failing == {2, 5, 6}
    assert all(c["operator"] == "In" for c in fail_on)
    # Disruptions are retried without counting, and are matched before the exit codes:
    # a drained pod exits 5 (SIGTERM) and must not fail the Job.
    ignore = [i for i, rule in enumerate(rules) if rule["action"] == "Ignore"]
    assert len(ignore) == 1
    assert rules[ignore[0]]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert ignore[0] == 0
    # Transient failures (1, 3, 4, 7) are retried: no rule fails the Job on them.
    assert failing.isdisjoint({1, 3, 4, 7})


def test_cronjob_pod() -> None:
    pod = pod_spec(cronjob())
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert pod["serviceAccountName"] == "retention"
    assert pod["automountServiceAccountToken"] is False
    assert STOP_BOUND < pod["terminationGracePeriodSeconds"] == 30
    (init,) = pod["initContainers"]
    assert init["args"] == ["db", "upgrade"]
    (main,) = pod["containers"]
    assert main["name"] == "retention"
    assert main["args"] == ["run"]
    assert init["image"] == main["image"] == "retention:latest"
    assert "command" not in main and "command" not in init  # the image's ENTRYPOINT
    assert "digest" in (K8S / "cronjob.yaml").read_text()


# -- every workload: Jobs and the CronJob share env, mounts and security ---------------------


def test_the_one_off_jobs() -> None:
    dry_run = find("Job", "retention-dry-run")
    assert dry_run["apiVersion"] == "batch/v1"
    assert dry_run["spec"]["backoffLimit"] == 0
    assert dry_run["spec"]["ttlSecondsAfterFinished"] > 0
    pod = pod_spec(dry_run)
    assert "initContainers" not in pod  # read-only: no migration
    # logs at ERROR: `kubectl logs` mixes stderr in, and its log must be exactly the plan
    assert [c["args"] for c in pod["containers"]] == [
        ["purge", "--dry-run", "--format", "json", "--log-level", "ERROR"]
    ]

    first = find("Job", "retention-first-run")
    assert first["spec"]["backoffLimit"] == 0  # exit 6 needs a new review, 5 is resumed
    pod = pod_spec(first)
    assert [c["args"] for c in pod["containers"]] == [
        ["run", "--plan", "/etc/retention/plan/plan.json"]
    ]
    plan_volume = {v["name"]: v for v in pod["volumes"]}["plan"]
    assert plan_volume["configMap"]["name"] == "retention-plan"
    assert {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}["plan"] == (
        "/etc/retention/plan"
    )

    migrate = find("Job", "retention-db-upgrade")
    pod = pod_spec(migrate)
    assert [c["args"] for c in pod["containers"]] == [["db", "upgrade"]]
    assert migrate["spec"]["ttlSecondsAfterFinished"] > 0
    for job in (dry_run, migrate):
        assert pod_spec(job)["restartPolicy"] == "Never"
        assert pod_spec(job)["serviceAccountName"] == "retention"
        assert pod_spec(job)["automountServiceAccountToken"] is False


def test_database_url_from_the_chart_secret() -> None:
    for workload, _, c in all_containers():
        env = env_of(c)
        assert env["PG_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "braintrust-secrets",
            "key": "PG_URL",
        }, workload
        assert "RETENTION_DATABASE_URL" not in env
        assert c["envFrom"] == [{"configMapRef": {"name": "retention-config"}}], workload
        # No secret value is written into a manifest.
        for entry in c.get("env", []):
            assert "value" not in entry or "TOKEN_FILE" in entry["name"], entry["name"]


def test_service_token_is_mounted_as_a_file() -> None:
    for workload, pod, c in all_containers():
        assert env_of(c)["RETENTION_SERVICE_TOKEN_FILE"]["value"] == TOKEN_FILE, workload
        volumes = {v["name"]: v for v in pod["volumes"]}
        (token_mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == TOKEN_DIR]
        assert token_mount["readOnly"] is True
        secret = volumes[token_mount["name"]]["secret"]
        assert secret["secretName"] == "retention-service-token"
        assert secret["items"] == [{"key": "token", "path": "token"}]
        assert f"{token_mount['mountPath']}/{secret['items'][0]['path']}" == TOKEN_FILE
        # Readable by the worker's group (fsGroup), by nobody else.
        assert secret["defaultMode"] == 0o440
        assert pod["securityContext"]["fsGroup"] == UID
        assert "subPath" not in token_mount  # subPath mounts never see a rotated secret


def test_policies_state_and_tmp_mounts() -> None:
    for workload, pod, c in all_containers():
        volumes = {v["name"]: v for v in pod["volumes"]}
        by_path = {m["mountPath"]: m for m in c["volumeMounts"]}
        policies = by_path[POLICY_DIR]
        assert policies["readOnly"] is True, workload
        assert volumes[policies["name"]]["configMap"]["name"] == "retention-policies"
        for path in (STATE_DIR, "/tmp"):
            assert "emptyDir" in volumes[by_path[path]["name"]], (workload, path)
    assert config_data()["RETENTION_STATE_DIR"] == STATE_DIR


def test_security_context() -> None:
    for workload, pod, c in all_containers():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == UID
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        context = c["securityContext"]
        assert context["runAsNonRoot"] is True, workload
        assert context["runAsUser"] == UID
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "privileged" not in context


def test_resources_are_set() -> None:
    for workload, _, c in all_containers():
        resources = c["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), workload
        assert "memory" in resources["limits"], workload


def test_containers_agree_on_image_env_and_mounts() -> None:
    """ "Same env/mounts": the Jobs run with exactly the CronJob's settings (the first run
    mounts its reviewed plan besides)."""
    reference = container(pod_spec(cronjob()), "retention")

    def without_plan(items: list[Doc]) -> list[Doc]:
        return [item for item in items if item["name"] != "plan"]

    for workload, pod, c in all_containers():
        assert c["image"] == reference["image"], workload
        assert c["env"] == reference["env"], workload
        assert c["envFrom"] == reference["envFrom"], workload
        assert without_plan(c["volumeMounts"]) == reference["volumeMounts"], workload
        assert without_plan(pod["volumes"]) == pod_spec(cronjob())["volumes"], workload


# -- schema validation -----------------------------------------------------------------------


def _validator() -> Any:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install kubernetes-validate)",
    )
    return kubernetes_validate


@pytest.mark.parametrize("version", [SCHEMA_VERSION, "latest"])
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    kubernetes_validate = _validator()
    from kubernetes_validate import utils  # type: ignore[import-untyped]

    versions = utils.all_versions()
    wanted = utils.major_minor(utils.latest_version()) if version == "latest" else version
    if not any(utils.major_minor(v) == wanted for v in versions):
        pytest.skip(
            f"kubernetes-validate {kubernetes_validate.__version__} ships no schemas for "
            f"Kubernetes {wanted} (it has {versions[0]}..{versions[-1]})"
        )
    checked = []
    for name, doc in objects():
        try:
            validated = kubernetes_validate.validate(doc, wanted, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{name}: {doc['kind']} at {path}: {error.message}")
        except utils.VersionNotSupportedError:
            pytest.skip(f"kubernetes-validate cannot validate Kubernetes {wanted} offline")
        assert utils.major_minor(validated) == utils.major_minor(wanted)
        checked.append(doc["kind"])
    assert sorted(set(checked)) == ["ConfigMap", "CronJob", "Job", "Secret", "ServiceAccount"]


def test_schema_validation_catches_a_typo() -> None:
    """The validator really is strict: an unknown field is refused."""
    kubernetes_validate = _validator()
    broken = yaml.safe_load((K8S / "cronjob.yaml").read_text())
    broken["spec"]["jobTemplate"]["spec"]["backofLimit"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built) if doc)
    assert kinds == ["ConfigMap", "ConfigMap", "CronJob", "Job", "Job", "ServiceAccount"]


# -- systemd ---------------------------------------------------------------------------------


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text(), source=name)
    return parser


def test_service_unit() -> None:
    unit = read_unit("retention.service")
    assert set(unit.sections()) == {"Unit", "Service"}
    service = unit["Service"]
    assert service["Type"] == "oneshot"
    assert service["ExecStart"] == "/usr/local/bin/retention run"
    assert service["EnvironmentFile"] == "/etc/retention/retention.env"
    assert service["User"] == "retention"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert "/var/lib/retention" in service["ReadWritePaths"].split()
    # Only 0 is success: partial (5) and guard (6) must show as failures.
    assert "SuccessExitStatus" not in service
    # Configuration errors and guards are never restarted; neither is a spent budget.
    assert service["Restart"] == "on-failure"
    assert {"2", "6"} <= set(service["RestartPreventExitStatus"].split())
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "5", "6"}
    # The hard stop sits above the run's own budget, like activeDeadlineSeconds.
    env = env_example()
    assert parse_systemd_time(service["TimeoutStartSec"]) > parse_duration(
        env["RETENTION_MAX_RUNTIME"]
    )
    assert parse_systemd_time(service["TimeoutStopSec"]) > STOP_BOUND


def test_service_unit_explains_exit_5() -> None:
    text = (SYSTEMD / "retention.service").read_text()
    comments = " ".join(line for line in text.splitlines() if line.startswith("#"))
    assert "5" in comments and "SuccessExitStatus" in comments and "resum" in comments


def test_timer_unit() -> None:
    unit = read_unit("retention.timer")
    timer = unit["Timer"]
    assert timer["OnCalendar"] == "*-*-* 03:00:00"
    assert timer["RandomizedDelaySec"] == "10m"
    assert timer["Persistent"] == "true"
    assert unit["Install"]["WantedBy"] == "timers.target"
    text = (SYSTEMD / "retention.timer").read_text()
    assert "Persistent" in text and "storm" in text


def parse_systemd_time(text: str) -> int:
    match = re.fullmatch(r"(\d+)(s|min|h)?", text)
    assert match, text
    return int(match.group(1)) * {None: 1, "s": 1, "min": 60, "h": 3600}[match.group(2)]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at a stand-in executable.
    executable = tmp_path / "retention"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    service = (SYSTEMD / "retention.service").read_text()
    (tmp_path / "retention.service").write_text(
        service.replace("/usr/local/bin/retention", str(executable))
    )
    shutil.copy(SYSTEMD / "retention.timer", tmp_path / "retention.timer")
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(tmp_path / "retention.service"),
            str(tmp_path / "retention.timer"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "retention" not in result.stderr, result.stderr


def env_example() -> dict[str, str]:
    values = {}
    for line in (SYSTEMD / "retention.env.example").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"not KEY=value: {line!r}"
        assert not line.startswith("export "), line
        values[key] = value
    return values


def test_env_example() -> None:
    env = env_example()
    assert "PG_URL" in env or "RETENTION_DATABASE_URL" in env
    assert env["RETENTION_STATE_DIR"] == "/var/lib/retention"
    assert env["RETENTION_LOG_FORMAT"] in ("json", "text")
    assert parse_duration(env["RETENTION_MAX_RUNTIME"]) > 0
    assert "RETENTION_SERVICE_TOKEN_FILE" in env
    assert "RETENTION_SERVICE_TOKEN" not in env  # a file, never the token itself
    for key in env:
        assert key.startswith(("RETENTION_", "BRAINTRUST_")) or key == "PG_URL", key


# -- cron ------------------------------------------------------------------------------------

CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def cron_jobs() -> list[list[str]]:
    jobs = []
    for line in CRONTAB.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.fullmatch(r"[A-Z_]+=\S*", line):  # SHELL=, PATH=
            continue
        jobs.append(line.split(None, 6))
    return jobs


def test_crontab_line() -> None:
    text = CRONTAB.read_text()
    assert text.endswith("\n"), "cron ignores a last line without a newline"
    (job,) = cron_jobs()
    assert len(job) == 7, "5 time fields, a user, a command"
    *times, user, command = job
    assert times == ["0", "3", "*", "*", "*"]
    assert all(CRON_FIELD.match(field) for field in times)
    assert user == "retention"
    assert "/usr/local/bin/retention run" in command
    assert ". /etc/retention/retention.env" in command
    assert "set -a" in command, "sourced variables must be exported"
    assert "logger -t retention" in command
    assert "%" not in command, "% is a newline in crontab commands"
    assert "flock" not in command  # the worker locks itself
    assert "SHELL=/bin/sh" in text.splitlines()


@pytest.mark.skipif(shutil.which("sh") is None, reason="no /bin/sh")
def test_crontab_command_runs_retention_with_the_env_file(tmp_path: Path) -> None:
    """Run the command as cron would, with a stand-in for retention and logger."""
    (job,) = cron_jobs()
    command = job[6]
    env_file = tmp_path / "retention.env"
    env_file.write_text((SYSTEMD / "retention.env.example").read_text())
    fake = tmp_path / "retention"
    fake.write_text('#!/bin/sh\necho "args=$*"\necho "budget=$RETENTION_MAX_RUNTIME"\nexit 5\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    logger = tmp_path / "logger"
    log = tmp_path / "syslog"
    logger.write_text(f'#!/bin/sh\necho "tag=$2" >> {log}\ncat >> {log}\n')
    logger.chmod(0o755)
    command = command.replace("/etc/retention/retention.env", str(env_file)).replace(
        "/usr/local/bin/retention", str(fake)
    )
    subprocess.run(
        ["sh", "-c", command],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)},
        check=True,
        timeout=30,
    )
    assert log.read_text().splitlines() == [
        "tag=retention",
        "args=run",
        "budget=50m",
        "retention run exited with status 5",
    ]


def test_crontab_stops_without_the_env_file(tmp_path: Path) -> None:
    (job,) = cron_jobs()
    marker = tmp_path / "ran"
    command = (
        job[6]
        .replace("/etc/retention/retention.env", str(tmp_path / "missing.env"))
        .replace("/usr/local/bin/retention run", f"touch {marker}")
        .replace("| logger -t retention", "| cat")
    )
    subprocess.run(
        ["sh", "-c", command], capture_output=True, check=False, timeout=30, env=dict(os.environ)
    )
    assert not marker.exists()


# -- the deploy README -----------------------------------------------------------------------


def test_readme_covers_each_way() -> None:
    text = (DEPLOY / "README.md").read_text()
    for needle in (
        "kubectl apply",
        "-k deploy/kubernetes",
        "docker build -t retention .",
        "systemctl enable --now retention.timer",
        "/etc/cron.d/retention",
        "activeDeadlineSeconds",
        "RETENTION_MAX_RUNTIME",
    ):
        assert needle in text, needle


def test_indexed_job_runs_the_purge_on_pod_0_and_join_on_the_others() -> None:
    job = only(INDEXED)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0]
    assert '"$JOB_COMPLETION_INDEX" = "0"' in script
    assert "exec retention run" in script and "exec retention join" in script
    budget = script.split("--max-runtime ")[1].split(";")[0]
    assert parse_duration(budget) < spec["activeDeadlineSeconds"]
