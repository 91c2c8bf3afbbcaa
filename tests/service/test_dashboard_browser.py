"""A real headless Chromium loads the dashboard during a live job and draws every chart.

The job runs strategy ``auto`` with a bar its first coresets miss, so its regions mix coresets
and random batches, and the monitor's charts and decisions have something to show.

At 1400 x 1000 the page must be readable: no text a chart draws overlaps another (axis titles,
tick labels) or is cut off at the chart's edge, and nothing is wider than the window. uPlot
draws its text on a canvas, out of the DOM's reach, so the page is given a script first that
records where each ``fillText`` lands.

The overview lists the jobs, and below them the calls a gRPC server over the same manager
answered, per method.

Set ``CREST_DASHBOARD_SCREENSHOT=<path.png>`` to keep the job page's screenshot (this is how
``docs/dashboard-auto.png`` is made); otherwise it goes to the test's temporary directory.
A second test starts ``crest serve`` with a token and opens the dashboard URL it prints.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from crest.client.remote import RemoteCoordinator
from crest.embedded import local_coordinator
from crest.proto.contract import JobStatus
from crest.proto.errors import NotFound
from crest.service.dashboard import create_dashboard
from crest.service.dashboard.app import STATIC_DIR
from crest.service.dashboard.views import region_mode
from crest.service.strategy import monitor_gain
from crest.service.telemetry import RpcTelemetry
from tests.service.chromium import Chromium, find_chromium
from tests.service.dashboard_helpers import (
    WAIT_S,
    LiveJob,
    get,
    grpc_server,
    job_config,
    serving,
)
from tests.training import blobs

pytestmark = pytest.mark.integration

CHARTS = (
    "gain", "monitor", "trainers", "regions", "checks", "schedule", "pool", "classes", "weights",
    "difficulty", "latency", "rates",
)  # fmt: skip
PAUSE_AT = 120
# Strategy auto with this bar: coresets never lower the probe loss 1e4 times faster than random
# batches, so its first test (coreset arms of a quarter epoch) ends in random batches.
AUTO = {"strategy": "auto", "auto_min_gain": 1e4, "auto_retest_epochs": 0.5,
        "auto_test_epochs": 0.25}  # fmt: skip
VIEWPORT = (1400, 1000)  # a laptop screen
NAME = "W1 auto 10% (browser test)"
# The longest name a job may have, without spaces to break it at: the job list must wrap it.
LONG_NAME = "W1-crest-10%-" + "x" * (128 - len("W1-crest-10%-"))
# What each chart drew: the page's charts record their data points in data-points.
CHART_STATE = """Object.fromEntries([...document.querySelectorAll('.chart')]
    .map(el => [el.id.replace('chart-', ''), {points: Number(el.dataset.points || 0),
                                              series: JSON.parse(el.dataset.series || '{}'),
                                              error: el.dataset.error || null}]))"""


# Run before the page's own scripts: every canvas keeps the boxes (canvas pixels) of the
# texts drawn since it was last cleared whole, which uPlot does at each redraw.
RECORD_CANVAS_TEXT = """(() => {
  const proto = CanvasRenderingContext2D.prototype;
  const { fillText, clearRect } = proto;
  proto.clearRect = function (x, y, w, h) {
    if (x <= 0 && y <= 0 && w >= this.canvas.width && h >= this.canvas.height) {
      this.canvas.texts = [];
    }
    return clearRect.call(this, x, y, w, h);
  };
  proto.fillText = function (text, x, y, ...rest) {
    const label = String(text);
    if (label.trim()) {
      const m = this.measureText(label), t = this.getTransform();
      const [l, r] = [x - m.actualBoundingBoxLeft, x + m.actualBoundingBoxRight];
      const [a, b] = [y - m.actualBoundingBoxAscent, y + m.actualBoundingBoxDescent];
      const points = [[l, a], [r, a], [l, b], [r, b]].map(([px, py]) =>
        t.transformPoint(new DOMPoint(px, py)));  // rotated titles too
      const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
      (this.canvas.texts ||= []).push({
        text: label, box: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)],
      });
    }
    return fillText.call(this, text, x, y, ...rest);
  };
})()"""
# Per chart: pairs of drawn texts that overlap, and texts that run off the canvas; and every
# element wider than its box.
LAYOUT = """(() => {
  const overlap = (a, b) =>
    a[0] < b[2] - 0.5 && b[0] < a[2] - 0.5 && a[1] < b[3] - 0.5 && b[1] < a[3] - 0.5;
  const charts = {};
  for (const el of document.querySelectorAll('.chart')) {
    const canvas = el.querySelector('canvas');
    const texts = (canvas && canvas.texts) || [];
    const clashes = [];
    texts.forEach((a, i) => texts.slice(i + 1).forEach((b) => {
      if (overlap(a.box, b.box)) clashes.push([a.text, b.text]);
    }));
    const clipped = texts.filter(({ box }) => box[0] < -0.5 || box[1] < -0.5
      || box[2] > canvas.width + 0.5 || box[3] > canvas.height + 0.5).map((t) => t.text);
    charts[el.id.replace('chart-', '')] = { texts: texts.map((t) => t.text), clashes, clipped };
  }
  const overflowing = [...document.querySelectorAll('header, .tiles, .card, .table-wrap')]
    .filter((el) => el.scrollWidth > el.clientWidth + 1)
    .map((el) => `${el.className} ${el.scrollWidth} > ${el.clientWidth}`);
  return { charts, overflowing, pageWidth: document.documentElement.scrollWidth, innerWidth };
})()"""
NONE = "\N{EN DASH}"  # what the pages show for no value
# The overview's RPC table: {method: [its cells' text]}.
RPC_ROWS = """Object.fromEntries([...document.querySelectorAll('#rpcs tbody tr')]
    .map(tr => [...tr.cells].map(td => td.innerText)).map(([m, ...rest]) => [m, rest]))"""


def _assert_readable(browser: Chromium) -> dict:
    """The page's layout checks (LAYOUT) all pass; returns them."""
    layout = browser.evaluate(LAYOUT)
    assert layout["pageWidth"] <= layout["innerWidth"], layout
    assert layout["overflowing"] == [], layout["overflowing"]
    for name, chart in layout["charts"].items():
        assert chart["clashes"] == [], (name, chart)
        assert chart["clipped"] == [], (name, chart)
    return layout


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
        job = LiveJob.start(coordinator, pause_at=PAUSE_AT, name=NAME, **AUTO)
        # Listed beside it: a job with the longest name allowed (never trained).
        long_id = coordinator.create_job(job_config(name=LONG_NAME), blobs()[1].numpy())
        try:
            job.wait_paused()
            status = coordinator.job_status(job.job_id)
            modes = {region_mode(r) for r in status.regions}
            assert modes >= {"crest", "random"}, f"the job should mix modes: {modes}"
            expected = _monitor_expectations(status)
            rpc = RpcTelemetry()
            app = create_dashboard(coordinator.manager, token, refresh_s=0.2, rpc=rpc)
            with (
                grpc_server(coordinator, rpc) as address,
                serving(coordinator, app) as url,
                Chromium(binary, tmp_path / "profile", VIEWPORT, timeout_s=WAIT_S) as browser,
            ):
                browser.add_init_script(RECORD_CANVAS_TEXT)
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
                gain_series = charts["gain"]["series"]
                assert gain_series["coresets stay"] > 0 and gain_series["coresets return"] > 0
                tiles = browser.evaluate("document.getElementById('tiles').innerText")
                assert "/ 1,200" in tiles  # the pool tile: in pool / N
                mode = browser.evaluate("document.getElementById('mode').textContent")
                assert mode == f"auto · {region_mode(status.regions[-1])}"
                decisions = browser.evaluate(
                    "[...document.querySelectorAll('#decisions li')].map(li => li.innerText)"
                )
                assert 0 < len(decisions) <= 8
                assert any("random: probe loss falls" in d for d in decisions), decisions
                assert any("[auto test: random]" in d for d in decisions), decisions
                assert status.regions[-1].decision in decisions[0]  # newest first
                # Named in the header and the title; the id beside the name.
                assert browser.evaluate("document.title") == f"crest · {NAME}"
                header = browser.evaluate("document.querySelector('header h1').innerText")
                assert NAME in header and job.job_id in header
                # Readable at this size: every chart drew its axis titles and tick labels,
                # none overlapping another or cut off; nothing wider than the window.
                layout = _assert_readable(browser)
                assert "step" in layout["charts"]["checks"]["texts"]  # an axis title
                assert "relative error" in layout["charts"]["checks"]["texts"]
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

                # The overview lists the jobs by name (their ids below), within the window.
                browser.navigate(f"{url}/?token={token}")
                browser.wait_for("Number(document.body.dataset.updates) >= 1", WAIT_S)
                names = browser.evaluate(
                    "[...document.querySelectorAll('#jobs td.name a')].map(a => a.textContent)"
                )
                assert sorted(names) == sorted([NAME, LONG_NAME])
                rows = browser.evaluate("document.querySelector('#jobs tbody').innerText")
                assert job.job_id in rows and long_id in rows and "auto" in rows
                # Below them, the gRPC server's calls, live: two answered, one NOT_FOUND.
                with RemoteCoordinator(address, retry_s=5) as remote:
                    remote.job_status(job.job_id)
                    remote.job_status(long_id)
                    with pytest.raises(NotFound):
                        remote.job_status("no-such-job")
                rpcs = browser.wait_for(
                    f"(r => r.GetJobStatus && r.GetJobStatus[0] === '3' && r)({RPC_ROWS})",
                    WAIT_S,
                )
                _, errors, codes, mean, p50, p99 = rpcs["GetJobStatus"]
                assert (errors, codes) == ("1", "NOT_FOUND 1")
                assert all(t.endswith(("ms", " s")) for t in (mean, p50, p99)), rpcs
                assert rpcs["ReportCheck"] == ["0", "0", *[NONE] * 4]  # not called
                assert browser.evaluate("document.getElementById('rpc-empty').hidden")
                _assert_readable(browser)
                browser.screenshot(tmp_path / "overview.png")
        finally:
            job.join()


def test_the_url_crest_serve_prints_opens_the_dashboard(tmp_path: Path) -> None:
    """As a newcomer does: copy the printed URL into a browser (the token is in it)."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    token = "newcomer+token/1=2&3"  # characters a URL must escape
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "crest.cli", "serve", "--selector", "inprocess", "--port", "0",
         "--dashboard-port", "0", "--token", token, "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        listening, dashboard = process.stdout.readline(), process.stdout.readline()
        assert listening.startswith("crest coordinator listening on "), listening
        assert dashboard.startswith("crest dashboard on "), dashboard
        printed = dashboard.split(" on ", 1)[1].strip()
        address = listening.rsplit(" ", 1)[1].strip()
        parts = urlsplit(printed)
        assert parse_qs(parts.query) == {"token": [token]}, printed
        base = f"{parts.scheme}://{parts.netloc}"
        with RemoteCoordinator(address, token=token) as remote:
            job_id = remote.create_job(job_config(world_size=1, name=NAME), blobs()[1].numpy())

        # Without the token, or with a wrong one, nothing is served.
        assert get(f"{base}/")[0] == 401
        assert get(f"{base}/?token=wrong")[0] == 401
        assert get(f"{base}/api/jobs?token=wrong")[0] == 401
        with Chromium(binary, tmp_path / "profile", VIEWPORT, timeout_s=WAIT_S) as browser:
            browser.navigate(printed)
            browser.wait_for("Number(document.body.dataset.updates) >= 1", WAIT_S)
            assert browser.evaluate("document.body.dataset.state") == "live"
            link = browser.evaluate("document.querySelector('#jobs td.name a').textContent")
            assert link == NAME
            # crest serve shows its gRPC calls: the CreateJob above.
            rpcs = browser.wait_for(f"(r => r.CreateJob && r)({RPC_ROWS})", WAIT_S)
            assert rpcs["CreateJob"][:3] == ["1", "0", NONE]
            # Its link leads to the job page, which follows its own event stream.
            browser.evaluate("document.querySelector('#jobs td.name a').click()")
            browser.wait_for(f"document.title === {f'crest · {NAME}'!r}", WAIT_S)
            browser.wait_for("Number(document.body.dataset.updates) >= 1", WAIT_S)
            assert browser.evaluate("document.body.dataset.state") == "live"
            assert browser.evaluate("location.pathname") == f"/jobs/{job_id}"
    finally:
        process.terminate()
        process.wait(timeout=WAIT_S)
        if process.stdout is not None:
            process.stdout.close()
        log.close()


# Charts the live job does not draw: a single category (one rank, one class), and tick labels
# as wide as a large data set's class sizes, on both y axes.
EDGE_CASES = """
const el = (id) => document.getElementById(id);
charts.draw(el('chart-one'), {x: charts.categories('rank'),
  series: [charts.bars('selection work', charts.colors.purple, 0.6)],
  axes: [charts.axis('% of trainer time')], scales: {}}, [[0], [40]]);
charts.draw(el('chart-wide'), {x: charts.categories('class'),
  series: [charts.bars('class size', '#c6dbef', 0.8, {scale: 'n'}),
           charts.dots('learned %', charts.colors.orange, {scale: '%'})],
  axes: [charts.axis('examples', {scale: 'n'}), charts.rightAxis('%', 'learned %')],
  scales: {n: {range: (u, min, max) => [0, max * 1.05]}, '%': {range: () => [0, 100]}}},
  [[0, 1, 2, 3, 4, 5, 6], [41000, 39000, 12000, 800, 24000, 4000, 1999999],
   [0, 10, 20, 30, 40, 50, 60]]);
"""


def test_axes_fit_their_tick_labels_and_a_single_category_is_centred(tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    static = STATIC_DIR.as_uri()
    page = tmp_path / "charts.html"
    page.write_text(
        f'<link rel="stylesheet" href="{static}/vendor/uplot/uPlot.min.css">'
        f'<link rel="stylesheet" href="{static}/dashboard.css">'
        '<div class="card" style="width: 320px"><div class="chart" id="chart-one"></div>'
        '<div class="chart" id="chart-wide"></div></div>'
        f'<script src="{static}/vendor/uplot/uPlot.iife.min.js"></script>'
        f'<script src="{static}/charts.js"></script>'
        f"<script>{EDGE_CASES}</script>"
    )
    with Chromium(binary, tmp_path / "profile", VIEWPORT, timeout_s=WAIT_S) as browser:
        browser.add_init_script(RECORD_CANVAS_TEXT)
        browser.navigate(page.as_uri())
        browser.wait_for("document.querySelectorAll('.chart canvas').length === 2", WAIT_S)
        # One rank: its bar in the middle, not at the left edge of a 0-100 axis.
        x = browser.evaluate("document.getElementById('chart-one')._plot.scales.x")
        assert [x["min"], x["max"]] == [-0.5, 0.5]
        layout = _assert_readable(browser)
        assert "2,000,000" in layout["charts"]["wide"]["texts"], layout
