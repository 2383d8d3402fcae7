"""The shape of ``shiftquant.export``: layers that read in the folder names, imports that only go
down the layers, no op dispatch outside the op registry, and pieces small enough to read."""
import ast
import importlib
import pkgutil
from pathlib import Path

from shiftquant.export import ops

export = importlib.import_module("shiftquant.export")  # the package (``shiftquant.export`` is also a function)
ROOT = Path(export.__file__).parent
# Each layer may import the layers listed after it (and itself), never one before it.
LAYERS = ["trace", "passes", "c", "qonnx", "onnx", "reference", "graph", "ops", "format"]
BACKENDS = {"reference", "c", "qonnx", "onnx"}
OPTIONAL = {"hls4ml", "qonnx"}  # the [fpga] extra: the modules that import them at the top need it


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def _layer(path: Path) -> str | None:
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else None


def _imported_layers(path: Path, tree) -> set[str]:
    """The export layers a module imports (relative imports resolved against its package)."""
    package = list(path.relative_to(ROOT).parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            if node.level - 1 > len(package):  # above shiftquant.export
                continue
            target = base + (node.module.split(".") if node.module else [])
            names = [a.name for a in node.names] if not node.module else []
            for t in ([target + [n] for n in names] if names else [target]):
                if t and t[0] in LAYERS:
                    found.add(t[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shiftquant.export."):
            found.add(node.module.split(".")[2])
    return found


def test_every_layer_is_a_folder_and_imports_only_the_layers_below_it():
    for layer in LAYERS:
        assert (ROOT / layer / "__init__.py").exists(), layer
    loose = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside the layer folders: {loose}"
    for path, tree in _modules():
        layer = _layer(path)
        if layer is None:
            continue
        allowed = set(LAYERS[LAYERS.index(layer):])
        for other in _imported_layers(path, tree) - {layer}:
            assert other in allowed, f"{path.relative_to(ROOT)} ({layer}) imports {other}, a layer above it"
            assert not (layer in BACKENDS and other == "trace"), f"{path} (a backend) imports the tracer"


def test_the_package_imports_without_a_cycle():
    """Every module imports on its own, in a fresh order (a cycle fails one of them)."""
    for info in pkgutil.walk_packages(export.__path__, export.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if exc.name not in OPTIONAL:
                raise


def _op_names_tested(test) -> int:
    """How many op names a comparison tests, when it compares an op (``op``, ``x["op"]``)."""
    def is_op(e):
        return isinstance(e, ast.Name) and e.id == "op" or isinstance(e, ast.Subscript) \
            and isinstance(e.slice, ast.Constant) and e.slice.value == "op"
    count = 0
    for node in ast.walk(test):
        if isinstance(node, ast.Compare) and (is_op(node.left) or any(is_op(c) for c in node.comparators)):
            for c in ast.walk(node):
                if isinstance(c, ast.Constant) and c.value in ops.REGISTRY:
                    count += 1
    return count


def test_no_op_dispatch_chain_outside_the_registry():
    """An if/elif chain that branches on op names (three or more) belongs in an op's definition."""
    for path, tree in _modules():
        if _layer(path) == "ops":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.If):
                continue
            branches, cur = 0, node
            while isinstance(cur, ast.If):
                branches += _op_names_tested(cur.test) > 0
                cur = cur.orelse[0] if len(cur.orelse) == 1 and isinstance(cur.orelse[0], ast.If) else None
            assert branches < 3, f"{path.relative_to(ROOT)}:{node.lineno}: an op dispatch chain"
    assert len(ops.REGISTRY) >= 34


def test_no_class_over_300_lines_and_no_function_over_80():
    for path, tree in _modules():
        for node in ast.walk(tree):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef):
                assert size <= 300, f"{path.relative_to(ROOT)}: class {node.name} has {size} lines"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert size <= 80, f"{path.relative_to(ROOT)}: {node.name} has {size} lines"
