"""CrestLoader over a DataLoader (with and without workers) and exact resume from state_dict."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from crest.client import CrestLoader, Session, weighted_loss
from crest.embedded import local_coordinator
from crest.proto.errors import FailedPrecondition, InvalidArgument
from tests.training import blobs, job_config, make_model, train, train_with_checkpoint


class Blobs(Dataset):
    def __init__(self) -> None:
        self.x, self.y = blobs()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


# auto whose short job holds a whole test (coreset and random arms, the held-out probe).
AUTO = {"strategy": "auto", "auto_test_epochs": 0.25}


def reference(seed: int, **config) -> list:
    with local_coordinator() as coordinator:
        job_config_ = job_config(seed=seed, **config)
        return train(coordinator, coordinator.create_job(job_config_, blobs()[1].numpy()))[1]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.e2e)])  # processes
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


@pytest.mark.parametrize("save_at", [0, 6, 23, 40])
def test_resume_from_a_checkpoint_replays_exactly(save_at: int, tmp_path: Path) -> None:
    expected = reference(2)
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(job_config(seed=2), blobs()[1].numpy())
        checkpoint = tmp_path / "ckpt.pt"
        # Runs 12 steps past the checkpoint (across region switches), then "dies".
        first = train_with_checkpoint(coordinator, job_id, checkpoint, save_at, save_at + 12)
        assert first == expected[: save_at + 13]
        resumed = train_with_checkpoint(coordinator, job_id, checkpoint, save_at, None)
    assert resumed == expected[save_at + 1 :]


def first_life(save_at: int, checkpoint: Path, **config) -> str:
    """Train with an in-process coordinator past a checkpoint, then die with it."""
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(job_config(seed=2, **config), blobs()[1].numpy())
        train_with_checkpoint(coordinator, job_id, checkpoint, save_at, save_at + 12)
    return job_id


@pytest.mark.parametrize(
    ("save_at", "config"), [(0, {}), (23, {}), (23, AUTO), (40, AUTO)], ids=str
)
def test_resume_with_a_new_in_process_coordinator_replays_exactly(
    save_at: int, config: dict, tmp_path: Path
) -> None:
    expected = reference(2, **config)
    checkpoint = tmp_path / "ckpt.pt"
    job_id = first_life(save_at, checkpoint, **config)
    assert torch.load(checkpoint, weights_only=True)["crest"]["job_id"] == job_id
    with local_coordinator() as coordinator:  # the trainer's second life
        again = job_config(seed=2, **config)
        assert coordinator.create_job(again, blobs()[1].numpy(), job_id) == job_id
        resumed = train_with_checkpoint(coordinator, job_id, checkpoint, save_at, None)
    assert resumed == expected[save_at + 1 :]


def test_resume_without_the_job_progress_fails_at_load_and_says_why(tmp_path: Path) -> None:
    """Regression: this failed later, from a background thread, with `FailedPrecondition:
    region 2 is not current`."""
    checkpoint = tmp_path / "ckpt.pt"
    job_id = first_life(23, checkpoint)
    state = torch.load(checkpoint, weights_only=True)["crest"]
    del state["job"]  # e.g. a checkpoint taken through a remote coordinator that lost the job
    with local_coordinator() as coordinator:
        coordinator.create_job(job_config(seed=2), blobs()[1].numpy(), job_id)
        with Session(coordinator, job_id, model=make_model()) as session:
            with pytest.raises(FailedPrecondition, match="outlives the trainer"):
                session.load_state_dict(state)
            assert session.step == 0  # nothing changed
        assert coordinator.job_status(job_id).regions == []


def test_resume_refuses_a_job_created_with_other_labels(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    job_id = first_life(6, checkpoint)
    state = torch.load(checkpoint, weights_only=True)["crest"]
    with local_coordinator() as coordinator:
        coordinator.create_job(job_config(seed=2), blobs(seed=1)[1].numpy(), job_id)
        other_job = coordinator.create_job(job_config(seed=2), blobs()[1].numpy())
        with Session(coordinator, job_id, model=make_model()) as session:
            with pytest.raises(FailedPrecondition, match="other labels"):
                session.load_state_dict(state)
            assert coordinator.job_status(job_id).regions == []
        with Session(coordinator, other_job, model=make_model()) as other:
            with pytest.raises(ValueError, match=r"job_id=state\['job_id'\]"):
                other.load_state_dict(state)
            assert other.step == 0


def test_a_coordinator_that_is_ahead_keeps_its_job(tmp_path: Path) -> None:
    """The coordinator outlived the trainer: the checkpoint's older job state is not adopted."""
    checkpoint = tmp_path / "ckpt.pt"
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(job_config(seed=2), blobs()[1].numpy())
        train_with_checkpoint(coordinator, job_id, checkpoint, 6, 40)
        before = coordinator.job_status(job_id)
        snapshot = torch.load(checkpoint, weights_only=True)["crest"]["job"]
        assert not coordinator.restore_job(job_id, snapshot.numpy().tobytes())
        assert coordinator.job_status(job_id) == before
        with pytest.raises(InvalidArgument, match="not a job snapshot"):
            coordinator.restore_job(job_id, b"garbage")
