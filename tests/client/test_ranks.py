"""When a session combines its checks with the other ranks', in-process (a one-rank gloo
group; several ranks in their own processes: tests/integration/test_combined_checks.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from crest.client.ranks import CheckGroup, check_group
from crest.embedded import local_coordinator
from crest.proto.contract import CheckDecision, CheckReport, RegionStatus, RegionView
from crest.proto.errors import InvalidArgument, Unavailable
from tests.training import blobs, job_config, train, train_with_checkpoint


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_without_a_process_group_every_rank_reports_for_itself() -> None:
    assert not dist.is_initialized()
    assert check_group(None, 0, 2) is None
    assert check_group(False, 1, 2) is None
    with pytest.raises(ValueError, match="job's 2 ranks; found no process group"):
        check_group(True, 0, 2)


def test_a_group_of_another_size_is_not_the_jobs(one_rank_group: None) -> None:
    assert check_group(None, 0, 2) is None
    with pytest.raises(ValueError, match="job's 2 ranks; found a process group of 1 ranks"):
        check_group(True, 0, 2)
    assert isinstance(check_group(None, 0, 1), CheckGroup)
    assert check_group(False, 0, 1) is None


def test_a_failed_report_fails_rank_0_with_its_error(one_rank_group: None) -> None:
    group = check_group(True, 0, 1)
    assert group is not None
    failed: Future[CheckDecision] = Future()
    failed.set_exception(Unavailable("coordinator gone"))
    with pytest.raises(Unavailable, match="coordinator gone"):
        group.share(failed)
    done: Future[CheckDecision] = Future()
    decision = CheckDecision(3, 17, True, 0.25, 0.5, 1.0)
    done.set_result(decision)
    assert group.share(done) == decision


def test_a_failed_shared_fetch_fails_rank_0_with_its_error(one_rank_group: None) -> None:
    group = check_group(True, 0, 1)
    assert group is not None

    def unreachable() -> list[RegionView]:
        raise Unavailable("coordinator gone")

    with pytest.raises(Unavailable, match="coordinator gone"):
        group.share_region(unreachable)
    for status, settled in ((RegionStatus.READY, True), (RegionStatus.SELECTING, False)):
        sent = RegionView(region_id=2, status=status, start_step=8, end_step=16)
        view, all_settled, embed = group.share_region(lambda sent=sent: [sent])
        assert (view.region_id, view.status, view.end_step, all_settled) == (2, status, 16, settled)
        assert not embed


def test_a_failed_shared_upload_fails_rank_0_with_its_error(one_rank_group: None) -> None:
    group = check_group(True, 0, 1)
    assert group is not None
    part = (np.arange(3), np.ones((3, 2), np.float32), np.ones(3, np.float32))
    sent: list[list] = []

    def rejected(parts: list) -> None:
        raise InvalidArgument("part 0 of the shared upload: embeddings contain NaN or Inf")

    with pytest.raises(InvalidArgument, match="embeddings contain NaN"):
        group.share_upload(part, rejected)
    group.share_upload(part, sent.append)
    assert len(sent) == 1 and len(sent[0]) == 1 and np.array_equal(sent[0][0][0], np.arange(3))


def test_a_combining_session_trains_and_resumes_with_the_same_batches(
    one_rank_group: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    combined: list[int] = []
    combine = CheckGroup.combine

    def counted(group: CheckGroup, report: CheckReport) -> CheckReport | None:
        combined.append(report.step)
        return combine(group, report)

    monkeypatch.setattr(CheckGroup, "combine", counted)
    labels = blobs()[1].numpy()
    with local_coordinator() as local:
        reference = local.create_job(job_config(seed=2), labels)
        _, separate = train(local, reference, combine_checks=False)
        assert not combined
        checks = [c.step for r in local.job_status(reference).regions for c in r.checks]
        # A checkpoint taken with a check in flight (sent after the step before it): the
        # restored session combines and sends it again.
        save_at = next(step for step in checks if step >= 10) + 1
        job_id = local.create_job(job_config(seed=2), labels)
        checkpoint = tmp_path / "ckpt.pt"
        first = train_with_checkpoint(local, job_id, checkpoint, save_at, save_at + 12)
        pending = torch.load(checkpoint, weights_only=True)["crest"]["pending_check"]
        assert pending is not None and pending["step"] == save_at - 1
        assert combined == [step for step in checks if step < save_at + 12]
        resumed = train_with_checkpoint(local, job_id, checkpoint, save_at, None)
    assert first == separate[: save_at + 13]
    assert resumed == separate[save_at + 1 :]
    assert combined.count(save_at - 1) == 2
