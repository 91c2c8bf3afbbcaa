"""A real headless Chromium loads the dashboard during a live job and draws every chart.

The job runs strategy ``auto`` with a bar its first coresets miss, so its regions mix coresets
and random batches, and the monitor's charts and decisions have something to show.

Set ``CREST_DASHBOARD_SCREENSHOT=<path.png>`` to keep the job page's screenshot (this is how
``docs/dashboard.png`` is made); otherwise it goes to the test's temporary directory.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
from pathlib import Path

import pytest

from crest.embedded import local_coordinator
from crest.proto.contract import JobStatus
from crest.service.dashboard import create_dashboard
from crest.service.dashboard.views import region_mode
from crest.service.strategy import monitor_gain
from tests.service.chromium import Chromium, find_chromium
from tests.service.dashboard_helpers import WAIT_S, LiveJob, serving

pytestmark = pytest.mark.integration

CHARTS = (
    "gain", "monitor", "trainers", "regions", "checks", "schedule", "pool", "classes", "weights",
    "difficulty", "latency", "rates",
)  # fmt: skip
PAUSE_AT = 120
# Strategy auto with this bar: the first region's coresets (gain about 20 on this job) miss
# it, later ones (gains of 1e3 to 1e5) sometimes do, so coresets and random batches alternate.
AUTO = {"strategy": "auto", "auto_min_gain": 1e4, "auto_retest_epochs": 0.5}
VIEWPORT = (1440, 900)  # a laptop screen
# What each chart drew: the page's charts record their data points in data-points.
CHART_STATE = """Object.fromEntries([...document.querySelectorAll('.chart')]
    .map(el => [el.id.replace('chart-', ''), {points: Number(el.dataset.points || 0),
                                              series: JSON.parse(el.dataset.series || '{}'),
                                              error: el.dataset.error || null}]))"""


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def _monitor_expectations(status: JobStatus) -> dict[str, dict[str, int]]:
    """What the monitor's charts must draw for ``status``: points per series."""
    regions = status.regions
    gains = [monitor_gain(r.coreset_error, r.random_error) for r in regions]
    measured = sum(g is not None and 0 < g < math.inf for g in gains)
    modes = [region_mode(r) for r in regions]
    return {
        "gain": {
            "gain": measured,
            "random batches": modes.count("random"),
            "fallback": modes.count("fallback"),
        },
        "monitor": {"coreset": measured, "random batch": measured},
        "trainers": {"selection work": len(status.trainers)},
    }


def test_live_job_page_draws_every_chart_with_data(tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    token = "browser-token"
    with local_coordinator() as coordinator:
        job = LiveJob.start(coordinator, pause_at=PAUSE_AT, **AUTO)
        try:
            job.wait_paused()
            status = coordinator.job_status(job.job_id)
            modes = {region_mode(r) for r in status.regions}
            assert modes >= {"crest", "random"}, f"the job should mix modes: {modes}"
            expected = _monitor_expectations(status)
            app = create_dashboard(coordinator.manager, token, refresh_s=0.2)
            with (
                serving(coordinator, app) as url,
                Chromium(binary, tmp_path / "profile", VIEWPORT, timeout_s=WAIT_S) as browser,
            ):
                # The job page, through the token in its URL, while the job is live.
                browser.navigate(f"{url}/jobs/{job.job_id}?token={token}")
                browser.wait_for("Number(document.body.dataset.updates) >= 1", WAIT_S)
                assert browser.evaluate("document.body.dataset.state") == "live"
                charts = browser.wait_for(
                    f"(s => Object.values(s).every(c => c.points > 0) && s)({CHART_STATE})",
                    WAIT_S,
                )
                assert sorted(charts) == sorted(CHARTS)
                assert all(c["error"] is None for c in charts.values()), charts
                for name, series in expected.items():
                    drawn = charts[name]["series"]
                    assert {k: drawn[k] for k in series} == series, (name, drawn)
                assert charts["gain"]["series"]["auto_min_gain"] > 0  # the bar is drawn
                tiles = browser.evaluate("document.getElementById('tiles').innerText")
                assert "/ 1,200" in tiles  # the pool tile: in pool / N
                mode = browser.evaluate("document.getElementById('mode').textContent")
                assert mode == f"auto · {region_mode(status.regions[-1])}"
                decisions = browser.evaluate(
                    "[...document.querySelectorAll('#decisions li')].map(li => li.innerText)"
                )
                assert 0 < len(decisions) <= 8
                assert any("random until step" in d for d in decisions), decisions
                assert status.regions[-1].decision in decisions[0]  # newest first
                screenshot = tmp_path / "dashboard.png"
                browser.screenshot(screenshot)
                assert _png_size(screenshot) == VIEWPORT
                assert screenshot.stat().st_size > 50_000, "a blank page compresses to less"
                if target := os.environ.get("CREST_DASHBOARD_SCREENSHOT"):
                    shutil.copyfile(screenshot, target)

                # The job goes on: the open stream brings it to the end, and the page stops.
                updates = int(browser.evaluate("document.body.dataset.updates"))
                job.resume()
                browser.wait_for("document.body.dataset.state === 'finished'", WAIT_S)
                assert int(browser.evaluate("document.body.dataset.updates")) > updates
                total = coordinator.job_status(job.job_id).total_steps
                step_text = browser.evaluate("document.getElementById('step').textContent")
                assert step_text == f"step {total} / {total}"

                # The overview lists the job.
                browser.navigate(f"{url}/?token={token}")
                browser.wait_for("Number(document.body.dataset.updates) >= 1", WAIT_S)
                rows = browser.evaluate("document.querySelector('#jobs tbody').innerText")
                assert job.job_id in rows and "auto" in rows
                browser.screenshot(tmp_path / "overview.png")
        finally:
            job.join()
