"""Benchmark of the warm Docker sandbox against per-call ``docker exec`` and ``docker run``.

    python -m loadtests.bench_sandbox --calls 200

Also ``officeray bench sandbox [--json [FILE]]``. Prints p50/p95 (milliseconds) of one trivial step (a
``math_calculator`` evaluation of ``2+3*4``) run three ways, in one run:

* ``warm``: through the warm sandbox (protocol round trip + the agent's fork of a worker);
* ``exec``: ``docker exec`` of a one-off ``python3`` doing the same evaluation, in the same container;
* ``run``: ``docker run --rm`` of that one-off process (a fresh container per step);

plus the bare protocol round trip (``ping``), and the ratios exec/warm and run/warm. Counts are
bounded (``--calls`` <= 2000, ``docker run`` at most ``--run-calls`` <= 50 times), so the benchmark
takes well under a minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from loadtests.bench_format import BenchResult, Column, Table, Target, add_json_argument, emit
from officeray.stats import percentile

__all__ = ["format_report", "main", "measure", "result_of", "run_bench"]

MAX_CALLS = 2000
MAX_RUN_CALLS = 50


def measure(fn: Callable[[], object], count: int, warmup: int = 3) -> list[float]:
    for _ in range(min(warmup, count)):
        fn()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


TRIVIAL_EXPRESSION = "2+3*4"
TRIVIAL_STEP_CODE = (
    f"from tools_sandbox.agent.tools.math_calculator import evaluate; evaluate({TRIVIAL_EXPRESSION!r})"
)
"""The same trivial step (a math_calculator evaluation) as a one-off process for exec and run."""

TARGET_WARM_P50_MS = 5.0
TARGET_RATIO_VS_EXEC = 5.0

LABELS = {
    "ping": "warm sandbox: protocol round trip",
    "warm": "warm sandbox: trivial step",
    "exec": "docker exec: trivial step",
    "run": "docker run --rm: trivial step",
}


def run_bench(calls: int = 200, exec_calls: int | None = None, run_calls: int = 10) -> dict[str, Any]:
    """Measure the trivial step three ways in one run; returns the report (milliseconds).

    Raises :class:`tools_sandbox.image.DockerUnavailable` when Docker cannot be reached.
    """
    calls = max(1, min(calls, MAX_CALLS))
    exec_calls = max(1, min(exec_calls or calls, MAX_CALLS))
    run_calls = max(1, min(run_calls, MAX_RUN_CALLS))

    from tools_sandbox.docker_sandbox import DockerSandbox
    from tools_sandbox.image import docker_client, ensure_image

    client = docker_client()
    image = ensure_image(client)
    samples: dict[str, list[float]] = {}
    sandbox = DockerSandbox(image, client=client)
    started = time.perf_counter()
    sandbox.start()
    cold_ms = (time.perf_counter() - started) * 1000
    try:
        samples["ping"] = measure(sandbox.ping, calls)
        samples["warm"] = measure(
            lambda: sandbox.call("math_calculator", {"expression": TRIVIAL_EXPRESSION}, timeout_s=10), calls
        )
        container = sandbox.container

        def docker_exec() -> None:
            code, _ = container.exec_run(["python3", "-c", TRIVIAL_STEP_CODE], user="65534:65534")
            assert code == 0

        samples["exec"] = measure(docker_exec, exec_calls)
    finally:
        sandbox.stop()

    def docker_run() -> None:
        client.containers.run(image, ["python3", "-c", TRIVIAL_STEP_CODE], remove=True, network_mode="none")

    samples["run"] = measure(docker_run, run_calls, warmup=1)

    stats: dict[str, dict[str, Any]] = {
        key: {
            "label": LABELS[key],
            "n": len(values),
            "p50_ms": percentile(values, 50),
            "p95_ms": percentile(values, 95),
        }
        for key, values in samples.items()
    }
    p50 = {key: percentile(values, 50) for key, values in samples.items()}
    warm = p50["warm"]
    ratios = {"exec_over_warm": p50["exec"] / warm, "run_over_warm": p50["run"] / warm}
    raw = {"image": image, "cold_start_ms": cold_ms, "measures": stats, "ratios_p50": ratios}
    return result_of(raw).to_dict()


def result_of(raw: dict[str, Any]) -> BenchResult:
    """The shared result format of the raw measurements (``image``, ``cold_start_ms``, ``measures``,
    ``ratios_p50``), which it keeps as they are."""
    ratios = raw["ratios_p50"]
    table = Table(
        "trivial step, three ways (milliseconds)",
        [
            Column("label", "measure"),
            Column("n", "n"),
            Column("p50_ms", "p50 ms", ".2f"),
            Column("p95_ms", "p95 ms", ".2f"),
        ],
        [dict(stat) for stat in raw["measures"].values()],
    )
    return BenchResult(
        benchmark="sandbox",
        title="bench sandbox: warm sandbox vs docker exec vs docker run",
        tables=[table],
        targets=[
            Target(
                "warm",
                "warm sandbox p50 of a trivial step",
                raw["measures"]["warm"]["p50_ms"],
                TARGET_WARM_P50_MS,
                "<=",
                "ms",
            ),
            Target(
                "ratio",
                "docker exec p50 / warm p50",
                ratios["exec_over_warm"],
                TARGET_RATIO_VS_EXEC,
                ">=",
                "x",
                ".1f",
            ),
        ],
        notes=[
            f"image {raw['image']}; cold start of a sandbox (create + start + first ping): "
            f"{raw['cold_start_ms']:.0f} ms",
            f"p50 ratios: docker exec / warm = {ratios['exec_over_warm']:.1f}x, "
            f"docker run / warm = {ratios['run_over_warm']:.1f}x",
        ],
        extra=raw,
    )


def format_report(report: dict[str, Any]) -> str:
    """The text of a report returned by :func:`run_bench` (or read back from its JSON)."""
    return BenchResult.from_dict(report).format_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_sandbox", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--calls", type=int, default=200, help=f"samples per warm measurement (<= {MAX_CALLS})"
    )
    parser.add_argument("--exec-calls", type=int, default=None, help="docker exec samples (default: --calls)")
    parser.add_argument(
        "--run-calls", type=int, default=10, help=f"docker run --rm samples (<= {MAX_RUN_CALLS})"
    )
    add_json_argument(parser)
    args = parser.parse_args(argv)
    from tools_sandbox.image import DockerUnavailable

    try:
        report = run_bench(args.calls, args.exec_calls, args.run_calls)
    except DockerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    emit(BenchResult.from_dict(report), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
