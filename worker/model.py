"""A trainer's model on a selector worker: exported once, its weights shipped as training goes.

The trainer exports its model's architecture once (:func:`export_model`, a ``torch.export``
program with a dynamic batch dimension, as bytes) and publishes its weights as one flat
float32 vector (:func:`model_weights`; :func:`crest.proto.convert.encode_weights` makes it
bfloat16 for the wire). A worker loads the program once (:class:`ExportedModel`), loads each
published vector into it, and computes candidates' gradient embeddings itself, with the same
function the trainer would use (:func:`logit_gradients`).

Only torch and numpy: the worker's Ray actor and in-process selector both use it.

The weight vector holds every floating-point parameter and buffer (BatchNorm's running
statistics included), each cast to float32, in the order of :func:`weight_layout` (sorted by
name, so that both sides derive it from names alone). Integer buffers (BatchNorm's
``num_batches_tracked``) are not in it: the eval-mode forward never reads them, and the
artifact keeps their values at export time.
"""

from __future__ import annotations

import copy
import io
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ExportedModel",
    "ModelCache",
    "NotExportable",
    "export_model",
    "logit_gradients",
    "model_weights",
    "tensor_view",
    "weight_layout",
]


class NotExportable(Exception):
    """The model cannot be exported for selector workers; the message says why."""


def logit_gradients(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The loss gradient w.r.t. the logits, ``softmax(z) - onehot(y)``, and the per-example
    cross-entropy: the one definition of a logit embedding, on trainers and workers alike.

    Args:
        logits: ``(n, C)`` float. labels: ``(n,)`` int64 in ``[0, C)`` (not checked here).

    Returns:
        ``(embeddings, losses)``: ``(n, C)`` float32 and ``(n,)`` float32.
    """
    logits = logits.float()
    embeddings = logits.softmax(1)
    embeddings[torch.arange(len(labels), device=labels.device), labels] -= 1.0
    return embeddings, F.cross_entropy(logits, labels, reduction="none")


def tensor_view(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory, even when it is read-only (as arrays from Ray's
    object store are). Callers only read it; torch would warn that writing is undefined."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable", category=UserWarning)
        return torch.from_numpy(array)


def weight_layout(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The tensors of the weight vector, in its order: floating-point parameters and buffers
    (tied ones once), sorted by name."""
    named: dict[str, Tensor] = dict(model.named_parameters())
    named.update(model.named_buffers())
    return sorted((n, t) for n, t in named.items() if t.is_floating_point())


def model_weights(model: nn.Module) -> np.ndarray:
    """The model's weight vector: ``(P,)`` float32 in :func:`weight_layout` order.

    Cheap enough to call between training steps: one concatenation on the model's device
    (one copy on a CPU model; on a GPU, one more to host memory).
    """
    tensors = [t.detach().reshape(-1).float() for _, t in weight_layout(model)]
    if not tensors:
        return np.zeros(0, np.float32)
    return torch.cat(tensors).cpu().numpy()


def export_model(model: nn.Module, sample_inputs: Tensor) -> bytes:
    """The model's eval-mode forward as a ``torch.export`` program, serialized.

    ``torch.export`` traces the mode the model is in: the program is exported in eval mode,
    so that it *is* the eval-mode forward (BatchNorm reads its running statistics, dropout
    is off) whatever mode the worker would think it is in; the model's own modes are
    restored afterwards. The program is traced on a CPU copy (a CUDA model is copied), so
    that it loads on CPU-only workers, with a dynamic batch dimension (any batch size >= 1).
    It is checked before it is returned: saved, loaded back, run on ``sample_inputs``, and
    compared with the model's own outputs.

    Args:
        model: the trainer's model (a bare module: unwrap DistributedDataParallel first),
            returning ``(n, C)`` logits for ``(n, ...)`` inputs.
        sample_inputs: a small batch (2-8 rows) of real inputs, on the model's device.

    Returns:
        The serialized program (its weights included, but workers load their own).

    Raises:
        NotExportable: export failed (the message names the cause, e.g. Python control flow
            on tensor values), or the exported program does not reproduce the model.
    """
    if sample_inputs.ndim < 1 or len(sample_inputs) < 1:
        raise ValueError(f"sample_inputs must be a batch of rows, got {tuple(sample_inputs.shape)}")
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        cpu_model = model if _on_cpu(model) else _cpu_copy(model)
        sample = sample_inputs.detach().cpu()
        with torch.no_grad():
            expected = cpu_model(sample)
        if not isinstance(expected, Tensor) or expected.shape[:1] != sample.shape[:1]:
            got = tuple(expected.shape) if isinstance(expected, Tensor) else type(expected)
            raise NotExportable(f"the model must return one (n, C) logits tensor, got {got}")
        try:
            program = torch.export.export(
                cpu_model, (sample,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
            )
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
        except Exception as err:  # torch.export raises many types; all mean "cannot export"
            raise NotExportable(_why(err)) from err
        artifact = buffer.getvalue()
        _check_reproduces(cpu_model, artifact, sample, expected)
        return artifact
    finally:
        for module, training in modes:
            module.training = training


def _on_cpu(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return all(t.device.type == "cpu" for t in tensors)


def _cpu_copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model).cpu()
    except Exception as err:
        raise NotExportable(
            f"the model could not be copied to the CPU to export it: {err}"
        ) from err


def _why(err: Exception) -> str:
    """torch.export's failure in a user's words (with the line of the model at fault)."""
    text = str(err)
    where = re.search(r'File "([^"]+)", line (\d+), in \w+\n\s*(.+)', text)
    at = f" (at {where[1]}:{where[2]}: {where[3].strip()})" if where else ""
    if "data-dependent" in text:
        return (
            f"the model's forward branches on tensor values{at}: torch.export cannot trace "
            "Python control flow that depends on the data (e.g. `if x.sum() > 0:`); use "
            "torch.where or torch.cond, or compute embeddings on the trainer"
        )
    if "Constraints violated (batch)" in text:
        return (
            f"the model's forward depends on the batch size{at}: it must work for any "
            "number of rows (e.g. no branch on x.shape[0], no fixed-size reshape)"
        )
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"torch.export failed with {type(err).__name__}: {first}{at}"


def _check_reproduces(model: nn.Module, artifact: bytes, sample: Tensor, expected: Tensor) -> None:
    try:
        loaded = ExportedModel(artifact)
        with torch.no_grad():
            got = loaded.module(sample)
    except Exception as err:
        raise NotExportable(f"the exported program does not load or run: {err}") from err
    theirs = [(n, tuple(t.shape)) for n, t in weight_layout(loaded.module)]
    ours = [(n, tuple(t.shape)) for n, t in weight_layout(model)]
    if theirs != ours:
        raise NotExportable(
            "the exported program's weights differ from the model's (names or shapes), so "
            f"published weights would not fit it: {sorted(set(theirs) ^ set(ours))[:4]}"
        )
    if got.shape != expected.shape or not torch.allclose(
        got.float(), expected.float(), rtol=1e-3, atol=1e-4
    ):
        raise NotExportable(
            "the exported program's outputs differ from the model's on the sample inputs "
            "(does the forward depend on global state, randomness or the device?)"
        )


class ExportedModel:
    """An exported program on a worker, ready to embed candidates with published weights.

    The program is loaded once; :meth:`load_weights` copies each weight vector into it in
    place. Its mode is frozen at export (eval): ``ExportedProgram.module()`` is a
    GraphModule whose ``eval()``/``train()`` raise ``NotImplementedError`` in torch 2.13,
    and BatchNorm/dropout were traced as their eval-mode ops, so none is called here.

    Args:
        artifact: :func:`export_model`'s bytes.
        device: where the forward runs.
    """

    def __init__(self, artifact: bytes, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        program = torch.export.load(io.BytesIO(artifact))
        self.module = program.module().to(self.device)
        self._weights = [t for _, t in weight_layout(self.module)]
        self.size = sum(t.numel() for t in self._weights)
        # The class count, from the traced output's shape (export_model checked it is one
        # (n, C) tensor), so that labels are checked before a forward pass.
        output = next(node for node in program.graph.nodes if node.op == "output")
        value = output.args[0][0].meta.get("val") if len(output.args[0]) == 1 else None
        if value is None or value.ndim != 2:
            raise ValueError("the artifact's model does not return one (n, C) logits tensor")
        self.num_classes = int(value.shape[1])

    def load_weights(self, flat: np.ndarray) -> None:
        """Copy a weight vector (:func:`model_weights` of the same architecture) into the model.

        Raises:
            ValueError: ``flat`` is not a ``(P,)`` vector of this model's P weights.
        """
        if flat.shape != (self.size,):
            raise ValueError(
                f"the weight vector must have {self.size} values for this model, "
                f"got shape {flat.shape}"
            )
        source = tensor_view(np.asarray(flat, dtype=np.float32)).to(self.device)
        offset = 0
        with torch.no_grad():
            for tensor in self._weights:
                count = tensor.numel()
                tensor.copy_(source[offset : offset + count].view_as(tensor))
                offset += count

    def embed(
        self, inputs: np.ndarray, labels: np.ndarray, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logit embeddings and losses of candidates (:func:`logit_gradients`), no grad.

        Args:
            inputs: ``(n, ...)`` float32 rows. labels: ``(n,)`` integers in ``[0, C)``.
            batch_size: rows per forward pass.

        Returns:
            ``(embeddings, losses)``: ``(n, C)`` float32 and ``(n,)`` float32.

        Raises:
            ValueError: shapes or labels do not fit the model.
        """
        if inputs.ndim < 1 or labels.shape != inputs.shape[:1] or labels.dtype.kind not in "iu":
            raise ValueError(
                f"labels must be ({len(inputs)},) integers, got {labels.dtype}{labels.shape}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        classes = self.num_classes
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(
                f"labels must lie in [0, {classes}), got [{labels.min()}, {labels.max()}]"
            )
        embeddings, losses = [np.zeros((0, classes), np.float32)], [np.zeros(0, np.float32)]
        with torch.inference_mode():
            for start in range(0, len(labels), batch_size):
                rows = slice(start, start + batch_size)
                x = tensor_view(inputs[rows]).to(self.device, torch.float32)
                y = torch.from_numpy(labels[rows].astype(np.int64)).to(self.device)
                error, loss = logit_gradients(self.module(x), y)
                embeddings.append(error.cpu().numpy())
                losses.append(loss.cpu().numpy())
        return np.concatenate(embeddings), np.concatenate(losses)


class ModelCache:
    """The last few loaded models by id (least recently used goes first): a worker keeps
    the programs of the jobs it serves without loading one per request.

    Not thread-safe: each selector uses it from one thread.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._models: OrderedDict[str, ExportedModel] = OrderedDict()

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._models

    def get(self, model_id: str, load: Callable[[], ExportedModel]) -> ExportedModel:
        """The model of ``model_id``, loaded with ``load()`` unless cached."""
        model = self._models.get(model_id)
        if model is None:
            model = load()
            self._models[model_id] = model
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        self._models.move_to_end(model_id)
        return model
