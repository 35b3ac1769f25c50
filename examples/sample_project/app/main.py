"""Command-line entry point: ``python -m app.main [key=value ...]``."""

from __future__ import annotations

import sys

from app.config import load_config
from app.pipeline import Pipeline
from app.report import summarize


def main(argv: list[str] | None = None) -> int:
    config = load_config(sys.argv[1:] if argv is None else argv)
    pipeline = Pipeline(config)
    results = pipeline.run()
    print(summarize(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
