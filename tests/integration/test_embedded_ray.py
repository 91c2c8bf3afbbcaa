"""``crest serve`` with its own Ray: every socket on loopback, Ray's token required, the
processes pinned as asked, and a service-side job embedded by the selector actor."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from crest.client.remote import RemoteCoordinator
from crest.worker.placement import available_cores
from tests.integration.conftest import crest_command, free_port, wait_for_port
from tests.integration.test_processes import ROOT
from tests.training import blobs, job_config, train

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
RAY_TOKEN = "c" * 32
CORES = available_cores()
# Pinned apart where there are two cores: the coordinator (and Ray) on one, the actor on the other.
PINNED = (
    ("--coordinator-cores", str(CORES[0]), "--selector-cores", str(CORES[1]))
    if len(CORES) > 1
    else ()
)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def placement(pid: int) -> set[str]:
    """The distinct cpu lists of process ``pid``'s threads (empty if it is gone)."""
    found = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    found.add(line.split(":", 1)[1].strip())
    return found


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (from ``/proc``: children, grandchildren, ...)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening_sockets(pids: set[int]) -> list[tuple[str, str]]:
    """``(local address, process name)`` of every listening TCP socket of ``pids``."""
    if shutil.which("ss") is None:
        pytest.fail("ss (iproute2) is needed to list listening sockets")
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in lines.splitlines():
        owners = {int(pid): name for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line)}
        for pid, name in owners.items():
            if pid in pids:
                found.append((line.split()[3], name))
    return found


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*" or "0.0.0.0" spelled otherwise: all interfaces
        return False


def gcs_call(address: str, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
        try:
            call(b"", timeout=30, metadata=metadata)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_embedded_ray_listens_on_loopback_only_and_requires_its_token(tmp_path: Path) -> None:
    port = free_port()
    # RAY_AUTH_MODE=disabled as CI sets it: crest serve turns token authentication on anyway.
    env = {**os.environ, "RAY_AUTH_TOKEN": RAY_TOKEN, "RAY_AUTH_MODE": "disabled"}
    log = (tmp_path / "serve.log").open("w")  # Ray logs plenty: a file never fills up
    serve = subprocess.Popen(
        crest_command("serve", "--port", str(port), "--dashboard-port", "-1", "--selector", "ray",
                      "--ray-num-cpus", "1", "--ray-object-store-mb", "128",
                      "--selector-actors", "1", *PINNED),
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
    )  # fmt: skip
    ray_pids: set[int] = set()
    try:
        wait_for_port(port, timeout=300)
        health = crest_command("health", "--address", f"127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while subprocess.run(health, capture_output=True, cwd=ROOT).returncode != 0:
            assert time.monotonic() < deadline, "never SERVING"
            time.sleep(0.5)
        ray_pids = descendants(serve.pid)
        sockets = listening_sockets(ray_pids | {serve.pid})
        names = {name for _, name in sockets}
        assert {"gcs_server", "raylet"} <= names, f"Ray's servers not found: {sockets}"
        exposed = [(address, name) for address, name in sockets if not is_loopback(address)]
        assert exposed == [], f"listening beyond loopback: {exposed}"
        if PINNED:  # Ray's servers inherit the coordinator's core; the actor pins itself
            assert placement(serve.pid) == {str(CORES[0])}
            for pid in ray_pids:
                expected = {str(CORES[1 if "SelectorActor" in cmdline(pid) else 0])}
                assert placement(pid) in (expected, set()), (cmdline(pid), placement(pid))
            assert any("SelectorActor" in cmdline(pid) for pid in ray_pids)

        gcs = [address for address, name in sockets if name == "gcs_server"]
        for address in gcs:
            address = address.replace("[::ffff:127.0.0.1]", "127.0.0.1")
            assert gcs_call(address, None) is grpc.StatusCode.UNAUTHENTICATED
            assert gcs_call(address, "wrong" * 8) is grpc.StatusCode.UNAUTHENTICATED
            assert gcs_call(address, RAY_TOKEN) is grpc.StatusCode.OK
        # The service side through it: the selector actor embeds from the published weights.
        with RemoteCoordinator(f"127.0.0.1:{port}") as remote:
            config = job_config(selection_side="service", seed=2)
            job_id = remote.create_job(config, blobs()[1].numpy(), job_id="served")
            session = train(remote, job_id)[0]
            regions = remote.job_status(job_id).regions
        assert session.side == "service" and session.timings.embed == 0.0
        assert all(r.embedded_by == "service" and not r.fallback for r in regions)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=60)
        log.close()
        # Ray's processes end with their driver; stop any that outlive it, by id.
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in ray_pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in filter(alive, ray_pids):
            os.kill(pid, signal.SIGKILL)
