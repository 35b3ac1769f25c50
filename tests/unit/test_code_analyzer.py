"""code_analyzer: the shipped sample project, and one small fixture per resolution rule."""

from __future__ import annotations

import ast
import re
import shutil
import textwrap
from collections import deque
from pathlib import Path

import pytest

from tools_sandbox.agent.errors import ToolInputError
from tools_sandbox.agent.tools.code_analyzer import AnalyzerLimits, analyze

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_project"


def write(root: Path, files: dict[str, str]) -> str:
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    return str(root)


def names(result: dict) -> list[str]:
    return [hop["name"] for hop in result["path"]]


def def_line(path: Path, name: str) -> int:
    """Line of the (first) ``def name`` in a file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node.lineno
    raise AssertionError(f"no def {name} in {path}")


# --- the shipped sample project ----------------------------------------------------------------------

SAMPLE_PATH = [
    ("app.main.main", "app/main.py", "main"),
    ("app.pipeline.Pipeline.run", "app/pipeline.py", "run"),
    ("app.pipeline.Pipeline._execute", "app/pipeline.py", "_execute"),
    ("app.processing.stages.apply_all", "app/processing/stages.py", "apply_all"),
    ("app.processing.stages.apply", "app/processing/stages.py", "apply"),
    ("app.processing.core.process_data", "app/processing/core.py", "process_data"),
]


def test_sample_project_main_to_process_data() -> None:
    result = analyze(str(SAMPLE), "main", "process_data")
    assert result["found"] is True
    expected = [
        {"name": name, "file": file, "line": def_line(SAMPLE / file, func)}
        for name, file, func in SAMPLE_PATH
    ]
    assert result["path"] == expected
    assert result["paths"] == [expected]  # the same shape as for an ambiguous name
    assert result["unreachable_candidates"] == []
    assert result["hops"] == 5
    assert result["message"] == (
        "main → Pipeline.run → Pipeline._execute → apply_all → apply → process_data (5 hops)"
    )
    assert result["files_indexed"] == 12
    assert result["functions_indexed"] == 20
    assert result["skipped_files"] == []


def test_sample_project_lines_are_as_shipped() -> None:
    # Hard-coded too, so that an edit of the sample project is noticed here.
    result = analyze(str(SAMPLE), "app.main.main", "app.processing.core.process_data")
    assert [(hop["file"], hop["line"]) for hop in result["path"]] == [
        ("app/main.py", 12),
        ("app/pipeline.py", 19),
        ("app/pipeline.py", 32),
        ("app/processing/stages.py", 14),
        ("app/processing/stages.py", 20),
        ("app/processing/core.py", 8),
    ]


def test_sample_project_from_the_package_folder_keeps_package_names() -> None:
    result = analyze(str(SAMPLE / "app"), "main", "process_data")
    assert names(result) == [name for name, _, _ in SAMPLE_PATH]
    assert result["path"][0]["file"] == "main.py"


def test_sample_package_staged_under_another_name(tmp_path: Path) -> None:
    """The sandbox stages a folder as ``staged-<random>``: the package name comes from its imports."""
    staged = tmp_path / "staged-1a2b3c"
    shutil.copytree(SAMPLE / "app", staged, ignore=shutil.ignore_patterns("__pycache__"))
    result = analyze(str(staged), "main", "process_data")
    assert names(result) == [name for name, _, _ in SAMPLE_PATH]
    assert result["path"][-1]["file"] == "processing/core.py"


def test_unnamed_package_folder(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "staged-x",
        {
            "__init__.py": "def helper():\n    pass\n",
            "sub/__init__.py": "",
            "sub/mod.py": "from .. import helper\n\ndef start():\n    helper()\n",
        },
    )
    result = analyze(folder, "start", "helper")
    assert result["path"] == [
        {"name": "sub.mod.start", "file": "sub/mod.py", "line": 3},
        {"name": "helper", "file": "__init__.py", "line": 1},
    ]


def test_sample_project_decoy_defeats_name_based_matching() -> None:
    """Matching calls by name alone answers wrongly on the sample; the analyzer does not."""
    functions: dict[str, list[str]] = {}  # bare name -> "file:name"
    calls: dict[str, list[tuple[str, bool]]] = {}  # "file:name" -> (name called, through an attribute?)
    for path in sorted(SAMPLE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                key = f"{path.relative_to(SAMPLE).as_posix()}:{node.name}"
                functions.setdefault(node.name, []).append(key)
                calls[key] = [
                    (c.func.id, False) if isinstance(c.func, ast.Name) else (c.func.attr, True)
                    for c in ast.walk(node)
                    if isinstance(c, ast.Call) and isinstance(c.func, ast.Name | ast.Attribute)
                ]

    def naive_path(start: str, end: str, *, attributes: bool) -> list[str]:
        parents: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            current = queue.popleft()
            if current.endswith(":" + end):
                path = []
                step: str | None = current
                while step:
                    path.append(step)
                    step = parents[step]
                return path[::-1]
            for name, through_attribute in calls[current]:
                if through_attribute and not attributes:
                    continue
                for callee in functions.get(name, []):
                    if callee not in parents:
                        parents[callee] = current
                        queue.append(callee)
        return []

    start = functions["main"][0]
    # Bare-name calls only (the seed's matcher): the real route uses attribute calls, so nothing is found.
    assert naive_path(start, "process_data", attributes=False) == []
    # Matching attribute calls by name: pipeline.run() is taken for the decoy batch.run, a wrong path.
    wrong = naive_path(start, "process_data", attributes=True)
    assert wrong == ["app/main.py:main", "app/processing/batch.py:run", "app/processing/core.py:process_data"]

    result = analyze(str(SAMPLE), "main", "process_data")
    assert "app.processing.batch.run" not in names(result)
    assert len(result["path"]) > len(wrong)
    # The decoy exists and does call process_data; main simply never reaches it.
    decoy = analyze(str(SAMPLE), "app.processing.batch.run", "process_data")
    assert names(decoy) == ["app.processing.batch.run", "app.processing.core.process_data"]
    assert analyze(str(SAMPLE), "main", "app.processing.batch.run")["found"] is False


def test_sample_project_ambiguous_run_is_resolved_by_reachability() -> None:
    """``run`` matches Pipeline.run and the decoy batch.run: main reaches only the first."""
    result = analyze(str(SAMPLE), "main", "run")
    assert result["found"] is True
    assert names(result) == ["app.main.main", "app.pipeline.Pipeline.run"]
    assert result["paths"] == [result["path"]]
    assert result["unreachable_candidates"] == [
        {
            "role": "end_func",
            "name": "app.processing.batch.run",
            "file": "app/processing/batch.py",
            "line": 15,
        }
    ]
    assert result["message"] == (
        "main → Pipeline.run (1 hop); end_func 'run' also matches "
        "app.processing.batch.run (app/processing/batch.py:15), which main does not reach"
    )
    assert analyze(str(SAMPLE), "main", "Pipeline.run")["hops"] == 1


def test_sample_project_reverse_has_no_path() -> None:
    result = analyze(str(SAMPLE), "process_data", "main")
    assert result["found"] is False
    assert result["path"] == []
    assert result["hops"] == 0
    assert result["message"].startswith(
        "no call path from app.processing.core.process_data to app.main.main "
        "(20 functions in 12 files indexed)"
    )
    assert "process_data reaches 1 function." in result["message"]


# --- resolution rules, one fixture each --------------------------------------------------------------


def test_aliased_from_import(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "a.py": """
                from b import target as t

                def start():
                    t()
            """,
            "b.py": "def target():\n    pass\n",
        },
    )
    result = analyze(folder, "start", "target")
    assert names(result) == ["a.start", "b.target"]
    assert result["path"][1] == {"name": "b.target", "file": "b.py", "line": 1}
    assert result["message"] == "start → target (1 hop)"


def test_import_dotted_module_then_attribute_call(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "main.py": """
                import pkg.sub.mod

                def start():
                    return pkg.sub.mod.target()
            """,
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/mod.py": "def target():\n    return 1\n",
        },
    )
    assert names(analyze(folder, "start", "target")) == ["main.start", "pkg.sub.mod.target"]


def test_import_from_namespace_packages_without_init(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "main.py": "import ns.mod\n\ndef start():\n    ns.mod.target()\n",
            "ns/mod.py": "def target():\n    pass\n",
        },
    )
    assert names(analyze(folder, "start", "target")) == ["main.start", "ns.mod.target"]


def test_import_module_as_alias(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "main.py": """
                import pkg.mod as m

                def start():
                    m.target()
            """,
            "pkg/__init__.py": "",
            "pkg/mod.py": "def target():\n    pass\n",
        },
    )
    assert names(analyze(folder, "start", "target")) == ["main.start", "pkg.mod.target"]


def test_relative_imports(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from . import helpers\n",
            "pkg/sub/entry.py": """
                from . import helpers
                from .helpers import step as first_step
                from ..core import finish

                def start():
                    first_step()

                def via_module():
                    helpers.step()

                def via_parent():
                    finish()
            """,
            "pkg/sub/helpers.py": """
                from .. import core

                def step():
                    core.finish()
            """,
            "pkg/core.py": "def finish():\n    pass\n",
        },
    )
    assert names(analyze(folder, "start", "finish")) == [
        "pkg.sub.entry.start",
        "pkg.sub.helpers.step",
        "pkg.core.finish",
    ]
    assert analyze(folder, "via_module", "step")["hops"] == 1
    assert analyze(folder, "via_parent", "finish")["hops"] == 1


def test_reexport_through_package_init(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "main.py": """
                from pkg import target
                import pkg

                def start():
                    target()

                def other():
                    pkg.target()
            """,
            "pkg/__init__.py": "from .impl import target\n",
            "pkg/impl.py": "def target():\n    pass\n",
        },
    )
    assert names(analyze(folder, "start", "target")) == ["main.start", "pkg.impl.target"]
    assert names(analyze(folder, "other", "target")) == ["main.other", "pkg.impl.target"]


def test_self_method(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "svc.py": """
                class Service:
                    def run(self):
                        self._step()

                    def _step(this_is_self):
                        this_is_self.target()

                    def target(self):
                        pass
            """,
        },
    )
    result = analyze(folder, "Service.run", "Service.target")
    assert names(result) == ["svc.Service.run", "svc.Service._step", "svc.Service.target"]
    assert [hop["line"] for hop in result["path"]] == [2, 5, 8]


def test_inherited_method_via_self_from_another_module(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "base.py": """
                class Base:
                    def helper(self):
                        pass
            """,
            "child.py": """
                import base as b

                class Child(b.Base):
                    def run(self):
                        self.helper()
            """,
        },
    )
    assert names(analyze(folder, "run", "helper")) == ["child.Child.run", "base.Base.helper"]


def test_method_resolution_order_and_super(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                class A:
                    def hook(self):
                        pass

                class B(A):
                    pass

                class C(A):
                    def hook(self):
                        super().hook()

                class D(B, C):
                    def run(self):
                        self.hook()
            """,
        },
    )
    # C3 order D, B, C, A: self.hook() is C.hook, which reaches A.hook through super().
    assert names(analyze(folder, "D.run", "A.hook")) == ["m.D.run", "m.C.hook", "m.A.hook"]


def test_self_method_may_run_a_subclass_override(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                class Job:
                    def run(self):
                        self.work()

                    def work(self):
                        raise NotImplementedError

                class Export(Job):
                    def work(self):
                        write()

                def write():
                    pass
            """,
        },
    )
    assert names(analyze(folder, "Job.run", "write")) == ["m.Job.run", "m.Export.work", "m.write"]


def test_classmethod_cls_and_class_attribute_call(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                class Repo:
                    @classmethod
                    def create(cls):
                        return cls.build()

                    @staticmethod
                    def build():
                        pass

                def start():
                    Repo.create()
            """,
        },
    )
    assert names(analyze(folder, "start", "build")) == ["m.start", "m.Repo.create", "m.Repo.build"]


def test_class_instantiation_calls_init(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                from other import Plain

                class Foo:
                    def __init__(self):
                        setup()

                def setup():
                    pass

                def start():
                    Plain()
                    return Foo()
            """,
            "other.py": "class Plain:\n    pass\n\ndef unrelated():\n    pass\n",
        },
    )
    assert names(analyze(folder, "start", "setup")) == ["m.start", "m.Foo.__init__", "m.setup"]
    # A class without __init__ gives no edge and no error.
    assert analyze(folder, "start", "unrelated")["found"] is False


def test_local_variable_and_attribute_types(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                from store import Store

                class App:
                    def __init__(self):
                        self.store = Store()

                    def save(self):
                        self.store.write()

                def start():
                    app = App()
                    app.save()

                def annotated(store: "Store | None"):
                    store.write()

                def factory():
                    return Store()

                def through_factory():
                    factory().write()
            """,
            "store.py": "class Store:\n    def write(self):\n        pass\n",
        },
    )
    assert names(analyze(folder, "start", "write")) == ["m.start", "m.App.save", "store.Store.write"]
    assert analyze(folder, "annotated", "write")["hops"] == 1
    assert analyze(folder, "through_factory", "write")["hops"] == 1


def test_nested_import_in_function_body_is_local(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "a.py": """
                def start():
                    from b import target
                    target()

                def elsewhere():
                    target()  # not imported in this function: not b.target
            """,
            "b.py": "def target():\n    pass\n",
        },
    )
    assert names(analyze(folder, "start", "target")) == ["a.start", "b.target"]
    assert analyze(folder, "elsewhere", "target")["found"] is False


def test_nested_functions_and_lambdas(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                def outer():
                    def inner():
                        target()
                    return inner()

                def with_lambda(items):
                    return sorted(items, key=lambda item: target())

                def target():
                    pass
            """,
        },
    )
    result = analyze(folder, "outer", "target")
    assert names(result) == ["m.outer", "m.outer.inner", "m.target"]
    assert result["path"][1]["line"] == 2
    assert analyze(folder, "outer.inner", "target")["hops"] == 1
    assert analyze(folder, "with_lambda", "target")["hops"] == 1


def test_parameters_shadow_global_names(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                def start(target):
                    target()

                def target():
                    pass
            """,
        },
    )
    assert analyze(folder, "start", "m.target")["found"] is False


def test_recursion_and_cycles_terminate(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                import m

                def a(n):
                    a(n - 1)
                    b()

                def b():
                    m.a(1)
                    c()

                def c():
                    b()
                    d()

                def d():
                    pass

                def island():
                    island()
            """,
        },
    )
    assert names(analyze(folder, "a", "d")) == ["m.a", "m.b", "m.c", "m.d"]
    result = analyze(folder, "a", "island")
    assert result["found"] is False
    assert "a reaches 3 functions" in result["message"]


def test_import_cycle_between_modules_terminates(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "a.py": "from b import f\n\ndef start():\n    f()\n",
            "b.py": "from a import f\n",
            "c.py": "def f():\n    pass\n",
        },
    )
    assert analyze(folder, "start", "f")["found"] is False


def test_shortest_of_two_paths(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                def start():
                    long_1()
                    short()

                def long_1():
                    long_2()

                def long_2():
                    end()

                def short():
                    end()

                def end():
                    pass
            """,
        },
    )
    result = analyze(folder, "start", "end")
    assert names(result) == ["m.start", "m.short", "m.end"]
    assert result["hops"] == 2


def test_same_function_is_zero_hops(tmp_path: Path) -> None:
    folder = write(tmp_path, {"m.py": "def f():\n    f()\n"})
    result = analyze(folder, "f", "f")
    assert result["found"] is True
    assert result["hops"] == 0
    assert names(result) == ["m.f"]


def test_no_path_message(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": "def start():\n    helper()\n\ndef helper():\n    pass\n",
            "n.py": "def goal():\n    pass\n",
        },
    )
    result = analyze(folder, "start", "goal")
    assert result == {
        "found": False,
        "path": [],
        "hops": 0,
        "message": (
            "no call path from m.start to n.goal (3 functions in 2 files indexed); start reaches 1 function. "
            "Calls made dynamically (getattr, callbacks, dispatch tables) cannot be followed"
        ),
        "paths": [],
        "unreachable_candidates": [],
        "functions_indexed": 3,
        "files_indexed": 2,
        "skipped_files": [],
    }


# --- name matching -----------------------------------------------------------------------------------


@pytest.fixture
def two_runs(tmp_path: Path) -> str:
    return write(
        tmp_path,
        {
            "jobs/__init__.py": "",
            "jobs/a.py": "def run():\n    pass\n\nclass Task:\n    def run(self):\n        pass\n",
            "jobs/b.py": "def run():\n    pass\n\ndef entry():\n    pass\n",
        },
    )


def test_ambiguous_bare_name_lists_candidates(two_runs: str) -> None:
    """No candidate is reachable: the ambiguity is an error, in the format the planner parses."""
    with pytest.raises(ToolInputError) as info:
        analyze(two_runs, "entry", "run")
    message = str(info.value)
    assert message.startswith(
        "end_func 'run' is ambiguous: it matches 3 functions: "
        "jobs.a.Task.run (jobs/a.py:5), jobs.a.run (jobs/a.py:1), jobs.b.run (jobs/b.py:1). "
    )
    assert "None of them is reachable from jobs.b.entry (entry reaches 0 functions)" in message
    assert message.endswith("; Use a qualified name such as 'jobs.a.Task.run'")
    assert info.value.error_type == "bad_input"


# --- ambiguous names resolved by reachability ----------------------------------------------------------

RUN_TO_PROCESS_DATA = {
    "main.py": """
        from runner import run

        def main():
            run()
    """,
    "runner.py": """
        from pkg.a import process_data

        def run():
            process_data([])
    """,
    "pkg/__init__.py": "",
    "pkg/a.py": "def process_data(rows):\n    return rows\n",
    "pkg/b.py": "def helper():\n    pass\n\n\ndef process_data(rows):\n    return rows\n",
}


def test_ambiguous_end_one_reachable(tmp_path: Path) -> None:
    result = analyze(write(tmp_path, RUN_TO_PROCESS_DATA), "main", "process_data")
    assert result["found"] is True
    assert names(result) == ["main.main", "runner.run", "pkg.a.process_data"]
    assert result["hops"] == 2
    assert result["paths"] == [result["path"]]
    assert result["unreachable_candidates"] == [
        {"role": "end_func", "name": "pkg.b.process_data", "file": "pkg/b.py", "line": 5}
    ]
    assert result["message"] == (
        "main → run → process_data (2 hops); end_func 'process_data' also matches "
        "pkg.b.process_data (pkg/b.py:5), which main does not reach"
    )


def test_ambiguous_end_both_reachable_shortest_wins(tmp_path: Path) -> None:
    files = {
        **RUN_TO_PROCESS_DATA,
        "main.py": """
            from runner import run
            from pkg import b

            def main():
                run()
                b.helper()
        """,
        "pkg/b.py": "def helper():\n    process_data([])\n\n\ndef process_data(rows):\n    return rows\n",
        # pkg.c.process_data is as far as pkg.a's: a tie, decided by the qualified names
        "runner.py": """
            from pkg.a import process_data
            from pkg import c

            def run():
                process_data([])
                c.process_data([])
        """,
        "pkg/c.py": "def process_data(rows):\n    return rows\n",
    }
    folder = write(tmp_path, files)
    result = analyze(folder, "main", "process_data")
    assert names(result) == ["main.main", "runner.run", "pkg.a.process_data"]
    assert [[hop["name"] for hop in path] for path in result["paths"]] == [
        ["main.main", "runner.run", "pkg.a.process_data"],
        ["main.main", "pkg.b.helper", "pkg.b.process_data"],
        ["main.main", "runner.run", "pkg.c.process_data"],
    ]
    assert result["unreachable_candidates"] == []
    assert result["message"] == (
        "main → run → process_data (2 hops); 3 paths join the candidates, the shortest is shown (see paths)"
    )
    # a shorter route to one candidate wins over the order of names
    (tmp_path / "main.py").write_text("from pkg import c\n\ndef main():\n    c.process_data([])\n")
    assert names(analyze(folder, "main", "process_data")) == ["main.main", "pkg.c.process_data"]


def test_ambiguous_none_reachable_is_an_error(tmp_path: Path) -> None:
    files = {**RUN_TO_PROCESS_DATA, "runner.py": "def run():\n    pass\n"}
    with pytest.raises(ToolInputError) as info:
        analyze(write(tmp_path, files), "main", "process_data")
    assert str(info.value) == (
        "end_func 'process_data' is ambiguous: it matches 2 functions: "
        "pkg.a.process_data (pkg/a.py:1), pkg.b.process_data (pkg/b.py:5). "
        "None of them is reachable from main.main (main reaches 1 function); "
        "Use a qualified name such as 'pkg.a.process_data'"
    )


def test_ambiguous_start_only_one_reaches(tmp_path: Path) -> None:
    files = {**RUN_TO_PROCESS_DATA, "tools/main.py": "def main():\n    pass\n"}
    result = analyze(write(tmp_path, files), "main", "pkg.a.process_data")
    assert names(result) == ["main.main", "runner.run", "pkg.a.process_data"]
    assert result["unreachable_candidates"] == [
        {"role": "start_func", "name": "tools.main.main", "file": "tools/main.py", "line": 1}
    ]
    assert result["message"] == (
        "main → run → process_data (2 hops); start_func 'main' also matches "
        "tools.main.main (tools/main.py:1), which does not reach process_data"
    )


def test_both_ambiguous(tmp_path: Path) -> None:
    files = {**RUN_TO_PROCESS_DATA, "tools/main.py": "def main():\n    pass\n"}
    folder = write(tmp_path, files)
    result = analyze(folder, "main", "process_data")
    assert names(result) == ["main.main", "runner.run", "pkg.a.process_data"]
    assert [(c["role"], c["name"]) for c in result["unreachable_candidates"]] == [
        ("start_func", "tools.main.main"),
        ("end_func", "pkg.b.process_data"),
    ]
    assert result["message"] == (
        "main → run → process_data (2 hops); end_func 'process_data' also matches "
        "pkg.b.process_data (pkg/b.py:5), which no candidate of start_func 'main' reaches; "
        "start_func 'main' also matches tools.main.main (tools/main.py:1), which reaches no candidate "
        "of end_func 'process_data'"
    )
    (tmp_path / "runner.py").write_text("def run():\n    pass\n")
    with pytest.raises(ToolInputError) as info:
        analyze(folder, "main", "process_data")
    assert str(info.value) == (
        "start_func 'main' is ambiguous: it matches 2 functions: main.main (main.py:3), "
        "tools.main.main (tools/main.py:1). None of them reaches any of the 2 functions end_func "
        "'process_data' matches (pkg.a.process_data (pkg/a.py:1), pkg.b.process_data (pkg/b.py:5)); "
        "Use a qualified name such as 'main.main'"
    )


def test_ambiguous_error_prefix_is_parsable(tmp_path: Path) -> None:
    """The planner reads the candidates back from the message: the prefix and list keep their format."""
    files = {**RUN_TO_PROCESS_DATA, "runner.py": "def run():\n    pass\n"}
    with pytest.raises(ToolInputError) as info:
        analyze(write(tmp_path, files), "main", "process_data")
    match = re.match(r"(\w+) '([^']+)' is ambiguous: it matches (\d+) functions: (.*?\))\. ", str(info.value))
    assert match is not None
    role, name, count, listed = match.groups()
    assert (role, name, count) == ("end_func", "process_data", "2")
    assert re.findall(r"([\w.]+) \(([^:()]+):(\d+)\)", listed) == [
        ("pkg.a.process_data", "pkg/a.py", "1"),
        ("pkg.b.process_data", "pkg/b.py", "5"),
    ]


def test_too_many_start_candidates_is_refused(tmp_path: Path) -> None:
    folder = write(tmp_path, {f"m{i}.py": "def f():\n    g()\n\ndef g():\n    pass\n" for i in range(3)})
    with pytest.raises(ToolInputError) as info:
        analyze(folder, "f", "m0.g", limits=AnalyzerLimits(max_start_candidates=2))
    assert str(info.value).startswith(
        "start_func 'f' is ambiguous: it matches 3 functions: "
        "m0.f (m0.py:1), m1.f (m1.py:1), m2.f (m2.py:1). Too many to search (the limit is 2)"
    )
    assert names(analyze(folder, "f", "m0.g", limits=AnalyzerLimits(max_start_candidates=3))) == [
        "m0.f",
        "m0.g",
    ]


def test_paths_listed_are_capped(tmp_path: Path) -> None:
    folder = write(tmp_path, {f"m{i}.py": "def f():\n    g()\n\ndef g():\n    pass\n" for i in range(4)})
    result = analyze(folder, "f", "g", limits=AnalyzerLimits(max_paths_listed=2))
    assert [[hop["name"] for hop in path] for path in result["paths"]] == [["m0.f", "m0.g"], ["m1.f", "m1.g"]]
    assert "4 paths join the candidates" in result["message"]
    # each m{i}.f reaches only its own g: every candidate is on a path
    assert result["unreachable_candidates"] == []


def test_a_search_stops_after_the_visit_limit(tmp_path: Path) -> None:
    chain = "".join(f"def f{i}():\n    f{i + 1}()\n\n" for i in range(6)) + "def f6():\n    pass\n"
    folder = write(tmp_path, {"m.py": chain})
    result = analyze(folder, "f0", "f6", limits=AnalyzerLimits(max_search_visits=3))
    assert result["found"] is False
    assert "f0 reaches more than 3 functions (the search stopped after 3 of them)" in result["message"]
    assert analyze(folder, "f0", "f6", limits=AnalyzerLimits(max_search_visits=7))["hops"] == 6


def test_qualified_names_disambiguate(two_runs: str) -> None:
    assert analyze(two_runs, "jobs.b.run", "jobs.b.run")["path"][0]["name"] == "jobs.b.run"
    assert analyze(two_runs, "Task.run", "Task.run")["path"][0]["name"] == "jobs.a.Task.run"
    assert analyze(two_runs, "a.run", "a.run")["path"][0]["name"] == "jobs.a.run"
    assert analyze(two_runs, "entry()", "entry")["path"][0]["name"] == "jobs.b.entry"


def test_unknown_name_suggests_close_matches(two_runs: str) -> None:
    with pytest.raises(ToolInputError) as info:
        analyze(two_runs, "entyr", "run")
    message = str(info.value)
    assert "start_func 'entyr' not found among 4 functions in 3 files" in message
    assert "did you mean: jobs.b.entry?" in message


def test_unknown_name_without_close_match(two_runs: str) -> None:
    with pytest.raises(ToolInputError, match="not found") as info:
        analyze(two_runs, "entry", "zzzzzzzz")
    assert "did you mean" not in str(info.value)


# --- folders, files and limits -----------------------------------------------------------------------


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ToolInputError, match="does not exist"):
        analyze(str(tmp_path / "missing"), "a", "b")
    (tmp_path / "file.py").write_text("def a():\n    pass\n")
    with pytest.raises(ToolInputError, match="not a directory"):
        analyze(str(tmp_path / "file.py"), "a", "b")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("def a(): pass")
    with pytest.raises(ToolInputError, match="no Python"):
        analyze(str(tmp_path / "empty"), "a", "b")


def test_unparsable_and_oversized_files_are_skipped(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "good.py": "def start():\n    pass\n",
            "broken.py": "def oops(:\n",
            "big.py": "def big():\n    pass\n" + "#" * 200 + "\n",
            "escapes.py": "import re\n\ndef pattern():\n    return re.compile('\\d+')\n",
        },
    )
    result = analyze(folder, "start", "start", limits=AnalyzerLimits(max_file_bytes=150))
    assert result["files_indexed"] == 2
    skipped = {entry["file"]: entry["reason"] for entry in result["skipped_files"]}
    assert set(skipped) == {"big.py", "broken.py"}
    assert "syntax error at line 1" in skipped["broken.py"]
    assert "over the limit" in skipped["big.py"]


def test_all_files_broken(tmp_path: Path) -> None:
    folder = write(tmp_path, {"broken.py": "def oops(:\n"})
    with pytest.raises(ToolInputError, match="could be parsed"):
        analyze(folder, "a", "b")


def test_too_many_files_is_refused(tmp_path: Path) -> None:
    folder = write(tmp_path, {f"m{i}.py": "def f():\n    pass\n" for i in range(4)})
    with pytest.raises(ToolInputError, match="more than 3 Python files"):
        analyze(folder, "m0.f", "m1.f", limits=AnalyzerLimits(max_files=3))
    assert analyze(folder, "m0.f", "m0.f", limits=AnalyzerLimits(max_files=4))["files_indexed"] == 4


def test_hidden_cache_and_virtualenv_folders_are_not_searched(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": "def start():\n    pass\n",
            ".hidden/h.py": "def hidden():\n    pass\n",
            "__pycache__/c.py": "def cached():\n    pass\n",
            "venv/lib/v.py": "def venv_func():\n    pass\n",
            "env/pyvenv.cfg": "home = /usr/bin\n",
            "env/lib/e.py": "def env_func():\n    pass\n",
            "lib/site-packages/s.py": "def site_func():\n    pass\n",
        },
    )
    result = analyze(folder, "start", "start")
    assert result["files_indexed"] == 1
    assert result["functions_indexed"] == 1


def test_src_layout_absolute_imports(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "src/app/__init__.py": "",
            "src/app/cli.py": "from app.core import work\n\ndef start():\n    work()\n",
            "src/app/core.py": "def work():\n    pass\n",
        },
    )
    result = analyze(folder, "start", "work")
    assert names(result) == ["src.app.cli.start", "src.app.core.work"]
    assert result["path"][1]["file"] == "src/app/core.py"
    assert analyze(folder, "app.cli.start", "app.core.work")["hops"] == 1


def test_star_import(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": "from helpers import *\n\ndef start():\n    target()\n",
            "helpers.py": "from impl import target\n",
            "impl.py": "def target():\n    pass\n",
        },
    )
    assert names(analyze(folder, "start", "target")) == ["m.start", "impl.target"]


def test_cyclic_value_flows_stay_fast(tmp_path: Path) -> None:
    """Return values that depend on each other in a cycle, four routes per level: re-resolving them
    naively would take 4**12 steps; memoisation makes it linear."""
    levels = 12
    functions = [
        f"def f{i}(flag):\n    a, b = f{i + 1}(1), f{i + 1}(2)\n    c = f{i + 1}(3)\n"
        f"    return a or b if flag else c or f{i + 1}(4)\n"
        for i in range(levels)
    ]
    functions.append(f"def f{levels}(flag):\n    return f0(flag) if flag else Box()\n")
    source = "\n\n".join(functions)
    source += "\n\nclass Box:\n    def open(self):\n        pass\n\ndef start():\n    f0(True).open()\n"
    folder = write(tmp_path, {"m.py": source})
    assert names(analyze(folder, "start", "Box.open")) == ["m.start", "m.Box.open"]


def test_property_and_with_statement_types(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "m.py": """
                import functools

                class Client:
                    def fetch(self):
                        pass

                    def __enter__(self):
                        return self

                class Service:
                    @property
                    def client(self) -> Client:
                        return Client()

                    @functools.cached_property
                    def cached(self):
                        return Client()

                    def run(self):
                        self.client.fetch()

                    def run_cached(self):
                        self.cached.fetch()

                def session():
                    with Client() as client:
                        client.fetch()
            """,
        },
    )
    assert names(analyze(folder, "Service.run", "fetch")) == ["m.Service.run", "m.Client.fetch"]
    assert analyze(folder, "run_cached", "fetch")["hops"] == 1
    assert analyze(folder, "session", "fetch")["hops"] == 1
