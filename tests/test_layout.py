"""The house keeps its shape: no import cycle inside the package, nothing imports the command layer,
a small top level, and no pointer to documents the project does not ship."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "atwu_fast"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_the_resolver_sees_relative_imports():
    g = graph()
    assert "atwu_fast.train.config" in g["atwu_fast.train.trainer"]
    assert "atwu_fast.methods.base" in g["atwu_fast.train.trainer"]
    assert "atwu_fast.unlearn.driver" in g["atwu_fast.unlearn.__main__"]


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if not state.get(node):
            visit(node)


def test_nothing_imports_the_command_layer():
    """``python -m atwu_fast.<command>`` modules parse arguments and call the library; the library
    never reaches up into them."""
    g = graph()
    commands = {m for m in g if m.endswith(".__main__")}
    assert {"atwu_fast.unlearn.__main__", "atwu_fast.eval.__main__", "atwu_fast.report.__main__",
            "atwu_fast.plan.__main__", "atwu_fast.finetune.__main__", "atwu_fast.tune.__main__"} <= commands
    upward = sorted((m, c) for m, deps in g.items() for c in deps & commands)
    assert not upward, upward


COMMANDS = {"unlearn", "eval", "report", "plan", "finetune", "tune"}  # python -m atwu_fast.<name>
LAYERS = {"suites", "methods", "train", "model", "data", "config"}


def test_top_level_is_the_documented_layers_and_commands():
    """A closed list (docs/architecture.md says why each entry is there): a new one is a decision."""
    entries = {p.name for p in PACKAGE.iterdir() if p.name not in ("__init__.py", "__pycache__")}
    assert entries == COMMANDS | LAYERS, sorted(entries ^ (COMMANDS | LAYERS))
    assert all((PACKAGE / name / "__main__.py").is_file() for name in COMMANDS)
    assert not any((PACKAGE / name / "__main__.py").is_file() for name in LAYERS)


def test_no_pointer_to_documents_outside_the_project():
    """The design notes the project grew from are not shipped: a name like theirs must be a file of
    the project (relative to the root or to the naming file's folder)."""
    shipped = [*PACKAGE.rglob("*.py"), *(ROOT / "atwu_kernels").rglob("*.py"), *(ROOT / "docs").rglob("*.md"),
               ROOT / "README.md"]
    pattern = re.compile(r"[\w./-]*\b(?:ATWU|DESIGN|kernels)\.md\b")
    found = [f"{p.relative_to(ROOT)}:{i}: {name}" for p in shipped for i, line in enumerate(p.read_text().splitlines(), 1)
             for name in pattern.findall(line)
             if not any((base / name).is_file() for base in (ROOT, p.parent))]
    assert not found, found


def test_every_top_level_package_folder_is_named_as_it_is_imported():
    """A folder at the repository root with an ``__init__.py`` is importable under its folder name whenever
    the root is on ``sys.path`` (pytest, ``python -m`` from a checkout). A package installed under another
    name would shadow a third-party module of the folder's name: the kernels once lived in ``kernels/``,
    which hid the ``kernels`` package that transformers imports."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    top = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert "package-dir" not in setuptools
    assert top - {"studies"} <= declared  # studies/: research grids run from a checkout, not shipped
    assert {name for name in declared if "." not in name} <= top


def test_each_benchmark_is_one_folder_under_suites_and_eval_is_benchmark_neutral():
    """A benchmark's reader, suite, evaluation and data files live in ``suites/<name>/``; ``eval/`` keeps
    only metric code every benchmark shares (its command aside), so it imports no suite."""
    from atwu_fast.suites import SUITES
    from atwu_fast.suites.config import BenchmarkConfig
    from atwu_fast.suites.tofu.tiny import TinyTofuSuite

    for name, suite in {**SUITES, "tofu (tiny)": TinyTofuSuite}.items():
        parts = suite.__module__.split(".")
        assert parts[:2] == ["atwu_fast", "suites"] and len(parts) in (3, 4), (name, suite.__module__)
        assert (PACKAGE / "suites" / parts[2] / "__init__.py").is_file(), (name, suite.__module__)
    benchmark_words = {n.split()[0] for n in SUITES}
    eval_modules = [p.stem for p in (PACKAGE / "eval").glob("*.py")]
    assert not [m for m in eval_modules if any(word in m for word in benchmark_words)], eval_modules
    g = graph()
    reaching_up = sorted((m, d) for m, deps in g.items() if m.startswith("atwu_fast.eval") and m != "atwu_fast.eval.__main__"
                         for d in deps if d.startswith("atwu_fast.suites"))
    assert not reaching_up, reaching_up
    loose = sorted(p.name for p in (PACKAGE / "suites").glob("*.py")
                   if any(p.stem.startswith(word) for word in benchmark_words))
    assert not loose, loose  # no benchmark module left beside the folders
    # a real benchmark's own options live in its folder's config.py, and no option is both shared and its own
    shared = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    for name, suite in SUITES.items():
        if name in suite.sections:
            own = suite.sections[name]
            assert own.__module__ == f"atwu_fast.suites.{name}.config", (name, own.__module__)
            assert not shared & {f.name for f in dataclasses.fields(own)}, name


TEST_TIERS = {"e2e": "the commands end to end", "kernels": "atwu_kernels", "zoo": "every model family",
              "fixtures": "shipped test data"}


def test_tests_mirror_the_package():
    """``tests/<entry>/`` tests ``atwu_fast/<entry>/``; the few other folders are named tiers."""
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    package = COMMANDS | LAYERS
    assert folders - package <= set(TEST_TIERS), sorted(folders - package - set(TEST_TIERS))
    assert {"suites", "model", "plan", "methods", "train", "data", "eval"} <= folders
