"""A small record-scoring app: load records, run the configured stages over them, print a summary.

Used by officeray's example task "Trace the call sequence from main to process_data in
examples/sample_project". Run it from this folder with ``python -m app.main``.
"""

__version__ = "1.0.0"
