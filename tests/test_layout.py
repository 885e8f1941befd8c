"""The package's layout rules (DESIGN.md, "How the layout grows", rounds 2 and 3), read from the
source with `ast`, nothing imported:

- no import cycle among medsearch's modules, counting every import statement: module-level ones,
  those under `if TYPE_CHECKING:` and those inside functions (a cycle that only a lazy import keeps
  from failing is still two modules that cannot be understood, or moved, one without the other);
- faiss is imported only by the backends (medsearch/index/backends/), qdrant_client only by the
  Qdrant backend (medsearch/index/backends/qdrant*.py);
- the package's top level holds at most 10 modules, the rest live in subpackages by role;
- no module is over 600 lines, and one over 500 says why (a `# layout: ...` comment);
- the index folder's file names are written as literals in one module only (index/layout.py):
  everything else names them through its constants.

Each rule's checker is tested on a tiny synthetic case first, so a rule that could never fail shows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "medsearch"


# ---- reading the package ----

def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a folder's __init__.py is the folder's name)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_statements(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str] | None, int]]:
    """Every import in the tree, wherever it is (module level, `if TYPE_CHECKING:`, a function body):
    (absolute module, names taken from it or None for `import x`, line)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def internal_edges(source: str, module: str, is_package: bool, modules: set[str], root: str = "medsearch") -> list[tuple[str, int]]:
    """The package's modules that `module` imports: (module, line). `from P import name` is module
    P.name when that is a module, else P itself (its __init__ for a package); `import a.b.c` is the
    longest of a.b.c, a.b, a that is a module."""
    edges = []
    for base, names, line in import_statements(ast.parse(source), module, is_package):
        if base != root and not base.startswith(root + "."):
            continue
        if names is None:
            parts = base.split(".")
            target = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), None)
            targets = [target] if target else []
        else:
            targets = [f"{base}.{name}" if f"{base}.{name}" in modules else base for name in names]
        edges += [(target, line) for target in targets if target in modules and target != module]
    return edges


def import_graph(package_dir: Path = PACKAGE_DIR) -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """(module -> modules it imports, (importer, imported) -> 'file:line' of the first such import)."""
    files = module_files(package_dir)
    graph: dict[str, set[str]] = {module: set() for module in files}
    where: dict[tuple[str, str], str] = {}
    for module, path in files.items():
        for target, line in internal_edges(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", set(files)):
            graph[module].add(target)
            where.setdefault((module, target), f"{path.relative_to(package_dir.parent)}:{line}")
    return graph, where


def third_party_importers(top_level: str, package_dir: Path = PACKAGE_DIR) -> dict[str, list[int]]:
    """Files (relative to the repository) that import the library `top_level` (absolute imports
    only: `from . import faiss` inside medsearch/backends/ is the package's own module) -> lines."""
    importers = {}
    for module, path in module_files(package_dir).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = [line for base, _, line in import_statements(tree, module, path.name == "__init__.py")
                 if base.split(".")[0] == top_level]  # relative imports come back as medsearch.*
        if lines:
            importers[str(path.relative_to(package_dir.parent))] = lines
    return importers


# ---- sizes and literals ----

MAX_TOP_LEVEL_MODULES = 10
LONG_MODULE = 500  # past this a module says why, in a `# layout:` comment
MAX_MODULE_LINES = 600
# The index folder's files, each named in exactly one module (its owner): index/layout.py
FOLDER_FILE_NAMES = ("docs.db", "chunk_doc.npy", "vectors.faiss", "vectors.npy", "binary.faiss", "manifest.json", "checksums.sha256")
LAYOUT_OWNER = "medsearch/index/layout.py"


def top_level_modules(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The .py files directly in the package folder."""
    return sorted(path.name for path in package_dir.glob("*.py"))


def long_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, tuple[int, bool]]:
    """Files over LONG_MODULE lines -> (lines, whether a `# layout:` comment says why)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > LONG_MODULE:
            found[str(path.relative_to(package_dir.parent))] = (lines, "# layout:" in text)
    return found


def string_literals(source: str) -> list[tuple[str, int]]:
    """Every string constant in the source, with its line: plain strings, the parts of f-strings
    and docstrings alike (a docstring that names a file is prose, but it is still a literal: the
    owner's docstring draws the folder, nobody else's needs to)."""
    return [(node.value, node.lineno) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def literal_owners(names: tuple[str, ...], package_dir: Path = PACKAGE_DIR, docstrings: bool = False) -> dict[str, dict[str, list[int]]]:
    """name -> {file: lines} where a string literal contains the name as a file name (`docs.db`,
    `{x}/docs.db`), docstrings and comments aside unless `docstrings`."""
    found: dict[str, dict[str, list[int]]] = {name: {} for name in names}
    for path in sorted(package_dir.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        docs = set() if docstrings else {
            id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docs:
                continue
            for name in names:
                if re.search(rf"(^|[/\\\s'\"`(]){re.escape(name)}($|[/\\\s'\"`),:.;])", node.value):
                    found[name].setdefault(str(path.relative_to(package_dir.parent)), []).append(node.lineno)
    return found


# ---- finding cycles ----

def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles (paths that end where they start) that together pass through every module of every
    strongly connected component: the shortest through the component's first module, then the
    shortest through the first module not yet on one, and so on; in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(start: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit)
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in sorted(components):
        covered: set[str] = set()
        for start in component:
            if start not in covered:
                cycles.append(_shortest_cycle(graph, set(component), start))
                covered.update(cycles[-1])
    return cycles


def _shortest_cycle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """The shortest path start -> ... -> start inside the component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in component:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component of one without a self-loop is never passed


def describe(cycle: list[str], where: dict[tuple[str, str], str]) -> str:
    return " -> ".join(cycle) + "\n      " + "\n      ".join(
        f"{a} -> {b}: {where.get((a, b), '?')}" for a, b in zip(cycle, cycle[1:]))


# ---- the checkers on synthetic cases ----

def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []  # a diamond is no cycle
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    two = find_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "a"}})
    assert two == [["a", "b", "a"], ["c", "d", "e", "c"]]
    # the shortest way round, not the first the search walks; then one through what is left
    assert find_cycles({"a": {"b", "z"}, "b": {"c"}, "c": {"a"}, "z": {"a"}}) == [["a", "z", "a"], ["b", "c", "a", "b"]]


def test_every_kind_of_import_is_an_edge():
    modules = {"medsearch", "medsearch.index", "medsearch.errors", "medsearch.version", "medsearch.backends",
               "medsearch.backends.base", "medsearch.backends.qdrant", "medsearch.generations"}
    source = '''
from typing import TYPE_CHECKING
import numpy
from medsearch.errors import BadInputError
from medsearch import __version__, generations
if TYPE_CHECKING:
    from medsearch.backends.base import Backend
from . import base
def later():
    import medsearch.backends.qdrant
    from .qdrant import settings
'''
    edges = internal_edges(source, "medsearch.backends.faiss", False, modules)
    assert sorted(target for target, _ in edges) == [
        "medsearch", "medsearch.backends.base", "medsearch.backends.base", "medsearch.backends.qdrant",
        "medsearch.backends.qdrant", "medsearch.errors", "medsearch.generations"]
    assert ("medsearch", 5) in edges  # `from medsearch import __version__`: the package itself, its __init__
    assert internal_edges("from . import errors\nfrom .backends import qdrant", "medsearch", True, modules) == [
        ("medsearch.errors", 1), ("medsearch.backends.qdrant", 2)]


def test_the_import_rule_checker_sees_every_import(tmp_path):
    package = tmp_path / "medsearch"
    (package / "backends").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "backends" / "__init__.py").write_text("")
    (package / "backends" / "faiss.py").write_text("import faiss\n")
    (package / "search.py").write_text("from . import backends\nif False:\n    import faiss.contrib.torch_utils\n")
    (package / "funnel.py").write_text("def f():\n    from faiss import IndexFlatIP\n")
    (package / "server.py").write_text("from medsearch.backends import faiss\n")  # the package's module: allowed
    assert third_party_importers("faiss", package) == {"medsearch/backends/faiss.py": [1], "medsearch/search.py": [3],
                                                       "medsearch/funnel.py": [2]}
    graph, _ = import_graph(package)
    assert graph["medsearch.server"] == {"medsearch.backends.faiss"}
    assert graph["medsearch.search"] == {"medsearch.backends"}


def test_the_size_and_literal_checkers(tmp_path):
    package = tmp_path / "medsearch"
    (package / "index").mkdir(parents=True)
    (package / "__init__.py").write_text('"""The package: docs.db is named in this docstring, which is prose."""\n')
    (package / "a.py").write_text("x = 1\n" * (LONG_MODULE + 1))
    (package / "index" / "b.py").write_text("# layout: one table of 501 rows\n" + "y = 2\n" * LONG_MODULE)
    (package / "index" / "layout.py").write_text('DOCS = "docs.db"\nMAP = "chunk_doc.npy"\n')
    (package / "index" / "store.py").write_text('def f(folder):\n    return f"{folder}/docs.db", "my docs.dbx", "docs.db.tmp"\n')
    assert top_level_modules(package) == ["__init__.py", "a.py"]
    assert long_modules(package) == {"medsearch/a.py": (LONG_MODULE + 1, False), "medsearch/index/b.py": (LONG_MODULE + 1, True)}
    owners = literal_owners(("docs.db", "chunk_doc.npy"), package)  # the f-string's part and docs.db.tmp; not docs.dbx
    assert owners == {"docs.db": {"medsearch/index/layout.py": [1], "medsearch/index/store.py": [2, 2]},
                      "chunk_doc.npy": {"medsearch/index/layout.py": [2]}}
    assert "medsearch/__init__.py" in literal_owners(("docs.db",), package, docstrings=True)["docs.db"]


# ---- the rules ----

def test_no_import_cycle_among_the_modules():
    graph, where = import_graph()
    assert len(graph) > 20, "the package was not read"
    assert graph["medsearch"], "the package was not read"
    cycles = find_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s) among medsearch's modules:\n  " + "\n  ".join(
        describe(cycle, where) for cycle in cycles)


def test_only_the_backends_import_faiss():
    importers = third_party_importers("faiss")
    assert "medsearch/index/backends/faiss.py" in importers, "the check does not see the backend's own import"
    outside = {path: lines for path, lines in importers.items() if not path.startswith("medsearch/index/backends/")}
    assert not outside, f"faiss imported outside medsearch/index/backends/: {outside}"


def test_only_the_qdrant_backend_imports_qdrant_client():
    importers = third_party_importers("qdrant_client")
    assert "medsearch/index/backends/qdrant.py" in importers, "the check does not see the backend's own import"
    outside = {path: lines for path, lines in importers.items()
               if not (path.startswith("medsearch/index/backends/qdrant") and "/" not in path[len("medsearch/index/backends/"):])}
    assert not outside, f"qdrant_client imported outside medsearch/index/backends/qdrant*.py: {outside}"



def test_the_top_level_holds_at_most_ten_modules():
    modules = top_level_modules()
    assert "__init__.py" in modules, "the package was not read"
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, (
        f"{len(modules)} modules at medsearch/'s top level (at most {MAX_TOP_LEVEL_MODULES}): {', '.join(modules)}; "
        "put the new one in the subpackage of its role (docs/reference/layout.md)")


def test_no_module_is_too_long():
    found = long_modules()
    too_long = {path: lines for path, (lines, _) in found.items() if lines > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}; split them by job"
    unexplained = {path: lines for path, (lines, says_why) in found.items() if not says_why}
    assert not unexplained, (f"modules over {LONG_MODULE} lines without a `# layout:` comment saying why: {unexplained}")


def test_the_index_folders_file_names_have_one_owner():
    owners = literal_owners(FOLDER_FILE_NAMES)
    assert all(LAYOUT_OWNER in files for files in owners.values()), f"{LAYOUT_OWNER} does not name every file: {owners}"
    elsewhere = {name: {path: lines for path, lines in files.items() if path != LAYOUT_OWNER} for name, files in owners.items()}
    elsewhere = {name: files for name, files in elsewhere.items() if files}
    assert not elsewhere, f"index file names written outside {LAYOUT_OWNER} (use its constants): {elsewhere}"
