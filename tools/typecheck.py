"""Type-check the ``crest`` package with mypy, laid out the way it installs.

The source folders are not the import package: ``service/`` installs as ``crest.service``,
``proto/v1/`` as ``crest.proto.v1`` and so on (``[tool.setuptools.package-dir]`` in
pyproject.toml), and the editable install resolves them through an import hook that mypy cannot
follow. Run on the folders, mypy would treat every ``crest.*`` import as ``Any`` and hide most
errors. So this script builds the package tree that setuptools would install, as symlinks to
the source files, under a temporary folder, runs ``mypy -p crest`` on it with the settings in
``[tool.mypy]`` (strict for ``crest.proto`` and ``crest.service``), reports the errors at their
source paths, and removes the tree.

Usage: ``python tools/typecheck.py [extra mypy options]`` from anywhere; ``make lint`` runs it.
Exits with mypy's status.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"

# "crest/service/store.py:238: error: ..." and "crest/service/store.py:238:5: note: ...".
_LOCATION = re.compile(r"^(?P<path>[^\s:][^:]*\.pyi?)(?=:\d)")
_TREE = "crest-typecheck-"


def package_dirs(pyproject: dict[str, Any]) -> dict[str, Path]:
    """Map each installed package to its source folder, as setuptools resolves it.

    Args:
        pyproject: the parsed pyproject.toml.

    Returns:
        ``{"crest.service": ROOT / "service", ...}`` for every package in
        ``[tool.setuptools] packages``; a package without its own ``package-dir`` entry lives
        under its nearest mapped parent (``crest.service.dashboard`` in ``service/dashboard``).
    """
    setuptools = pyproject["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    dirs = {}
    for package in setuptools["packages"]:
        parts = package.split(".")
        for cut in range(len(parts), 0, -1):
            parent = ".".join(parts[:cut])
            if parent in mapping:
                dirs[package] = ROOT / mapping[parent] / Path(*parts[cut:])
                break
        else:
            dirs[package] = ROOT / Path(*parts)
    return dirs


def build_tree(dirs: dict[str, Path], dest: Path) -> None:
    """Lay the packages out under ``dest`` as symlinks to their modules and stubs.

    Only ``.py`` and ``.pyi`` files are linked, so folders that are not packages (the
    dashboard's static files, ``proto/v1``'s ``.proto``) stay out of mypy's sight.
    """
    for package, source in dirs.items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for module in sorted(source.iterdir()):
            if module.is_file() and module.suffix in (".py", ".pyi"):
                (target / module.name).symlink_to(module)


def source_path(line: str, dirs: dict[str, Path]) -> str:
    """Rewrite a mypy output line's location from a tree to the file in this checkout.

    mypy's cache keeps the errors of unchanged modules with the path they were found at, in the
    tree of an earlier run, so the package path is taken from after any tree's folder name.
    """
    match = _LOCATION.match(line)
    if match is None or _TREE not in match["path"]:
        return line
    module = Path(match["path"].split(_TREE, 1)[1]).parts[1:]  # drop the tree's suffix
    source = dirs[".".join(module[:-1])] / module[-1]
    return os.path.relpath(source, Path.cwd()) + line[match.end() :]


def main(argv: list[str]) -> int:
    """Build the tree, run mypy on it, print its report with source paths; mypy's status."""
    with PYPROJECT.open("rb") as file:
        pyproject = tomllib.load(file)
    dirs = package_dirs(pyproject)
    with tempfile.TemporaryDirectory(prefix=_TREE) as tmp:
        build_tree(dirs, Path(tmp))
        env = {**os.environ, "MYPYPATH": tmp}
        command = [sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT)]
        result = subprocess.run(
            [*command, *argv, "-p", "crest"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in result.stdout.splitlines():
            print(source_path(line, dirs))
        sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
