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


class Runtime:
    """A loaded bundle. ``run(x)`` takes and returns numpy arrays."""

    def __init__(self, manifest: dict, tensors: dict[str, np.ndarray], source: str = "bundle"):
        self.manifest, self.tensors, self.source = manifest, tensors, source
        self.nodes = manifest["nodes"]
        self.float_ops = list(manifest.get("float_ops", []))
        self._weights = {}
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
        elif op in ("max_pool2d", "avg_pool2d"):
            self._ints(node, node.get("kernel_size"), "kernel_size", 2, 1)
            self._ints(node, node.get("stride"), "stride", 2, 1)
            self._ints(node, node.get("padding"), "padding", 2)
            if op == "max_pool2d":
                self._ints(node, node.get("dilation"), "dilation", 2, 1)
        elif op == "adaptive_avg_pool2d":
            self._ints(node, node.get("output_size"), "output_size", 2, 1)
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
        iq = node["input_quantizer"]
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
        return w_int

    # ------------------------------------------------------------------ execution
    def _quantize_input(self, x: torch.Tensor, spec: dict) -> tuple[np.ndarray, float]:
        q = spec["quantizer"]
        if spec["policy"] == "learned_pot":
            scale = torch.exp2(torch.tensor(float(spec["log2_scale"])))
            z = x * (1.0 / scale)
        else:
            dim = spec["channel_dim"]
            moved = x.movedim(dim, 1)
            flat = moved.reshape(moved.shape[0], moved.shape[1], -1)
            gain = torch.full((flat.shape[1],), 1.0 / spec["clip_sigma"], dtype=x.dtype)
            z = F.batch_norm(flat, torch.from_numpy(self._tensor(spec["running_mean"])),
                             torch.from_numpy(self._tensor(spec["running_var"])), gain, None, False, 0.0,
                             spec["norm_eps"]).reshape(moved.shape).movedim(1, dim)
            scale = torch.tensor(spec["clip_sigma"], dtype=x.dtype)
        fn = QF.shift_quantize if q["kind"] == "shift" else QF.uniform_quantize
        hard = fn(z, int(q["bits"]), q["rounding"], bool(q["zero"]), bool(q["signed"]))
        codes = torch.round(hard.double() / q["resolution"]).long().numpy()
        return codes, float(scale.item()) * q["resolution"]

    def _shift_layer(self, node: dict, x: torch.Tensor) -> torch.Tensor:
        a_int, a_unit = self._quantize_input(x, node["input_quantizer"])
        w_int = self._weights[node["name"]]
        if node["op"] == "shift_conv2d":
            acc = shift_add_conv(a_int, w_int, node["stride"], node["padding"], node["dilation"], node["groups"])
            channel_shape = (1, -1, 1, 1)
        else:
            lead = a_int.shape[:-1]
            acc = _shift_add(a_int.reshape(-1, a_int.shape[-1], 1), w_int)[..., 0].reshape(*lead, -1)
            channel_shape = (1,) * (acc.ndim - 1) + (-1,)
        w_unit = self._tensor(node["weight_scale"]).astype(np.float64) * node["weight_quantizer"]["resolution"]
        out = acc.astype(np.float64) * (w_unit * a_unit).reshape(channel_shape)
        if node.get("weight_offset"):
            # w = code * scale + offset: the offset multiplies the sum of the inputs its channel sees.
            offset = self._tensor(node["weight_offset"]).astype(np.float64).reshape(channel_shape)
            out = out + offset * self._window_sums(node, a_int, w_int.shape).astype(np.float64) * a_unit
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

    def _float_op(self, node: dict, args: list[torch.Tensor]) -> torch.Tensor:
        op, x = node["op"], args[0] if args else None
        t = lambda k: None if node.get(k) is None else torch.from_numpy(self._tensor(node[k]))  # noqa: E731
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

    @torch.no_grad()
    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for ``x``. A bundle whose shapes do not fit each other fails here, naming the node."""
        values: dict[str, torch.Tensor] = {}
        x = np.asarray(x, dtype=np.float32)
        for node in self.nodes:
            try:
                self._run_node(node, x, values)
            except BundleError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError, OverflowError, AttributeError) as exc:
                self._fail(node, f"cannot execute: {type(exc).__name__}: {str(exc)[:200]}")
        outs = [values[o].numpy() for o in self.manifest["outputs"]]
        return outs[0] if len(outs) == 1 else outs

    def _run_node(self, node: dict, x: np.ndarray, values: dict) -> None:
        if node["op"] == "input":
            if list(x.shape[1:]) != node["shape"]:
                raise BundleError(f"input shape {list(x.shape)}: expected (batch, {', '.join(map(str, node['shape']))})")
            values[node["name"]] = torch.from_numpy(x)
        elif node["op"] in ("shift_conv2d", "shift_linear"):
            values[node["name"]] = self._shift_layer(node, values[node["inputs"][0]])
        else:
            values[node["name"]] = self._float_op(node, [values[i] for i in node["inputs"]])


_FLOAT_OPS = {"batch_norm", "relu", "add", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "flatten",
              "identity", "conv2d", "linear"}


def load_bundle(path: str | Path) -> Runtime:
    """Read, verify and decode a bundle; raises :class:`BundleError` unless it is intact."""
    manifest, tensors = read_bundle(path)
    return Runtime(manifest, tensors, str(path))
