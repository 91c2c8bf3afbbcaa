"""JobManager: journaling, restart from the store, store failures, selection fallback."""

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from crest.proto.contract import CheckReport, JobConfig, RegionStatus
from crest.proto.errors import FailedPrecondition, InvalidArgument, SelectionCrashed, Unavailable
from crest.service import job as job_module
from crest.service.codec import join, unpack
from crest.service.manager import JobManager
from crest.service.store import MemoryStore
from crest.worker.selector import InProcessSelector, SelectionRequest, SelectionResult
from tests.service.helpers import fake_embeddings

LABELS = np.random.default_rng(0).integers(0, 4, 2000)
CONFIG = JobConfig(num_examples=2000, num_classes=4, batch_size=32, epochs=10, train_frac=0.2)


async def drive(manager: JobManager, job_id: str, start: int, stop: int, seq: list[int]) -> list:
    """Play one rank from ``start`` to ``stop``; returns the batches served."""
    served = []
    for step in range(start, stop):
        view = await manager.get_region(job_id, 0, step)
        while view.status is RegionStatus.EMBED:
            seq[0] += 1
            losses = np.full(len(view.candidates), 1.0 + step % 3, np.float32)
            await manager.submit_embeddings(
                job_id,
                0,
                view.region_id,
                view.candidates,
                fake_embeddings(view.candidates),
                losses,
                seq[0],
            )
            view = await manager.get_region(job_id, 0, step)
        indices, weights = view.batches[(step - view.start_step) % len(view.batches)]
        served.append((step, view.region_id, indices.tolist(), weights.tolist()))
        if (step + 1 - view.start_step) % view.check_interval == 0 and step + 2 < view.end_step:
            report = CheckReport(view.region_id, step, 10.0 * (1 + step % 5), 10, -0.1, 0.0, 1.0)
            await manager.report_check(job_id, 0, report)
    return served


def new_manager(store, selector=None, strict: bool = True, **kwargs) -> JobManager:
    return JobManager(selector or InProcessSelector(), store, strict=strict, **kwargs)


@pytest.mark.parametrize("stats_kept", [None, 3])
def test_a_restarted_manager_resumes_the_exact_job(
    stats_kept: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if stats_kept is not None:  # the statistics of all but the last regions dropped
        monkeypatch.setattr(job_module, "STATS_KEPT", stats_kept)

    async def main() -> None:
        store = MemoryStore()
        first = new_manager(store, snapshot_every=7)  # snapshots and journal both in play
        job_id = await first.create_job(CONFIG, LABELS, job_id="j")
        seq = [0]
        await drive(first, job_id, 0, 25, seq)
        # What the store held right after step 25, as if the process died there.
        store_copy = MemoryStore()
        store_copy._jobs = await _copy(store)
        expected = await drive(first, job_id, 25, 60, list(seq))
        status = await first.job_status(job_id)
        first.selector.close()

        second = new_manager(store_copy)
        await second.start()
        assert second.job_ids() == ["j"]
        info = await second.open_session("j", 0)
        assert info.committed_seq == seq[0]
        resumed = await drive(second, "j", 25, 60, list(seq))
        assert resumed == expected
        assert await second.job_status("j") == status
        assert (status.regions_omitted > 0) == (stats_kept is not None)
        second.selector.close()

    asyncio.run(main())


async def _copy(store: MemoryStore) -> dict:
    from crest.service.store import StoredJob

    copied = {}
    for job_id in await store.job_ids():
        stored = await store.load(job_id)
        copied[job_id] = StoredJob(stored.snapshot, list(stored.log), dict(stored.pieces))
    return copied


class FlakyStore(MemoryStore):
    """Fails the next append when told to."""

    fail_next = False

    async def append(self, job_id: str, event: bytes) -> int:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("store down")
        return await super().append(job_id, event)


def test_a_store_failure_is_unavailable_and_memory_never_runs_ahead() -> None:
    async def main() -> None:
        store = FlakyStore()
        manager = new_manager(store)
        job_id = await manager.create_job(CONFIG, LABELS)
        view = await manager.get_region(job_id, 0, 0)
        half = view.candidates[: len(view.candidates) // 2]
        store.fail_next = True
        with pytest.raises(Unavailable, match="store failed"):
            await manager.submit_embeddings(
                job_id, 0, 0, half, fake_embeddings(half), np.ones(len(half), np.float32), 1
            )
        info = await manager.open_session(job_id, 0)  # rebuilt from the store
        assert info.committed_seq == 0, "the failed upload must not count as committed"
        assert (
            await manager.submit_embeddings(
                job_id, 0, 0, half, fake_embeddings(half), np.ones(len(half), np.float32), 1
            )
            == 1
        )
        manager.selector.close()

    asyncio.run(main())


class BrokenSelector(InProcessSelector):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.calls = 0

    async def select(
        self, request: SelectionRequest, timeout_s: float | None = None
    ) -> SelectionResult:
        self.calls += 1
        if self.calls == 1 and self.mode == "hang":
            await asyncio.sleep(3600)  # ignores its deadline: the manager enforces it
        if self.calls == 1 and self.mode == "unavailable":
            raise Unavailable("no actors")
        if self.calls == 1 and self.mode == "bug":
            raise IndexError("kernel bug")
        result = await super().select(request, timeout_s)
        if self.calls == 1 and self.mode == "wrong":
            return SelectionResult(result.rows + 10**6, result.groups, result.weights)
        return result


@pytest.mark.parametrize("mode", ["hang", "unavailable", "bug", "wrong"])
def test_selection_failures_fall_back_to_random_batches_then_recover(mode: str) -> None:
    async def main() -> None:
        selector = BrokenSelector(mode)
        # 2 s: the hung first call waits it out; the real kernel's later calls take ms.
        manager = new_manager(MemoryStore(), selector, strict=False, selection_timeout_s=2.0)
        job_id = await manager.create_job(CONFIG, LABELS)
        served = await drive(manager, job_id, 0, 40, [0])
        status = await manager.job_status(job_id)
        assert status.regions[0].fallback
        assert all(abs(w - 1.0) < 0.1 for step, region, _, ws in served if region == 0 for w in ws)
        assert len(status.regions) > 1 and not status.regions[1].fallback, "selection resumes"
        telemetry = manager.telemetry(job_id)
        assert telemetry.fallbacks == 1
        assert [e.fallback for e in telemetry.selections][:2] == [True, False]
        bugs = {"bug": {"IndexError": 1}, "wrong": {"InvalidArgument": 1}}
        assert telemetry.selection_errors == bugs.get(mode, {}), "bugs are counted by type"
        selector.close()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["bug", "wrong"])
def test_a_strict_manager_fails_loudly_on_a_selection_bug(mode: str) -> None:
    async def main() -> None:
        selector = BrokenSelector(mode)
        manager = new_manager(MemoryStore(), selector, strict=True)
        job_id = await manager.create_job(CONFIG, LABELS)
        with pytest.raises(SelectionCrashed, match=r"IndexError: kernel bug|answered wrongly"):
            await drive(manager, job_id, 0, 5, [0])
        with pytest.raises(SelectionCrashed):  # every later call of the job, too
            await manager.job_status(job_id)
        assert selector.calls == 1, "no silent retry"
        selector.close()

    asyncio.run(main())


def test_journal_holds_changes_not_duplicates() -> None:
    async def main() -> None:
        store = MemoryStore()
        manager = new_manager(store, snapshot_every=10**6)
        job_id = await manager.create_job(CONFIG, LABELS)
        view = await manager.get_region(job_id, 0, 0)
        await manager.get_region(job_id, 0, 0)  # no new region: nothing journaled
        args = (
            view.candidates,
            fake_embeddings(view.candidates),
            np.ones(len(view.candidates), np.float32),
        )
        await manager.submit_embeddings(job_id, 0, 0, *args, 1)
        await manager.submit_embeddings(job_id, 0, 0, *args, 1)  # a retry: skipped
        await manager.get_region(job_id, 0, 0)  # waits for selection
        ops = (await store.load(job_id)).log

        assert [unpack(e)["op"] for e in ops] == ["open", "upload", "select"]
        manager.selector.close()

    asyncio.run(main())


def test_a_create_job_retry_that_overtakes_the_first_attempt_finds_its_job() -> None:
    NONE: Mapping[str, bytes] = {}

    class SlowStore(MemoryStore):
        creates = 0

        async def create(self, job_id: str, snapshot: bytes, pieces: Mapping = NONE) -> None:
            SlowStore.creates += 1
            await asyncio.sleep(0.2)  # the first attempt is still storing the job
            await super().create(job_id, snapshot, pieces)

    async def main() -> None:
        manager = new_manager(SlowStore())
        ids = await asyncio.gather(
            *(manager.create_job(CONFIG, LABELS, job_id="named") for _ in range(3))
        )
        assert ids == ["named"] * 3
        assert SlowStore.creates == 1
        assert manager.job_ids() == ["named"]
        await manager.close()

    asyncio.run(main())


def test_a_rank_waiting_on_another_rank_is_told_whose_embeddings_are_missing() -> None:
    async def main() -> None:
        manager = new_manager(MemoryStore(), wait_s=0.2)
        config = CONFIG.model_copy(update={"world_size": 3})
        job_id = await manager.create_job(config, LABELS)
        view = await manager.get_region(job_id, 0, 0)
        embeddings = fake_embeddings(view.candidates)
        losses = np.ones(len(view.candidates), np.float32)
        await manager.submit_embeddings(job_id, 0, 0, view.candidates, embeddings, losses)
        with pytest.raises(Unavailable, match="waiting for the embeddings of ranks 1, 2 in"):
            await manager.get_region(job_id, 0, 0)
        await manager.close()

    asyncio.run(main())


def test_an_oversized_job_id_is_refused_in_process_too() -> None:
    async def main() -> None:
        manager = new_manager(MemoryStore())
        for call in (
            manager.create_job(CONFIG, LABELS, job_id="j" * 129),
            manager.open_session("j" * 9000, 0),
            manager.job_status("bad\nid"),
        ):
            with pytest.raises(InvalidArgument, match="1-128 printable characters"):
                await call
        await manager.close()

    asyncio.run(main())


def test_a_resume_into_an_archived_region_is_answered_from_the_archive_until_it_expires() -> None:
    """Closed regions beyond the live window are read back from the store's archive (views
    and decisions as they were, nothing journaled); past ``archived_regions`` they expire,
    and a resume that needs one fails precisely."""
    from crest.service.job import LIVE_CLOSED_REGIONS
    from crest.service.region import region_from_state

    async def main() -> None:
        store = MemoryStore()
        keep = 3
        manager = new_manager(store, snapshot_every=5, archived_regions=keep)
        config = CONFIG.model_copy(update={"epochs": 40, "max_coreset_uses": 1})
        await manager.create_job(config, LABELS, job_id="a")
        served = await drive(manager, "a", 0, 200, [0])
        current = manager._jobs["a"].state.regions_opened - 1
        archived = range(current - LIVE_CLOSED_REGIONS - keep, current - LIVE_CLOSED_REGIONS)
        assert archived.start > 0, "some regions expired"
        assert sorted(store._archives["a"]) == list(archived)
        log_length = len((await store.load("a")).log)

        for step, region_id, indices, weights in served:
            if region_id in archived:  # a trainer resuming from a checkpoint at ``step``
                view = await manager.get_region("a", 0, step)
                assert view.region_id == region_id
                batch = view.batches[(step - view.start_step) % len(view.batches)]
                assert (batch[0].tolist(), batch[1].tolist()) == (indices, weights)
        stored = await store.archived("a", archived[-1])
        region = region_from_state(join(unpack(stored.head), stored.pieces))
        for check_step, decision in region.decisions.items():
            again = CheckReport(region.region_id, check_step, 1.0, 1, 0.0, 0.0, 1.0)
            assert await manager.report_check("a", 0, again) == decision
        assert region.decisions, "the region had checks to replay"
        assert len((await store.load("a")).log) == log_length, "reads journal nothing"

        expired = next(step for step, region_id, _, _ in served if region_id < archived.start)
        with pytest.raises(FailedPrecondition, match=r"has expired.*too old"):
            await manager.get_region("a", 0, expired)
        await manager.close()

    asyncio.run(main())


def test_the_monitor_is_skipped_when_the_selection_used_its_deadline_and_replays_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Building the first region's request takes the whole deadline (a sleep past it): the
    # selector still answers, but the monitor, counted inside the deadline, is skipped and
    # says so; a restarted manager replays the same decision from the journal.
    import time as clock

    from crest.service.job import JobState

    build = JobState.selection_request
    slow = {0}

    def slow_request(self: JobState, region_id: int) -> SelectionRequest:
        if region_id in slow:
            clock.sleep(1.5)
        return build(self, region_id)

    monkeypatch.setattr(JobState, "selection_request", slow_request)

    async def main() -> None:
        store = MemoryStore()
        first = new_manager(store, selection_timeout_s=1.0)
        job_id = await first.create_job(CONFIG, LABELS, job_id="j")
        await drive(first, job_id, 0, 30, [0])
        status = await first.job_status(job_id)
        first.selector.close()
        skipped, measured = status.regions[0], status.regions[1]
        assert not skipped.fallback and skipped.monitor.startswith("skipped")
        assert skipped.coreset_error is None and skipped.random_error is None
        assert measured.monitor.startswith("all ") and measured.coreset_error is not None

        second = new_manager(store)
        await second.start()
        assert (await second.job_status("j")).regions[:2] == status.regions[:2]
        second.selector.close()

    asyncio.run(main())
