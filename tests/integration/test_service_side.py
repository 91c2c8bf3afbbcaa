"""The service side end to end: the selectors embed from the model and weights a real trainer
publishes (in-process, over gRPC, on the Ray pool), regions are prepared one ahead, and a model
that cannot be exported falls back to the trainer side."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crest.client import Session, tensor_fetch, weighted_loss
from crest.client.remote import RemoteCoordinator
from crest.embedded import local_coordinator
from crest.proto.contract import Coordinator
from tests.training import blobs, job_config, train

pytestmark = pytest.mark.integration


def service_config(**overrides):
    return job_config(selection_side="service", max_staleness=12, **overrides)


def check_pipelined(coordinator: Coordinator, job_id: str, session: Session) -> None:
    """Every coreset region came from the selectors, within the staleness bound, and the
    trainer never embedded a candidate."""
    status = coordinator.job_status(job_id)
    assert status.finished
    crest_regions = [r for r in status.regions if r.mode == "crest"]
    assert len(crest_regions) >= 3
    assert all(r.embedded_by == "service" for r in crest_regions)
    assert all(not r.fallback for r in crest_regions)
    assert all(0 <= r.staleness <= 12 for r in crest_regions if r.staleness is not None)
    assert any(r.staleness for r in crest_regions), "later regions come from older weights"
    assert all((r.end_step or status.total_steps) - r.start_step <= 12 for r in status.regions), (
        "a region lasts at most max_staleness steps"
    )
    assert session.side == "service" and session.timings.embed == 0.0


def test_selectors_embed_in_process_and_the_same_seed_gives_the_same_batches() -> None:
    labels = blobs()[1].numpy()
    runs = []
    for _ in range(2):
        with local_coordinator() as local:
            job_id = local.create_job(service_config(seed=3), labels)
            session, seen = train(local, job_id)
            check_pipelined(local, job_id, session)
            runs.append(seen)
    assert runs[0] == runs[1]
    with local_coordinator() as local:  # the trainer side serves other batches
        other = train(local, local.create_job(job_config(seed=3), labels))[1]
    assert other != runs[0]


def test_selectors_embed_through_grpc_on_the_ray_pool(ray_session, loopback) -> None:
    from crest.worker.ray_pool import RaySelector

    labels = blobs()[1].numpy()
    with local_coordinator() as local:
        expected = train(local, local.create_job(service_config(seed=5), labels))[1]
    loopback.manager.selector = RaySelector(num_actors=1)
    try:
        with RemoteCoordinator(loopback.address) as remote:
            job_id = remote.create_job(service_config(seed=5), labels, job_id="served")
            session, served = train(remote, job_id, weights_dtype="float32")
            check_pipelined(remote, job_id, session)
    finally:
        loopback.manager.selector.close()
    assert served == expected, "the Ray pool's embeddings select what the in-process ones do"


class Branchy(nn.Module):
    """A model torch.export cannot capture: Python control flow on a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.body(x)
        return self.body(-x)


def test_a_model_that_cannot_be_exported_falls_back_to_the_trainer_side(caplog) -> None:
    x, y = blobs()
    model = Branchy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with local_coordinator() as local:
        job_id = local.create_job(service_config(seed=1), y.numpy())
        with Session(local, job_id, model=model, fetch=tensor_fetch(x, y)) as session:
            for batch in session.batches():
                loss = weighted_loss(model(x[batch.indices]), y[batch.indices], batch.weights)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        status = local.job_status(job_id)
    assert session.side == "trainer" and "control flow" in session.side_reason.lower()
    assert "the trainer embeds" in caplog.text
    assert status.finished
    assert all(r.embedded_by == "trainer" for r in status.regions)
    assert session.timings.embed > 0


def test_inputs_over_the_publication_limit_fall_back_to_the_trainer_side(monkeypatch) -> None:
    """In-process as remotely: the limit of one PublishModel stream (1 GiB), lowered here."""
    from crest.proto import convert

    monkeypatch.setattr(convert, "MAX_PUBLISH_BYTES", 1000)
    labels = blobs()[1].numpy()
    with local_coordinator() as local:
        job_id = local.create_job(service_config(seed=1), labels)
        session = train(local, job_id)[0]
        status = local.job_status(job_id)
    assert session.side == "trainer" and "limit" in session.side_reason
    assert status.selection_side == "trainer" and "limit" in status.selection_side_reason
    assert status.finished and all(r.embedded_by == "trainer" for r in status.regions)
