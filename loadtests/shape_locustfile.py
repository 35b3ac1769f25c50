"""The staged load shape, as a locust :class:`~locust.LoadTestShape` (add it to ``-f`` to use it).

It plays back the stages of ``--shape-file`` (a JSON list of :class:`~loadtests.shapes.Stage`, as
``officeray loadtest --shape`` writes it; see :mod:`loadtests.shapes` for the kinds) and stops
the run after the last stage. It lives in its own file because locust uses any shape class found
in a locustfile.
"""

# isort: off
import locust  # noqa: F401  (first: gevent's monkey-patching)

# isort: on

from locust import LoadTestShape

from loadtests.shapes import Stage, read_stages, stage_at


class StagedShape(LoadTestShape):
    """``(users, spawn_rate)`` of the stage the run is in; None (stop) after the last stage."""

    def __init__(self) -> None:
        super().__init__()
        self._stages: list[Stage] | None = None

    def stages(self) -> list[Stage]:
        if self._stages is None:
            options = self.runner.environment.parsed_options if self.runner is not None else None
            path = getattr(options, "shape_file", "") if options is not None else ""
            if not path:
                raise ValueError("StagedShape needs --shape-file (a JSON list of stages)")
            self._stages = read_stages(path)
        return self._stages

    def tick(self) -> tuple[int, float] | None:
        stage = stage_at(self.stages(), self.get_run_time())
        if stage is None:
            return None
        return stage.users, stage.spawn_rate
