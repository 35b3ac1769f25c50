"""The ``officeray`` commands of this package: ``loadtest`` and ``bench sandbox|overhead|memory``.

The CLI (:mod:`cluster.cli`) sits in an inner layer and never imports ``loadtests``; it finds these
through the ``officeray.commands`` entry points of ``pyproject.toml``::

    [project.entry-points."officeray.commands"]
    bench = "loadtests.commands:add_bench"
    loadtest = "loadtests.commands:add_loadtest"

Each function adds its subparser and sets :data:`cluster.cli.RUN_COMMAND` to the function that
runs it and returns the exit code. Locust, Ray and matplotlib are imported only when
a command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from cluster.cli import RUN_COMMAND
from loadtests import bench_memory, bench_overhead, bench_reuse, loadtest
from loadtests.bench_format import add_json_argument

CONFIG_HELP = "YAML config file (default: $OFFICERAY_CONFIG)"


def add_loadtest(sub: Any) -> None:
    """``officeray loadtest``: a bounded locust run with a report (:mod:`loadtests.loadtest`)."""
    lt = sub.add_parser(
        "loadtest",
        help="a bounded locust load test (starts the system unless --host) with report.json/html and plots",
    )
    loadtest.add_arguments(lt)
    lt.add_argument(
        "--config", metavar="FILE", help="config of the system it starts (default: loadtests/stack.yaml)"
    )
    lt.set_defaults(**{RUN_COMMAND: _run_loadtest})


def _run_loadtest(args: argparse.Namespace) -> int:
    return loadtest.run_from_args(args, args.config)


def add_bench(sub: Any) -> None:
    """``officeray bench sandbox`` (:mod:`loadtests.bench_sandbox`), ``officeray bench overhead``
    (:mod:`loadtests.bench_overhead`) and ``officeray bench memory`` (:mod:`loadtests.bench_memory`)."""
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bsb = bench_sub.add_parser(
        "sandbox", help="a trivial step through the warm sandbox, docker exec and docker run, with ratios"
    )
    bsb.add_argument("--calls", type=int, default=200, help="samples per warm measurement")
    bsb.add_argument("--run-calls", type=int, default=10, help="docker run samples")
    add_json_argument(bsb)
    bsb.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    bsb.set_defaults(**{RUN_COMMAND: _run_bench_sandbox})
    bov = bench_sub.add_parser(
        "overhead",
        help="task latency against the ideal critical path at 1..1000 concurrent, CPU per task, and CPU "
        "per task with telemetry export on and off",
    )
    bench_overhead.add_arguments(bov)
    bov.set_defaults(**{RUN_COMMAND: _run_bench_overhead})
    bme = bench_sub.add_parser(
        "memory",
        help="encoder throughput (batch 1 and 64), vector search latency, size and build time at 1k..100k "
        "entries (flat against HNSW), and HNSW recall@10",
    )
    bench_memory.add_arguments(bme)
    bme.set_defaults(**{RUN_COMMAND: _run_bench_memory})
    bre = bench_sub.add_parser(
        "reuse",
        help="planning and task latency of a new task against its near-duplicate (planned from memory)",
    )
    bench_reuse.add_arguments(bre)
    bre.set_defaults(**{RUN_COMMAND: _run_bench_reuse})


def _check_config(args: argparse.Namespace) -> None:
    """A bad ``--config`` is refused before anything starts (a ConfigError: exit 2)."""
    from officeray.config import load_settings

    load_settings(args.config)


def _run_bench_sandbox(args: argparse.Namespace) -> int:
    from loadtests.bench_format import BenchResult, emit
    from loadtests.bench_sandbox import run_bench

    _check_config(args)
    emit(BenchResult.from_dict(run_bench(args.calls, run_calls=args.run_calls)), args.json)
    return 0


def _run_bench_overhead(args: argparse.Namespace) -> int:
    _check_config(args)
    return bench_overhead.run_from_args(args)


def _run_bench_memory(args: argparse.Namespace) -> int:
    return bench_memory.run_from_args(args)


def _run_bench_reuse(args: argparse.Namespace) -> int:
    _check_config(args)
    return bench_reuse.run_from_args(args)
