"""Trace a model for export: its graph, which values are shapes, and where each tensor's batch is.

Models compute with shapes (``B, N, C = x.shape``, ``x.view(x.size(0), -1)``, timm's
``_assert(H == img_size)``). The exporter runs the traced graph twice, on batches of 2 and of 3
copies of the example: a value that is not a tensor is *static* (a shape, a number, a flag) and is
folded into the ops that read it; a static value that differs between the two runs is the batch
size, and an op may only use it where the batch goes. A tensor's *batch dimension* is the one
dimension whose size follows the batch (None for constants such as a ViT's position embedding);
an op that mixes the batch with other dimensions is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ...errors import ExportError
from ...nn.residual import Tracer  # quantized layers and BatchNorms (timm's BatchNormAct2d too) as leaves

BATCHES = (2, 3)  # the two batch sizes the graph is run at


class _Capture(fx.Interpreter):
    """Runs a graph and keeps every node's value."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        self.values[n] = out
        return out


@dataclass
class Traced:
    graph: fx.Graph
    module: fx.GraphModule
    runs: tuple[dict, dict]                    # node -> value, at each batch size of BATCHES
    static: set = field(default_factory=set)  # nodes whose value is not a tensor (folded)

    def value(self, node: fx.Node):
        """A static node's value; the batch size is refused (it is not a constant)."""
        a, b = (run[node] for run in self.runs)
        if _differs(a, b):
            raise ExportError(f"{node.name}: a value that depends on the batch size ({a!r} at batch {BATCHES[0]}, "
                              f"{b!r} at {BATCHES[1]}) is used as a constant")
        return a

    def batch_dim(self, node: fx.Node) -> int | None:
        """The dimension of ``node``'s tensor that is the batch (None: it has none)."""
        a, b = (run[node] for run in self.runs)
        if not isinstance(a, torch.Tensor):
            return None
        if a.dim() != b.dim():
            raise ExportError(f"{node.name}: its rank depends on the batch size")
        dims = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]]
        if not dims:
            return None
        d = dims[0]
        if len(dims) > 1 or (a.shape[d], b.shape[d]) != BATCHES:
            raise ExportError(f"{node.name}: shape {list(a.shape)} at batch {BATCHES[0]} mixes the batch with other "
                              "dimensions; keep the batch a dimension of its own (e.g. reshape(B, N, C), not "
                              "reshape(B * N, C))")
        return d

    def shape(self, node: fx.Node) -> list[int]:
        """``node``'s tensor shape with -1 where the batch is."""
        a = self.runs[0][node]
        d = self.batch_dim(node)
        return [-1 if i == d else int(s) for i, s in enumerate(a.shape)]


def _differs(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return a != b


def trace(model: nn.Module, example_input: torch.Tensor) -> Traced:
    """The graph of ``model`` (quantized layers and timm's BatchNormAct2d as leaves), run on the
    example (``tensor_meta``) and at two batch sizes."""
    try:
        graph = Tracer().trace(model)
        gm = fx.GraphModule(model, graph)
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
            runs = []
            for batch in BATCHES:
                capture = _Capture(gm)
                capture.run(example_input[:1].expand(batch, *example_input.shape[1:]).contiguous())
                runs.append(capture.values)
    except Exception as exc:
        raise ExportError(f"cannot trace {type(model).__name__} with torch.fx: {exc} (the exporter needs a forward "
                          "without Python control flow on tensor values; see docs/export.md)") from None
    traced = Traced(graph, gm, tuple(runs))
    first = next(n for n in graph.nodes if n.op == "placeholder")
    for node in graph.nodes:
        value = runs[0].get(node)
        if node.op == "placeholder" and node is not first:
            traced.static.add(node)  # further forward arguments keep their defaults
        elif node.op not in ("placeholder", "output") and not _holds_tensor(value):
            traced.static.add(node)
    return traced


def _holds_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(_holds_tensor(v) for v in value)


def node_values(model: nn.Module, x: torch.Tensor) -> dict[str, object]:
    """The value of every node of ``model``'s traced graph on the input ``x``, by node name (the
    names the exporter gives the bundle's nodes)."""
    gm = fx.GraphModule(model, Tracer().trace(model))
    capture = _Capture(gm)
    with torch.no_grad():
        capture.run(x)
    return {n.name: v for n, v in capture.values.items()}
