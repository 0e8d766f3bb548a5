"""The package's layering: imports only run down the layers, no module cycle, torch-pruning behind one module.

Read from the source with ``ast`` (module-level and function-level imports alike), so a lazy import that
only dodges a cycle counts as the import it is.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "metaprune"

# low -> high; a module may import from its own layer or a lower one (the longest matching prefix decides)
LAYERS = [
    ["metaprune.utils", "metaprune.layers", "metaprune.logging"],
    ["metaprune.depgraph"],  # the one module that imports torch_pruning
    ["metaprune.data"],
    ["metaprune.models"],
    ["metaprune.io", "metaprune.onnx", "metaprune.export", "metaprune.cli"],
    ["metaprune.cost", "metaprune.metrics", "metaprune.hardware"],
    ["metaprune.graph"],
    ["metaprune.metanet"],
    ["metaprune.prune"],
    ["metaprune.train"],
    ["metaprune.zoo"],
    ["metaprune.metatrain"],
    # the prune.py run (its config, load stage and flow) and the package's public facade
    ["metaprune.prune.pipeline", "metaprune.prune.config", "metaprune.prune.load", "metaprune"],
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    """metaprune modules (and ``torch_pruning``) that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # ``from pkg import sub`` imports the submodule
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "torch_pruning":
                found.add("torch_pruning")
            elif t.split(".")[0] == "metaprune":
                while t not in modules:  # ``import metaprune.x.Y`` style: the closest module
                    t = t.rpartition(".")[0]
                found.add(t)
    found.discard(name)
    return found


def _layer(name: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            # "metaprune" is the package's own __init__ only
            if (name == p or (p != "metaprune" and name.startswith(p + "."))) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{name} is in no layer of tests/test_layering.py: give it one"
    return rank


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_imports_run_down_the_layers():
    up = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
          for a, deps in _graph().items() for b in deps if b != "torch_pruning" and _layer(b) > _layer(a)]
    assert up == []


def test_no_import_cycle_between_modules():
    graph = _graph()
    # a package's __init__ re-exporting its own submodules is not a cycle with them
    edges = {a: {b for b in deps if b in graph and not (a.startswith(b + ".") and (PACKAGE.parent / b.replace(
        ".", "/") / "__init__.py").is_file())} for a, deps in graph.items()}
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = 1
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    assert cycles == []


def test_no_package_imports_a_higher_package_that_imports_it_back():
    graph = _graph()

    def pkg(name):
        return ".".join(name.split(".")[:2])

    pairs = {(pkg(a), pkg(b)) for a, deps in graph.items() for b in deps
             if b != "torch_pruning" and pkg(a) != pkg(b) and a != "metaprune"}
    # prune.pipeline (the top layer) is the one module of prune/ that uses train/; the rest of prune/ is below it
    mutual = sorted({tuple(sorted(p)) for p in pairs if p[::-1] in pairs} - {("metaprune.prune", "metaprune.train")})
    assert mutual == []
    assert not any(a.startswith("metaprune.train") and b.startswith("metaprune.prune")
                   for a, deps in graph.items() for b in deps)


def test_torch_pruning_is_imported_by_one_module():
    importers = sorted(a for a, deps in _graph().items() if "torch_pruning" in deps)
    assert importers == ["metaprune.depgraph"]


def test_no_private_torch_pruning_attribute_outside_the_wrapper():
    private = ("_module2name", "_module2node", "_op_id")
    hits = [f"{name}: {attr}" for name, path in _modules().items() if name != "metaprune.depgraph"
            for attr in private if f".{attr}" in path.read_text()]
    assert hits == []
