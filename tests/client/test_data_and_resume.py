"""CrestLoader over a DataLoader (with and without workers) and exact resume from state_dict."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from crest.client import CrestLoader, Session, tensor_fetch, weighted_loss
from crest.embedded import local_coordinator
from tests.training import blobs, job_config, make_model, train


class Blobs(Dataset):
    def __init__(self) -> None:
        self.x, self.y = blobs()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def reference(seed: int) -> list:
    with local_coordinator() as coordinator:
        return train(
            coordinator, coordinator.create_job(job_config(seed=seed), blobs()[1].numpy())
        )[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_serves_the_session_batches_with_their_data(workers: int) -> None:
    dataset = Blobs()
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(job_config(seed=1), dataset.y.numpy())
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        seen = []
        with Session(coordinator, job_id, model=model) as session:
            for (x, y), batch in CrestLoader(session, dataset, num_workers=workers):
                assert torch.equal(x, dataset.x[batch.indices])
                assert torch.equal(y, dataset.y[batch.indices])
                seen.append((batch.step, batch.indices.tolist(), batch.weights.tolist(),
                             batch.region_id))  # fmt: skip
                loss = weighted_loss(model(x), y, batch.weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        status = coordinator.job_status(job_id)
    assert seen == reference(1)
    assert any(r.end_reason == "check" for r in status.regions), "no region ended early"


def test_loader_refuses_arguments_the_coordinator_decides() -> None:
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(job_config(), blobs()[1].numpy())
        session = Session(coordinator, job_id, model=make_model())
        with pytest.raises(ValueError, match="batch_size is decided by the coordinator"):
            CrestLoader(session, Blobs(), batch_size=32)
        session.close()


def run(coordinator, job_id: str, checkpoint: Path | None, save_at: int, stop_at: int | None):
    """Train; save a checkpoint after step ``save_at``; stop (as if killed) after ``stop_at``;
    resume from ``checkpoint`` if it exists."""
    x, y = blobs()
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    session = Session(coordinator, job_id, model=model, fetch=tensor_fetch(x, y))
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        session.load_state_dict(state["crest"])
    seen = []
    for batch in session.batches():
        seen.append((batch.step, batch.indices.tolist(), batch.weights.tolist(), batch.region_id))
        loss = weighted_loss(model(x[batch.indices]), y[batch.indices], batch.weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if batch.step == save_at and checkpoint is not None and not checkpoint.exists():
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "crest": session.state_dict()}, checkpoint)  # fmt: skip
        if batch.step == stop_at:
            break
    session.close()
    return seen


@pytest.mark.parametrize("save_at", [0, 6, 23, 40])
def test_resume_from_a_checkpoint_replays_exactly(save_at: int, tmp_path: Path) -> None:
    expected = reference(2)
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(job_config(seed=2), blobs()[1].numpy())
        checkpoint = tmp_path / "ckpt.pt"
        # Runs 12 steps past the checkpoint (across region switches), then "dies".
        first = run(coordinator, job_id, checkpoint, save_at, stop_at=save_at + 12)
        assert first == expected[: save_at + 13]
        resumed = run(coordinator, job_id, checkpoint, save_at, stop_at=None)
    assert resumed == expected[save_at + 1 :]
