"""Data movement: ``identity``, ``flatten``, ``reshape``, ``expand``, ``permute``, ``index``, ``pad``, ``cat``.

Integers stay integers: ``identity`` and ``flatten`` move any integers (pixels too), the others
move integers on a grid, ``pad`` stays on the grid when it copies values or pads zeros, and
``cat`` with ``shifts`` joins grids a power of two apart, aligned to the finest.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import CodegenError
from .elementwise import align, aligned_unit
from ..format.values import Fact, Value
from .schema import FLOAT32_MAX, NOT_YET, CStep, Field, OnnxMap, OpDef, keeps_sign, onnx_op, register

PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}  # numpy's names
MOVES = ("reshape", "expand", "permute", "index")  # pure data movement: integers on a grid stay on it


def move(node: dict, x, batch: int):
    """A reshape, expand, permute or index of a tensor or an integer array (data movement only)."""
    op = node["op"]
    if op in ("reshape", "expand"):
        shape = [batch if v == -1 else v for v in node["shape"]]
        if op == "reshape":
            return x.reshape(shape)
        return x.expand(*shape) if isinstance(x, torch.Tensor) else np.broadcast_to(x, shape)
    if op == "permute":
        return x.permute(*node["dims"]) if isinstance(x, torch.Tensor) else x.transpose(node["dims"])
    return x[tuple(slice(*i) if isinstance(i, list) else Ellipsis if i == "..." else i for i in node["index"])]


def _same(x: Fact, shape) -> Fact:
    return Fact(shape, x.kind, x.lo, x.hi, x.unit)


def _any_int(rt, node, args):
    return args[0]


def _any_prove(rt, node, args, shape):
    return _same(args[0], shape)


def flattened(node: dict, x: np.ndarray) -> np.ndarray:
    """``torch.flatten`` of a numpy array."""
    dims = list(x.shape)
    start, end = node["start_dim"] % len(dims), node["end_dim"] % len(dims)
    return x.reshape(dims[:start] + [int(np.prod(dims[start:end + 1]))] + dims[end + 1:])


def _flatten_int(rt, node, args):
    x = args[0]
    return Value(flattened(node, x.data), x.unit, x.kind)


def _moves(node: dict, kind: str, rank: int) -> bool:
    """A grid moves anywhere; an integer LayerNorm's ``z`` (its readers' thresholds are per
    channel) only through a pick that keeps the last dimension (``x[:, 0]``; ``rank`` counts the
    batch)."""
    if kind == "grid":
        return True
    items = node.get("index") or []
    return kind == "normalized" and node["op"] == "index" and len(items) < rank \
        and not any(i is None or i == "..." for i in items)


def _move_int(rt, node, args):
    x = args[0]
    if not _moves(node, x.kind, x.data.ndim):
        return None
    return Value(np.ascontiguousarray(move(node, x.data, rt.batch)), x.unit, x.kind)


def _move_prove(rt, node, args, shape):
    x = args[0]
    return _same(x, shape) if _moves(node, x.kind, len(x.shape) + 1) else None


def _pads_integers(node: dict, x) -> bool:
    return x.kind == "grid" and (node["mode"] != "constant" or node["value"] == 0)


def _pad_int(rt, node, args):
    x = args[0]
    if not _pads_integers(node, x):
        return None
    return Value(padded(node, x.data), x.unit, x.kind)


def padded(node: dict, x: np.ndarray, fill: int = 0) -> np.ndarray:
    """``F.pad`` of a numpy array, ``fill`` where a constant pad puts its zeros."""
    p = node["pads"]
    widths = [(0, 0)] * (x.ndim - len(p) // 2) + [(p[i], p[i + 1]) for i in range(len(p) - 2, -1, -2)]
    mode = PAD_MODES[node["mode"]]
    return np.pad(x, widths, mode, **({"constant_values": fill} if mode == "constant" else {}))


def _pad_prove(rt, node, args, shape):
    x = args[0]
    if not _pads_integers(node, x):
        return None
    return Fact(shape, x.kind, min(x.lo, 0), max(x.hi, 0), x.unit) if node["mode"] == "constant" else _same(x, shape)


def _pad_float(node, args, tensor, batch):
    return F.pad(args[0], node["pads"], node["mode"], node["value"] if node["mode"] == "constant" else None)


def _pad_sign(node, non_negative):
    return not (node["mode"] == "constant" and node["value"] < 0) and keeps_sign(node, non_negative)


def _move_float(node, args, tensor, batch):
    return move(node, args[0], batch)


# C: a gather of the map each move defines on an array of element indices (-1: a padded zero).
def _flatten_c(node, args):
    return CStep("gather", {"move": lambda index: flattened(node, index)})


def _move_c(node, args):
    return CStep("gather", {"move": lambda index: move(node, index, 1)})


def _pad_c(node, args):
    return CStep("gather", {"move": lambda index: padded(node, index, -1)})


# ---------------------------------------------------------------------------------------------- ONNX
def _reshape_onnx(b, node, args):
    """Flatten and reshape: to the proven output shape, -1 where the batch goes."""
    return b.op("Reshape", args[0], b.ints(b.shape_of(node)))


def _expand_onnx(b, node, args):
    """To ``shape`` with the run's batch (read off the input) where it holds -1."""
    return b.op("Expand", args[0], b.with_batch(node["shape"]))


def _permute_onnx(b, node, args):
    rank = b.rank(node["inputs"][0])
    return b.op("Transpose", args[0], perm=[d % rank for d in node["dims"]])


def _index_onnx(b, node, args):
    """Items left to right: an integer is a ``Gather`` (the dimension goes), a slice a ``Slice``,
    null an ``Unsqueeze``, ``...`` skips the dimensions no item names."""
    x, items, axis = args[0], node["index"], 0
    skipped = b.rank(node["inputs"][0]) - sum(1 for i in items if i is not None and i != "...")
    for item in items:
        if item == "...":
            axis += skipped
        elif item is None:
            x = b.op("Unsqueeze", x, b.ints([axis]))
            axis += 1
        elif isinstance(item, list):
            start, stop, step = (list(item) + [None] * 3)[:3]
            x = b.op("Slice", x, b.ints([0 if start is None else start]), b.ints([2 ** 62 if stop is None else stop]),
                     b.ints([axis]), b.ints([1 if step is None else step]))
            axis += 1
        else:
            x = b.op("Gather", x, b.const(np.int64(item), np.int64), axis=axis)
    return x


def _pad_onnx(b, node, args):
    rank, p = b.rank(node["inputs"][0]), node["pads"]
    begin, end = [0] * rank, [0] * rank
    for i in range(len(p) // 2):
        begin[rank - 1 - i], end[rank - 1 - i] = p[2 * i], p[2 * i + 1]
    value = [b.const(np.float32(node["value"]))] if node["mode"] == "constant" else []
    return b.op("Pad", args[0], b.ints(begin + end), *value, mode=PAD_MODES[node["mode"]])  # ONNX's names are numpy's


_BATCH_SHAPE = Field("shape", "shape", "the output shape, -1 where the batch goes")

def _cat_int(rt, node, args):
    if node.get("shifts") is None or args[0].kind == "pixels":
        return None
    shifts = node["shifts"]  # checked at load: one shift 0..30 per input
    unit = aligned_unit(rt, node, args, shifts)
    return Value(np.concatenate([a.data.astype(np.int64) << k for a, k in zip(args, shifts)], node["dim"]), unit)


def _cat_prove(rt, node, args, shape):
    if node.get("shifts") is None or args[0].kind == "pixels":
        return None
    shifts = node["shifts"]
    unit = aligned_unit(rt, node, args, shifts)
    return Fact(shape, "grid", min(a.lo << k for a, k in zip(args, shifts)),
                max(a.hi << k for a, k in zip(args, shifts)), unit)


def _cat_integerize(node, args, ctx) -> None:
    shifts = align(args)
    if shifts is not None:
        node["shifts"] = shifts


def _cat_c(node, args):
    if node.get("shifts") is None:
        return None
    if node["dim"] % 4 != 1 or any(len(a.shape) != 3 for a in args) or len(args) > 26:
        raise CodegenError(f"node {node['name']!r} (cat): the C backend joins up to 26 images along channels only: "
                           "use backend='reference'")
    return CStep("concat", {"shifts": tuple(int(v) for v in node["shifts"])})


def _cat_onnx(b, node, args):
    if b.integer(node):
        args = [b.op("Mul", a, b.const(np.float32(2.0 ** k))) for a, k in zip(args, node["shifts"])]
    return b.op("Concat", *args, axis=node["dim"])


register(
    OpDef("identity", "its input (dropout and stochastic depth in eval, `contiguous`, `clone`)",
          float=lambda node, args, tensor, batch: args[0], integer=_any_int, prove=_any_prove, sign=keeps_sign,
          c=lambda node, args: CStep("alias"), chain="fold", onnx=onnx_op("Identity")),
    OpDef("flatten", "`torch.flatten`: data movement, on any integers",
          (Field("start_dim", "dim", "first dimension flattened"), Field("end_dim", "dim", "last dimension flattened")),
          float=lambda node, args, tensor, batch: torch.flatten(args[0], node["start_dim"], node["end_dim"]),
          integer=_flatten_int, prove=_any_prove, sign=keeps_sign, c=_flatten_c, chain="move",
          onnx=OnnxMap("Reshape", _reshape_onnx)),
    OpDef("reshape", "`reshape` / `view`", (_BATCH_SHAPE,), float=_move_float, integer=_move_int,
          prove=_move_prove, sign=keeps_sign, c=_move_c, onnx=OnnxMap("Reshape", _reshape_onnx)),
    OpDef("expand", "`expand`", (_BATCH_SHAPE,), float=_move_float, integer=_move_int, prove=_move_prove,
          sign=keeps_sign, c=_move_c, onnx=OnnxMap("Expand", _expand_onnx)),
    OpDef("permute", "`permute` / `transpose`", (Field("dims", "perm", "the permutation"),), float=_move_float,
          integer=_move_int, prove=_move_prove, sign=keeps_sign, c=_move_c, onnx=OnnxMap("Transpose", _permute_onnx)),
    OpDef("index", "`x[...]` and `unbind`",
          (Field("index", "index", "one item per indexed dimension: an integer, `[start, stop, step]` (null bounds "
                                   "allowed), null (a new axis) or `\"...\"`"),),
          float=_move_float, integer=_move_int, prove=_move_prove, sign=keeps_sign, c=_move_c,
          onnx=OnnxMap("Slice, Gather, Unsqueeze", _index_onnx)),
    OpDef("pad", "`F.pad`; on the integer stream when it copies values or pads zeros onto a grid (a convolution's "
          "`padding_mode`, timm's `Conv2dSame`)",
          (Field("pads", "pads", "widths, last dimension first, as `F.pad`"),
           Field("mode", "choice", "padding mode", choices=tuple(PAD_MODES)),
           Field("value", "number", "the constant padded", low=-FLOAT32_MAX)),
          float=_pad_float, integer=_pad_int, prove=_pad_prove, sign=_pad_sign, c=_pad_c, chain="move",
          onnx=OnnxMap("Pad", _pad_onnx)),
    OpDef("cat", "`torch.cat`; with `shifts`, of integers on power-of-two grids, each shifted onto the finest",
          (Field("dim", "dim", "the dimension joined, not the batch", low=1),
           Field("shifts", "shift_list", "integer cat: the left shift of each input", optional=True)), inputs=None,
          float=lambda node, args, tensor, batch: torch.cat(args, node["dim"]), sign=keeps_sign,
          integer=_cat_int, prove=_cat_prove, integerize=_cat_integerize, c=_cat_c, chain="move",
          onnx=OnnxMap("Concat", _cat_onnx),
          float_reason=("joins values that are not all on power-of-two integer grids",
                        "quantize what it joins (a quantized layer's output, the residual grid), or " + NOT_YET)),
)
