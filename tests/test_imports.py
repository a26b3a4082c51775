"""The import graph follows the data: cluster → eval → train → shards ← ingest, `shards` imports
nothing of ours, and no modules import each other in a circle (module-level imports; an import
inside a function is a deliberate deferral, e.g. of torch, and may go either way within a stage)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "shards", "train", "eval", "cluster")
# What each stage may import of ours, besides itself.
ALLOWED = {"shards": set(), "ingest": {"shards"}, "train": {"shards"}, "eval": {"train", "shards"},
           "cluster": {"ingest", "shards", "train", "eval"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, everywhere: bool) -> set[str]:
    """Our modules that `path` imports: at module level, or (everywhere) in functions too."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = ast.walk(tree) if everywhere else ast.iter_child_nodes(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in STAGES}


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for stage in STAGES for p in (REPO / stage).rglob("*.py")}


def test_every_import_goes_with_the_data():
    wrong = []
    for name, path in our_modules().items():
        stage = name.split(".")[0]
        for target in imports(path, everywhere=True):
            if target.split(".")[0] not in ALLOWED[stage] | {stage}:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_modules_import_each_other_in_a_circle():
    modules = our_modules()
    graph = {name: {t for t in imports(path, everywhere=False) if t in modules and t != name}
             for name, path in modules.items()}
    # A package's __init__ re-exporting its modules is not a circle with them.
    graph = {name: {t for t in targets if not (name.startswith(f"{t}.") and modules[t].name == "__init__.py")}
             for name, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append(" → ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)
