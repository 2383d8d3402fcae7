"""Pooling and reduction: ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``, ``mean``.

On integers, max pooling takes the largest integer of each window (padding is never selected);
an average pool marked ``integer`` is the *sum* of each window (a global sum for the adaptive
pool and for a ``mean`` over height and width), and its readers' input thresholds account for
the division.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import CodegenError, ExportError
from ..format.values import Fact, Value, constant_divisor, pair
from .schema import MAX_ELEMENTS, NOT_YET, CStep, Field, OnnxMap, OpDef, keeps_sign, register

_WINDOW = (Field("kernel_size", "ints", "window height and width", count=2, low=1),
           Field("stride", "ints", "window steps", count=2, low=1),
           Field("padding", "ints", "padding on each side", count=2))
_INTEGER = (Field("integer", "flag", "sum the window's integers (set by the exporter where every reader divides)",
                  optional=True),
            Field("input_shape", "ints", "integer pools: the input's (C, H, W)", count=3, low=1, optional=True))


def _needs_input_shape(rt, node) -> None:
    if node.get("integer"):
        rt.ints(node, node.get("input_shape"), "input_shape", 3, 1)


def _avg_check(rt, node) -> None:
    _needs_input_shape(rt, node)
    if node.get("integer") and not constant_divisor(node):
        rt.fail(node, "an integer pooling sum is an avg_pool2d whose windows all have kh x kw elements (no window past "
                      "the end, padding counted)")


def _max_check(rt, node) -> None:
    if node.get("integer"):
        rt.fail(node, "an integer pooling sum is an avg_pool2d whose windows all have kh x kw elements (no window past "
                      "the end, padding counted)")


def _max_int(rt, node, args):
    x = args[0]
    if x.kind == "pixels":
        return None
    # comparisons on int64: padding is the lowest int64, never selected
    out = F.max_pool2d(torch.from_numpy(x.data.astype(np.int64)), node["kernel_size"], node["stride"], node["padding"],
                       node["dilation"], node["ceil_mode"])
    return Value(out.numpy(), x.unit, x.kind)


def _max_prove(rt, node, args, shape):
    x = args[0]
    if x.kind == "pixels":
        return None
    _every_window_reads_the_input(rt, node, x.shape, shape)
    return Fact(shape, x.kind, x.lo, x.hi, x.unit)


def _every_window_reads_the_input(rt, node: dict, in_shape, out_shape) -> None:
    """An integer max pool takes the largest input in each window: every window must hold one (a
    window of padding only would have no value; PyTorch allows it when the dilation is large)."""
    for n, k, s, p, d, o in zip(in_shape[-2:], pair(node["kernel_size"]), pair(node["stride"] or node["kernel_size"]),
                                pair(node["padding"]), pair(node["dilation"]), out_shape[-2:]):
        start = np.arange(o, dtype=np.int64) * s - p
        first = np.where(start < 0, -(start // d), 0)  # the first tap at or after 0
        if not ((first < k) & (start + first * d < n)).all():
            rt.fail(node, "a pooling window lies entirely in the padding")


def _summed(rt, node, x) -> bool:
    """Whether this pool sums integers; refuses a sum of integers off a grid."""
    if x.kind == "pixels" or not node.get("integer"):
        return False
    if x.kind != "grid":
        rt.fail(node, "sums integers off a power-of-two grid")
    return True


def _avg_int(rt, node, args):
    x = args[0]
    if not _summed(rt, node, x):
        return None
    (kh, kw), (sh, sw), (ph, pw) = pair(node["kernel_size"]), pair(node["stride"]), pair(node["padding"])
    padded = np.pad(x.data.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = torch.from_numpy(padded).unfold(-2, kh, sh).unfold(-2, kw, sw)
    return Value(windows.sum(dim=(-2, -1)).numpy(), None, "sum")


def _global_int(rt, node, args):
    x = args[0]
    if not _summed(rt, node, x):
        return None
    return Value(x.data.astype(np.int64).sum(axis=(-2, -1), keepdims=True), None, "sum")


def _sum_input(rt, node, x) -> None:
    if list(node["input_shape"]) != list(x.shape):
        rt.fail(node, f"input_shape {node['input_shape']} is not its input's shape {list(x.shape)}")


def _avg_prove(rt, node, args, shape):
    x = args[0]
    if not _summed(rt, node, x):
        return None
    _sum_input(rt, node, x)
    (kh, kw), (ph, pw) = pair(node["kernel_size"]), pair(node["padding"])
    if x.shape[0] * (x.shape[1] + 2 * ph) * (x.shape[2] + 2 * pw) > MAX_ELEMENTS:
        rt.fail(node, f"its padded input exceeds {MAX_ELEMENTS} values per example")
    lo, hi = (min(x.lo, 0), max(x.hi, 0)) if ph or pw else (x.lo, x.hi)
    return Fact(shape, "sum", kh * kw * lo, kh * kw * hi)


def _global_prove(rt, node, args, shape):
    x = args[0]
    if not _summed(rt, node, x):
        return None
    _sum_input(rt, node, x)
    if list(shape[-2:]) != [1, 1]:
        rt.fail(node, "an integer adaptive average pool is a global sum (output_size 1)")
    count = x.shape[-2] * x.shape[-1]
    return Fact(shape, "sum", count * x.lo, count * x.hi)


def _sums_for(ctx, args, whole) -> bool:
    return args[0].kind == "grid" and whole and ctx.readers_divide()


def _avg_integerize(node, args, ctx) -> None:
    if _sums_for(ctx, args, constant_divisor(node)):
        node["integer"] = True  # a sum of kh x kw integers (zeros where padded); the readers divide


def _global_integerize(node, args, ctx) -> None:
    if _sums_for(ctx, args, node["output_size"] in (1, [1, 1], (1, 1))):
        node["integer"] = True  # the global sum; the readers divide


def _spatial(node: dict) -> bool:
    """A ``mean`` over exactly the height and width of an image, kept as 1 x 1 (squeeze-excite)."""
    return bool(node["keepdim"]) and sorted(d % 4 for d in node["dim"]) == [2, 3] and len(node["dim"]) == 2


def _mean_check(rt, node) -> None:
    _needs_input_shape(rt, node)
    if node.get("integer") and not _spatial(node):
        rt.fail(node, "an integer mean is a global sum over height and width (dim [2, 3], keepdim)")


def _mean_integerize(node, args, ctx) -> None:
    if len(ctx.graph.facts[node["inputs"][0]].shape) == 3 and _sums_for(ctx, args, _spatial(node)):
        node["integer"] = True  # the global sum; the readers divide


def _max_c(node, args):
    return CStep("maxpool", {"kernel": pair(node["kernel_size"]), "stride": pair(node["stride"] or node["kernel_size"]),
                             "padding": pair(node["padding"]), "dilation": pair(node["dilation"])})


def _avg_c(node, args):
    if not node.get("integer"):
        return None
    if any(pair(node["padding"])):
        raise CodegenError(f"node {node['name']!r} (avg_pool2d): an integer window sum over padding is not implemented "
                           "by the C backend: use backend='reference', or pool without padding")
    return CStep("window_sum", {"kernel": pair(node["kernel_size"]),
                                "stride": pair(node["stride"] or node["kernel_size"])})


# ---------------------------------------------------------------------------------------------- ONNX
def _window_attrs(node: dict) -> dict:
    (ph, pw) = pair(node["padding"])
    return {"kernel_shape": list(pair(node["kernel_size"])), "strides": list(pair(node["stride"])),
            "pads": [ph, pw, ph, pw], "ceil_mode": int(node["ceil_mode"])}


def _max_onnx(b, node, args):
    return b.op("MaxPool", args[0], dilations=list(pair(node["dilation"])), **_window_attrs(node))


def _avg_onnx(b, node, args):
    """The mean, or on integers the window sum: a depthwise convolution with ones (exact)."""
    if not b.integer(node):
        return b.op("AveragePool", args[0], count_include_pad=int(node["count_include_pad"]), **_window_attrs(node))
    attrs = _window_attrs(node)
    channels = node["input_shape"][0]
    ones = b.const(np.ones((channels, 1, *attrs["kernel_shape"]), np.float32))
    return b.op("Conv", args[0], ones, group=channels, strides=attrs["strides"], pads=attrs["pads"])


def _adaptive_onnx(b, node, args):
    """The global sum on integers; the mean over equal windows (the only adaptive pool ONNX has)."""
    if b.integer(node):
        return b.op("ReduceSum", args[0], b.ints([-2, -1]), keepdims=1)
    size = b.graph.facts[node["inputs"][0]].shape[-2:]
    out = pair(node["output_size"])
    if list(out) == [1, 1]:
        return b.op("GlobalAveragePool", args[0])
    if any(n % o for n, o in zip(size, out)):
        raise ExportError(f"node {node['name']!r} (adaptive_avg_pool2d): windows of unequal size ({list(size)} to "
                          f"{list(out)}) have no ONNX operator")
    kernel = [n // o for n, o in zip(size, out)]
    return b.op("AveragePool", args[0], kernel_shape=kernel, strides=kernel)


register(
    OpDef("max_pool2d", "the maximum over each window; on integers, padding is never selected",
          _WINDOW + (Field("dilation", "ints", "window dilation", count=2, low=1),
                     Field("ceil_mode", "flag", "windows may start past the end"),
                     Field("integer", "flag", "never set (a max pool is integer when its input is)", optional=True)),
          float=lambda node, args, tensor, batch: F.max_pool2d(args[0], node["kernel_size"], node["stride"],
                                                               node["padding"], node["dilation"], node["ceil_mode"]),
          check=_max_check, integer=_max_int, prove=_max_prove, sign=keeps_sign, c=_max_c, chain="move", onnx=OnnxMap("MaxPool", _max_onnx),
          float_reason=("max pooling runs on float values here: it is not between integers on one grid", NOT_YET)),
    OpDef("avg_pool2d", "the mean of each window; with `integer: true` the *sum* of each window (zeros where padded), "
          "only where every window divides by the same `kh x kw`",
          _WINDOW + (Field("ceil_mode", "flag", "windows may start past the end"),
                     Field("count_include_pad", "flag", "padding counts in the divisor")) + _INTEGER,
          float=lambda node, args, tensor, batch: F.avg_pool2d(args[0], node["kernel_size"], node["stride"],
                                                               node["padding"], node["ceil_mode"],
                                                               node["count_include_pad"]),
          check=_avg_check, integer=_avg_int, prove=_avg_prove, sign=keeps_sign, c=_avg_c,
          onnx=OnnxMap("AveragePool; on integers Conv with ones (a window sum)", _avg_onnx),
          integerize=_avg_integerize,
          float_reason=("an average over windows stays float unless every window is whole and it feeds only shift "
                        "layers", "pool over whole windows (no padding past the end) right before a quantized layer, "
                        "or " + NOT_YET)),
    OpDef("adaptive_avg_pool2d", "the mean over adaptive windows; with `integer: true` the global *sum* over "
          "`input_shape` (`output_size` 1x1)",
          (Field("output_size", "ints", "output height and width", count=2, low=1),) + _INTEGER,
          float=lambda node, args, tensor, batch: F.adaptive_avg_pool2d(args[0], node["output_size"]),
          check=_needs_input_shape, integer=_global_int, prove=_global_prove, sign=keeps_sign,
          c=lambda node, args: CStep("global_sum") if node.get("integer") else None, onnx=OnnxMap("GlobalAveragePool / AveragePool; on integers ReduceSum", _adaptive_onnx),
          integerize=_global_integerize,
          float_reason=("a global average pool is integer only when it feeds only quantized layers (through "
                        "flattens)", "let it feed the quantized head directly, or " + NOT_YET)),
    OpDef("mean", "`torch.mean`; with `integer: true` the global *sum* over height and width (`dim` [2, 3], "
          "`keepdim`) of `input_shape`",
          (Field("dim", "dims", "the dimensions averaged (never the batch)"),
           Field("keepdim", "flag", "keep them as size 1")) + _INTEGER,
          float=lambda node, args, tensor, batch: torch.mean(args[0], node["dim"], keepdim=node["keepdim"]),
          check=_mean_check, integer=_global_int, prove=_global_prove, sign=keeps_sign, integerize=_mean_integerize,
          c=lambda node, args: CStep("global_sum") if node.get("integer") else None,
          onnx=OnnxMap("ReduceMean; on integers ReduceSum", lambda b, node, args: b.op(
              "ReduceSum" if b.integer(node) else "ReduceMean", args[0], b.ints(node["dim"]),
              keepdims=int(node["keepdim"]))),
          float_reason=("a mean is integer only over height and width of grid integers, feeding only quantized "
                        "layers", "put its input on the grid (recipe residual_bits), or " + NOT_YET)),
)
