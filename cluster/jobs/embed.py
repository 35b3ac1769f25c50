"""The ``ray job submit`` entrypoint that (re)embeds the memory with Ray Data and rebuilds its index.

    ray job submit --working-dir . -- python -m cluster.jobs.embed [--batch-size N] [--concurrency N] [--all]
    python -m cluster.jobs.embed --config officeray.yaml      # no cluster: starts a local Ray instance

1. Every finished task of the store without a memory entry gets one
   (:func:`~officeray.memory.learn.entry_from_record`: tasks that ended before the memory existed,
   or while it was off).
2. The entries without a vector of the configured encoder (``memory.encoder.model``; with ``--all``:
   every entry) are read from the store and embedded with Ray Data: ``map_batches`` over a pool of
   ``--concurrency`` CPU actors (one CPU each), each loading the encoder once, ``--batch-size``
   texts per call. The vectors are written back to the store as they come, :data:`WRITE_BATCH` per
   transaction.
3. The memory's index is rebuilt from the stored vectors: by the cluster's memory actor when it runs
   (it then serves the new vectors at once), else in this process into the index files
   (:func:`~officeray.memory.service.rebuild_index_files`, no model needed).

The encoder is loaded once in this process before Ray starts, so a model that cannot load fails the
job at once with one line naming it (exit code 1). The summary is one JSON line on stdout: counts,
the encoder, and the throughput (texts/s over the whole embedding stage, actor start-up included,
and over its steady part, from the first batch written to the last).

Ray: under ``ray job submit`` (``RAY_ADDRESS``), or when a cluster runs on this machine, it joins
that cluster; otherwise it starts a local instance (``--address`` overrides). Exit codes: 0 done,
1 the encoder or the store failed, 2 bad flags or config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cluster.cli_output import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from officeray.config import EncoderSettings, Settings, absolutize, load_settings, memory_index_dir
from officeray.errors import ConfigError, StoreError
from officeray.memory.entries import MAX_QUERY_CHARS, EncoderUnavailableError, MemoryEntry, vector_bytes
from officeray.memory.learn import entry_from_record
from officeray.memory.service import rebuild_index_files
from officeray.store.api import TaskCursor, TaskStore

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 2
"""Embedding actors (one CPU each) unless ``--concurrency`` says otherwise."""

MAX_CONCURRENCY = 1_024
"""Most embedding actors one job asks for."""

MAX_BATCH_SIZE = 4_096
"""Largest ``--batch-size`` (texts per call of an actor)."""

ACTOR_NUM_CPUS = 1.0
"""CPUs each embedding actor reserves (torch then runs one thread per actor)."""

WRITE_BATCH = 512
"""Vectors written to the store per transaction."""

TASK_PAGE = 500
"""Task records read per page while looking for finished tasks without an entry."""

ENTRY_PAGE = 1_000
"""Memory entries read per page."""


Embed = Callable[[list[dict[str, str]]], Iterator[tuple[Sequence[str], np.ndarray]]]
"""Rows ``{"entry_id", "text"}`` in, ``(entry ids, vectors)`` batches out."""


# -- the store side (no Ray) ----------------------------------------------------------------------


async def _entries(store: TaskStore, *, missing_encoder: str | None = None) -> list[MemoryEntry]:
    """Every entry, without vectors (only those lacking a vector of ``missing_encoder`` when given)."""
    entries: list[MemoryEntry] = []
    after = 0
    while True:
        page = await store.memory_entries(
            after_seq=after, limit=ENTRY_PAGE, with_vectors=False, missing_encoder=missing_encoder
        )
        entries.extend(page)
        if len(page) < ENTRY_PAGE or page[-1].seq is None:
            return entries
        after = page[-1].seq


async def backfill(store: TaskStore) -> tuple[int, int]:
    """Give every finished task without a memory entry one; ``(tasks seen, entries added)``."""
    remembered = {entry.task_id for entry in await _entries(store)}
    seen = added = 0
    cursor: TaskCursor | None = None
    while True:
        page = await store.list_tasks(limit=TASK_PAGE, cursor=cursor)
        seen += len(page)
        for record in page:
            if record.task_id in remembered:
                continue
            entry = entry_from_record(record)
            if entry is not None:  # None: the task is not final
                await store.add_memory_entry(entry)
                added += 1
        if len(page) < TASK_PAGE:
            return seen, added
        cursor = TaskCursor(page[-1].created_at, page[-1].task_id)


async def pending(store: TaskStore, model: str, *, everything: bool) -> list[dict[str, str]]:
    """The rows to embed, ``{"entry_id", "text"}``: entries without a vector of ``model`` (all of them
    when ``everything``). The text is what the memory itself embeds (the description, cut alike)."""
    entries = await _entries(store, missing_encoder=None if everything else model)
    return [{"entry_id": e.entry_id, "text": e.description[:MAX_QUERY_CHARS]} for e in entries]


@dataclass
class Written:
    """What :func:`write_vectors` stored, and when (seconds of the clock it was given)."""

    embedded: int = 0
    written: int = 0
    first_batch: int = 0
    """Texts of the first batch (the steady rate leaves it out: it carries the actors' start-up)."""
    first_at: float | None = None
    last_at: float | None = None


async def write_vectors(
    store: TaskStore,
    batches: Callable[[], Awaitable[tuple[Sequence[str], np.ndarray] | None]],
    model: str,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Written:
    """Store the vectors of each ``(entry ids, vectors)`` that ``batches`` answers (None: no more),
    :data:`WRITE_BATCH` per transaction."""
    done = Written()
    buffer: dict[str, tuple[bytes, str]] = {}
    while (batch := await batches()) is not None:
        ids, vectors = batch
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors for {len(ids)} entries")
        now = clock()
        if done.first_at is None:
            done.first_at, done.first_batch = now, len(ids)
        done.last_at = now
        done.embedded += len(ids)
        buffer.update((str(i), (vector_bytes(v), model)) for i, v in zip(ids, vectors, strict=True))
        if len(buffer) >= WRITE_BATCH:
            done.written += await store.set_memory_vectors(buffer)
            buffer = {}
    if buffer:
        done.written += await store.set_memory_vectors(buffer)
    return done


@dataclass
class Report:
    """The job's summary line (JSON)."""

    encoder: str
    dim: int
    batch_size: int
    concurrency: int
    everything: bool
    tasks: int = 0
    entries_added: int = 0
    to_embed: int = 0
    embedded: int = 0
    written: int = 0
    embed_s: float = 0.0
    """From the start of the Ray Data stage to its last vector written (actor start-up included)."""
    texts_per_s: float = 0.0
    steady_texts_per_s: float | None = None
    """From the first batch written to the last (None with a single batch)."""
    elapsed_s: float = 0.0
    index: dict[str, Any] = field(default_factory=dict)

    def add_rates(self, written: Written, started: float) -> None:
        self.embedded, self.written = written.embedded, written.written
        end = written.last_at if written.last_at is not None else started
        self.embed_s = round(end - started, 3)
        self.texts_per_s = round(written.embedded / self.embed_s, 1) if self.embed_s > 0 else 0.0
        if (
            written.first_at is not None
            and written.last_at is not None
            and written.last_at > written.first_at
        ):
            steady = (written.embedded - written.first_batch) / (written.last_at - written.first_at)
            self.steady_texts_per_s = round(steady, 1)

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# -- Ray Data --------------------------------------------------------------------------------------


class EmbedBatch:
    """Ray Data's callable class: one encoder per actor, loaded once, then one call per batch."""

    def __init__(self, settings: EncoderSettings) -> None:
        from serving.encoder import SentenceTransformerEncoder

        self.encoder = SentenceTransformerEncoder(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(text) for text in batch["text"]]
        return {"entry_id": batch["entry_id"], "vector": self.encoder.encode_sync(texts)}


def embedded_batches(
    rows: list[dict[str, str]], settings: EncoderSettings, *, batch_size: int, concurrency: int
) -> Iterator[tuple[Sequence[str], np.ndarray]]:
    """``(entry ids, vectors)`` per batch, from Ray Data (Ray must be initialised)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job prints its own summary
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    dataset = ray.data.from_items(rows).map_batches(
        EmbedBatch,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=ACTOR_NUM_CPUS,
        fn_constructor_kwargs={"settings": settings},
    )
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield [str(i) for i in batch["entry_id"]], np.asarray(batch["vector"], dtype=np.float32)


def _next_from(iterator: Iterator[tuple[Sequence[str], np.ndarray]]) -> Callable[[], Awaitable[Any]]:
    """The next item of a blocking iterator, fetched off the event loop (None at its end)."""

    async def next_batch() -> Any:
        return await asyncio.to_thread(next, iterator, None)

    return next_batch


async def _rebuild(store: TaskStore, settings: Settings, model: str, dim: int) -> dict[str, Any]:
    """Rebuild by the cluster's memory actor when it runs, else into the index files here."""
    import ray

    from actors.memory import running_memory_actor

    actor = running_memory_actor(settings) if ray.is_initialized() else None
    if actor is not None:
        result: dict[str, Any] = await actor.rebuild.remote()
        return {"by": "memory actor", **result}
    index_dir = memory_index_dir(settings)
    result = await rebuild_index_files(store, settings.memory, index_dir, model, dim)
    return {"by": "this job", "index_dir": str(index_dir), **result}


async def run(
    store: TaskStore,
    settings: Settings,
    model: str,
    dim: int,
    *,
    batch_size: int,
    concurrency: int,
    everything: bool,
    embed: Embed,
) -> Report:
    """Backfill, embed what is missing with ``embed`` (the job's: :func:`embedded_batches`, once Ray
    is up) and rebuild; the summary."""
    started = time.monotonic()
    report = Report(model, dim, batch_size, concurrency, everything)
    report.tasks, report.entries_added = await backfill(store)
    rows = await pending(store, model, everything=everything)
    report.to_embed = len(rows)
    if rows:
        print(
            f"embed: {len(rows)} entries with {model} ({concurrency} actors, batches of {batch_size})",
            file=sys.stderr,
            flush=True,
        )
        embed_started = time.monotonic()
        batches = _next_from(embed(rows))
        report.add_rates(await write_vectors(store, batches, model), embed_started)
    report.index = await _rebuild(store, settings, model, dim)
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


# -- the command -----------------------------------------------------------------------------------


def _bounded_int(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be between 1 and {limit}, not {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.jobs.embed", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")
    parser.add_argument(
        "--batch-size",
        type=_bounded_int(MAX_BATCH_SIZE),
        help="texts per call of an embedding actor (default: memory.encoder.max_batch_size)",
    )
    parser.add_argument(
        "--concurrency",
        type=_bounded_int(MAX_CONCURRENCY),
        default=DEFAULT_CONCURRENCY,
        help=f"embedding actors, one CPU each (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--all", action="store_true", dest="everything", help="embed every entry again, not only the missing"
    )
    parser.add_argument("--address", help="Ray address (default: the running cluster, else a local one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"embed: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not settings.memory.enabled:
        print("embed: error: memory.enabled is false: nothing to embed", file=sys.stderr)
        return EXIT_USAGE
    settings = absolutize(settings)
    config = settings.memory.encoder
    batch_size = args.batch_size or config.max_batch_size

    # the batch job's rule (RAY_ADDRESS, else a cluster running on this machine, else a local
    # instance); it keeps a local instance on loopback, so it runs before anything imports Ray
    from cluster.jobs.batch import _address

    address = _address(args.address)

    import ray

    from cluster.runtime import init_ray
    from officeray.store import SqlStore
    from serving.encoder import SentenceTransformerEncoder

    try:  # here, before Ray starts: a model that cannot load fails the job at once
        probe = SentenceTransformerEncoder(config)
    except EncoderUnavailableError as exc:
        print(f"embed: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    model, dim = probe.model, probe.dim
    del probe
    try:
        store = SqlStore(settings.store.url)
    except StoreError as exc:
        print(f"embed: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if address != "local":  # joining a cluster: its memory actor, if it runs, rebuilds
        init_ray(settings, address)

    def embed(rows: list[dict[str, str]]) -> Iterator[tuple[Sequence[str], np.ndarray]]:
        init_ray(settings, address)  # a local instance starts only when there is work for it
        return embedded_batches(rows, config, batch_size=batch_size, concurrency=args.concurrency)

    try:
        report = asyncio.run(
            run(
                store,
                settings,
                model,
                dim,
                batch_size=batch_size,
                concurrency=args.concurrency,
                everything=args.everything,
                embed=embed,
            )
        )
    except StoreError as exc:
        print(f"embed: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
        ray.shutdown()  # leaves a cluster it joined running
    print(report.line(), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
