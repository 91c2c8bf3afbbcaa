"""deploy/k8s against the code: settings, CLI flags, ports, the Ray cluster, secrets."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.manifests import (
    COORDINATOR_COMMAND,
    K8S_DIR,
    check_example_command,
    host_port,
    k8s_object,
    load_k8s,
    memory_bytes,
    parse_crest,
    parse_ray,
    pod_containers,
    serve_settings,
)

CREST_IMAGES = {"crest-coresets:cpu", "crest-coresets:cuda"}
STANDALONE = {"secret.yaml", "train-job.yaml"}  # applied on their own, not by kustomization


def container_env(
    container: dict, secret: dict | None = None, pod: dict | None = None
) -> dict[str, str]:
    """A container's environment as Kubernetes makes it: values from the Secret come from its
    placeholders, values from the pod's fields (``fieldRef``) from ``pod`` (a placeholder
    without it), and ``$(NAME)`` names a variable defined before."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(item["value"]))
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            value = (secret or {}).get(ref["key"], f"<{ref['key']}>")
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            value = (pod or {}).get(path, f"<{path}>")
        env[item["name"]] = value
    return env


def secret_data() -> dict[str, str]:
    return k8s_object("Secret", "crest-tokens")["stringData"]


def coordinator() -> tuple[dict, dict]:
    deployment = k8s_object("StatefulSet", "crest-coordinator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def coordinator_settings(pod: str = "crest-coordinator-0"):
    _, container = coordinator()
    assert container["command"][0] == COORDINATOR_COMMAND
    env = container_env(container, secret_data(), {"metadata.name": pod})
    return serve_settings(env, container["command"][1:])


def ray_cluster() -> dict:
    return k8s_object("RayCluster", "crest-ray")


def ray_start_argv(group: dict, head: bool) -> list[str]:
    """The `ray start` line KubeRay makes of a group's rayStartParams."""
    params = [f"--{k}={v}" for k, v in group["rayStartParams"].items()]
    return ["ray", "start", *(["--head"] if head else ["--address=head:6380"]), *params, "--block"]


def exec_argv(probe: dict) -> list[str]:
    return probe["exec"]["command"]


def test_manifests_parse_and_kustomization_lists_them() -> None:
    objects = load_k8s()
    assert {p.name for p, _ in objects} == {
        "namespace.yaml", "redis.yaml", "raycluster.yaml", "coordinator.yaml", *STANDALONE,
    }  # fmt: skip
    for path, obj in objects:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"], path.name
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "crest"
    assert set(kustomization["resources"]) == {p.name for p, _ in objects} - STANDALONE
    for path, obj in objects:
        if path.name in STANDALONE:
            assert obj["metadata"]["namespace"] == "crest", path.name


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_manifests() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    kinds = {(d["kind"], d["metadata"].get("namespace")) for d in yaml.safe_load_all(result.stdout)}
    assert ("RayCluster", "crest") in kinds and ("StatefulSet", "crest") in kinds


def test_secret_has_placeholders_for_every_token_the_pods_read() -> None:
    data = secret_data()
    assert set(data) == {"CREST_TOKEN", "RAY_AUTH_TOKEN"}
    assert all(value.startswith("replace-me") for value in data.values()), "placeholders only"
    for _, obj in load_k8s():
        for container in pod_containers(obj):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "crest-tokens" and ref["key"] in data, item


def test_crest_variables_are_settings_with_valid_values() -> None:
    for _, obj in load_k8s():
        for container in pod_containers(obj):
            serve_settings(container_env(container))  # every CREST_* is a setting
    settings = coordinator_settings()
    assert settings.host == settings.dashboard_host == "0.0.0.0"
    assert settings.selector == "ray"
    assert settings.token is not None
    redis = k8s_object("Service", "redis")
    redis_address = f"{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}"
    assert settings.store == f"redis://{redis_address}/0"


def test_coordinator_ports_probes_and_service() -> None:
    settings = coordinator_settings()
    deployment, container = coordinator()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.port, "dashboard": settings.dashboard_port}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        argv = exec_argv(container[kind])
        assert argv[0] == "crest", kind
        args = parse_crest(argv[1:])
        assert args.command == "health" and host_port(args.address) == ("127.0.0.1", settings.port)
    service = k8s_object("Service", "crest-coordinator")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    env = container_env(container, secret_data())
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"] == secret_data()["RAY_AUTH_TOKEN"]


def test_coordinator_replicas_lease_jobs_and_advertise_their_stable_names() -> None:
    statefulset, _ = coordinator()
    assert statefulset["spec"]["replicas"] >= 2
    headless = k8s_object("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    (grpc,) = headless["spec"]["ports"]
    pods = [f"crest-coordinator-{i}" for i in range(statefulset["spec"]["replicas"])]
    settings = [coordinator_settings(pod) for pod in pods]
    for pod, replica in zip(pods, settings, strict=True):
        assert replica.lease_s > 0 and replica.replica_id == pod
        assert replica.store.startswith("redis://")
        host, port = host_port(replica.advertised(replica.port))
        assert (host, port) == (f"{pod}.{headless['metadata']['name']}", grpc["port"])
        assert port == replica.port


def test_ray_cluster_head_port_workers_and_coordinator_agree() -> None:
    cluster = ray_cluster()
    head_group = cluster["spec"]["headGroupSpec"]
    head = parse_ray(ray_start_argv(head_group, head=True))
    assert head["port"] != 6379, "6379 is Redis's port"
    address = f"{cluster['metadata']['name']}-head-svc:{head['port']}"
    assert coordinator_settings().ray_address == address
    (head_container,) = head_group["template"]["spec"]["containers"]
    assert {p["containerPort"] for p in head_container["ports"]} == {head["port"]}
    for group in cluster["spec"]["workerGroupSpecs"]:
        parse_ray(ray_start_argv(group, head=False))
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for container in pod_containers(cluster):
        assert container["image"] in CREST_IMAGES
        env = container_env(container, secret_data())
        assert env["RAY_AUTH_MODE"] == "token", container["name"]
        assert env["RAY_AUTH_TOKEN"] == secret_data()["RAY_AUTH_TOKEN"]
        for kind in ("readinessProbe", "livenessProbe"):
            check = parse_ray(exec_argv(container[kind]))
            assert host_port(check["address"])[1] == head["port"], (container["name"], kind)


def test_ray_object_stores_fit_in_shared_memory() -> None:
    cluster = ray_cluster()
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        store = int(group["rayStartParams"]["object-store-memory"])
        spec = group["template"]["spec"]
        (shm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
        assert store < memory_bytes(shm["emptyDir"]["sizeLimit"])
        mounts = [m for c in spec["containers"] for m in c["volumeMounts"]]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in mounts


def test_gpu_worker_group_requests_gpus_with_the_cuda_image() -> None:
    (gpu,) = [g for g in ray_cluster()["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu["replicas"] == 0, "off until the cluster has GPU nodes"
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["image"] == "crest-coresets:cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_redis_keeps_an_append_only_file_on_a_volume_claim() -> None:
    statefulset = k8s_object("StatefulSet", "redis")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert args[0] == "redis-server" and options["--appendonly"] == "yes"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert "redis-cli ping" in " ".join(exec_argv(container["readinessProbe"]))
    ports = {p["containerPort"] for p in container["ports"]}
    assert {p["port"] for p in k8s_object("Service", "redis")["spec"]["ports"]} == ports


def test_training_job_runs_the_example_against_the_coordinator_service() -> None:
    job = k8s_object("Job", "crest-train-mnist1d")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    flags = check_example_command(container["command"])
    service = k8s_object("Service", "crest-coordinator")
    grpc = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert host_port(flags["--address"]) == (service["metadata"]["name"], grpc)
    assert grpc == coordinator_settings().port
    assert "CREST_TOKEN" in container_env(container)
    assert container["image"] in CREST_IMAGES


def test_crest_pods_run_as_non_root() -> None:
    for _, obj in load_k8s():
        for container in pod_containers(obj):
            if container["image"] in CREST_IMAGES:
                assert container["securityContext"]["runAsNonRoot"] is True, container["name"]
