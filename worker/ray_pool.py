"""The Ray selector pool: the selection kernel on Ray actors, one per GPU where there are GPUs.

:class:`RaySelector` implements the :class:`~crest.worker.selector.Selector` protocol for the
coordinator's asyncio loop:

* Requests wait in a :class:`~crest.worker.fair_queue.FairQueue`; each actor has one serving
  task that takes everything waiting (its share, when several actors are idle, and one request
  per job per round), answers it with one kernel call (:func:`solve_many`), and splits the
  result back, so concurrent ranks and jobs share kernel calls and each gets exactly what a
  call of its own would return. A request over ``max_batch_rows`` rows waits as chunks of whole
  problems (:func:`~crest.worker.problems.split_request`): idle actors solve them in
  parallel, and a job that starts waiting goes before the chunks of jobs served already, so a
  small job's request waits for the kernel calls running when it comes, not for a large
  job's whole selection. :attr:`RaySelector.served` records the recent calls.
* Embeddings go to the object store once per request (``ray.put``) and reach the actor as
  read-only numpy views; a retry on another actor reuses the stored copy.
* Actors hold nothing that cannot be rebuilt. A dead actor's batch goes back to the front of
  the queue for another actor; Ray restarts the actor (``max_restarts``), and the pool
  replaces one that stays dead. ``select`` never waits past its caller's deadline (default
  ``deadline_s``): then it raises
  :class:`SelectionTimeout` and the caller falls back (random batches for the region). A
  kernel call carries the time left to its batch's last deadline, and the actor abandons it
  there (:class:`~crest.worker.cancel.Cancellation`), free for the next batch. An actor still
  busy when its whole batch has timed out is hung (or hopelessly slow): it is killed and
  restarted, so that it cannot stay stuck.
* Nothing here blocks the event loop: ObjectRefs are awaited, never ``ray.get``.
* :meth:`RaySelector.embed` runs a trainer's exported model (:mod:`crest.worker.model`) on
  candidates through the same queue, alone in its call (so an actor never runs a forward
  pass beside a kernel call), with the same deadline and retries. A model's artifact goes to
  the object store once (kept by ``model_id``); each actor keeps the last few programs it
  loaded, so a request ships only its weights and rows.

Exceptions (the first two :class:`~crest.proto.errors.Unavailable`: expected, the caller
falls back; a :class:`KernelError` is a bug)::

    Unavailable
     ├── SelectionTimeout   no result within the per-selection deadline
     └── PoolUnavailable    actors cannot be scheduled or started, or the pool is closed
    KernelError             the kernel (or an embedding model) raised on a valid request
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from crest.proto.errors import CrestError, InvalidArgument, Unavailable
from crest.worker.cancel import Cancellation, SelectionCancelled
from crest.worker.fair_queue import FairQueue
from crest.worker.model import ModelCache
from crest.worker.placement import available_cores, pin_process, selector_threads
from crest.worker.problems import (
    CHUNK_ROWS,
    EmbedRequest,
    EmbedResult,
    ServedBatch,
    check_embed_request,
    join_results,
    split_request,
)
from crest.worker.selector import (
    SelectionRequest,
    SelectionResult,
    check_request,
    run_embedding,
    solve_many,
)

log = logging.getLogger(__name__)

# Requests larger than this are put into the object store from a worker thread, so that the
# serialisation copy does not stall the event loop.
_PUT_IN_THREAD_BYTES = 1 << 20

# Model artifacts kept in the object store (by model_id, least recently used dropped first).
_ARTIFACTS = 16
# Batches RaySelector.served remembers.
_SERVED_KEPT = 256


class SelectionTimeout(Unavailable):
    """No selection result within the deadline: every actor is dead, hung or busy."""


class PoolUnavailable(Unavailable):
    """The pool cannot serve: its actors cannot be scheduled or started, or it is closed."""


class KernelError(CrestError):
    """The kernel (or an embedding model) raised on a request for a reason other than
    invalid input: a bug."""


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
    namespace: str = "crest",
    loopback: bool = False,
) -> None:
    """Start a local Ray (embedded mode) or join a cluster (cluster mode); no-op if running.

    ``ray.init`` replaces the process's SIGTERM handler: install the coordinator's own
    asyncio signal handlers *after* calling this, or graceful shutdown never runs.

    Args:
        address: a cluster's address (``"host:port"`` or ``"auto"``) to join; ``None``
            starts a local Ray inside this process's session (no dashboard).
        num_cpus: CPUs of the local Ray (embedded mode only; default: all).
        object_store_bytes: object-store size of the local Ray (embedded mode only). Set it:
            Ray's default claims up to 30% of memory.
        namespace: Ray namespace of crest's actors.
        loopback: the local Ray must run on a loopback address (``crest serve`` sets the
            environment for it before importing Ray); if it does not, it is shut down and
            this raises RuntimeError rather than serve on a routable address.
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace=namespace)
        return
    ray.init(
        num_cpus=num_cpus,
        object_store_memory=object_store_bytes,
        include_dashboard=False,
        namespace=namespace,
    )
    node_ip = ray.util.get_node_ip_address()
    if loopback and not ipaddress.ip_address(node_ip).is_loopback:
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray runs on {node_ip}, not on loopback: set "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported"
        )


class SelectorActor:
    """Runs :func:`solve_many` and :func:`run_embedding` in its own process. It keeps only
    loaded models, which every request can rebuild: a restart loses nothing.

    Args:
        threads: torch intra-op threads (set in each call: with ``max_concurrency=2`` calls
            run on pool threads, and OpenMP's thread count is a per-thread setting).
        use_gpu: run on the GPU Ray assigned, if torch can see one.
        cores: pin the whole actor process to these cores of its node
            (:func:`~crest.worker.placement.pin_process`), ``threads`` being one per core.
    """

    def __init__(self, threads: int, use_gpu: bool, cores: tuple[int, ...] | None = None) -> None:
        self.threads = threads
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        if cores:
            pin_process(cores)  # Ray's threads too; threads started later inherit it
        torch.set_num_threads(threads)
        self.models = ModelCache()

    def ping(self) -> tuple[int, str]:
        """``(pid, device)``; answers while a selection runs (a second concurrent slot)."""
        return os.getpid(), self.device

    def cores(self) -> tuple[int, ...]:
        """The cores this actor runs on (those of the thread answering)."""
        return available_cores()

    def select(
        self, *payloads: tuple[np.ndarray, np.ndarray, np.ndarray], timeout_s: float | None = None
    ) -> list[Any]:
        """Solve ``(embeddings, groups, budgets)`` payloads with one kernel call, abandoned
        (:class:`~crest.worker.cancel.SelectionCancelled`) ``timeout_s`` after it starts: by
        then every caller of the batch has given up, and the actor is free for the next."""
        torch.set_num_threads(self.threads)
        requests = [SelectionRequest(*payload) for payload in payloads]
        return solve_many(requests, self.device, Cancellation.after(timeout_s))

    def embed(
        self,
        model_id: str,
        artifact: bytes,
        payload: tuple[np.ndarray, np.ndarray, np.ndarray],
        batch_size: int,
    ) -> EmbedResult:
        """Embed ``(weights, inputs, labels)`` with the model of ``model_id`` (loaded from
        ``artifact`` unless cached)."""
        torch.set_num_threads(self.threads)
        request = EmbedRequest("", model_id, artifact, *payload, batch_size=batch_size)
        return run_embedding(request, self.device, self.models)


@dataclass(eq=False)
class _Pending:
    """A request waiting for (or in) a kernel call or an embedding."""

    request: SelectionRequest | EmbedRequest
    payload: ray.ObjectRef  # its arrays
    future: asyncio.Future[Any]
    deadline: float  # loop time past which its caller has given up
    artifact: ray.ObjectRef | None = None  # an embedding's model
    solo: bool = False  # must run alone (its batch failed; find out whether it is the cause)

    @property
    def rows(self) -> int:
        request = self.request
        return len(request.labels if isinstance(request, EmbedRequest) else request.groups)

    @property
    def kind(self) -> str:
        return "embedding" if isinstance(self.request, EmbedRequest) else "selection"


@dataclass(eq=False)
class _Slot:
    """One actor of the pool and what is known of it."""

    actor: Any  # ray.actor.ActorHandle
    pid: int | None = None
    device: str = "cpu"
    task: asyncio.Task[None] | None = None
    in_flight: int = 0  # requests in the batch it is working on
    recovering: bool = False


async def _resolve(ref: ray.ObjectRef) -> Any:
    return await ref


class RaySelector:
    """Selection on a pool of Ray actors (see the module docstring).

    Ray must be initialised (:func:`init_ray`). The constructor blocks until every actor
    answers, at most ``ready_timeout_s``; inside a running event loop use :meth:`create`.

    Args:
        num_actors: actors in the pool; default one per GPU of the cluster, or 1 without GPUs.
        gpu_share: GPUs each actor requests where the cluster has GPUs (e.g. 0.5 leaves half
            of each to other work); never requested on a cluster without GPUs.
        cpus_per_actor: CPUs each actor requests from Ray.
        threads: torch intra-op threads in each actor; default one per core of ``cores``,
            else 1.
        cores: pin every actor's process to these cores of its node (all actors share the
            set); default: unpinned (Ray's ``num_cpus`` is bookkeeping, not placement).
        deadline_s: longest time :meth:`select` may take before :class:`SelectionTimeout`
            when its caller passes no ``timeout_s`` (the coordinator always passes one).
        ready_timeout_s: longest wait for the actors to start; past it, the actors are
            removed and :class:`PoolUnavailable` says what could not be scheduled.
        ping_timeout_s: how long :meth:`healthy` and recovery wait for an actor's answer.
        max_restarts: Ray restarts of each actor (-1: unlimited); one still dead after them
            is replaced by a new actor.
        max_batch_rows: candidate rows of one kernel call: a larger request is solved in
            chunks of whole problems under it (a single larger problem alone), so that other
            jobs' requests are served between its chunks.

    Raises:
        PoolUnavailable: Ray is not initialised, or the actors did not start in time.
    """

    def __init__(
        self,
        *,
        num_actors: int | None = None,
        gpu_share: float = 1.0,
        cpus_per_actor: float = 1.0,
        threads: int | None = None,
        cores: Collection[int] | None = None,
        deadline_s: float = 30.0,
        ready_timeout_s: float = 60.0,
        ping_timeout_s: float = 1.0,
        max_restarts: int = -1,
        max_batch_rows: int = CHUNK_ROWS,
    ) -> None:
        if not ray.is_initialized():
            raise PoolUnavailable("Ray is not initialised: call crest.worker.init_ray() first")
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        self.gpu_share = gpu_share if gpus > 0 else 0.0
        if num_actors is None:
            num_actors = max(1, math.floor(gpus)) if self.gpu_share else 1
        self.cores = tuple(sorted(cores)) if cores else None
        threads = selector_threads(threads, self.cores)
        if num_actors < 1 or deadline_s <= 0 or max_batch_rows < 1:
            raise ValueError("num_actors, deadline_s and max_batch_rows must be > 0")
        self.deadline_s = deadline_s
        self.ping_timeout_s = ping_timeout_s
        self.max_batch_rows = max_batch_rows
        self.resources = {"num_cpus": cpus_per_actor, "num_gpus": self.gpu_share}
        self._actor_class = ray.remote(SelectorActor).options(
            **self.resources, max_restarts=max_restarts, max_task_retries=0, max_concurrency=2
        )
        self._actor_args = (threads, self.gpu_share > 0, self.cores)
        self._slots = [_Slot(self._new_actor()) for _ in range(num_actors)]
        self._closed = False
        self.abandoned = 0  # kernel calls the actors gave up at their batch's deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: FairQueue[_Pending] = FairQueue(size=lambda item: item.rows, key=_batch_key)
        self._wake: asyncio.Condition | None = None
        self._artifacts: OrderedDict[str, ray.ObjectRef] = OrderedDict()  # by model_id
        self._served: deque[ServedBatch] = deque(maxlen=_SERVED_KEPT)
        self._wait_ready(ready_timeout_s)

    @classmethod
    async def create(cls, **kwargs: Any) -> RaySelector:
        """Construct from inside an event loop without blocking it (same arguments)."""
        return await asyncio.to_thread(cls, **kwargs)

    def _new_actor(self) -> Any:
        return self._actor_class.remote(*self._actor_args)

    def _wait_ready(self, timeout_s: float) -> None:
        pings = [slot.actor.ping.remote() for slot in self._slots]
        ready, _ = ray.wait(pings, num_returns=len(pings), timeout=timeout_s)
        try:
            if len(ready) < len(pings):
                raise PoolUnavailable(
                    f"{len(pings) - len(ready)} of {len(pings)} selector actors did not start "
                    f"within {timeout_s:g} s; each asks Ray for {self.resources}, the cluster "
                    f"has {ray.available_resources()} free"
                )
            for slot, (pid, device) in zip(self._slots, ray.get(pings), strict=True):
                slot.pid, slot.device = pid, device
        except RayActorError as err:
            self.close()
            raise PoolUnavailable(f"a selector actor failed to start: {err}") from err
        except PoolUnavailable:
            self.close()
            raise

    # ------------------------------------------------------------------ public surface
    @property
    def actor_pids(self) -> list[int | None]:
        """Process id of each actor as last seen (for operators and fault tests)."""
        return [slot.pid for slot in self._slots]

    @property
    def actor_devices(self) -> list[str]:
        """Torch device of each actor as last seen (``cuda`` where Ray gave it a GPU)."""
        return [slot.device for slot in self._slots]

    @property
    def in_flight(self) -> list[int]:
        """Requests each actor is working on now (0: idle or recovering)."""
        return [slot.in_flight for slot in self._slots]

    @property
    def served(self) -> list[ServedBatch]:
        """The last few hundred batches the actors answered (or failed), oldest first: which
        actor, whose requests, and when (for operators and tests of the pool's sharing)."""
        return list(self._served)

    @property
    def queued(self) -> int:
        """Requests waiting for an actor."""
        return len(self._queue)

    @property
    def actors(self) -> list[Any]:
        """The actor handles, in slot order (they change when an actor is replaced)."""
        return [slot.actor for slot in self._slots]

    async def select(
        self, request: SelectionRequest, timeout_s: float | None = None
    ) -> SelectionResult:
        """Solve one request on the pool; what :func:`run_selection` would return. A request
        over ``max_batch_rows`` rows is solved in chunks of whole problems, on every idle
        actor, with other jobs' requests served between them; the result is the same.

        Args:
            request: the region's problems.
            timeout_s: the caller's deadline for this request (default ``deadline_s``).

        Raises:
            SelectionTimeout: no result within the deadline.
            PoolUnavailable: the pool is closed.
            InvalidArgument: the kernel rejected the request.
            KernelError: the kernel raised anything else (a bug).
        """
        try:
            check_request(request)  # here, so that a bad request never reaches a batch
        except ValueError as err:
            raise InvalidArgument(f"bad selection request: {err}") from None
        if len(request.groups) > self.max_batch_rows:  # copies, for unsorted groups
            chunks = await asyncio.to_thread(split_request, request, self.max_batch_rows)
        else:
            chunks = split_request(request, self.max_batch_rows)
        # Every chunk waits in the queue at once: idle actors share them, and another job's
        # request goes before the next chunk (FairQueue), so that it never waits for more
        # than the kernel calls already running.
        tasks = [
            asyncio.ensure_future(self._submit(chunk.request, _payload(chunk.request),
                                               chunk.request.embeddings.nbytes, timeout_s))
            for chunk in chunks
        ]  # fmt: skip
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # the others' results are of no use now
                task.cancel()
            raise
        return join_results(chunks, list(results))

    async def embed(self, request: EmbedRequest, timeout_s: float | None = None) -> EmbedResult:
        """Embed one request's candidates on an actor; what :func:`run_embedding` returns.

        Args:
            request: the candidates, the model's artifact and its weights.
            timeout_s: the caller's deadline for this request (default ``deadline_s``).

        Raises:
            SelectionTimeout: no result within the deadline.
            PoolUnavailable: the pool is closed.
            InvalidArgument: the request is malformed, or its weights or labels do not fit
                its model (a bug of the caller's).
            KernelError: the model raised anything else (a bug).
        """
        try:
            check_embed_request(request)
        except ValueError as err:
            raise InvalidArgument(f"bad embedding request: {err}") from None
        payload = (request.weights, request.inputs, request.labels)
        size = request.weights.nbytes + request.inputs.nbytes
        return await self._submit(request, payload, size, timeout_s)

    async def _submit(
        self,
        request: SelectionRequest | EmbedRequest,
        payload: tuple[np.ndarray, ...],
        nbytes: int,
        timeout_s: float | None,
    ) -> Any:
        """Queue a checked request for the actors; its result, or SelectionTimeout."""
        limit = self.deadline_s if timeout_s is None else timeout_s
        if self._closed:
            raise PoolUnavailable("the selector pool is closed")
        wake = self._start()
        try:
            async with asyncio.timeout(limit):
                ref = await _put(payload, nbytes)
                artifact = None
                if isinstance(request, EmbedRequest):
                    artifact = await self._artifact(request)
                loop = asyncio.get_running_loop()
                item = _Pending(request, ref, loop.create_future(), loop.time() + limit, artifact)
                async with wake:
                    self._queue.put(request.job_id, item)
                    wake.notify()
                return await item.future
        except TimeoutError:
            what = "embedding" if isinstance(request, EmbedRequest) else "selection"
            raise SelectionTimeout(
                f"no {what} within {limit:g} s from {len(self._slots)} actor(s) "
                f"(pids {self.actor_pids})"
            ) from None

    async def _artifact(self, request: EmbedRequest) -> ray.ObjectRef:
        """The object-store copy of a model's artifact, put there on its first request."""
        ref = self._artifacts.get(request.model_id)
        if ref is None:
            ref = await _put(request.artifact, len(request.artifact))
            self._artifacts[request.model_id] = ref
            while len(self._artifacts) > _ARTIFACTS:
                self._artifacts.popitem(last=False)
        self._artifacts.move_to_end(request.model_id)
        return ref

    async def healthy(self) -> bool:
        """True when at least one actor answers a ping within ``ping_timeout_s``."""
        if self._closed:
            return False
        pings = [asyncio.ensure_future(_resolve(s.actor.ping.remote())) for s in self._slots]
        try:
            for next_done in asyncio.as_completed(pings, timeout=self.ping_timeout_s):
                try:
                    await next_done
                    return True
                except RayActorError:
                    continue
            return False
        except TimeoutError:
            return False
        finally:
            for ping in pings:
                ping.cancel()

    def close(self) -> None:
        """Stop serving, fail waiting requests, and kill the actors. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop_alive = self._loop is not None and not self._loop.is_closed()
        for slot in self._slots:
            if slot.task is not None and loop_alive:
                slot.task.cancel()
            slot.task = None
            ray.kill(slot.actor, no_restart=True)
        if loop_alive:
            for item in self._queue:
                if not item.future.done():
                    item.future.set_exception(PoolUnavailable("the selector pool closed"))
        self._queue.discard(lambda item: False)
        self._artifacts.clear()

    # ------------------------------------------------------------------------ serving
    def _start(self) -> asyncio.Condition:
        """Start the serving tasks in the running loop (again, if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._wake is None:
            self._loop, self._wake = loop, asyncio.Condition()
            self._queue.discard(lambda item: False)  # futures of another loop
            for slot in self._slots:
                slot.task = loop.create_task(self._serve(slot), name="crest-selector")
        return self._wake

    async def _serve(self, slot: _Slot) -> None:
        while True:
            batch = await self._next_batch()
            slot.in_flight = len(batch)
            # Past the deadline every request of the batch has given up: an actor still busy
            # then is hung or hopelessly slow, and is restarted rather than left stuck.
            last = max(item.deadline for item in batch)
            started = asyncio.get_running_loop().time()
            watchdog = max(last - started, 0.0) + self.ping_timeout_s
            try:
                results = await asyncio.wait_for(_run(slot.actor, batch), watchdog)
            # First: an actor's SelectionCancelled arrives as a RayTaskError that is also a
            # TimeoutError, and the actor is not hung.
            except RayTaskError as err:
                if isinstance(err.cause, SelectionCancelled):  # past every caller's deadline
                    self.abandoned += 1
                    _fail(batch, SelectionTimeout(f"selection abandoned by the actor: {err.cause}"))
                else:  # it raised: some request of the batch is bad
                    await self._fail_or_split(batch, err)
                continue
            except TimeoutError:
                log.warning("selector actor %s busy past %.0f s; restarting it", slot.pid, watchdog)
                ray.kill(slot.actor, no_restart=False)
                await self._requeue(batch)
                await self._recover(slot)
                continue
            except RayActorError as err:  # the actor died: another one (or it, back) retries
                log.warning("selector actor %s lost (%s); retrying its batch", slot.pid, err)
                await self._requeue(batch)
                await self._recover(slot)
                continue
            except Exception as err:  # never let a serving task die: fail this batch only
                log.exception("%s batch failed", batch[0].kind)
                _fail(batch, PoolUnavailable(f"{batch[0].kind} failed: {err}"))
                continue
            finally:
                slot.in_flight = 0
                self._served.append(
                    ServedBatch(slot.pid, tuple(i.request.job_id for i in batch), batch[0].kind,
                                sum(i.rows for i in batch), started,
                                asyncio.get_running_loop().time())
                )  # fmt: skip
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)

    async def _next_batch(self) -> list[_Pending]:
        """Wait for work; take this actor's share of it, fairly across jobs."""
        assert self._wake is not None
        async with self._wake:
            while True:
                self._queue.discard(lambda item: not item.future.done())
                if len(self._queue):
                    # Idle actors split what waits; a busy pool gives one actor all of it.
                    idle = sum(1 for s in self._slots if not (s.in_flight or s.recovering))
                    waiting = sum(item.rows for item in self._queue)
                    share = min(self.max_batch_rows, math.ceil(waiting / max(1, idle)))
                    return self._queue.take(share)
                await self._wake.wait()

    async def _requeue(self, batch: list[_Pending], solo: bool = False) -> None:
        assert self._wake is not None
        async with self._wake:
            for item in reversed(batch):  # front of their queues, in their order
                item.solo = item.solo or solo
                if not item.future.done():
                    self._queue.put(item.request.job_id, item, front=True)
            self._wake.notify_all()

    async def _fail_or_split(self, batch: list[_Pending], err: RayTaskError) -> None:
        if len(batch) > 1:  # run each alone, so that only the bad one fails
            await self._requeue(batch, solo=True)
            return
        cause = err.cause if isinstance(err.cause, Exception) else err
        kind = batch[0].kind
        runner = "selection kernel" if kind == "selection" else "embedding model"
        error: Exception = (
            InvalidArgument(f"{kind} rejected: {cause}")
            if isinstance(cause, ValueError)
            else KernelError(f"the {runner} raised {type(cause).__name__}: {cause}")
        )
        if not batch[0].future.done():
            batch[0].future.set_exception(error)

    async def _recover(self, slot: _Slot) -> None:
        """Wait until the slot's actor answers again; replace it if it stays dead."""
        slot.recovering = True
        try:
            await self._reach(slot)
        finally:
            slot.recovering = False

    async def _reach(self, slot: _Slot) -> None:
        delay = 0.05
        while True:
            try:
                ping = _resolve(slot.actor.ping.remote())
                slot.pid, slot.device = await asyncio.wait_for(ping, self.ping_timeout_s)
                log.info("selector actor back as pid %s", slot.pid)
                return
            except ActorDiedError:  # out of restarts, or killed for good: a new actor
                ray.kill(slot.actor, no_restart=True)
                slot.actor = self._new_actor()
            except (RayActorError, TimeoutError):
                pass  # restarting, or hung: keep asking
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)


async def _put(payload: object, nbytes: int) -> ray.ObjectRef:
    """``ray.put``, from a worker thread for a large payload (its serialisation copy)."""
    if nbytes > _PUT_IN_THREAD_BYTES:
        return await asyncio.to_thread(ray.put, payload)
    return ray.put(payload)


def _fail(batch: list[_Pending], error: Exception) -> None:
    """Fail the batch's requests still waiting."""
    for item in batch:
        if not item.future.done():
            item.future.set_exception(error)


async def _run(actor: Any, batch: list[_Pending]) -> list[Any]:
    """One actor call for a batch: a kernel call, or one embedding (always alone). A kernel
    call carries the time left to the batch's last deadline, and the actor stops there."""
    first = batch[0]
    if isinstance(first.request, EmbedRequest):
        request = first.request
        result = await actor.embed.remote(
            request.model_id, first.artifact, first.payload, request.batch_size
        )
        # Copies: the arrays are read-only views of the object store, which would keep the
        # object pinned (and, held by a job for long, fill the store until Ray spills).
        return [EmbedResult(result.embeddings.copy(), result.losses.copy())]
    left = max(item.deadline for item in batch) - asyncio.get_running_loop().time()
    payloads = [item.payload for item in batch]
    return await _resolve(actor.select.remote(*payloads, timeout_s=max(left, 0.0)))


def _payload(request: SelectionRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return request.embeddings, request.groups, request.budgets


def _batch_key(item: _Pending) -> object:
    """Requests share a kernel call only with the same embedding dimension (never solo ones
    or embeddings)."""
    if item.solo or isinstance(item.request, EmbedRequest):
        return item
    return item.request.embeddings.shape[1]
