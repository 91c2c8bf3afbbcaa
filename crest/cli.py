"""The ``crest`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path


def _e2e(args: argparse.Namespace) -> int:
    from crest.bench.e2e import (
        CrestSetup,
        E2EPlan,
        format_class_table,
        format_table,
        quick_plan,
        run_e2e,
        write_json,
    )
    from crest.embedded import local_coordinator

    plan = E2EPlan()
    if args.quick:
        plan = quick_plan(plan)
    if args.seeds is not None:
        plan = replace(plan, seeds=tuple(range(args.seeds)))
    if args.fracs:
        plan = replace(plan, fracs=tuple(args.fracs))
    if args.workloads:
        plan = replace(plan, workloads=tuple(args.workloads))
    if args.methods:
        plan = replace(plan, methods=tuple(args.methods))
    if args.epochs:
        plan = replace(plan, train=replace(plan.train, epochs=args.epochs))
    if args.crest:
        plan = replace(plan, crest=CrestSetup(**{**vars(plan.crest), **json.loads(args.crest)}))
    with local_coordinator() as coordinator:
        result = run_e2e(plan, coordinator, progress=not args.no_progress)
    print(format_table(result["summary"]))
    print()
    print(format_class_table(result["summary"]))
    write_json(result, Path(args.out))
    print(f"\nwrote {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from crest.demo import quick, run_demo

    if args.quick:
        run_demo(Path(args.out), progress=not args.no_progress, plan=quick())
    else:
        run_demo(Path(args.out), progress=not args.no_progress)
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


def _service_bench(args: argparse.Namespace) -> int:
    from crest.bench.e2e import write_json
    from crest.bench.service import format_table, run_service_bench

    result = run_service_bench(quick=args.quick)
    print(format_table(result))
    write_json(result, Path(args.out))
    print(f"\nwrote {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from crest.service.serve import serve
    from crest.service.settings import ServeSettings

    flags = {
        name: getattr(args, name)
        for name in ServeSettings.model_fields
        if getattr(args, name, None) is not None
    }
    settings = ServeSettings(**flags)
    logging.getLogger().setLevel(settings.log_level)
    asyncio.run(serve(settings))
    return 0


def _health(args: argparse.Namespace) -> int:
    import os

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    token = args.token or os.environ.get("CREST_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(args.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=args.timeout,
                metadata=metadata,
            )  # fmt: skip
        except grpc.RpcError as err:
            print(f"{args.address}: {err.code().name} {err.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    from crest.service.settings import ServeSettings

    for name, field in ServeSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or name} (env CREST_{name.upper()})"
        annotation = str(field.annotation)
        if "float" in annotation:
            parser.add_argument(flag, dest=name, type=float, help=help_text)
        elif "int" in annotation:
            parser.add_argument(flag, dest=name, type=int, help=help_text)
        else:
            parser.add_argument(flag, dest=name, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """The ``crest`` command line (``tests/deploy`` parses the deployment's commands with it)."""
    parser = argparse.ArgumentParser(prog="crest", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the whole service on this machine: a short comparison")
    demo.add_argument("--quick", action="store_true", help="a smaller demo (seconds)")
    demo.add_argument("--out", default="results/demo.json")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)

    serve = commands.add_parser("serve", help="run the coordinator (gRPC) and its dashboard")
    _add_serve_flags(serve)
    serve.set_defaults(func=_serve)

    health = commands.add_parser("health", help="ask a coordinator's health service")
    health.add_argument("--address", default="127.0.0.1:50051")
    health.add_argument("--token", help="default: $CREST_TOKEN")
    health.add_argument("--timeout", type=float, default=5.0)
    health.set_defaults(func=_health)

    bench = commands.add_parser("bench", help="benchmarks (print a table, write JSON)")
    which = bench.add_subparsers(dest="benchmark", required=True)
    e2e = which.add_parser("e2e", help="Full vs Random vs CREST on MNIST-1D (W1, W2, W3)")
    e2e.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    e2e.add_argument("--fracs", type=float, nargs="+", help="train fractions (default 0.1 0.2)")
    e2e.add_argument(
        "--workloads",
        nargs="+",
        choices=["w1", "w2", "w3"],
        help="W1 MNIST-1D, W2 redundant and noisy, W3 imbalanced (default: all)",
    )
    e2e.add_argument(
        "--methods",
        nargs="+",
        choices=["random", "crest", "auto", "crest-balanced"],
        help="besides full (default: random crest auto; crest-balanced is CREST with "
        "class_weighting=balanced)",
    )
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
    service = which.add_parser("service", help="gRPC coordinator latency and throughput")
    service.add_argument("--quick", action="store_true", help="short runs")
    service.add_argument("--out", default="results/service.json")
    service.set_defaults(func=_service_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `crest serve`'s own --log-level (a setting, None unless given) shadows the top-level one;
    # `_serve` applies the setting (flag, CREST_LOG_LEVEL or INFO) itself.
    level = args.log_level or "WARNING"
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
