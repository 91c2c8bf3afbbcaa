"""A real headless Chromium loads the dashboard during a live job and draws every chart.

Set ``CREST_DASHBOARD_SCREENSHOT=<path.png>`` to keep the job page's screenshot (this is how
``docs/dashboard.png`` is made); otherwise it goes to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from crest.embedded import local_coordinator
from crest.service.dashboard import create_dashboard
from tests.service.chromium import Chromium, find_chromium
from tests.service.dashboard_helpers import WAIT_S, LiveJob, serving

pytestmark = pytest.mark.integration

CHARTS = (
    "regions", "checks", "schedule", "pool", "classes", "weights", "difficulty", "latency",
    "rates",
)  # fmt: skip
VIEWPORT = (1440, 900)  # a laptop screen
# What each chart drew: the page's charts record their data points in data-points.
CHART_STATE = """Object.fromEntries([...document.querySelectorAll('.chart')]
    .map(el => [el.id.replace('chart-', ''), {points: Number(el.dataset.points || 0),
                                              error: el.dataset.error || null}]))"""


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_live_job_page_draws_every_chart_with_data(tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    token = "browser-token"
    with local_coordinator() as coordinator:
        job = LiveJob.start(coordinator, pause_at=120)
        try:
            job.wait_paused()
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
                tiles = browser.evaluate("document.getElementById('tiles').innerText")
                assert "/ 1,200" in tiles  # the pool tile: in pool / N
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
                assert job.job_id in rows
                browser.screenshot(tmp_path / "overview.png")
        finally:
            job.join()
