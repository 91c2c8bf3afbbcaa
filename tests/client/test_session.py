import numpy as np
import pytest
import torch

from crest.client import JobConfig, LastLayerEmbedding, Session, tensor_fetch, weighted_loss
from crest.embedded import local_coordinator
from crest.proto.errors import InvalidArgument, NotFound
from tests.training import blobs, job_config, make_model, on_threads, train


def config(**overrides) -> JobConfig:
    return job_config(**overrides)


def test_session_serves_the_whole_budget_in_regions() -> None:
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(config(), blobs()[1].numpy())
        session, seen = train(coordinator, job_id)
        status = coordinator.job_status(job_id)
    total = config().total_steps
    assert [s[0] for s in seen] == list(range(total))
    assert all(0 <= i < 1200 for _, idx, _, _ in seen for i in idx)
    assert all(w > 0 for _, _, ws, _ in seen for w in ws)
    assert len(status.regions) == session.timings.regions > 1
    assert session.timings.checks == sum(len(r.checks) for r in status.regions) > 0
    assert session.timings.embed > 0 and session.timings.check > 0
    region_of_step = {s[0]: s[3] for s in seen}
    for region in status.regions[:-1]:
        assert region_of_step[region.start_step] == region.region_id
        assert region.end_step is not None and region.end_reason in ("check", "bound")
    first = status.regions[0]
    assert first.candidate_loss is not None and first.selected_loss is not None
    assert len(first.weight_quantiles) == 5


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    def batches(seed: int) -> list:
        with local_coordinator() as coordinator:
            job_id = coordinator.create_job(config(seed=seed), blobs()[1].numpy())
            return train(coordinator, job_id)[1]

    assert batches(1) == batches(1)
    assert batches(1) != batches(2)


def test_hessian_probes_and_last_layer_embeddings() -> None:
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(config(), blobs()[1].numpy())
        x, y = blobs()
        model = make_model()
        session = Session(
            coordinator,
            job_id,
            model=model,
            fetch=tensor_fetch(x, y),
            hessian_probes=2,
            embedding=LastLayerEmbedding(model[2], dim=12),
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for steps, batch in enumerate(session.batches(), 1):
            loss = weighted_loss(model(x[batch.indices]), y[batch.indices], batch.weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if steps == 12:
                break
        assert session.timings.quadratic > 0
        status = coordinator.job_status(job_id)
        assert status.regions[0].curvature is not None and status.regions[0].curvature > 0


def test_two_ranks_in_threads_get_disjoint_batches_and_switch_together() -> None:
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(config(world_size=2), blobs()[1].numpy())
        zero, one = on_threads(lambda rank: train(coordinator, job_id, rank=rank)[1])
    assert len(zero) == len(one) == config(world_size=2).total_steps
    for a, b in zip(zero, one, strict=True):
        assert a[0] == b[0] and a[3] == b[3], "ranks must be in the same region at each step"
        assert not set(a[1]) & set(b[1]), "ranks' coresets must be disjoint"


def test_unknown_job_and_bad_options() -> None:
    x, y = blobs()
    with local_coordinator() as coordinator:
        with pytest.raises(NotFound, match="unknown job"):
            Session(coordinator, "nope", model=make_model(), fetch=tensor_fetch(x, y))
        job_id = coordinator.create_job(config(), y.numpy())
        with pytest.raises(ValueError, match="unknown embedding"):
            Session(
                coordinator,
                job_id,
                model=make_model(),
                fetch=tensor_fetch(x, y),
                embedding="pixels",
            )
        assert coordinator.create_job(config(), y.numpy(), job_id="a") == "a"
        assert coordinator.create_job(config(), y.numpy(), job_id="a") == "a"  # idempotent
        with pytest.raises(Exception, match="another config"):
            coordinator.create_job(config(seed=5), y.numpy(), job_id="a")
        with pytest.raises(Exception, match="invalid job config"):
            coordinator.create_job({"num_examples": -1}, np.zeros(3, int))


def test_strategies_run_through_the_same_session_path() -> None:
    labels = blobs()[1].numpy()
    with local_coordinator() as coordinator:
        runs = {}
        for strategy in ("crest", "random", "auto"):
            job_id = coordinator.create_job(config(strategy=strategy), labels)
            session, seen = train(coordinator, job_id)
            runs[strategy] = (session.timings, seen, coordinator.job_status(job_id))
    for timings, seen, status in runs.values():
        assert len(seen) == config().total_steps
        assert status.trainers or timings.checks == 0
    random_timings, random_batches, random_status = runs["random"]
    assert random_timings.embed == 0 and random_timings.checks == 0, "random needs no CREST work"
    assert random_timings.quadratic == 0, "a region without checks needs no model terms"
    assert {r.mode for r in random_status.regions} == {"random"}
    assert all(abs(w - 1.0) < 0.1 for _, _, ws, _ in random_batches for w in ws)  # about 1
    crest_timings, _, crest_status = runs["crest"]
    assert crest_timings.embed > 0 and {r.mode for r in crest_status.regions} == {"crest"}
    assert all(r.coreset_error is not None for r in crest_status.regions)
    (trainer,) = crest_status.trainers
    assert 0 < trainer.selection_share < 1
    assert crest_timings.train > 0


@pytest.mark.parametrize("outputs", [3, 7])  # C - 1 and C + 3 for C = 4
def test_a_model_whose_outputs_do_not_match_the_classes_is_refused(outputs: int) -> None:
    x, y = blobs()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, outputs))  # fmt: skip
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(config(), y.numpy())
        with Session(coordinator, job_id, model=model, fetch=tensor_fetch(x, y)) as session:
            expected = f"the model has {outputs} outputs, but the job has num_classes=4"
            with pytest.raises(InvalidArgument, match=expected):
                next(iter(session.batches()))


def test_a_session_without_fetch_says_so() -> None:
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(config(), blobs()[1].numpy())
        session = Session(coordinator, job_id, model=make_model(), gradient="coresets")
        with pytest.raises(RuntimeError, match="no fetch function"):
            next(iter(session.batches()))
        # A random region fetches nothing for the session (no checks, no model terms).
        job_id = coordinator.create_job(config(strategy="random"), blobs()[1].numpy())
        session = Session(coordinator, job_id, model=make_model(), gradient="coresets")
        assert len(list(session.batches())) == config().total_steps
