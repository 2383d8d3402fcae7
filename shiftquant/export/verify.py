"""The load-time proof of a bundle: every node's shape, kind and range, once, before any backend runs.

:class:`~.runtime.Runtime` first checks each manifest field's type and limits as it reads it. This
module then runs the whole graph abstractly, node by node, in the order the runtime executes it:

* **Shapes.** Each op runs on PyTorch *meta* tensors (shapes and dtypes, no data), so the proof
  uses PyTorch's own shape rules, the ones the reference kernels run with, at two batch sizes.
  Every extent is at least 1, every node holds at most :data:`MAX_ELEMENTS` values per example,
  and its batch is where ``batch_dim`` says. A shift layer's input matches its weights exactly
  (channels, features).
* **Kinds.** Whether the runtime computes a node in integers (``grid``: integers worth a
  power-of-two ``unit``; ``sum``: a global or window sum of grid integers; ``pixels``) or in float,
  decided as :meth:`.Runtime._int_op` decides it at run time.
* **Ranges.** Interval arithmetic from the pixels and the level integers through the weights,
  thresholds and shifts. A node's declared ``dtype`` must be its kind's, its declared ``range``
  must hold the proven one, and a shift layer fed by integers must declare an
  ``accumulator_bound`` at least the proven one.

A bundle that lies about any of these is refused here, with a :class:`~shiftquant.errors.BundleError`
naming the node, for every backend alike: the C backend sizes its buffers, loops and integer types
from facts that were proven, not from claims.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BundleError
from .ints import FLOAT
from .runtime import _MOVES, constant_divisor, float_kernel, pair

MAX_ELEMENTS = 1 << 24  # values per example of any one node (a 224 px ResNet-18 needs 802,816)
MAX_RANK = 8
MAX_SHIFT = 30  # bits an integer add may shift its inputs by
PROBE_BATCHES = (2, 3)  # the batch sizes the shapes are proven at


@dataclass(frozen=True)
class Fact:
    """What the proof knows of a node's output: its ``shape`` for one example (the batch dimension
    removed; a constant's whole shape), its ``kind`` (``float``, ``grid``, ``sum`` or ``pixels``),
    for integers the interval ``[lo, hi]`` every value lies in, and for a grid its ``unit``."""

    shape: tuple[int, ...]
    kind: str = "float"
    lo: int = 0
    hi: int = 0
    unit: float | None = None
    non_negative: bool = False  # float values: proven >= 0

    @property
    def is_int(self) -> bool:
        return self.kind != "float"

    @property
    def signless(self) -> bool:
        """Every value is >= 0 (as float values too: pixels are normalized, and may not be)."""
        return self.non_negative if self.kind == "float" else self.kind != "pixels" and self.lo >= 0

    def with_range(self, lo: int, hi: int, kind: str | None = None, unit: float | None = None) -> Fact:
        kind = kind or self.kind
        unit = unit if unit is not None else self.unit
        return Fact(self.shape, kind, int(lo), int(hi), unit if kind == "grid" else None)


def verify(rt, declared: bool = True) -> dict[str, Fact]:
    """The facts of every node of the runtime ``rt`` (whose fields ``Runtime._check`` has checked).
    ``declared``: prove kinds and ranges too, and hold the declared types, ranges and accumulator
    bounds to them; without, shapes only (the exporter's runtimes, built while it is still
    integerizing the graph)."""
    shapes = [_shapes(rt, batch) for batch in PROBE_BATCHES]
    facts: dict[str, Fact] = {}
    for node in rt.nodes:
        shape = _per_example(rt, node, [s[node["name"]] for s in shapes])
        if declared:
            facts[node["name"]] = _kind(rt, node, [facts[i] for i in node["inputs"]], shape)
            _check_declared(rt, node, facts[node["name"]])
        else:
            facts[node["name"]] = Fact(shape)
    return facts


# ---------------------------------------------------------------------------------------------- shapes
def _meta(shape, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _shapes(rt, batch: int) -> dict[str, tuple[int, ...]]:
    """Every node's output shape at ``batch``, by running the graph on meta tensors."""
    def tensor(key: str) -> torch.Tensor:
        t = rt._tensor(key)
        return _meta(t.shape, torch.from_numpy(t[:0].reshape(0)).dtype)

    values: dict[str, torch.Tensor] = {}
    for node in rt.nodes:
        args = [values[i] for i in node["inputs"]]
        try:
            if node["op"] == "input":
                out = _meta((batch, *node["shape"]))
            elif node["op"] in ("shift_conv2d", "shift_linear"):
                out = _shift_layer_shape(rt, node, args[0])
            else:
                out = float_kernel(node, args, tensor, batch)
        except BundleError:
            raise
        except Exception as exc:  # PyTorch's own shape errors: the shapes do not fit each other
            rt._fail(node, f"shapes do not fit ({type(exc).__name__}: {str(exc)[:200]})")
        if out.dim() > MAX_RANK or math.prod(out.shape) > MAX_ELEMENTS * max(PROBE_BATCHES):
            rt._fail(node, f"output shape {list(out.shape)} exceeds {MAX_RANK} dimensions or "
                           f"{MAX_ELEMENTS} values per example")
        values[node["name"]] = out.to(torch.float32)
    return {name: tuple(v.shape) for name, v in values.items()}


def _shift_layer_shape(rt, node: dict, x: torch.Tensor) -> torch.Tensor:
    shape = node["weight_shape"]
    if node["op"] == "shift_linear":
        if x.dim() < 2 or x.shape[-1] != shape[1]:
            rt._fail(node, f"input {list(x.shape)} does not have the {shape[1]} features its weights read")
        return _meta((*x.shape[:-1], shape[0]))
    if x.dim() != 4:
        rt._fail(node, f"input {list(x.shape)} is not a batch of (C, H, W) images")
    out = F.conv2d(x, _meta(shape), None, node["stride"], node["padding"], node["dilation"], node["groups"])
    # The reference convolves through the padded input and its receptive fields (im2col): bounded too.
    (ph, pw), (kh, kw) = pair(node["padding"]), shape[2:]
    padded = x.shape[1] * (x.shape[2] + 2 * ph) * (x.shape[3] + 2 * pw)
    fields = x.shape[1] * kh * kw * out.shape[2] * out.shape[3]
    if max(padded, fields) > MAX_ELEMENTS:
        rt._fail(node, f"its padded input ({padded}) or receptive fields ({fields}) exceed {MAX_ELEMENTS} values per "
                       "example")
    return out


def _per_example(rt, node: dict, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """One example's shape, from the shapes at the probe batches: the batch where ``batch_dim``
    says, every other extent the same at every batch and at least 1."""
    dim = node.get("batch_dim", 0)
    per = []
    for shape, batch in zip(shapes, PROBE_BATCHES):
        if dim is not None:
            if len(shape) <= dim or shape[dim] != batch:
                rt._fail(node, f"its output {list(shape)} lost the batch dimension ({batch}, dim {dim})")
            shape = shape[:dim] + shape[dim + 1:]
        per.append(shape)
    if any(p != per[0] for p in per):
        rt._fail(node, f"its output shape depends on the batch beyond dimension {dim}: {per}")
    if any(n < 1 for n in per[0]):
        rt._fail(node, f"its output {list(per[0])} has an empty dimension")
    return per[0]


# ---------------------------------------------------------------------------------------------- kinds and ranges
def _kind(rt, node: dict, args: list[Fact], shape: tuple[int, ...]) -> Fact:
    """The node's kind and range, decided as the runtime decides them."""
    op = node["op"]
    if op == "input":
        px = node.get("pixels")
        return Fact(shape, "pixels", 0, int(px["scale"])) if px else Fact(shape)
    if op in ("shift_conv2d", "shift_linear"):
        return _shift_layer(rt, node, args[0], shape)
    out = _integer_op(rt, node, args, shape)
    if out is not None:
        return out
    if any(a.kind == "sum" for a in args):
        rt._fail(node, "reads a global integer sum as float values: a sum can only feed a shift layer with "
                       "input thresholds")
    spec = node.get("output_quantizer") if op == "batch_norm" else None
    if spec:
        levels = rt.level_ints(spec)
        return Fact(shape, "grid", int(levels.min()), int(levels.max()), rt.input_unit(spec))
    return Fact(shape, non_negative=non_negative_output(node, [a.signless for a in args]))


# Float ops whose output is >= 0 whatever their input, and those whose output is >= 0 when every
# input is (with a scalar >= 0; a constant pad only with a value >= 0).
_POSITIVE = {"relu", "hardsigmoid", "sigmoid", "softmax"}
_KEEPS_SIGN = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "flatten", "identity", "add", "mean", "cat", "mul",
               "reshape", "permute", "index", "expand", "div", "pad"}


def non_negative_output(node: dict, inputs_non_negative: list[bool]) -> bool:
    """Whether a float op's output is >= 0, given which of its inputs are (the exporter's proof
    of non-negative shift layer inputs, and this one's)."""
    op = node["op"]
    if op in _POSITIVE or op == "clamp" and node.get("min") is not None and node["min"] >= 0:
        return True
    if op == "pad" and node["mode"] == "constant" and node["value"] < 0:
        return False
    return op in _KEEPS_SIGN and (node.get("scalar") or 0.0) >= 0 and all(inputs_non_negative) \
        and bool(inputs_non_negative)


def _integer_op(rt, node: dict, args: list[Fact], shape) -> Fact | None:
    """Mirror of :meth:`.Runtime._int_op`: the fact of ``node`` on integers, None when it runs in float."""
    op = node["op"]
    if not args or not all(a.is_int for a in args):
        return None
    x = args[0]
    here = Fact(shape, x.kind, x.lo, x.hi, x.unit)
    if op == "identity" or op == "flatten" or op in _MOVES and x.kind == "grid":
        return here
    if op == "pad" and x.kind == "grid" and (node["mode"] != "constant" or node["value"] == 0):
        return here.with_range(min(x.lo, 0), max(x.hi, 0)) if node["mode"] == "constant" else here
    if x.kind == "pixels":
        return None
    if op == "relu":
        return here.with_range(max(x.lo, 0), max(x.hi, 0))
    if op == "max_pool2d":
        _every_window_reads_the_input(rt, node, x.shape, shape)
        return here
    if op == "add" and node.get("shifts") is not None:
        if len(args) != 2 or any(a.kind != "grid" for a in args):
            rt._fail(node, "adds integers off a power-of-two grid")
        s0, s1 = rt._ints(node, node["shifts"], "shifts", 2)
        if max(s0, s1) > MAX_SHIFT:
            rt._fail(node, f"shifts must be 0 to {MAX_SHIFT}")
        unit = min(args[0].unit, args[1].unit)
        if any(a.unit != unit * 2.0 ** k for a, k in zip(args, (s0, s1))):
            rt._fail(node, "shifts do not align its inputs' grids")
        return here.with_range((args[0].lo << s0) + (args[1].lo << s1), (args[0].hi << s0) + (args[1].hi << s1),
                               "grid", unit)
    if op in ("adaptive_avg_pool2d", "avg_pool2d") and node.get("integer"):
        if x.kind != "grid":
            rt._fail(node, "sums integers off a power-of-two grid")
        if list(node["input_shape"]) != list(x.shape):
            rt._fail(node, f"input_shape {node['input_shape']} is not its input's shape {list(x.shape)}")
        if op == "adaptive_avg_pool2d":
            if list(shape[-2:]) != [1, 1]:
                rt._fail(node, "an integer adaptive average pool is a global sum (output_size 1)")
            count, lo, hi = x.shape[-2] * x.shape[-1], x.lo, x.hi
        else:
            if not constant_divisor(node):
                rt._fail(node, "an integer window sum needs every window whole")
            kh, kw = rt._ints(node, node["kernel_size"], "kernel_size", 2, 1)
            ph, pw = rt._ints(node, node["padding"], "padding", 2)
            if x.shape[0] * (x.shape[1] + 2 * ph) * (x.shape[2] + 2 * pw) > MAX_ELEMENTS:
                rt._fail(node, f"its padded input exceeds {MAX_ELEMENTS} values per example")
            padded = ph or pw
            count, lo, hi = kh * kw, min(x.lo, 0) if padded else x.lo, max(x.hi, 0) if padded else x.hi
        return here.with_range(count * lo, count * hi, "sum")
    return None


def _every_window_reads_the_input(rt, node: dict, in_shape, out_shape) -> None:
    """An integer max pool takes the largest input in each window: every window must hold one (a
    window of padding only would have no value; PyTorch allows it when the dilation is large)."""
    for n, k, s, p, d, o in zip(in_shape[-2:], pair(node["kernel_size"]), pair(node["stride"] or node["kernel_size"]),
                                pair(node["padding"]), pair(node["dilation"]), out_shape[-2:]):
        start = np.arange(o, dtype=np.int64) * s - p
        first = np.where(start < 0, -(start // d), 0)  # the first tap at or after 0
        if not ((first < k) & (start + first * d < n)).all():
            rt._fail(node, "a pooling window lies entirely in the padding")


def _shift_layer(rt, node: dict, x: Fact, shape) -> Fact:
    """A shift layer's output, from the interval of its input integers through its weights."""
    levels = rt.level_ints(node["input_quantizer"])
    if node.get("input_codes"):
        if x.kind != "grid" or x.unit != rt.input_unit(node["input_quantizer"]):
            rt._fail(node, "expects integers on its input grid from a requantizing layer")
        lo, hi = x.lo, x.hi
    elif node.get("input_thresholds") is not None:
        if not x.is_int:
            rt._fail(node, "has input thresholds but receives float values")
        thr = rt._thresholds[node["input_thresholds"]]
        lo, hi = int(levels[(thr <= x.lo).sum(0).min()]), int(levels[(thr <= x.hi).sum(0).max()])
    else:  # quantized in float: any level, or with inputs >= 0 and a scale that keeps the sign, any from 0's
        if x.kind == "sum":
            rt._fail(node, "reads a global integer sum without input thresholds")
        lo, hi = int(levels.min()), int(levels.max())
        if x.signless and node["input_quantizer"]["policy"] == "learned_pot":
            lo = int(rt.quantize_input(torch.zeros(1), node["input_quantizer"])[0])
    if node["op"] == "shift_conv2d" and any(rt._ints(node, node["padding"], "padding", 2)):
        lo, hi = min(lo, 0), max(hi, 0)  # zero padding
    acc_lo, acc_hi = accumulator_range(rt._weights[node["name"]], lo, hi)
    bound = max(max(map(abs, acc_lo)), max(map(abs, acc_hi)))
    if bound > node["accumulator_bound"]:
        rt._fail(node, f"accumulator_bound {node['accumulator_bound']} is below the proven bound {bound}")
    if node.get("requant"):
        r = node["requant"]
        thr = rt._thresholds[r["thresholds"]]
        negate = rt._tensor(r["direction"]).reshape(-1) < 0
        low = [-h if n else l for l, h, n in zip(acc_lo, acc_hi, negate)]
        high = [-l if n else h for l, h, n in zip(acc_lo, acc_hi, negate)]
        first = min(int((thr[:, c] <= v).sum()) for c, v in enumerate(low))
        last = max(int((thr[:, c] <= v).sum()) for c, v in enumerate(high))
        return Fact(shape, "grid", r["levels"][first], r["levels"][last], r["unit"])
    if node.get("int_output"):
        o = node["int_output"]
        channels = len(acc_lo)
        bias = [0] * channels if o.get("bias") is None else [int(b) for b in rt._tensor(o["bias"]).reshape(-1)]
        shift = [int(s) for s in rt._tensor(o["shift"]).reshape(-1)]
        ends = [(v + b) << s for lo_c, hi_c, b, s in zip(acc_lo, acc_hi, bias, shift) for v in (lo_c, hi_c)]
        return Fact(shape, "grid", min(ends), max(ends), o["unit"])
    return Fact(shape)


def accumulator_range(w: np.ndarray, lo: int, hi: int) -> tuple[list[int], list[int]]:
    """Per output channel, the least and greatest ``sum_k w[c, k] * a_k`` over inputs ``a_k`` in
    ``[lo, hi]`` (Python integers: no overflow)."""
    w = w.reshape(w.shape[0], -1)
    pos = [int(v) for v in np.where(w > 0, w, 0).sum(1)]
    neg = [int(v) for v in np.where(w < 0, -w, 0).sum(1)]
    return [p * lo - n * hi for p, n in zip(pos, neg)], [p * hi - n * lo for p, n in zip(pos, neg)]


def _check_declared(rt, node: dict, fact: Fact) -> None:
    dtype = node["dtype"]
    if not fact.is_int:
        if dtype != FLOAT:
            rt._fail(node, f"computes float values but declares {dtype}")
        return
    if dtype == FLOAT:
        rt._fail(node, "computes integers but declares float32")
    lo, hi = node["range"]
    if fact.lo < lo or fact.hi > hi:
        rt._fail(node, f"declares the range [{lo}, {hi}], but its values reach [{fact.lo}, {fact.hi}]")
