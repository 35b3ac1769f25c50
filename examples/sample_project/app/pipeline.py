"""The pipeline: loads the records and runs the configured stages over them, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from app.io import loader as ld
from app.processing import stages as st

Record = dict[str, Any]


class Pipeline:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.batch_size = int(config["options"]["batch_size"])

    def run(self) -> list[Record]:
        results: list[Record] = []
        for batch in self._batches(self._load()):
            results.extend(self._execute(batch))
        return results

    def _load(self) -> list[Record]:
        return ld.read_records(self.config["source"])

    def _batches(self, records: list[Record]) -> Iterator[list[Record]]:
        for start in range(0, len(records), self.batch_size):
            yield records[start : start + self.batch_size]

    def _execute(self, batch: list[Record]) -> list[Record]:
        return st.apply_all(self.config["stages"], batch, self.config["options"])
