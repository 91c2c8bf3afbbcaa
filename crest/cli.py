"""The ``crest`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path


def _e2e(args: argparse.Namespace) -> int:
    from crest.bench.e2e import CrestSetup, E2EPlan, format_table, quick_plan, run_e2e, write_json
    from crest.embedded import local_coordinator

    plan = E2EPlan()
    if args.quick:
        plan = quick_plan(plan)
    if args.seeds is not None:
        plan = replace(plan, seeds=tuple(range(args.seeds)))
    if args.fracs:
        plan = replace(plan, fracs=tuple(args.fracs))
    if args.epochs:
        plan = replace(plan, train=replace(plan.train, epochs=args.epochs))
    if args.crest:
        plan = replace(plan, crest=CrestSetup(**{**vars(plan.crest), **json.loads(args.crest)}))
    with local_coordinator() as coordinator:
        result = run_e2e(plan, coordinator, progress=not args.no_progress)
    print(format_table(result["summary"]))
    write_json(result, Path(args.out))
    print(f"\nwrote {args.out}")
    return 0


def _selection(args: argparse.Namespace) -> int:
    from crest.bench.e2e import write_json
    from crest.bench.selection import SelectionPlan, format_tables, quick_plan, run_selection_bench

    plan = quick_plan() if args.quick else SelectionPlan()
    if args.no_large:
        plan = replace(plan, large=None)
    if args.no_baselines:
        plan = replace(plan, baselines=False)
    result = run_selection_bench(plan, ray_pool=not args.no_ray)
    print(format_tables(result))
    write_json(result, Path(args.out))
    print(f"\nwrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crest", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="a short Full vs Random vs CREST comparison")
    demo.set_defaults(
        func=_e2e,
        quick=True,
        seeds=None,
        fracs=None,
        epochs=None,
        crest=None,
        out="results/demo.json",
        no_progress=False,
    )

    bench = commands.add_parser("bench", help="benchmarks (print a table, write JSON)")
    which = bench.add_subparsers(dest="benchmark", required=True)
    e2e = which.add_parser("e2e", help="Full vs Random vs CREST on MNIST-1D")
    e2e.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    e2e.add_argument("--fracs", type=float, nargs="+", help="train fractions (default 0.1 0.2)")
    e2e.add_argument("--epochs", type=float, help="full-training epochs (default 30)")
    e2e.add_argument("--crest", help="CREST settings as JSON, e.g. '{\"tau\": 0.2}'")
    e2e.add_argument("--quick", action="store_true", help="the demo's short plan")
    e2e.add_argument("--out", default="results/e2e.json")
    e2e.add_argument("--no-progress", action="store_true")
    e2e.set_defaults(func=_e2e)
    selection = which.add_parser("selection", help="selection kernel, baselines and Ray pool")
    selection.add_argument("--quick", action="store_true", help="fewer points (about a minute)")
    selection.add_argument("--no-ray", action="store_true", help="skip the Ray pool throughput")
    selection.add_argument("--no-large", action="store_true", help="skip the large problem")
    selection.add_argument("--no-baselines", action="store_true", help="skip submodlib, loop")
    selection.add_argument("--out", default="results/selection.json")
    selection.set_defaults(func=_selection)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
