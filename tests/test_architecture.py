"""The layer picture of docs/architecture.md, checked on the source: every import statement of `hybrid` and
`pipelines` — at the top of a module, inside functions, under TYPE_CHECKING — is an edge of the graph."""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("hybrid", "pipelines")

# Layers, bottom up. A package may import its own layer and the ones below, never one above.
LAYERS = {
    "hybrid.core": 0,  # errors, atomic IO, URL redaction, starting Ray
    "hybrid.config": 1,  # the config sections (leaves)
    "pipelines": 2,
    "pipelines.llm": 2,
    "hybrid.memory": 2,
    "hybrid.models": 2,
    "hybrid.data": 2,
    "hybrid.training": 2,
    "hybrid.tuning": 2,  # the libraries
    "hybrid.cli": 3,  # the command layer: parsing, printing, exit codes, the whole Config
    "hybrid.bench": 4,
    "hybrid": 4,  # benchmarks, the demo, the `hybrid` program (hybrid/main.py)
}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def package_of(module: str, modules: dict[str, Path]) -> str:
    """The package a module lives in: its folder (`hybrid.cli.train` -> `hybrid.cli`, `hybrid.main` -> `hybrid`)."""
    path = modules[module]
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


@functools.cache
def collect_imports() -> tuple[dict[str, Path], dict[str, set[str]], list[tuple[str, str, int]]]:
    """(modules, module -> imported project modules, [(module, imported module, line)] of imports inside
    functions)."""
    modules = {module_name(p): p for top in PROJECT for p in (ROOT / top).rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    in_functions = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `from pkg import name` -> pkg.name if a module, else pkg
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name:
                    edges[name].add(target)
                    if id(node) in inside:
                        in_functions.append((name, target, node.lineno))
    return modules, edges, in_functions


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def package_edges(modules, edges) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            pa, pb = package_of(a, modules), package_of(b, modules)
            if pa != pb:
                out[pa].add(pb)
    return out


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    _, edges, _ = collect_imports()
    assert cycles(edges) == []


def test_no_import_cycles_between_packages():
    modules, edges, _ = collect_imports()
    assert cycles(package_edges(modules, edges)) == []


def test_every_package_has_a_layer_and_imports_point_down():
    modules, edges, _ = collect_imports()
    packages = {package_of(m, modules) for m in modules}
    assert packages <= set(LAYERS), f"packages without a layer in this test: {sorted(packages - set(LAYERS))}"
    upward = [
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if LAYERS[package_of(b, modules)] > LAYERS[package_of(a, modules)]
    ]
    assert upward == [], upward


def test_libraries_never_see_the_whole_config_and_stores_never_see_the_model():
    modules, edges, _ = collect_imports()
    libraries = [m for m in modules if LAYERS[package_of(m, modules)] <= 2]
    assert not [(m, t) for m in libraries for t in edges[m] if t.startswith("hybrid.cli")]
    memory = [m for m in modules if m.startswith("hybrid.memory")]
    assert not [(m, t) for m in memory for t in edges[m] if t.startswith(("hybrid.models", "hybrid.config.model"))]


def test_imports_inside_functions_only_where_hybrid_help_needs_them():
    """Below the command layer every project import is at the top of its module: a function-level import is for
    keeping `hybrid --help` light (heavy third-party modules, and the project modules the commands load when they
    run), which only the command layer and above need."""
    modules, _, in_functions = collect_imports()
    below = [(m, t, line) for m, t, line in in_functions if LAYERS[package_of(m, modules)] < 3]
    assert below == [], below


def _calls_and_imports(path: Path) -> tuple[set[str], set[str]]:
    """(the names a module calls — `f(…)` and `x.f(…)` as `f` —, the modules it imports, third-party ones too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    called, imported = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            called.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{a.name}" for a in node.names)
            if any(a.name == "is_uri" for a in node.names):
                called.add("is_uri")  # imported to be called
    return called, imported


def test_only_the_storage_module_tells_paths_from_uris():
    """One storage interface (hybrid/core/storage.py): no other module opens pyarrow's or fsspec's file systems or
    asks whether a location is a URI."""
    modules, _, _ = collect_imports()
    found = []
    for name, path in modules.items():
        if name == "hybrid.core.storage":
            continue
        called, imported = _calls_and_imports(path)
        if "is_uri" in called:
            found.append((name, "is_uri"))
        found += [(name, m) for m in imported if m.startswith(("pyarrow.fs", "fsspec"))]
    assert found == [], found


def test_the_training_recipe_does_not_know_its_launcher():
    """hybrid/training/recipe.py is handed a data source and a reporter (hybrid/training/launchers.py): it imports no
    launcher (Ray, Ray Train, torchrun's elastic agent) and never asks which one started it."""
    modules, _, _ = collect_imports()
    path = modules["hybrid.training.recipe"]
    _, imported = _calls_and_imports(path)
    assert not [m for m in imported if m.split(".")[0] == "ray" or m.startswith("torch.distributed.run")], imported
    assert "launcher" not in {
        n.attr for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.Attribute)
    }


def test_the_architecture_checks_have_teeth(tmp_path):
    """The two checks above find what they look for."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pyarrow.fs as pafs\nfrom hybrid.core.storage import is_uri\nimport ray.train\n"
        "def f(p, ctx):\n    return storage.is_uri(p) or ctx.launcher == 'ray'\n"
    )
    called, imported = _calls_and_imports(bad)
    assert "is_uri" in called and "pyarrow.fs" in imported and "ray.train" in imported


LAYOUT_MODULE = "hybrid.core.layout"  # the one module that spells the data folder's commit_<N> names
# commit_, commit_{n}, commit_*, ^commit_\d+, …/commit_{n}; not commit_hash, commit_data.json
_COMMIT_PATH = re.compile(r"(?:^|[/\\^])commit_(?![a-z])")


def commit_paths(source: str) -> list[int]:
    """Lines where a string literal or an f-string builds or matches a `commit_<N>` folder name (docstrings aside)."""
    tree = ast.parse(source)
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return sorted(
        {
            n.lineno
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant)
            and isinstance(n.value, str)
            and id(n) not in docstrings
            and _COMMIT_PATH.search(n.value)
        }
    )


def test_the_commit_path_finder_finds_commit_paths():
    found = commit_paths(
        '"""in data/ast_dataset/<repo>/commit_<N>/"""\n'
        'a = f"commit_{n}"\nb = root / f"{repo}/commit_{n}/x"\nc = "commit_"\nd = "commit_*"\n'
        'e = r"commit_(\\d+)"\nh = "^commit_\\d+$"\n'
        'f = {"commit_hash": 1, "commit_number": 2}\ng = "commit_data.json"\n'
    )
    assert found == [2, 3, 4, 5, 6, 7]


def test_only_the_layout_builds_commit_paths():
    """Every stage, export, cleanup, coverage and bench asks hybrid/core/layout.py for a commit folder (its name,
    its number, the listing): no other module spells `commit_<N>`."""
    modules, _, _ = collect_imports()
    found = [
        (m, line)
        for m, path in sorted(modules.items())
        if m != LAYOUT_MODULE
        for line in commit_paths(path.read_text(encoding="utf-8"))
    ]
    assert found == [], f"commit_<N> spelled outside {LAYOUT_MODULE}: {found}"
