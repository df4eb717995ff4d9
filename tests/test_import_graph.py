"""No import cycles between the package's modules, counting imports inside functions, and few of those.

The graph is read from the source with ``ast`` rather than from ``sys.modules`` after importing: an import
placed inside a function runs only when the function does, so it hides a cycle from any import-time
check. Every ``import`` statement of every module counts, wherever it stands (module level, a function,
a method, an ``if TYPE_CHECKING:`` block); ``from package import module`` is an edge to that module.

An import inside a function body is allowed only where ``ALLOWED_LOCAL_IMPORTS`` (or the CLI's rule)
says why; anywhere else it belongs at the top of its module, where a cycle would show at once.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import ddpm_studio

PACKAGE_DIR = Path(ddpm_studio.__file__).parent
PACKAGE = PACKAGE_DIR.name

# (the importing module, or "*" for any; the module imported, or a package whose modules are all meant)
ALLOWED_LOCAL_IMPORTS = {
    # The optional extras (`pip install ddpm-studio[eval]`, `[tensorboard]`, `[test]`): without them the
    # engine still imports, and the feature that needs one says which to install when it is used.
    ("*", "torch_fidelity"),
    ("*", "torchvision"),
    ("*", "torch.utils.tensorboard"),
    ("*", "diffusers"),
    ("*", "scipy"),
    # The window's entry point: `ddpm-studio` with no display must print one line, so Qt (whose platform
    # plugin aborts the process without a display) and all that imports it load only after the checks
    # (which are Qt-free themselves, and imported at the top).
    (f"{PACKAGE}.gui.app", "PySide6"),
    (f"{PACKAGE}.gui.app", f"{PACKAGE}.gui.main_window"),
}
# The CLI's entry point imports only the command module that runs (`--help` and `--version` load no
# torch): an import of a module of the cli package, inside the cli package, marked with this comment.
CLI_PACKAGE = f"{PACKAGE}.cli"
CLI_LAZY_MARK = "# lazy: only the command that runs"


@dataclass(frozen=True)
class Import:
    importer: str
    path: Path
    target: str  # a module of the package, or an outside module as written
    line: int
    local: bool  # inside a function or method
    text: str  # the statement's source lines, comments included


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package_dir: Path) -> dict[str, Path]:
    return {module_name(path, package_dir): path for path in sorted(package_dir.rglob("*.py"))}


def is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def resolve_from(node: ast.ImportFrom, importer: str, modules: dict[str, Path]) -> str:
    """The absolute name of the module a ``from ... import`` statement reads from."""
    if node.level == 0:
        return node.module or ""
    package = importer if importer in modules and is_package(importer, modules) else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found: list[Import] = []

    def add(node: ast.stmt, target: str, local: bool) -> None:
        if inside(target, name.partition(".")[0]):
            # The longest prefix that is a module: `import a.b.c` runs a.b.c; a name from a module is that module.
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
        text = "\n".join(lines[node.lineno - 1:node.end_lineno])
        found.append(Import(name, path, target, node.lineno, local, text))

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_local = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(child, alias.name, local)
            elif isinstance(child, ast.ImportFrom):
                source_module = resolve_from(child, name, modules)
                for alias in child.names:
                    submodule = f"{source_module}.{alias.name}"
                    add(child, submodule if submodule in modules else source_module, local)
            visit(child, child_local)

    visit(ast.parse(source, filename=str(path)), False)
    return found


def all_imports(modules: dict[str, Path]) -> list[Import]:
    return [found for name, path in modules.items() for found in imports_of(name, path, modules)]


def import_graph(imports: list[Import], modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for found in imports:
        if found.target in modules and found.target != found.importer:
            graph[found.importer].add(found.target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module: each holds at least one cycle."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as the list of modules along it."""
    members, start = set(component), component[0]
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in sorted(graph[node] & members):
            if successor == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if successor not in previous:
                previous[successor] = node
                queue.append(successor)
    raise AssertionError(f"no cycle through {start}")  # a component of two or more modules always has one


def allowed_local(found: Import) -> bool:
    for importer, target in ALLOWED_LOCAL_IMPORTS:
        if (importer == "*" or found.importer == importer) and inside(found.target, target):
            return True
    return (inside(found.importer, CLI_PACKAGE) and inside(found.target, CLI_PACKAGE)
            and found.target != CLI_PACKAGE and CLI_LAZY_MARK in found.text)


def short(module: str) -> str:
    return module.removeprefix(f"{PACKAGE}.")


def test_no_module_imports_another_that_imports_it_back():
    modules = package_modules(PACKAGE_DIR)
    graph = import_graph(all_imports(modules), modules)
    cycles = []
    for component in strongly_connected(graph):
        cycle = shortest_cycle(graph, component)
        others = sorted(set(component) - set(cycle))
        cycles.append(" -> ".join(short(module) for module in cycle)
                      + (f" (in one knot with {', '.join(short(module) for module in others)})" if others else ""))
    assert not cycles, "import cycles (counting imports inside functions):\n" + "\n".join(cycles)


def test_imports_inside_functions_are_only_the_allowed_ones():
    stray = {f"{found.path.relative_to(PACKAGE_DIR.parent)}:{found.line}: {found.text.strip()}": None
             for found in all_imports(package_modules(PACKAGE_DIR)) if found.local and not allowed_local(found)}
    assert not stray, ("imports inside functions that belong at the top of their module (or, with a reason, in "
                       "ALLOWED_LOCAL_IMPORTS):\n" + "\n".join(stray))


# --- the checker itself, on a small package written for it ---------------------------------------------


def test_the_graph_counts_relative_local_and_module_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..c import name\n")
    (package / "c.py").write_text("import pkg.sub.a\nname = 1\n")
    (package / "d.py").write_text("from pkg.sub import a\nclass K:\n    def m(self):\n        import json\n")
    modules = package_modules(package)
    imports = all_imports(modules)
    graph = import_graph(imports, modules)
    assert graph["pkg.sub.a"] == {"pkg.sub.b"}  # `from . import b`: the module b, not the package
    assert graph["pkg.sub.b"] == {"pkg.c"}  # inside a function, two levels up
    assert graph["pkg.c"] == {"pkg.sub.a"}
    assert graph["pkg.d"] == {"pkg.sub.a"}
    assert strongly_connected(graph) == [["pkg.c", "pkg.sub.a", "pkg.sub.b"]]
    assert shortest_cycle(graph, ["pkg.c", "pkg.sub.a", "pkg.sub.b"]) == ["pkg.c", "pkg.sub.a", "pkg.sub.b", "pkg.c"]
    local = sorted((found.importer, found.target) for found in imports if found.local)
    assert local == [("pkg.d", "json"), ("pkg.sub.b", "pkg.c")]  # a method's import is local too
