"""Which library code each workflow step runs, by content: the workflow's code rerun trigger.

Every rule passes `code=` the fingerprint of the code its jobs run as a param: the content
hash of its `pipeline` function (with the pipeline helpers that function uses) and of every
library module those import, transitively. Editing `generation.py` changes the fingerprint
of `generate` (which reruns its jobs and, through their outputs, what follows), not of
`invert`; `touch` or a fresh clone changes no content and reruns nothing. The mapping is
read from the import statements each time the workflow starts, so it cannot go stale.
`rule_code` adds a rule's script; `workflow_code` is the one digest the report records.

Jobs import this module too (`io` logs the library's hash), so it is in most steps'
fingerprints: editing it reruns those steps' jobs.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGE = "dafusion"
# The copy of the library this module belongs to: the workflow's own, which jobs import.
ROOT = Path(__file__).resolve().parent


def digest(data: bytes) -> str:
    """A short content hash: 64 bits are ample to tell versions of a file apart."""
    return hashlib.sha256(data).hexdigest()[:16]


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """This library's version (of the copy the job imports, which an older install's
    metadata may not match), then each of `names`' installed version ("not installed" where
    it is missing): what a synthetic set's card and the report record of the code behind
    them."""
    from . import __version__

    found = {"dafusion": __version__}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def library_hash(root: Path = ROOT) -> str:
    """The content hash of the whole library (every module's path and bytes): which code a
    job's log names."""
    content = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        content.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return content.hexdigest()


def module_path(module: str, root: Path = ROOT) -> Path | None:
    """The file of a library module (`dafusion.data.readers.common`), or None if there is none."""
    parts = module.split(".")[1:]
    base = root.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _imported(node: ast.AST, module: str, is_package: bool, root: Path) -> set[str]:
    """Library modules an import statement loads (relative or absolute)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1])
        target = f"{base}.{node.module}" if node.module else base
    elif node.module and node.module.split(".")[0] == PACKAGE:
        target = node.module
    else:
        return set()
    found = set()
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        found.add(sub if module_path(sub, root) else target)
    return found


def imports_in(nodes: Iterable[ast.AST], module: str, is_package: bool, root: Path) -> set[str]:
    """Library modules imported anywhere in `nodes`, function-local imports included."""
    found: set[str] = set()
    for node in nodes:
        for sub in _run_time_nodes(node):
            found |= _imported(sub, module, is_package, root)
    return found


def _run_time_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """`node` and the nodes below it, except `if TYPE_CHECKING:` blocks: an import only
    type checkers read runs no code of the module it names."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _run_time_nodes(other)
        else:
            yield from _run_time_nodes(child)


def _is_type_checking(test: ast.expr) -> bool:
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def _parse(path: Path) -> tuple[str, ast.Module]:
    """A file's source and syntax tree, parsed once per version (every rule asks at start-up)."""
    return _parse_version(path, path.stat().st_mtime_ns)


@functools.cache
def _parse_version(path: Path, mtime_ns: int) -> tuple[str, ast.Module]:
    source = path.read_text()
    return source, ast.parse(source, filename=str(path))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the library modules it imports, for every module of the library.

    Built once per version of the library's files (every rule asks at start-up)."""
    paths = sorted(root.rglob("*.py"))
    return _import_graph(root, tuple((p, p.stat().st_mtime_ns) for p in paths))


@functools.cache
def _import_graph(root: Path, versions: tuple[tuple[Path, int], ...]) -> dict[str, set[str]]:
    graph = {}
    for path, _ in versions:
        module = _module_name(path, root)
        tree = _parse(path)[1]
        graph[module] = imports_in([tree], module, path.name == "__init__.py", root) - {module}
    return graph


# A line with its end, as `ast.get_source_segment` splits lines (\r\n, \r or \n only).
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _segment(lines: list[str], node: ast.stmt) -> str:
    """`ast.get_source_segment(source, node)` from the source's lines split once (that
    function splits the whole source again on every call)."""
    assert node.end_lineno is not None  # ast.parse sets it on every node
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return lines[first].encode()[node.col_offset : node.end_col_offset].decode()
    head = lines[first].encode()[node.col_offset :].decode()
    tail = lines[last].encode()[: node.end_col_offset].decode()
    return "".join([head, *lines[first + 1 : last], tail])


def closure(modules: Iterable[str], graph: dict[str, set[str]]) -> set[str]:
    """The modules plus everything they import, transitively, and their parent packages
    (importing `dafusion.data.readers.common` runs `dafusion/data/readers/__init__.py` first)."""
    seen: set[str] = set()
    stack = list(modules)
    while stack:
        module = stack.pop()
        if module in seen or module not in graph:
            continue
        seen.add(module)
        stack += graph[module]
        parts = module.split(".")
        stack += [".".join(parts[:i]) for i in range(1, len(parts))]
    return seen


def _bound_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def global_names(node: ast.AST) -> set[str]:
    """The names `node`, a module-level statement, reads from its module's namespace.

    A name a function binds (a parameter, an assignment, an import, a loop or `with` target,
    an exception's name) or a comprehension binds is that scope's own, even where a module
    function has the same name: `report(recognition=...)` uses no `recognition` step. A class
    body may read a global before binding the same name, so its names all count."""
    found: set[str] = set()
    _read(node, frozenset(), found)
    return found


def _read(node: ast.AST, local: frozenset[str], found: set[str]) -> None:
    """Add to `found` the names `node` reads that no enclosing function binds (`local`)."""
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, ast.Load) and node.id not in local:
            found.add(node.id)
    elif isinstance(node, _FUNCTIONS):
        # Decorators, defaults and annotations run where the function is defined.
        arguments = node.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        every += [a for a in (arguments.vararg, arguments.kwarg) if a]
        outer = [*getattr(node, "decorator_list", []), *arguments.defaults]
        outer += [d for d in arguments.kw_defaults if d]
        outer += [a.annotation for a in every if a.annotation]
        outer += [node.returns] if not isinstance(node, ast.Lambda) and node.returns else []
        for child in outer:
            _read(child, local, found)
        bound, declared = _function_bindings(node)
        inner = (local | bound | {a.arg for a in every}) - declared
        for child in node.body if isinstance(node.body, list) else [node.body]:
            _read(child, inner, found)
    elif isinstance(node, _COMPREHENSIONS):
        # The first iterable runs in the enclosing scope; the rest sees the loop targets.
        first, *rest = node.generators
        _read(first.iter, local, found)
        targets = {
            n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)
        }
        inner = local | targets
        parts = [*first.ifs, *(part for g in rest for part in (g.iter, *g.ifs))]
        parts += [getattr(node, field) for field in ("elt", "key", "value") if hasattr(node, field)]
        for child in parts:
            _read(child, inner, found)
    else:
        for child in ast.iter_child_nodes(node):
            _read(child, local, found)


def _function_bindings(
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda,
) -> tuple[set[str], set[str]]:
    """The names a function's body binds (parameters aside), and those it declares `global`:
    those it reads from the module even where an enclosing function binds them."""
    bound: set[str] = set()
    declared: set[str] = set()
    body = node.body if isinstance(node.body, list) else [node.body]
    for child in body:
        _bind(child, bound, declared, in_comprehension=False)
    return bound, declared


def _bind(node: ast.AST, bound: set[str], declared: set[str], in_comprehension: bool) -> None:
    """Collect the names `node` binds in the scope of the function it is in: a nested
    function's or lambda's body and a comprehension's loop targets bind in their own."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        bound.add(node.name)
        return
    if isinstance(node, ast.Lambda):
        return
    if isinstance(node, ast.Global):
        declared.update(node.names)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, ast.NamedExpr):  # binds in the function even in a comprehension
        bound.add(node.target.id)
        _bind(node.value, bound, declared, in_comprehension)
        return
    elif isinstance(node, ast.Name):
        if not isinstance(node.ctx, ast.Load) and not in_comprehension:
            bound.add(node.id)
    elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
        bound.add(node.name)
    elif isinstance(node, ast.MatchMapping) and node.rest:
        bound.add(node.rest)
    in_comprehension = in_comprehension or isinstance(node, _COMPREHENSIONS)
    for child in ast.iter_child_nodes(node):
        _bind(child, bound, declared, in_comprehension)


def step_code(step: str, root: Path = ROOT) -> dict[str, str]:
    """The fingerprint of the code workflow step `step` runs: {source: content hash}.

    `pipeline.<step>` hashes the step's function in `pipeline.py` and the module-level
    helpers it uses (so editing one step's function reruns only that step); every other
    entry is a whole library module the step imports, directly or not.
    """
    pipeline = root / "pipeline.py"
    source, tree = _parse(pipeline)
    top = {name: node for node in tree.body for name in _bound_names(node)}
    if not isinstance(top.get(step), ast.FunctionDef):
        raise ValueError(f"{pipeline} has no function '{step}' for the workflow rule '{step}'")
    used: list[ast.stmt] = []
    stack = [step]
    while stack:
        node = top[stack.pop()]
        if node in used:
            continue
        used.append(node)
        stack += sorted(global_names(node) & top.keys())
    used.sort(key=lambda n: n.lineno)
    lines = _LINE.findall(source)
    segments = "\n".join(_segment(lines, n) for n in used)
    modules = closure(imports_in(used, f"{PACKAGE}.pipeline", False, root), import_graph(root))
    code = {f"pipeline.{step}": digest(segments.encode())}
    for module in sorted(modules):
        path = module_path(module, root)
        assert path is not None  # the graph holds only modules with a file
        code[str(path.relative_to(root.parent))] = digest(path.read_bytes())
    return code


def script_rules(basedir: str | Path) -> list[str]:
    """The rules that run a script, from the workflow's files rather than a list kept by hand:
    each has workflow/scripts/<rule>.py (under `basedir`, the workflow's root), which calls
    `pipeline.<rule>`."""
    return sorted(path.stem for path in Path(basedir, "workflow/scripts").glob("*.py"))


def rule_code(rule: str, basedir: str | Path) -> dict[str, str]:
    """Content hashes of the code a rule's jobs run: its script (under `basedir`, the
    workflow's root), its pipeline function and the library modules those import
    (`step_code`). An edit reruns exactly the jobs that run the edited code; touch or a fresh
    clone reruns nothing."""
    script = f"workflow/scripts/{rule}.py"
    return {**step_code(rule), script: digest((Path(basedir) / script).read_bytes())}


def workflow_code(basedir: str | Path) -> str:
    """One digest of the code every rule runs (`rule_code` of each of `script_rules`): what
    the report names as the code that made its results. A change to any rule's code reruns
    that rule's jobs, and through their outputs the report."""
    code = {rule: rule_code(rule, basedir) for rule in script_rules(basedir)}
    return digest(json.dumps(code, sort_keys=True).encode())
