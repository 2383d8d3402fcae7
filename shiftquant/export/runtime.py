"""The reference runtime: executes a bundle on numpy arrays; the oracle the other backends match.

Integer nodes run in integers only: a shift layer maps its input integers (pixels, the codes a
previous layer handed on, the residual stream, a global sum) to its input levels by comparisons
against thresholds, multiplies them by its weights ``±2^t`` with left shifts, sums them into an
accumulator, and hands on the next integers by comparisons again (``requant``) or outputs integer
logits on one power-of-two grid (``int_output``). Residual adds align by shifts; ReLU, max
pooling, the global sum and flatten move integers. Every integer a node computes is checked
against the type and range the bundle declares for it (``docs/bundle.md``) and stored at that
width.

Everything float goes through one choke point, :meth:`Runtime._float`, which records the node
(``observed_float_ops``) and refuses float in a node the bundle does not list in ``float_ops``:
a bundle that says ``integer_only`` runs with float arithmetic refused. What is float (the input
quantizer on float inputs, the dequantization ``acc x grid + bias``, BatchNorm, pooling other than
the global sum, adds off the grid, layers kept float) runs in float32 with PyTorch's own kernels,
so that, under ``deploy_exact``, the runtime's logits equal the PyTorch model's bit for bit.
"""
from __future__ import annotations

import math
import operator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BundleError
from ..quant import functional as QF
from .bundle import read_bundle, unpack_codes
from .ints import FLOAT, INT_TYPES, holds
from .pixels import PixelInput, pixel_dtype, pixels_to_float

MAX_NAME = 256  # characters of a node name
MAX_CODE_BITS = 16  # bits of a packed code (docs/bundle.md)
MAX_SHIFT_BITS, MAX_UNIFORM_BITS = 8, 16  # an activation quantizer's bits
MAX_WEIGHTS = 1 << 28  # weights of one shift layer

_CHUNK = 16  # examples per block of the shift-add convolution (bounds its temporaries)


def patches(a: np.ndarray, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> np.ndarray:
    """The receptive fields of an integer NCHW tensor, ``(N, C * kh * kw, Ho * Wo)`` in the order
    of ``torch.nn.functional.unfold``, zero-padded, and ``(Ho, Wo)``: integer indexing only."""
    n, c = a.shape[:2]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    padded = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    ho, wo = win.shape[2:4]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, ho * wo), (ho, wo)


def shift_add_conv(a: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                   groups: int = 1) -> np.ndarray:
    """Integer convolution of ``a`` (integers, NCHW) with weights ``w`` whose entries are 0 or ``±2^t``,
    computed with left shifts and additions only. Returns the int64 accumulator (N, Cout, Ho, Wo)."""
    n = a.shape[0]
    cout, cin_g, kh, kw = w.shape
    p, (ho, wo) = patches(a.astype(np.int64), (kh, kw), stride, padding, dilation)
    p = p.reshape(n, groups, cin_g * kh * kw, ho * wo)
    cout_g = cout // groups
    acc = np.zeros((n, cout, ho * wo), dtype=np.int64)
    for g in range(groups):
        wg = w[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1)
        acc[:, g * cout_g:(g + 1) * cout_g] = _shift_add(p[:, g], wg)
    return acc.reshape(n, cout, ho, wo)


def _shift_add(p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_k w[c, k] * p[:, k, :]`` for ``w`` in ``{0, ±2^t}``: shifts and additions."""
    n, _, length = p.shape
    p = p.astype(np.int64)
    out = np.zeros((n, w.shape[0], length), dtype=np.int64)
    nonzero = w != 0
    shifts = np.zeros_like(w)
    shifts[nonzero] = _log2_pow2(np.abs(w[nonzero]))
    for t in np.unique(shifts[nonzero]):
        shifted = p << int(t)
        for sign in (1, -1):
            rows, cols = np.nonzero(nonzero & (shifts == t) & (np.sign(w) == sign))
            if rows.size == 0:
                continue
            channels, starts = np.unique(rows, return_index=True)
            for lo in range(0, n, _CHUNK):
                sums = np.add.reduceat(shifted[lo:lo + _CHUNK, cols, :], starts, axis=1)
                if sign > 0:
                    out[lo:lo + _CHUNK, channels] += sums
                else:
                    out[lo:lo + _CHUNK, channels] -= sums
    return out


def _log2_pow2(v: np.ndarray) -> np.ndarray:
    """The exponent of positive powers of two, by counting shifts (integers only)."""
    v, e = v.astype(np.int64), np.zeros(v.shape, dtype=np.int64)
    while (v > 1).any():
        more = v > 1
        v, e = np.where(more, v >> 1, v), e + more
    return e


def constant_divisor(node: dict) -> bool:
    """Whether an ``avg_pool2d`` divides every window's sum by ``kh x kw``: no window hangs over
    the end (ceil_mode adds none on this input), and padding, if any, is counted."""
    k, s, p = pair(node["kernel_size"]), pair(node["stride"] or node["kernel_size"]), pair(node["padding"])
    sizes = node["input_shape"][1:]
    whole = all((n + 2 * pi - ki) % si == 0 for n, ki, si, pi in zip(sizes, k, s, p))
    return (whole or not node["ceil_mode"]) and (not any(p) or node["count_include_pad"])


def valid_name(name) -> bool:
    """A node name: 1 to ``MAX_NAME`` printable characters (no control or terminal escapes)."""
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME and name.isprintable()


def pair(v) -> tuple[int, int]:
    """A size given as one integer or two, as two."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def level_index(x: np.ndarray, thr: np.ndarray, direction: np.ndarray | None, channel_dim: int) -> np.ndarray:
    """Requantization: ``sum_k [d_c * x >= t_kc]``, a level index, by comparisons and additions.
    ``thr`` is ``(L - 1, K)``, ``K`` = 1 or the size of ``x``'s ``channel_dim``; ``direction``
    (``(K,)`` of ±1) None for +1 (thresholds from :mod:`shiftquant.export.requant`)."""
    x = x.astype(np.int64)
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    if direction is not None:
        x = np.where(direction.astype(np.int64).reshape(shape) > 0, x, -x)
    idx = np.zeros(x.shape, dtype=np.int64)
    for row in thr.astype(np.int64):
        idx += x >= row.reshape(shape)
    return idx


class Runtime:
    """A loaded bundle. ``run(x)`` takes and returns numpy arrays; ``run_int(x)`` returns integer
    logits and the power of two they are worth.

    ``strict`` (the default): float computations are allowed only in the nodes the bundle lists in
    ``float_ops``. The exporter builds a non-strict runtime, which allows and records them all.
    """

    def __init__(self, manifest: dict, tensors: dict[str, np.ndarray], source: str = "bundle", strict: bool = True):
        self.manifest, self.tensors, self.source, self.strict = manifest, tensors, source, strict
        self.nodes = manifest.get("nodes") if isinstance(manifest, dict) else None
        listed = manifest.get("float_ops") if isinstance(manifest, dict) else None
        self.float_ops = list(listed) if isinstance(listed, list) else []
        self.observed_float_ops: list[str] = []  # nodes that computed in float, in the order they did
        self._weights = {}
        self._thresholds: dict[str, np.ndarray] = {}  # decoded (cumulative) threshold tables
        self._batch = 1  # the batch of the run in progress (reshape and expand hold -1 for it)
        self._check()

    # ------------------------------------------------------------------ validation
    def _tensor(self, key, shape=None) -> np.ndarray:
        if key not in self.tensors:
            raise BundleError(f"{self.source}: the manifest names tensor {key!r}, which the bundle lacks")
        t = self.tensors[key]
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise BundleError(f"{self.source}: tensor {key!r} has shape {t.shape}, expected {tuple(shape)}")
        return t

    def _check(self) -> None:
        """Every reference resolves, every field has its type and range, every tensor its shape,
        every shift layer's codes decode: all before any run."""
        try:
            seen = set()
            if not isinstance(self.nodes, list) or not isinstance(self.manifest.get("outputs"), list):
                raise BundleError(f"{self.source}: manifest lacks its node or output list")
            inputs = [n for n in self.nodes if isinstance(n, dict) and n.get("op") == "input"]
            if len(inputs) != 1:
                raise BundleError(f"{self.source}: a bundle has exactly one input node, this one {len(inputs)}")
            self._pixels = inputs[0].get("pixels")
            for node in self.nodes:
                if not valid_name(node.get("name")) or node["name"] in seen:
                    raise BundleError(f"{self.source}: a node has a missing, repeated or malformed name (1 to "
                                      f"{MAX_NAME} printable characters): {str(node.get('name'))[:80]!r}")
                if not isinstance(node.get("inputs"), list):
                    self._fail(node, "inputs must be a list of node names")
                if node.get("module") is not None and not valid_name(node["module"]):
                    self._fail(node, f"module must be 1 to {MAX_NAME} printable characters")
                for i in node["inputs"]:
                    if i not in seen:
                        raise BundleError(f"{self.source}: node {node['name']!r} reads {i!r} before it is computed")
                if node["op"] in ("shift_conv2d", "shift_linear"):
                    self._weights[node["name"]] = self._decode_weights(node)
                elif node["op"] not in _OPS:
                    raise BundleError(f"{self.source}: unknown op {node['op']!r}")
                else:
                    self._check_float_op(node)
                self._check_type(node)
                seen.add(node["name"])
            if not isinstance(self.manifest.get("exact", False), bool):
                raise BundleError(f"{self.source}: exact must be true or false")
            for o in self.manifest["outputs"]:
                if o not in seen:
                    raise BundleError(f"{self.source}: output {o!r} is not computed")
            if self.strict:
                self._check_float_ops(seen)
            from .verify import verify  # verify reads the runtime's kernels and checks: imported here

            self.facts = verify(self, declared=self.strict)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            raise BundleError(f"{self.source}: malformed manifest ({type(exc).__name__}: {str(exc)[:200]})") from None

    def _check_float_ops(self, names: set) -> None:
        listed, claim = self.manifest.get("float_ops"), self.manifest.get("integer_only")
        if not isinstance(listed, list) or not all(isinstance(n, str) and n in names for n in listed) \
                or len(set(listed)) != len(listed):
            raise BundleError(f"{self.source}: float_ops must list distinct node names")
        if claim is not (not listed):
            raise BundleError(f"{self.source}: integer_only={claim!r} contradicts float_ops {listed}")

    def _check_type(self, node: dict) -> None:
        """``dtype`` is float32 or a declared integer type holding ``range``, ``[lo, hi]``."""
        dtype = node.get("dtype")
        if dtype == FLOAT:
            return
        if dtype not in INT_TYPES:
            self._fail(node, f"dtype must be {FLOAT} or one of {', '.join(INT_TYPES)}")
        r = node.get("range")
        if not isinstance(r, list) or len(r) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in r) \
                or not holds(dtype, *r):
            self._fail(node, f"range must be two integers [lo, hi] that {dtype} holds")

    def _fail(self, node: dict, what: str):
        op = node.get("op")
        raise BundleError(f"{self.source}: node {node.get('name')!r} ({op if op in _OPS else repr(op)}): {what}")

    def _ints(self, node: dict, value, what: str, n: int = 1, low: int = 0) -> list[int]:
        """``value`` as ``n`` integers in ``[low, 2^16)`` (one integer stands for ``n`` equal ones)."""
        v = [value] * n if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(v, list) or len(v) != n or not all(isinstance(i, int) and not isinstance(i, bool)
                                                             and low <= i < 1 << 16 for i in v):
            self._fail(node, f"{what} must be {n} integers >= {low}")
        return v

    def _number(self, node: dict, value, what: str, low: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < low:
            self._fail(node, f"{what} must be a finite number >= {low}")
        return float(value)

    def _check_quantizer(self, node: dict, q: dict) -> None:
        if not isinstance(q, dict) or q.get("kind") not in ("shift", "uniform") \
                or q.get("rounding") not in QF.ROUNDINGS or not isinstance(q.get("zero"), bool) \
                or not isinstance(q.get("signed"), bool) or not isinstance(q.get("full_codes", False), bool):
            self._fail(node, "malformed quantizer")
        if q.get("full_codes") and (q["signed"] or not q["zero"]):
            self._fail(node, "full_codes is a layout of unsigned quantizers with a zero level")
        self._ints(node, q.get("bits"), "quantizer bits")
        if self._ints(node, q.get("code_bits"), "code_bits", low=1)[0] > MAX_CODE_BITS:
            self._fail(node, f"code_bits must be 1 to {MAX_CODE_BITS}")
        levels = q.get("levels")
        if not isinstance(levels, list) or not levels or len(levels) > 1 << q["code_bits"] \
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) for v in levels) \
                or levels != sorted(levels):
            self._fail(node, "quantizer levels must be a sorted list of finite numbers that fits its code")
        res = self._number(node, q.get("resolution"), "resolution", 1e-30)
        if any(abs(v / res - round(v / res)) > 0 for v in levels):
            self._fail(node, "quantizer levels must be multiples of its resolution")

    def _check_produced_levels(self, node: dict, iq: dict) -> None:
        """An activation quantizer computes its codes (from ``kind``, ``bits``, ...): every code it can
        produce, the extremes included, must be one of the declared ``levels``, which the proof reads."""
        q = iq["quantizer"]
        top = MAX_SHIFT_BITS if q["kind"] == "shift" else MAX_UNIFORM_BITS
        if not 0 <= q["bits"] <= top:
            self._fail(node, f"{q['kind']} input quantizer bits must be 0 to {top}")
        fn = QF.shift_quantize if q["kind"] == "shift" else QF.uniform_quantize
        probe = torch.tensor([-3.0e38, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0e38, *q["levels"]], dtype=torch.float32)
        try:
            hard = fn(probe, int(q["bits"]), q["rounding"], q["zero"], q["signed"], bool(q.get("full_codes", False)))
        except Exception as exc:  # a layout the quantizer itself refuses
            self._fail(node, f"input quantizer cannot run ({type(exc).__name__}: {str(exc)[:100]})")
        produced = set(torch.round(hard.double() / q["resolution"]).long().tolist())
        if not produced <= set(self.level_ints(iq).tolist()):
            self._fail(node, "input quantizer levels are not the levels it produces")

    def _check_act_quantizer(self, node: dict, iq: dict) -> None:
        self._check_quantizer(node, iq.get("quantizer"))
        self._check_produced_levels(node, iq)
        if iq.get("channel_dim") not in (1, -1):
            self._fail(node, "input channel_dim must be 1 or -1")
        if iq.get("policy") == "learned_pot":
            if isinstance(iq.get("log2_scale"), bool) or not isinstance(iq.get("log2_scale"), int) \
                    or not -100 <= iq["log2_scale"] <= 100:
                self._fail(node, "log2_scale must be an integer in [-100, 100]")
        elif iq.get("policy") == "standardize":
            mean = self._tensor(iq["running_mean"])
            self._tensor(iq["running_var"], mean.shape)
            self._number(node, iq.get("clip_sigma"), "clip_sigma", 1e-30)
            self._number(node, iq.get("norm_eps"), "norm_eps")
        else:
            self._fail(node, "unknown input policy")

    def _check_float_op(self, node: dict) -> None:
        op = node["op"]
        if op == "batch_norm":
            mean = self._tensor(node["mean"])
            if mean.ndim != 1:
                self._fail(node, "mean must be 1-D")
            for k in ("var", "weight", "bias"):
                if node.get(k) is not None:
                    self._tensor(node[k], mean.shape)
            self._number(node, node.get("eps"), "eps")
            if node.get("output_quantizer") is not None:
                if node["output_quantizer"].get("policy") != "learned_pot":
                    self._fail(node, "an output quantizer must have a learned power-of-two scale")
                self._check_act_quantizer(node, node["output_quantizer"])
        elif op in ("max_pool2d", "avg_pool2d"):
            self._ints(node, node.get("kernel_size"), "kernel_size", 2, 1)
            self._ints(node, node.get("stride"), "stride", 2, 1)
            padding = self._ints(node, node.get("padding"), "padding", 2)
            if op == "max_pool2d":
                self._ints(node, node.get("dilation"), "dilation", 2, 1)
            if not isinstance(node.get("integer", False), bool):
                self._fail(node, "integer must be true or false")
            if node.get("integer"):
                self._ints(node, node.get("input_shape"), "input_shape", 3, 1)
                if op != "avg_pool2d" or not constant_divisor(node):
                    self._fail(node, "an integer pooling sum is an avg_pool2d whose windows all have kh x kw "
                                     "elements (no window past the end, padding counted)")
        elif op == "adaptive_avg_pool2d":
            self._ints(node, node.get("output_size"), "output_size", 2, 1)
            if not isinstance(node.get("integer", False), bool):
                self._fail(node, "integer must be true or false")
            if node.get("integer"):
                self._ints(node, node.get("input_shape"), "input_shape", 3, 1)
        elif op == "flatten":
            for k in ("start_dim", "end_dim"):
                if isinstance(node.get(k), bool) or not isinstance(node.get(k), int) or not -8 <= node[k] < 8:
                    self._fail(node, f"{k} must be a small integer")
        elif op in ("conv2d", "linear"):
            w = self._tensor(node["weight"])
            if w.ndim != (4 if op == "conv2d" else 2):
                self._fail(node, "weight has the wrong rank")
            if node.get("bias") is not None:
                self._tensor(node["bias"], (w.shape[0],))
            if op == "conv2d":
                self._check_conv_geometry(node)
        elif op == "input":
            self._ints(node, node.get("shape"), "shape", len(node.get("shape") or [0]), 1)
            self._check_pixels(node, node.get("pixels"))
        elif op == "clamp":
            bounds = [node.get("min"), node.get("max")]
            if bounds == [None, None]:
                self._fail(node, "clamp needs a min or a max")
            for v in bounds:
                if v is not None:
                    self._number(node, v, "clamp bound", -1e30)
            if None not in bounds and bounds[0] > bounds[1]:
                self._fail(node, "clamp min must not exceed max")
        elif op == "gelu":
            if node.get("approximate") not in ("none", "tanh"):
                self._fail(node, "approximate must be 'none' or 'tanh'")
        elif op == "mean":
            dims = node.get("dim")
            if not isinstance(dims, list) or not dims or not all(
                    isinstance(d, int) and not isinstance(d, bool) and 1 <= d % 8 and -8 <= d < 8 for d in dims):
                self._fail(node, "dim must be a non-empty list of dimensions other than the batch")
            if not isinstance(node.get("keepdim"), bool):
                self._fail(node, "keepdim must be true or false")
        elif op == "cat":
            if isinstance(node.get("dim"), bool) or not isinstance(node.get("dim"), int) or not -8 <= node["dim"] < 8 \
                    or node["dim"] in (0, -8):
                self._fail(node, "dim must be a small integer other than the batch dimension")
        elif op in ("reshape", "expand"):
            shape = node.get("shape")
            if not isinstance(shape, list) or not 1 <= len(shape) <= 8 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and (v >= 0 or v == -1) for v in shape) \
                    or shape.count(-1) > 1:
                self._fail(node, "shape must be up to 8 sizes, -1 where the batch goes")
        elif op == "pad":
            pads = node.get("pads")
            if not isinstance(pads, list) or not pads or len(pads) % 2 or len(pads) > 6 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 16 for v in pads):
                self._fail(node, "pads must be 2, 4 or 6 non-negative integers (last dimension first)")
            if node.get("mode") not in _PAD_MODES:
                self._fail(node, f"mode must be one of {', '.join(_PAD_MODES)}")
            self._number(node, node.get("value"), "value", -float(np.finfo(np.float32).max))
        elif op == "permute":
            dims = node.get("dims")
            if not isinstance(dims, list) or sorted(dims) != list(range(len(dims))) or len(dims) > 8:
                self._fail(node, "dims must be a permutation of 0..rank-1")
        elif op == "index":
            self._check_index(node, node.get("index"))
        elif op == "layer_norm":
            shape = self._ints(node, node.get("normalized_shape"), "normalized_shape",
                               len(node.get("normalized_shape") or [0]), 1)
            for k in ("weight", "bias"):
                if node.get(k) is not None:
                    self._tensor(node[k], shape)
            self._number(node, node.get("eps"), "eps")
        elif op == "softmax":
            if isinstance(node.get("dim"), bool) or not isinstance(node.get("dim"), int) or not -8 <= node["dim"] < 8:
                self._fail(node, "dim must be a small integer")
        elif op == "attention":
            if node.get("scale") is not None:
                self._number(node, node["scale"], "scale", 1e-30)
        elif op == "constant":
            self._tensor(node.get("value"))
            if node.get("batch_dim") is not None:
                self._fail(node, "a constant has no batch dimension")
        if op in _BINARY and node.get("scalar") is not None:
            self._number(node, node["scalar"], "scalar", -float(np.finfo(np.float32).max))
            if not isinstance(node.get("reverse", False), bool):
                self._fail(node, "reverse must be true or false")
        bd = node.get("batch_dim", 0)
        if bd is not None and (isinstance(bd, bool) or not isinstance(bd, int) or not 0 <= bd < 8):
            self._fail(node, "batch_dim must be a dimension 0..7 or null")
        count = len(node["inputs"])
        if op in _BINARY:
            expected = 1 if node.get("scalar") is not None else 2
        else:
            expected = _INPUTS.get(op, 1)
        if op == "cat" and count < 1 or op != "cat" and count != expected:
            self._fail(node, "wrong number of inputs")

    def _check_index(self, node: dict, spec) -> None:
        """An index: integers, ``[start, stop, step]`` slices, null (new axis), at most one "..."."""
        small = lambda v: v is None or isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1 << 31
        if not isinstance(spec, list) or not 1 <= len(spec) <= 8 or spec.count("...") > 1 or not all(
                item is None or item == "..." or (small(item) and item is not None)
                or isinstance(item, list) and len(item) == 3 and all(small(v) for v in item) and item[2] != 0
                for item in spec):
            self._fail(node, "index must be integers, [start, stop, step] slices, null or '...'")

    def _check_pixels(self, node: dict, px) -> None:
        if px is None:
            return
        if not isinstance(px, dict) or not isinstance(px.get("mean"), list) or not isinstance(px.get("std"), list) \
                or len(px["mean"]) != len(px["std"]) or len(px["mean"]) not in (1, node["shape"][0]):
            self._fail(node, "pixels must have a mean and a std per input channel")
        self._ints(node, px.get("scale"), "pixels scale", low=1)
        for v in px["mean"]:
            self._number(node, v, "pixels mean", -1e30)
        if not all(self._number(node, v, "pixels std", 0.0) > 0 for v in px["std"]):
            self._fail(node, "pixels std must be positive")

    def _check_conv_geometry(self, node: dict) -> None:
        self._ints(node, node.get("stride"), "stride", 2, 1)
        self._ints(node, node.get("padding"), "padding", 2)
        self._ints(node, node.get("dilation"), "dilation", 2, 1)
        self._ints(node, node.get("groups"), "groups", low=1)

    def _decode_weights(self, node: dict) -> np.ndarray:
        spec = node["weight_quantizer"]
        conv = node["op"] == "shift_conv2d"
        shape = self._ints(node, node.get("weight_shape"), "weight_shape", 4 if conv else 2, 1)
        self._check_quantizer(node, spec)
        if conv:
            self._check_conv_geometry(node)
            if shape[0] % node["groups"]:
                self._fail(node, "groups must divide the output channels")
        self._check_act_quantizer(node, node["input_quantizer"])
        for k in ("weight_offset", "bias"):
            if node.get(k) is not None:
                self._tensor(node[k], (shape[0],))
        if len(node["inputs"]) != 1:
            self._fail(node, "wrong number of inputs")
        count = math.prod(shape)
        if count > MAX_WEIGHTS:
            self._fail(node, f"weight_shape {shape} holds more than {MAX_WEIGHTS} weights")
        codes = unpack_codes(self._tensor(node["weight_codes"]), int(spec["code_bits"]), count)
        ints = np.asarray(spec["levels"], dtype=np.float64) / float(spec["resolution"])
        if codes.size and int(codes.max()) >= len(ints):
            raise BundleError(f"{self.source}: {node['name']}: weight code {int(codes.max())} has no level")
        if np.abs(ints).max() > 1 << 30:
            self._fail(node, "weight levels must be at most 2^30 resolutions")
        w_int = np.round(ints[codes]).astype(np.int64).reshape(shape)
        nonzero = w_int[w_int != 0]
        if nonzero.size and not np.all((np.abs(nonzero) & (np.abs(nonzero) - 1)) == 0):
            raise BundleError(f"{self.source}: {node['name']}: weights are not powers of two")
        self._tensor(node["weight_scale"], (shape[0],))
        bound = node.get("accumulator_bound")
        if not isinstance(bound, int) or isinstance(bound, bool) or bound < 0:
            self._fail(node, "accumulator_bound must be a non-negative integer")
        if node.get("accumulator_dtype") not in INT_TYPES \
                or not holds(node["accumulator_dtype"], -node["accumulator_bound"], node["accumulator_bound"]):
            self._fail(node, "accumulator_dtype must be an integer type that holds the accumulator bound")
        in_channels = shape[1] * (node["groups"] if conv else 1)
        self._check_requant(node, shape[0], in_channels)
        return w_int

    def _check_thresholds(self, node: dict, key, columns: tuple[int, ...], what: str) -> np.ndarray:
        stored = self._tensor(key)
        if stored.dtype not in _STORED_INTS or stored.ndim != 2 or stored.shape[0] < 1 \
                or stored.shape[1] not in columns or (stored[1:] < 0).any():
            self._fail(node, f"{what} must be an integer table (levels - 1, channels): a first row, then "
                             "non-negative differences")
        thr = np.cumsum(stored.astype(np.int64), axis=0)
        if not holds("int32", int(thr.min()), int(thr.max())):
            self._fail(node, f"{what} must fit int32")
        self._thresholds[key] = thr
        return thr

    def _check_requant(self, node: dict, channels: int, in_channels: int) -> None:
        if not isinstance(node.get("input_codes", False), bool):
            self._fail(node, "input_codes must be true or false")
        if node.get("input_thresholds") is not None:
            thr = self._check_thresholds(node, node["input_thresholds"], (1, in_channels), "input_thresholds")
            if node.get("input_codes") or thr.shape[0] != len(node["input_quantizer"]["quantizer"]["levels"]) - 1:
                self._fail(node, "input_thresholds must have one row per input level but the lowest, "
                                 "without input_codes")
        if node.get("int_output") is not None:
            self._check_int_output(node, channels)
        r = node.get("requant")
        if r is None:
            return
        if node.get("int_output") is not None:
            self._fail(node, "requant and int_output exclude each other")
        if not isinstance(r, dict):
            self._fail(node, "requant must be a table of thresholds, directions, levels and a unit")
        thr = self._check_thresholds(node, r["thresholds"], (channels,), "requant thresholds")
        direction = self._tensor(r["direction"], (channels,))
        levels = r.get("levels")
        if direction.dtype not in _STORED_INTS or not np.isin(direction, (1, -1)).all():
            self._fail(node, "requant directions must be int64, +1 or -1")
        if not isinstance(levels, list) or len(levels) != thr.shape[0] + 1 \
                or not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1 << 24 for v in levels) \
                or levels != sorted(levels):
            self._fail(node, "requant levels must be sorted integers below 2^24, one more than the thresholds")
        self._number(node, r.get("unit"), "requant unit", 1e-30)


    def _check_int_output(self, node: dict, channels: int) -> None:
        o = node["int_output"]
        if not isinstance(o, dict):
            self._fail(node, "int_output must be a table of a bias, shifts and a unit")
        for key in ("bias", "shift"):
            if o.get(key) is None and key == "bias":
                continue
            t = self._tensor(o.get(key), (channels,))
            if t.dtype not in _STORED_INTS or (key == "shift" and ((t < 0).any() or (t > 30).any())):
                self._fail(node, f"int_output {key} must be integers" + (" in [0, 30]" if key == "shift" else ""))
        unit = self._number(node, o.get("unit"), "int_output unit", 1e-30)
        if np.frexp(unit)[0] != 0.5:
            self._fail(node, "int_output unit must be a power of two")

    # ------------------------------------------------------------------ kernels (no bookkeeping)
    # The float kernels below are also the exporter's: its threshold searches evaluate exactly the
    # float chains the thresholds replace. Execution reaches them only through :meth:`_float`.
    def quantize_input(self, x: torch.Tensor, spec: dict) -> np.ndarray:
        """An input quantizer on float values: the integers on its grid (see :meth:`input_unit`)."""
        q = spec["quantizer"]
        if spec["policy"] == "learned_pot":
            z = x * (1.0 / torch.exp2(torch.tensor(float(spec["log2_scale"]))))
        else:
            dim = spec["channel_dim"]
            moved = x.movedim(dim, 1)
            flat = moved.reshape(moved.shape[0], moved.shape[1], -1)
            gain = torch.full((flat.shape[1],), 1.0 / spec["clip_sigma"], dtype=x.dtype)
            z = F.batch_norm(flat, torch.from_numpy(self._tensor(spec["running_mean"])),
                             torch.from_numpy(self._tensor(spec["running_var"])), gain, None, False, 0.0,
                             spec["norm_eps"]).reshape(moved.shape).movedim(1, dim)
        fn = QF.shift_quantize if q["kind"] == "shift" else QF.uniform_quantize
        hard = fn(z, int(q["bits"]), q["rounding"], bool(q["zero"]), bool(q["signed"]), bool(q.get("full_codes", False)))
        return torch.round(hard.double() / q["resolution"]).long().numpy()

    @staticmethod
    def input_unit(spec: dict) -> float:
        """What one integer of an input quantizer's grid is worth."""
        scale = 2.0 ** spec["log2_scale"] if spec["policy"] == "learned_pot" else float(np.float32(spec["clip_sigma"]))
        return scale * spec["quantizer"]["resolution"]

    @staticmethod
    def level_ints(spec: dict) -> np.ndarray:
        """An activation quantizer's levels as integers on its grid."""
        q = spec["quantizer"]
        return np.round(np.asarray(q["levels"], dtype=np.float64) / q["resolution"]).astype(np.int64)

    def dequantize(self, node: dict, acc: np.ndarray, offset_sums: np.ndarray | None = None) -> torch.Tensor:
        """A shift layer's float output from its accumulator: ``acc x grid + bias``, per channel.

        With a weight offset (``w = code * scale + offset``) the offset multiplies ``offset_sums``,
        the sum of the input integers each output sees."""
        a_unit = self.input_unit(node["input_quantizer"])
        channel_shape = (1, -1, 1, 1) if node["op"] == "shift_conv2d" else (1,) * (acc.ndim - 1) + (-1,)
        w_unit = self._tensor(node["weight_scale"]).astype(np.float64) * node["weight_quantizer"]["resolution"]
        out = acc.astype(np.float64) * (w_unit * a_unit).reshape(channel_shape)
        if offset_sums is not None:
            offset = self._tensor(node["weight_offset"]).astype(np.float64).reshape(channel_shape)
            out = out + offset * offset_sums.astype(np.float64) * a_unit
        if node.get("bias"):
            out = out + self._tensor(node["bias"]).astype(np.float64).reshape(channel_shape)
        return torch.from_numpy(out.astype(np.float32))

    def float_op(self, node: dict, args: list[torch.Tensor]) -> torch.Tensor:
        """``node``'s float kernel (PyTorch's) on ``args``."""
        return float_kernel(node, args, lambda key: torch.from_numpy(self._tensor(key)), self._batch)

    def to_float(self, x: Value) -> torch.Tensor:
        """Float values of a value: integers become ``integer x unit`` (exact below 2^24 units),
        pixels the float model's input."""
        if not x.is_int:
            return x.data
        if x.kind == "pixels":
            return pixels_to_float(x.data, self._pixels)
        if x.kind == "sum":
            raise BundleError(f"{self.source}: a global integer sum can only feed a shift layer with input thresholds")
        return torch.from_numpy((x.data.astype(np.float64) * x.unit).astype(np.float32))

    # ------------------------------------------------------------------ execution
    def _float(self, node: dict, kernel, *args):
        """The one way execution computes in float: records ``node``, and refuses a node that the
        bundle does not list in ``float_ops`` (strict runtimes)."""
        name = node["name"]
        if self.strict and name not in self.float_ops:
            self._fail(node, "computes in float, but the bundle does not list it in float_ops"
                       + (" (it says integer_only)" if self.manifest.get("integer_only") else ""))
        if name not in self.observed_float_ops:
            self.observed_float_ops.append(name)
        return kernel(*args)

    def _layer_input(self, node: dict, x: Value) -> np.ndarray:
        """The integers a shift layer multiplies: handed on (``input_codes``), from thresholds on an
        integer input (``input_thresholds``), or its input quantizer on float values."""
        if node.get("input_codes"):
            if x.kind != "grid" or x.unit != self.input_unit(node["input_quantizer"]):
                self._fail(node, "expects integers on its input grid from a requantizing layer")
            return x.data.astype(np.int64)
        if node.get("input_thresholds") is not None:
            if not x.is_int:
                self._fail(node, "has input thresholds but receives float values")
            channel_dim = 1 if node["op"] == "shift_conv2d" else -1
            idx = level_index(x.data, self._thresholds[node["input_thresholds"]], None, channel_dim)
            return self.level_ints(node["input_quantizer"])[idx]
        return self._float(node, lambda: self.quantize_input(self.to_float(x), node["input_quantizer"]))

    def _shift_layer(self, node: dict, x: Value) -> Value:
        a_int = self._layer_input(node, x)
        w_int = self._weights[node["name"]]
        if node["op"] == "shift_conv2d":
            acc = shift_add_conv(a_int, w_int, node["stride"], node["padding"], node["dilation"], node["groups"])
        else:
            lead = a_int.shape[:-1]
            acc = _shift_add(a_int.reshape(-1, a_int.shape[-1], 1), w_int)[..., 0].reshape(*lead, -1)
        bound = node["accumulator_bound"]
        if acc.size and int(np.abs(acc).max()) > bound:
            self._fail(node, f"accumulator {int(np.abs(acc).max())} beyond its proven bound {bound}")
        channel_dim = 1 if node["op"] == "shift_conv2d" else -1
        if node.get("requant"):
            r = node["requant"]
            idx = level_index(acc, self._thresholds[r["thresholds"]], self._tensor(r["direction"]), channel_dim)
            return Value(np.asarray(r["levels"], dtype=np.int64)[idx], r["unit"])
        if node.get("int_output"):
            o = node["int_output"]
            shape = [1] * acc.ndim
            shape[channel_dim] = -1
            bias = 0 if o.get("bias") is None else self._tensor(o["bias"]).astype(np.int64).reshape(shape)
            return Value((acc + bias) << self._tensor(o["shift"]).astype(np.int64).reshape(shape), o["unit"])
        offset_sums = self._window_sums(node, a_int, w_int.shape) if node.get("weight_offset") else None
        return Value(self._float(node, self.dequantize, node, acc, offset_sums))

    @staticmethod
    def _window_sums(node: dict, a_int: np.ndarray, w_shape) -> np.ndarray:
        """Per output channel, the sum of the input integers in its receptive field."""
        if node["op"] == "shift_linear":
            return a_int.sum(-1, keepdims=True)
        groups = node["groups"]
        ones = np.ones((groups,) + tuple(w_shape[1:]), dtype=np.int64)
        sums = shift_add_conv(a_int, ones, node["stride"], node["padding"], node["dilation"], groups)
        return np.repeat(sums, w_shape[0] // groups, axis=1)

    def _int_op(self, node: dict, args: list[Value]) -> Value | None:
        """``node`` on integers, when its inputs are integers and it has an integer form."""
        op = node["op"]
        if not args or not all(a.is_int for a in args):
            return None
        x = args[0]
        if op == "identity":
            return x
        if op in _MOVES and x.kind == "grid":
            return Value(np.ascontiguousarray(move(node, x.data, self._batch)), x.unit)
        if op == "pad" and x.kind == "grid" and (node["mode"] != "constant" or node["value"] == 0):
            p = node["pads"]
            widths = [(0, 0)] * (x.data.ndim - len(p) // 2) + [(p[i], p[i + 1]) for i in range(len(p) - 2, -1, -2)]
            return Value(np.pad(x.data, widths, _PAD_MODES[node["mode"]]), x.unit, x.kind)
        if op == "flatten":
            dims = list(x.data.shape)
            start, end = node["start_dim"] % len(dims), node["end_dim"] % len(dims)
            shape = dims[:start] + [int(np.prod(dims[start:end + 1]))] + dims[end + 1:]
            return Value(x.data.reshape(shape), x.unit, x.kind)
        if x.kind == "pixels":
            return None  # pixels reach float ops as the float model's input
        if op == "relu":
            return Value(np.maximum(x.data, 0), x.unit, x.kind)
        if op == "max_pool2d":  # comparisons on int64: padding is the lowest int64, never selected
            out = F.max_pool2d(torch.from_numpy(x.data.astype(np.int64)), node["kernel_size"], node["stride"],
                               node["padding"], node["dilation"], node["ceil_mode"])
            return Value(out.numpy(), x.unit, x.kind)
        if op == "add" and node.get("shifts") is not None:
            if any(a.kind != "grid" for a in args):
                self._fail(node, "adds integers off a power-of-two grid")
            sh = self._ints(node, node["shifts"], "shifts", 2)
            unit = min(args[0].unit, args[1].unit)
            if any(a.unit != unit * 2.0 ** k for a, k in zip(args, sh)):
                self._fail(node, "shifts do not align its inputs' grids")
            return Value((args[0].data.astype(np.int64) << sh[0]) + (args[1].data.astype(np.int64) << sh[1]), unit)
        if op == "adaptive_avg_pool2d" and node.get("integer"):
            if x.kind != "grid":
                self._fail(node, "sums integers off a power-of-two grid")
            return Value(x.data.astype(np.int64).sum(axis=(-2, -1), keepdims=True), None, "sum")
        if op == "avg_pool2d" and node.get("integer"):  # window sums; the readers' thresholds divide
            if x.kind != "grid":
                self._fail(node, "sums integers off a power-of-two grid")
            (kh, kw), (sh, sw) = self._ints(node, node["kernel_size"], "kernel_size", 2, 1), \
                self._ints(node, node["stride"], "stride", 2, 1)
            ph, pw = self._ints(node, node["padding"], "padding", 2)
            padded = np.pad(x.data.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            windows = torch.from_numpy(padded).unfold(-2, kh, sh).unfold(-2, kw, sw)
            return Value(windows.sum(dim=(-2, -1)).numpy(), None, "sum")
        return None

    def _float_node(self, node: dict, args: list[Value]) -> Value:
        def kernel():
            out = self.float_op(node, [self.to_float(a) for a in args])
            spec = node.get("output_quantizer") if node["op"] == "batch_norm" else None
            return Value(self.quantize_input(out, spec), self.input_unit(spec)) if spec else Value(out)
        return self._float(node, kernel)

    def _store(self, node: dict, out: Value) -> Value:
        """``out`` checked against the node's declared type and range, stored at that width."""
        dtype = node["dtype"]
        if dtype == FLOAT:
            if out.is_int:
                self._fail(node, "computes integers but declares float32")
            return out
        if not out.is_int:
            self._fail(node, f"computes float values but declares {dtype}")
        lo, hi = node["range"]
        if out.data.size and (int(out.data.min()) < lo or int(out.data.max()) > hi):
            self._fail(node, f"value {int(out.data.min())}..{int(out.data.max())} outside its declared range "
                             f"[{lo}, {hi}] ({dtype})")
        return Value(out.data.astype(INT_TYPES[dtype]), out.unit, out.kind)

    def _input(self, node: dict, x) -> Value:
        x = np.asarray(x)
        if list(x.shape[1:]) != node["shape"] or x.ndim < 2:
            raise BundleError(f"input shape {list(x.shape)}: expected (batch, {', '.join(map(str, node['shape']))})")
        if self._pixels is None:
            if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
                raise BundleError(f"input of dtype {x.dtype}: this bundle takes float32 values")
            return Value(torch.from_numpy(x.astype(np.float32)))
        top = self._pixels["scale"]
        if not np.issubdtype(x.dtype, np.integer):
            raise BundleError(f"input of dtype {x.dtype}: this bundle takes integer pixels 0..{top} "
                              f"({np.dtype(pixel_dtype(top)).name}); PixelInput.from_float converts normalized values")
        if x.size and (int(x.min()) < 0 or int(x.max()) > top):
            raise BundleError(f"input pixels {int(x.min())}..{int(x.max())} outside 0..{top}")
        return Value(x.astype(pixel_dtype(top)), None, "pixels")

    def input_from_float(self, x) -> np.ndarray:
        """What this bundle takes for the float model's input ``x``: the pixels ``x`` was
        normalized from (a pixel bundle), or ``x`` as float32."""
        if self._pixels is None:
            return np.asarray(x, dtype=np.float32)
        return PixelInput(tuple(self._pixels["mean"]), tuple(self._pixels["std"]), self._pixels["scale"]).from_float(x)

    def example_input(self, batch: int = 1) -> np.ndarray:
        """Zeros of the input's shape and type."""
        node = next(n for n in self.nodes if n["op"] == "input")
        dtype = np.float32 if self._pixels is None else pixel_dtype(self._pixels["scale"])
        return np.zeros((batch, *node["shape"]), dtype=dtype)

    @torch.no_grad()
    def execute(self, x) -> list[Value]:
        """Every output's :class:`Value`. A bundle whose shapes do not fit each other, or whose
        values leave their declared types, fails here, naming the node."""
        values: dict[str, Value] = {}
        self._batch = int(np.shape(x)[0])
        for node in self.nodes:
            try:
                values[node["name"]] = self._run_node(node, x, values)
            except BundleError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError, OverflowError, AttributeError,
                    MemoryError) as exc:
                self._fail(node, f"cannot execute: {type(exc).__name__}: {str(exc)[:200]}")
        return [values[o] for o in self.manifest["outputs"]]

    def run(self, x) -> np.ndarray | list[np.ndarray]:
        """Float32 outputs for ``x`` (pixels for a bundle with ``pixels``). Integer logits become
        ``integer x unit``: the conversion of the result, not a computation of the graph."""
        outs = [v.data.numpy() if not v.is_int else self._value_of(v) for v in self.execute(x)]
        return outs[0] if len(outs) == 1 else outs

    def run_int(self, x) -> tuple[np.ndarray, float]:
        """``(integers, unit)`` of the (single) output: the logits are ``integers x unit``."""
        outs = self.execute(x)
        if len(outs) != 1 or outs[0].kind != "grid":
            raise BundleError(f"{self.source}: run_int needs one integer output on a power-of-two grid; "
                              f"this bundle's outputs are {self.manifest['outputs']}")
        return outs[0].data, outs[0].unit

    def _value_of(self, v: Value) -> np.ndarray:
        if v.kind != "grid":
            raise BundleError(f"{self.source}: an output of {v.kind} has no float value")
        return (v.data.astype(np.float64) * v.unit).astype(np.float32)

    def _run_node(self, node: dict, x, values: dict) -> Value:
        op = node["op"]
        if op == "input":
            out = self._input(node, x)
        else:
            args = [values[i] for i in node["inputs"]]
            if op in ("shift_conv2d", "shift_linear"):
                out = self._shift_layer(node, args[0])
            else:
                out = self._int_op(node, args) or self._float_node(node, args)
        batch, dim = np.shape(x)[0], node.get("batch_dim", 0)
        if dim is not None and (len(out.data.shape) <= dim or out.data.shape[dim] != batch):
            self._fail(node, f"its output {list(out.data.shape)} lost the batch dimension ({batch}, dim {dim})")
        return self._store(node, out)


class Value:
    """A value between nodes: float32 values (a torch tensor), or integers (a numpy array) of a
    ``kind``: ``grid`` (worth ``unit``, a power of two, each), ``sum`` (a global sum of grid
    integers, read only through input thresholds) or ``pixels`` (the bundle's input)."""

    __slots__ = ("data", "unit", "kind")

    def __init__(self, data, unit: float | None = None, kind: str = "grid"):
        self.data = data
        self.kind = kind if isinstance(data, np.ndarray) else "float"
        self.unit = unit if self.kind == "grid" else None

    @property
    def is_int(self) -> bool:
        return self.kind != "float"


_STORED_INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16)
_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}  # as models write them
_MOVES = ("reshape", "expand", "permute", "index")  # data movement: integers stay integers
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}  # numpy's names
_INPUTS = {"input": 0, "constant": 0, "matmul": 2, "attention": 3}  # inputs of the ops that do not take one
_OPS = {"input", "shift_conv2d", "shift_linear", "batch_norm", "relu", "max_pool2d", "avg_pool2d",
        "adaptive_avg_pool2d", "flatten", "identity", "conv2d", "linear", "clamp", "hardswish", "hardsigmoid", "silu",
        "sigmoid", "gelu", "mean", "cat", "constant", "layer_norm", "softmax", "matmul", "attention", "pad",
        *_BINARY, *_MOVES}


def float_kernel(node: dict, args: list, tensor, batch: int) -> torch.Tensor:
    """A node's float kernel: PyTorch's function of the same name on ``args``; ``tensor(key)`` gives
    the bundle's tensors as torch tensors (real ones, or meta tensors for the load-time proof)."""
    op, x = node["op"], args[0] if args else None
    t = lambda k: None if node.get(k) is None else tensor(node[k])
    if op == "batch_norm":
        return F.batch_norm(x, t("mean"), t("var"), t("weight"), t("bias"), False, 0.0, node["eps"])
    if op == "relu":
        return F.relu(x)
    if op in _BINARY:
        fn = _BINARY[op]
        if node.get("scalar") is None:
            return fn(args[0], args[1])
        return fn(node["scalar"], x) if node.get("reverse") else fn(x, node["scalar"])
    if op == "max_pool2d":
        return F.max_pool2d(x, node["kernel_size"], node["stride"], node["padding"], node["dilation"],
                            node["ceil_mode"])
    if op == "avg_pool2d":
        return F.avg_pool2d(x, node["kernel_size"], node["stride"], node["padding"], node["ceil_mode"],
                            node["count_include_pad"])
    if op == "adaptive_avg_pool2d":
        return F.adaptive_avg_pool2d(x, node["output_size"])
    if op == "flatten":
        return torch.flatten(x, node["start_dim"], node["end_dim"])
    if op == "identity":
        return x
    if op == "clamp":
        return torch.clamp(x, node["min"], node["max"])
    if op == "hardswish":
        return F.hardswish(x)
    if op == "hardsigmoid":
        return F.hardsigmoid(x)
    if op == "silu":
        return F.silu(x)
    if op == "sigmoid":
        return torch.sigmoid(x)
    if op == "gelu":
        return F.gelu(x, approximate=node["approximate"])
    if op == "mean":
        return torch.mean(x, node["dim"], keepdim=node["keepdim"])
    if op == "cat":
        return torch.cat(args, node["dim"])
    if op == "conv2d":
        return F.conv2d(x, t("weight"), t("bias"), node["stride"], node["padding"], node["dilation"], node["groups"])
    if op == "linear":
        return F.linear(x, t("weight"), t("bias"))
    if op in _MOVES:
        return move(node, x, batch)
    if op == "pad":
        value = node["value"] if node["mode"] == "constant" else None
        return F.pad(x, node["pads"], node["mode"], value)
    if op == "constant":
        return tensor(node["value"])
    if op == "layer_norm":
        return F.layer_norm(x, node["normalized_shape"], t("weight"), t("bias"), node["eps"])
    if op == "softmax":
        return torch.softmax(x, node["dim"])
    if op == "matmul":
        return torch.matmul(args[0], args[1])
    if op == "attention":
        return F.scaled_dot_product_attention(*args, scale=node.get("scale"))
    raise BundleError(f"unknown op {op!r}")  # pragma: no cover - checked at load


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


def load_bundle(path: str | Path) -> Runtime:
    """Read, verify and decode a bundle; raises :class:`BundleError` unless it is intact."""
    manifest, tensors = read_bundle(path)
    return Runtime(manifest, tensors, str(path))
