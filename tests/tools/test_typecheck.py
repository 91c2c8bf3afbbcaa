"""tools/typecheck.py: the package tree it builds for mypy, and the paths it reports."""

import importlib.util
import tomllib
from pathlib import Path

import crest.service
import crest.service.dashboard

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("typecheck", ROOT / "tools" / "typecheck.py")
assert _spec is not None and _spec.loader is not None
typecheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(typecheck)


def dirs() -> dict[str, Path]:
    return typecheck.package_dirs(tomllib.loads((ROOT / "pyproject.toml").read_text()))


def test_each_package_maps_to_the_folder_it_installs_from() -> None:
    packages = dirs()
    assert packages["crest"] == ROOT / "crest"
    assert packages["crest.proto.v1"] == ROOT / "proto" / "v1"
    # Not in package-dir: under its parent's folder, where the editable install finds it too.
    assert packages["crest.service.dashboard"] == ROOT / "service" / "dashboard"
    assert Path(crest.service.dashboard.__file__).parent == packages["crest.service.dashboard"]
    assert Path(crest.service.__file__).parent == packages["crest.service"]
    assert all((folder / "__init__.py").is_file() for folder in packages.values())


def test_the_tree_holds_the_modules_and_stubs_only(tmp_path: Path) -> None:
    typecheck.build_tree(dirs(), tmp_path)
    service = tmp_path / "crest" / "service"
    assert (service / "job.py").resolve() == ROOT / "service" / "job.py"
    assert (service / "dashboard" / "app.py").is_symlink()
    assert (tmp_path / "crest" / "proto" / "v1" / "coordinator_pb2.pyi").is_file()
    assert not (tmp_path / "crest" / "proto" / "v1" / "coordinator.proto").exists()
    assert not (service / "static").exists()


def test_reports_name_the_source_files_even_from_an_earlier_tree(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    packages = dirs()
    for tree in ("/tmp/crest-typecheck-now", "/tmp/crest-typecheck-stale"):  # cached errors
        line = f"{tree}/crest/service/dashboard/app.py:12: error: Bad  [misc]"
        assert (
            typecheck.source_path(line, packages)
            == "service/dashboard/app.py:12: error: Bad  [misc]"
        )
    assert typecheck.source_path("Found 1 error in 1 file", packages) == "Found 1 error in 1 file"
    assert typecheck.source_path("client/x.py:3: note: hi", packages) == "client/x.py:3: note: hi"
