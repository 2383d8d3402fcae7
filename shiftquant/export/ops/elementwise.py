"""Elementwise ops: activations, clamps and arithmetic.

On integers, ``relu`` keeps integers (``max(x, 0)``), an ``add`` with ``shifts`` adds two grids
aligned by shifts, a ``mul`` with a ``gate`` shifts one grid's integers by the exponent of the
other's (powers of two: the squeeze-excite gate), and the small-domain activations look their
output integers up in a table (:mod:`.tables`); ``quantize`` puts float values on a grid. Every
other elementwise op runs in float32 with PyTorch's kernel of its name.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import CodegenError
from ..format.ints import FLOAT32_EXACT
from ..format.values import Fact, Value
from . import tables
from .schema import FLOAT32_MAX, NOT_YET, CStep, Field, OnnxMap, OpDef, keeps_sign, onnx_op, positive, register

MAX_SHIFT = 30  # bits an integer add may shift its inputs by
BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}  # as models write them


def _unary(fn):
    return lambda node, args, tensor, batch: fn(args[0])


def _relu_int(rt, node, args):
    x = args[0]
    return None if x.kind == "pixels" else Value(np.maximum(x.data, 0), x.unit, x.kind)


def _relu_prove(rt, node, args, shape):
    x = args[0]
    return None if x.kind == "pixels" else Fact(shape, x.kind, max(x.lo, 0), max(x.hi, 0), x.unit)


def _grid_bounds(node: dict, unit: float, lo: int, hi: int) -> list | None:
    """``min`` and ``max`` as integers of a grid worth ``unit`` each; a bound off the grid (or beyond
    2^24 units) that clips nothing of an input proven in ``[lo, hi]`` is null (ReLU6's 6 above a
    fine grid's top); None when another bound is off the grid. (The exporter's range holds the
    loader's proven one, so both decide alike.)"""
    out = []
    for b, clips_nothing in ((node.get("min"), lambda v: v <= lo), (node.get("max"), lambda v: v >= hi)):
        v = None if b is None else b / unit
        if v is not None and (v != round(v) or abs(v) >= FLOAT32_EXACT):  # exact in float32 too
            if not clips_nothing(v):
                return None
            v = None
        out.append(None if v is None else int(round(v)))
    return out


def _int_bounds(rt, node, x, lo: int, hi: int):
    """The checked ``int_bounds`` of an integer clamp on its grid input proven in ``[lo, hi]``; None
    when it runs in float. They must be ``min`` and ``max`` on the input's grid (or null where they
    clip nothing): the integer clamp is the float one, exactly."""
    if node.get("int_bounds") is None or x.kind != "grid":
        return None
    if node["int_bounds"] != _grid_bounds(node, x.unit, lo, hi):
        rt.fail(node, f"int_bounds {node['int_bounds']} are not min and max on its input's grid (unit {x.unit})")
    return node["int_bounds"]


def _clip(v, lo: int | None, hi: int | None):
    v = v if lo is None else np.maximum(v, lo)
    return v if hi is None else np.minimum(v, hi)


def _clamp_int(rt, node, args):
    x, proven = args[0], rt.facts[node["inputs"][0]]
    bounds = _int_bounds(rt, node, x, proven.lo, proven.hi)
    return None if bounds is None else Value(_clip(x.data.astype(np.int64), *bounds), x.unit)


def _clamp_prove(rt, node, args, shape):
    x = args[0]
    bounds = _int_bounds(rt, node, x, x.lo, x.hi)
    return None if bounds is None else Fact(shape, "grid", int(_clip(x.lo, *bounds)), int(_clip(x.hi, *bounds)), x.unit)


def _clamp_integerize(node, args, ctx) -> None:
    """On a grid whose integers hold both bounds (ReLU6 on a residual stream), it clips integers."""
    x = args[0]
    bounds = _grid_bounds(node, x.unit, x.lo, x.hi) if x.kind == "grid" else None
    if bounds is not None:
        node["int_bounds"] = bounds


def _clamp_c(node, args):
    if node.get("int_bounds") is None:
        return None
    lo, hi = node["int_bounds"]  # checked integers: the expression holds nothing else
    expr = "x" if lo is None else f"(x < {int(lo)} ? {int(lo)} : x)"
    expr = expr if hi is None else f"({expr} > {int(hi)} ? {int(hi)} : {expr})"
    return CStep("unary", {"expr": expr}, in_place=True)


def _clamp_check(rt, node):
    bounds = [node.get("min"), node.get("max")]
    if bounds == [None, None]:
        rt.fail(node, "clamp needs a min or a max")
    if node.get("int_bounds") is not None and any(b is None and i is not None for b, i in zip(bounds, node["int_bounds"])):
        rt.fail(node, "int_bounds must be null for each absent bound")
    if None not in bounds and bounds[0] > bounds[1]:
        rt.fail(node, "clamp min must not exceed max")


def _binary_float(node, args, tensor, batch):
    fn, x = BINARY[node["op"]], args[0]
    if node.get("scalar") is None:
        return fn(args[0], args[1])
    return fn(node["scalar"], x) if node.get("reverse") else fn(x, node["scalar"])


def aligned_unit(rt, node, args, shifts) -> float:
    """The finest grid of integers joined by shifts (an add, a cat), checked to align them."""
    if any(a.kind != "grid" for a in args):
        rt.fail(node, "joins integers off a power-of-two grid")
    unit = min(a.unit for a in args)
    if any(a.unit != unit * 2.0 ** k for a, k in zip(args, shifts)):
        rt.fail(node, "shifts do not align its inputs' grids")
    return unit


def _add_shifts(rt, node, args) -> tuple[float, tuple[int, int]]:
    """The finer grid of an integer add and its two shifts, checked to align its inputs."""
    if len(args) != 2:
        rt.fail(node, "adds two inputs")
    s0, s1 = rt.ints(node, node["shifts"], "shifts", 2)
    if max(s0, s1) > MAX_SHIFT:
        rt.fail(node, f"shifts must be 0 to {MAX_SHIFT}")
    return aligned_unit(rt, node, args, (s0, s1)), (s0, s1)


def _add_int(rt, node, args):
    if args[0].kind == "pixels" or node.get("shifts") is None:
        return None
    unit, (s0, s1) = _add_shifts(rt, node, args)
    return Value((args[0].data.astype(np.int64) << s0) + (args[1].data.astype(np.int64) << s1), unit)


def _add_prove(rt, node, args, shape):
    if args[0].kind == "pixels" or node.get("shifts") is None:
        return None
    unit, (s0, s1) = _add_shifts(rt, node, args)
    a, b = args
    return Fact(shape, "grid", (a.lo << s0) + (b.lo << s1), (a.hi << s0) + (b.hi << s1), unit)


def _magnitude(a) -> int:
    return max(abs(a.lo), abs(a.hi))


def align(args) -> list[int] | None:
    """Shifts aligning grids a power of two apart onto the finest (at most ``MAX_SHIFT``); None
    when an input is not on a grid, the grids do not align, or an aligned value could reach 2^24
    (beyond float32's exact integers: the values stay float)."""
    if any(a.kind != "grid" for a in args):
        return None
    unit = min(a.unit for a in args)
    shifts = [round(math.log2(a.unit / unit)) for a in args]
    ok = all(2.0 ** sh * unit == a.unit and sh <= MAX_SHIFT and _magnitude(a) << sh < FLOAT32_EXACT
             for sh, a in zip(shifts, args))
    return shifts if ok else None


def _add_integerize(node, args, ctx) -> None:
    """Two grids a power of two apart: aligned by shifts onto the finer one (when the sum stays
    below 2^24)."""
    shifts = align(args) if len(args) == 2 else None
    if shifts is not None and sum(_magnitude(a) << sh for a, sh in zip(args, shifts)) < FLOAT32_EXACT:
        node["shifts"] = shifts


def _add_c(node, args):
    if node.get("shifts") is None or len(args) != 2:
        return None
    if args[0].shape != args[1].shape:
        raise CodegenError(f"node {node['name']!r} (add): shapes {args[0].shape} and {args[1].shape} differ")
    return CStep("add", {"shifts": tuple(int(v) for v in node["shifts"])}, in_place=True)


def _gate_operands(rt, node, args):
    """``(x, gate)`` of an integer gate product, both on grids."""
    if len(args) != 2 or any(a.kind != "grid" for a in args):
        rt.fail(node, "multiplies integers off a power-of-two grid")
    g = node["gate"]
    return args[1 - g], args[g]


def floor_log2(g: np.ndarray) -> np.ndarray:
    """``floor(log2 g)`` of integers ``g >= 1`` (below 2^53), exactly."""
    return np.frexp(g.astype(np.float64))[1].astype(np.int64) - 1


def _mul_int(rt, node, args):
    if node.get("gate") is None or args[0].kind == "pixels":
        return None
    x, g = _gate_operands(rt, node, args)
    gate = g.data.astype(np.int64)
    if gate.size and int(gate.min()) < 0:
        rt.fail(node, "a gate integer is negative")
    shifted = x.data.astype(np.int64) << floor_log2(np.maximum(gate, 1))
    return Value(np.where(gate > 0, shifted, 0), x.unit * g.unit)


def _mul_prove(rt, node, args, shape):
    if node.get("gate") is None or args[0].kind == "pixels":
        return None
    x, g = _gate_operands(rt, node, args)
    if len(x.shape) != 3 or tuple(g.shape) != (x.shape[0], 1, 1) or tuple(shape) != tuple(x.shape):
        rt.fail(node, f"a gate is one integer per channel of an image: shapes {list(x.shape)} and {list(g.shape)}")
    if g.lo < 0 or g.hi >= 1 << MAX_SHIFT:
        rt.fail(node, f"gate integers [{g.lo}, {g.hi}] must be 0 to 2^{MAX_SHIFT} - 1")
    top = 1 << int(floor_log2(np.array([max(g.hi, 1)]))[0])
    ends = [x.lo, x.hi, x.lo * top, x.hi * top] + ([0] if g.lo == 0 else [])
    return Fact(shape, "grid", min(ends), max(ends), x.unit * g.unit)


def _mul_integerize(node, args, ctx) -> None:
    """A grid times a grid of zeros and powers of two (a squeeze-excite gate, per channel): the
    product shifts the first grid's integers."""
    if len(args) != 2 or any(a.kind != "grid" for a in args):
        return
    shapes = [ctx.graph.facts[i].shape for i in node["inputs"]]
    for g in (0, 1):
        x_shape, g_shape = shapes[1 - g], shapes[g]
        if args[g].powers_of_two and len(x_shape) == 3 and tuple(g_shape) == (x_shape[0], 1, 1):
            node["gate"] = g
            return


def _mul_c(node, args):
    if node.get("gate") is None:
        return None
    return CStep("gate_shift", {"gate": int(node["gate"])})


def _clamp_onnx(b, node, args):
    lo, hi = node["int_bounds"] if b.integer(node) else (node.get("min"), node.get("max"))
    return b.op("Clip", args[0], *("" if v is None else b.const(float(v)) for v in (lo, hi)))


def _binary_onnx(b, node, args):
    """Integers: ``(x << a) + (y << b)`` as products with powers of two (exact); else the float op."""
    if b.integer(node) and node.get("gate") is not None:  # a power of two times x: the shift, exactly
        return b.op("Mul", *args)
    if b.integer(node):
        s0, s1 = node["shifts"]
        return b.op("Add", b.op("Mul", args[0], b.const(2.0 ** s0)), b.op("Mul", args[1], b.const(2.0 ** s1)))
    if node.get("scalar") is not None:
        number = b.const(np.float32(node["scalar"]))
        args = [number, args[0]] if node.get("reverse") else [args[0], number]
    return b.op(node["op"].capitalize(), *args)


def _table_op(name: str, fn, doc: str | None = None, fields: tuple = (), **extra) -> OpDef:
    """A small-domain activation: PyTorch's kernel in float; with an output quantizer on a grid
    input, a table (:mod:`.tables`)."""
    return OpDef(name, doc or f"`F.{name}`; with `table`, a lookup of its integers", fields + tables.FIELDS,
                 float=extra.pop("float", None) or _unary(fn), check=tables.check, integer=tables.integer,
                 prove=tables.prove, integerize=tables.integerize, c=tables.c, quantizes_output=True,
                 float_reason=(f"{name} runs in float unless its input is on a grid of at most {tables.MAX_TABLE} "
                               "integers and its output is quantized", "put it on the grid (recipe residual_bits: "
                               "an activation module, not a function call), or " + NOT_YET), **extra)


def _binary(name: str, sign, doc: str, **extra) -> OpDef:
    fields = (Field("scalar", "number", "the number operand, when one operand is a number", low=-FLOAT32_MAX,
                    optional=True),
              Field("reverse", "flag", "the number comes first (`2 - x`)", optional=True))
    return OpDef(name, doc, fields + extra.pop("fields", ()),
                 inputs=lambda node: 1 if node.get("scalar") is not None else 2, float=_binary_float, sign=sign,
                 onnx=OnnxMap(name.capitalize(), _binary_onnx), **extra)


register(
    OpDef("relu", "`max(x, 0)`, on integers too", float=_unary(F.relu), integer=_relu_int, prove=_relu_prove,
          sign=positive, c=lambda node, args: CStep("unary", {"expr": "x > 0 ? x : 0"}, in_place=True), chain="fold",
          onnx=onnx_op("Relu")),
    OpDef("clamp", "`torch.clamp` (ReLU6 is `clamp` 0..6, Hardtanh and `F.relu6` too); with `int_bounds`, "
          "`clip(x, lo, hi)` on the integers of its input's grid",
          (Field("min", "number", "lower bound, or null", low=-1e30, optional=True),
           Field("max", "number", "upper bound, or null", low=-1e30, optional=True),
           Field("int_bounds", "int_pair", "integer clamp: min and max in units of the input's grid (null for a "
                 "bound off the grid that clips nothing the input can hold)", optional=True)),
          float=lambda node, args, tensor, batch: torch.clamp(args[0], node["min"], node["max"]), check=_clamp_check,
          integer=_clamp_int, prove=_clamp_prove, c=_clamp_c, integerize=_clamp_integerize, chain="fold",
          sign=lambda node, non_negative: node.get("min") is not None and node["min"] >= 0,
          onnx=OnnxMap("Clip", _clamp_onnx)),
    OpDef("quantize", "the identity, quantized onto a grid by `output_quantizer` (integers out): an activation's "
          "input on the grid", tables.FIELDS[:1], float=_unary(lambda x: x), check=tables.check, quantizes_output=True,
          sign=keeps_sign, chain="fold", onnx=onnx_op("Identity"),
          float_reason=("quantizes float values: it folds into thresholds only at the end of a shift layer's "
                        "chain of per-channel monotone ops", "let the activation follow a quantized layer (and its "
                        "BatchNorm) directly, or " + NOT_YET)),
    # x * relu6(x + 3) / 6: its least value is -0.375 (at -1.5); for x >= 0 a product of non-negative,
    # non-decreasing, correctly rounded float32 terms, so non-decreasing: it folds (``dip``).
    _table_op("hardswish", F.hardswish, chain="fold", dip=-0.38, onnx=onnx_op("HardSwish")),
    _table_op("hardsigmoid", F.hardsigmoid, sign=positive, chain="fold",
              onnx=onnx_op("HardSigmoid", lambda node: {"alpha": 1.0 / 6, "beta": 0.5})),
    _table_op("silu", F.silu,
              onnx=OnnxMap("Sigmoid, Mul", lambda b, node, args: b.op("Mul", args[0], b.op("Sigmoid", args[0])))),
    _table_op("sigmoid", torch.sigmoid, sign=positive, onnx=onnx_op("Sigmoid"), doc="`torch.sigmoid`"),
    _table_op("gelu", None, fields=(Field("approximate", "choice", "PyTorch's approximation", choices=("none", "tanh")),),
              float=lambda node, args, tensor, batch: F.gelu(args[0], approximate=node["approximate"]),
              onnx=onnx_op("Gelu", lambda node: {"approximate": node["approximate"]})),
    _binary("add", keeps_sign, "`+`; with `shifts: [a, b]`, `(x << a) + (y << b)` on integers: both inputs on "
            "power-of-two grids, aligned to the finer one",
            fields=(Field("shifts", "ints", "integer add: the left shift of each input", count=2, optional=True),),
            integer=_add_int, prove=_add_prove, c=_add_c, integerize=_add_integerize,
            float_reason=("adds values that are not both on power-of-two integer grids",
                          "quantize the residual stream (recipe residual_bits, as the deploy preset sets it), or "
                          + NOT_YET)),
    _binary("sub", lambda node, non_negative: False, "`-`"),
    _binary("mul", keeps_sign, "`*` (broadcast: the squeeze-excite gate `x * gate`); with `gate` (the index of the "
            "gate operand, one integer per channel), `x << floor(log2 g)` on integers, 0 where `g` is 0: `x * g` for "
            "gates of zeros and powers of two",
            fields=(Field("gate", "choice", "integer gate product: which input is the gate", choices=(0, 1),
                          optional=True),),
            integer=_mul_int, prove=_mul_prove, c=_mul_c, integerize=_mul_integerize,
            float_reason=("multiplies values that are not a grid and a per-channel gate of powers of two",
                          "put both on the grid (recipe residual_bits quantizes squeeze-excite gates to powers of two), "
                          "or " + NOT_YET)),
    _binary("div", keeps_sign, "`/`"),
)
