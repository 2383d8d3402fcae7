"""The reference runtime: executes a bundle on numpy arrays.

Shift layers run in integers: the input is quantized to codes (the quantizers' own math), codes
become integers on the input's grid, and every product with a weight ``±2^-k`` is a left shift of
that integer by the weight's shift amount; products are summed into an int64 accumulator, with no
multiplication. The accumulator times the layer's grid (a power of two under ``deploy_exact``)
plus the bias gives the layer output. The other ops (BatchNorm, ReLU, pooling, residual adds,
layers kept float) run in float32 with PyTorch's own kernels; they are listed in ``float_ops``.

Under ``deploy_exact`` every value the float32 PyTorch model computes in a shift layer is an
integer multiple of a power of two below 2^24 units, so its float32 result is exact, and equal to
the runtime's integer one: the runtime's logits equal the PyTorch model's bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BundleError
from ..quant import functional as QF
from .bundle import read_bundle, unpack_codes

_CHUNK = 16  # examples per block of the shift-add convolution (bounds its temporaries)


def shift_add_conv(a: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                   groups: int = 1) -> np.ndarray:
    """Integer convolution of ``a`` (int64, NCHW) with weights ``w`` whose entries are 0 or ``±2^t``,
    computed with left shifts and additions only. Returns the int64 accumulator (N, Cout, Ho, Wo)."""
    n, c, h, wd = a.shape
    cout, cin_g, kh, kw = w.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    # Patches of an integer tensor (exact through float64 below 2^53).
    patches = F.unfold(torch.from_numpy(a.astype(np.float64)), (kh, kw), dilation=dilation, padding=padding,
                       stride=stride).numpy().astype(np.int64)
    patches = patches.reshape(n, groups, cin_g * kh * kw, ho * wo)
    cout_g = cout // groups
    acc = np.zeros((n, cout, ho * wo), dtype=np.int64)
    for g in range(groups):
        wg = w[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1)
        acc[:, g * cout_g:(g + 1) * cout_g] = _shift_add(patches[:, g], wg)
    return acc.reshape(n, cout, ho, wo)


def _shift_add(p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_k w[c, k] * p[:, k, :]`` for ``w`` in ``{0, ±2^t}``: shifts and additions."""
    n, _, length = p.shape
    out = np.zeros((n, w.shape[0], length), dtype=np.int64)
    nonzero = w != 0
    shifts = np.zeros_like(w)
    shifts[nonzero] = np.log2(np.abs(w[nonzero])).round().astype(np.int64)
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


def level_index(acc: torch.Tensor, thr: np.ndarray, direction: np.ndarray, channel_dim: int) -> torch.Tensor:
    """Requantization: ``sum_k [d_c * acc >= t_ck]``, the next layer's level index, by comparisons
    and additions (thresholds from :mod:`shiftquant.export.requant`)."""
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    signed = torch.where(torch.from_numpy(direction.astype(np.int64)).reshape(shape) > 0, acc, -acc)
    idx = torch.zeros_like(acc)
    for row in thr.astype(np.int64):
        idx += signed >= torch.from_numpy(row).reshape(shape)
    return idx


class Runtime:
    """A loaded bundle. ``run(x)`` takes and returns numpy arrays."""

    def __init__(self, manifest: dict, tensors: dict[str, np.ndarray], source: str = "bundle"):
        self.manifest, self.tensors, self.source = manifest, tensors, source
        self.nodes = manifest["nodes"]
        self.float_ops = list(manifest.get("float_ops", []))
        self._weights = {}
        self._thresholds: dict[str, np.ndarray] = {}  # decoded (cumulative) threshold tables
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
            for node in self.nodes:
                if not isinstance(node.get("name"), str) or node["name"] in seen:
                    raise BundleError(f"{self.source}: a node has a missing or repeated name")
                for i in node["inputs"]:
                    if i not in seen:
                        raise BundleError(f"{self.source}: node {node['name']!r} reads {i!r} before it is computed")
                if node["op"] in ("shift_conv2d", "shift_linear"):
                    self._weights[node["name"]] = self._decode_weights(node)
                elif node["op"] not in _FLOAT_OPS and node["op"] != "input":
                    raise BundleError(f"{self.source}: unknown op {node['op']!r}")
                else:
                    self._check_float_op(node)
                seen.add(node["name"])
            for o in self.manifest["outputs"]:
                if o not in seen:
                    raise BundleError(f"{self.source}: output {o!r} is not computed")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise BundleError(f"{self.source}: malformed manifest ({type(exc).__name__}: {exc})") from None

    def _fail(self, node: dict, what: str):
        raise BundleError(f"{self.source}: node {node.get('name')!r} ({node.get('op')}): {what}")

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
                or not isinstance(q.get("signed"), bool):
            self._fail(node, "malformed quantizer")
        self._ints(node, q.get("bits"), "quantizer bits")
        self._ints(node, q.get("code_bits"), "code_bits", low=1)
        levels = q.get("levels")
        if not isinstance(levels, list) or not levels or len(levels) > 1 << q["code_bits"] \
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) for v in levels) \
                or levels != sorted(levels):
            self._fail(node, "quantizer levels must be a sorted list of finite numbers that fits its code")
        res = self._number(node, q.get("resolution"), "resolution", 1e-30)
        if any(abs(v / res - round(v / res)) > 0 for v in levels):
            self._fail(node, "quantizer levels must be multiples of its resolution")

    def _check_act_quantizer(self, node: dict, iq: dict) -> None:
        self._check_quantizer(node, iq.get("quantizer"))
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
            self._ints(node, node.get("padding"), "padding", 2)
            if op == "max_pool2d":
                self._ints(node, node.get("dilation"), "dilation", 2, 1)
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
        if len(node["inputs"]) != (2 if op == "add" else 0 if op == "input" else 1):
            self._fail(node, "wrong number of inputs")

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
        count = int(np.prod(shape))
        codes = unpack_codes(self._tensor(node["weight_codes"]), int(spec["code_bits"]), count)
        levels = np.asarray(spec["levels"], dtype=np.float64)
        if codes.size and int(codes.max()) >= len(levels):
            raise BundleError(f"{self.source}: {node['name']}: weight code {int(codes.max())} has no level")
        w_int = np.round(levels[codes] / float(spec["resolution"])).astype(np.int64).reshape(shape)
        nonzero = w_int[w_int != 0]
        if nonzero.size and not np.all((np.abs(nonzero) & (np.abs(nonzero) - 1)) == 0):
            raise BundleError(f"{self.source}: {node['name']}: weights are not powers of two")
        self._tensor(node["weight_scale"], (shape[0],))
        self._check_requant(node, shape[0])
        return w_int

    def _check_thresholds(self, node: dict, key, columns: int | None, what: str) -> np.ndarray:
        stored = self._tensor(key)
        if stored.dtype not in _INT_TYPES or stored.ndim != 2 or stored.shape[0] < 1 \
                or (columns and stored.shape[1] != columns) or (stored[1:] < 0).any():
            self._fail(node, f"{what} must be an integer table (levels - 1, channels): a first row, then "
                             "non-negative differences")
        thr = np.cumsum(stored.astype(np.int64), axis=0)
        self._thresholds[key] = thr
        return thr

    def _check_requant(self, node: dict, channels: int) -> None:
        if not isinstance(node.get("input_codes", False), bool):
            self._fail(node, "input_codes must be true or false")
        if node.get("input_thresholds") is not None:
            thr = self._check_thresholds(node, node["input_thresholds"], 1, "input_thresholds")
            if node.get("input_codes") or thr.shape[0] != len(node["input_quantizer"]["quantizer"]["levels"]) - 1:
                self._fail(node, "input_thresholds must have one row per input level but the lowest, "
                                 "without input_codes")
        r = node.get("requant")
        if r is None:
            return
        if not isinstance(r, dict):
            self._fail(node, "requant must be a table of thresholds, directions, levels and a unit")
        thr = self._check_thresholds(node, r["thresholds"], channels, "requant thresholds")
        direction = self._tensor(r["direction"], (channels,))
        levels = r.get("levels")
        if direction.dtype not in _INT_TYPES or not np.isin(direction, (1, -1)).all():
            self._fail(node, "requant directions must be int64, +1 or -1")
        if not isinstance(levels, list) or len(levels) != thr.shape[0] + 1 \
                or not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1 << 24 for v in levels) \
                or levels != sorted(levels):
            self._fail(node, "requant levels must be sorted integers below 2^24, one more than the thresholds")
        self._number(node, r.get("unit"), "requant unit", 1e-30)

    # ------------------------------------------------------------------ execution
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
        hard = fn(z, int(q["bits"]), q["rounding"], bool(q["zero"]), bool(q["signed"]))
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

    def _layer_input(self, node: dict, x: Value) -> np.ndarray:
        """The integers a shift layer multiplies: handed on (``input_codes``), from thresholds on an
        integer input (``input_thresholds``), or its input quantizer on float values."""
        if node.get("input_codes"):
            if x.unit is None or x.unit != self.input_unit(node["input_quantizer"]):
                self._fail(node, "expects integers on its input grid from a requantizing layer")
            return x.data.numpy()
        if node.get("input_thresholds") is not None:
            if not x.is_int:
                self._fail(node, "has input thresholds but receives float values")
            idx = level_index(x.data, self._thresholds[node["input_thresholds"]], np.ones(1, dtype=np.int64), 0)
            return self.level_ints(node["input_quantizer"])[idx.numpy()]
        return self.quantize_input(self._as_float(node, x), node["input_quantizer"])

    def _shift_layer(self, node: dict, x: Value) -> Value:
        a_int = self._layer_input(node, x)
        w_int = self._weights[node["name"]]
        if node["op"] == "shift_conv2d":
            acc = shift_add_conv(a_int, w_int, node["stride"], node["padding"], node["dilation"], node["groups"])
        else:
            lead = a_int.shape[:-1]
            acc = _shift_add(a_int.reshape(-1, a_int.shape[-1], 1), w_int)[..., 0].reshape(*lead, -1)
        if node.get("requant"):
            r = node["requant"]
            dim = 1 if node["op"] == "shift_conv2d" else -1
            idx = level_index(torch.from_numpy(acc), self._thresholds[r["thresholds"]], self._tensor(r["direction"]), dim)
            return Value(torch.from_numpy(np.asarray(r["levels"], dtype=np.int64)[idx.numpy()]), r["unit"])
        offset_sums = self._window_sums(node, a_int, w_int.shape) if node.get("weight_offset") else None
        return Value(self.dequantize(node, acc, offset_sums))

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

    @staticmethod
    def _window_sums(node: dict, a_int: np.ndarray, w_shape) -> np.ndarray:
        """Per output channel, the sum of the input integers in its receptive field."""
        if node["op"] == "shift_linear":
            return a_int.sum(-1, keepdims=True)
        groups = node["groups"]
        ones = np.ones((groups,) + tuple(w_shape[1:]), dtype=np.int64)
        sums = shift_add_conv(a_int, ones, node["stride"], node["padding"], node["dilation"], groups)
        return np.repeat(sums, w_shape[0] // groups, axis=1)

    def float_op(self, node: dict, args: list[torch.Tensor]) -> torch.Tensor:
        op, x = node["op"], args[0] if args else None
        t = lambda k: None if node.get(k) is None else torch.from_numpy(self._tensor(node[k]))
        if op == "batch_norm":
            return F.batch_norm(x, t("mean"), t("var"), t("weight"), t("bias"), False, 0.0, node["eps"])
        if op == "relu":
            return F.relu(x)
        if op == "add":
            return args[0] + args[1]
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
        if op == "conv2d":
            return F.conv2d(x, t("weight"), t("bias"), node["stride"], node["padding"], node["dilation"], node["groups"])
        if op == "linear":
            return F.linear(x, t("weight"), t("bias"))
        raise BundleError(f"{self.source}: unknown op {op!r}")  # pragma: no cover - checked at load

    def _as_float(self, node: dict, x: Value) -> torch.Tensor:
        """Float values; integers become ``integer x unit`` (exact below 2^24 units)."""
        if not x.is_int:
            return x.data
        if x.unit is None:
            self._fail(node, "a pooled integer sum can only feed a shift layer with input thresholds")
        return (x.data.double() * x.unit).float()

    def _int_op(self, node: dict, args: list[Value]) -> Value | None:
        """``node`` on integers, when its inputs are integers and it has an integer form."""
        op = node["op"]
        if not args or not all(a.is_int for a in args):
            return None
        x = args[0]
        if op in ("identity", "flatten"):
            return Value(self.float_op(node, [x.data]), x.unit)
        if op == "relu":
            return Value(x.data.clamp_min(0), x.unit)
        if op == "max_pool2d":  # through float64: exact for integers below 2^53
            return Value(self.float_op(node, [x.data.double()]).long(), x.unit)
        if op == "add" and node.get("shifts") is not None:
            if args[0].unit is None or args[1].unit is None:
                self._fail(node, "cannot add pooled sums")
            sh = self._ints(node, node["shifts"], "shifts", 2)
            unit = min(args[0].unit, args[1].unit)
            if any(a.unit != unit * 2.0 ** k for a, k in zip(args, sh)):
                self._fail(node, "shifts do not align its inputs' grids")
            return Value((args[0].data << sh[0]) + (args[1].data << sh[1]), unit)
        if op == "adaptive_avg_pool2d" and node.get("integer"):
            return Value(x.data.sum(dim=(-2, -1), keepdim=True), None)
        return None

    @torch.no_grad()
    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for ``x``. A bundle whose shapes do not fit each other fails here, naming the node."""
        values: dict[str, Value] = {}
        x = np.asarray(x, dtype=np.float32)
        for node in self.nodes:
            try:
                self._run_node(node, x, values)
            except BundleError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError, OverflowError, AttributeError) as exc:
                self._fail(node, f"cannot execute: {type(exc).__name__}: {str(exc)[:200]}")
        outs = []
        for o in self.manifest["outputs"]:
            node = next(n for n in self.nodes if n["name"] == o)
            outs.append(self._as_float(node, values[o]).numpy())
        return outs[0] if len(outs) == 1 else outs

    def _run_node(self, node: dict, x: np.ndarray, values: dict) -> None:
        op = node["op"]
        if op == "input":
            if list(x.shape[1:]) != node["shape"]:
                raise BundleError(f"input shape {list(x.shape)}: expected (batch, {', '.join(map(str, node['shape']))})")
            values[node["name"]] = Value(torch.from_numpy(x))
            return
        args = [values[i] for i in node["inputs"]]
        out = self._shift_layer(node, args[0]) if op in ("shift_conv2d", "shift_linear") else self._int_op(node, args)
        if out is None:
            out = Value(self.float_op(node, [self._as_float(node, a) for a in args]))
            if op == "batch_norm" and node.get("output_quantizer"):
                spec = node["output_quantizer"]
                out = Value(torch.from_numpy(self.quantize_input(out.data, spec)), self.input_unit(spec))
        if out.data.dim() < 1 or out.data.shape[0] != x.shape[0]:
            self._fail(node, f"its output {list(out.data.shape)} lost the batch dimension ({x.shape[0]})")
        values[node["name"]] = out


class Value:
    """A value between nodes: float32 values, or integers (int64) worth ``unit`` each; a pooled
    integer sum has no unit (its meaning is the pooling op's)."""

    __slots__ = ("data", "is_int", "unit")

    def __init__(self, data: torch.Tensor, unit: float | None = None):
        self.data, self.is_int = data, data.dtype == torch.int64
        self.unit = unit if self.is_int else None


_INT_TYPES = (np.int8, np.int16, np.int32, np.int64)
_FLOAT_OPS = {"batch_norm", "relu", "add", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "flatten",
              "identity", "conv2d", "linear"}


def load_bundle(path: str | Path) -> Runtime:
    """Read, verify and decode a bundle; raises :class:`BundleError` unless it is intact."""
    manifest, tensors = read_bundle(path)
    return Runtime(manifest, tensors, str(path))
