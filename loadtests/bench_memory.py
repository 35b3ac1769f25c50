"""Memory benchmark: the encoder's throughput, and the vector index's build time, size, search latency
and HNSW recall at growing sizes.

    python -m loadtests.bench_memory [--sizes 1000,10000,100000] [--queries N] [--skip-encoder] [--json]

Also ``officeray bench memory``. Two parts, in one process:

* **encoder**: one in-process :class:`~serving.encoder.SentenceTransformerEncoder` (``memory.encoder``
  of the config: all-MiniLM-L6-v2 from its package by default, on CPU) encodes ``--encoder-texts``
  task-like texts one at a time (batch 1) and in batches of 64: texts per second and milliseconds per
  call (p50, p99), after :data:`ENCODER_WARMUP_CALLS` untimed calls. Also the model's load time.
* **index**: at each of ``--sizes``, for each data set of ``--data``, a flat index (exact inner
  product) and an HNSW one (``memory.hnsw_m`` and ``memory.hnsw_ef_construction`` of the config) of
  that many 384-dimensional unit vectors, both :class:`~officeray.memory.index.VectorIndex`. Per index:
  build time, the size of its saved file, the growth of this process's RSS while it was built (after
  a garbage collection and ``malloc_trim``: approximate), and the latency of ``--queries`` searches
  for the 10 nearest (p50, p99; one query at a time on one thread, as the memory's actor serves them).
  The HNSW index is searched at each ``--ef-search`` and its recall@10 measured against the flat
  index's answers. Data sets:

  - ``uniform``: random unit vectors, queries too. Nearest neighbours are barely nearer than any
    other vector: the worst case for a graph index (low recall at a small ``efSearch``).
  - ``structured``: unit vectors near a :data:`STRUCTURED_RANK`-dimensional subspace plus isotropic
    noise, which is how sentence embeddings of related texts behave (nearest neighbours at cosine
    0.5-0.7); queries from the same distribution.

Build times grow about as ``n log n`` (HNSW: about two minutes for 100k uniform vectors on two busy
cores), so sizes are bounded (:data:`MAX_SIZE`). Figures only, no targets: exit 0 once printed,
1 when the encoder could not load (its figures are then missing), 2 on bad arguments or config.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import psutil

from loadtests.bench_format import BenchResult, Column, Table, add_json_argument, emit
from officeray.stats import percentiles

if TYPE_CHECKING:
    from officeray.config import MemorySettings
    from officeray.memory.index import VectorIndex

__all__ = [
    "BenchConfig",
    "add_arguments",
    "dataset",
    "main",
    "recall_at_k",
    "run_bench",
    "run_from_args",
    "task_texts",
]

DataSet = Literal["uniform", "structured"]

# -- limits and defaults ----------------------------------------------------------------------------

DEFAULT_SIZES = (1_000, 10_000, 100_000)
"""Index sizes (entries) measured."""
MAX_SIZE = 1_000_000
"""Largest index size accepted (an HNSW build of 1M vectors takes tens of minutes on a few cores)."""
DEFAULT_QUERIES = 1_000
"""Searches timed per index (and per ``efSearch`` of an HNSW index)."""
MAX_QUERIES = 100_000
MIN_QUERIES = 2
"""Fewest searches (percentiles need two samples)."""
SEARCH_WARMUP = 10
"""Untimed searches before each timed series."""
K = 10
"""Hits per search: the k of the latency figures and of recall@k."""
DIM = 384
"""Vector dimensions (all-MiniLM-L6-v2's)."""
DEFAULT_DATA: tuple[DataSet, ...] = ("uniform", "structured")
STRUCTURED_RANK = 32
"""Dimensions of the subspace the ``structured`` vectors lie near."""
STRUCTURED_NOISE = 0.3
"""Standard deviation, per dimension, of the isotropic noise added to a ``structured`` vector, whose
subspace part has unit variance per dimension (nearest neighbours then sit at cosine 0.5-0.65)."""
EXTRA_EF_SEARCH = (128, 256)
"""``efSearch`` values measured besides ``memory.hnsw_ef_search`` (default 64)."""
MAX_EF_SEARCH = 4096
SEARCH_THREADS = 1
"""faiss (OpenMP) threads of the timed searches: one query at a time, as the memory serves them (Ray
gives an actor of one CPU ``OMP_NUM_THREADS=1``); builds use every core."""

ENCODER_BATCHES = (1, 64)
"""Texts per encoder call measured."""
DEFAULT_ENCODER_TEXTS = 512
"""Texts encoded (timed) at each batch size."""
MAX_ENCODER_TEXTS = 100_000
ENCODER_WARMUP_CALLS = 3
"""Untimed calls at each batch size before the timed ones."""

DEFAULT_SEED = 0
MIB = 1024 * 1024


# -- pure helpers -----------------------------------------------------------------------------------


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def dataset(kind: DataSet, size: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` stored vectors and ``queries`` query vectors of a data set, float32 unit rows."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return _unit_rows(rng.standard_normal((size, DIM))), _unit_rows(rng.standard_normal((queries, DIM)))
    basis = rng.standard_normal((STRUCTURED_RANK, DIM)) / np.sqrt(STRUCTURED_RANK)

    def draw(n: int) -> np.ndarray:
        latent = rng.standard_normal((n, STRUCTURED_RANK)) @ basis
        return _unit_rows(latent + STRUCTURED_NOISE * rng.standard_normal((n, DIM)))

    return draw(size), draw(queries)


def recall_at_k(found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]]) -> float:
    """Mean share of each query's true top-k (``truth``) that ``found`` returned."""
    if not truth:
        raise ValueError("recall of no queries")
    shares = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True) if t]
    return sum(shares) / len(shares) if shares else 1.0


_TEMPLATES = (
    "Compute {a} * {b} then calculate ans / {c}",
    "What is {a} times {b}, divided by {c}?",
    "Wait {c} seconds and also wait {a} seconds",
    "Trace the call sequence from main to handler_{a} in examples/sample_project",
    "Read notes/report_{b}.txt, count the words and write the total to out/count_{c}.txt",
    "Run python:\nprint(sum(range({a}{b})))",
    "Summarise the failing tests of build {a}{c} and list their error types",
    "Find every function that calls parse_{b} and explain what it returns",
)


def task_texts(count: int, seed: int = DEFAULT_SEED) -> list[str]:
    """``count`` task-like texts (task descriptions of the kinds officeray runs, with varied numbers)."""
    rng = np.random.default_rng(seed)
    numbers = rng.integers(2, 1000, size=(count, 3))
    return [
        _TEMPLATES[i % len(_TEMPLATES)].format(a=int(a), b=int(b), c=int(c))
        for i, (a, b, c) in enumerate(numbers)
    ]


def _parse_list(text: str, what: str, parse: Callable[[str], Any]) -> list[Any]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{what}: give a comma-separated list")
    values: list[Any] = []
    for part in parts:
        value = parse(part)
        if value not in values:
            values.append(value)
    return values


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: {text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what}: {value} is not between {low} and {high}")
        return value

    return parse


def sizes_arg(text: str) -> tuple[int, ...]:
    """``--sizes``: comma-separated index sizes, 1..MAX_SIZE, in order."""
    return tuple(_parse_list(text, "sizes", _int_in(1, MAX_SIZE, "sizes")))


def ef_search_arg(text: str) -> tuple[int, ...]:
    """``--ef-search``: comma-separated HNSW ``efSearch`` values."""
    return tuple(_parse_list(text, "ef-search", _int_in(1, MAX_EF_SEARCH, "ef-search")))


def data_arg(text: str) -> tuple[DataSet, ...]:
    """``--data``: ``uniform``, ``structured`` or both, comma-separated."""

    def parse(part: str) -> DataSet:
        if part == "uniform":
            return "uniform"
        if part == "structured":
            return "structured"
        raise argparse.ArgumentTypeError(f"data: {part!r} is neither uniform nor structured")

    return tuple(_parse_list(text, "data", parse))


# -- measurements -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    queries: int = DEFAULT_QUERIES
    data: tuple[DataSet, ...] = DEFAULT_DATA
    ef_search: tuple[int, ...] = ()
    """``efSearch`` values of the HNSW searches (empty: ``memory.hnsw_ef_search`` and
    :data:`EXTRA_EF_SEARCH`)."""
    skip_encoder: bool = False
    encoder_texts: int = DEFAULT_ENCODER_TEXTS
    encoder_threads: int | None = None
    """torch's intra-op threads (None: torch's default, the machine's cores)."""
    seed: int = DEFAULT_SEED
    config: str | None = None


@dataclass
class IndexRun:
    """What one index measured (an HNSW index: one per ``efSearch``)."""

    data: DataSet
    size: int
    index: str
    build_s: float
    file_bytes: int
    rss_bytes: int
    latencies_ms: list[float] = field(default_factory=list)
    recall: float | None = None

    def row(self) -> dict[str, Any]:
        p50, p99 = percentiles(self.latencies_ms, (50, 99))
        return {
            "data": self.data,
            "entries": self.size,
            "index": self.index,
            "build_s": self.build_s,
            "file_mib": self.file_bytes / MIB,
            "rss_mib": self.rss_bytes / MIB,
            "p50_ms": p50,
            "p99_ms": p99,
            "recall_at_10": self.recall,
        }


def _rss() -> int:
    """This process's RSS after a garbage collection and returning free heap to the system."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return int(psutil.Process().memory_info().rss)


@contextlib.contextmanager
def _faiss_threads(threads: int) -> Iterator[None]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _timed_searches(index: VectorIndex, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    """Milliseconds of each search for the :data:`K` nearest of each query, and the ids found."""
    with _faiss_threads(SEARCH_THREADS):
        for query in queries[:SEARCH_WARMUP]:
            index.search(query, K)
        latencies, found = [], []
        for query in queries:
            started = time.perf_counter()
            hits = index.search(query, K)
            latencies.append((time.perf_counter() - started) * 1000)
            found.append([i for i, _ in hits])
    return latencies, found


def _build(vectors: np.ndarray, hnsw: bool, memory: MemorySettings) -> tuple[VectorIndex, float, int]:
    """A flat or HNSW index of ``vectors`` (ids 1..n), its build time and the RSS it added."""
    from officeray.memory.index import VectorIndex

    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    baseline = _rss()
    started = time.perf_counter()
    index = VectorIndex(
        DIM,
        hnsw_threshold=0 if hnsw else len(vectors),
        hnsw_m=memory.hnsw_m,
        ef_construction=memory.hnsw_ef_construction,
        ef_search=memory.hnsw_ef_search,
    )
    index.add(ids, vectors)
    build_s = time.perf_counter() - started
    return index, build_s, max(0, _rss() - baseline)


def _file_bytes(index: VectorIndex) -> int:
    with tempfile.TemporaryDirectory(prefix="officeray-bench-memory-") as folder:
        path = Path(folder) / "index.faiss"
        index.save(path)
        return path.stat().st_size


def measure_index(
    data: DataSet, size: int, cfg: BenchConfig, memory: MemorySettings, ef_values: Sequence[int]
) -> list[IndexRun]:
    """The flat index, then the HNSW one at each of ``ef_values``, of one data set and size."""
    vectors, queries = dataset(data, size, cfg.queries, cfg.seed)
    flat, build_s, rss = _build(vectors, hnsw=False, memory=memory)
    latencies, truth = _timed_searches(flat, queries)
    runs = [IndexRun(data, size, "flat", build_s, _file_bytes(flat), rss, latencies)]
    del flat
    hnsw, build_s, rss = _build(vectors, hnsw=True, memory=memory)
    file_bytes = _file_bytes(hnsw)
    for ef in ef_values:
        hnsw.ef_search = ef
        latencies, found = _timed_searches(hnsw, queries)
        name = f"hnsw ef={ef}"
        runs.append(
            IndexRun(data, size, name, build_s, file_bytes, rss, latencies, recall_at_k(found, truth))
        )
    return runs


@dataclass
class EncoderRun:
    batch: int
    texts: int
    calls_ms: list[float]

    def row(self) -> dict[str, Any]:
        total_s = sum(self.calls_ms) / 1000
        p50, p99 = percentiles(self.calls_ms, (50, 99))
        return {
            "batch": self.batch,
            "texts": self.texts,
            "texts_per_s": self.texts / total_s if total_s > 0 else None,
            "p50_ms": p50,
            "p99_ms": p99,
        }


def measure_encoder(cfg: BenchConfig, memory: MemorySettings) -> tuple[list[EncoderRun], dict[str, Any]]:
    """Texts per second of one in-process encoder at each of :data:`ENCODER_BATCHES`, and facts about
    it (model, dimensions, load time, torch threads). EncoderUnavailableError when it cannot load."""
    import torch

    from serving.encoder import SentenceTransformerEncoder

    if cfg.encoder_threads is not None:
        torch.set_num_threads(cfg.encoder_threads)
    started = time.perf_counter()
    encoder = SentenceTransformerEncoder(memory.encoder)
    facts = {
        "model": encoder.model,
        "dim": encoder.dim,
        "device": memory.encoder.device,
        "load_s": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
    }
    texts = task_texts(cfg.encoder_texts, cfg.seed)
    runs = []
    for batch in ENCODER_BATCHES:
        chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
        for chunk in chunks[:ENCODER_WARMUP_CALLS]:
            encoder.encode_sync(chunk)
        calls_ms = []
        for chunk in chunks:
            started = time.perf_counter()
            encoder.encode_sync(chunk)
            calls_ms.append((time.perf_counter() - started) * 1000)
        runs.append(EncoderRun(batch, len(texts), calls_ms))
    return runs, facts


# -- the benchmark ----------------------------------------------------------------------------------


def _ef_values(cfg: BenchConfig, memory: MemorySettings) -> tuple[int, ...]:
    if cfg.ef_search:
        return cfg.ef_search
    return tuple(sorted({memory.hnsw_ef_search, *EXTRA_EF_SEARCH}))


def run_bench(cfg: BenchConfig, memory: MemorySettings) -> tuple[BenchResult, bool]:
    """Measure what ``cfg`` asks; the result, and whether the encoder (when asked for) loaded."""
    from officeray.memory.entries import EncoderUnavailableError

    ef_values = _ef_values(cfg, memory)
    notes: list[str] = []
    tables: list[Table] = []
    extra: dict[str, Any] = {"sizes": list(cfg.sizes), "queries": cfg.queries, "data": list(cfg.data)}
    encoder_ok = True
    if not cfg.skip_encoder:
        try:
            enc_runs, facts = measure_encoder(cfg, memory)
        except EncoderUnavailableError as exc:
            encoder_ok = False
            notes.append(f"encoder not measured: {exc}")
        else:
            extra["encoder"] = facts
            notes.append(
                f"encoder {facts['model']} ({facts['dim']} dims) on {facts['device']}, "
                f"{facts['torch_threads']} torch threads, loaded in {facts['load_s']:.1f} s; "
                f"{ENCODER_WARMUP_CALLS} untimed calls per batch size"
            )
            tables.append(
                Table(
                    "encoder: one in-process replica",
                    [
                        Column("batch", "batch"),
                        Column("texts", "texts"),
                        Column("texts_per_s", "texts/s", ".1f"),
                        Column("p50_ms", "p50 ms/call", ".2f"),
                        Column("p99_ms", "p99 ms/call", ".2f"),
                    ],
                    [run.row() for run in enc_runs],
                )
            )
    import faiss

    build_threads = faiss.omp_get_max_threads()
    rows: list[dict[str, Any]] = []
    for data in cfg.data:
        for size in cfg.sizes:
            rows.extend(run.row() for run in measure_index(data, size, cfg, memory, ef_values))
    extra["hnsw"] = {
        "m": memory.hnsw_m,
        "ef_construction": memory.hnsw_ef_construction,
        "ef_search": ef_values,
    }
    notes.append(
        f"index: {DIM} dims, k={K}, {cfg.queries} queries per row after {SEARCH_WARMUP} untimed; "
        f"searches one at a time on {SEARCH_THREADS} faiss thread, builds on {build_threads}; "
        f"HNSW M={memory.hnsw_m}, efConstruction={memory.hnsw_ef_construction}; "
        f"recall@{K} against the flat index's answers; rss = RSS growth while building (approximate)"
    )
    tables.append(
        Table(
            "vector index: flat (exact) against HNSW",
            [
                Column("data", "data"),
                Column("entries", "entries"),
                Column("index", "index"),
                Column("build_s", "build s", ".2f"),
                Column("file_mib", "file MiB", ".1f"),
                Column("rss_mib", "rss MiB", ".1f"),
                Column("p50_ms", "p50 ms", ".3f"),
                Column("p99_ms", "p99 ms", ".3f"),
                Column("recall_at_10", f"recall@{K}", ".3f"),
            ],
            rows,
        )
    )
    result = BenchResult(
        benchmark="memory",
        title="memory: encoder throughput, vector search latency, size and recall",
        tables=tables,
        notes=notes,
        extra=extra,
    )
    return result, encoder_ok


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bench memory`` (shared by ``python -m`` and ``officeray bench memory``)."""
    sizes = ",".join(str(s) for s in DEFAULT_SIZES)
    parser.add_argument(
        "--sizes", type=sizes_arg, default=DEFAULT_SIZES, help=f"index sizes in entries (default {sizes})"
    )
    parser.add_argument(
        "--queries",
        type=_int_in(MIN_QUERIES, MAX_QUERIES, "queries"),
        default=DEFAULT_QUERIES,
        help=f"searches timed per index and efSearch (default {DEFAULT_QUERIES})",
    )
    parser.add_argument(
        "--data",
        type=data_arg,
        default=DEFAULT_DATA,
        help="data sets: uniform (random unit vectors), structured (near a low-dimensional subspace, like "
        "sentence embeddings) or both (default uniform,structured)",
    )
    parser.add_argument(
        "--ef-search",
        type=ef_search_arg,
        default=(),
        help="HNSW efSearch values to search with (default memory.hnsw_ef_search and "
        + ",".join(str(e) for e in EXTRA_EF_SEARCH)
        + ")",
    )
    parser.add_argument("--skip-encoder", action="store_true", help="do not load or measure the encoder")
    parser.add_argument(
        "--encoder-texts",
        type=_int_in(MIN_QUERIES, MAX_ENCODER_TEXTS, "encoder-texts"),
        default=DEFAULT_ENCODER_TEXTS,
        help=f"texts encoded at each batch size (default {DEFAULT_ENCODER_TEXTS})",
    )
    parser.add_argument(
        "--encoder-threads",
        type=_int_in(1, 1024, "encoder-threads"),
        default=None,
        help="torch threads of the encoder (default: torch's, the machine's cores)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed of the data sets")
    add_json_argument(parser)
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        sizes=tuple(args.sizes),
        queries=args.queries,
        data=tuple(args.data),
        ef_search=tuple(args.ef_search),
        skip_encoder=args.skip_encoder,
        encoder_texts=args.encoder_texts,
        encoder_threads=args.encoder_threads,
        seed=args.seed,
        config=args.config,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed arguments describe and print its result; the exit status."""
    from officeray.config import load_settings
    from officeray.errors import ConfigError

    cfg = config_from_args(args)
    try:
        memory = load_settings(cfg.config).memory
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result, encoder_ok = run_bench(cfg, memory)
    emit(result, args.json)
    return 0 if encoder_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_memory", description=(__doc__ or "").split("\n")[0]
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
