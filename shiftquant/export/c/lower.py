"""Lowering: a bundle's manifest -> a short list of integer kernels over statically planned buffers.

This is the only module of the C backend that reads manifest fields. It checks that every node is
an integer kernel the C code implements (refusing a float op by name), resolves every shape, type
and constant, lays each activation tensor out as channel planes with a zero border wide enough for
the convolutions that read it, and plans one arena: each tensor gets a byte offset, tensors whose
lifetimes do not overlap share memory (a greedy planner, as TensorFlow Lite Micro's). The emitter
(:mod:`.emit`) only formats what it finds here.

Two edges may stay outside the C code, done by the host around it: a bundle without pixel input
gives the C code its first shift layer's input integers (the host quantizes the float input with
the reference runtime's quantizer), and a last layer without integer logits returns its
accumulators (the host applies the reference runtime's dequantization). An integer-only bundle
(``manifest["integer_only"]``) needs neither: pixels in, integer logits out.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from ...errors import CodegenError, ConfigError
from ..reasons import float_reasons
from ..runtime import pair
from ..verify import MAX_ELEMENTS

# Types of values between kernels, narrowest first (the bundle's declared integer types).
CTYPES = {"uint8": ("uint8_t", 1, 0, 255), "int8": ("int8_t", 1, -128, 127),
          "uint16": ("uint16_t", 2, 0, 65535), "int16": ("int16_t", 2, -32768, 32767),
          "int32": ("int32_t", 4, -2**31, 2**31 - 1)}
ALIGN = 64  # bytes: every tensor starts on a cache line (and a 512-bit vector)
CHUNK = 64  # output positions per vector block of a shift layer
WINDOW = 24  # beyond this many thresholds, a block counts only those between its extremes
LOOKUP_SPAN = 4096  # tables mode: many levels become a lookup table over at most this many values


def dtype_for(lo: int, hi: int) -> str:
    for name, (_, _, tlo, thi) in CTYPES.items():
        if tlo <= lo and hi <= thi:
            return name
    raise CodegenError(f"integer range [{lo}, {hi}] does not fit 32 bits")


@dataclass
class Tensor:
    """A (C, H, W) integer tensor stored as C planes of (H + 2B) x (W + 2B), zero border B."""

    name: str
    dtype: str
    shape: tuple[int, int, int]
    lo: int
    hi: int
    border: int = 0
    offset: int = -1  # bytes into the arena; -1: the caller's output buffer (the logits)
    alias_of: Tensor | None = None
    slack: int = 0  # elements readable past the end (vector blocks that overrun)

    @property
    def ctype(self) -> str:
        return CTYPES[self.dtype][0]

    @property
    def itemsize(self) -> int:
        return CTYPES[self.dtype][1]

    @property
    def row(self) -> int:
        return self.shape[2] + 2 * self.border

    @property
    def plane(self) -> int:
        return (self.shape[1] + 2 * self.border) * self.row

    @property
    def elems(self) -> int:
        return self.shape[0] * self.plane

    @property
    def nbytes(self) -> int:
        return (self.elems + self.slack) * self.itemsize

    @property
    def root(self) -> Tensor:
        return self.alias_of.root if self.alias_of is not None else self


@dataclass
class Thresholds:
    """``levels[sum_k [v >= t_k,c]]``, computed as ``levels[0] + sum_k [v >= t_k,c] * step_k``.
    ``table``: (channels, K) integers (one row for every channel when it has one row)."""

    table: np.ndarray
    levels: list[int]
    negate: list[bool] | None = None  # per channel: compare -v (a decreasing channel)

    @property
    def count(self) -> int:
        return self.table.shape[1]

    @property
    def window(self) -> bool:
        return self.count > WINDOW

    @property
    def steps(self) -> list[int]:
        return [b - a for a, b in zip(self.levels, self.levels[1:])]

    def lookup(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(table (channels, span), base (channels,))``: the level of every value ``base_c + i``
        for ``i`` in ``[0, span)``, from one below the first threshold to the last (values beyond
        either end clamp to it); None when the span exceeds ``LOOKUP_SPAN``."""
        base = self.table[:, 0] - 1
        span = int((self.table[:, -1] - base).max()) + 1
        if span > LOOKUP_SPAN:
            return None
        levels = np.asarray(self.levels)
        rows = [levels[np.searchsorted(t, b + np.arange(span), side="right")] for t, b in zip(self.table, base)]
        return np.stack(rows), base


@dataclass
class Kernel:
    name: str  # C identifier
    node: str  # the manifest node it computes
    inputs: list[Tensor]
    output: Tensor

    @property
    def label(self) -> str:
        """The node's name as it may appear in a C comment (:func:`comment`)."""
        return comment(self.node)


@dataclass
class ShiftLayer(Kernel):
    """Shift-add convolution (a linear layer is a 1x1 convolution of a 1x1 image)."""

    cout: int = 0
    groups: int = 1
    cin_g: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    codes: np.ndarray = None  # uint8, bit-packed as in the bundle, plus a zero byte
    code_bits: int = 1
    code_shift: list[int] = field(default_factory=list)  # per code: t of ±2^t, or -1 for a zero weight
    code_negative: list[bool] = field(default_factory=list)
    exponents: list[int] = field(default_factory=list)  # distinct t, descending
    acc_bits: int = 16
    bound: int = 0
    requant: Thresholds | None = None
    logit_bias: list[int] | None = None  # integer logits: (acc + bias_c) << shift_c
    logit_shift: list[int] | None = None
    # Segments of consecutive output positions: NSEG segments of LEN positions; the input of the
    # first position of segment s is at in0 + s * in_step, its output at out0 + s * out_step.
    segments: tuple[int, int, int, int, int] = (1, 0, 0, 0, 0)  # nseg, len, out0, out_step, in0
    in_step: int = 0
    x_step: int = 1
    chunk: int = 1
    tap_offsets: list[int] = field(default_factory=list)  # per (ci, kh, kw) of one output channel
    weight_codes: np.ndarray = None  # (cout, taps): each weight's code
    narrow_run: int = 0  # taps summed in 8-bit lanes before widening (0: sum in the accumulator width)

    @property
    def taps(self) -> int:
        return self.cin_g * self.kernel[0] * self.kernel[1]

    @property
    def groups_count(self) -> int:
        return 2 * len(self.exponents)

    def group_of_code(self) -> list[int]:
        """Per code: its group, ``2 e`` (+2^t) or ``2 e + 1`` (-2^t) for ``t = exponents[e]``, or
        ``groups_count`` for a zero weight."""
        ng = self.groups_count
        return [ng if t < 0 or t not in self.exponents else 2 * self.exponents.index(t) + int(neg)
                for t, neg in zip(self.code_shift, self.code_negative)]

    def grouped_taps(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, starts)``: every output channel's input offsets, grouped by exponent and sign,
        concatenated, and per channel where each group starts (``(cout, groups + 1)``, absolute)."""
        group = np.asarray(self.group_of_code())[self.weight_codes]  # (cout, taps)
        ng = self.groups_count
        offsets, starts, pos = [], [], 0
        taps = np.asarray(self.tap_offsets)
        for co in range(self.cout):
            row = [pos]
            for g in range(ng):
                sel = taps[group[co] == g]
                offsets.append(sel)
                pos += sel.size
                row.append(pos)
            starts.append(row)
        return (np.concatenate(offsets) if offsets else np.zeros(0, np.int64)), np.asarray(starts, np.int64)


@dataclass
class Map(Kernel):
    """A shift layer's input stage on integers: thresholds per element (pixels, the residual
    stream, a global sum) to the layer's input level integers."""

    thresholds: Thresholds = None


@dataclass
class Relu(Kernel):
    pass


@dataclass
class Add(Kernel):
    shifts: tuple[int, int] = (0, 0)


@dataclass
class MaxPool(Kernel):
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)


@dataclass
class GlobalSum(Kernel):
    pass


@dataclass
class WindowSum(Kernel):
    """An integer average pool over whole windows: the sum of each window (its readers'
    thresholds divide)."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)


@dataclass
class Split(Kernel):
    """A stride-2 convolution's input as parity phases: output plane ``p * C + c`` holds, at row
    ``u`` and column ``v`` (the convolution output's grid, border ``out_border`` included), input
    pixel ``(2 (u - out_border) + py - padding, 2 (v - out_border) + px - padding)`` of channel
    ``c``, with ``(py, px) = phases[p]``; zero outside the image."""

    phases: list[tuple[int, int]] = field(default_factory=list)
    padding: tuple[int, int] = (0, 0)
    out_border: int = 0


@dataclass
class Copy(Kernel):
    """Data movement that changes the layout (a flatten of a bordered tensor)."""


@dataclass
class Program:
    name: str
    kernels: list[Kernel]
    tensors: list[Tensor]
    input: Tensor  # as the caller passes it (no border)
    input_kind: str  # "pixels" or "codes" (the first shift layer's input integers, host-quantized)
    input_node: dict  # the manifest's input node (host side: shape, pixels)
    input_layer: dict | None  # with "codes": the shift layer whose input quantizer the host applies
    output: Tensor
    output_kind: str  # "logits" (integers on one grid) or "accumulators" (host dequantizes)
    output_node: dict
    logit_unit: float | None
    weights: str = "packed"  # "packed": the bundle's codes; "tables": precomputed grouped offsets
    arena_bytes: int = 0
    stack_bytes: int = 0

    @property
    def flash_bytes(self) -> int:
        """Bytes of constant data: packed codes, tap tables, thresholds, per-channel constants."""
        total = 0
        for k in self.kernels:
            if isinstance(k, ShiftLayer):
                if self.weights == "packed":
                    total += k.codes.size + len(k.code_shift) + _int_bytes(k.tap_offsets) * len(k.tap_offsets)
                else:
                    nonzero = int((np.asarray(k.group_of_code())[k.weight_codes] < k.groups_count).sum())
                    total += _int_bytes(k.tap_offsets) * nonzero + 4 * k.cout * (k.groups_count + 1)
                total += 4 * 4 * k.cout  # per-channel bases: output plane, input group, weights, thresholds
                lookup = k.requant.lookup() if k.requant is not None and k.requant.window \
                    and self.weights == "tables" else None
                if lookup is not None:
                    total += lookup[0].size * (1 if max(map(abs, k.requant.levels)) < 128 else 2) + 4 * k.cout
                elif k.requant is not None:
                    total += _threshold_bytes(k.requant, k.acc_bits)
                if k.logit_bias is not None:
                    total += 5 * k.cout
            elif isinstance(k, Map):
                total += _threshold_bytes(k.thresholds, 32)
        return total

    @property
    def ram_bytes(self) -> int:
        """Peak RAM: the arena plus the largest kernel's stack scratch (the caller's input and
        logits buffers are not counted)."""
        return self.arena_bytes + self.stack_bytes


def _int_bytes(values) -> int:
    top = max((abs(int(v)) for v in values), default=0)
    return 2 if top < 1 << 16 else 4


def _threshold_bytes(t: Thresholds, bits: int) -> int:
    return t.table.size * bits // 8 + 4 * len(t.levels) + t.table.shape[0]


# ---------------------------------------------------------------------------------------------
WEIGHT_FORMATS = ("packed", "tables")


def lower(rt, name: str = "model", weights: str = "packed") -> Program:
    """The program of a loaded bundle: ``rt`` is the reference :class:`~..runtime.Runtime`, whose
    load has proven every shape, kind and range (``rt.facts``); the lowering sizes everything from
    those proofs.

    ``weights="packed"`` keeps the bundle's bit-packed codes in flash (each shift layer decodes an
    output channel's codes when it starts it); ``"tables"`` stores every channel's input offsets
    already grouped by exponent and sign (more flash, no decoding: the host backend's choice)."""
    if weights not in WEIGHT_FORMATS:
        raise ConfigError("weights", weights, " or ".join(map(repr, WEIGHT_FORMATS)))
    check_identifier(name)
    program = _Lowering(rt, name).run()
    program.weights = weights
    return program


def check_identifier(name) -> str:
    """``name`` as the prefix of every generated C identifier and file name: a letter, then letters,
    digits and underscores (no leading underscore: those names are the C library's)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,62}", name):
        raise ConfigError("name", name, "a C identifier of 1 to 63 letters, digits and underscores starting with a "
                          "letter")
    return name


def comment(text: str, limit: int = 64) -> str:
    """``text`` (a bundle's node name) as safe text inside a C comment: letters, digits and ``_ . -
    : [ ] ( ) ,`` kept, everything else (``*/``, ``/*``, ``//``, newlines, ``\\``, ``#``, ``?``,
    non-ASCII, control characters) becomes ``_``; at most ``limit`` characters."""
    safe = "".join(ch if ch in _COMMENT_SAFE else "_" for ch in text[:limit])
    return safe + ("..." if len(text) > limit else "")


_COMMENT_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-:[](), ")


def _float(node: dict, what: str, manifest: dict | None = None) -> str:
    """The refusal of a node that is not an integer kernel: which, why it is float, and what to do."""
    why = next((r for r in float_reasons(manifest) if r.node == node["name"]), None) if manifest else None
    because = f": {why.reason}; how: {why.how}" if why else ""
    return (f"node {node['name']!r} ({node['op']}) {what}{because}. The C backend runs integer ops only "
            "(check_exportable lists every float node with its reason); backend='reference' runs this bundle")


class _Lowering:
    def __init__(self, rt, name):
        self.m, self.t, self.facts, self.name = rt.manifest, rt.tensors, rt.facts, name
        self.nodes = self.m["nodes"]
        self.index = {node["name"]: i for i, node in enumerate(self.nodes)}  # C identifiers number nodes
        self.kernels: list[Kernel] = []
        self.values: dict[str, Tensor] = {}  # node -> its integer tensor
        self.border_need: dict[int, int] = {}  # id(root tensor) -> border its readers need
        self.union: dict[int, int] = {}  # elementwise ops: tensors that share one layout
        self.all: list[Tensor] = []
        self.host_prefix: set[str] = set()  # float nodes between the input and the first layer (codes)

    # ------------------------------------------------------------------ helpers
    def tensor(self, name, dtype, shape, lo, hi) -> Tensor:
        """A planned tensor; every extent at least 1 and its size bounded before any loop is printed."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1 or math.prod(shape) > MAX_ELEMENTS:
            raise CodegenError(f"node {name!r}: shape {list(shape)} is not a (C, H, W) of 1 to {MAX_ELEMENTS} values")
        t = Tensor(name, dtype, shape, int(lo), int(hi))
        self.all.append(t)
        return t

    def cname(self, prefix: str, node: dict) -> str:
        """A kernel's C identifier: made by the generator (the node's index), never from its name."""
        return f"{self.name}_{prefix}_{self.index[node['name']]}"

    def need_border(self, t: Tensor, b: int) -> None:
        key = id(self.find(t))
        self.border_need[key] = max(self.border_need.get(key, 0), b)

    def find(self, t: Tensor) -> Tensor:
        while id(t) in self.union:
            t = self.union[id(t)]
        return t

    def join(self, a: Tensor, b: Tensor) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.union[id(rb)] = ra
            self.border_need[id(ra)] = max(self.border_need.pop(id(rb), 0), self.border_need.get(id(ra), 0))

    def node_range(self, node: dict, lo: int, hi: int) -> tuple[int, int]:
        """The range of a node's values: the one its load proved (``rt.facts``), which the bundle's
        declared range holds; the one derived here where the proof has none."""
        fact = self.facts.get(node["name"])
        return (fact.lo, fact.hi) if fact is not None and fact.is_int else (lo, hi)

    # ------------------------------------------------------------------ the graph
    def run(self) -> Program:
        outputs = self.m["outputs"]
        if len(outputs) != 1:
            raise CodegenError(f"the C backend computes one output; the bundle has {len(outputs)}")
        self.input_node = next(n for n in self.nodes if n["op"] == "input")
        self.input_kind, self.input_layer, self.input = self.lower_input(self.input_node)
        for node in self.nodes:
            if node["op"] == "input" or node["name"] in self.host_prefix:
                continue
            self.lower_node(node)
        out_node = next(n for n in self.nodes if n["name"] == outputs[0])
        last = self.kernels[-1] if self.kernels else None
        if not isinstance(last, ShiftLayer) or last.node != out_node["name"]:
            raise CodegenError(f"output {outputs[0]!r} ({out_node['op']}): the C backend's output is the last shift "
                               "layer's logits")
        output = last.output
        output.offset = -1
        kind = "logits" if last.logit_bias is not None else "accumulators"
        unit = float(out_node["int_output"]["unit"]) if kind == "logits" else None
        self.resolve_layouts()
        program = Program(self.name, self.kernels, self.all, self.input, self.input_kind, self.input_node,
                          self.input_layer, output, kind, out_node, unit)
        for t in self.all:  # with the borders and vector slack the layout added
            if t.elems + t.slack > MAX_ELEMENTS:
                raise CodegenError(f"node {t.name!r}: its planes with their zero borders hold {t.elems + t.slack} "
                                   f"values, beyond {MAX_ELEMENTS} (a padding too large for the C layout)")
        program.arena_bytes = self.plan(program)
        if program.arena_bytes >= 1 << 31:
            raise CodegenError(f"the arena would take {program.arena_bytes} bytes (at most 2^31 - 1)")
        program.stack_bytes = max((_stack_bytes(k) for k in self.kernels), default=0)
        return program

    def lower_input(self, node: dict):
        shape = node["shape"]
        if len(shape) == 1:
            shape = [shape[0], 1, 1]
        if len(shape) != 3:
            raise CodegenError(f"input shape {shape}: the C backend takes (C, H, W) or (features,)")
        if node.get("pixels"):
            scale = int(node["pixels"]["scale"])
            t = self.tensor(node["name"], dtype_for(0, scale), shape, 0, scale)
            self.values[node["name"]] = t
            return "pixels", None, t
        # Float input: the host quantizes it for the first shift layer (through flattens).
        cur = node
        while True:
            consumers = [n for n in self.nodes if cur["name"] in n["inputs"]]
            if len(consumers) != 1:
                raise CodegenError(_float(node, "is read as float values by several nodes", self.m))
            nxt = consumers[0]
            if nxt["op"] in ("flatten", "identity"):
                self.host_prefix.add(nxt["name"])
                cur = nxt
                continue
            if not nxt["op"].startswith("shift_") or nxt.get("input_thresholds") is not None \
                    or nxt["input_quantizer"]["policy"] != "learned_pot":
                raise CodegenError(_float(nxt, "reads float input", self.m))
            break
        if cur is not node:  # through a flatten: the layer sees a vector
            shape = [int(np.prod(shape)), 1, 1]
        levels = self.level_ints(nxt["input_quantizer"])
        lo, hi = min(levels), max(levels)
        t = self.tensor(node["name"], dtype_for(lo, hi), shape, lo, hi)
        self.values[cur["name"]] = t
        self.first_layer = nxt["name"]
        return "codes", nxt, t

    @staticmethod
    def level_ints(spec: dict) -> list[int]:
        q = spec["quantizer"]
        return [int(round(v / q["resolution"])) for v in q["levels"]]

    def lower_node(self, node: dict) -> None:
        op = node["op"]
        args = [self.values.get(i) for i in node["inputs"]]
        if op.startswith("shift_"):
            self.shift_layer(node, args[0])
            return
        if any(a is None for a in args):
            raise CodegenError(_float(node, "computes in float32", self.m))
        x = args[0]
        if op in ("flatten", "identity"):
            self.values[node["name"]] = self.reshape(node, x)
        elif op == "relu":
            lo, hi = self.node_range(node, max(x.lo, 0), max(x.hi, 0))
            out = self.tensor(node["name"], dtype_for(lo, hi), x.shape, lo, hi)
            self.join(x, out)
            self.emit(Relu(self.cname("relu", node), node["name"], [x], out))
        elif op == "add" and node.get("shifts") is not None and len(args) == 2:
            a, b = args
            s0, s1 = (int(v) for v in node["shifts"])
            if a.shape != b.shape:
                raise CodegenError(f"node {node['name']!r} (add): shapes {a.shape} and {b.shape} differ")
            ends = [(u << s0) + (v << s1) for u in (a.lo, a.hi) for v in (b.lo, b.hi)]
            lo, hi = self.node_range(node, min(ends), max(ends))
            out = self.tensor(node["name"], dtype_for(lo, hi), a.shape, lo, hi)
            self.join(a, out)
            self.join(b, out)
            self.emit(Add(self.cname("add", node), node["name"], [a, b], out, shifts=(s0, s1)))
        elif op == "max_pool2d":
            k, s = pair(node["kernel_size"]), pair(node["stride"] or node["kernel_size"])
            p, d = pair(node["padding"]), pair(node["dilation"])
            c, h, w = x.shape
            ho, wo = (_pool_out(h, k[0], s[0], p[0], d[0], node["ceil_mode"]),
                      _pool_out(w, k[1], s[1], p[1], d[1], node["ceil_mode"]))
            lo, hi = self.node_range(node, x.lo, x.hi)
            out = self.tensor(node["name"], dtype_for(lo, hi), (c, ho, wo), lo, hi)
            self.emit(MaxPool(self.cname("maxpool", node), node["name"], [x], out, kernel=k, stride=s, padding=p,
                              dilation=d))
        elif op == "adaptive_avg_pool2d" and node.get("integer"):
            c, h, w = x.shape
            lo, hi = self.node_range(node, x.lo * h * w, x.hi * h * w)
            out = self.tensor(node["name"], dtype_for(lo, hi), (c, 1, 1), lo, hi)
            self.emit(GlobalSum(self.cname("sum", node), node["name"], [x], out))
        elif op == "avg_pool2d" and node.get("integer"):
            if any(pair(node["padding"])):
                raise CodegenError(f"node {node['name']!r} (avg_pool2d): an integer window sum over padding is not "
                                   "implemented by the C backend: use backend='reference', or pool without padding")
            k, s = pair(node["kernel_size"]), pair(node["stride"] or node["kernel_size"])
            c, h, w = x.shape
            lo, hi = self.node_range(node, x.lo * k[0] * k[1], x.hi * k[0] * k[1])
            out = self.tensor(node["name"], dtype_for(lo, hi), (c, (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1),
                              lo, hi)
            self.emit(WindowSum(self.cname("winsum", node), node["name"], [x], out, kernel=k, stride=s))
        elif node["dtype"] != "float32":
            raise CodegenError(f"node {node['name']!r} ({op}) moves integers in a way the C backend does not "
                               "implement (reshape, permute, index and expand run in the reference runtime): use "
                               "backend='reference'")
        else:
            raise CodegenError(_float(node, "computes in float32", self.m))

    def emit(self, kernel: Kernel) -> None:
        self.kernels.append(kernel)
        self.values[kernel.node] = kernel.output

    def reshape(self, node: dict, x: Tensor) -> Tensor:
        """flatten / identity: a view of the same memory (a copy when the input has a border, which
        :meth:`resolve_layouts` decides once every border is known)."""
        if node["op"] == "identity":
            return x
        start = node.get("start_dim", 1)
        if start not in (1, -3) or node.get("end_dim", -1) != -1:
            raise CodegenError(f"node {node['name']!r} (flatten): only flatten(1) is supported")
        out = self.tensor(node["name"], x.dtype, (int(np.prod(x.shape)), 1, 1), x.lo, x.hi)
        self.kernels.append(Copy(self.cname("flatten", node), node["name"], [x], out))
        return out

    # ------------------------------------------------------------------ shift layers
    def layer_input(self, node: dict, x: Tensor | None) -> Tensor:
        """The tensor of this layer's input integers (a Map kernel for ``input_thresholds``)."""
        if node.get("input_codes"):
            if x is None:
                raise CodegenError(_float(node, "expects integer codes but its input is float", self.m))
            return x
        if node.get("input_thresholds") is not None:
            if x is None:
                raise CodegenError(_float(node, "has input thresholds but its input is float", self.m))
            table = self.thresholds(node["input_thresholds"])  # (L-1, K)
            channels = x.shape[0]
            if table.shape[1] not in (1, channels):
                raise CodegenError(f"node {node['name']!r}: input_thresholds has {table.shape[1]} columns for "
                                   f"{channels} channels")
            table = table.T  # (1 or channels, L-1)
            levels = self.level_ints(node["input_quantizer"])
            table = np.clip(table, x.lo, x.hi + 1)
            out = self.tensor(f"{node['name']}.in", dtype_for(min(levels), max(levels)), x.shape, min(levels),
                              max(levels))
            self.kernels.append(Map(self.cname("in", node), node["name"], [x], out,
                                    thresholds=Thresholds(np.ascontiguousarray(table), levels)))
            return out
        if self.input_kind == "codes" and node["name"] == self.first_layer:
            return x
        raise CodegenError(_float(node, "quantizes its input in float (no input_codes or input_thresholds)", self.m))

    def shift_layer(self, node: dict, x: Tensor | None) -> None:
        if node.get("weight_offset"):
            raise CodegenError(f"node {node['name']!r}: weight_offset (weight_keep_mean) is not supported by the C "
                               "backend")
        a = self.layer_input(node, x)
        spec = node["weight_quantizer"]
        ints = [int(round(v / spec["resolution"])) for v in spec["levels"]]
        shape = node["weight_shape"]
        codes = self.codes_of(node, int(np.prod(shape)))
        if codes.size and int(codes.max()) >= len(ints):  # the load refused it already; the C reads a table by it
            raise CodegenError(f"node {node['name']!r}: weight code {int(codes.max())} has no level")
        w = np.asarray(ints, dtype=np.int64)[codes].reshape(shape)
        conv = node["op"] == "shift_conv2d"
        if conv:
            cout, cin_g, kh, kw = w.shape
            stride, padding = pair(node["stride"]), pair(node["padding"])
            dilation, groups = pair(node["dilation"]), int(node["groups"])
            c, h, wd = a.shape
            ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
            wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        else:
            cout, cin_g = w.shape
            kh = kw = 1
            stride, padding, dilation, groups = (1, 1), (0, 0), (1, 1), 1
            c, ho, wo = int(np.prod(a.shape)), 1, 1
            if a.shape[1:] != (1, 1):
                raise CodegenError(f"node {node['name']!r}: a linear layer reads a flattened vector")
        if c != cin_g * groups or ho < 1 or wo < 1:
            raise CodegenError(f"node {node['name']!r}: input {a.shape} does not fit weights {list(w.shape)}")
        self.need_border(a, max(padding))
        # Weights: codes as stored, and what each code is (±2^t or 0).
        shifts = [-1 if v == 0 else int(abs(v)).bit_length() - 1 for v in ints]
        if any(v != 0 and abs(v) != 1 << s for v, s in zip(ints, shifts)):
            raise CodegenError(f"node {node['name']!r}: weights are not powers of two")
        used = sorted({s for s in (shifts[i] for i in np.unique(codes)) if s >= 0},
                      reverse=True)
        # The decoder reads 2 bytes per code (3 beyond 9 bits): zero bytes past the end.
        packed = np.concatenate([np.asarray(self.t[node["weight_codes"]], dtype=np.uint8), np.zeros(3, np.uint8)])
        # Accumulator width from the weights and the input range (bias included with integer logits).
        top = max(abs(a.lo), abs(a.hi))
        bound = int(np.abs(w.reshape(cout, -1)).sum(1).max()) * top if w.size else 0
        kernel = ShiftLayer(self.cname("shift", node), node["name"], [a], None, cout=cout, groups=groups,
                            cin_g=cin_g, kernel=(kh, kw), stride=stride, padding=padding, dilation=dilation,
                            out_hw=(ho, wo), codes=packed, code_bits=int(spec["code_bits"]), code_shift=shifts,
                            code_negative=[v < 0 for v in ints], exponents=used, bound=bound,
                            weight_codes=codes.reshape(cout, -1))
        if node.get("requant"):
            r = node["requant"]
            kernel.acc_bits = 16 if bound < (1 << 15) - 1 else 32
            table = self.thresholds(r["thresholds"]).T  # (C, L-1)
            direction = np.asarray(self.t[r["direction"]]).reshape(-1)
            table = np.clip(table, -bound, bound + 1)
            levels = [int(v) for v in r["levels"]]
            kernel.requant = Thresholds(np.ascontiguousarray(table), levels, [bool(d < 0) for d in direction])
            lo, hi = self.node_range(node, min(levels), max(levels))
        elif node.get("int_output"):
            io = node["int_output"]
            bias = (np.asarray(self.t[io["bias"]], dtype=np.int64).reshape(-1) if io.get("bias")
                    else np.zeros(cout, np.int64))
            shift = np.asarray(self.t[io["shift"]], dtype=np.int64).reshape(-1)
            kernel.acc_bits = 32
            kernel.logit_bias, kernel.logit_shift = bias.tolist(), shift.tolist()
            ends = [(bound + abs(int(b))) << int(s) for b, s in zip(bias, shift)]
            lo, hi = -max(ends), max(ends)
            if hi >= 1 << 31:
                raise CodegenError(f"node {node['name']!r}: integer logits up to {hi} do not fit 32 bits")
        else:  # the host dequantizes the accumulators
            kernel.acc_bits = 32
            lo, hi = -bound, bound
        if bound >= 1 << 31:
            raise CodegenError(f"node {node['name']!r}: accumulator bound {bound} does not fit 32 bits")
        out_dtype = "int32" if not node.get("requant") else dtype_for(lo, hi)
        kernel.output = self.tensor(node["name"], out_dtype, (cout, ho, wo), lo, hi)
        self.emit(kernel)

    def thresholds(self, key: str) -> np.ndarray:
        """A threshold table, stored as its first row then the differences between rows."""
        return np.cumsum(np.asarray(self.t[key], dtype=np.int64), axis=0)

    def codes_of(self, node: dict, count: int) -> np.ndarray:
        from ..bundle import unpack_codes
        return unpack_codes(np.asarray(self.t[node["weight_codes"]]), int(node["weight_quantizer"]["code_bits"]),
                            count)

    # ------------------------------------------------------------------ layout and memory
    def resolve_layouts(self) -> None:
        for t in self.all:
            t.border = self.border_need.get(id(self.find(t)), 0)
        # Images of one size share one border, so that a stride-1 convolution's input and output
        # rows have one length and it runs as one long vector segment (``layer_geometry``).
        widest: dict[tuple[int, int], int] = {}
        for t in self.all:
            if t.shape[1:] != (1, 1):
                widest[t.shape[1:]] = max(widest.get(t.shape[1:], 0), t.border)
        for t in self.all:
            if t.shape[1:] != (1, 1):
                t.border = widest[t.shape[1:]]
        kept = []
        for k in self.kernels:
            if isinstance(k, Copy) and k.inputs[0].border == 0:
                k.output.alias_of = k.inputs[0]  # a flatten of a borderless tensor is a view
                continue
            kept.append(k)
        self.kernels[:] = kept
        kernels = []
        for k in self.kernels:
            if isinstance(k, ShiftLayer):
                kernels += self.layer_geometry(k)
            kernels.append(k)
        self.kernels[:] = kernels

    def layer_geometry(self, k: ShiftLayer) -> list[Kernel]:
        """Where each output position reads its taps; returns the kernels that must run first (a
        stride-2 convolution reads its input split into phases)."""
        a, out = k.inputs[0], k.output
        kh, kw = k.kernel
        (sh, sw), (ph, pw), (dh, dw) = k.stride, k.padding, k.dilation
        ho, wo = k.out_hw
        bi, bo = a.border, out.border
        first = bo * out.row + bo
        last = (bo + ho - 1) * out.row + bo + wo
        before: list[Kernel] = []
        if (sh, sw) == (1, 1) and a.row == out.row:
            # One segment over the output plane, rows and borders between them included (the
            # border positions are computed, then cleared): long vectors on small images.
            k.tap_offsets = [ci * a.plane + y * dh * a.row + x * dw
                             for ci in range(k.cin_g) for y in range(kh) for x in range(kw)]
            delta = (bi - ph - bo) * a.row + (bi - pw - bo)
            k.segments = (1, last - first, first, 0, first + delta)
            k.in_step, k.x_step = 0, 1
        elif (sh, sw) == (2, 2) and (dh, dw) == (1, 1):
            # Stride 2: the input split into its (row, column) parity phases, each laid out on the
            # output's grid; tap (y, x) reads phase (y % 2, x % 2) shifted by (y // 2, x // 2).
            used = sorted({(y % 2, x % 2) for y in range(kh) for x in range(kw)})
            rows = bo + ho + (kh - 1) // 2 + 1
            row = max(out.row, bo + wo + (kw - 1) // 2)  # the output's row, unless a tap would wrap
            split = Split(f"{self.name}_phases_{self.index[k.node]}", k.node, [a], None, phases=used,
                          padding=(ph, pw), out_border=bo)
            split.output = self.tensor(f"{k.node}.phases", a.dtype, (len(used) * a.shape[0], rows, row),
                                       a.lo, a.hi)
            t = split.output
            k.inputs = [t]
            k.tap_offsets = [(used.index((y % 2, x % 2)) * a.shape[0] + ci) * t.plane + (y // 2) * t.row + x // 2
                             for ci in range(k.cin_g) for y in range(kh) for x in range(kw)]
            if row == out.row:
                k.segments = (1, last - first, first, 0, first)
                k.in_step = 0
            else:
                k.segments = (ho, wo, first, out.row, bo * row + bo)
                k.in_step = row
            k.x_step = 1
            a = t
            before.append(split)
        else:
            if sw & (sw - 1):
                raise CodegenError(f"node {k.node!r}: stride {sw} along a row is not supported by the C backend "
                                   "(1 or powers of two)")
            k.tap_offsets = [ci * a.plane + y * dh * a.row + x * dw
                             for ci in range(k.cin_g) for y in range(kh) for x in range(kw)]
            k.segments = (ho, wo, first, out.row, (bi - ph) * a.row + (bi - pw))
            k.in_step, k.x_step = sh * a.row, sw
        if a.itemsize == 1:  # byte inputs: runs of taps whose sum provably fits a byte
            top, limit = (a.hi, 255) if a.lo >= 0 else (max(-a.lo, a.hi), 127)
            k.narrow_run = limit // max(top, 1) if limit // max(top, 1) >= 4 else 0
        seg_len = k.segments[1]
        k.chunk = min(CHUNK, 1 << max(0, (seg_len - 1).bit_length()))
        a.root.slack = max(a.root.slack, k.chunk * k.x_step + 1)
        return before

    def plan(self, program: Program) -> int:
        """Greedy arena plan: largest tensors first, each at the lowest offset free during its life."""
        order = {id(t): i for i, t in enumerate(self.all)}
        life: dict[int, list[int]] = {}
        roots: dict[int, Tensor] = {}

        def touch(t: Tensor, step: int) -> None:
            r = t.root
            roots[id(r)] = r
            span = life.setdefault(id(r), [step, step])
            span[0], span[1] = min(span[0], step), max(span[1], step)

        touch(self.input, -1)
        for i, k in enumerate(self.kernels):
            for t in k.inputs:
                touch(t, i)
            touch(k.output, i)
        placed: list[tuple[int, int, int, int]] = []  # offset, end, first, last
        arena = 0
        for r in sorted(roots.values(), key=lambda t: (-t.nbytes, order[id(t)])):
            if r is program.output:
                continue
            first, last = life[id(r)]
            size = -(-r.nbytes // ALIGN) * ALIGN
            offset = 0
            for o, e, f, l in sorted(placed):
                if l < first or f > last:
                    continue  # not alive at the same time
                if offset + size <= o:
                    break
                offset = max(offset, e)
            r.offset = offset
            placed.append((offset, offset + size, first, last))
            arena = max(arena, offset + size)
        return arena


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _stack_bytes(k: Kernel) -> int:
    """Scratch a kernel keeps on the stack (an upper bound): a shift layer's decoded tap lists and
    group starts (packed weights) and its vector blocks (accumulators, byte sums, output stage)."""
    if not isinstance(k, ShiftLayer):
        return 0
    return k.taps * (_int_bytes(k.tap_offsets) + 1) + 4 * (2 * k.groups_count + 3) + 13 * k.chunk
