"""The ``crest`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # crest.compare imports torch: not for --help
    from crest.compare import CrestSetup, E2EPlan


def _e2e_plan(args: argparse.Namespace) -> E2EPlan:
    """The benchmark plan that ``crest bench e2e``'s arguments ask for."""
    from crest.compare import E2EPlan, quick_plan

    plan = E2EPlan()
    if args.quick:
        plan = quick_plan(plan)
    if args.seeds is not None or args.first_seed:
        count = len(plan.seeds) if args.seeds is None else args.seeds
        plan = replace(plan, seeds=tuple(range(args.first_seed, args.first_seed + count)))
    if args.fracs:
        plan = replace(plan, fracs=tuple(args.fracs))
    if args.workloads:
        plan = replace(plan, workloads=tuple(args.workloads))
    if args.methods:
        plan = replace(plan, methods=tuple(args.methods))
    if args.no_full:
        plan = replace(plan, full=False)
    if args.epochs:
        plan = replace(plan, train=replace(plan.train, epochs=args.epochs))
    if args.crest:
        plan = replace(plan, crest=_crest_setup(plan.crest, args.crest))
    return plan


def _e2e(args: argparse.Namespace) -> int:
    from crest.compare import (
        format_class_table,
        format_monitor_table,
        format_noise_table,
        format_pipeline_table,
        format_table,
        run_e2e,
        write_json,
    )
    from crest.embedded import local_coordinator

    if args.merge:
        return _e2e_merge(args)
    plan = _e2e_plan(args)
    partial = Path(args.out).with_suffix(".partial.json")
    if args.placement == "separate":
        result = _e2e_separate(plan, args, partial)
    else:
        with local_coordinator() as coordinator:
            result = run_e2e(plan, coordinator, progress=not args.no_progress, partial=partial)
    write_json(result, Path(args.out))  # first: a table that fails to print loses no run
    partial.unlink(missing_ok=True)
    print(format_table(result["summary"]))
    print()
    print(format_pipeline_table(result["summary"]))
    print()
    print(format_class_table(result["summary"]))
    print()
    print(format_noise_table(result["summary"]))
    print()
    print(format_monitor_table(result["runs"]))
    print(f"\nwrote {args.out}")
    return 0


def _crest_setup(base: CrestSetup, overrides: str) -> CrestSetup:
    """``base`` (a ``CrestSetup``) with the ``--crest`` JSON's fields; unknown or mistyped
    input exits with the fields that exist."""
    from dataclasses import fields

    try:
        values = json.loads(overrides)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--crest is not JSON ({err}): {overrides!r}") from None
    if not isinstance(values, dict):
        raise SystemExit(f"--crest takes a JSON object, got {overrides!r}")
    known = {f.name for f in fields(base)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"--crest: unknown field(s) {unknown}; known: {sorted(known)}")
    return replace(base, **values)


def _e2e_merge(args: argparse.Namespace) -> int:
    """The tables of earlier runs, from their JSON files (partial ones too), and OUT with
    all of their runs; a (workload, method, fraction, seed) run in several files counts once,
    from the first file that has it."""
    from crest.compare import (
        format_monitor_table,
        format_noise_table,
        format_table,
        merge_results,
        write_json,
    )

    result = merge_results([Path(path) for path in args.merge], args.methods, args.fracs)
    print(format_table(result["summary"]))
    print()
    print(format_noise_table(result["summary"]))
    print()
    print(format_monitor_table(result["runs"]))
    write_json(result, Path(args.out))
    print(f"\nwrote {args.out}")
    return 0


def _e2e_separate(plan, args: argparse.Namespace, partial: Path) -> dict:
    """The trainer alone on core 0 (one torch thread); the coordinator and its selector
    actor on core 1, in a ``crest serve`` process of their own."""
    from crest.bench.service import coordinator_process
    from crest.client.remote import RemoteCoordinator
    from crest.compare import run_e2e
    from crest.worker.placement import available_cores, pin_current_thread

    cores = available_cores()
    if len(cores) < 2:
        raise SystemExit(f"--placement separate needs 2 cores, this process may use {cores}")
    trainer, selection = cores[:1], cores[1:2]
    serve_flags = ["--coordinator-cores", str(selection[0]), "--selector-cores",
                   str(selection[0]), "--ray-num-cpus", "1"]  # fmt: skip
    with coordinator_process(*serve_flags) as (address, _dashboard, _pid):
        pin_current_thread(trainer)
        with RemoteCoordinator(address) as coordinator:
            result = run_e2e(plan, coordinator, progress=not args.no_progress, partial=partial)
    result["placement"] = {"trainer_cores": list(trainer), "selection_cores": list(selection)}
    return result


def _demo(args: argparse.Namespace) -> int:
    from crest.demo import quick, run_demo

    if args.quick:
        run_demo(Path(args.out), progress=not args.no_progress, plan=quick())
    else:
        run_demo(Path(args.out), progress=not args.no_progress)
    return 0


def _selection(args: argparse.Namespace) -> int:
    from crest.bench.selection import SelectionPlan, format_tables, quick_plan, run_selection_bench
    from crest.compare import write_json

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
    from crest.compare import write_json

    if args.ranks:
        from crest.bench.ranks import MODES as ranks_modes
        from crest.bench.ranks import format_table as ranks_table
        from crest.bench.ranks import run_ranks_bench

        modes = tuple(args.modes) if args.modes else ranks_modes
        result = run_ranks_bench(args.ranks, args.steps, args.steps_per_s, modes,
                                 not args.no_replicas, args.replica_steps)  # fmt: skip
        table, out = ranks_table(result), args.out or "results/service_ranks.json"
    else:
        from crest.bench.service import format_table, run_service_bench

        result = run_service_bench(quick=args.quick)
        table, out = format_table(result), args.out or "results/service.json"
    print(table)
    write_json(result, Path(out))
    print(f"\nwrote {out}")
    return 0


def _loader_bench(args: argparse.Namespace) -> int:
    from crest.bench.loader import LoaderPlan, format_table, quick_plan, run_loader_bench
    from crest.compare import write_json

    plan = quick_plan() if args.quick else LoaderPlan()
    if args.repeats is not None:
        plan = replace(plan, repeats=args.repeats)
    if args.workers is not None:
        plan = replace(plan, workers=args.workers)
    if args.strategy is not None:
        plan = replace(plan, strategy=args.strategy)
    result = run_loader_bench(plan)
    print(format_table(result))
    write_json(result, Path(args.out))
    print(f"\nwrote {args.out}")
    return 0


def _faults_bench(args: argparse.Namespace) -> int:
    from crest.bench.faults import SCENARIOS, FaultPlan, format_table, quick_plan, run_faults
    from crest.compare import write_json

    unknown = set(args.scenarios or ()) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenarios {sorted(unknown)}; valid: {' '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    plan = quick_plan() if args.quick else FaultPlan()
    sizes = {
        "scenarios": tuple(args.scenarios) if args.scenarios else None,
        "kills": args.kills,
        "kill_selector": args.selector,
        "redis_kills": args.redis_kills,
        "redis_fsync": args.redis_fsync,
        "actor_kills": args.actor_kills,
        "replica_kills": args.replica_kills,
        "lease_s": args.lease_s,
        "soak_sessions": args.soak_sessions,
        "soak_s": args.soak_s,
        "fuzz_n": args.fuzz_n,
        "seed": args.seed,
    }
    plan = replace(plan, **{name: value for name, value in sizes.items() if value is not None})
    result = run_faults(plan)
    print(format_table(result))
    write_json(result, Path(args.out))
    print(f"\nwrote {args.out}")
    if not result["ok"]:
        print(f"a promise was broken; logs kept in {result['logs']}", file=sys.stderr)
    return 0 if result["ok"] else 1


def _gpu_bench(args: argparse.Namespace) -> int:
    from crest.bench.gpu import GpuPlan, format_table, run_gpu_check
    from crest.compare import write_json

    result = run_gpu_check(GpuPlan(ray=not args.no_ray))
    print(format_table(result))
    write_json(result, Path(args.out))
    print(f"\nwrote {args.out}")
    return 0 if result["ok"] else 1


def _scale_bench(args: argparse.Namespace) -> int:
    from crest.bench.scale import ScalePlan, format_table, quick_plan, run_scale, select_cases
    from crest.compare import write_json

    plan = quick_plan() if args.quick else ScalePlan()
    try:
        plan = select_cases(plan, args.sizes, args.regions)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if args.max_s is not None:
        plan = replace(plan, cases=tuple(replace(c, max_s=args.max_s) for c in plan.cases))
    if args.jobs is not None and plan.many is not None:
        plan = replace(plan, many=replace(plan.many, jobs=args.jobs))
    if args.selector is not None and plan.many is not None:
        plan = replace(plan, many=replace(plan.many, selector=args.selector))
    if args.pace_s is not None and plan.many is not None:
        plan = replace(plan, many=replace(plan.many, pace_s=args.pace_s))
    result = run_scale(plan)
    print(format_table(result))
    write_json(result, Path(args.out))
    print(f"\nwrote {args.out}")
    if not result["ok"]:
        print(f"a case failed; logs kept in {result['logs']}", file=sys.stderr)
    return 0 if result["ok"] else 1


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


def _channel(args: argparse.Namespace):
    """A channel to ``args.address`` (TLS with ``--tls-ca`` or ``$CREST_TLS_CA``) and the
    token's metadata (``--token`` or ``$CREST_TOKEN``).

    The environment defaults let one probe command serve plain and TLS deployments alike
    (the compose healthcheck and the Kubernetes probes run ``crest health`` unchanged).
    """
    import os

    import grpc

    token = args.token or os.environ.get("CREST_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    tls_ca = args.tls_ca or os.environ.get("CREST_TLS_CA")
    if tls_ca:
        credentials = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
        server_name = args.tls_server_name or os.environ.get("CREST_TLS_SERVER_NAME")
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        return grpc.secure_channel(args.address, credentials, options=options), metadata
    return grpc.insecure_channel(args.address), metadata


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel, metadata = _channel(args)
    with channel:
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


def _when(unix_time: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_time)) if unix_time else "-"


def _jobs(args: argparse.Namespace) -> int:
    import grpc

    from crest.proto.v1 import coordinator_pb2 as pb
    from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc

    channel, metadata = _channel(args)
    with channel:
        stub = pb_grpc.CoordinatorStub(channel)
        try:
            if args.action == "list":
                jobs: list[pb.JobListing] = []
                more = True
                while more:  # a long list comes in several replies
                    after = jobs[-1].job_id if jobs else ""
                    reply = stub.ListJobs(pb.ListJobsRequest(after=after), timeout=args.timeout,
                                          metadata=metadata)  # fmt: skip
                    jobs += reply.jobs
                    more = reply.more and bool(reply.jobs)
                rows = [("JOB", "NAME", "STEP", "FINISHED", "EXPIRES")]
                rows += [(j.job_id, j.name or "-", f"{j.step}/{j.total_steps}",
                          _when(j.finished_at), _when(j.expires_at)) for j in jobs]  # fmt: skip
                widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
                for row in rows:
                    line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                    print(line.rstrip())
                return 0
            for job_id in args.job_ids:
                reply = stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id), timeout=args.timeout,
                                       metadata=metadata)  # fmt: skip
                print(f"deleted {job_id}" if reply.deleted else f"no job {job_id} (nothing to do)")
        except grpc.RpcError as err:
            print(f"{args.address}: {err.code().name} {err.details()}", file=sys.stderr)
            return 1
    return 0


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    """How the operator commands reach ``crest serve``."""
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--token", help="default: $CREST_TOKEN")
    parser.add_argument(
        "--tls-ca", help="PEM of the CA that signed the coordinator's certificate: use TLS "
        "(default: $CREST_TLS_CA)",
    )  # fmt: skip
    parser.add_argument(
        "--tls-server-name", help="the name the coordinator's certificate was issued to, when "
        "it differs from the address's host (default: $CREST_TLS_SERVER_NAME)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=5.0)


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


# crest.workloads.WORKLOADS' names, spelled out: importing it would import torch for --help.
E2E_WORKLOADS = (
    "w1",
    "w2",
    "w2-0",
    "w2-30",
    "w3",
    "w4",
    "w5",
    "w5-10",
    "w5-c16",
    "w5-c30",
    "w5-c300",
)


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
    _add_client_flags(health)
    health.set_defaults(func=_health)

    jobs = commands.add_parser("jobs", help="list or delete a coordinator's jobs")
    action = jobs.add_subparsers(dest="action", required=True)
    listing = action.add_parser("list", help="every job: progress, finish and expiry times")
    _add_client_flags(listing)
    delete = action.add_parser(
        "delete", help="remove jobs and their stored state (an unknown job is not an error)"
    )
    delete.add_argument("job_ids", nargs="+", metavar="JOB")
    _add_client_flags(delete)
    jobs.set_defaults(func=_jobs)

    bench = commands.add_parser("bench", help="benchmarks (print a table, write JSON)")
    which = bench.add_subparsers(dest="benchmark", required=True)
    e2e = which.add_parser("e2e", help="Full vs Random vs CREST on MNIST-1D (W1, W2, W3)")
    e2e.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    e2e.add_argument(
        "--first-seed", type=int, default=0, help="the first seed (default 0): seeds from it on"
    )
    e2e.add_argument("--fracs", type=float, nargs="+", help="train fractions (default 0.1 0.2)")
    e2e.add_argument(
        "--workloads",
        nargs="+",
        choices=E2E_WORKLOADS,
        help="W1 MNIST-1D, W2 redundant and noisy (10%% of labels wrong; w2-0 and w2-30: 0%% "
        "and 30%%), W3 imbalanced, W4 W1 with 10%% of labels wrong, W5 100 synthetic classes "
        "(w5-10: 10%% of labels wrong; w5-c16, w5-c30, w5-c300: 16, 30 and 300 classes) "
        "(default: w1 w2 w3)",
    )
    e2e.add_argument(
        "--methods",
        nargs="+",
        choices=[
            "random",
            "crest",
            "auto",
            "crest-balanced",
            "crest-robust",
            "crest-service",
            "auto-service",
            "crest-lookahead",
            "random-stratified",
        ],
        help="besides full (default: random crest auto; crest-balanced is CREST with "
        "class_weighting=balanced; crest-robust with exclude_noisy; crest-service and "
        "auto-service embed on the service side, pipelined; crest-lookahead also draws "
        "coresets from recent region lengths; random-stratified is strategy random through "
        "the coordinator: stratified random batches from its pool, what auto falls back to)",
    )
    e2e.add_argument(
        "--placement",
        choices=["shared", "separate"],
        default="shared",
        help="shared: everything in this process on every core; separate: the trainer on "
        "one core (one thread), a `crest serve` with its selector on another",
    )
    e2e.add_argument("--epochs", type=float, help="full-training epochs (default 30)")
    e2e.add_argument("--crest", help="CREST settings as JSON, e.g. '{\"tau\": 0.2}'")
    e2e.add_argument(
        "--no-full", action="store_true", help="skip Full (and the columns measured against it)"
    )
    e2e.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="train nothing: combine earlier runs' results (e.g. partial ones, or one method "
        "run again) into OUT and print their tables; only --methods and --fracs when given",
    )
    e2e.add_argument("--quick", action="store_true", help="the demo's short plan")
    e2e.add_argument(
        "--out",
        default="results/e2e.json",
        help="the results (the runs so far are in OUT with the suffix .partial.json until the end)",
    )
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
    service.add_argument(
        "--ranks", type=int, nargs="+", metavar="W",
        help="instead: one job of W simulated ranks (per-rank or combined checks, per-rank or "
        "shared region fetches and uploads), e.g. 1024; then shared-service jobs on one vs two "
        "replicas",
    )  # fmt: skip
    service.add_argument(
        "--modes", nargs="+",
        choices=("per-rank", "combined", "shared", "shared-upload", "shared-service"),
        help="--ranks: the modes to run (default all)",
    )  # fmt: skip
    service.add_argument(
        "--no-replicas", action="store_true", help="--ranks: skip the one vs two replicas runs"
    )
    service.add_argument(
        "--replica-steps", type=int, default=150,
        help="--ranks: steps per job of the replica runs (at --steps-per-s)",
    )  # fmt: skip
    service.add_argument("--steps", type=int, default=60, help="--ranks: steps per job")
    service.add_argument(
        "--steps-per-s", type=float, default=10.0, help="--ranks: the pace RPCs/s assume"
    )
    service.add_argument("--out", help="default results/service.json (--ranks: service_ranks.json)")
    service.set_defaults(func=_service_bench)
    loader = which.add_parser("loader", help="CrestLoader against the tensor path, same job")
    loader.add_argument("--quick", action="store_true", help="fewer steps, one repeat")
    loader.add_argument("--repeats", type=int, help="runs of each variant (default 3)")
    loader.add_argument("--workers", type=int, help="the lazy dataset's workers (default 2)")
    loader.add_argument("--strategy", choices=["crest", "random", "auto"], help="default crest")
    loader.add_argument("--out", default="results/loader.json")
    loader.set_defaults(func=_loader_bench)
    faults = which.add_parser(
        "faults", help="coordinator, Redis, actor and replica kills, a soak, fuzzing (reliability)"
    )
    faults.add_argument(
        "--scenarios", nargs="+", help="of coordinator redis actor replica soak fuzz (default: all)"
    )
    faults.add_argument("--kills", type=int, help="coordinator SIGKILLs (default 10)")
    faults.add_argument(
        "--selector", choices=["inprocess", "ray"], help="the kill loop's (default inprocess)"
    )
    faults.add_argument("--redis-kills", type=int, help="default 3")
    faults.add_argument(
        "--redis-fsync", choices=["always", "everysec"], help="Redis's appendfsync (default always)"
    )
    faults.add_argument("--actor-kills", type=int, help="default 9")
    faults.add_argument(
        "--replica-kills", type=int, help="SIGKILLs of the replica owning the job (default 3)"
    )
    faults.add_argument("--lease-s", type=float, help="the replicas' leases (default 5)")
    faults.add_argument("--soak-sessions", type=int, help="default 64")
    faults.add_argument("--soak-s", type=float, help="soak seconds (default 60)")
    faults.add_argument("--fuzz-n", type=int, help="fuzzed requests (default 20,000)")
    faults.add_argument("--seed", type=int, help="of the kill schedule and the fuzzer (default 0)")
    faults.add_argument(
        "--quick", action="store_true", help="the test tier's sizes (about a minute)"
    )
    faults.add_argument("--out", default="results/faults.json")
    faults.set_defaults(func=_faults_bench)
    scale = which.add_parser(
        "scale", help="job sizes up to 10M examples and 1,000 classes, and 100 jobs at once"
    )
    scale.add_argument(
        "--sizes", nargs="+", metavar="SIZE",
        help="of 100k 1M 10M 1.28Mx1000 many (default: all; --quick: 20k many)",
    )  # fmt: skip
    scale.add_argument("--regions", type=int, help="region switches per size (default 1,000)")
    scale.add_argument(
        "--max-s", type=float, help="seconds of region switches per size at most (default 180)"
    )
    scale.add_argument("--jobs", type=int, help="concurrent jobs (default 100)")
    scale.add_argument(
        "--selector", choices=["ray", "inprocess"], help="the many jobs' (default ray)"
    )
    scale.add_argument(
        "--pace-s", type=float,
        help="the many jobs' paced run: simulated training per region and trainer, x U(0.5, "
        "1.5) (default 4; 0: closed loop only)",
    )  # fmt: skip
    scale.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    scale.add_argument("--out", default="results/scale.json")
    scale.set_defaults(func=_scale_bench)
    gpu = which.add_parser(
        "gpu", help="kernel, a selector actor and a short W1 run on the GPU (CPU without one)"
    )
    gpu.add_argument("--no-ray", action="store_true", help="skip the selector actor's check")
    gpu.add_argument("--out", default="results/gpu.json")
    gpu.set_defaults(func=_gpu_bench)
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
