"""Will a model export, and how? Refusals that name the module and the way around them.

The exporter converts the traced graph node by node. A node it cannot convert becomes a
:class:`Refusal`: the PyTorch module it belongs to (qualified name and type), the source op, why,
and what to do instead. The exporter collects every refusal of a model and raises them together
(:class:`ExportRefused`); :func:`check_exportable` runs the same exporter without writing a file
and answers before training: exportable or not, integer-only, exact, and which nodes stay float.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...errors import ExportError, ExportRefused
from ..graph.reasons import float_reasons

SUPPORTED = ("quantized Conv2d / Linear (shift weights and quantized inputs), BatchNorm1d/2d (timm's BatchNormAct2d "
             "too), ReLU, ReLU6 / Hardtanh / clamp, Hardswish, Hardsigmoid, SiLU, Sigmoid, GELU, MaxPool2d, AvgPool2d, "
             "AdaptiveAvgPool2d (modules or functions), mean over dims, Flatten / torch.flatten, Identity, Dropout / "
             "DropPath in eval, residual adds (+, torch.add), + - * / with tensors or numbers, torch.cat, LayerNorm, "
             "softmax, matmul / @, scaled_dot_product_attention without a mask, view / reshape / permute / transpose "
             "/ indexing / unbind / expand (the batch kept a dimension of its own), F.pad and padding modes, timm's "
             "Conv2dSame, parameters read in the forward, plain Conv2d / Linear kept float")

MAX_LINES = 20  # refusal lines in an error message
# Functional calls whose module form the exporter knows.
_MODULE_FORMS = {
    F.adaptive_avg_pool2d: "nn.AdaptiveAvgPool2d", F.avg_pool2d: "nn.AvgPool2d", F.max_pool2d: "nn.MaxPool2d",
    F.dropout: "nn.Dropout", F.batch_norm: "nn.BatchNorm2d",
    torch.mean: "nn.AdaptiveAvgPool2d(1) followed by nn.Flatten", "mean": "nn.AdaptiveAvgPool2d(1) followed by nn.Flatten",
}
GENERIC_HOW = "write this step with a supported module (see the list below), or run it outside the exported model"
_DEPLOY = "quantize it with the deploy preset (quant=deploy / QuantRecipe.preset('deploy'))"


@dataclass(frozen=True)
class Refusal:
    """One graph node the exporter cannot convert."""

    node: str
    module: str  # qualified name of the module it belongs to ("" for the model itself)
    module_type: str
    source: str  # the traced op, e.g. "call_function torch.nn.functional.gelu"
    reason: str
    how: str

    def __str__(self) -> str:
        return (f"{self.module or '(the model)'} ({self.module_type}), {self.source}: {self.reason}; "
                f"how: {self.how}")


def refused_message(model_type: str, refusals: list[Refusal]) -> str:
    """One line per refused module (its ops, one way around), a count by module type first."""
    by_module: dict[tuple[str, str], list[Refusal]] = {}
    for r in refusals:
        by_module.setdefault((r.module, r.module_type), []).append(r)
    types = Counter(kind.rsplit(".", 1)[-1] for _, kind in by_module)
    lines = ["  by module type: " + ", ".join(f"{t} x{n}" for t, n in types.most_common())]
    for (module, kind), rs in list(by_module.items())[:MAX_LINES]:
        ops = list(dict.fromkeys(r.source.split(" ", 1)[1].rsplit(".", 1)[-1] for r in rs))
        how = next((r.how for r in rs if r.how != GENERIC_HOW), rs[0].how)
        lines.append(f"  - {module or '(the model)'} ({kind}): " +
                     (rs[0].reason if len(rs) == 1 else f"{', '.join(ops)} not supported") + f"; how: {how}")
    if len(by_module) > MAX_LINES:
        lines.append(f"  ... and {len(by_module) - MAX_LINES} more modules (ExportRefused.refusals lists every node)")
    return (f"cannot export {model_type}: {len(refusals)} node(s) in {len(by_module)} module(s) refused\n"
            + "\n".join(lines) + f"\nThe exporter supports: {SUPPORTED}.")


def _qualname(obj) -> str:
    if isinstance(obj, str):
        return obj
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}" if module and not module.startswith("builtins") else name


def _owner(model: nn.Module, node: fx.Node) -> tuple[str, str]:
    """``(qualified name, type)`` of the module a traced node belongs to."""
    if node.op == "call_module":
        return str(node.target), _qualname(type(model.get_submodule(node.target)))
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        return str(path), _qualname(kind)
    return "", _qualname(type(model))


def _how(model: nn.Module, node: fx.Node, reason: str) -> str:
    """What a user can do about a refused node."""
    from ...nn.layers import QuantMixin

    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if isinstance(m, QuantMixin):
            if m.float_class not in (nn.Conv2d, nn.Linear):
                return (f"{m.float_class.__name__} computes in a forward of its own: build the model with plain "
                        f"Conv2d layers (timm: pad_type=''), or keep_float=['{node.target}'] in the recipe")
            return f"{_DEPLOY}, or keep_float=['{node.target}'] to leave this layer float"
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return f"use a plain {type(m).__bases__[0].__name__} with padding_mode='zeros', or {_DEPLOY}"
        return (f"replace {type(m).__name__} with a supported module, or run it outside the exported model "
                f"(export the part before it)")
    target = node.target
    form = _MODULE_FORMS.get(target)
    if form:
        return f"call {form} (a module) instead of the functional {getattr(target, '__name__', target)}"
    return GENERIC_HOW


def refusal(model: nn.Module, node: fx.Node, exc: ExportError) -> Refusal:
    """The :class:`Refusal` for ``node``, whose conversion raised ``exc``."""
    module, module_type = _owner(model, node)
    target = node.target if node.op == "call_module" else _qualname(node.target)
    reason = "reads a parameter inside a traced forward" if node.op == "get_attr" else str(exc)
    for prefix in (f"{node.target}: ", f"{node.name}: "):
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
    return Refusal(node.name, module, module_type, f"{node.op} {target}", reason, _how(model, node, reason))


@dataclass
class ExportReport:
    """What :func:`check_exportable` found."""

    exportable: bool
    integer_only: bool = False
    exact: bool = False
    float_ops: list[str] = field(default_factory=list)  # "node (module, type)" of what runs in float
    float_reasons: list = field(default_factory=list)  # per float node: why, and what would make it integer
    refusals: list[Refusal] = field(default_factory=list)
    error: str | None = None  # a refusal that is not about one node (tracing, bounds)

    @property
    def how(self) -> str:
        if not self.exportable:
            return "refused"
        if self.integer_only:
            return "integer-only" + (", exact" if self.exact else "")
        return ("exact" if self.exact else "approximate") + f", with {len(self.float_ops)} float op(s)"

    def __str__(self) -> str:
        lines = [f"exportable: {self.exportable} ({self.how})"]
        lines += [f"  refused: {r}" for r in self.refusals]
        if self.error:
            lines.append(f"  refused: {self.error}")
        lines += [f"  float: {r}" for r in self.float_reasons] or [f"  float: {op}" for op in self.float_ops]
        if self.refusals:
            lines.append(f"The exporter supports: {SUPPORTED}.")
        return "\n".join(lines)


def check_exportable(model: nn.Module, example_input: torch.Tensor, input_spec=None) -> ExportReport:
    """Whether ``model`` exports, and how, without writing a file: the exporter's own verdict."""
    from .exporter import Exporter

    exporter = Exporter(model)
    try:
        manifest, _ = exporter.build(example_input, input_spec)
    except ExportRefused as exc:
        return ExportReport(False, refusals=exc.refusals)
    except ExportError as exc:
        return ExportReport(False, error=str(exc))
    by_name = {n["name"]: n for n in manifest["nodes"]}
    float_ops = [f"{name} ({by_name[name].get('module') or 'function'}, {by_name[name]['op']})"
                 for name in manifest["float_ops"]]
    listed = set(manifest["float_ops"])
    reasons = [r for r in float_reasons(manifest) if r.node in listed]
    return ExportReport(True, bool(manifest["integer_only"]), bool(manifest["exact"]), float_ops, reasons)
