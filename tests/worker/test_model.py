"""The trainer's model on a worker: export, weight vectors, embeddings (crest.worker.model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from crest.client.embeddings import LogitEmbedding
from crest.proto.convert import decode_weights, encode_weights
from crest.worker.model import (
    ExportedModel,
    ModelCache,
    NotExportable,
    export_model,
    model_weights,
    weight_layout,
)
from tests.worker.models import candidates, cnn, mlp, train_steps


def trainer_embeddings(model: nn.Module, inputs: np.ndarray, labels: np.ndarray):
    """What the trainer computes itself: LogitEmbedding in eval mode."""
    model.eval()
    with torch.no_grad():
        embeddings, losses = LogitEmbedding()(
            model, torch.from_numpy(inputs), torch.from_numpy(labels)
        )
    return embeddings.numpy(), losses.numpy()


@pytest.mark.parametrize(("make", "features", "classes"), [(mlp, 12, 5), (cnn, 16, 4)])
def test_exported_embeddings_equal_the_trainers(make, features, classes) -> None:
    model = make()
    model.train()
    model[-1].eval()  # a submodule's own mode must survive the export too
    artifact = export_model(model, torch.randn(4, features))
    assert model.training and not model[-1].training  # modes restored
    model[-1].train()

    worker = ExportedModel(artifact)
    worker.load_weights(model_weights(model))
    inputs, labels = candidates(37, features, classes)
    got = worker.embed(inputs, labels, batch_size=12)  # batches of 12, 12, 12 and 1 rows
    want = trainer_embeddings(model, inputs, labels)
    assert got[0].shape == (37, classes) and got[0].dtype == np.float32
    assert got[1].shape == (37,) and got[1].dtype == np.float32
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_published_weights_change_the_outputs_accordingly() -> None:
    model = cnn()
    worker = ExportedModel(export_model(model, torch.randn(2, 16)))
    inputs, labels = candidates(20, 16, 4)
    worker.load_weights(model_weights(model))
    before = worker.embed(inputs, labels)

    train_steps(model, 16, 4, steps=2, seed=7)  # new weights and running statistics
    worker.load_weights(model_weights(model))
    after = worker.embed(inputs, labels)
    want = trainer_embeddings(model, inputs, labels)
    assert not np.allclose(after[0], before[0])
    np.testing.assert_allclose(after[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[1], want[1], rtol=1e-5, atol=1e-6)


def test_the_weight_vector_holds_float_state_only_by_name() -> None:
    model = cnn()
    names = [name for name, _ in weight_layout(model)]
    assert names == sorted(names)
    assert "2.running_mean" in names and "2.num_batches_tracked" not in names
    flat = model_weights(model)
    expected = sum(t.numel() for t in model.parameters()) + 2 * 6  # + running mean and var
    assert flat.shape == (expected,) and flat.dtype == np.float32
    state = model.state_dict()
    np.testing.assert_array_equal(flat[: state["1.bias"].numel()], state["1.bias"].numpy())


def test_a_wrong_weight_vector_is_refused_precisely() -> None:
    model = mlp()
    worker = ExportedModel(export_model(model, torch.randn(3, 12)))
    size = len(model_weights(model))
    with pytest.raises(ValueError, match=rf"must have {size} values .*got shape \({size - 1},\)"):
        worker.load_weights(np.zeros(size - 1, np.float32))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        worker.embed(*candidates(4, 12, 6, seed=3))  # label 5 for a 5-class model


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)


class BatchDependent(DataDependent):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.linear(x) if len(x) > 8 else self.linear(x)


def test_python_control_flow_on_values_is_not_exportable() -> None:
    model = DataDependent()
    with pytest.raises(
        NotExportable, match=r"tensor values \(at .*test_model\.py:\d+: if x\.sum\(\) > 0:\)"
    ):
        export_model(model, torch.randn(4, 4))
    assert model.training  # restored after the failure too


def test_a_batch_size_dependent_forward_is_not_exportable() -> None:
    with pytest.raises(NotExportable, match="depends on the batch size"):
        export_model(BatchDependent(), torch.randn(6, 4))


def test_bfloat16_round_trip() -> None:
    rng = np.random.default_rng(0)
    flat = (rng.standard_normal(10_000) * 10.0 ** rng.integers(-6, 6, 10_000)).astype(np.float32)
    flat[:4] = [0.0, -0.0, np.inf, np.nan]
    encoded = encode_weights(flat, "bfloat16")
    assert encoded.dtype == np.uint16 and encoded.nbytes == flat.nbytes // 2
    decoded = decode_weights(encoded)
    assert decoded.dtype == np.float32
    # Round to nearest even, as torch converts: and so within half a bfloat16 ulp (2^-8).
    torch_bf16 = torch.from_numpy(flat).bfloat16().float().numpy()
    np.testing.assert_array_equal(decoded[4:], torch_bf16[4:])
    assert np.all(np.abs(decoded[4:] - flat[4:]) <= np.abs(flat[4:]) * 2.0**-8)
    assert decoded[2] == np.inf and np.isnan(decoded[3]) and np.signbit(decoded[1])
    assert encode_weights(flat) is flat and decode_weights(flat) is flat  # float32: as is
    with pytest.raises(ValueError, match="bfloat16"):
        encode_weights(flat, "float16")


def test_the_cache_keeps_the_most_recent_models() -> None:
    loads: list[str] = []
    artifact = export_model(mlp(), torch.randn(2, 12))

    def load(name: str):
        return lambda: loads.append(name) or ExportedModel(artifact)

    cache = ModelCache(size=2)
    first = cache.get("a", load("a"))
    cache.get("b", load("b"))
    assert cache.get("a", load("a")) is first  # a is now the most recent
    cache.get("c", load("c"))  # evicts b
    assert "a" in cache and "b" not in cache and "c" in cache
    assert loads == ["a", "b", "c"]
