"""docker-compose.yml against the code: settings, CLI flags, ports, Ray wiring, secrets."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.manifests import (
    COMPOSE_FILE,
    COORDINATOR_COMMAND,
    ENV_EXAMPLE,
    ROOT,
    check_example_command,
    command_argv,
    dotenv,
    environment,
    healthcheck_argv,
    host_port,
    load_compose,
    memory_bytes,
    parse_crest,
    parse_ray,
    serve_settings,
    variables,
)

COORDINATORS = ("coordinator", "coordinator-b")  # replicas sharing Redis
PYTHON_SERVICES = {"ray-head", "ray-worker", *COORDINATORS, "trainer"}
TOKENS = {"CREST_TOKEN", "RAY_AUTH_TOKEN"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def coordinator_settings(services: dict, name: str = "coordinator"):
    coordinator = services[name]
    argv = command_argv(coordinator["command"])
    assert argv[0] == COORDINATOR_COMMAND
    return serve_settings(environment(coordinator), argv[1:])


def test_services_each_have_a_healthcheck(services: dict) -> None:
    assert set(services) == {"redis", *PYTHON_SERVICES}
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and not check.get("disable") and healthcheck_argv(service), name


def test_services_wait_for_healthy_dependencies(services: dict) -> None:
    expected = {
        "ray-worker": {"ray-head"},
        "coordinator": {"redis", "ray-head"},
        "coordinator-b": {"redis", "ray-head"},
        "trainer": {"coordinator"},
    }
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        assert set(depends) == expected.get(name, set()), name
        for target, rule in depends.items():
            assert rule == {"condition": "service_healthy"}, f"{name} -> {target}"
            assert "healthcheck" in services[target]


def test_redis_keeps_an_append_only_file_on_a_named_volume(compose: dict, services: dict) -> None:
    redis = services["redis"]
    argv = command_argv(redis["command"])
    assert argv[0] == "redis-server"
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in ("everysec", "always")
    assert redis["volumes"] == ["redis-data:/data"]
    assert "redis-data" in compose["volumes"]
    assert "ports" not in redis, "Redis is for the coordinator only"
    assert "redis-cli ping" in " ".join(healthcheck_argv(redis))


def test_crest_variables_are_settings_with_valid_values(services: dict) -> None:
    for service in services.values():
        serve_settings(environment(service))  # every CREST_* is a setting, and valid
    for name in COORDINATORS:
        settings = coordinator_settings(services, name)
        assert settings.host == settings.dashboard_host == "0.0.0.0"
        assert settings.store == "redis://redis:6379/0"
        assert settings.selector == "ray"
        assert settings.ray_address == "ray-head:6380"
        assert settings.token is not None


def test_coordinator_replicas_share_redis_with_leases_each_under_its_own_name(
    services: dict,
) -> None:
    replicas = {name: coordinator_settings(services, name) for name in COORDINATORS}
    assert len({(s.store, s.lease_s, s.token.get_secret_value()) for s in replicas.values()}) == 1
    for name, settings in replicas.items():
        assert settings.lease_s > 0 and settings.replica_id == name
        assert host_port(settings.advertised(settings.port)) == (name, settings.port), (
            "advertised at the service's name on the compose network"
        )
    differ = {"CREST_REPLICA_ID", "CREST_ADVERTISE"}
    a, b = (environment(services[name]) for name in COORDINATORS)
    assert {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)} == differ


def test_crest_command_lines_parse_with_the_crest_cli(services: dict) -> None:
    checked = 0
    for service in services.values():
        for argv in (command_argv(service.get("command", [])), healthcheck_argv(service)):
            if argv[:1] == ["crest"]:
                parse_crest(argv[1:])
                checked += 1
    assert checked >= 2, "the coordinator's and the trainer's healthchecks run `crest health`"
    coordinator_settings(services)  # crest-coordinator's arguments are `crest serve` flags


def test_coordinator_health_is_the_grpc_health_service_on_its_port(services: dict) -> None:
    for name in COORDINATORS:
        settings = coordinator_settings(services, name)
        args = parse_crest(healthcheck_argv(services[name])[1:])
        assert args.command == "health"
        assert host_port(args.address) == ("127.0.0.1", settings.port)


def test_published_ports_are_the_configured_ones(services: dict) -> None:
    on_host = []
    for name in COORDINATORS:
        settings = coordinator_settings(services, name)
        published = {}
        for spec in services[name]["ports"]:
            *host, container = str(spec).split(":")
            published[int(container)] = host
            on_host.append(tuple(host))
        assert set(published) == {settings.port, settings.dashboard_port}, name
    assert len(set(on_host)) == len(on_host), "each replica has its own host ports"
    for name, service in services.items():
        if name not in COORDINATORS:
            assert "ports" not in service, f"{name} publishes ports"


def test_trainer_runs_the_mnist1d_example_against_the_coordinator(services: dict) -> None:
    trainer, settings = services["trainer"], coordinator_settings(services)
    assert trainer["profiles"] == ["train"]
    flags = check_example_command(command_argv(trainer["command"]))
    assert command_argv(trainer["command"])[1] == "examples/train_mnist1d.py"
    addresses = [host_port(address) for address in flags["--address"].split(",")]
    assert addresses == [(name, settings.port) for name in COORDINATORS], "every replica"
    health = parse_crest(healthcheck_argv(trainer)[1:])
    assert health.address == flags["--address"].split(",")[0]
    coordinator_token = environment(services["coordinator"])["CREST_TOKEN"]
    assert environment(trainer)["CREST_TOKEN"] == coordinator_token


def test_ray_head_worker_and_coordinator_form_one_authenticated_cluster(services: dict) -> None:
    head = parse_ray(command_argv(services["ray-head"]["command"]))
    worker = parse_ray(command_argv(services["ray-worker"]["command"]))
    assert head["head"] and head["block"] and worker["block"] and not worker["head"]
    assert head["port"] != 6379, "6379 is Redis's port"
    settings = coordinator_settings(services)
    assert settings.ray_address == worker["address"] == f"ray-head:{head['port']}"
    for name in ("ray-head", "ray-worker"):
        check = parse_ray(healthcheck_argv(services[name]))
        assert host_port(check["address"])[1] == head["port"], name
    token = dotenv()["RAY_AUTH_TOKEN"]
    for name in ("ray-head", "ray-worker", *COORDINATORS):
        env = environment(services[name])
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == token, name


def test_ray_object_stores_fit_in_shared_memory(services: dict) -> None:
    script = (ROOT / "deploy" / "coordinator.sh").read_text()
    stores = {
        name: parse_ray(command_argv(services[name]["command"]))["object_store_memory"]
        for name in ("ray-head", "ray-worker")
    }
    coordinator_store = re.search(r"--object-store-memory=(\d+)", script)
    assert coordinator_store, "deploy/coordinator.sh caps its object store"
    stores["coordinator"] = int(coordinator_store[1])
    for name, store in stores.items():
        assert store and store < memory_bytes(services[name]["shm_size"]), name


def test_ray_workers_scale(services: dict) -> None:
    worker = services["ray-worker"]
    assert "container_name" not in worker and "ports" not in worker


def test_gpu_reservation_is_commented_out_and_valid_once_uncommented() -> None:
    lines = COMPOSE_FILE.read_text().splitlines()
    start = lines.index("    # deploy:")
    block: list[str] = []
    for line in lines[start:]:
        if not line.startswith("    # ") or (block and not line.startswith("    #   ")):
            break
        block.append("    " + line[len("    # ") :])
    gpu = yaml.safe_load("\n".join(["ray-worker:", *block]))["ray-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "deploy" not in load_compose()["services"]["ray-worker"], "GPUs stay opt-in"


def test_python_services_share_one_image(services: dict) -> None:
    images = {services[name]["image"] for name in PYTHON_SERVICES}
    builds = {repr(services[name]["build"]) for name in PYTHON_SERVICES}
    assert images == {"crest-coresets:cpu"} and len(builds) == 1
    build = services["coordinator"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    assert build["args"]["VARIANT"] == "cpu"
    cuda = load_compose({**dotenv(), "IMAGE_VARIANT": "cuda"})["services"]["ray-worker"]
    assert cuda["image"] == "crest-coresets:cuda" and cuda["build"]["args"]["VARIANT"] == "cuda"


def test_secrets_come_from_the_env_file() -> None:
    text = COMPOSE_FILE.read_text()
    example = dotenv()
    assert set(example) >= TOKENS
    for name in variables(text):
        assert name in example, f"${{{name}}} is not in .env.example"
    for token in TOKENS:  # required: compose refuses to start without them
        assert re.search(r"\$\{" + token + r":\?", text), token
        assert example[token].startswith("replace-me"), "placeholders only"
    for token in TOKENS:
        with pytest.raises(KeyError, match=token):
            load_compose({k: v for k, v in example.items() if k != token})
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env must be git-ignored"
    assert ENV_EXAMPLE.is_file()


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="Debian's docker-compose is not installed (apt-get install docker-compose); the YAML "
    "checks above still run",
)
@pytest.mark.parametrize("profile", [[], ["--profile", "train"]], ids=["default", "train"])
def test_docker_compose_config_accepts_the_file(profile: list[str]) -> None:
    result = subprocess.run(
        ["docker-compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), *profile,
         "config", "-q"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
