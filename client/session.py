"""A trainer's session with a coordinator: weighted batches in, embeddings and checks out.

A training loop changes by a few lines::

    session = Session(coordinator, job_id, model=model, fetch=tensor_fetch(X, Y))
    for batch in session.batches():
        x, y = X[batch.indices], Y[batch.indices]
        loss = weighted_loss(model(x), y, batch.weights)
        optimizer.zero_grad(); loss.backward(); optimizer.step()

Between the user's steps the session does CREST's trainer-side work: at a region start it
embeds its share of the candidates (one eval-mode forward pass, no backward), snapshots θ_0
and builds the region's model terms; every k steps it measures the check loss and reports
(with the other ranks' scalars, through ``torch.distributed``, where it runs with the job's
ranks: :mod:`crest.client.ranks`).

The check compares ``L_true`` (eval-mode mean loss on the region's check sample) with
``F(δ) = L_0 + gᵀδ + ½ δᵀ diag(h) δ``. Where g comes from is the ``gradient`` option:

* ``"check"`` (default): the exact gradient of that same check loss at θ_0, one backward pass
  over the check sample. F is then the true Taylor model of what the check measures.
* ``"step"``: the region's first training step's gradient, captured by hooks at no cost.
  It is biased: that step moves along its own noise, so ``gᵀδ`` counts the batch's gradient
  variance as progress and the check fails early.
* ``"coresets"``: the spec's weighted gradient over all P coresets (P backward passes).

With ``hessian_probes > 0`` a Hutchinson diagonal Hessian of the same loss is added.
The coordinator may be in-process or remote: the session only uses the
:class:`crest.proto.contract.Coordinator` methods.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crest.client.embeddings import EMBEDDINGS, EmbeddingFn
from crest.client.loss import weighted_loss
from crest.client.quadratic import GradientCapture, QuadraticModel, hutchinson_diagonal, trainable
from crest.client.ranks import CheckGroup, check_group
from crest.proto import steps
from crest.proto.contract import (
    CheckDecision,
    CheckReport,
    Coordinator,
    JobSnapshots,
    RegionStatus,
    RegionView,
    SessionInfo,
)
from crest.proto.convert import WEIGHT_DTYPES, encode_weights
from crest.proto.errors import FailedPrecondition, ResourceExhausted

log = logging.getLogger(__name__)


class Fetch(Protocol):
    """How the session reads examples for its candidate and check passes."""

    def __call__(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """``indices`` (int64, CPU) -> ``(inputs, labels)`` ready for the model."""
        ...


@runtime_checkable
class ChunkedFetch(Fetch, Protocol):
    """A fetch that reads several chunks at once, e.g. through a loader's worker processes
    (:class:`crest.client.CrestLoader`), which may load them ahead of their use."""

    def iter_chunks(self, chunks: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """``(inputs, labels)`` of each chunk of indices, in order."""
        ...


def tensor_fetch(inputs: Tensor, labels: Tensor, device: str | torch.device | None = None) -> Fetch:
    """A fetch function over in-memory tensors: ``indices -> (inputs, labels)`` on ``device``."""

    def fetch(indices: Tensor) -> tuple[Tensor, Tensor]:
        x, y = inputs[indices], labels[indices]
        return (x, y) if device is None else (x.to(device), y.to(device))

    return fetch


@dataclass(frozen=True)
class WeightedBatch:
    """One training step's coreset: example ``indices`` (int64) and ``weights`` (float32)."""

    step: int
    indices: Tensor
    weights: Tensor
    region_id: int


@dataclass
class SelectionTimings:
    """Seconds the trainer spent on selection work, by kind, and how often."""

    embed: float = 0.0  # candidate forward passes
    upload: float = 0.0  # sending embeddings to the coordinator
    select: float = 0.0  # waiting for regions: the coordinator's selection and the reply
    quadratic: float = 0.0  # explicit gradient / Hessian passes at region starts
    check: float = 0.0  # check forward passes and reports
    train: float = 0.0  # in the training loop: from handing out a batch to the next request
    regions: int = 0
    checks: int = 0

    @property
    def total(self) -> float:
        """Seconds of selection work (``train`` is not selection work)."""
        return self.embed + self.upload + self.select + self.quadratic + self.check

    @property
    def selection_share(self) -> float:
        """The share of this trainer's time spent on selection work."""
        spent = self.total + self.train
        return self.total / spent if spent > 0 else 0.0


@dataclass
class _RegionRun:
    view: RegionView
    model: QuadraticModel
    end_step: int  # the view's, lowered when a check fails
    capture: GradientCapture | None = None
    check_inputs: tuple[Tensor, Tensor] | None = None
    initial_loss_sum: float = math.nan  # service side: L_0's numerator, measured at the start

    @property
    def checked(self) -> bool:
        """Whether the region has checks. A random-batch region has no check sample, so it
        needs no model terms and nothing is fetched for it but its batches."""
        return len(self.view.check_indices) > 0


class Session:
    """One trainer rank's view of a CREST job.

    Args:
        coordinator: in-process or remote coordinator.
        job_id: the job, created beforehand with ``coordinator.create_job``.
        model: the model being trained (its parameters define θ); a
            ``DistributedDataParallel`` wrapper is looked through (the session's own passes
            must not take part in DDP's gradient reduction).
        fetch: ``indices (int64 CPU tensor) -> (inputs, labels)`` ready for ``model``, for the
            candidate and check passes; may be set later (a :class:`CrestLoader` sets it).
        rank: this trainer's rank in ``[0, world_size)``.
        embedding: ``"logits"`` or an :class:`EmbeddingFn`.
        gradient: where the region's g comes from: ``"check"``, ``"step"`` or ``"coresets"``.
        hessian_probes: Hutchinson probes per region; 0 for a first-order model.
        eval_batch_size: batch size of the candidate and check forward passes.
        seed: seed of the Hessian probes.
        weights_dtype: how published weights travel (service side): ``"float32"`` or
            ``"bfloat16"`` (half the bytes; embeddings from rounded weights).
        combine_checks: whether the ranks combine their check reports through
            ``torch.distributed`` (rank 0 sends one report for all, and shares the
            decision): None (default) does so when the default process group is the job's
            ranks, True requires it, False has every rank report for itself. Every rank
            must pass the same value.

    Who embeds the candidates is the job's ``selection_side``. On the ``"service"`` side rank 0
    hands the coordinator the model once (a ``torch.export`` artifact, with the inputs of all
    examples read through ``fetch``) and its weights at every region start, copied between
    steps and sent from a background thread; the selectors embed and select the next region
    while this one trains. A model that cannot be exported (or inputs that are not float
    tensors) moves the job to the trainer side, with the reason logged and kept in
    :attr:`side_reason`. :attr:`side` says which side embeds.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        job_id: str,
        *,
        model: nn.Module,
        fetch: Fetch | None = None,
        rank: int = 0,
        embedding: str | EmbeddingFn = "logits",
        gradient: str = "check",
        hessian_probes: int = 0,
        eval_batch_size: int = 1024,
        seed: int = 0,
        weights_dtype: str = "float32",
        combine_checks: bool | None = None,
    ) -> None:
        if weights_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weights_dtype must be one of {WEIGHT_DTYPES}, got {weights_dtype!r}")
        if hessian_probes < 0:
            raise ValueError(f"hessian_probes must be >= 0, got {hessian_probes}")
        if gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {gradient!r}; valid: {sorted(GRADIENTS)}")
        if GRADIENTS[gradient] is None and hessian_probes:
            raise ValueError(f"gradient={gradient!r} has no graph for Hessian probes")
        if isinstance(embedding, str) and embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; valid: {sorted(EMBEDDINGS)}")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.coordinator = coordinator
        self.job_id = job_id
        self.model = model
        self.fetch = fetch
        self.rank = rank
        self.gradient = gradient
        self._region_loss = GRADIENTS[gradient]
        self.hessian_probes = hessian_probes
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.info: SessionInfo = coordinator.open_session(job_id, rank)
        self._group: CheckGroup | None = check_group(combine_checks, rank, self.info.world_size)
        if isinstance(embedding, str):  # made for the job's C: a model of the wrong width fails
            embedding = EMBEDDINGS[embedding](self.info.num_classes)
        self.embedding: EmbeddingFn = embedding
        self.timings = SelectionTimings()
        self.step = 0
        self._run: _RegionRun | None = None
        # Check reports travel on their own thread while the next step trains; the decision
        # is collected before the step it could affect (two steps after the check).
        self._reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crest-check")
        # With a check group, rank 0 alone sends (the combined report) and the others have
        # no future: their decision comes from rank 0 (see :mod:`crest.client.ranks`).
        self._pending: tuple[_RegionRun, CheckReport, Future[CheckDecision] | None] | None = None
        self._trained: int | None = None  # the step handed out whose CREST work is still due
        self._handed_out = 0.0  # when that step's batch was handed out
        self._finished = False  # advance() has returned None
        # Service side: weights go out on their own thread; the last ones sent are kept, in
        # case the coordinator restarts and asks for them again.
        self.side = self.info.selection_side
        self.side_reason = "the job's selection_side" if self.side == "service" else ""
        self.weights_dtype = weights_dtype
        self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crest-weights")
        self._published: tuple[int, np.ndarray] | None = None  # (step, weights as sent)
        self._publishing: Future[None] | None = None
        if self.side == "service":
            log.info("job %s rank %d: the service embeds (selection_side='service')",
                     job_id, rank)  # fmt: skip

    @property
    def total_steps(self) -> int:
        return self.info.total_steps

    @property
    def finished(self) -> bool:
        """Whether the job's whole step budget (all of its epochs) has been served."""
        return self._finished

    def batches(self) -> Iterator[WeightedBatch]:
        """Weighted batches for this rank, one per training step, until the budget is spent.

        The loop must finish each step (backward and optimizer step) before asking for the
        next batch: the session measures the model between steps. One iteration serves all
        of the job's epochs; a second one warns and yields nothing.
        """
        self.warn_if_finished()
        while (batch := self.advance()) is not None:
            yield batch

    def warn_if_finished(self) -> None:
        """Warn, at the caller's caller (a loop over a generator), that an iteration starting
        now yields nothing because the whole step budget is already served."""
        if self._finished:
            warnings.warn(
                f"this session already served the job's whole step budget "
                f"({self.total_steps} steps, which span all of the job's epochs): nothing is "
                f"left to iterate. Iterate the loader (or batches()) once, not once per epoch.",
                UserWarning,
                stacklevel=3,
            )

    def advance(self) -> WeightedBatch | None:
        """Finish the previous step's CREST work, then return the next step's batch.

        :meth:`batches` is this in a loop; loaders that look ahead (:class:`CrestLoader`) call
        it directly. Returns None once the budget is spent.
        """
        if self._trained is not None:
            self.timings.train += time.perf_counter() - self._handed_out
            self._after_step(self._trained)
            self._trained = None
        run = None if self.step >= self.info.total_steps else self._region_for(self.step)
        if run is None:
            self._collect_decision()
            self._finished = True
            return None
        first_step = run.model.gradient is None and run.capture is None
        if self._region_loss is None and run.checked and first_step:
            run.capture = GradientCapture(run.model.params)  # g from this step's backward
        self._trained = self.step
        self._handed_out = time.perf_counter()
        return self._batch(run, self.step)

    def upcoming(self) -> list[WeightedBatch]:
        """The batches after the current step that the current region will serve unless a
        check ends it early (what a prefetching loader may load speculatively)."""
        run = self._run
        if run is None:
            return []
        first = self.step + (1 if self._trained is not None else 0)
        return [self._batch(run, step) for step in range(first, run.end_step)]

    @staticmethod
    def _batch(run: _RegionRun, step: int) -> WeightedBatch:
        view = run.view
        indices, weights = view.batches[steps.batch_slot(step, view.start_step, len(view.batches))]
        return WeightedBatch(
            step, torch.from_numpy(indices), torch.from_numpy(weights), view.region_id
        )

    def _after_step(self, step: int) -> None:
        """CREST's work after the user's step ``step``: gradient capture, checks."""
        run = self._run
        assert run is not None
        self._resolve_capture(run, step)
        self.step = step + 1
        self._collect_decision()
        start, interval = run.view.start_step, run.view.check_interval
        if run.checked and steps.check_due(step, start, interval, run.end_step):
            self._send_check(run, step)

    @staticmethod
    def _resolve_capture(run: _RegionRun, step: int) -> None:
        if run.capture is None:
            return
        run.model.gradient = run.capture.result()
        run.capture = None
        if run.model.gradient is None:
            log.warning("no backward pass at step %d: the linear term is 0", step)
            run.model.gradient = torch.zeros_like(run.model.origin)

    def close(self) -> None:
        """Wait for an outstanding check report and weight publication; stop their threads."""
        self._reporter.shutdown(wait=True)
        self._publisher.shutdown(wait=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue with exactly the batches an uninterrupted run
        would have seen. Take it after a step's optimizer step (next to the model's and
        optimizer's state dicts) or before the first batch. Tensors and plain values only, so
        ``torch.load(..., weights_only=True)`` reads it back.

        ``"job_id"`` is the job's id (pass it to ``create_job`` when resuming). With an
        in-process coordinator, whose jobs die with this process, ``"job"`` also holds the
        job's whole state (a uint8 tensor; its size grows with N and the region's
        embeddings), from which a new in-process coordinator rebuilds the job.
        """
        run = self._run
        region = None
        if run is not None:
            if self._trained is not None:
                self._resolve_capture(run, self._trained)
            quadratic = run.model
            region = {
                "view": _view_to_state(run.view),
                "run_end_step": run.end_step,
                "origin": quadratic.origin.clone(),
                "gradient": None if quadratic.gradient is None else quadratic.gradient.clone(),
                "hessian": None if quadratic.hessian is None else quadratic.hessian.clone(),
                "initial_loss_sum": run.initial_loss_sum,
            }
        published = None
        if self._published is not None:  # a restarted coordinator may ask for them again
            published = {"step": self._published[0],
                         "weights": torch.from_numpy(self._published[1].copy())}  # fmt: skip
        return {
            "version": STATE_VERSION,
            "job_id": self.job_id,
            "rank": self.rank,
            "step": self.step,
            "trained": self._trained,
            "region": region,
            "pending_check": None if self._pending is None else dict(vars(self._pending[1])),
            "side": self.side,
            "side_reason": self.side_reason,
            "published": published,
            **self._job_snapshot(),
        }

    def _job_snapshot(self) -> dict[str, Tensor]:
        if not isinstance(self.coordinator, JobSnapshots):
            return {}
        blob = self.coordinator.export_job(self.job_id)
        return {"job": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (restore the model's parameters first).

        The session must be on the checkpoint's job (create it with
        ``job_id=state["job_id"]``) and rank. The coordinator must know the job's progress
        up to the checkpoint: a coordinator that outlived the trainer does, and an in-process
        one adopts the job state the checkpoint carries.

        Raises:
            ValueError: a state of another version, job or rank.
            FailedPrecondition: the coordinator does not hold the job's progress (e.g. a
                ``crest serve`` restarted without a durable store) and cannot adopt it.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"session state version {state.get('version')} is not this crest's "
                f"{STATE_VERSION}: resume with the crest version that wrote the checkpoint"
            )
        if (state["job_id"], state["rank"]) != (self.job_id, self.rank):
            raise ValueError(
                f"state of job {state['job_id']!r} rank {state['rank']} cannot resume job "
                f"{self.job_id!r} rank {self.rank}; open the session on the checkpoint's job: "
                "create_job(config, labels, job_id=state['job_id'])"
            )
        self._restore_job(state)
        self.step, self._trained = state["step"], state["trained"]
        self._handed_out = time.perf_counter()
        self._run = None
        saved = state["region"]
        if saved is not None:
            view = _view_from_state(saved["view"])
            quadratic = QuadraticModel(trainable(self.model))
            quadratic.origin = saved["origin"].clone()
            quadratic.gradient = saved["gradient"]
            quadratic.hessian = saved["hessian"]
            self._run = _RegionRun(view, quadratic, saved["run_end_step"])
            self._run.initial_loss_sum = saved["initial_loss_sum"]
        self.side, self.side_reason = state["side"], state["side_reason"]
        published = state["published"]
        self._published = None
        if published is not None:
            self._published = (published["step"], published["weights"].numpy().copy())
        self._pending = None
        if state["pending_check"] is not None and self._run is not None:
            report = CheckReport(**state["pending_check"])  # this rank's own, in either mode
            self._pending = (self._run, report, self._report(report))

    def _restore_job(self, state: dict[str, Any]) -> None:
        """Make sure the coordinator holds the job as far as the checkpoint got."""
        snapshot = state.get("job")
        if snapshot is not None and isinstance(self.coordinator, JobSnapshots):
            self.coordinator.restore_job(self.job_id, snapshot.numpy().tobytes())
        saved = state["region"]
        if saved is None:
            return
        region_id = saved["view"]["region_id"]
        status = self.coordinator.job_status(self.job_id)
        opened = status.regions_omitted + len(status.regions)
        if opened <= region_id:
            where = (
                "the checkpoint carries no job state to rebuild it from"
                if isinstance(self.coordinator, JobSnapshots)
                else "a coordinator that lost the job's progress cannot continue it"
            )
            raise FailedPrecondition(
                f"the coordinator knows {opened} regions of job {self.job_id!r}, but the "
                f"checkpoint is in region {region_id} (step {state['step']}): {where}. "
                "Resuming needs the job's progress: a coordinator that outlives the trainer "
                "(`crest serve`, with --store redis://... to survive its own restarts), or an "
                "in-process coordinator with a checkpoint taken through it"
            )

    # ------------------------------------------------------------------------- regions
    def _region_for(self, step: int) -> _RegionRun | None:
        run = self._run
        if run is not None and run.view.start_step <= step < run.end_step:
            return run
        while True:
            started = time.perf_counter()
            view, settled, embed = self._fetch_region(step)
            self.timings.select += time.perf_counter() - started
            if view.status is RegionStatus.EMBED and self.side == "service":
                # e.g. rank 0 could not export the model
                self.side, self.side_reason = "trainer", "the job moved to the trainer side"
            if embed:  # sharing ranks: every one of them while any embeds (a collective)
                self._embed(view)
            if view.status is RegionStatus.SELECTING and (
                view.wants_model or view.wants_weights >= 0
            ):
                self._supply(view)
            if settled:
                break
            if self._group is not None:  # every rank's part is in before rank 0 asks again
                started = time.perf_counter()
                self._group.barrier()
                self.timings.select += time.perf_counter() - started
        if view.status is RegionStatus.DONE:
            return None
        if step != view.start_step:
            log.warning(
                "joining region %d at step %d, after its start: θ_0 is approximate",
                view.region_id,
                step,
            )
        self._run = run = _RegionRun(view, QuadraticModel(trainable(self.model)), view.end_step)
        self.timings.regions += 1
        if self.side == "service" and self.rank == 0 and step == view.start_step:
            self._publish_weights(step)  # the selectors prepare the next region with them
        if self._region_loss is not None and run.checked:
            with self._timed("quadratic"):
                self._region_loss(self, run)
        if self.side == "service" and run.checked and math.isnan(run.initial_loss_sum):
            with self._timed("check"):
                run.initial_loss_sum = self._check_loss_sum(run)
        return run

    def _fetch_region(self, step: int) -> tuple[RegionView, bool, bool]:
        """This rank's view of the region holding ``step``, whether every rank's is settled
        (READY or DONE), and whether this rank calls :meth:`_embed` (sharing ranks: whether
        any rank must embed). Ranks that combine their checks share the fetch too: rank 0
        asks for all ranks' views in one request and hands each its own (a collective)."""
        if self._group is None:
            view = self.coordinator.get_region(self.job_id, self.rank, step)
            settled = view.status in (RegionStatus.READY, RegionStatus.DONE)
            return view, settled, view.status is RegionStatus.EMBED
        world = self.info.world_size
        return self._group.share_region(
            lambda: self.coordinator.get_regions(self.job_id, 0, world, step)
        )

    # ---------------------------------------------------------------------- service side
    def _supply(self, view: RegionView) -> None:
        """Hand the coordinator the model or weights it waits for (rank 0; the other ranks
        wait for rank 0's)."""
        if self.rank != 0:
            if self._group is None:  # else the group's barrier waits for rank 0
                time.sleep(0.05)
            return
        with self._timed("upload"):
            if view.wants_model:
                self._publish_model()
            if view.wants_weights >= 0 and self.side == "service":
                self._resend_weights(view.wants_weights)

    def _publish_model(self) -> None:
        """Export the model and send it with every example's inputs; if either cannot be
        served, move the job to the trainer side and say why."""
        from crest.worker.model import NotExportable, export_model, model_weights

        try:
            inputs = self._all_inputs()
            sample = torch.from_numpy(inputs[: min(len(inputs), 4)])
            device = next(self.model.parameters()).device
            artifact = export_model(self.model, sample.to(device))
            num_weights = len(model_weights(self.model))
            self.coordinator.publish_model(self.job_id, artifact, inputs, num_weights)
        except (NotExportable, ResourceExhausted) as err:
            self.side, self.side_reason = "trainer", str(err)
            log.warning("job %s: the trainer embeds, since the service cannot: %s",
                        self.job_id, err)  # fmt: skip
            self.coordinator.publish_model(self.job_id, b"", np.zeros(0, np.float32), 0, str(err))

    def _all_inputs(self) -> np.ndarray:
        """Every example's inputs, read through ``fetch``, as one float32 array."""
        from crest.worker.model import NotExportable

        chunks = list(torch.arange(self.info.num_examples).split(self.eval_batch_size))
        parts = []
        for x, _ in self._fetch_chunks(chunks):
            if not x.is_floating_point():
                raise NotExportable(
                    f"the inputs are {x.dtype} tensors; the service side takes float inputs"
                )
            parts.append(x.detach().float().cpu().numpy())
        return np.concatenate(parts)

    def _publish_weights(self, step: int) -> None:
        """Copy the weights now and send them on the publisher thread (never blocks a step)."""
        from crest.worker.model import model_weights

        if self._published is not None and self._published[0] == step:
            return
        with self._timed("upload"):
            weights = model_weights(self.model)  # one copy, between steps
        self._published = (step, weights)
        previous = self._publishing
        if previous is not None and previous.done() and previous.exception() is not None:
            log.warning("publishing weights failed (the coordinator will ask again): %s",
                        previous.exception())  # fmt: skip
        self._publishing = self._publisher.submit(self._send_weights, step, weights)

    def _send_weights(self, step: int, weights: np.ndarray) -> None:
        self.coordinator.publish_weights(
            self.job_id, step, encode_weights(weights, self.weights_dtype)
        )

    def _resend_weights(self, step: int) -> None:
        if self._published is None or self._published[0] != step:
            if step != self.step:
                held = None if self._published is None else self._published[0]
                raise FailedPrecondition(
                    f"the coordinator waits for the weights of step {step}, but this trainer "
                    f"holds those of step {held} (it is at step {self.step}): resume from the "
                    "checkpoint the job was at, whose session state keeps them"
                )
            self._publish_weights(step)
        assert self._published is not None
        if self._publishing is not None:
            self._publishing.result()  # in flight (or failed): the synchronous send decides
        self._send_weights(*self._published)

    def _check_loss_sum(self, run: _RegionRun) -> float:
        x, y = self._check_inputs(run)
        total = 0.0
        with self._eval_mode():
            for xs, ys in zip(
                x.split(self.eval_batch_size), y.split(self.eval_batch_size), strict=True
            ):
                total += float(F.cross_entropy(self.model(xs), ys, reduction="sum"))
        return total

    def _embed(self, view: RegionView) -> None:
        """Embed this rank's candidates (if its view asks for it) and upload them: by itself,
        or, sharing ranks, gathered at rank 0, which uploads every rank's at once."""
        part = None
        if view.status is RegionStatus.EMBED:
            chunks = list(torch.from_numpy(view.candidates).split(self.eval_batch_size))
            with self._timed("embed"), self._eval_mode():
                parts = [self.embedding(self.model, x, y) for x, y in self._fetch_chunks(chunks)]
                embeddings = torch.cat([e for e, _ in parts]).float().cpu().numpy()
                losses = torch.cat([loss for _, loss in parts]).float().cpu().numpy()
            part = (view.candidates, embeddings, losses)
        with self._timed("upload"):
            if self._group is None:
                assert part is not None
                self.coordinator.submit_embeddings(self.job_id, self.rank, view.region_id, *part)
            else:
                self._group.share_upload(
                    part,
                    lambda all_parts: self.coordinator.submit_shared_embeddings(
                        self.job_id, 0, view.region_id, all_parts
                    ),
                )

    def _fetcher(self) -> Fetch:
        if self.fetch is None:
            raise RuntimeError("the session has no fetch function: pass fetch= or a CrestLoader")
        return self.fetch

    def _fetch_chunks(self, chunks: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        fetch = self._fetcher()
        if isinstance(fetch, ChunkedFetch):
            return fetch.iter_chunks(chunks)
        return (fetch(c) for c in chunks)

    def _set_terms(self, run: _RegionRun, loss: torch.Tensor) -> None:
        if self.hessian_probes > 0:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + run.view.region_id)
            run.model.gradient, run.model.hessian = hutchinson_diagonal(
                loss, run.model.params, self.hessian_probes, generator
            )
        else:
            grads = torch.autograd.grad(loss, run.model.params)
            run.model.gradient = torch.cat([g.reshape(-1) for g in grads]).detach()

    def _check_inputs(self, run: _RegionRun) -> tuple[Tensor, Tensor]:
        if run.check_inputs is None:
            (run.check_inputs,) = self._fetch_chunks([torch.from_numpy(run.view.check_indices)])
        return run.check_inputs

    # -------------------------------------------------------------------------- checks
    def _send_check(self, run: _RegionRun, step: int) -> None:
        """Measure the check loss and model terms now; send the report in the background."""
        with self._timed("check"):
            loss_sum = self._check_loss_sum(run)
            linear, quadratic = run.model.terms()
            report = CheckReport(
                region_id=run.view.region_id,
                step=step,
                loss_sum=loss_sum,
                count=len(self._check_inputs(run)[1]),
                linear=linear,
                quadratic=quadratic,
                curvature=run.model.curvature(),
                train_seconds=self.timings.train,
                selection_seconds=self.timings.total,
                # The trainer side's L_0 comes from its own embeddings at θ_0.
                initial_loss_sum=run.initial_loss_sum if self.side == "service" else math.nan,
            )
            future = self._report(report)
        self._pending = (run, report, future)
        self.timings.checks += 1

    def _report(self, report: CheckReport) -> Future[CheckDecision] | None:
        """Send this rank's report, or combine it with the other ranks' and send that from
        rank 0 (a collective: every rank calls it at the same check). In the background."""
        if self._group is not None:
            combined = self._group.combine(report)
            if combined is None:
                return None
            report = combined
        return self._reporter.submit(self.coordinator.report_check, self.job_id, self.rank, report)

    def _collect_decision(self) -> None:
        """Apply the outstanding check's decision: a failed check ends its region."""
        if self._pending is None:
            return
        run, _, future = self._pending
        self._pending = None
        with self._timed("check"):
            if self._group is not None:
                decision = self._group.share(future)
            else:
                assert future is not None
                decision = future.result()
        if decision.new_region:
            run.end_step = min(run.end_step, steps.end_after_failed_check(decision.step))

    # ------------------------------------------------------------------------- helpers
    @contextmanager
    def _timed(self, kind: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self.timings, kind, getattr(self.timings, kind) + time.perf_counter() - started)

    @contextmanager
    def _eval_mode(self, grad: bool = False) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.set_grad_enabled(grad):
                yield
        finally:
            self.model.train(was_training)


STATE_VERSION = 3  # of Session.state_dict(); 2: the region view stored field by field;
# 3: the service side (who embeds, the last published weights, L_0's numerator)


def _view_to_state(view: RegionView) -> dict[str, Any]:
    """Every field of a region view as tensors and plain values (``weights_only`` loads it)."""
    state: dict[str, Any] = {}
    for f in fields(RegionView):
        value = getattr(view, f.name)
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value.copy())
        elif f.name == "batches":
            value = [[torch.from_numpy(i.copy()), torch.from_numpy(w.copy())] for i, w in value]
        elif isinstance(value, RegionStatus):
            value = value.value
        state[f.name] = value
    return state


def _view_from_state(state: dict[str, Any]) -> RegionView:
    values: dict[str, Any] = {}
    for f in fields(RegionView):
        value = state[f.name]
        if isinstance(value, Tensor):
            value = value.numpy()
        elif f.name == "batches":
            value = tuple((i.numpy(), w.numpy()) for i, w in value)
        elif f.name == "status":
            value = RegionStatus(value)
        values[f.name] = value
    return RegionView(**values)


def _check_gradient(session: Session, run: _RegionRun) -> None:
    """g (and diag(h)) of the check loss itself at θ_0: eval mode, the region's check sample."""
    x, y = session._check_inputs(run)
    with session._eval_mode(grad=True):
        loss = F.cross_entropy(session.model(x), y)
        run.initial_loss_sum = float(loss.detach()) * len(y)  # L_0's numerator, at no extra cost
        session._set_terms(run, loss)


def _coreset_gradient(session: Session, run: _RegionRun) -> None:
    """g (and diag(h)) of the weighted loss over all of the region's coresets, in train mode
    as training sees it, with buffers (e.g. batch-norm statistics) restored afterwards."""
    model = session.model
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    fetch = session._fetcher()
    losses = []
    for indices, weights in run.view.batches:
        x, y = fetch(torch.from_numpy(indices))
        losses.append(weighted_loss(model(x), y, torch.from_numpy(weights).to(x.device)))
    session._set_terms(run, torch.stack(losses).mean())
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])


# Where a region's g comes from (the ``gradient`` option): a function that sets the region's
# model terms at its start, or None for the first training step's gradient (hooks).
GRADIENTS: dict[str, Callable[[Session, _RegionRun], None] | None] = {
    "check": _check_gradient,
    "step": None,
    "coresets": _coreset_gradient,
}
