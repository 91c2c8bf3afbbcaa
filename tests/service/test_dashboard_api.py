"""The dashboard's JSON API, event streams, metrics and token, served by uvicorn on the
coordinator's loop over three real jobs: one finished, one paused mid-training (live), and one
finished with strategy auto whose coresets always miss its bar (so its regions alternate
between coresets and random batches)."""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crest.embedded import local_coordinator
from crest.proto.contract import JobStatus, TrainerTime
from crest.service.dashboard import (
    JobDetail,
    JobSummary,
    RegionMonitor,
    TrainerShare,
    create_dashboard,
)
from crest.service.dashboard.metrics import MODES, QUANTILES
from crest.service.local import LocalCoordinator
from crest.service.strategy import monitor_gain
from tests.service.dashboard_helpers import (
    WAIT_S,
    LiveJob,
    first_event,
    get,
    get_json,
    serving,
)

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
PAUSE_AT = 60
AUTO_NAME = "W1 auto 10% (always random)"  # the auto job's name; the others have none


@dataclass
class Served:
    coordinator: LocalCoordinator
    url: str  # an app without a token
    secured: str  # an app with TOKEN, on the same loop
    finished: str  # job ids
    live: str
    auto: str

    @property
    def jobs(self) -> tuple[str, str, str]:
        return self.finished, self.live, self.auto

    def status(self, job_id: str) -> JobStatus:
        return self.coordinator.job_status(job_id)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with local_coordinator() as coordinator:
        done = LiveJob.start(coordinator)
        done.join()
        auto = LiveJob.start(
            coordinator, strategy="auto", auto_min_gain=1e9, auto_test_epochs=1.0, name=AUTO_NAME
        )
        auto.join()
        live = LiveJob.start(coordinator, pause_at=PAUSE_AT)
        try:
            live.wait_paused()
            manager = coordinator.manager
            with (
                serving(coordinator, create_dashboard(manager, refresh_s=0.1)) as url,
                serving(coordinator, create_dashboard(manager, TOKEN, refresh_s=0.1)) as secured,
            ):
                yield Served(coordinator, url, secured, done.job_id, live.job_id, auto.job_id)
        finally:
            live.join()


def test_overview_summarises_every_job(served: Served) -> None:
    summaries = [JobSummary.model_validate(s) for s in get_json(f"{served.url}/api/jobs")]
    by_id = {s.job_id: s for s in summaries}
    assert set(by_id) == set(served.jobs)
    for job_id, summary in by_id.items():
        status = served.status(job_id)
        assert summary.name == (AUTO_NAME if job_id == served.auto else job_id)  # id: no name
        assert summary.step == status.step
        assert summary.total_steps == status.total_steps
        assert summary.finished == status.finished
        assert summary.regions == len(status.regions)
        assert summary.region_id == status.regions[-1].region_id
        assert summary.check_interval == status.regions[-1].check_interval
        assert summary.num_coresets == status.regions[-1].num_coresets
        last_check = [c for r in status.regions for c in r.checks][-1]
        assert summary.last_relative_error == last_check.relative_error
        assert summary.pool_size == status.pool_size and summary.dropped == status.dropped
        assert summary.learned_fraction == status.dropped / status.config.num_examples
        selected = [r for r in status.regions if r.weight_quantiles]
        assert summary.selections == len(selected)
        assert summary.fallbacks == 0
        assert summary.mean_selection_seconds is not None and summary.mean_selection_seconds > 0
    assert by_id[served.finished].finished and not by_id[served.live].finished
    assert 0 < by_id[served.live].step <= PAUSE_AT  # steps known trained: up to the last check


def test_job_detail_is_the_job_status_plus_what_the_charts_need(served: Served) -> None:
    for job_id in (served.finished, served.live):
        detail = JobDetail.model_validate(get_json(f"{served.url}/api/jobs/{job_id}"))
        status = served.status(job_id)
        assert detail.status == status
        assert len(status.regions) > 3, "a job long enough to show region switches"
        assert any(c.new_region for r in status.regions for c in r.checks)
        assert [c.in_pool for c in detail.classes] == status.pool_per_class
        assert [c.size for c in detail.classes] == status.class_sizes
        for c in detail.classes:
            assert c.learned_fraction == pytest.approx(1 - c.in_pool / c.size)
        starts = {r.region_id: r.start_step for r in status.regions}
        assert [s.region_id for s in detail.selections] == [
            r.region_id for r in status.regions if r.weight_quantiles
        ]
        assert all(s.start_step == starts[s.region_id] for s in detail.selections)
        assert all(s.seconds > 0 and s.problems > 0 and not s.fallback for s in detail.selections)
        assert [r.rank for r in detail.ranks] == [0, 1]
        for rank in detail.ranks:
            # A rank's progress is seen at region fetches and checks (a region's batches are
            # local to the trainer), so it may trail the steps known trained by a few.
            assert status.step - 2 * status.config.max_check_interval <= rank.step
            assert rank.step <= status.total_steps
            assert rank.series and all(p.steps_per_second >= 0 for p in rank.series)
            assert any(p.steps_per_second > 0 for p in rank.series)
    finished = JobDetail.model_validate(get_json(f"{served.url}/api/jobs/{served.finished}"))
    assert finished.status.dropped > 0, "learned examples leave the pool in this job"


def test_event_streams_carry_the_api_documents(served: Served) -> None:
    detail = JobDetail.model_validate(first_event(f"{served.url}/api/events/{served.live}"))
    assert detail.status == served.status(served.live)
    overview = first_event(f"{served.url}/api/events")
    assert isinstance(overview, list)
    assert {JobSummary.model_validate(s).job_id for s in overview} == set(served.jobs)
    # A finished job's stream sends its final state and ends (the page stops following).
    status, body, headers = get(f"{served.url}/api/events/{served.finished}")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert body.count(b"data: ") == 1


def _share(trainers: list[TrainerTime]) -> float:
    selection = sum(t.selection_seconds for t in trainers)
    return selection / (selection + sum(t.train_seconds for t in trainers))


def test_modes_decisions_and_the_monitor_agree_with_job_status(served: Served) -> None:
    summaries = {
        s["job_id"]: JobSummary.model_validate(s) for s in get_json(f"{served.url}/api/jobs")
    }
    for job_id in served.jobs:
        detail = JobDetail.model_validate(get_json(f"{served.url}/api/jobs/{job_id}"))
        status = served.status(job_id)
        regions = status.regions
        assert detail.monitor == [
            RegionMonitor(
                region_id=r.region_id,
                start_step=r.start_step,
                end_step=r.end_step,
                mode="fallback" if r.fallback else r.mode,
                decision=r.decision,
                coreset_error=r.coreset_error,
                random_error=r.random_error,
                gain=monitor_gain(r.coreset_error, r.random_error),
                auto_test=r.auto_test,
                probe_loss=r.probe_loss,
                loss_rate_coresets=r.loss_rate_coresets,
                loss_rate_random=r.loss_rate_random,
                loss_excess_coresets=r.loss_excess_coresets,
            )
            for r in regions
        ]
        assert detail.trainers == [
            TrainerShare(**t.model_dump(), selection_share=t.selection_share)
            for t in status.trainers
        ]
        assert [t.rank for t in detail.trainers] == [0, 1]
        assert all(0 < t.selection_share < 1 for t in detail.trainers)

        summary = detail.summary
        moving = {"batches_per_second", "updated"}  # read at different times
        assert summaries[job_id].model_dump(exclude=moving) == summary.model_dump(exclude=moving)
        assert summary.strategy == status.config.strategy
        assert summary.auto_min_gain == status.config.auto_min_gain
        assert summary.auto_switch_margin == status.config.auto_switch_margin
        assert summary.mode == detail.monitor[-1].mode
        assert summary.decision == regions[-1].decision
        measured = [r for r in regions if r.coreset_error is not None]
        assert measured, "the monitor measured some regions"
        assert summary.coreset_error == measured[-1].coreset_error
        assert summary.random_error == measured[-1].random_error
        assert summary.gain == monitor_gain(measured[-1].coreset_error, measured[-1].random_error)
        assert summary.selection_share == pytest.approx(_share(status.trainers))

    for job_id in (served.finished, served.live):  # strategy crest: coresets throughout
        monitor = JobDetail.model_validate(get_json(f"{served.url}/api/jobs/{job_id}")).monitor
        assert {(r.mode, r.decision) for r in monitor} == {("crest", "strategy crest")}
        assert all(r.gain is not None for r in monitor), "every region measured"
    monitor = JobDetail.model_validate(get_json(f"{served.url}/api/jobs/{served.auto}")).monitor
    roles = [r.auto_test for r in monitor]
    first = roles.index("coresets")
    # A test: a coreset arm (one or more coreset regions), two random regions, a coreset arm,
    # and the measure region.
    arms = [
        i
        for i in range(first, len(roles))
        if roles[i] and not (roles[i] == roles[i - 1] == "coresets")
    ][:5]
    assert [roles[i] for i in arms] == ["coresets", "random", "random", "coresets", "measure"]
    assert all(r.mode == "crest" and r.decision == "coresets until the first test"
               for r in monitor[:first])  # fmt: skip
    assert all(monitor[i].probe_loss is not None for i in arms), "probe measured"
    assert [monitor[i].mode for i in arms[1:3]] == ["random", "random"]
    assert all(r.gain is None for r in monitor if r.mode == "random")
    measure = monitor[arms[4]]
    assert measure.loss_rate_coresets is not None and measure.loss_rate_random is not None
    assert measure.loss_excess_coresets is not None
    if arms[4] + 1 < len(monitor):  # coresets miss the bar: random batches until the re-test
        after = monitor[arms[4] + 1]
        assert after.mode == "random" and after.decision.startswith("random: probe loss falls")
        # serving coresets, they stay above auto_min_gain / auto_switch_margin (1e9 / 1.5)
        assert "coresets need 6.67e+08x to stay" in after.decision


def test_an_infinite_gain_is_sent_as_a_string() -> None:
    """An exact coreset (error 0) against a nonzero random error: JSON has no infinity."""
    region = RegionMonitor(
        region_id=0, start_step=0, end_step=None, mode="crest", decision="",
        coreset_error=0.0, random_error=0.5, gain=monitor_gain(0.0, 0.5),
    )  # fmt: skip
    assert region.gain == math.inf
    text = region.model_dump_json()
    assert '"gain":"Infinity"' in text
    assert RegionMonitor.model_validate(json.loads(text)) == region


def test_unknown_jobs_are_404(served: Served) -> None:
    for path in ("/api/jobs/nope", "/api/events/nope", "/jobs/nope"):
        status, body, _ = get(served.url + path)
        assert status == 404, path
        assert b"unknown job" in body


def test_pages_and_vendored_assets_are_served(served: Served) -> None:
    status, body, _ = get(f"{served.url}/")
    assert status == 200 and b"/static/overview.js" in body
    status, body, _ = get(f"{served.url}/jobs/{served.live}")
    assert status == 200 and b"/static/vendor/uplot/uPlot.iife.min.js" in body
    for asset in ("vendor/uplot/uPlot.iife.min.js", "vendor/uplot/uPlot.min.css", "job.js"):
        status, body, _ = get(f"{served.url}/static/{asset}")
        assert status == 200 and len(body) > 1000, asset


def test_openapi_schema_types_the_json_api(served: Served) -> None:
    schema = get_json(f"{served.url}/openapi.json")
    assert isinstance(schema, dict)
    paths = schema["paths"]
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/events", "/api/events/{job_id}"):
        assert path in paths, path
    ok = paths["/api/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/JobDetail")
    models = schema["components"]["schemas"]
    for model in (
        "JobDetail", "JobSummary", "JobStatus", "RegionStats", "ClassPool", "RankRate",
        "RegionMonitor", "TrainerShare",
    ):  # fmt: skip
        assert model in models, model
    assert models["RegionMonitor"]["properties"]["mode"]["enum"] == ["crest", "random", "fallback"]
    for field in ("name", "strategy", "mode", "gain", "auto_min_gain", "selection_share"):
        assert field in models["JobSummary"]["properties"], field
    assert (
        "text/event-stream" in paths["/api/events/{job_id}"]["get"]["responses"]["200"]["content"]
    )
    assert "/metrics" in paths


def _metrics(url: str, token: str | None = None) -> dict[tuple[str, tuple], float]:
    status, body, headers = get(f"{url}/metrics", token)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            assert (sample.name, labels) not in samples, "duplicate sample"
            samples[sample.name, labels] = sample.value
    return samples


def test_prometheus_metrics_parse_and_agree_with_the_api(served: Served) -> None:
    samples = _metrics(served.url)
    assert samples["crest_jobs", ()] == 3
    # The name is one info series per job, not a label on every series.
    assert {n for n, labels in samples if "name" in dict(labels)} == {"crest_job_info"}
    for job_id in served.jobs:
        detail = JobDetail.model_validate(get_json(f"{served.url}/api/jobs/{job_id}"))
        summary, status = detail.summary, detail.status

        def value(name: str, /, **labels: str) -> float:
            return samples[name, tuple(sorted({"job": job_id, **labels}.items()))]  # noqa: B023

        assert value("crest_job_step") == summary.step
        assert value("crest_job_total_steps") == summary.total_steps
        assert value("crest_job_finished") == float(summary.finished)
        assert value("crest_job_tau") == summary.tau
        assert value("crest_check_interval") == summary.check_interval
        assert value("crest_coresets_per_rank") == summary.num_coresets
        assert value("crest_check_relative_error") == summary.last_relative_error
        assert value("crest_pool_size") == summary.pool_size
        assert value("crest_dropped_examples") == summary.dropped
        assert value("crest_learned_fraction") == summary.learned_fraction
        assert value("crest_regions_total") == len(status.regions)
        closed = [r for r in status.regions if r.end_step is not None]
        for reason in ("check", "bound", "budget"):
            assert value("crest_region_switches_total", reason=reason) == sum(
                r.end_reason == reason for r in closed
            )
        checks = [c for r in status.regions for c in r.checks]
        exceeded = sum(c.relative_error > summary.tau for c in checks)
        assert value("crest_checks_total", outcome="exceeded_tau") == exceeded
        assert value("crest_checks_total", outcome="within_tau") == len(checks) - exceeded
        assert value("crest_examples_dropped_total") == sum(r.dropped for r in status.regions)
        assert value("crest_selections_total") == summary.selections
        assert value("crest_fallbacks_total") == summary.fallbacks
        assert value("crest_selection_latency_seconds_count") == summary.selections
        assert value("crest_selection_latency_seconds_sum") == pytest.approx(
            summary.selection_seconds_total
        )
        assert value("crest_selection_last_latency_seconds") == summary.last_selection_seconds
        last = [r for r in status.regions if r.weight_quantiles][-1]
        for q, expected in zip(QUANTILES, last.weight_quantiles, strict=True):
            assert value("crest_coreset_weight", quantile=q) == expected
        assert value("crest_selected_loss") == last.selected_loss
        assert value("crest_candidate_loss") == last.candidate_loss
        assert value("crest_excluded_candidates") == last.excluded
        for c in detail.classes:
            assert value("crest_class_examples", **{"class": str(c.label)}) == c.size
            assert value("crest_class_pool_examples", **{"class": str(c.label)}) == c.in_pool
            assert value("crest_class_learned_fraction", **{"class": str(c.label)}) == (
                c.learned_fraction
            )
        for r in detail.ranks:
            assert value("crest_rank_steps_total", rank=str(r.rank)) == r.step
            assert value("crest_rank_steps_per_second", rank=str(r.rank)) >= 0
        assert math.isfinite(value("crest_batches_per_second"))

        # Strategy, modes and the coreset-quality monitor.
        name = status.config.name or job_id
        assert value("crest_job_info", name=name, strategy=status.config.strategy) == 1
        assert value("crest_coreset_gradient_error") == summary.coreset_error
        assert value("crest_random_gradient_error") == summary.random_error
        assert value("crest_monitor_gain") == summary.gain
        assert value("crest_monitor_min_gain") == summary.auto_min_gain
        assert value("crest_selection_time_share") == summary.selection_share
        modes = [r.mode for r in detail.monitor]
        for mode in MODES:
            assert value("crest_region_mode", mode=mode) == float(summary.mode == mode)
            assert value("crest_regions_by_mode_total", mode=mode) == modes.count(mode)
        made = [r.mode for r in status.regions]  # crest or random (a fallback is crest)
        for to in ("crest", "random"):
            assert value("crest_mode_switches_total", to=to) == sum(
                a != b and b == to for a, b in itertools.pairwise(made)
            )
        for t in detail.trainers:
            assert value("crest_rank_selection_time_share", rank=str(t.rank)) == t.selection_share
            assert value("crest_rank_train_seconds_total", rank=str(t.rank)) == t.train_seconds
            assert value("crest_rank_selection_seconds_total", rank=str(t.rank)) == (
                t.selection_seconds
            )
    switches = _metrics(served.url)[
        "crest_mode_switches_total", (("job", served.auto), ("to", "random"))
    ]
    assert switches >= 2, "auto fell back to random batches after each test of coresets"


PROTECTED = ("/", "/jobs/{job}", "/api/jobs", "/api/jobs/{job}", "/api/events/{job}", "/metrics")


def test_a_configured_token_guards_pages_api_events_and_metrics(served: Served) -> None:
    for template in PROTECTED:
        url = served.secured + template.format(job=served.finished)
        status, _, headers = get(url)
        assert status == 401, template
        assert headers["www-authenticate"] == "Bearer"
        assert get(url, token="wrong")[0] == 401, template
        assert get(url + "?token=wrong")[0] == 401, template
        assert get(url, token=TOKEN)[0] == 200, template
        assert get(url + f"?token={TOKEN}")[0] == 200, template
    # The live job's stream never ends by itself: read its first event through the token.
    event = first_event(f"{served.secured}/api/events/{served.live}?token={TOKEN}")
    assert JobDetail.model_validate(event).summary.job_id == served.live
    assert _metrics(served.secured, TOKEN)["crest_jobs", ()] == 3
    # The page's code and the chart library hold no data and stay public.
    assert get(f"{served.secured}/static/vendor/uplot/uPlot.iife.min.js")[0] == 200
    # The unsecured app knows nothing of tokens.
    assert get(f"{served.url}/api/jobs")[0] == 200


def test_stopping_the_server_ends_open_event_streams() -> None:
    """uvicorn waits for open responses on shutdown; the overview stream never ends by
    itself, so stop() must end it (well before the grace period cancels it)."""
    with local_coordinator() as coordinator:
        app = create_dashboard(coordinator.manager, refresh_s=0.1)
        received = threading.Event()
        lines: list[bytes] = []

        def listen(url: str) -> None:
            with urllib.request.urlopen(f"{url}/api/events", timeout=60) as response:
                for line in response:
                    lines.append(line)
                    received.set()

        with serving(coordinator, app, grace_s=WAIT_S) as url:
            listener = threading.Thread(target=listen, args=(url,))
            listener.start()
            assert received.wait(60)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < WAIT_S / 2, "stop() waited for the grace period"
        listener.join(60)
        assert not listener.is_alive()
        assert lines[0] == b"data: []\n"


def test_a_job_whose_oldest_statistics_were_dropped_still_counts_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job state keeps only its last ``STATS_KEPT`` regions' statistics: the summary and
    the job-wide counters (regions, switches, checks, modes) count the dropped ones too, as
    for the same job with all of them."""
    from crest.service import job as job_module
    from crest.service.dashboard import metrics, views
    from crest.service.telemetry import JobTelemetry
    from tests.service.helpers import make_job
    from tests.service.test_job import _drive

    def counted(stats_kept: int) -> tuple[int, dict]:
        monkeypatch.setattr(job_module, "STATS_KEPT", stats_kept)
        job = make_job(n=8000, max_coreset_uses=1)
        _drive(job, 20)
        detail = views._detail(job.status(), JobTelemetry(), 0.0, rate_series=False)
        families = [*metrics._counters([detail]), *metrics._modes([detail])]
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in families for s in family.samples}  # fmt: skip
        return detail.summary.regions, samples

    regions, samples = counted(5)
    assert (regions, samples) == counted(10**9)
    assert regions == 20 and samples["crest_regions_total", (("job", "job"),)] == 20
