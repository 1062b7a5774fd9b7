"""The package's layout rules, measured from the source tree (docs/concepts.md, "Layout").

A concept is a folder; a split happens inside a concept; packages meet only at their faces
(their ``__init__``); nothing inside the package imports ``frozen`` itself; the import order
has no cycles, lazy imports included; one module writes the stand-ins ``frozen`` puts in a
module's ``__dict__``; and the repository names behaviours, not the history of its issues.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "frozen"
# Above the package root: they import ``frozen`` as users do, and the root never imports them.
ABOVE_ROOT = ("integrations", "_cli", "__main__")
MAX_TOP_LEVEL = 8


def _modules() -> dict[str, Path]:
    """Dotted name (``frozen._core.record``) -> file, for every module of the package."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks: not imported at run time."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, names) for every run-time import in ``name``, at any depth (lazy too)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = _package_of(name, path)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, []) for alias in node.names if alias.name.split(".")[0] == "frozen"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "frozen":
                target = node.module
            else:
                continue
            names = [alias.name for alias in node.names]
            # `from . import x` imports the submodule x, unless the face binds a name x itself
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES and n not in _bound(target)]
            found += [(sub, node.lineno, []) for sub in subs] or [(target, node.lineno, names)]
    return found


def _bound(name: str) -> set[str]:
    """The names a package's face binds itself (imported into it or defined in it)."""
    path = MODULES.get(name)
    if path is None or path.name != "__init__.py":
        return set()
    bound = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
    return bound


def _concept(name: str) -> str:
    """The top-level concept a module belongs to: ``frozen._core.record`` -> ``_core``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_package_keeps_few_top_level_modules() -> None:
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"src/frozen has {len(top)} top-level modules: {top}"


def test_no_concept_is_spelled_as_a_filename_prefix() -> None:
    """``_cache_key.py`` next to ``_cache.py`` is a concept spelled as a prefix: make it a folder."""
    for folder in [SRC, *(p for p in SRC.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        stems = [p.stem.lstrip("_") for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__")]
        stems += [p.name.lstrip("_") for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
        for stem in stems:
            prefixed = [other for other in stems if other != stem and other.startswith(stem + "_")]
            assert not prefixed, f"{folder.relative_to(ROOT)}: {prefixed} spell the concept {stem!r} as a prefix"


def test_nothing_inside_the_package_imports_the_package_root() -> None:
    offenders = []
    for name in MODULES:
        if name == "frozen" or _concept(name) in ABOVE_ROOT:
            continue
        offenders += [f"{name}:{line}" for target, line, _ in _imports(name) if target == "frozen"]
    assert not offenders, f"import the sibling package's face instead of frozen: {offenders}"


def test_packages_meet_only_at_their_faces() -> None:
    """A module of another package is imported only through that package's ``__init__``."""
    offenders = []
    for name, path in MODULES.items():
        mine = _package_of(name, path)
        for target, line, _ in _imports(name):
            if target not in MODULES or MODULES[target].name == "__init__.py":
                continue
            owner = target.rpartition(".")[0]
            if owner != "frozen" and owner != mine and not mine.startswith(owner + "."):
                offenders.append(f"{name}:{line} imports {target}")
    assert not offenders, offenders


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("level", ["module", "package"])
def test_the_import_order_has_no_cycles(level: str) -> None:
    """Lazy imports count: a cycle broken by an import inside a function is still a cycle."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, _, names in _imports(name):
            if target not in MODULES:
                continue
            if level == "package":
                a, b = _concept(name), _concept(target)
                if a and b and a != b:
                    graph[a].add(b)
            elif target != name:
                graph[name].add(target)
                # a package's face imports its modules; a name imported from the face comes from one of them
                if MODULES[target].name == "__init__.py" and path.name != "__init__.py":
                    graph[name].discard(target)
                    graph[name].update(_face_sources(target, names))
    assert not _cycles(graph), _cycles(graph)


def _face_sources(face: str, names: list[str]) -> set[str]:
    """The modules behind the names a face re-exports (``from .record import x as x``)."""
    sources = set()
    for target, _, exported in _imports(face):
        if target in MODULES and (set(exported) & set(names) or not exported):
            sources.add(target)
    return sources or {face}


# Writes into a module's own __dict__: a stand-in (forward, train, _apply), the record
# (_frozen), or a key held in a variable (which may be any of them).
_DICT_WRITE = re.compile(
    r"""(?<!self\.)__dict__\[\s*(?P<k1>[^]]+?)\s*\]\s*=(?!=)"""
    r"""|(?<!self\.)__dict__\.(pop|setdefault)\(\s*(?P<k2>[^,)]+)"""
    r"""|del\s+[\w.]*__dict__\[\s*(?P<k3>[^]]+?)\s*\]"""
    r"""|(object\.__setattr__|setattr)\([^,]+,\s*(?P<k4>["'](forward|train|_apply)["'])"""
)
_STANDIN_KEYS = {"forward", "train", "_apply", "_frozen"}


def _writes_standin(text: str) -> bool:
    for match in _DICT_WRITE.finditer(text):
        if match.group(0).startswith("del self."):
            continue  # an object's own attribute cache, not a module's stand-in
        key = next(k for k in match.group("k1", "k2", "k3", "k4") if k is not None).strip()
        literal = key[:1] in "'\"" and key[-1:] == key[:1]
        if not literal or key[1:-1] in _STANDIN_KEYS:
            return True
    return False


def test_one_module_writes_the_stand_ins() -> None:
    writers = sorted(str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if _writes_standin(path.read_text()))
    assert writers == ["_core/standins.py"], writers


def test_no_private_torch_hook_dict_is_mutated() -> None:
    """Hooks are removed through their RemovableHandle, never by editing torch's private dicts."""
    mutation = re.compile(
        r"_(forward|backward|forward_pre|backward_pre|state_dict|load_state_dict_pre)_hooks\s*(\[[^]]*\]\s*=|\.pop\(|\.clear\(|\.update\()|del\s+\w*_hooks\[|del\s+[\w.]*_hooks\["
    )
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in SRC.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if mutation.search(line)
    ]
    assert not offenders, offenders


def test_the_repository_names_behaviours_not_issue_history() -> None:
    # The verb (locating something) is fine; the plural names a list of old results. Spelled in two
    # pieces so that this line does not match itself.
    history = re.compile(r"\bissues? ?#?[0-9]+\b|\bfind" + r"ings\b", re.IGNORECASE)
    offenders = []
    for folder in ("src", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if history.search(line) and "http" not in line and path != Path(__file__):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, offenders
