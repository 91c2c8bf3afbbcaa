"""``crest demo`` (``make demo``): the whole architecture on one machine, in about a minute.

Starts ``crest serve`` on a loopback port (in-memory store, dashboard on another port), then
trains the benchmark's 1-D CNN on W1 (MNIST-1D) and W2 (its redundant, noisily labelled
variant) with Full, Random, CREST and auto, CREST and auto talking gRPC to the coordinator,
and prints the comparison.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from crest.client.remote import RemoteCoordinator
from crest.compare import E2EPlan, TrainSetup, format_table, run_e2e, write_json

DEMO_PLAN = E2EPlan(workloads=("w1", "w2"), seeds=(0,), fracs=(0.1,), train=TrainSetup(epochs=10))


@contextmanager
def coordinator(*flags: str):
    """``crest serve`` in a subprocess; yields ``(grpc address, dashboard url)``.

    Both ports are 0: the server binds free ones and prints them. (A port picked here and
    bound later can be taken meanwhile, and once was: crest serve starts its embedded Ray,
    whose processes bind ephemeral ports, before it binds its own.)
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "crest.cli", "serve", "--port", "0", "--dashboard-port", "0",
         "--log-level", "WARNING", *flags],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = [process.stdout.readline() if process.stdout else "" for _ in range(2)]
        if not lines[0].startswith("crest coordinator listening on "):
            raise RuntimeError(f"crest serve did not start: {''.join(lines)}")
        port = lines[0].rsplit(":", 1)[1].strip()
        yield f"127.0.0.1:{port}", lines[1].split(" on ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()


def run_demo(out: Path, progress: bool = True, plan: E2EPlan = DEMO_PLAN) -> dict[str, Any]:
    with coordinator() as (address, dashboard):
        print(f"coordinator: {address} (gRPC)   dashboard: {dashboard}  <- open it while this runs")
        with RemoteCoordinator(address) as remote:
            result = run_e2e(plan, remote, progress=progress)
    print()
    print(format_table(result["summary"]))
    write_json(result, out)
    print(f"\nwrote {out}. Full benchmark: `crest bench e2e` (docs/benchmarks.md).")
    return result


def quick(plan: E2EPlan = DEMO_PLAN) -> E2EPlan:
    """An even shorter demo (tests): a small W1 only."""
    return replace(plan, workloads=("w1",), num_samples=5_000, methods=("random", "crest"))
