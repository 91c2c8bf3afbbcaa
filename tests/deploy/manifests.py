"""Reading the deployment files as Docker Compose and Kubernetes would, and checking command
lines with the real parsers: ``crest``'s argparse parser and Ray's click commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from crest.cli import build_parser
from crest.config_reference import OTHER_VARIABLES, env_var
from crest.service.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
K8S_DIR = ROOT / "deploy" / "k8s"
COORDINATOR_SCRIPT = ROOT / "deploy" / "coordinator.sh"
# What the image installs deploy/coordinator.sh as (deploy/Dockerfile).
COORDINATOR_COMMAND = "crest-coordinator"
SETTINGS_ENV = {env_var(ServeSettings, name): name for name in ServeSettings.model_fields}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal $.
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def dotenv(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``KEY=value`` lines of an env file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def variables(text: str) -> set[str]:
    """Names of the ``${...}`` variables that ``text`` interpolates."""
    return {m["name"] for m in _VARIABLE.finditer(text) if m["name"]}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` with Compose's variable substitution applied to every string in it."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"${{{name}}} is required: {arg}")
        return arg if op else ""

    return _VARIABLE.sub(substitute, value)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with ``.env`` = ``.env.example``."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate(raw, dotenv() if env is None else env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A Compose service's environment as a mapping (either of Compose's two spellings)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    """The healthcheck's command line (``CMD`` form) or ``["sh", "-c", ...]`` (``CMD-SHELL``)."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *argv = test
    assert kind in ("CMD", "CMD-SHELL"), f"healthcheck test {test}"
    return argv if kind == "CMD" else ["sh", "-c", *argv]


def load_k8s() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/k8s (kustomization.yaml aside), with its file."""
    objects = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                objects.append((path, doc))
    return objects


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in load_k8s() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def pod_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container (and init container) in a workload or RayCluster object."""
    specs = []
    if obj["kind"] == "RayCluster":
        groups = [obj["spec"]["headGroupSpec"], *obj["spec"].get("workerGroupSpecs", [])]
        specs = [g["template"]["spec"] for g in groups]
    elif obj["kind"] == "Job" or obj["kind"] in ("Deployment", "StatefulSet"):
        specs = [obj["spec"]["template"]["spec"]]
    return [c for s in specs for c in (*s.get("initContainers", []), *s["containers"])]


def parse_crest(argv: list[str]):
    """``crest`` command line -> argparse namespace, or a test failure naming the line."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`crest {shlex.join(argv)}` does not parse with crest's parser")


def serve_settings(env: dict[str, str], argv: list[str] | tuple[str, ...] = ()) -> ServeSettings:
    """The settings `crest serve <argv>` runs with under ``env`` (only CREST_* variables count,
    and every one of them must be a setting or a documented client variable, such as the
    health probe's CREST_TLS_CA)."""
    clients = {name for name, _, _ in OTHER_VARIABLES} - set(SETTINGS_ENV)
    crest_env = {k: v for k, v in env.items() if k.startswith("CREST_") and k not in clients}
    unknown = set(crest_env) - set(SETTINGS_ENV)
    assert not unknown, f"not crest serve settings: {sorted(unknown)}"
    args = parse_crest(["serve", *argv])
    flags = {
        n: getattr(args, n)
        for n in ServeSettings.model_fields
        if getattr(args, n, None) is not None
    }
    values = {SETTINGS_ENV[k]: v for k, v in crest_env.items()}
    return ServeSettings(**{**values, **flags})


def parse_ray(argv: list[str]) -> dict[str, Any]:
    """``ray <command> ...`` -> the click parameters Ray's CLI would run it with."""
    import click
    from ray.scripts.scripts import cli

    assert argv[0] == "ray", argv
    command = cli.commands[argv[1]]
    try:
        return command.make_context(argv[1], list(argv[2:])).params
    except click.ClickException as err:
        pytest.fail(f"`{shlex.join(argv)}` does not parse with Ray's CLI: {err}")


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def memory_bytes(size: str) -> int:
    """``1gb`` / ``512m`` (Compose) or ``1Gi`` / ``512Mi`` (Kubernetes) in bytes."""
    match = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", str(size))
    assert match, size
    number, unit = int(match[1]), match[2].lower().rstrip("b")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    return number * scale[unit]


def example_flags(script: Path) -> set[str]:
    """The ``--flags`` an example script's argparse parser declares (read from its source)."""
    import ast

    flags: set[str] = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and
                      isinstance(a.value, str)}  # fmt: skip
    return flags


def check_example_command(argv: list[str]) -> dict[str, str]:
    """``python examples/<script>.py --flag value ...``: the script exists and declares every
    flag; returns the flags' values."""
    assert argv[:1] == ["python"] and argv[1].startswith("examples/"), argv
    script = ROOT / argv[1]
    assert script.is_file(), f"{argv[1]} does not exist"
    pairs = dict(zip(argv[2::2], argv[3::2], strict=True))
    unknown = set(pairs) - example_flags(script)
    assert not unknown, f"{argv[1]} has no {sorted(unknown)}"
    return pairs
