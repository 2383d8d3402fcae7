"""The shift layers, ``shift_conv2d`` and ``shift_linear``: integers in, shift-add accumulate, integers out.

A layer takes its input integers (handed on: ``input_codes``; from thresholds on integers:
``input_thresholds``; or by its input quantizer on float values, a float op), accumulates
``sum_k w[o, k] * a[k]`` with every weight ``0`` or ``±2^t`` (a shift), and hands on integers by
thresholds (``requant``), integer logits on one power-of-two grid (``int_output``), or the float
``acc x grid + bias`` (a float op). ``docs/bundle.md`` describes every field.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import BundleError
from ..format.bundle import unpack_codes
from ..format.ints import INT_TYPES, holds
from ..format.values import THROUGH_THRESHOLDS, Fact, Value, pair
from .conv import GEOMETRY, onnx_conv, weight_macs
from .quantizers import check_act_quantizer, check_quantizer, input_unit, level_ints, quantize_input
from .schema import MAX_ELEMENTS, Field, OnnxMap, OpDef, register
from .shift_kernels import accumulator_range, level_index, shift_add, shift_add_conv

MAX_WEIGHTS = 1 << 28  # weights of one shift layer
MAX_INT_SHIFT = 30  # an integer output's left shift
_STORED_INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16)


# ---------------------------------------------------------------------------------------------- load
def _decode_weights(rt, node: dict) -> None:
    """Check every field of a shift layer and decode its weights to integers (``rt.weights``)."""
    spec = node["weight_quantizer"]
    conv = node["op"] == "shift_conv2d"
    shape = rt.ints(node, node.get("weight_shape"), "weight_shape", 4 if conv else 2, 1, MAX_ELEMENTS + 1)
    check_quantizer(rt, node, spec)
    if conv and shape[0] % node["groups"]:
        rt.fail(node, "groups must divide the output channels")
    check_act_quantizer(rt, node, node["input_quantizer"])
    for k in ("weight_offset", "bias"):
        if node.get(k) is not None:
            rt.tensor(node[k], (shape[0],))
    count = math.prod(shape)
    if count > MAX_WEIGHTS:
        rt.fail(node, f"weight_shape {shape} holds more than {MAX_WEIGHTS} weights")
    try:
        codes = unpack_codes(rt.tensor(node["weight_codes"]), int(spec["code_bits"]), count)
    except BundleError as exc:  # its message names neither the bundle nor the node
        rt.fail(node, f"weight_codes: {exc}")
    ints = np.asarray(spec["levels"], dtype=np.float64) / float(spec["resolution"])
    if codes.size and int(codes.max()) >= len(ints):
        raise BundleError(f"{rt.source}: {node['name']}: weight code {int(codes.max())} has no level")
    if np.abs(ints).max() > 1 << 30:
        rt.fail(node, "weight levels must be at most 2^30 resolutions")
    w_int = np.round(ints[codes]).astype(np.int64).reshape(shape)
    nonzero = w_int[w_int != 0]
    if nonzero.size and not np.all((np.abs(nonzero) & (np.abs(nonzero) - 1)) == 0):
        raise BundleError(f"{rt.source}: {node['name']}: weights are not powers of two")
    rt.tensor(node["weight_scale"], (shape[0],))
    bound = node.get("accumulator_bound")
    if not isinstance(bound, int) or isinstance(bound, bool) or bound < 0:
        rt.fail(node, "accumulator_bound must be a non-negative integer")
    if node.get("accumulator_dtype") not in INT_TYPES \
            or not holds(node["accumulator_dtype"], -node["accumulator_bound"], node["accumulator_bound"]):
        rt.fail(node, "accumulator_dtype must be an integer type that holds the accumulator bound")
    _check_stages(rt, node, shape[0], shape[1] * (node["groups"] if conv else 1))
    rt.weights[node["name"]] = w_int


def _thresholds(rt, node: dict, key, columns: tuple[int, ...], what: str) -> np.ndarray:
    """A stored threshold table (a first row, then non-negative differences), decoded into ``rt.thresholds``."""
    stored = rt.tensor(key)
    if stored.dtype not in _STORED_INTS or stored.ndim != 2 or stored.shape[0] < 1 \
            or stored.shape[1] not in columns or (stored[1:] < 0).any():
        rt.fail(node, f"{what} must be an integer table (levels - 1, channels): a first row, then "
                      "non-negative differences")
    thr = np.cumsum(stored.astype(np.int64), axis=0)
    if not holds("int32", int(thr.min()), int(thr.max())):
        rt.fail(node, f"{what} must fit int32")
    rt.thresholds[key] = thr
    return thr


def _check_stages(rt, node: dict, channels: int, in_channels: int) -> None:
    """The input stage (``input_codes`` / ``input_thresholds``) and the output stage (``requant`` / ``int_output``)."""
    if not isinstance(node.get("input_codes", False), bool):
        rt.fail(node, "input_codes must be true or false")
    if node.get("input_thresholds") is not None:
        thr = _thresholds(rt, node, node["input_thresholds"], (1, in_channels), "input_thresholds")
        if node.get("input_codes") or thr.shape[0] != len(node["input_quantizer"]["quantizer"]["levels"]) - 1:
            rt.fail(node, "input_thresholds must have one row per input level but the lowest, without input_codes")
    if node.get("int_output") is not None:
        _check_int_output(rt, node, channels)
    r = node.get("requant")
    if r is None:
        return
    if node.get("int_output") is not None:
        rt.fail(node, "requant and int_output exclude each other")
    if not isinstance(r, dict):
        rt.fail(node, "requant must be a table of thresholds, directions, levels and a unit")
    thr = _thresholds(rt, node, r["thresholds"], (channels,), "requant thresholds")
    direction = rt.tensor(r["direction"], (channels,))
    levels = r.get("levels")
    if direction.dtype not in _STORED_INTS or not np.isin(direction, (1, -1)).all():
        rt.fail(node, "requant directions must be int64, +1 or -1")
    if not isinstance(levels, list) or len(levels) != thr.shape[0] + 1 \
            or not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1 << 24 for v in levels) \
            or levels != sorted(levels):
        rt.fail(node, "requant levels must be sorted integers below 2^24, one more than the thresholds")
    rt.number(node, r.get("unit"), "requant unit", 1e-30)


def _check_int_output(rt, node: dict, channels: int) -> None:
    o = node["int_output"]
    if not isinstance(o, dict):
        rt.fail(node, "int_output must be a table of a bias, shifts and a unit")
    for key in ("bias", "shift"):
        if o.get(key) is None and key == "bias":
            continue
        t = rt.tensor(o.get(key), (channels,))
        if t.dtype not in _STORED_INTS or (key == "shift" and ((t < 0).any() or (t > MAX_INT_SHIFT).any())):
            rt.fail(node, f"int_output {key} must be integers" + (f" in [0, {MAX_INT_SHIFT}]" if key == "shift" else ""))
    unit = rt.number(node, o.get("unit"), "int_output unit", 1e-30)
    if np.frexp(unit)[0] != 0.5:
        rt.fail(node, "int_output unit must be a power of two")


# ---------------------------------------------------------------------------------------------- run
def _channel_dim(node: dict) -> int:
    return 1 if node["op"] == "shift_conv2d" else -1


def dequantize(rt, node: dict, acc: np.ndarray, offset_sums: np.ndarray | None = None) -> torch.Tensor:
    """A shift layer's float output from its accumulator: ``acc x grid + bias``, per channel.

    With a weight offset (``w = code * scale + offset``) the offset multiplies ``offset_sums``,
    the sum of the input integers each output sees."""
    channel_shape = (1, -1, 1, 1) if node["op"] == "shift_conv2d" else (1,) * (acc.ndim - 1) + (-1,)
    scale, offset, a_unit, bias = dequantize_terms(rt, node, channel_shape)
    out = acc.astype(np.float64) * scale
    if offset_sums is not None:
        out = out + offset * offset_sums.astype(np.float64) * a_unit
    if bias is not None:
        out = out + bias
    return torch.from_numpy(out.astype(np.float32))


def dequantize_terms(rt, node: dict, channel_shape) -> tuple[np.ndarray, np.ndarray | None, float, np.ndarray | None]:
    """:func:`dequantize`'s float64 constants, per channel in ``channel_shape``: the accumulator's
    worth ``weight grid x input grid``, the weight offset (None without), the input grid, the bias
    (None without)."""
    a_unit = input_unit(node["input_quantizer"])
    w_unit = rt.tensor(node["weight_scale"]).astype(np.float64) * node["weight_quantizer"]["resolution"]
    per_channel = lambda key: rt.tensor(node[key]).astype(np.float64).reshape(channel_shape) if node.get(key) else None
    return (w_unit * a_unit).reshape(channel_shape), per_channel("weight_offset"), a_unit, per_channel("bias")


def _window_sums(node: dict, a_int: np.ndarray, w_shape) -> np.ndarray:
    """Per output channel, the sum of the input integers in its receptive field."""
    if node["op"] == "shift_linear":
        return a_int.sum(-1, keepdims=True)
    groups = node["groups"]
    ones = np.ones((groups,) + tuple(w_shape[1:]), dtype=np.int64)
    sums = shift_add_conv(a_int, ones, node["stride"], node["padding"], node["dilation"], groups)
    return np.repeat(sums, w_shape[0] // groups, axis=1)


def _layer_input(rt, node: dict, x: Value) -> np.ndarray:
    """The integers a shift layer multiplies: handed on (``input_codes``), from thresholds on an
    integer input (``input_thresholds``), or its input quantizer on float values."""
    if node.get("input_codes"):
        if x.kind != "grid" or x.unit != input_unit(node["input_quantizer"]):
            rt.fail(node, "expects integers on its input grid from a requantizing layer")
        return x.data.astype(np.int64)
    if node.get("input_thresholds") is not None:
        if not x.is_int:
            rt.fail(node, "has input thresholds but receives float values")
        idx = level_index(x.data, rt.thresholds[node["input_thresholds"]], None, _channel_dim(node))
        return level_ints(node["input_quantizer"])[idx]
    return rt.in_float(node, lambda: quantize_input(rt, rt.to_float(x), node["input_quantizer"]))


def _run(rt, node: dict, args: list[Value]) -> Value:
    a_int = _layer_input(rt, node, args[0])
    w_int = rt.weights[node["name"]]
    if node["op"] == "shift_conv2d":
        acc = shift_add_conv(a_int, w_int, node["stride"], node["padding"], node["dilation"], node["groups"])
    else:
        lead = a_int.shape[:-1]
        acc = shift_add(a_int.reshape(-1, a_int.shape[-1], 1), w_int)[..., 0].reshape(*lead, -1)
    bound = node["accumulator_bound"]
    if acc.size and int(np.abs(acc).max()) > bound:
        rt.fail(node, f"accumulator {int(np.abs(acc).max())} beyond its proven bound {bound}")
    if node.get("requant"):
        r = node["requant"]
        idx = level_index(acc, rt.thresholds[r["thresholds"]], rt.tensor(r["direction"]), _channel_dim(node))
        return Value(np.asarray(r["levels"], dtype=np.int64)[idx], r["unit"])
    if node.get("int_output"):
        o = node["int_output"]
        shape = [1] * acc.ndim
        shape[_channel_dim(node)] = -1
        bias = 0 if o.get("bias") is None else rt.tensor(o["bias"]).astype(np.int64).reshape(shape)
        return Value((acc + bias) << rt.tensor(o["shift"]).astype(np.int64).reshape(shape), o["unit"])
    offset_sums = _window_sums(node, a_int, w_int.shape) if node.get("weight_offset") else None
    return Value(rt.in_float(node, dequantize, rt, node, acc, offset_sums))


# ---------------------------------------------------------------------------------------------- proof
def _meta(shape) -> torch.Tensor:
    return torch.empty(tuple(shape), device="meta")


def _shape(rt, node: dict, args: list, batch: int) -> torch.Tensor:
    x, shape = args[0], node["weight_shape"]
    if node["op"] == "shift_linear":
        if x.dim() < 2 or x.shape[-1] != shape[1]:
            rt.fail(node, f"input {list(x.shape)} does not have the {shape[1]} features its weights read")
        return _meta((*x.shape[:-1], shape[0]))
    if x.dim() != 4:
        rt.fail(node, f"input {list(x.shape)} is not a batch of (C, H, W) images")
    out = F.conv2d(x, _meta(shape), None, node["stride"], node["padding"], node["dilation"], node["groups"])
    # The reference convolves through the padded input and its receptive fields (im2col): bounded too.
    (ph, pw), (kh, kw) = pair(node["padding"]), shape[2:]
    padded = x.shape[1] * (x.shape[2] + 2 * ph) * (x.shape[3] + 2 * pw)
    fields = x.shape[1] * kh * kw * out.shape[2] * out.shape[3]
    if max(padded, fields) > MAX_ELEMENTS:
        rt.fail(node, f"its padded input ({padded}) or receptive fields ({fields}) exceed {MAX_ELEMENTS} values per "
                      "example")
    return out


def _input_interval(rt, node: dict, x: Fact) -> tuple[int, int]:
    """The interval of the integers the layer multiplies."""
    levels = level_ints(node["input_quantizer"])
    if node.get("input_codes"):
        if x.kind != "grid" or x.unit != input_unit(node["input_quantizer"]):
            rt.fail(node, "expects integers on its input grid from a requantizing layer")
        return x.lo, x.hi
    if node.get("input_thresholds") is not None:
        if not x.is_int:
            rt.fail(node, "has input thresholds but receives float values")
        thr = rt.thresholds[node["input_thresholds"]]
        return int(levels[(thr <= x.lo).sum(0).min()]), int(levels[(thr <= x.hi).sum(0).max()])
    # quantized in float: any level, or with inputs >= 0 and a scale that keeps the sign, any from 0's
    if x.kind in THROUGH_THRESHOLDS:
        rt.fail(node, "reads a global integer sum or an integer LayerNorm without input thresholds")
    lo, hi = int(levels.min()), int(levels.max())
    if x.signless and node["input_quantizer"]["policy"] == "learned_pot":
        lo = int(quantize_input(rt, torch.zeros(1), node["input_quantizer"])[0])
    return lo, hi


def _prove(rt, node: dict, args: list[Fact], shape) -> Fact:
    """A shift layer's output, from the interval of its input integers through its weights."""
    lo, hi = _input_interval(rt, node, args[0])
    if node["op"] == "shift_conv2d" and any(rt.ints(node, node["padding"], "padding", 2)):
        lo, hi = min(lo, 0), max(hi, 0)  # zero padding
    acc_lo, acc_hi = accumulator_range(rt.weights[node["name"]], lo, hi)
    bound = max(max(map(abs, acc_lo)), max(map(abs, acc_hi)))
    if bound > node["accumulator_bound"]:
        rt.fail(node, f"accumulator_bound {node['accumulator_bound']} is below the proven bound {bound}")
    if node.get("requant"):
        r = node["requant"]
        thr = rt.thresholds[r["thresholds"]]
        negate = rt.tensor(r["direction"]).reshape(-1) < 0
        low = [-h if n else l for l, h, n in zip(acc_lo, acc_hi, negate)]
        high = [-l if n else h for l, h, n in zip(acc_lo, acc_hi, negate)]
        first = min(int((thr[:, c] <= v).sum()) for c, v in enumerate(low))
        last = max(int((thr[:, c] <= v).sum()) for c, v in enumerate(high))
        return Fact(shape, "grid", r["levels"][first], r["levels"][last], r["unit"])
    if node.get("int_output"):
        o = node["int_output"]
        bias = [0] * len(acc_lo) if o.get("bias") is None else [int(b) for b in rt.tensor(o["bias"]).reshape(-1)]
        shift = [int(s) for s in rt.tensor(o["shift"]).reshape(-1)]
        ends = [(v + b) << s for lo_c, hi_c, b, s in zip(acc_lo, acc_hi, bias, shift) for v in (lo_c, hi_c)]
        return Fact(shape, "grid", min(ends), max(ends), o["unit"])
    return Fact(shape)


# ---------------------------------------------------------------------------------------------- ONNX
def _onnx(b, node: dict, args: list[str]) -> str:
    """The runtime's three stages in ONNX: input integers, the product with the integer weights
    (a ``Conv`` or ``MatMul``, exact below 2^24), and integers or float values out."""
    conv, source = node["op"] == "shift_conv2d", node["inputs"][0]
    rank = b.rank(source)
    channel = 1 if conv else rank - 1
    if node.get("input_codes"):
        a = args[0]
    elif node.get("input_thresholds") is not None:
        a = b.levels(args[0], rank, b.graph.thresholds[node["input_thresholds"]], channel,
                     level_ints(node["input_quantizer"]))
    else:
        a = b.quantize(b.float_of(source), rank, node["input_quantizer"])
    w = b.graph.weights[node["name"]].astype(np.float32)
    acc = onnx_conv(b, a, node, b.shift_weights(w)) if conv else b.op("MatMul", a, b.shift_weights(w.T))
    if node.get("requant"):
        r = node["requant"]
        return b.levels(acc, rank, b.graph.thresholds[r["thresholds"]], channel, r["levels"], b.tensor(r["direction"]))
    per_channel = b.channel_shape(rank, channel)
    if node.get("int_output"):
        o = node["int_output"]
        if o.get("bias") is not None:
            acc = b.op("Add", acc, b.const(b.tensor(o["bias"]).reshape(per_channel)))
        return b.op("Mul", acc, b.const(np.exp2(b.tensor(o["shift"]).astype(np.float64)).reshape(per_channel)))
    return _onnx_dequantize(b, node, a, acc, w, per_channel)


def _onnx_dequantize(b, node: dict, a: str, acc: str, w: np.ndarray, per_channel: list[int]) -> str:
    """:func:`dequantize` in float64, as the runtime computes it (the same operations in the same
    order: the same float32 result)."""
    scale, offset, a_unit, bias = dequantize_terms(b.graph, node, per_channel)
    as_double = lambda v: b.op("Cast", v, to=11)
    out = b.op("Mul", as_double(acc), b.const(scale, np.float64))
    if offset is not None:
        sums = onnx_conv(b, a, node, np.ones_like(w)) if node["op"] == "shift_conv2d" else \
            b.op("ReduceSum", a, b.ints([-1]), keepdims=1)
        out = b.op("Add", out, b.op("Mul", b.op("Mul", b.const(offset, np.float64), as_double(sums)),
                                    b.const(a_unit, np.float64)))
    if bias is not None:
        out = b.op("Add", out, b.const(bias, np.float64))
    return b.op("Cast", out, to=1)


# ---------------------------------------------------------------------------------------------- definition
_LAYER = (
    Field("weight_codes", "tensor", "uint8 tensor of bit-packed codes, `code_bits` each, row-major"),
    Field("weight_quantizer", "quantizer", "the weight grid; a code indexes its `levels`"),
    Field("weight_scale", "tensor", "float32 per output channel"),
    Field("weight_offset", "tensor", "float32 per output channel (`weight_keep_mean`)", optional=True),
    Field("bias", "tensor", "float32 per output channel", optional=True),
    Field("input_quantizer", "act_quantizer", "the input grid: its level ints are the integers multiplied"),
    Field("input_codes", "flag", "the input already holds this layer's level ints", optional=True),
    Field("input_thresholds", "table", "(L - 1, K) thresholds from the input integers to level ints", optional=True),
    Field("accumulator_bound", "bound", "proven worst case of |accumulator|"),
    Field("accumulator_dtype", "choice", "the accumulator's type", choices=tuple(INT_TYPES)),
    Field("requant", "requant", "`{thresholds, direction, levels, unit}`: integers handed on", optional=True),
    Field("int_output", "int_output", "`{bias, shift, unit}`: integer logits on one grid", optional=True),
)


def _shift_macs(node: dict, shapes: dict, tensors) -> tuple[str, int]:
    return "shift_add", weight_macs(node, shapes, node["weight_shape"])


register(
    OpDef("shift_conv2d", "input integers -> shift-add convolution -> output integers",
          (Field("weight_shape", "ints", "(O, I / groups, kh, kw)", count=4, low=1, high=MAX_ELEMENTS + 1),) + _LAYER + GEOMETRY, check=_decode_weights, run=_run, shape=_shape, prove=_prove, c="shift_layer",
          onnx=OnnxMap("thresholds (GreaterOrEqual, ReduceSum, Gather), Conv, thresholds", _onnx), macs=_shift_macs),
    OpDef("shift_linear", "input integers -> shift-add matrix product -> output integers",
          (Field("weight_shape", "ints", "(O, I)", count=2, low=1, high=MAX_ELEMENTS + 1),) + _LAYER,
          check=_decode_weights, run=_run, shape=_shape, prove=_prove, c="shift_layer",
          onnx=OnnxMap("thresholds (GreaterOrEqual, ReduceSum, Gather), MatMul, thresholds", _onnx),
          macs=_shift_macs),
)
