"""docs/configuration.md is generated from ServeSettings and must match it exactly."""

from __future__ import annotations

import re

from crest.config_reference import DEFAULT_OUT, OTHER_VARIABLES, render, serve_flags
from crest.service.settings import ServeSettings
from tests.deploy.manifests import ROOT, SETTINGS_ENV, parse_crest

SOURCES = ["crest", "bench", "client", "proto", "service", "worker", "examples"]


def test_configuration_md_is_regenerated_from_the_settings() -> None:
    committed = (ROOT / DEFAULT_OUT).read_text(encoding="utf-8")
    assert committed == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_setting_has_a_row_with_its_variable_and_a_working_flag() -> None:
    page, flags = render(), serve_flags()
    assert set(flags) == set(ServeSettings.model_fields)
    for env, name in SETTINGS_ENV.items():
        (row,) = [line for line in page.splitlines() if line.startswith(f"| `{name}` |")]
        assert f"`{env}`" in row and f"`{flags[name]}`" in row
        assert getattr(parse_crest(["serve", flags[name], "1"]), name) is not None


def test_every_crest_variable_the_code_reads_is_documented() -> None:
    documented = set(SETTINGS_ENV) | {name for name, _, _ in OTHER_VARIABLES}
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for name in re.findall(r"\bCREST_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
                assert name in documented, f"{path.relative_to(ROOT)}: {name} is undocumented"
