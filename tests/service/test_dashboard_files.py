"""The dashboard's static files ship with the package and need nothing from the network."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import crest.service.dashboard
from crest.service.dashboard.app import STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]


def test_package_data_globs_cover_every_static_file() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["crest.service"]
    package_dir = STATIC_DIR.parent
    shipped = {p for pattern in globs for p in package_dir.glob(pattern) if p.is_file()}
    on_disk = {p for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert on_disk and on_disk == shipped, sorted(map(str, on_disk - shipped))


def test_pages_load_nothing_from_other_hosts() -> None:
    """Offline machines: no CDN, no absolute URLs in our pages, scripts or styles."""
    own = [p for p in STATIC_DIR.iterdir() if p.suffix in (".html", ".js", ".css")]
    assert {p.name for p in own} >= {"index.html", "job.html", "job.js", "dashboard.css"}
    for path in own:
        text = path.read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"'](https?:)?//", text), path.name
        assert "@import" not in text and "url(http" not in text, path.name


def test_vendored_chart_library_with_its_license() -> None:
    vendor = STATIC_DIR / "vendor" / "uplot"
    assert "MIT License" in (vendor / "LICENSE").read_text()
    banner = (vendor / "uPlot.iife.min.js").read_text()[:60]
    assert banner.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")


def test_dashboard_exports_are_pinned() -> None:
    assert sorted(crest.service.dashboard.__all__) == [
        "ClassPool",
        "DashboardServer",
        "JobDetail",
        "JobSummary",
        "RankRate",
        "RatePoint",
        "RegionMonitor",
        "RpcMethod",
        "SelectionRecord",
        "TrainerShare",
        "close_streams",
        "create_dashboard",
    ]
    for name in crest.service.dashboard.__all__:
        assert hasattr(crest.service.dashboard, name)
