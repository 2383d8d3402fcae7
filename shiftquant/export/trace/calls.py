"""Traced function and method calls as op entries: one small builder per PyTorch target.

:data:`CALLS` maps a target (a function, or a method's name) to the builder of its manifest entry;
a builder reads the call's constant arguments (numbers, shapes the graph computed) through
:class:`Call` and refuses what the op set cannot express with an :class:`~shiftquant.errors.ExportError`.
"""
from __future__ import annotations

import operator
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F

from ...errors import ExportError
from ...nn.residual import ADDS
from ..format.values import pair

# Positional arguments of functional layers that are the layer's parameters (read with get_attr).
PARAMETER_ARGS = {F.linear: (1, 2), F.conv2d: (1, 2), F.layer_norm: (2, 3)}


class Call:
    """A traced call and what a builder may read of it: its constant arguments (:meth:`arg`), its
    tensor arguments, the traced runs and the exporter (which stores parameters)."""

    def __init__(self, exporter, node: fx.Node):
        self.exporter, self.node, self.traced = exporter, node, exporter.traced
        self.tensors = [a for a in node.args if isinstance(a, fx.Node) and a not in self.traced.static]

    def arg(self, i: int, key: str, default=None):
        a = self.node.args[i] if len(self.node.args) > i else self.node.kwargs.get(key, default)
        return self.traced.value(a) if isinstance(a, fx.Node) and a in self.traced.static else a

    def parameter(self, i: int, key: str) -> str | None:
        """A tensor argument read from the model (``get_attr``), stored in the bundle."""
        a = self.node.args[i] if len(self.node.args) > i else self.node.kwargs.get(key)
        if a is None:
            return None
        if not isinstance(a, fx.Node) or a.op != "get_attr":
            raise ExportError(f"{key} must be a parameter of the model")
        return self.exporter.add(f"{self.node.name}.{key}", self.traced.runs[0][a])


CALLS: dict[object, Callable[[Call], dict]] = {}


def _on(*targets):
    def register(builder):
        for t in targets:
            CALLS[t] = builder
        return builder
    return register


def entry(exporter, node: fx.Node) -> dict:
    """The manifest entry of a traced function or method call."""
    target = node.target
    builder = CALLS.get(target) if _hashable(target) else None
    if builder is None and getattr(target, "__name__", None) in _BY_NAME:
        builder = _BY_NAME[target.__name__]
    if builder is None:
        raise ExportError(f"{getattr(target, '__name__', target)} is not supported by the exporter")
    return builder(Call(exporter, node))


def _hashable(v) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _simple(op: str) -> Callable[[Call], dict]:
    return lambda c: {"op": op}


# ---------------------------------------------------------------------------------------------- elementwise
def _binary(op: str):
    def build(c: Call) -> dict:
        """``a op b`` on two tensors, or a tensor and a number (``scalar``; ``reverse``: number first)."""
        node = c.node
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
            raise ExportError(f"{op} with alpha or rounding_mode is not supported")
        tensor = lambda v: isinstance(v, fx.Node) and v not in c.traced.static
        if tensor(a) and tensor(b):
            return {"op": op}
        number = [c.traced.value(v) if isinstance(v, fx.Node) else v for v in (a, b) if not tensor(v)][0]
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ExportError(f"{op} with a {type(number).__name__} operand is not supported (tensors and numbers)")
        return {"op": op, "scalar": float(number), "reverse": not tensor(a)}
    return build


_on(*ADDS, "add")(_binary("add"))
_on(operator.mul, torch.mul, "mul")(_binary("mul"))
_on(operator.sub, torch.sub, "sub")(_binary("sub"))
_on(operator.truediv, torch.div, "div")(_binary("div"))
_on(torch.relu, F.relu, "relu")(_simple("relu"))
_on(operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm")(_simple("matmul"))
_on("contiguous", "clone", torch.clone)(_simple("identity"))
for _op, _targets in {"hardswish": (F.hardswish,), "hardsigmoid": (F.hardsigmoid,), "silu": (F.silu,),
                      "sigmoid": (torch.sigmoid, F.sigmoid)}.items():
    _on(*_targets, _op)(_simple(_op))


@_on(F.gelu, "gelu")
def _gelu(c: Call) -> dict:
    return {"op": "gelu", "approximate": c.arg(1, "approximate", "none")}


@_on(F.relu6, "relu6")
def _relu6(c: Call) -> dict:
    return {"op": "clamp", "min": 0.0, "max": 6.0}


@_on(F.hardtanh, "hardtanh")
def _hardtanh(c: Call) -> dict:
    return {"op": "clamp", "min": float(c.arg(1, "min_val", -1.0)), "max": float(c.arg(2, "max_val", 1.0))}


@_on(torch.clamp, torch.clip, "clamp", "clip")
def _clamp(c: Call) -> dict:
    lo, hi = c.arg(1, "min"), c.arg(2, "max")
    if any(v is not None and not isinstance(v, (int, float)) for v in (lo, hi)):
        raise ExportError("clamp with tensor bounds is not supported (numbers only)")
    return {"op": "clamp", "min": None if lo is None else float(lo), "max": None if hi is None else float(hi)}


@_on(F.dropout, "dropout")
def _dropout(c: Call) -> dict:
    if c.arg(2, "training", True):
        raise ExportError("dropout in training mode (call it with training=self.training, or use nn.Dropout)")
    return {"op": "identity"}


def _maybe_add_mask(c: Call) -> dict:
    if c.arg(1, "attn_mask") is not None:
        raise ExportError("maybe_add_mask with a mask is not supported")
    return {"op": "identity"}  # timm's attention without a mask


_BY_NAME = {"maybe_add_mask": _maybe_add_mask}


# ---------------------------------------------------------------------------------------------- pooling, layers, norms
@_on(F.adaptive_avg_pool2d)
def _adaptive_avg_pool2d(c: Call) -> dict:
    size = c.arg(1, "output_size")
    return {"op": "adaptive_avg_pool2d", "output_size": list(size) if isinstance(size, (tuple, list)) else [size, size]}


def _window(c: Call) -> dict:
    kernel = pair(c.arg(1, "kernel_size"))
    stride = c.arg(2, "stride")
    return {"kernel_size": kernel, "stride": kernel if stride in (None, [], ()) else pair(stride),
            "padding": pair(c.arg(3, "padding", 0))}


@_on(F.max_pool2d)
def _max_pool2d(c: Call) -> dict:
    return {"op": "max_pool2d", **_window(c), "dilation": pair(c.arg(4, "dilation", 1)),
            "ceil_mode": bool(c.arg(5, "ceil_mode", False))}


@_on(F.avg_pool2d)
def _avg_pool2d(c: Call) -> dict:
    if c.arg(6, "divisor_override") is not None:
        raise ExportError("avg_pool2d with divisor_override is not supported")
    return {"op": "avg_pool2d", **_window(c), "ceil_mode": bool(c.arg(4, "ceil_mode", False)),
            "count_include_pad": bool(c.arg(5, "count_include_pad", True))}


@_on(F.linear)
def _linear(c: Call) -> dict:  # a float Linear traced through (timm's subclass), or a functional one
    return {"op": "linear", "weight": c.parameter(1, "weight"), "bias": c.parameter(2, "bias")}


@_on(F.conv2d)
def _conv2d(c: Call) -> dict:
    padding = c.arg(4, "padding", 0)
    if isinstance(padding, str):
        raise ExportError(f"conv2d with padding={padding!r} is not supported (give the padding in pixels)")
    return {"op": "conv2d", "weight": c.parameter(1, "weight"), "bias": c.parameter(2, "bias"),
            "stride": pair(c.arg(3, "stride", 1)), "padding": pair(padding), "dilation": pair(c.arg(5, "dilation", 1)),
            "groups": int(c.arg(6, "groups", 1))}


def layer_norm(shape, weight: str | None, bias: str | None, eps: float) -> dict:
    return {"op": "layer_norm", "normalized_shape": [int(v) for v in shape], "weight": weight, "bias": bias,
            "eps": eps}


@_on(F.layer_norm)
def _layer_norm(c: Call) -> dict:
    return layer_norm(list(c.arg(1, "normalized_shape")), c.parameter(2, "weight"), c.parameter(3, "bias"),
                      float(c.arg(4, "eps", 1e-5)))


@_on(torch.mean, "mean")
def _mean(c: Call) -> dict:
    dim = c.arg(1, "dim")
    if dim is None:
        raise ExportError("a mean over every dimension (batch included) is not supported; give dim")
    return {"op": "mean", "dim": [dim] if isinstance(dim, int) else list(dim), "keepdim": bool(c.arg(2, "keepdim", False))}


@_on(F.softmax, torch.softmax, "softmax")
def _softmax(c: Call) -> dict:
    if c.node.kwargs.get("dtype") is not None or c.arg(1, "dim") is None:
        raise ExportError("softmax needs dim, and no dtype")
    return {"op": "softmax", "dim": int(c.arg(1, "dim"))}


@_on(F.scaled_dot_product_attention)
def _attention(c: Call) -> dict:
    if c.arg(3, "attn_mask") is not None or c.arg(4, "dropout_p", 0.0) or c.arg(5, "is_causal", False) \
            or c.arg(7, "enable_gqa", False):
        raise ExportError("scaled_dot_product_attention with a mask, dropout, is_causal or enable_gqa is not supported")
    scale = c.arg(6, "scale")
    return {"op": "attention", "scale": None if scale is None else float(scale)}


# ---------------------------------------------------------------------------------------------- data movement
@_on(torch.flatten, "flatten")
def _flatten(c: Call) -> dict:
    return {"op": "flatten", "start_dim": c.arg(1, "start_dim", 0), "end_dim": c.arg(2, "end_dim", -1)}


@_on(F.pad)
def _pad(c: Call) -> dict:
    mode = c.arg(2, "mode", "constant")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ExportError(f"pad mode {mode!r}: allowed constant, reflect, replicate, circular")
    return {"op": "pad", "pads": [int(v) for v in c.arg(1, "pad")], "mode": mode,
            "value": float(c.arg(3, "value", None) or 0.0)}


@_on(torch.cat)
def _cat(c: Call) -> dict:
    return {"op": "cat", "dim": c.arg(1, "dim", 0)}


@_on("reshape", "view", torch.reshape)
def _reshape(c: Call) -> dict:
    src = next(a for a in c.node.args if isinstance(a, fx.Node))
    if c.traced.batch_dim(src) == 0 and c.traced.batch_dim(c.node) == 0 and c.traced.runs[0][c.node].dim() == 2:
        return {"op": "flatten", "start_dim": 1, "end_dim": -1}  # x.view(x.size(0), -1): the integer flatten
    return {"op": "reshape", "shape": c.traced.shape(c.node)}


@_on("expand", "expand_as")
def _expand(c: Call) -> dict:
    return {"op": "expand", "shape": c.traced.shape(c.node)}


@_on("permute", torch.permute, "transpose", torch.transpose, "t")
def _permute(c: Call) -> dict:
    """The dims of a permute, transpose or t as one permutation."""
    rank = c.traced.runs[0][c.tensors[0]].dim()
    if c.node.target in ("permute", torch.permute):
        dims = [c.arg(i, "dims") for i in range(1, len(c.node.args))] if len(c.node.args) > 2 else c.arg(1, "dims")
        dims = list(dims)
    else:
        a, b = (0, 1) if c.node.target == "t" else (c.arg(1, "dim0"), c.arg(2, "dim1"))
        dims = list(range(rank))
        dims[a], dims[b] = dims[b], dims[a]
    return {"op": "permute", "dims": [int(d) % rank for d in dims]}


@_on(operator.getitem)
def _getitem(c: Call) -> dict:
    source = c.node.args[0]
    if source.op == "call_method" and source.target == "unbind" or source.target is torch.unbind:
        dim = source.args[1] if len(source.args) > 1 else source.kwargs.get("dim", 0)
        return {"op": "index", "index": [[None, None, None]] * dim + [int(c.node.args[1])]}
    if not isinstance(c.traced.runs[0][source], torch.Tensor):
        raise ExportError(f"indexing the tuple {source.target} returns is not supported (unbind only)")
    return {"op": "index", "index": _index_spec(c.arg(1, "index"), c.traced)}


def _index_spec(index, traced) -> list:
    """A tensor index as JSON: an integer, ``[start, stop, step]`` for a slice, null for a new axis,
    ``"..."`` for an ellipsis."""
    const = lambda v: traced.value(v) if isinstance(v, fx.Node) else v
    items = list(index) if isinstance(index, tuple) else [index]
    spec = []
    for item in items:
        item = const(item)
        if isinstance(item, slice):
            bounds = [const(v) for v in (item.start, item.stop, item.step)]
            if not all(v is None or isinstance(v, int) for v in bounds):
                raise ExportError("a slice with bounds other than integers is not supported")
            spec.append(bounds)
        elif item is None or item is Ellipsis:
            spec.append(None if item is None else "...")
        elif isinstance(item, int) and not isinstance(item, bool):
            spec.append(item)
        else:
            raise ExportError(f"indexing with {type(item).__name__} is not supported (integers and slices)")
    return spec
