"""Tests that can fail, on the real dependencies, without the wall clock: an `ast`
read of every file under tests/ that fails on

- a test function (a `def test_...` anywhere under tests/) with no assertion. An assertion is
  an `assert` statement, a `pytest.raises` / `pytest.warns` (as a context or a call), a
  `pytest.fail(...)` call, or a call of an assertion helper: a function whose name, leading
  underscores removed, starts with `assert` or `check_` (`np.testing.assert_allclose`,
  `check_answer`, `_assert_works`). Helpers of that name defined under tests/ must hold an
  assertion themselves, by the same rule. Whatever sits inside the test's body counts,
  nested functions included (callbacks the test hands on);
- `importorskip` of a dependency that pyproject.toml declares as required (a broken install
  of one must fail, not skip): the modules of each distribution as installed, and its name;
- an `assert` that uses a difference of clock readings (`time.perf_counter`, `time.time`,
  `time.monotonic` and their `_ns` forms), directly or through a variable assigned, in the
  same function, from such a difference or from a variable that was (speed belongs in
  benchmarks/; a test checks order and counts). Comparing two readings (`a < b`) is order,
  not a duration, and passes.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
CLOCKS = {"perf_counter", "perf_counter_ns", "time", "time_ns", "monotonic", "monotonic_ns"}
Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


# ----------------------------------------------------------------------------- the rules


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def required_modules(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    """Top-level modules of the required dependencies: each distribution's modules as
    installed (mlcommons-loadgen is `mlperf_loadgen`), and its own name as a module."""
    declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = {
        _normalized(re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0]) for spec in declared
    }
    modules = {name.replace("-", "_") for name in names}
    for module, dists in importlib.metadata.packages_distributions().items():
        if any(_normalized(d) in names for d in dists):
            modules.add(module)
    return modules


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def is_helper_name(name: str) -> bool:
    """An assertion helper's name: `assert...` or `check_...`, leading underscores aside."""
    bare = name.lstrip("_")
    return bare.startswith(("assert", "check_"))


def _is_pytest_call(call: ast.Call, names: tuple[str, ...]) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id == "pytest" and func.attr in names
    return isinstance(func, ast.Name) and func.id in names


def has_assertion(node: ast.AST) -> bool:
    """Whether `node` holds an assertion (the module docstring's rule)."""
    for inner in ast.walk(node):
        if isinstance(inner, ast.Assert):
            return True
        if isinstance(inner, ast.Call) and (
            _is_pytest_call(inner, ("raises", "warns", "fail")) or is_helper_name(_callee(inner))
        ):
            return True
    return False


def _is_fixture(function: Function) -> bool:
    """A `@pytest.fixture` (named test_... or not, pytest does not collect it as a test)."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
            isinstance(target, ast.Name) and target.id == "fixture"
        ):
            return True
    return False


def _clock_names(tree: ast.Module) -> set[str]:
    """Names this module imported from `time` that read a clock (`from time import ...`)."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "time"
        for alias in node.names
        if alias.name in CLOCKS
    }


class _Clocks:
    """Which expressions of one function read a clock or hold a duration."""

    def __init__(self, function: Function, imported: set[str]) -> None:
        self.imported = imported
        self.readings: set[str] = set()  # variables assigned from a clock reading
        self.durations: set[str] = set()  # variables assigned from a difference of them
        assigns = [
            (targets, value)
            for node in ast.walk(function)
            for targets, value in _assignments(node)
        ]
        changed = True
        while changed:
            changed = False
            for targets, value in assigns:
                for kind, names in (
                    (self.duration, self.durations),
                    (self.reading, self.readings),
                ):
                    if kind(value) and not targets <= names:
                        names |= targets
                        changed = True

    def _is_clock_call(self, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            return func.value.id == "time" and func.attr in CLOCKS
        return isinstance(func, ast.Name) and func.id in self.imported

    def reading(self, node: ast.AST) -> bool:
        """`node` involves a clock reading (a call, or a variable assigned from one)."""
        return any(
            self._is_clock_call(n) or (isinstance(n, ast.Name) and n.id in self.readings)
            for n in ast.walk(node)
        )

    def duration(self, node: ast.AST) -> bool:
        """`node` involves a difference of clock readings, or a variable holding one."""
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id in self.durations:
                return True
            if (
                isinstance(n, ast.BinOp)
                and isinstance(n.op, ast.Sub)
                and (self.reading(n.left) or self.reading(n.right))
            ):
                return True
        return False


def _assignments(node: ast.AST) -> Iterator[tuple[set[str], ast.AST]]:
    def names(target: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}

    if isinstance(node, ast.Assign):
        yield set().union(*(names(t) for t in node.targets)), node.value
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value:
        yield names(node.target), node.value


def findings(path: Path, source: str, required: set[str]) -> list[Finding]:
    """Everything the three rules find in one file's `source`."""
    tree = ast.parse(source, str(path))
    name = path.relative_to(ROOT).as_posix() if path.is_absolute() else str(path)
    found: set[Finding] = set()
    imported = _clock_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) == "importorskip" and node.args:
            first = node.args[0]
            module = first.value if isinstance(first, ast.Constant) else None
            if isinstance(module, str) and module.split(".")[0] in required:
                what = f"importorskip({module!r}): a required dependency, import it"
                found.add(Finding(name, node.lineno, what))
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.name.startswith("test_") and not _is_fixture(node) and not has_assertion(node):
            found.add(Finding(name, node.lineno, f"{node.name} has no assertion"))
        elif is_helper_name(node.name) and not has_assertion(
            ast.Module(body=node.body, type_ignores=[])
        ):
            what = f"{node.name} is named as an assertion helper but asserts nothing"
            found.add(Finding(name, node.lineno, what))
        clocks = _Clocks(node, imported)
        for inner in ast.walk(node):
            if isinstance(inner, ast.Assert) and clocks.duration(inner.test):
                what = "asserts on a difference of clock readings (a speed: benchmarks/)"
                found.add(Finding(name, inner.lineno, what))
    return sorted(found)


# ----------------------------------------------------------------------------- the check


def test_every_test_under_tests_asserts_imports_what_it_needs_and_times_nothing() -> None:
    required = required_modules()
    files = sorted(TESTS.rglob("*.py"))
    assert Path(__file__) in files and len(files) > 50  # the walk found the suite
    found = [f for path in files for f in findings(path, path.read_text(), required)]
    assert not found, "\n".join(map(str, found))


def test_the_required_modules_come_from_pyproject_and_the_installed_distributions() -> None:
    required = required_modules()
    assert {"mlperf_loadgen", "onnxruntime", "onnx", "optuna", "openvino", "numpy"} <= required
    assert not {"torch", "tensorrt", "psycopg", "pynvml", "optuna_dashboard"} & required


# ------------------------------------------------------------- the checker on bad examples


def _check(source: str) -> list[str]:
    return [f.what for f in findings(Path("tests/example.py"), source, required_modules())]


@pytest.mark.parametrize(
    "body",
    [
        "def test_x():\n    f()\n",
        "def test_x():\n    assert_me = 1\n",  # a name, not a call
        "def test_x():\n    with open('f'):\n        pass\n",
        "async def test_x():\n    await f()\n",
        "class TestX:\n    def test_x(self):\n        self.f()\n",
    ],
)
def test_a_test_without_an_assertion_is_found(body: str) -> None:
    assert _check(body) == ["test_x has no assertion"]


@pytest.mark.parametrize(
    "body",
    [
        "def test_x():\n    assert f()\n",
        "def test_x():\n    with pytest.raises(ValueError):\n        f()\n",
        "def test_x():\n    with pytest.warns(UserWarning):\n        f()\n",
        "def test_x():\n    pytest.raises(ValueError, f)\n",
        "def test_x():\n    if f():\n        pytest.fail('no')\n",
        "def test_x():\n    np.testing.assert_allclose(f(), 1)\n",
        "def test_x():\n    check_answer(f())\n",
        "def test_x():\n    _assert_works(f())\n",
        "def test_x():\n    def cb():\n        assert f()\n    run(cb)\n",
    ],
)
def test_each_kind_of_assertion_counts(body: str) -> None:
    assert _check(body) == []


def test_a_fixture_named_test_is_not_a_test() -> None:
    assert _check("@pytest.fixture\ndef test_inputs():\n    return 1\n") == []
    assert _check("@pytest.fixture(scope='module')\ndef test_inputs():\n    return 1\n") == []
    assert _check("@other\ndef test_inputs():\n    return 1\n") == ["test_inputs has no assertion"]


def test_a_helper_named_as_an_assertion_must_assert() -> None:
    assert _check("def check_x(v):\n    print(v)\n") == [
        "check_x is named as an assertion helper but asserts nothing"
    ]
    assert _check("def _assert_ok(v):\n    assert v\n") == []
    assert _check("def check_x(v):\n    assert_y(v)\n") == []


@pytest.mark.parametrize(
    "line",
    [
        "lg = pytest.importorskip('mlperf_loadgen')",
        "ort = importorskip('onnxruntime.quantization')",
        "ov = pytest.importorskip('openvino', reason='x')",
        "np = pytest.importorskip('numpy')",
    ],
)
def test_importorskip_of_a_required_dependency_is_found(line: str) -> None:
    (what,) = _check(line + "\n")
    assert what.startswith("importorskip(") and "required dependency" in what


def test_importorskip_of_an_optional_extra_passes() -> None:
    assert _check("torch = pytest.importorskip('torch')\n") == []
    assert _check("pynvml = pytest.importorskip('pynvml')\n") == []


@pytest.mark.parametrize(
    "body",
    [
        "    t = time.perf_counter()\n    f()\n    assert time.perf_counter() - t < 30\n",
        "    t = time.time()\n    f()\n    elapsed = time.time() - t\n    assert elapsed < 1\n",
        "    t = monotonic()\n    f()\n    s = monotonic() - t\n    rate = n / s\n"
        "    assert rate > 10\n",
        "    t = time.monotonic_ns()\n    f()\n    assert 5 < (time.monotonic_ns() - t) / 1e9\n",
        "    t = time.perf_counter()\n    f()\n    d = 0\n    d += time.perf_counter() - t\n"
        "    assert d == pytest.approx(1, rel=0.5)\n",
    ],
)
def test_an_assert_on_a_clock_difference_is_found(body: str) -> None:
    source = "import time\nfrom time import monotonic\n\ndef test_x():\n" + body
    assert _check(source) == ["asserts on a difference of clock readings (a speed: benchmarks/)"]


def test_clock_readings_for_deadlines_and_order_pass() -> None:
    source = (
        "import time\n\n"
        "def test_x():\n"
        "    deadline = time.monotonic() + 30\n"
        "    while time.monotonic() < deadline:\n"
        "        time.sleep(max(0.0, deadline - time.monotonic()))\n"
        "    first, second = time.monotonic(), time.monotonic()\n"
        "    assert first <= second\n"
        "    assert time.monotonic() < deadline, 'never started'\n"
    )
    assert _check(source) == []
