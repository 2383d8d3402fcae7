"""The residual stream on a power-of-two grid: BatchNorms whose output is quantized.

In a ResNet the residual adds sum a branch's BatchNorm output and the block's input. When every
BatchNorm that feeds an add (through ReLU or max pooling) quantizes its output onto a fixed-point
grid with a learned power-of-two scale, every add sums two such values: an integer add once both
are aligned by a shift. :class:`QuantBatchNorm2d` is that BatchNorm: a static subclass that takes
over the float one's attributes (its state_dict keys stay those of the float BatchNorm, plus
``output_quantizer``) and quantizes what the float one returns.
"""
from __future__ import annotations

import operator

import torch
from torch import fx, nn

from ..quant.scales import ActivationQuantizer
from .integer_norm import QuantLayerNorm
from .layers import QuantActivation, QuantMixin, take_over
from .shiftmax import ShiftSoftmax


def is_norm_act(m: nn.Module) -> bool:
    """timm's ``BatchNormAct2d`` (a BatchNorm2d with ``act`` and ``drop`` submodules)."""
    return isinstance(m, nn.BatchNorm2d) and isinstance(getattr(m, "act", None), nn.Module) \
        and isinstance(getattr(m, "drop", None), nn.Module)


class QuantBatchNorm2d(nn.BatchNorm2d):
    """``output_quantizer(BatchNorm2d(x))``; taking over timm's ``BatchNormAct2d``, its dropout
    and activation follow the quantizer: ``act(drop(output_quantizer(BatchNorm2d(x))))``."""

    output_quantizer: nn.Module

    @classmethod
    def from_float(cls, bn: nn.BatchNorm2d, output_quantizer: nn.Module) -> QuantBatchNorm2d:
        new = take_over(cls, bn)
        new.output_quantizer = output_quantizer
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.output_quantizer(super().forward(x))
        return self.act(self.drop(y)) if is_norm_act(self) else y


class Tracer(fx.Tracer):
    """Traces a quantized model with its quantized layers, activations, BatchNorms (timm's
    BatchNormAct2d too), quantizers, shiftmaxes and integer LayerNorms as leaves."""

    LEAVES = (QuantMixin, QuantBatchNorm2d, QuantActivation, ActivationQuantizer, ShiftSoftmax, QuantLayerNorm)

    def is_leaf_module(self, m, qualname):
        return isinstance(m, self.LEAVES) or is_norm_act(m) or super().is_leaf_module(m, qualname)


ADDS = (operator.add, operator.iadd, torch.add)
# Ops that keep a value on its grid: walking back from an add passes through them. A clamp (ReLU6,
# Hardtanh) keeps it when its bounds are on the grid; the exporter checks that (off the grid it runs
# in float, as any op that leaves the grid).
_GRID_KEEPING_MODULES = (nn.ReLU, nn.Hardtanh, nn.MaxPool2d, nn.Identity, nn.Dropout)
_GRID_KEEPING_FUNCTIONS = (torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.hardtanh, torch.clamp,
                           torch.clip)
_GRID_KEEPING_NAMES = ("DropPath",)  # timm's stochastic depth: the identity in eval


def _keeps_grid(m: nn.Module) -> bool:
    return isinstance(m, _GRID_KEEPING_MODULES) or type(m).__name__ in _GRID_KEEPING_NAMES


def residual_batchnorms(model: nn.Module, grid_outputs: frozenset[str] = frozenset()) -> list[str]:
    """Names of the ``BatchNorm2d`` modules whose output reaches a residual add only through
    grid-keeping ops (ReLU, max pooling), for every add whose inputs all come from such a
    BatchNorm or from another such add (other adds are left alone: they stay float), and of those
    whose output reaches an average pool that way: a pool of grid integers is an integer window
    sum, which the next quantized layer's input thresholds read (a LeNet's pools between blocks,
    a squeeze-excite block's squeeze). ``grid_outputs``: modules whose output is on the grid
    already (activations on the grid, :mod:`.grid_activation`): an add may read them too."""
    try:
        graph = Tracer().trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model has no residual grid
        return []
    on_grid: set[fx.Node] = set()
    names: list[str] = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in ADDS:
            sources = [_grid_source(model, arg, on_grid, grid_outputs) for arg in node.args]
            if all(sources):
                on_grid.add(node)
                names += [s for s in sources if isinstance(s, str) and s not in names]
        elif _averages(model, node) and node.args:
            source = _grid_source(model, node.args[0], on_grid, grid_outputs)
            if isinstance(source, str) and source not in names:
                names.append(source)
    return names


_AVERAGING_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_AVERAGING_FUNCTIONS = (nn.functional.avg_pool2d, nn.functional.adaptive_avg_pool2d)


def _averages(model: nn.Module, node: fx.Node) -> bool:
    """An average pool, or a mean over height and width (a squeeze-excite block's squeeze)."""
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), _AVERAGING_MODULES)
    if node.op == "call_method" and node.target == "mean" or node.op == "call_function" and node.target is torch.mean:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]
    return node.op == "call_function" and node.target in _AVERAGING_FUNCTIONS


def _grid_source(model: nn.Module, cur, on_grid: set, grid_outputs: frozenset[str]) -> str | bool:
    """Walk back from an add's input through grid-keeping ops: the BatchNorm2d reached (its name),
    ``True`` for an add or a module already on the grid, ``False`` for anything else."""
    while isinstance(cur, fx.Node):
        if cur.op == "call_function" and cur.target in ADDS:
            return cur in on_grid
        if cur.op == "call_module":
            if cur.target in grid_outputs or f"{cur.target}.act" in grid_outputs:
                return True
            m = model.get_submodule(cur.target)
            if isinstance(m, nn.BatchNorm2d):  # a BatchNormAct2d's own activation must keep the grid too
                return cur.target if not is_norm_act(m) or _keeps_grid(m.act) and _keeps_grid(m.drop) else False
            if not _keeps_grid(m):
                return False
        elif not (cur.op == "call_function" and cur.target in _GRID_KEEPING_FUNCTIONS):
            return False
        cur = cur.args[0]
    return False
