"""Normalization: ``batch_norm``, ``layer_norm``, ``integer_layer_norm``.

``batch_norm`` and ``layer_norm`` run in float32 with PyTorch's kernels. A ``batch_norm`` with an
``output_quantizer`` (a residual BatchNorm) quantizes its output onto the residual grid: integers
out. ``integer_layer_norm`` is :class:`~shiftquant.nn.integer_norm.QuantLayerNorm`: on a grid
whose readers are shift layers, its output is ``z``'s integers (kind ``normalized``, each channel
times its ``signs`` entry, so that every reader's value rises with them), and the affine and the
readers' input quantizers become their input thresholds.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ExportError
from ...nn import integer_norm as IN
from ..format.values import Fact, Value
from .quantizers import check_output_quantizer
from .schema import CStep, Field, OnnxMap, OpDef, register


def _tensor_or_none(tensor, node: dict, key: str):
    return None if node.get(key) is None else tensor(node[key])


def _batch_norm(node, args, tensor, batch):
    t = lambda k: _tensor_or_none(tensor, node, k)
    return F.batch_norm(args[0], t("mean"), t("var"), t("weight"), t("bias"), False, 0.0, node["eps"])


def _batch_norm_check(rt, node) -> None:
    mean = rt.tensor(node["mean"])
    if mean.ndim != 1:
        rt.fail(node, "mean must be 1-D")
    for k in ("var", "weight", "bias"):
        if node.get(k) is not None:
            rt.tensor(node[k], mean.shape)
    check_output_quantizer(rt, node)


def _layer_norm(node, args, tensor, batch):
    t = lambda k: _tensor_or_none(tensor, node, k)
    return F.layer_norm(args[0], node["normalized_shape"], t("weight"), t("bias"), node["eps"])


def _layer_norm_check(rt, node) -> None:
    for k in ("weight", "bias"):
        if node.get(k) is not None and tuple(rt.tensor(node[k]).shape) != tuple(node["normalized_shape"]):
            rt.fail(node, f"{k} must have the normalized shape {node['normalized_shape']}")


def _int_ln_float(node, args, tensor, batch):
    x = args[0]
    if x.is_meta:
        return torch.empty_like(x)
    t = lambda k: _tensor_or_none(tensor, node, k)
    return IN.integer_layer_norm(x, node["normalized_shape"], t("weight"), t("bias"))


def _int_ln_check(rt, node) -> None:
    _layer_norm_check(rt, node)
    shape = node["normalized_shape"]
    if len(shape) != 1 or not 1 <= shape[0] <= IN.MAX_ROW:
        rt.fail(node, f"an integer LayerNorm normalizes one dimension of 1 to {IN.MAX_ROW} values")
    if node.get("signs") is not None:
        signs = rt.tensor(node["signs"])
        if signs.shape != tuple(shape) or signs.dtype != np.int8 or not np.isin(signs, (-1, 1)).all():
            rt.fail(node, "signs must be int8 values -1 or 1, one per channel")


def _on_integers(node: dict, x) -> bool:
    return x.kind == "grid" and node.get("signs") is not None


def _int_ln_int(rt, node, args):
    x = args[0]
    if not _on_integers(node, x):
        return None
    z = IN.normalized_ints(torch.from_numpy(x.data.astype(np.int64))).numpy()
    return Value(z * rt.tensor(node["signs"]).astype(np.int64), None, "normalized")


def _int_ln_prove(rt, node, args, shape):
    if not _on_integers(node, args[0]):
        return None
    bound = (math.isqrt(node["normalized_shape"][0]) + 1) << IN.FRACTION_BITS  # |z| <= 2^F sqrt(N - 1) + 1
    return Fact(shape, "normalized", -bound, bound)


def _int_ln_integerize(node, args, ctx) -> None:
    """On integers when its input is a grid and its readers are shift layers (through picks that
    keep the last dimension): they read it through thresholds."""
    if args[0].kind == "grid" and ctx.readers_divide(through=("index",)):
        weight = None if node.get("weight") is None else ctx.graph.tensor(node["weight"])
        signs = np.ones(node["normalized_shape"], np.int8) if weight is None else np.where(weight < 0, -1, 1)
        node["signs"] = ctx.add(f"{node['name']}.signs", signs.astype(np.int8))


def _int_ln_onnx(b, node, args):
    """:func:`shiftquant.nn.integer_norm.normalized_ints` times ``signs`` in int64
    (``onnx_int64.py``), its integers out as float32."""
    from . import onnx_int64 as I

    if node.get("signs") is None:
        raise ExportError(f"node {node['name']!r} (integer_layer_norm): on float values it has no ONNX mapping; "
                          "export it on the integer stream (its input on a grid, its readers shift layers)")
    n, last = int(node["normalized_shape"][0]), I.const(b, [-1])
    x = b.op("Cast", args[0], to=I.INT64)
    mag = b.op("Abs", x)
    low = b.op("BitwiseAnd", mag, b.op("Neg", mag))
    lowest = b.op("ReduceMin", b.op("Where", b.op("Greater", mag, I.const(b, 0)), low, I.const(b, 1 << 62)), last,
                  keepdims=1)
    common = b.op("Sub", I.bit_length(b, lowest), I.const(b, 1))
    cap = b.op("Sub", I.bit_length(b, b.op("ReduceMax", mag, last, keepdims=1)), I.const(b, 30 - n.bit_length()))
    down = b.op("Clip", b.op("Max", common, cap), I.const(b, 0), I.const(b, 62))
    x = I.floor_div(b, x, I.pow2(b, down))
    s = b.op("ReduceSum", x, last, keepdims=1)
    v = b.op("Sub", b.op("Mul", I.const(b, n), b.op("ReduceSum", b.op("Mul", x, x), last, keepdims=1)), b.op("Mul", s, s))
    t = b.op("Div", b.op("Sub", I.const(b, 62), I.bit_length(b, v)), I.const(b, 2))  # >= 0: a floor
    root = b.op("Max", I.isqrt(b, b.op("Mul", v, I.pow2(b, b.op("Add", t, t)))), I.const(b, 1))
    deviation = b.op("Mul", b.op("Sub", b.op("Mul", x, I.const(b, n)), s),
                     I.pow2(b, b.op("Add", t, I.const(b, IN.FRACTION_BITS))))
    z = I.floor_div(b, deviation, root)
    signs = I.const(b, b.tensor(node["signs"]).astype(np.int64))
    return b.op("Cast", b.op("Mul", z, signs), to=I.FLOAT)


def _onnx_affine(b, node: dict, shape) -> list[str]:
    """``weight`` and ``bias`` as constants (ones and zeros where null)."""
    return [b.const(np.ones(shape, np.float32) if node.get("weight") is None else b.tensor(node["weight"])),
            b.const(np.zeros(shape, np.float32) if node.get("bias") is None else b.tensor(node["bias"]))]


def _batch_norm_onnx(b, node, args):
    mean = b.tensor(node["mean"])
    if node.get("var") is None:
        raise ExportError(f"node {node['name']!r} (batch_norm): a BatchNorm in eval needs its running variance")
    var = b.tensor(node["var"])
    return b.op("BatchNormalization", args[0], *_onnx_affine(b, node, mean.shape), b.const(mean), b.const(var),
                epsilon=float(node["eps"]))


def _layer_norm_onnx(b, node, args):
    shape = node["normalized_shape"]
    return b.op("LayerNormalization", args[0], *_onnx_affine(b, node, shape), axis=-len(shape),
                epsilon=float(node["eps"]))


def _affine(what: str) -> tuple[Field, ...]:
    return (Field("weight", "tensor", f"{what} scale (gamma), or null", optional=True),
            Field("bias", "tensor", f"{what} shift (beta), or null", optional=True),
            Field("eps", "number", "added to the variance"))


register(
    OpDef("batch_norm", "`F.batch_norm` in eval; with `output_quantizer` (a residual grid) it outputs integers",
          (Field("mean", "tensor", "running mean (C,)"), Field("var", "tensor", "running variance (C,)", optional=True))
          + _affine("per-channel")
          + (Field("output_quantizer", "act_quantizer", "the residual grid its output is quantized onto",
                   optional=True),),
          float=_batch_norm, check=_batch_norm_check, onnx=OnnxMap("BatchNormalization", _batch_norm_onnx), quantizes_output=True,
          chain="fold"),
    OpDef("layer_norm", "`F.layer_norm`",
          (Field("normalized_shape", "sizes", "the trailing shape normalized"),) + _affine("elementwise"),
          float=_layer_norm, check=_layer_norm_check, onnx=OnnxMap("LayerNormalization", _layer_norm_onnx)),
    OpDef("integer_layer_norm", "`QuantLayerNorm` (`shiftquant.nn.integer_norm`): integer mean, variance and "
          "square root, `z` with `fraction_bits`, then the affine; with `signs`, `z * signs` on integers out, read "
          "through its readers' input thresholds",
          (Field("normalized_shape", "sizes", "the last dimension normalized"),)
          + _affine("elementwise")[:2]
          + (Field("fraction_bits", "choice", "fraction bits of z", choices=(IN.FRACTION_BITS,)),
             Field("signs", "tensor", "int8 -1 / 1 per channel: the sign of its weight (integers out)",
                   optional=True)),
          float=_int_ln_float, check=_int_ln_check, integer=_int_ln_int, prove=_int_ln_prove,
          integerize=_int_ln_integerize,
          c=lambda node, args: CStep("layer_norm") if node.get("signs") is not None else None,
          onnx=OnnxMap("int64 ReduceSum, BitwiseAnd, Sqrt and comparisons, Mod, Div", _int_ln_onnx),
          float_reason=("its input is not on a grid, or a reader is not a shift layer",
                        "let it read the residual stream on its grid and feed Linear layers")),
)
