"""Coresets robust to label noise (``exclude_noisy``): the exclusion rule, selections that
never hold an excluded candidate, and the option off changing nothing."""

from __future__ import annotations

import time

import numpy as np
import pytest

from crest.embedded import local_coordinator
from crest.proto.contract import JobConfig, RegionStatus
from crest.service import region as region_module
from crest.service.job import JobState
from crest.service.region import MAD_SCALE, eligible_members, excluded_weight
from crest.worker.selector import run_selection
from tests.service.helpers import fake_embeddings, make_job, see


def test_the_rule_excludes_exactly_the_far_losses_of_each_class_and_keeps_the_budgets() -> None:
    # Two subsets x two classes: problem = subset * 2 + class, four members each.
    losses = np.array([0.2, 0.4, 5.0, 0.3,    # problem 0, class 0
                       1.0, 1.1, 0.9, 1.2,    # problem 1, class 1
                       0.5, 0.1, 2.0, 0.35,   # problem 2, class 0
                       8.0, 7.0, 1.05, 0.95])  # problem 3, class 1  # fmt: skip
    groups = np.repeat(np.arange(4), 4)
    # Class 0: median 0.375, MAD 0.15 -> threshold 0.375 + 3 x 1.4826 x 0.15 = 1.042: 5.0
    # and 2.0 are out. Class 1: median 1.075, MAD 0.125 -> 1.631: 8.0 and 7.0 are out, but
    # problem 3 selects 3 of its 4, so its three lowest (0.95, 1.05, 7.0) stay.
    threshold = 0.375 + 3 * MAD_SCALE * 0.15
    assert threshold == pytest.approx(1.0422, abs=1e-4)
    # (Both thresholds are above ln 2, the least loss that may be excluded with two classes.)
    eligible = eligible_members(losses, groups % 2, groups, np.array([1, 1, 1, 3]), 3.0, 2)
    assert np.flatnonzero(~eligible).tolist() == [2, 10, 12]
    # A looser threshold (k = 20: class 0's is 4.82, class 1's 4.78) keeps 2.0, not 5.0.
    eligible = eligible_members(losses, groups % 2, groups, np.array([1, 1, 1, 1]), 20.0, 2)
    assert np.flatnonzero(~eligible).tolist() == [2, 12, 13]
    # Late in training: median 0.035, MAD 0.02 -> 0.124, under ln 4 = 1.386 (four classes),
    # so the floor decides: 1.0 (still being learned) stays, 2.0 goes.
    late = np.array([0.01, 0.02, 0.03, 0.04, 1.0, 2.0])
    one = np.zeros(6, np.int64)
    assert eligible_members(late, one, one, np.array([1]), 3.0, 4).tolist() == [True] * 5 + [False]
    # Ties for the budget's last place go to the earlier member.
    tied = eligible_members(np.array([0.0, 0.0, 0.0, 9.0, 9.0]), np.zeros(5, np.int64),
                            np.zeros(5, np.int64), np.array([4]), 3.0, 2)  # fmt: skip
    assert tied.tolist() == [True, True, True, True, False]


def test_each_excluded_member_counts_for_its_most_similar_representative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Members 0-4 in problem 0, 5-8 in problem 1, 9-10 in problem 2 (which selects nobody).
    embeddings = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [0.9, 0.1], [4.0, 0.0],
                           [0.0, 0.0], [0.0, 3.0], [0.0, 1.0], [0.0, 2.0],
                           [7.0, 7.0], [8.0, 8.0]])  # fmt: skip
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    selected = np.array([0, 2, 5, 6])  # problems 0, 0, 1, 1
    excluded = np.array([1, 3, 4, 7, 8, 9])
    counts = excluded_weight(embeddings, groups, excluded, selected)
    # 1 and 3 are nearest to 0, 4 to 2; 7 to 5 (distance 1 against 2), 8 to 6 (1 against
    # 2); 9's problem selected nobody: it counts nowhere.
    assert counts.tolist() == [2, 1, 1, 1]
    # A tie goes to the earlier representative: [0, 1.5] is 1.5 from both 5 and 6.
    embeddings[8] = [0.0, 1.5]
    assert excluded_weight(embeddings, groups, excluded, selected).tolist() == [2, 1, 2, 0]
    # Against a direct recomputation over random data, in one block and a few at a time.
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(300, 4))
    groups = np.sort(rng.integers(0, 7, 300))
    selected = np.sort(rng.choice(300, 40, replace=False))
    excluded = np.setdiff1d(np.arange(300), selected)[::3]
    expected = np.zeros(len(selected), np.int64)
    for member in excluded:
        same = np.flatnonzero(groups[selected] == groups[member])
        if same.size:
            distances = np.linalg.norm(embeddings[selected[same]] - embeddings[member], axis=1)
            expected[same[np.argmin(distances)]] += 1
    assert excluded_weight(embeddings, groups, excluded, selected).tolist() == expected.tolist()
    monkeypatch.setattr(region_module, "DISTANCE_BLOCK", 50)
    assert excluded_weight(embeddings, groups, excluded, selected).tolist() == expected.tolist()
    assert not excluded_weight(embeddings, groups, excluded[:0], selected).any()
    # Excluded members only in problems that selected nobody (budget 0: fewer seats than
    # classes) count nowhere.
    two_problems = np.repeat([0, 1], [5, 295])
    counts = excluded_weight(embeddings, two_problems, np.array([5, 6, 7]), np.array([0, 1]))
    assert counts.tolist() == [0, 0]


NOISY = 10  # every tenth example is "mislabelled": high loss, and far away in embedding space


def noisy_embeddings(indices: np.ndarray) -> np.ndarray:
    """Facility location's favourites: the noisy examples are outliers that cover only
    themselves, so without the option they are chosen first."""
    embeddings = fake_embeddings(indices)
    embeddings[indices % NOISY == 0] += 5.0
    return embeddings


def noisy_losses(indices: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(7)
    losses = 0.2 + 0.1 * rng.random(len(indices))
    losses[indices % NOISY == 0] = 4.0
    return losses.astype(np.float32)


def first_region(job: JobState) -> np.ndarray:
    """Embed the first region (rank 0), select, and return the selected examples."""
    view = see(job, 0, 0)
    job.receive_embeddings(
        0, 0, view.candidates, noisy_embeddings(view.candidates), noisy_losses(view.candidates)
    )
    job.complete_selection(0, run_selection(job.selection_request(0)))
    return np.concatenate([indices for indices, _ in see(job, 0, 0).batches])


def test_selections_never_hold_an_excluded_candidate_and_stats_count_them() -> None:
    plain, robust = make_job(), make_job(exclude_noisy=True)
    chosen = first_region(plain)
    assert np.any(chosen % NOISY == 0), "without the option the outliers are selected"

    chosen = first_region(robust)
    region = robust.region
    assert region is not None
    assert not np.any(chosen % NOISY == 0)
    members = region.candidates[region.members]
    assert robust.status().regions[0].excluded == int(np.sum(members % NOISY == 0)) > 0
    assert plain.status().regions[0].excluded == 0
    # The candidates' loss (auto's loss excess subtracts it) is over the members that could be
    # chosen: the excluded ones' 4.0 is not in it.
    eligible_slots = np.unique(region.members[members % NOISY != 0])
    stats = robust.status().regions[0]
    assert stats.candidate_loss == pytest.approx(float(region.losses[eligible_slots].mean()))
    assert stats.candidate_loss < 0.3 < plain.status().regions[0].candidate_loss
    # Still full coresets: each holds the batch size, in the class budgets.
    for (indices, weights), budget in zip(see(robust, 0, 0).batches, region.class_budgets,
                                          strict=True):  # fmt: skip
        assert len(indices) == robust.config.batch_size
        counts = np.bincount(robust.pool.labels[indices], minlength=robust.config.num_classes)
        assert counts.tolist() == budget.tolist()
        assert np.all(weights > 0)


def test_the_served_weights_count_the_excluded_members() -> None:
    """Within each problem the served weights are proportional to cluster size plus the
    excluded members that the representative stands for."""
    job = make_job(exclude_noisy=True)
    view = see(job, 0, 0)
    job.receive_embeddings(
        0, 0, view.candidates, noisy_embeddings(view.candidates), noisy_losses(view.candidates)
    )
    request = job.selection_request(0)
    result = run_selection(request)
    region = job.region
    assert region is not None and region.embeddings is not None
    members = region.candidates[region.members]
    embedded = region.embeddings[region.members]
    eligible = np.flatnonzero(members % NOISY != 0)  # the rule excludes exactly the noisy
    assert len(eligible) == len(request.groups)
    selected = eligible[result.rows]
    extra = np.zeros(len(selected))
    for member in np.flatnonzero(members % NOISY == 0):
        same = np.flatnonzero(region.member_groups[selected] == region.member_groups[member])
        distances = np.linalg.norm(embedded[selected[same]] - embedded[member], axis=1)
        extra[same[np.argmin(distances)]] += 1
    assert extra.sum() == len(members) - len(eligible)
    job.complete_selection(0, result)
    served = region.coreset_weights / (result.weights + extra) ** job.config.weight_exponent
    for group in np.unique(result.groups):
        ratio = served[result.groups == group]
        assert np.allclose(ratio, ratio[0], rtol=1e-5)


def test_off_serves_todays_selections_bit_for_bit() -> None:
    plain = make_job()
    view = see(plain, 0, 0)
    plain.receive_embeddings(
        0, 0, view.candidates, noisy_embeddings(view.candidates), noisy_losses(view.candidates)
    )
    region = plain.region
    assert region is not None and region.embeddings is not None
    request = plain.selection_request(0)  # today's request: every member, in order
    assert np.array_equal(request.embeddings, region.embeddings[region.members])
    assert np.array_equal(request.groups, region.member_groups)
    plain.complete_selection(0, run_selection(request))

    # With the option on but a threshold no loss reaches, nothing is excluded: the same
    # coresets and weights, bit for bit.
    loose = make_job(exclude_noisy=True, noisy_mads=1e6)
    first_region(loose)
    assert loose.status().regions[0].excluded == 0
    for (a, wa), (b, wb) in zip(see(plain, 0, 0).batches, see(loose, 0, 0).batches, strict=True):
        assert np.array_equal(a, b) and np.array_equal(wa, wb)
    assert JobConfig(num_examples=10, num_classes=2, batch_size=2).exclude_noisy is False


def test_a_restored_job_maps_the_answer_back_identically() -> None:
    """The journal replays a selection's answer onto a rebuilt state: the eligible rows are
    recomputed from the region's losses, so the coresets come out the same."""
    job = make_job(exclude_noisy=True)
    view = see(job, 0, 0)
    job.receive_embeddings(
        0, 0, view.candidates, noisy_embeddings(view.candidates), noisy_losses(view.candidates)
    )
    result = run_selection(job.selection_request(0))
    restored = JobState.from_state(job.to_state())
    for state in (job, restored):
        state.complete_selection(0, result)
    for (a, wa), (b, wb) in zip(see(job, 0, 0).batches, see(restored, 0, 0).batches, strict=True):
        assert np.array_equal(a, b) and np.array_equal(wa, wb)
    assert restored.status().regions[0].excluded == job.status().regions[0].excluded > 0


def test_an_answer_outside_the_eligible_rows_is_refused() -> None:
    job = make_job(exclude_noisy=True)
    view = see(job, 0, 0)
    job.receive_embeddings(
        0, 0, view.candidates, noisy_embeddings(view.candidates), noisy_losses(view.candidates)
    )
    result = run_selection(job.selection_request(0))
    eligible = len(job.selection_request(0).groups)
    assert eligible < len(job.region.members)
    bad = type(result)(
        rows=np.array([eligible]), groups=result.groups[:1], weights=result.weights[:1]
    )
    with pytest.raises(Exception, match="out of range"):
        job.complete_selection(0, bad)


def test_the_in_process_coordinator_excludes_them_too() -> None:
    """Through the coordinator and its selector: the request it hands over is the job's."""
    n, classes = 2000, 4
    labels = np.random.default_rng(0).integers(0, classes, n)
    config = JobConfig(num_examples=n, num_classes=classes, batch_size=32, epochs=10,
                       train_frac=0.2, exclude_noisy=True)  # fmt: skip
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(config, labels)
        view = coordinator.get_region(job_id, 0, 0)
        assert view.status is RegionStatus.EMBED
        coordinator.submit_embeddings(job_id, 0, view.region_id, view.candidates,
                                      noisy_embeddings(view.candidates),
                                      noisy_losses(view.candidates))  # fmt: skip
        deadline = time.monotonic() + 60
        while view.status is not RegionStatus.READY and time.monotonic() < deadline:
            time.sleep(0.05)
            view = coordinator.get_region(job_id, 0, 0)
        assert view.status is RegionStatus.READY
        chosen = np.concatenate([indices for indices, _ in view.batches])
        assert len(chosen) and not np.any(chosen % NOISY == 0)
        stats = coordinator.job_status(job_id).regions[0]
        assert stats.excluded > 0 and not stats.fallback


def test_the_service_side_excludes_them_too() -> None:
    """Embedded by the selectors instead of the ranks: the same rule, the same statistics."""
    job = make_job(exclude_noisy=True, selection_side="service")
    see(job, 0, 0)  # opens the first region, waiting for the selectors
    region = job.region
    assert region is not None and region.embedded_by == "service"
    job.receive_service_embeddings(
        0, region.weights_version, noisy_embeddings(region.candidates),
        noisy_losses(region.candidates),
    )  # fmt: skip
    job.complete_selection(0, run_selection(job.selection_request(0)))
    chosen = np.concatenate([indices for indices, _ in job.view(0, 0).batches])
    members = region.candidates[region.members]
    stats = job.status().regions[0]
    assert len(chosen) and not np.any(chosen % NOISY == 0)
    assert stats.excluded == int(np.sum(members % NOISY == 0)) > 0
    assert stats.candidate_loss < 0.3  # the excluded members' 4.0 left out
