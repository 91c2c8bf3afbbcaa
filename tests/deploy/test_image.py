"""deploy/Dockerfile, .dockerignore and the coordinator's entrypoint, checked without Docker."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field

import pytest

from tests.deploy.manifests import COORDINATOR_COMMAND, COORDINATOR_SCRIPT, ROOT, parse_ray

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def lines(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name, each with its instructions (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: dict[str, Stage] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            current = result[name.strip()] = Stage(name.strip(), base.strip())
        elif current is not None:
            current.instructions.append((keyword.upper(), args.strip()))
    return result


def build_arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, name
    return match[1]


def copy_sources(stage: Stage) -> list[str]:
    """Build-context paths that a stage's COPY instructions read (not --from=other stages)."""
    sources = []
    for args in stage.lines("COPY"):
        if "--from=" not in args:
            sources += shlex.split(args)[:-1]
    return sources


def test_stages_cpu_and_cuda_bases_build_and_runtime() -> None:
    found = stages()
    assert list(found) == ["base-cpu", "base-cuda", "base", "build", "runtime"]
    assert found["base-cpu"].base.startswith("python:3.11")
    assert found["base-cuda"].base == "${CUDA_IMAGE}"
    assert build_arg_default("CUDA_IMAGE").startswith("nvidia/cuda:")
    assert found["base"].base == "base-${VARIANT}" and build_arg_default("VARIANT") == "cpu"
    assert found["build"].base == found["runtime"].base == "base"


def test_torch_comes_first_pinned_from_the_pytorch_index() -> None:
    build = stages()["build"]
    runs = build.lines("RUN")
    torch = next(i for i, run in enumerate(runs) if '"torch==${TORCH_VERSION}"' in run)
    project = next(i for i, run in enumerate(runs) if re.search(r"pip install .*\s\.$", run))
    assert torch < project
    assert '--index-url "https://download.pytorch.org/whl/${flavour}"' in runs[torch]
    assert "flavour=cpu" in runs[torch] and '"$VARIANT" = cuda' in runs[torch]
    makefile_pin = re.search(r"pip install --quiet torch==(\S+)", (ROOT / "Makefile").read_text())
    assert makefile_pin, "the Makefile pins torch"
    assert build_arg_default("TORCH_VERSION") == makefile_pin[1], "one torch for venv and image"
    assert re.fullmatch(r"cu\d+", build_arg_default("TORCH_CUDA"))


def test_project_install_is_regular_and_without_dev_extras() -> None:
    text = DOCKERFILE.read_text()
    assert "[dev]" not in text and "--editable" not in text and " -e " not in text
    runtime = stages()["runtime"]
    assert not any("pip install" in run for run in runtime.lines("RUN")), "runtime installs nothing"
    assert "--from=build /opt/venv /opt/venv" in runtime.lines("COPY")


def test_every_package_folder_is_copied_into_the_build() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = pyproject["tool"]["setuptools"]["package-dir"].values()
    folders = {path.split("/")[0] for path in package_dirs}
    copied = {source.rstrip("/") for source in copy_sources(stages()["build"])}
    assert folders <= copied, f"not copied: {sorted(folders - copied)}"
    assert "pyproject.toml" in copied


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    runtime = stages()["runtime"]
    (user,) = runtime.lines("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    copies = runtime.lines("COPY")
    assert f"deploy/coordinator.sh /usr/local/bin/{COORDINATOR_COMMAND}" in copies
    assert "examples /app/examples" in copies


def dockerignore_admits(path: str) -> bool:
    """Whether .dockerignore lets ``path`` into the build context (last matching rule wins;
    a rule on a folder covers everything below it)."""
    admitted = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!")
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            admitted = negate
    return admitted


def test_dockerignore_admits_what_the_build_copies_and_keeps_secrets_out() -> None:
    found = stages()
    for source in copy_sources(found["build"]) + copy_sources(found["runtime"]):
        source = source.rstrip("*")  # README.md* (optional)
        assert dockerignore_admits(source), f"{source} is excluded from the build context"
        assert source.startswith("README.md") or (ROOT / source).exists(), source
    for path in ["service/static/index.html", "proto/v1/coordinator.proto", "examples/x.py"]:
        assert dockerignore_admits(path), path
    for path in [".env", ".venv/bin/python", ".git/config", "tests/__init__.py", "results/x.json",
                 "service/__pycache__/x.pyc", "docker-compose.yml"]:  # fmt: skip
        assert not dockerignore_admits(path), path


def test_coordinator_entrypoint_joins_ray_then_execs_crest_serve() -> None:
    mode = subprocess.run(["git", "ls-files", "-s", str(COORDINATOR_SCRIPT)], cwd=ROOT,
                          capture_output=True, text=True).stdout.split(" ")[0]  # fmt: skip
    if mode:  # tracked: the executable bit travels into the image with COPY
        assert mode == "100755"
    assert subprocess.run(["sh", "-n", str(COORDINATOR_SCRIPT)]).returncode == 0
    text = re.sub(r"\\\n\s*", " ", COORDINATOR_SCRIPT.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not
             line.strip().startswith("#")]  # fmt: skip
    assert lines[-1] == 'exec crest serve "$@"'
    (ray_line,) = [line for line in lines if line.startswith("ray start")]
    params = parse_ray(shlex.split(ray_line.replace('"$CREST_RAY_ADDRESS"', "ray-head:6380")))
    assert params["address"] == "ray-head:6380" and not params["block"]
    assert params["num_cpus"] == 0 and params["num_gpus"] == 0


@pytest.mark.parametrize("path", ["docker-compose.yml", ".env.example", "deploy/k8s/secret.yaml"])
def test_no_real_secret_is_committed(path: str) -> None:
    lines = (ROOT / path).read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    for match in re.finditer(r"(CREST_TOKEN|RAY_AUTH_TOKEN)\s*[:=]\s*(\S+)", text):
        value = match[2]
        assert value.startswith(("${", "replace-me")), f"{path}: {match[0]}"
