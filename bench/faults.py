"""Fault benchmark (``crest bench faults``): the coordinator's promises under faults and load.

Real processes on loopback: ``crest serve`` (in its own process group), a private
``redis-server`` on a free port, and a trainer in its own process that trains a small job to the
end and prints every batch it gets. Every trainer is compared with an undisturbed run of the
same job (same seed): a fault may cost time, never a different batch.

Scenarios (each bounded in time and count; each stops everything it started):

* ``coordinator``: SIGKILL of the coordinator's whole process group at random steps (one per
  equal stretch of the job), restarted at once on the same port (Redis store): the trainer
  finishes by itself with the same batches. Per kill: the outage (kill to listening again) and
  the trainer's stall (its batch gaps across the outage beyond the undisturbed run's).
* ``redis``: SIGKILL of redis-server (AOF on, ``appendfsync always`` unless the plan says
  ``everysec``) until the trainer blocks on a write, restart from the AOF, then a coordinator
  restart that must reload everything the trainer was told was stored: same batches, and the
  finished job reloads unchanged. What a crash of the machine (not of Redis) may lose is what
  the fsync policy allows: nothing with ``always``, about a second with ``everysec``.
* ``actor``: SIGKILL of a Ray selector actor just after a region's last batch, while the next
  selection is being prepared or runs: same batches; fallbacks (random batches) are counted.
* ``replica``: two ``crest serve --lease-s`` replicas on one Redis, the trainer given both
  addresses. At random steps the replica that owns the job (the one that serves it; the other
  must redirect to it) is SIGKILLed and restarted at once on its port, a new replica owning
  nothing: the job is taken over (by either) once the dead one's lease expires, and the trainer
  finishes by itself with the same batches. Per kill: the takeover (kill to the trainer's next
  batch) and the stall beyond the undisturbed run's batch gap.
* ``soak``: N concurrent closed-loop sessions for S seconds (``crest bench service``'s fetch
  loop) against a Redis-backed coordinator: errors, p50/p99.
* ``fuzz``: N hypothesis-generated requests (random bytes to every RPC, random uploads, job
  creations and unary calls) against ``crest serve``: no status outside :data:`ALLOWED` (no
  UNKNOWN/INTERNAL), and a rejected request leaves the job as it was.

The trainer process is ``python -m crest.bench.faults trainer ADDRESS JOB JOB_JSON``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from crest.proto.contract import JobConfig

if TYPE_CHECKING:
    import torch  # the trainer's; imported where used (the bench's own process needs none)

SCENARIOS = ("coordinator", "redis", "actor", "replica", "soak", "fuzz")
START_S = 180.0  # longest wait for a process to start (Ray's start on a busy 2-core machine)
REPLICA_STEP_S = 0.02  # the replica scenario's trainer: 150 steps take 3 s or more
TRAINER_RETRY_S = 300.0  # the trainer's RemoteCoordinator retry_s: rides out every outage here


@dataclass(frozen=True)
class TrainJob:
    """The trainer's job: Gaussian blobs in 8 dimensions and a small MLP (seconds of CPU)."""

    examples: int = 10_000
    classes: int = 4
    batch_size: int = 32
    epochs: int = 8
    train_frac: float = 0.5
    seed: int = 0
    step_s: float = 0.0  # the trainer sleeps this long after each step (same batches, slower)

    def config(self) -> JobConfig:
        return JobConfig(num_examples=self.examples, num_classes=self.classes,
                         batch_size=self.batch_size, epochs=self.epochs,
                         train_frac=self.train_frac, seed=self.seed)  # fmt: skip

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: ``(examples, 8)`` float32 inputs and int64 labels in ``[0, classes)``."""
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        centers = torch.randn(self.classes, 8, generator=gen) * 2
        y = torch.randint(0, self.classes, (self.examples,), generator=gen)
        return centers[y] + torch.randn(self.examples, 8, generator=gen), y


@dataclass(frozen=True)
class FaultPlan:
    """What ``crest bench faults`` runs; :func:`quick_plan` is the test tier's version."""

    scenarios: tuple[str, ...] = SCENARIOS
    job: TrainJob = TrainJob()  # 1,252 steps, 59 regions
    kills: int = 10  # coordinator SIGKILLs
    kill_selector: str = "inprocess"  # the coordinator's selector in the kill loop (or "ray")
    redis_kills: int = 3
    redis_fsync: str = "always"  # appendfsync of the Redis scenario ("everysec": compose's)
    actor_kills: int = 9
    replica_kills: int = 3  # SIGKILLs of the replica that owns the job
    lease_s: float = 5.0  # the replicas' --lease-s
    soak_sessions: int = 64
    soak_s: float = 60.0
    fuzz_n: int = 20_000
    seed: int = 0  # of the fault schedule (kill steps, jitter) and the fuzzer


def quick_plan(plan: FaultPlan | None = None) -> FaultPlan:
    """About a minute on an idle 2-core machine: a 75-step job, 2 coordinator kills, one
    Redis kill, one actor kill, one replica kill (2 s leases), 8 sessions for 5 s, 200 fuzzed
    requests."""
    return replace(plan or FaultPlan(), job=TrainJob(examples=2_400, epochs=2), kills=2,
                   redis_kills=1, actor_kills=1, replica_kills=1, lease_s=2.0, soak_sessions=8,
                   soak_s=5.0, fuzz_n=200)  # fmt: skip


# ------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s:.0f} s")


def _kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a process started with ``start_new_session`` and everything it started (the
    embedded Ray's processes too)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


class RedisServer:
    """A private redis-server on a free loopback port with its AOF on, restartable from it.

    ``fsync`` is Redis's ``appendfsync``: ``always`` puts every write on disk before the reply;
    ``everysec`` (compose and Kubernetes) may lose about the last second of acknowledged writes
    if the machine crashes (up to 2 s while a slow fsync holds writes back).
    """

    def __init__(self, directory: Path, fsync: str = "always") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "yes", "--appendfsync", fsync,
                     "--dir", str(directory)]  # fmt: skip
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        _wait_for_port(self.port, START_S)

    def kill(self) -> None:
        if self.process is not None:
            _kill_group(self.process)
            self.process.wait(timeout=60)
            self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class CoordinatorProcess:
    """``crest serve`` on a fixed loopback port (a restart keeps the address), in its own
    process group; its output goes to ``log``."""

    def __init__(self, log: Path, *flags: str) -> None:
        self.port = free_port()
        self.log = log
        self.args = [sys.executable, "-m", "crest.cli", "serve", "--port", str(self.port),
                     "--dashboard-port", "-1", "--log-level", "WARNING", *flags]  # fmt: skip
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it listens (or fail with its output)."""
        with self.log.open("a") as sink:
            self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=sink,
                                            text=True, start_new_session=True)  # fmt: skip
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_S)
        line = self.process.stdout.readline() if ready else ""
        if "listening" not in line:
            self.kill()
            raise RuntimeError(f"crest serve did not start in {START_S:.0f} s: {line!r}; "
                               f"its log: {_tail(self.log)}")  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        if self.process is not None:
            _kill_group(self.process)
            self.process.wait(timeout=60)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def stop(self) -> None:
        """SIGTERM (graceful: stops its Ray too), then SIGKILL whatever of the group is left."""
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
            self.kill()

    def __enter__(self) -> CoordinatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(none)"


# A batch as the trainer prints it: step, indices, weights, region, wall time (time.time()).
Batch = tuple[int, list[int], list[float], int, float]


class Trainer:
    """The trainer process (:func:`train`), its batches read as it prints them."""

    def __init__(self, address: str, job_id: str, job: TrainJob, log: Path) -> None:
        self.log = log
        with log.open("a") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "crest.bench.faults", "trainer", address, job_id,
                 json.dumps(asdict(job))],
                stdout=subprocess.PIPE, stderr=sink, text=True, start_new_session=True,
            )  # fmt: skip
        self.batches: list[Batch] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            batch = json.loads(line)
            with self._changed:
                self.batches.append(tuple(batch))  # type: ignore[arg-type]
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, step: int, timeout_s: float) -> None:
        """Block until the trainer has printed the batch of ``step``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self.batches or self.batches[-1][0] < step:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise RuntimeError(
                        f"the trainer never reached step {step} (at {self.steps_done()}); "
                        f"its log: {_tail(self.log)}"
                    )
                self._changed.wait(min(left, 1.0))

    def wait_idle(self, idle_s: float, timeout_s: float) -> bool:
        """Block until no batch came for ``idle_s`` (the trainer waits on the coordinator) or
        ``timeout_s`` passed; returns whether it went idle."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.batches[-1][4] if self.batches else time.time()
            if time.time() - last >= idle_s:
                return True
            time.sleep(0.05)
        return False

    def pause(self) -> None:
        """Stop the trainer where it is (SIGSTOP); :meth:`resume` lets it go on."""
        _kill_group(self.process, signal.SIGSTOP)

    def resume(self) -> None:
        _kill_group(self.process, signal.SIGCONT)

    def steps_done(self) -> int:
        return self.batches[-1][0] + 1 if self.batches else 0

    def finish(self, timeout_s: float) -> list[Batch]:
        """Wait for the trainer to end; its batches (raises if it failed)."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"the trainer ran past {timeout_s:.0f} s at step {self.steps_done()}; "
                f"its log: {_tail(self.log)}"
            ) from None
        self.kill()  # closes the pipe
        if code != 0:
            raise RuntimeError(f"the trainer exited with {code}; its log: {_tail(self.log)}")
        return self.batches

    def kill(self) -> None:
        """SIGKILL it (if it still runs) and close its pipe."""
        if self.process.poll() is None:
            _kill_group(self.process)
            self.process.wait(timeout=60)
        self._reader.join(timeout=60)
        if self.process.stdout is not None:
            self.process.stdout.close()


def train(address: str, job_id: str, job: TrainJob, emit: Callable[[Batch], None]) -> None:
    """Create (or find) the job, train it to the end through ``crest serve`` at ``address``,
    ``emit`` each batch with the time it arrived."""
    import torch
    from torch import nn

    from crest.client import Session, tensor_fetch, weighted_loss
    from crest.client.remote import RemoteCoordinator

    torch.set_num_threads(1)  # a tiny model; leave the cores to the coordinator
    x, y = job.data()
    torch.manual_seed(job.seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, job.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with RemoteCoordinator(address, retry_s=TRAINER_RETRY_S, connect_timeout_s=60) as remote:
        remote.create_job(job.config(), y.numpy(), job_id=job_id)
        with Session(remote, job_id, model=model, fetch=tensor_fetch(x, y)) as session:
            for batch in session.batches():
                emit((batch.step, batch.indices.tolist(), batch.weights.tolist(),
                      batch.region_id, time.time()))  # fmt: skip
                if job.step_s:
                    time.sleep(job.step_s)
                loss = weighted_loss(model(x[batch.indices]), y[batch.indices], batch.weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()


# ------------------------------------------------------------------------- the scenarios
@dataclass
class Context:
    """What the scenarios share: the plan, a work directory, the undisturbed run."""

    plan: FaultPlan
    workdir: Path
    rng: random.Random
    baseline: list[Batch] = field(default_factory=list)
    baseline_s: float = 0.0

    def trainer_timeout_s(self, faults: int) -> float:
        # Generous: a busy machine, and each fault may cost a restart (Ray's: tens of seconds).
        return 10 * self.baseline_s + 120 * faults + 300

    def kill_steps(self, count: int) -> list[int]:
        """``count`` random steps, one in each equal stretch of the job (never the first or
        the last step, so that each kill falls while the trainer runs)."""
        total = self.plan.job.config().total_steps
        edges = np.linspace(1, total - 2, count + 1)
        return [self.rng.randint(math.ceil(a), max(math.ceil(a), math.floor(b) - 1))
                for a, b in itertools.pairwise(edges)]  # fmt: skip

    def jitter(self) -> None:
        """A random moment within the step (or region switch) the trainer is in."""
        time.sleep(self.rng.uniform(0.0, 0.05))


def _first_difference(batches: list[Batch], baseline: list[Batch]) -> int | None:
    """The first batch (step, indices, weights, region) that differs; None: identical."""
    for i, (got, want) in enumerate(zip(batches, baseline, strict=False)):
        if got[:4] != want[:4]:
            return i
    return None if len(batches) == len(baseline) else min(len(batches), len(baseline))


def _stall(batches: list[Batch], baseline: list[Batch], down: float, up: float) -> dict:
    """What one outage ``[down, up]`` cost the trainer: its batch gaps overlapping the outage
    beyond the same steps' gaps in the undisturbed run, and the time from the coordinator
    being back to the trainer's next batch."""
    stall, recover = 0.0, 0.0
    for i in range(1, min(len(batches), len(baseline))):
        start, end = batches[i - 1][4], batches[i][4]
        if end > down and start < up:
            stall += max(0.0, (end - start) - (baseline[i][4] - baseline[i - 1][4]))
            recover = max(recover, end - up)
    return {"outage_s": up - down, "stall_s": stall, "recover_s": recover}


def _verdict(batches: list[Batch], baseline: list[Batch]) -> dict[str, Any]:
    first = _first_difference(batches, baseline)
    return {"batches": len(batches), "identical": first is None, "first_difference": first}


def run_baseline(ctx: Context) -> None:
    """The undisturbed run: the same trainer against an undisturbed ``crest serve``."""
    with CoordinatorProcess(ctx.workdir / "baseline-serve.log", "--selector", "inprocess") as c:
        trainer = Trainer(c.address, "baseline", ctx.plan.job, ctx.workdir / "baseline.log")
        try:
            ctx.baseline = trainer.finish(timeout_s=3600)
        finally:
            trainer.kill()
    ctx.baseline_s = ctx.baseline[-1][4] - ctx.baseline[0][4]


def coordinator_kills(ctx: Context) -> dict[str, Any]:
    plan, dirs = ctx.plan, ctx.workdir / "coordinator"
    dirs.mkdir()
    outages: list[tuple[float, float]] = []
    with (
        RedisServer(dirs) as redis,
        CoordinatorProcess(
            dirs / "serve.log", "--store", redis.url, "--selector", plan.kill_selector
        ) as coordinator,
    ):
        trainer = Trainer(coordinator.address, "kill-loop", plan.job, dirs / "trainer.log")
        try:
            for step in ctx.kill_steps(plan.kills):
                trainer.wait_for(step, ctx.trainer_timeout_s(plan.kills))
                ctx.jitter()
                down = time.time()
                coordinator.kill()
                coordinator.start()
                outages.append((down, time.time()))
            batches = trainer.finish(ctx.trainer_timeout_s(plan.kills))
        finally:
            trainer.kill()
    per_kill = [_stall(batches, ctx.baseline, down, up) for down, up in outages]
    return {"kills": len(outages), "selector": plan.kill_selector, "per_kill": per_kill,
            **_verdict(batches, ctx.baseline), **_outage_summary(per_kill)}  # fmt: skip


def _outage_summary(per_fault: list[dict]) -> dict[str, float]:
    return {
        "total_stall_s": sum(f["stall_s"] for f in per_fault),
        "max_recover_s": max((f["recover_s"] for f in per_fault), default=0.0),
        "max_outage_s": max((f["outage_s"] for f in per_fault), default=0.0),
    }


def _status(address: str, job_id: str) -> dict[str, Any]:
    from crest.client.remote import RemoteCoordinator

    with RemoteCoordinator(address, connect_timeout_s=60) as remote:
        return remote.job_status(job_id).model_dump()


def redis_kills(ctx: Context) -> dict[str, Any]:
    plan, dirs = ctx.plan, ctx.workdir / "redis"
    dirs.mkdir()
    faults: list[tuple[float, float, float, bool]] = []  # down, Redis up, coordinator up
    with (
        RedisServer(dirs, plan.redis_fsync) as redis,
        CoordinatorProcess(
            dirs / "serve.log", "--store", redis.url, "--selector", "inprocess"
        ) as coordinator,
    ):
        trainer = Trainer(coordinator.address, "redis-kill", plan.job, dirs / "trainer.log")
        try:
            for step in ctx.kill_steps(plan.redis_kills):
                trainer.wait_for(step, ctx.trainer_timeout_s(plan.redis_kills))
                ctx.jitter()
                down = time.time()
                redis.kill()
                # Down until the trainer waits on a write (or 10 s): an outage it must ride out.
                blocked = trainer.wait_idle(idle_s=1.0, timeout_s=10.0)
                redis.start()  # replays the AOF
                redis_up = time.time()
                # A coordinator that reloads the job from the restarted Redis: the trainer
                # goes on from what it was told was stored, and nothing else.
                coordinator.kill()
                coordinator.start()
                faults.append((down, redis_up, time.time(), blocked))
            batches = trainer.finish(ctx.trainer_timeout_s(plan.redis_kills))
        finally:
            trainer.kill()
        served = _status(coordinator.address, "redis-kill")
        coordinator.kill()
        coordinator.start()
        reloaded = _status(coordinator.address, "redis-kill")
    per_kill = [{**_stall(batches, ctx.baseline, down, up), "redis_down_s": redis_up - down,
                 "trainer_blocked": blocked} for down, redis_up, up, blocked in faults]  # fmt: skip
    return {"kills": len(faults), "per_kill": per_kill, "fsync": plan.redis_fsync,
            "reloaded_unchanged": served == reloaded,
            "reload_differs_in": sorted(k for k in served if served[k] != reloaded.get(k)),
            **_verdict(batches, ctx.baseline), **_outage_summary(per_kill)}  # fmt: skip


def who_serves(address: str, job_id: str) -> tuple[str, str]:
    """What a replica answers about ``job_id`` now: the status name of ``GetJobStatus``, and
    the owner it redirects to (``crest-owner``; '' when it serves the job itself)."""
    from crest.client.remote import redirect_owner
    from crest.proto.v1 import coordinator_pb2 as pb
    from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            pb_grpc.CoordinatorStub(channel).GetJobStatus(
                pb.JobStatusRequest(job_id=job_id), timeout=60
            )
        except grpc.RpcError as err:
            return err.code().name, redirect_owner(err)
    return "OK", ""


def replica_kills(ctx: Context) -> dict[str, Any]:
    plan, dirs = ctx.plan, ctx.workdir / "replica"
    dirs.mkdir()
    # kill, takeover, how long the trainer was paused before the kill, redirected?, its step
    faults: list[tuple[float, float, float, bool, int]] = []
    with RedisServer(dirs) as redis, contextlib.ExitStack() as stack:
        replicas = [
            CoordinatorProcess(dirs / f"serve-{name}.log", "--store", redis.url, "--selector",
                               "inprocess", "--lease-s", f"{plan.lease_s:g}",
                               "--replica-id", name)
            for name in ("a", "b")
        ]  # fmt: skip
        for replica in replicas:
            stack.callback(replica.stop)
        with ThreadPoolExecutor(len(replicas)) as pool:  # both start at once
            list(pool.map(CoordinatorProcess.start, replicas))
        addresses = ",".join(replica.address for replica in replicas)
        # Slowed down, so that the owner dies mid-job rather than after the trainer's last
        # step: the whole job takes a fraction of a second otherwise.
        job = replace(plan.job, step_s=REPLICA_STEP_S)
        trainer = Trainer(addresses, "replica-kill", job, dirs / "trainer.log")
        timeout_s = ctx.trainer_timeout_s(plan.replica_kills)
        try:
            for step in ctx.kill_steps(plan.replica_kills):
                trainer.wait_for(step, timeout_s)
                ctx.jitter()
                # The trainer waits (SIGSTOP) while the replicas are asked which owns the job
                # (seconds on a busy machine), so that the kill lands where it was meant to.
                paused = time.time()
                trainer.pause()
                try:
                    owner, redirected = _owner_replica(replicas, "replica-kill", timeout_s)
                    down = time.time()
                    owner.kill()
                    killed_at = trainer.steps_done()
                finally:
                    trainer.resume()
                # Taken over once a surviving replica serves the job (asking claims it too, as
                # the trainer's calls do): the dead owner's lease expired, the job was loaded.
                _owner_replica([r for r in replicas if r is not owner], "replica-kill", timeout_s)
                faults.append((down, time.time(), down - paused, redirected, killed_at))
                owner.start()  # a new process and token: it owns nothing until it takes a lease
            batches = trainer.finish(timeout_s)
        finally:
            trainer.kill()
    per_kill = []
    for down, up, paused_s, redirected, steps in faults:
        stall = _stall(batches, ctx.baseline, down, up)
        per_kill.append({"takeover_s": up - down, "recover_s": stall["recover_s"],
                         "stall_s": max(0.0, stall["stall_s"] - paused_s),
                         "redirected": redirected, "killed_at_step": steps})  # fmt: skip
    return {"kills": len(faults), "lease_s": plan.lease_s, "per_kill": per_kill,
            "redirected": all(k["redirected"] for k in per_kill),
            "mid_job": all(k["killed_at_step"] < len(batches) for k in per_kill),
            "total_stall_s": sum(k["stall_s"] for k in per_kill),
            "max_takeover_s": max((k["takeover_s"] for k in per_kill), default=0.0),
            "max_recover_s": max((k["recover_s"] for k in per_kill), default=0.0),
            **_verdict(batches, ctx.baseline)}  # fmt: skip


def _owner_replica(
    replicas: list[CoordinatorProcess], job_id: str, timeout_s: float
) -> tuple[CoordinatorProcess, bool]:
    """The replica that serves ``job_id``, and whether every other one redirects to it. Asking
    claims the job too, so a job whose owner died is taken over by one of them meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        answers = [who_serves(replica.address, job_id) for replica in replicas]
        owners = [r for r, answer in zip(replicas, answers, strict=True) if answer == ("OK", "")]
        if len(owners) == 1:
            (owner,) = owners
            others = [a for r, a in zip(replicas, answers, strict=True) if r is not owner]
            return owner, all(answer == ("UNAVAILABLE", owner.address) for answer in others)
        if len(owners) > 1 or time.monotonic() > deadline:
            raise RuntimeError(f"not one owner of job {job_id}: the replicas say {answers}")
        time.sleep(0.2)  # the dead owner's lease has not expired yet


def selector_actor_pids(session: int) -> list[int]:
    """The Ray selector actors' processes in the process session ``session`` (a ``crest
    serve`` started with ``start_new_session``: its embedded Ray's workers stay in it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "cmdline").read_bytes().startswith(b"ray::SelectorActor") and (
                os.getsid(int(entry.name)) == session
            ):
                pids.append(int(entry.name))
    return pids


def actor_kills(ctx: Context) -> dict[str, Any]:
    plan, dirs = ctx.plan, ctx.workdir / "actor"
    dirs.mkdir()
    # Kill just after a region's last batch: the trainer then embeds, uploads and waits for the
    # next selection, so the kill lands before or during it.
    ends = [a[0] for a, b in zip(ctx.baseline, ctx.baseline[1:], strict=False) if a[3] != b[3]]
    steps = sorted(ctx.rng.sample(ends, min(plan.actor_kills, len(ends))))
    killed: list[int] = []
    with CoordinatorProcess(dirs / "serve.log", "--selector", "ray", "--selector-actors", "1",
                            "--ray-num-cpus", "2") as coordinator:  # fmt: skip
        assert coordinator.process is not None
        session = coordinator.process.pid
        trainer = Trainer(coordinator.address, "actor-kill", plan.job, dirs / "trainer.log")
        try:
            for step in steps:
                trainer.wait_for(step, ctx.trainer_timeout_s(plan.actor_kills))
                ctx.jitter()
                deadline = time.monotonic() + 60
                while not (pids := selector_actor_pids(session)):  # Ray is restarting it
                    if time.monotonic() > deadline:
                        raise RuntimeError("no selector actor process found in 60 s")
                    time.sleep(0.05)
                victim = ctx.rng.choice(pids)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
            batches = trainer.finish(ctx.trainer_timeout_s(plan.actor_kills))
        finally:
            trainer.kill()
        regions = _status(coordinator.address, "actor-kill")["regions"]
    return {"kills": len(killed), "regions": len(regions),
            "fallbacks": sum(r["fallback"] for r in regions),
            **_verdict(batches, ctx.baseline)}  # fmt: skip


def soak(ctx: Context) -> dict[str, Any]:
    from crest.bench.service import fetch_latency

    plan, dirs = ctx.plan, ctx.workdir / "soak"
    dirs.mkdir()
    with (
        RedisServer(dirs) as redis,
        CoordinatorProcess(
            dirs / "serve.log", "--store", redis.url, "--selector", "inprocess"
        ) as coordinator,
    ):
        try:
            result: dict[str, Any] = fetch_latency(coordinator.address, plan.soak_sessions,
                                                   plan.soak_s)  # fmt: skip
            result["errors"], result["first_error"] = 0, None
        except (grpc.RpcError, RuntimeError, OSError) as err:  # a soak reports its failure
            result = {"errors": 1, "first_error": f"{type(err).__name__}: {err}"}
    return {"sessions": plan.soak_sessions, "seconds": plan.soak_s, **result}


# ----------------------------------------------------------------------------- fuzzing
# Every status a request may get: a valid call that waited past its deadline for peers may
# get UNAVAILABLE or DEADLINE_EXCEEDED; UNKNOWN and INTERNAL never (an unhandled error).
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
FUZZ_JOB = "fuzzed"


def fuzz_requests(stub: Any, channel: grpc.Channel, candidates: np.ndarray) -> Any:
    """A hypothesis strategy of ``(kind, call)``: ``call()`` sends one random request.

    Kinds: random bytes to every RPC the proto declares, random upload streams (indices
    sometimes the job's real candidates), random job creations, random unary calls (never a
    ``DeleteJob`` of :data:`FUZZ_JOB`: deleting it is a legal change).
    """
    from hypothesis import strategies as st

    from crest.proto.v1 import coordinator_pb2 as pb

    methods = pb.DESCRIPTOR.services_by_name["Coordinator"].methods_by_name
    job_ids = st.sampled_from([FUZZ_JOB, "", "other", "\x00", "x" * 200])
    ranks = st.one_of(st.integers(-3, 3), st.integers(-(2**31), 2**31 - 1))
    steps = st.one_of(st.integers(-5, 200), st.integers(-(2**63), 2**63 - 1))
    floats = st.floats(allow_nan=True, allow_infinity=True)

    @st.composite
    def arrays(draw, real: bool = False) -> pb.Array:
        if real and draw(st.booleans()):
            picked = draw(st.lists(st.sampled_from(candidates.tolist()), min_size=1, max_size=8))
            return pb.Array(dtype=pb.INT64, shape=[len(picked)], data=np.array(picked).tobytes())
        return pb.Array(dtype=draw(st.integers(-1, 6)),
                        shape=draw(st.lists(st.integers(-2, 9), max_size=3)),
                        data=draw(st.binary(max_size=300)))  # fmt: skip

    @st.composite
    def raw(draw) -> tuple[str, Callable[[], object]]:
        data, method = draw(st.binary(max_size=200)), draw(st.sampled_from(sorted(methods)))
        path = f"/crest.v1.Coordinator/{method}"
        if methods[method].client_streaming:
            return f"bytes {method}", lambda: channel.stream_unary(path)(iter([data, data]),
                                                                          timeout=30)  # fmt: skip
        return f"bytes {method}", lambda: channel.unary_unary(path)(data, timeout=30)

    @st.composite
    def upload(draw) -> tuple[str, Callable[[], object]]:
        chunks = [
            pb.EmbeddingChunk(job_id=draw(job_ids), rank=draw(ranks),
                              region_id=draw(st.integers(-2, 3)), seq=draw(st.integers(-2, 3)),
                              indices=draw(arrays(real=True)), embeddings=draw(arrays()),
                              losses=draw(arrays()))
            for _ in range(draw(st.integers(0, 3)))
        ]  # fmt: skip
        return "UploadEmbeddings", lambda: stub.UploadEmbeddings(iter(chunks), timeout=30)

    @st.composite
    def create(draw) -> tuple[str, Callable[[], object]]:
        config = pb.JobConfig(
            num_examples=draw(st.integers(-5, 3000)), num_classes=draw(st.integers(-2, 8)),
            batch_size=draw(st.integers(-1, 4000)), tau=draw(st.floats(allow_nan=True)),
            train_frac=draw(st.floats(-1, 2)), world_size=draw(st.integers(-1, 5)),
        )  # fmt: skip
        messages = [pb.CreateJobRequest(header=pb.JobHeader(job_id=draw(job_ids), config=config))]
        messages += [pb.CreateJobRequest(labels=draw(arrays()))
                     for _ in range(draw(st.integers(0, 2)))]  # fmt: skip
        return "CreateJob", lambda: stub.CreateJob(iter(messages), timeout=30)

    others = job_ids.filter(lambda j: j != FUZZ_JOB)
    unary = st.one_of(
        st.builds(lambda j, r: ("OpenSession", lambda: stub.OpenSession(
            pb.OpenSessionRequest(job_id=j, rank=r), timeout=30)), job_ids, ranks),
        st.builds(lambda j, r, s: ("GetRegion", lambda: stub.GetRegion(
            pb.GetRegionRequest(job_id=j, rank=r, step=s), timeout=30)), job_ids, ranks, steps),
        st.builds(lambda report: ("ReportCheck", lambda: stub.ReportCheck(report, timeout=30)),
                  st.builds(pb.CheckReport, job_id=job_ids, rank=ranks,
                            region_id=st.integers(-1, 2), step=steps, loss_sum=floats,
                            count=st.integers(-2, 10), linear=floats, quadratic=floats,
                            curvature=floats)),
        st.builds(lambda j: ("GetJobStatus", lambda: stub.GetJobStatus(
            pb.JobStatusRequest(job_id=j), timeout=30)), job_ids),
        st.just(("ListJobs", lambda: stub.ListJobs(pb.ListJobsRequest(), timeout=30))),
        st.builds(lambda j: ("DeleteJob", lambda: stub.DeleteJob(
            pb.DeleteJobRequest(job_id=j), timeout=30)), others),
    )  # fmt: skip
    return st.one_of(raw(), upload(), create(), unary)


def fuzz(ctx: Context) -> dict[str, Any]:
    """``fuzz_n`` requests from :func:`fuzz_requests`, one at a time, against ``crest serve``
    (short waits, so that valid waiting calls end quickly)."""
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hypothesis_seed
    except ImportError as err:
        raise RuntimeError("the fuzz scenario needs hypothesis: pip install -e '.[dev]'") from err
    from crest.client.remote import RemoteCoordinator
    from crest.proto.v1 import coordinator_pb2 as pb
    from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc

    plan, dirs = ctx.plan, ctx.workdir / "fuzz"
    dirs.mkdir()
    job = TrainJob(examples=1_200, epochs=4)
    codes: Counter[str] = Counter()
    violations: list[str] = []
    with CoordinatorProcess(dirs / "serve.log", "--selector", "inprocess", "--wait-s", "0.5"
                            ) as coordinator:  # fmt: skip
        with RemoteCoordinator(coordinator.address, connect_timeout_s=60) as remote:
            remote.create_job(job.config(), job.data()[1].numpy(), job_id=FUZZ_JOB)
            candidates = remote.get_region(FUZZ_JOB, 0, 0).candidates
        channel = grpc.insecure_channel(coordinator.address)
        stub = pb_grpc.CoordinatorStub(channel)

        def state() -> tuple[pb.JobStatus, int]:
            status = stub.GetJobStatus(pb.JobStatusRequest(job_id=FUZZ_JOB), timeout=30).status
            session = stub.OpenSession(pb.OpenSessionRequest(job_id=FUZZ_JOB, rank=0),
                                       timeout=30)  # fmt: skip
            return status, session.committed_seq

        def settled() -> tuple[pb.JobStatus, int]:
            """The state once work an accepted request started (a selection) is done."""
            last = state()
            for _ in range(20):
                time.sleep(0.05)
                if (now := state()) == last:
                    break
                last = now
            return last

        before = [settled()]

        @hypothesis_seed(plan.seed)
        @settings(max_examples=plan.fuzz_n, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(request=fuzz_requests(stub, channel, candidates))
        def send(request: tuple[str, Callable[[], object]]) -> None:
            kind, call = request
            try:
                call()
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
            codes[code.name] += 1
            if code not in ALLOWED:
                violations.append(f"{kind}: {code.name}")
            elif code is grpc.StatusCode.OK:
                before[0] = settled()
            elif state() != before[0]:
                violations.append(f"{kind}: rejected with {code.name} but changed the job")

        started = time.monotonic()
        send()
        seconds = time.monotonic() - started
        serving = coordinator.process is not None and coordinator.process.poll() is None
        serving = serving and state()[0].job_id == FUZZ_JOB
        channel.close()
    return {"requests": sum(codes.values()), "seconds": seconds, "codes": dict(codes),
            "violations": len(violations), "examples": violations[:10],
            "still_serving": serving}  # fmt: skip


# --------------------------------------------------------------------------- the suite
RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "coordinator": coordinator_kills,
    "redis": redis_kills,
    "actor": actor_kills,
    "replica": replica_kills,
    "soak": soak,
    "fuzz": fuzz,
}


def passed(name: str, result: dict[str, Any]) -> bool:
    """Whether a scenario kept the promise it checks."""
    if "error" in result:  # it raised
        return False
    return {
        "coordinator": lambda r: r["identical"],
        "redis": lambda r: r["identical"] and r["reloaded_unchanged"],
        "actor": lambda r: r["identical"] and r["fallbacks"] == 0,
        "replica": lambda r: r["identical"] and r["redirected"] and r["mid_job"],
        "soak": lambda r: r["errors"] == 0,
        "fuzz": lambda r: r["violations"] == 0 and r["still_serving"],
    }[name](result)


def run_faults(plan: FaultPlan, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the plan's scenarios; their results, each with ``ok``. A scenario that raises is
    reported (``error``) and the others still run. Logs are kept only when one fails."""
    unknown = set(plan.scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; valid: {list(SCENARIOS)}")
    env = os.environ.get("CREST_STRICT")
    os.environ["CREST_STRICT"] = "1"  # `crest serve` children: a selection bug fails loudly
    workdir = Path(tempfile.mkdtemp(prefix="crest-faults-"))
    ctx = Context(plan, workdir, random.Random(plan.seed))
    results: dict[str, Any] = {}
    started = time.monotonic()
    try:
        if {"coordinator", "redis", "actor", "replica"} & set(plan.scenarios):
            progress("undisturbed run ...")
            run_baseline(ctx)
        for name in plan.scenarios:
            progress(f"{name} ...")
            try:
                results[name] = RUNNERS[name](ctx)
            except Exception as err:  # reported; the remaining scenarios still run
                results[name] = {"error": f"{type(err).__name__}: {err}"}
            results[name]["ok"] = passed(name, results[name])
            progress(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'}")
    finally:
        if env is None:
            os.environ.pop("CREST_STRICT", None)
        else:
            os.environ["CREST_STRICT"] = env
    ok = all(r["ok"] for r in results.values())
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"benchmark": "faults", "plan": asdict(plan), "ok": ok,
            "logs": None if ok else str(workdir), "seconds": time.monotonic() - started,
            "baseline": {"batches": len(ctx.baseline), "seconds": ctx.baseline_s},
            "scenarios": results}  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    lines = ["| scenario | faults / load | result | kept |", "|---|---|---|---|"]
    rows = {
        "coordinator": lambda r: (
            f"coordinator SIGKILL loop (Redis store, {r['selector']} selector)",
            f"{r['kills']} kills",
            f"{r['batches']:,} batches, {_same_text(r)}; trainer stall {r['total_stall_s']:.1f} s "
            f"in all, recovery <= {r['max_recover_s']:.2f} s after the coordinator was back, "
            f"outage <= {r['max_outage_s']:.1f} s"),
        "redis": lambda r: (
            f"Redis SIGKILL + restart from AOF (fsync {r['fsync']}), then a coordinator reload",
            f"{r['kills']} kills",
            f"{r['batches']:,} batches, {_same_text(r)}; reloaded job "
            + ("unchanged" if r["reloaded_unchanged"] else f"CHANGED: {r['reload_differs_in']}")
            + f"; trainer stall {r['total_stall_s']:.1f} s in all"),
        "actor": lambda r: (
            "selector actor SIGKILL (Ray, 1 actor), at region switches", f"{r['kills']} kills",
            f"{r['batches']:,} batches, {_same_text(r)}; {r['fallbacks']} fallbacks in "
            f"{r['regions']} regions"),
        "replica": lambda r: (
            f"coordinator replica SIGKILL (2 replicas, {r['lease_s']:g} s leases), the job's "
            "owner", f"{r['kills']} kills",
            f"{r['batches']:,} batches, {_same_text(r)}; taken over <= "
            f"{r['max_takeover_s']:.1f} s after the kill, the trainer's next batch <= "
            f"{r['max_recover_s']:.2f} s after that, trainer stall {r['total_stall_s']:.1f} s "
            "in all; the other replica redirected to the owner: "
            + ("yes" if r["redirected"] else "**no**")),
        "soak": lambda r: (
            "soak: closed-loop region fetches (Redis store)",
            f"{r['sessions']} sessions x {r['seconds']:g} s",
            f"{r['errors']} errors" + (f" ({r['first_error']})" if r["first_error"] else
                                       f"; {r['calls']:,} calls, p50 {r['p50_ms']:.1f} ms, "
                                       f"p99 {r['p99_ms']:.1f} ms")),
        "fuzz": lambda r: (
            "fuzzing every RPC (hypothesis)", f"{r['requests']:,} requests",
            f"{r['violations']} violations (UNKNOWN/INTERNAL or a rejected request that "
            f"changed state); codes {r['codes']}; still serving: {r['still_serving']}"),
    }  # fmt: skip
    for name, r in result["scenarios"].items():
        cells = (name, "-", f"error: {r['error']}") if "error" in r else rows[name](r)
        lines.append(f"| {' | '.join(cells)} | {'yes' if r['ok'] else '**no**'} |")
    return "\n".join(lines)


def _same_text(r: dict[str, Any]) -> str:
    if r["identical"]:
        return "identical to the undisturbed run"
    return f"**differ** from the undisturbed run at batch {r['first_difference']}"


def _trainer_main(address: str, job_id: str, job_json: str) -> None:
    def emit(batch: Batch) -> None:
        print(json.dumps(batch), flush=True)

    train(address, job_id, TrainJob(**json.loads(job_json)), emit)


if __name__ == "__main__":
    if sys.argv[1:2] != ["trainer"] or len(sys.argv) != 5:
        sys.exit("usage: python -m crest.bench.faults trainer ADDRESS JOB JOB_JSON")
    _trainer_main(*sys.argv[2:])
