"""Benchmark of ``code_analyzer`` on a large real package (default: the installed ``ray``).

    python -m loadtests.bench_analyzer [FOLDER] --start init --end start_gcs_server [--repeat N]

Runs :func:`~tools_sandbox.agent.tools.code_analyzer.analyze` in this process, as the sandbox agent
does (no sandbox, no staging), and prints the files and functions indexed, the seconds of each run
(wall and CPU; the CPU time is steadier on a shared machine), the seconds of an index-only run (the
end function to itself: every file parsed, a search that stops at once; the rest of a run is
resolving calls and searching), the peak resident memory of the process, and the path found.
``--json [FILE]`` as for the other benchmarks.

The analyzer's own limits (``MAX_FILES``, ``MAX_TOTAL_BYTES``) apply: a larger folder is refused
(exit 2; point it at a subfolder). Through ``officeray run`` a folder is also staged into the
sandbox, within ``MAX_STAGED_FILES`` / ``MAX_STAGED_BYTES``; the notes say whether it fits.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.bench_format import BenchResult, Column, Table, add_json_argument, emit

__all__ = ["default_folder", "main", "run_bench"]

DEFAULT_START = "init"
DEFAULT_END = "start_gcs_server"
"""A path every ``ray.init()`` of a new cluster takes: ``ray._private.worker.init`` to the GCS
server's start. Both names are ambiguous in ``ray`` (7 and 2 functions): reachability decides."""

MAX_REPEAT = 20
"""Most runs of one benchmark (each parses the whole folder again)."""

_MIB = 1024 * 1024


def default_folder() -> Path | None:
    """The installed ``ray`` package's folder (found without importing it), or None."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ``ru_maxrss`` in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def _source_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.py") if p.is_file() and not p.is_symlink())


def run_bench(folder: Path, start: str, end: str, repeat: int = 1) -> BenchResult:
    """Analyze ``folder`` from ``start`` to ``end`` ``repeat`` times, then once end to itself.

    Raises :class:`~tools_sandbox.agent.errors.ToolInputError` as the tool does (unknown name,
    folder over the limits, ambiguous names with no path).
    """
    from tools_sandbox.agent.limits import MAX_STAGED_BYTES, MAX_STAGED_FILES
    from tools_sandbox.agent.tools.code_analyzer import analyze

    baseline_mib = _peak_rss_mib()
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for number in range(1, repeat + 1):
        started, cpu = time.perf_counter(), time.process_time()
        result = analyze(str(folder), start, end)
        rows.append(
            {
                "run": f"{start} -> {end} (run {number})",
                "seconds": time.perf_counter() - started,
                "cpu_seconds": time.process_time() - cpu,
                "files": result["files_indexed"],
                "functions": result["functions_indexed"],
                "hops": result["hops"] if result["found"] else None,
            }
        )
    peak_mib = _peak_rss_mib()
    target = result["path"][-1]["name"] if result["found"] else end
    started, cpu = time.perf_counter(), time.process_time()
    alone = analyze(str(folder), target, target)
    rows.append(
        {
            "run": "index only (end to itself)",
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
            "files": alone["files_indexed"],
            "functions": alone["functions_indexed"],
            "hops": None,
        }
    )
    source = _source_bytes(folder)
    fits = result["files_indexed"] <= MAX_STAGED_FILES and source <= MAX_STAGED_BYTES
    path = [f"{hop['name']} ({hop['file']}:{hop['line']})" for hop in result["path"]]
    notes = [
        f"folder: {folder} ({source / _MIB:.1f} MiB of Python source)",
        f"message: {result['message']}",
        f"path: {' -> '.join(path) if path else '(none)'}",
        f"paths found: {len(result['paths'])}; "
        f"unreachable candidates: {len(result['unreachable_candidates'])}",
        f"skipped files: {len(result['skipped_files'])}",
        f"fits officeray run's staging limits ({MAX_STAGED_FILES} files, {MAX_STAGED_BYTES // _MIB} MiB): "
        + ("yes" if fits else "no"),
    ]
    memory = Table(
        "memory (peak resident set size of this process)",
        [
            Column("baseline", "before MiB", ".0f"),
            Column("peak", "peak MiB", ".0f"),
            Column("growth", "growth MiB", ".0f"),
        ],
        [{"baseline": baseline_mib, "peak": peak_mib, "growth": peak_mib - baseline_mib}],
    )
    runs = Table(
        "code_analyzer runs",
        [
            Column("run", "run"),
            Column("seconds", "seconds", ".2f"),
            Column("cpu_seconds", "cpu s", ".2f"),
            Column("files", "files"),
            Column("functions", "functions"),
            Column("hops", "hops"),
        ],
        rows,
    )
    return BenchResult(
        benchmark="analyzer",
        title=f"code_analyzer on {folder.name}",
        tables=[runs, memory],
        notes=notes,
        extra={"result": {k: v for k, v in result.items() if k != "skipped_files"}},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_analyzer", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "folder", nargs="?", default=None, help="folder to analyze (default: the ray package)"
    )
    parser.add_argument("--start", default=DEFAULT_START, help=f"start function (default {DEFAULT_START})")
    parser.add_argument("--end", default=DEFAULT_END, help=f"end function (default {DEFAULT_END})")
    parser.add_argument("--repeat", type=int, default=1, help=f"runs of the search (1..{MAX_REPEAT})")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= MAX_REPEAT:
        parser.error(f"--repeat must be between 1 and {MAX_REPEAT}")
    folder = Path(args.folder) if args.folder else default_folder()
    if folder is None:
        parser.error("the ray package is not installed: name a FOLDER")
    from tools_sandbox.agent.errors import ToolInputError

    try:
        result = run_bench(folder, args.start, args.end, args.repeat)
    except ToolInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
