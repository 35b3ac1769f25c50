"""Benchmark of the warm Docker sandbox against per-call ``docker exec`` and ``docker run``.

    python -m loadtests.bench_sandbox --calls 200

Prints p50/p95 (milliseconds) of:

* ``ping``: a protocol round trip to the warm agent (the fixed cost of every call);
* ``math``: a warm ``math_calculator`` call (round trip + the agent's fork of a worker);
* ``exec``: ``docker exec`` of ``python3 -c pass`` in the same container (SDK ``exec_run``);
* ``run``: ``docker run --rm`` of ``python3 -c pass`` (a fresh container per call);

and the ratios exec/ping, exec/math and run/math. Counts are bounded (``--calls`` <= 2000, ``docker
run`` at most ``--run-calls`` <= 50 times), so the benchmark takes well under a minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

MAX_CALLS = 2000
MAX_RUN_CALLS = 50


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure(fn: Callable[[], object], count: int, warmup: int = 3) -> list[float]:
    for _ in range(min(warmup, count)):
        fn()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


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
    args = parser.parse_args(argv)
    calls = max(1, min(args.calls, MAX_CALLS))
    exec_calls = max(1, min(args.exec_calls or calls, MAX_CALLS))
    run_calls = max(0, min(args.run_calls, MAX_RUN_CALLS))

    from tools_sandbox.docker_sandbox import DockerSandbox
    from tools_sandbox.image import DockerUnavailable, docker_client, ensure_image

    try:
        client = docker_client()
    except DockerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    image = ensure_image(client)
    results: dict[str, list[float]] = {}
    sandbox = DockerSandbox(image, client=client)
    started = time.perf_counter()
    sandbox.start()
    cold_ms = (time.perf_counter() - started) * 1000
    try:
        results["ping"] = measure(sandbox.ping, calls)
        results["math"] = measure(
            lambda: sandbox.call("math_calculator", {"expression": "2+3*4"}, timeout_s=10), calls
        )
        container = sandbox.container

        def docker_exec() -> None:
            code, _ = container.exec_run(["python3", "-c", "pass"], user="65534:65534")
            assert code == 0

        results["exec"] = measure(docker_exec, exec_calls)
    finally:
        sandbox.stop()
    if run_calls:

        def docker_run() -> None:
            client.containers.run(image, ["python3", "-c", "pass"], remove=True, network_mode="none")

        results["run"] = measure(docker_run, run_calls, warmup=1)

    print(f"image {image}; cold start of a sandbox (create + start + first ping): {cold_ms:.0f} ms")
    print(f"{'measure':<40} {'n':>5} {'p50 ms':>9} {'p95 ms':>9}")
    labels = {
        "ping": "warm sandbox ping round trip",
        "math": "warm math_calculator call",
        "exec": "docker exec python3 -c pass",
        "run": "docker run --rm python3 -c pass",
    }
    for key, samples in results.items():
        p50, p95 = percentile(samples, 50), percentile(samples, 95)
        print(f"{labels[key]:<40} {len(samples):>5} {p50:>9.2f} {p95:>9.2f}")
    med = {key: percentile(samples, 50) for key, samples in results.items()}
    print(f"ratio exec/ping p50: {med['exec'] / med['ping']:.1f}x", end="; ")
    print(f"exec/math p50: {med['exec'] / med['math']:.1f}x")
    if "run" in med:
        print(f"ratio run/math p50: {med['run'] / med['math']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
