"""Attention: ``softmax``, ``shiftmax``, ``matmul`` (products of two activations) and fused ``attention``.

``softmax`` and ``attention`` run in float32 with PyTorch's kernels. ``matmul`` of two grids is
an integer matmul (its multiply-accumulates count as integer: with the activation grid of a shift
recipe both operands are zero or signed powers of two). ``shiftmax`` (:mod:`shiftquant.nn.shiftmax`)
is the softmax of :class:`~shiftquant.nn.attention.QuantAttention`: integers in, zero and powers of
two out, computed by the same function in the PyTorch model and here.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ...nn import shiftmax as SM
from ..format.ints import FLOAT, FLOAT32_EXACT
from ..format.values import Fact, Value
from .schema import CStep, Field, OnnxMap, OpDef, onnx_op, positive, register


def _matmul_macs(node: dict, shapes: dict, tensors) -> tuple[str, int]:
    """Every output element sums over the first input's last dimension; on integers when both
    operands are grids."""
    kind = "float" if node.get("dtype", "float32") == "float32" else "integer"
    return kind, math.prod(shapes[node["name"]]) * int(shapes[node["inputs"][0]][-1])


def _grids(args) -> bool:
    return all(a.kind == "grid" for a in args)


def _matmul_int(rt, node, args):
    """On integers when its proof made it integer (loaded bundles hold the declared type to it)."""
    if not _grids(args) or node.get("dtype", FLOAT) == FLOAT:
        return None
    a, b = args
    return Value(np.matmul(a.data.astype(np.int64), b.data.astype(np.int64)), a.unit * b.unit)


def _matmul_prove(rt, node, args, shape):
    """Integers when both inputs are grids and no sum can reach 2^24 (beyond, float32's sums in
    the PyTorch model are no longer exact, and the values stay float)."""
    if not _grids(args):
        return None
    a, b = args
    corners = [x * y for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    depth = int(a.shape[-1])
    lo, hi = depth * min(corners), depth * max(corners)
    if max(-lo, hi) >= FLOAT32_EXACT:
        return None
    return Fact(shape, "grid", lo, hi, a.unit * b.unit)


# ---------------------------------------------------------------------------------------------- shiftmax
def _shiftmax_float(node, args, tensor, batch):
    x = args[0]
    if x.is_meta:
        return torch.empty_like(x)
    return SM.shiftmax(x, node["unit"], node["scale"], node["shift_bits"], node["dim"])


def _multiplier(rt, node) -> tuple[int, int]:
    try:
        return SM.exponent_multiplier(node["scale"], node["unit"])
    except ValueError as exc:
        rt.fail(node, str(exc))


def _shiftmax_check(rt, node) -> None:
    if isinstance(node["shift_bits"], bool):
        rt.fail(node, "shift_bits must be an integer")
    _multiplier(rt, node)


def _on_its_grid(node, x) -> bool:
    return x.kind == "grid" and x.unit == node["unit"]


def _length(rt, node, shape) -> None:
    if int(shape[node["dim"]]) > SM.MAX_LENGTH:
        rt.fail(node, f"normalizes over {int(shape[node['dim']])} values, more than {SM.MAX_LENGTH}")


def _shiftmax_int(rt, node, args):
    x = args[0]
    if not _on_its_grid(node, x):
        return None
    _length(rt, node, x.data.shape)
    k, f = _multiplier(rt, node)
    codes = SM.shiftmax_codes(torch.from_numpy(x.data.astype(np.int64)), k, f, node["shift_bits"], node["dim"])
    return Value(codes.numpy(), 2.0 ** -((1 << node["shift_bits"]) - 1))


def _shiftmax_prove(rt, node, args, shape):
    x = args[0]
    if not _on_its_grid(node, x):
        return None
    _length(rt, node, (0,) + tuple(shape) if node["dim"] >= 0 else shape)
    top = (1 << node["shift_bits"]) - 1
    if max(abs(x.lo), abs(x.hi)) >= 1 << 25:  # the C and ONNX kernels: d * k << 20 fits int64
        rt.fail(node, "scores beyond 2^25 units")  # (an exported matmul stays below 2^24)
    return Fact(shape, "grid", 0, 1 << top, 2.0 ** -top)


def _shiftmax_onnx(b, node, args):
    """:func:`shiftquant.nn.shiftmax.shiftmax_codes` in int64 (``onnx_int64.py``: floor divisions
    for the signed shifts), its integers out as float32."""
    from . import onnx_int64 as I

    k, f = SM.exponent_multiplier(node["scale"], node["unit"])
    top, axis = (1 << node["shift_bits"]) - 1, I.const(b, [node["dim"]])
    s = b.op("Cast", args[0], to=I.INT64)
    t = b.op("Mul", b.op("Sub", s, b.op("ReduceMax", s, axis, keepdims=1)), I.const(b, k))  # <= 0, |t| < 2^41
    shift = f - SM.EXP_FRACTION_BITS
    fixed = (I.floor_div(b, t, I.const(b, 1 << min(shift, 42))) if shift >= 0  # beyond 2^41: -1 or 0 alike
             else b.op("Mul", t, I.const(b, 1 << -shift)))
    one = I.const(b, 1 << SM.EXP_FRACTION_BITS)
    p = I.floor_div(b, fixed, one)
    mantissa = b.op("Mul", b.op("Add", one, b.op("Mod", fixed, one, fmod=0)),
                    I.const(b, 1 << (SM.ONE_BITS - SM.EXP_FRACTION_BITS)))
    down = b.op("Min", b.op("Neg", p), I.const(b, SM.ONE_BITS + 1))
    e = I.floor_div(b, mantissa, I.pow2(b, down))
    total = b.op("ReduceSum", e, axis, keepdims=1)
    total_sq, e_sq2 = b.op("Mul", total, total), b.op("Mul", b.op("Mul", e, e), I.const(b, 2))
    count = I.const(b, 0)
    for i in range(top):
        reached = b.op("GreaterOrEqual", b.op("Mul", e_sq2, I.const(b, 1 << (2 * i))), total_sq)
        count = b.op("Add", count, b.op("Cast", reached, to=I.INT64))
    nonzero = b.op("GreaterOrEqual", b.op("Mul", e, I.const(b, 1 << (top + 1))), total)
    codes = b.op("Where", nonzero, I.pow2(b, count), I.const(b, 0))
    return b.op("Cast", codes, to=I.FLOAT)


def _attention_macs(node: dict, shapes: dict, tensors) -> tuple[str, int]:
    """``q k^T`` and ``softmax(.) v``."""
    q, k, v = (shapes[i] for i in node["inputs"])
    return "float", math.prod(q[:-1]) * int(k[-2]) * (int(q[-1]) + int(v[-1]))


def _attention_onnx(b, node, args):
    """``softmax(q k^T x scale) v``."""
    q, k, v = args
    rank, depth = b.rank(node["inputs"][1]), b.graph.facts[node["inputs"][0]].shape[-1]
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scale = node.get("scale") or 1.0 / math.sqrt(depth)
    scores = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, perm=perm)), b.const(scale))
    return b.op("MatMul", b.op("Softmax", scores, axis=-1), v)


register(
    OpDef("softmax", "`torch.softmax`", (Field("dim", "dim", "the dimension normalized"),),
          float=lambda node, args, tensor, batch: torch.softmax(args[0], node["dim"]), sign=positive,
          onnx=onnx_op("Softmax", lambda node: {"axis": node["dim"]})),
    OpDef("shiftmax", "the softmax of `QuantAttention` (`shiftquant.nn.shiftmax`): scores on the grid `unit` in, "
          "zero and powers of two out, worth `2^-(2^shift_bits - 1)` each, by shifts and integer comparisons",
          (Field("dim", "dim", "the dimension normalized"),
           Field("scale", "number", "the logits' scale (the scores times `unit` times it are the logits)", low=1e-30),
           Field("unit", "number", "what one integer of the scores is worth", low=1e-30),
           Field("shift_bits", "choice", "exponent bits of the probabilities", choices=(1, 2, 3, 4))),
          float=_shiftmax_float, check=_shiftmax_check, integer=_shiftmax_int, prove=_shiftmax_prove,
          sign=positive, c=lambda node, args: CStep("shiftmax"),
          onnx=OnnxMap("int64 Mul, Mod, Div, BitShift, ReduceSum, comparisons", _shiftmax_onnx),
          float_reason=("its scores are not integers on its grid", "let a QuantAttention make them")),
    OpDef("matmul", "`torch.matmul` of two activations (attention's `q @ k^T`, `attn @ v`); of two grids, an "
          "integer matmul", inputs=2,
          float=lambda node, args, tensor, batch: torch.matmul(args[0], args[1]), integer=_matmul_int,
          prove=_matmul_prove, c=lambda node, args: CStep("matmul"), onnx=onnx_op("MatMul"), macs=_matmul_macs,
          float_reason=(("multiplies values that are not both on power-of-two integer grids, or whose sums of "
                         "products could reach 2^24"),
                        "quantize both (QuantAttention puts q, k and v on the grid) with fewer activation bits")),
    OpDef("attention", "`F.scaled_dot_product_attention` of q, k, v without a mask or dropout",
          (Field("scale", "number", "the logits' scale (null: PyTorch's, 1/sqrt(d))", low=1e-30, optional=True),),
          inputs=3, float=lambda node, args, tensor, batch: F.scaled_dot_product_attention(*args,
                                                                                           scale=node.get("scale")),
          onnx=OnnxMap("MatMul, Softmax, MatMul", _attention_onnx), macs=_attention_macs),
)
