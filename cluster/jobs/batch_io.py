"""Task rows in and result rows out for the batch job, without Ray.

* :func:`resolve_input` finds the files of the input (a file, a directory, a URI pyarrow opens:
  ``s3://``, ``gs://``, ``hdfs://``, ``file://``) and its format, so Ray Data later reads exactly
  those files in that order;
* :func:`read_rows` streams their rows on this machine and :func:`check_rows` validates every one
  as a :class:`~officeray.contracts.TaskRequest` before anything runs;
* :func:`task_id_for` and :func:`new_run_id` name the tasks of a run, so the same input under the
  same run id maps to the same tasks;
* :func:`open_writer` writes one result per task, as JSONL (``officeray run --json`` records) or
  as Parquet (:func:`flat_row`, :data:`RESULT_SCHEMA`).

JSONL is read as text and each line parsed with pydantic (not with ``ray.data.read_json``, whose
line reader goes through pandas: missing keys come back as NaN and integers as floats), so a line
means exactly what ``officeray run`` would make of it. Blank lines are skipped.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import ValidationError

from cluster.cli_output import UsageError, record_json
from officeray.contracts import TaskRecord, TaskRequest

Format = Literal["jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "parquet")

SUFFIX_FORMATS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""File name endings and the format they stand for (``.json`` files are read as JSON Lines)."""

TASK_INDEX_DIGITS = 6
"""Zero-padded width of the row index in a derived task id (more rows simply use more digits)."""

RUN_ID_MAX_CHARS = 80
"""Longest run id: a task id (at most 100 characters) is the run id, ``-`` and the row index."""

RUN_ID_PATTERN = re.compile(rf"^[A-Za-z0-9_.-]{{1,{RUN_ID_MAX_CHARS}}}$")

MAX_REPORTED_ROW_ERRORS = 20
"""Bad rows named one by one in the error message; the rest are counted."""

PARQUET_ROW_GROUP_ROWS = 1_000
"""Result rows buffered before they are written to the Parquet file as one row group."""

PARTIAL_SUFFIX = ".partial"
"""Results are written next to ``--out`` under this suffix and moved into place once complete."""


# -- names -----------------------------------------------------------------------------------------


def check_run_id(run_id: str) -> str:
    """``run_id`` when usable in task ids; else :class:`UsageError` saying what is allowed."""
    if not RUN_ID_PATTERN.match(run_id):
        raise UsageError(
            f"bad --run-id {run_id!r}: use 1 to {RUN_ID_MAX_CHARS} letters, digits, '_', '.' or '-'"
        )
    return run_id


def new_run_id(now: datetime, token: str | None = None) -> str:
    """A fresh run id such as ``batch-20250101-120000-3f2a9c`` (UTC time, then a random token)."""
    token = token or uuid.uuid4().hex[:6]
    return f"batch-{now:%Y%m%d-%H%M%S}-{token}"


def task_id_for(run_id: str, index: int) -> str:
    """The id of the task of row ``index`` (0-based, blank lines not counted) in run ``run_id``."""
    return f"{run_id}-{index:0{TASK_INDEX_DIGITS}d}"


def format_of(name: str) -> Format | None:
    """The format a file name stands for, from its ending; None when it says nothing."""
    return SUFFIX_FORMATS.get(Path(urlparse(name).path if "://" in name else name).suffix.lower())


# -- where the data is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A file or directory on a pyarrow file system."""

    given: str
    """As the user wrote it (for messages)."""
    filesystem: pafs.FileSystem
    path: str
    """The path on ``filesystem`` (absolute for local files)."""
    uri_prefix: str
    """What turns a path on ``filesystem`` back into a URI (``""`` for local files)."""

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def uri(self, path: str) -> str:
        return self.uri_prefix + path


def locate(given: str) -> Location:
    """Where ``given`` (a local path or a URI such as ``s3://bucket/key``) lives.

    Raises :class:`UsageError` for a URI no pyarrow file system handles (or whose credentials or
    options are wrong)."""
    if "://" not in given:
        return Location(given, pafs.LocalFileSystem(), str(Path(given).expanduser().resolve()), "")
    try:
        filesystem, path = pafs.FileSystem.from_uri(given)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise UsageError(f"cannot open {given}: {exc}") from None
    if isinstance(filesystem, pafs.LocalFileSystem):
        return Location(given, filesystem, path, "")
    parsed = urlparse(given)
    # s3://bucket/key has the path "bucket/key"; hdfs://host:port/dir has "/dir"
    prefix = f"{parsed.scheme}://{parsed.netloc}" if path.startswith("/") else f"{parsed.scheme}://"
    return Location(given, filesystem, path, prefix)


def _is_data_file(info: pafs.FileInfo) -> bool:
    """Not a hidden or bookkeeping file (``.crc``, ``_SUCCESS``, ``_metadata``)."""
    return info.type == pafs.FileType.File and not info.base_name.startswith((".", "_"))


@dataclass(frozen=True)
class InputFiles:
    """The files of a batch input, in the order their rows are numbered."""

    location: Location
    paths: list[str]
    format: Format

    @property
    def uris(self) -> list[str]:
        """The files as Ray Data is given them (local paths, or full URIs)."""
        return [self.location.uri(p) for p in self.paths]

    def display(self, path: str) -> str:
        """``path`` as named in messages: relative to a directory input, else as the user wrote it."""
        if len(self.paths) == 1:
            return self.location.given
        return f"{self.location.given.rstrip('/')}/{path[len(self.location.path) :].lstrip('/')}"


def resolve_input(given: str, override: Format | None = None) -> InputFiles:
    """The files to read for ``given`` and their format (``override``, else from the names).

    A directory is read whole (sub-directories too, sorted by path, hidden files left out), keeping
    the files of the format. Raises :class:`UsageError` when nothing is there to read.
    """
    location = locate(given)
    try:
        info = location.filesystem.get_file_info(location.path)
        if info.type == pafs.FileType.NotFound:
            raise UsageError(f"cannot read {given}: no such file or directory")
        if info.type != pafs.FileType.Directory:
            fmt = override or format_of(location.path)
            if fmt is None:
                raise UsageError(
                    f"cannot tell the format of {given} from its name: pass --input-format jsonl|parquet"
                )
            return InputFiles(location, [location.path], fmt)
        selector = pafs.FileSelector(location.path, recursive=True)
        infos = [i for i in location.filesystem.get_file_info(selector) if _is_data_file(i)]
    except OSError as exc:
        raise UsageError(f"cannot read {given}: {exc}") from None
    found = sorted({f for f in (format_of(i.path) for i in infos) if f is not None})
    fmt = override
    if fmt is None:
        if len(found) != 1:
            kinds = " and ".join(found) or "no .jsonl or .parquet"
            raise UsageError(f"{given} holds {kinds} files: pass --input-format jsonl|parquet")
        fmt = found[0]
    paths = sorted(i.path for i in infos if format_of(i.path) == fmt)
    if not paths:
        raise UsageError(f"{given} holds no {fmt} files")
    return InputFiles(location, paths, fmt)


# -- rows ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRow:
    """One task row as read: where it is (``where``) and its value (a JSON line or a column dict)."""

    where: str
    value: str | dict[str, Any]


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a JSONL text with their 1-based line numbers.

    Lines are split as :func:`ray.data.read_text` splits them (:meth:`str.splitlines`), so this
    check and the Ray Data read that feeds the run agree on which row is which."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def parquet_value(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row as a request dict: a null column means the field is absent."""
    return {key: value for key, value in row.items() if value is not None}


def read_rows(inputs: InputFiles) -> Iterator[RawRow]:
    """Every task row of ``inputs`` in order, streamed from its file system (no Ray)."""
    filesystem = inputs.location.filesystem
    for path in inputs.paths:
        name = inputs.display(path)
        try:
            if inputs.format == "jsonl":
                with filesystem.open_input_stream(path) as stream:
                    text = stream.read().decode("utf-8")
                for number, line in jsonl_lines(text):
                    yield RawRow(f"{name}:{number}", line)
            else:
                number = 0
                with filesystem.open_input_file(path) as handle:
                    for batch in pq.ParquetFile(handle).iter_batches():
                        for row in batch.to_pylist():
                            number += 1
                            yield RawRow(f"{name} row {number}", parquet_value(row))
        except (OSError, UnicodeDecodeError, pa.ArrowException) as exc:
            raise UsageError(f"cannot read {name}: {exc}") from None


def parse_row(value: str | dict[str, Any]) -> TaskRequest:
    """The request of one row; raises :class:`pydantic.ValidationError`."""
    if isinstance(value, str):
        return TaskRequest.model_validate_json(value)
    return TaskRequest.model_validate(value)


def describe_error(where: str, exc: ValidationError) -> str:
    """``where: field: message`` for the first error of a row (``where: message`` for bad JSON)."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    return f"{where}: {field}: {first['msg']}" if field else f"{where}: {first['msg']}"


@dataclass
class RowCheck:
    """What :func:`check_rows` found: how many tasks, and what is wrong with which rows."""

    count: int = 0
    bad_rows: int = 0
    errors: list[str] = field(default_factory=list)
    """The first :data:`MAX_REPORTED_ROW_ERRORS` problems, one line each."""

    def add_error(self, line: str) -> None:
        self.bad_rows += 1
        if len(self.errors) < MAX_REPORTED_ROW_ERRORS:
            self.errors.append(line)

    def message(self, given: str) -> str:
        """The error message for bad rows (each named, up to :data:`MAX_REPORTED_ROW_ERRORS`)."""
        lines = [f"{self.bad_rows} bad row(s) in {given}; nothing was run:"]
        lines += [f"  {line}" for line in self.errors]
        if self.bad_rows > len(self.errors):
            lines.append(f"  ... and {self.bad_rows - len(self.errors)} more")
        return "\n".join(lines)


def check_rows(rows: Iterable[RawRow], run_id: str) -> RowCheck:
    """Validate every row as a :class:`TaskRequest`; count the tasks.

    A row may name its own ``task_id`` (then that, not the run id, names its task); two rows may not
    name the same one, and no row may take an id of the form the run derives (``RUN_ID-…``).
    """
    check = RowCheck()
    explicit: dict[str, str] = {}
    reserved = f"{run_id}-"
    for row in rows:
        check.count += 1
        try:
            request = parse_row(row.value)
        except ValidationError as exc:
            check.add_error(describe_error(row.where, exc))
            continue
        task_id = request.task_id
        if task_id is None:
            continue
        if task_id.startswith(reserved):
            check.add_error(f"{row.where}: task_id: {task_id!r} is reserved for the run's ids ({reserved}…)")
        elif task_id in explicit:
            check.add_error(f"{row.where}: task_id: {task_id!r} is also the task_id of {explicit[task_id]}")
        else:
            explicit[task_id] = row.where
    return check


def request_for(request: TaskRequest, run_id: str, index: int) -> TaskRequest:
    """``request`` with its task id: its own, else the one derived from the run id and the row."""
    if request.task_id is not None:
        return request
    return request.model_copy(update={"task_id": task_id_for(run_id, index)})


# -- results ---------------------------------------------------------------------------------------

RESULT_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("row", pa.int64()),
        ("run_id", pa.string()),
        ("description", pa.string()),
        ("tenant", pa.string()),
        ("status", pa.string()),
        ("result", pa.string()),
        ("error", pa.string()),
        ("iterations", pa.int64()),
        ("latency_s", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("trace_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("steps", pa.string()),
    ]
)
"""One flat row per task in a Parquet result file; ``result`` and ``steps`` are JSON text
(``steps`` as in ``officeray run --json``: step_id, action, status, attempts, output, error)."""


def record_latency_s(record: TaskRecord) -> float | None:
    """Seconds from the start of the task's last run (its creation, or its DLQ retry) to its end."""
    if record.finished_at is None:
        return None
    return (record.finished_at - (record.run_started_at or record.created_at)).total_seconds()


def flat_row(record: TaskRecord, *, index: int, run_id: str) -> dict[str, Any]:
    """The Parquet row of ``record`` (see :data:`RESULT_SCHEMA`)."""
    data = record_json(record)
    return {
        "task_id": record.task_id,
        "row": index,
        "run_id": run_id,
        "description": record.description,
        "tenant": record.tenant,
        "status": record.status.value,
        "result": None if data["result"] is None else json.dumps(data["result"], ensure_ascii=False),
        "error": record.error,
        "iterations": record.iterations,
        "latency_s": record_latency_s(record),
        "prompt_tokens": record.usage.prompt_tokens,
        "completion_tokens": record.usage.completion_tokens,
        "total_tokens": record.usage.total_tokens,
        "cost_usd": record.usage.cost_usd,
        "trace_id": record.trace_id,
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        "steps": json.dumps(data["steps"], ensure_ascii=False),
    }


class ResultWriter(Protocol):
    def write(self, index: int, record: TaskRecord) -> None: ...

    def close(self) -> None:
        """Finish the file and move it into place."""

    def abort(self) -> None:
        """Remove the unfinished file."""


@dataclass(frozen=True)
class Output:
    location: Location
    format: Format


def resolve_output(given: str, override: Format | None = None) -> Output:
    fmt = override or format_of(given)
    if fmt is None:
        raise UsageError(f"cannot tell the format of --out {given} from its name: pass --output-format")
    return Output(locate(given), fmt)


class _FileWriter:
    """Writes to ``PATH.partial``; :meth:`close` moves it to ``PATH``, :meth:`abort` removes it."""

    def __init__(self, output: Output) -> None:
        self.filesystem = output.location.filesystem
        self.path = output.location.path
        self.partial = self.path + PARTIAL_SUFFIX
        self.given = output.location.given
        try:
            if output.location.is_local:
                self.filesystem.create_dir(str(Path(self.path).parent), recursive=True)
            self._open()
        except (OSError, pa.ArrowException) as exc:
            raise UsageError(f"cannot write {self.given}: {exc}") from None

    def _open(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._finish()
        self.filesystem.move(self.partial, self.path)

    def abort(self) -> None:
        try:
            self._finish()
            self.filesystem.delete_file(self.partial)
        except (OSError, pa.ArrowException):
            pass


class JsonlWriter(_FileWriter):
    """One ``officeray run --json`` record per line."""

    def _open(self) -> None:
        self.stream = self.filesystem.open_output_stream(self.partial)

    def write(self, index: int, record: TaskRecord) -> None:
        self.stream.write((json.dumps(record_json(record), default=str) + "\n").encode())

    def _finish(self) -> None:
        if not self.stream.closed:
            self.stream.close()


class ParquetWriter(_FileWriter):
    """One :func:`flat_row` per task, in row groups of :data:`PARQUET_ROW_GROUP_ROWS`."""

    def __init__(self, output: Output, run_id: str) -> None:
        self.run_id = run_id
        self.rows: list[dict[str, Any]] = []
        super().__init__(output)

    def _open(self) -> None:
        self.writer = pq.ParquetWriter(self.partial, RESULT_SCHEMA, filesystem=self.filesystem)

    def write(self, index: int, record: TaskRecord) -> None:
        self.rows.append(flat_row(record, index=index, run_id=self.run_id))
        if len(self.rows) >= PARQUET_ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=RESULT_SCHEMA))
            self.rows = []

    def _finish(self) -> None:
        if self.writer.is_open:
            self._flush()
            self.writer.close()


def open_writer(output: Output, run_id: str) -> ResultWriter:
    """A writer of ``output`` (its parent directory made when local); :class:`UsageError` when it
    cannot be written."""
    if output.format == "parquet":
        return ParquetWriter(output, run_id)
    return JsonlWriter(output)
