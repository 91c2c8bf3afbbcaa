"""The examples run, and each stays a small diff from its plain-PyTorch version."""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import LoopbackCoordinator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["train_mnist1d", "train_mnist1d_ddp", "train_digits"]


def code(path: Path) -> list[str]:
    """Non-blank lines from the first import on, indentation aside (the module docstring is
    prose, and a loop body that moves one level out is not a changed line)."""
    lines = path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("import"))
    return [line.strip() for line in lines[first:] if line.strip()]


@pytest.mark.parametrize("name", EXAMPLES)
def test_crest_version_changes_about_ten_lines(name: str) -> None:
    plain, crest = code(ROOT / "examples/plain" / f"{name}.py"), code(ROOT / f"examples/{name}.py")
    added = [line for line in difflib.ndiff(plain, crest) if line.startswith("+ ")]
    assert len(added) <= 12, "\n".join(added)


def accuracy(output: str) -> float:
    match = re.search(r"test accuracy ([0-9.]+)", output)
    assert match, output
    return float(match.group(1))


@pytest.mark.e2e  # a training subprocess
def test_digits_example_trains() -> None:
    result = subprocess.run(
        [sys.executable, "examples/train_digits.py", "--epochs", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert accuracy(result.stdout) > 0.85


@pytest.mark.e2e
def test_two_rank_torchrun_job(loopback: LoopbackCoordinator) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun comes with torch"
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "examples/train_mnist1d_ddp.py",
         "--address", loopback.address, "--samples", "5000", "--epochs", "40"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    status = loopback.local.job_status("mnist1d-ddp")
    assert status.config.world_size == 2
    assert status.finished
    assert len(status.regions) > 1
    assert accuracy(result.stdout) > 0.3  # 10% of 40 epochs on 4,000 examples: it learns
