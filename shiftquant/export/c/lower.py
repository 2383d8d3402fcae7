"""Lowering: a bundle's manifest -> a short list of integer kernels over statically planned buffers.

This module and :mod:`.tokens` (the kernels over whole tensors: moves, matmuls, shiftmax, integer
LayerNorm) are the only part of the C backend that reads manifest fields. The lowering checks that
every node is an integer kernel the C code implements (refusing a float op by name), resolves every
shape, type and constant, lays each activation tensor out as channel planes (tokens as (N, 1, D))
with a zero border wide enough for the convolutions that read it, and plans one arena: each tensor gets a byte offset, tensors whose
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
from collections import Counter

import numpy as np

from ...errors import CodegenError, ConfigError
from .. import ops
from ..format.values import pair
from ..graph.reasons import float_reasons
from ..ops.schema import MAX_ELEMENTS, is_int
from . import tokens
from .arena import plan_arena
from .emit_few import sums_bytes
from .emit_lanes import lanes_bytes
from .gather import storage_shape
from .layout import resolve_layouts
from .program import (
    CHUNK,
    COUNT_LANES,
    MAX_CHUNK,
    SEARCH_BUCKETS,
    Add,
    Concat,
    GateShift,
    GlobalSum,
    Kernel,
    Lookup,
    Map,
    MaxPool,
    Program,
    ShiftLayer,
    Tensor,
    Thresholds,
    Unary,
    WindowSum,
    dtype_for,
    int_bytes,
    pack_deltas,
)

# The C kernels an op's lowering names (:class:`.ops.schema.CStep`), with their identifiers' prefix.
_KERNELS = {"unary": (Unary, None), "add": (Add, "add"), "maxpool": (MaxPool, "maxpool"),
            "global_sum": (GlobalSum, "sum"), "window_sum": (WindowSum, "winsum"),
            "lookup": (Lookup, "lookup"), "gate_shift": (GateShift, "gate"), "concat": (Concat, "cat")}

# Kernels over whole tensors (:mod:`.tokens`): ``f(lowering, node, args, out, **params)``.
_BUILDERS = {"gather": tokens.gather, "matmul": tokens.matmul, "shiftmax": tokens.shiftmax,
             "layer_norm": tokens.layer_norm}

# ---------------------------------------------------------------------------------------------
WEIGHT_FORMATS = ("packed", "tables", "lists")
BORDERS = ("shared", "minimal")
DELTA_MIN = 32  # thresholds per channel from which packed weights store them delta-packed


def lower(rt, name: str = "model", weights: str = "packed", borders: str = "shared", chunk: int = CHUNK) -> Program:
    """The program of a loaded bundle: ``rt`` is the reference :class:`~..runtime.Runtime`, whose
    load has proven every shape, kind and range (``rt.facts``); the lowering sizes everything from
    those proofs.

    ``weights="packed"`` keeps the bundle's bit-packed codes in flash (each shift layer decodes an
    output channel's codes when it starts it); ``"tables"`` stores every channel's input offsets
    already grouped by exponent and sign (more flash, no decoding: the host backend's choice), and
    a requantization onto many levels as a level table over the accumulator's values; ``"lists"``
    the same offsets with the thresholds as they are, no level tables (a fraction of the tables'
    bytes, and of their compile time, for a large model: the host backend's choice beyond
    :data:`.backend.TABLES_UP_TO` up to :data:`.backend.LISTS_UP_TO`, :data:`.backend.HOST_FORMATS`).

    ``borders="shared"`` gives every image of one size the widest zero border any of them needs, so
    that a stride-1 convolution runs over a whole plane as one vector segment (fastest with vector
    units: the host); ``"minimal"`` gives a border only to what a padded convolution reads (least
    RAM and fewest instructions on a scalar core: a microcontroller).

    ``chunk``: the most output positions a shift layer's vector block holds (a power of two, 4 to
    :data:`.program.MAX_CHUNK`): :data:`.program.CHUNK` suits a microcontroller's stack; the host
    backend takes :data:`.program.HOST_CHUNK` (fewer list reads per position)."""
    if weights not in WEIGHT_FORMATS:
        raise ConfigError("weights", weights, " or ".join(map(repr, WEIGHT_FORMATS)))
    if borders not in BORDERS:
        raise ConfigError("borders", borders, " or ".join(map(repr, BORDERS)))
    if not is_int(chunk) or chunk < 4 or chunk > MAX_CHUNK or chunk & (chunk - 1):
        raise ConfigError("chunk", chunk, f"a power of two from 4 to {MAX_CHUNK}")
    check_identifier(name)
    return _Lowering(rt, name, weights, borders, chunk).run()


def check_identifier(name) -> str:
    """``name`` as the prefix of every generated C identifier and file name: a letter, then letters,
    digits and underscores (no leading underscore: those names are the C library's)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,62}", name):
        raise ConfigError("name", name, "a C identifier of 1 to 63 letters, digits and underscores starting with a "
                          "letter")
    return name


def _float(node: dict, what: str, manifest: dict | None = None) -> str:
    """The refusal of a node that is not an integer kernel: which, why it is float, and what to do."""
    why = next((r for r in float_reasons(manifest) if r.node == node["name"]), None) if manifest else None
    because = f": {why.reason}; how: {why.how}" if why else ""
    return (f"node {node['name']!r} ({node['op']}) {what}{because}. The C backend runs integer ops only "
            "(check_exportable lists every float node with its reason); backend='reference' runs this bundle")


class _Lowering:
    def __init__(self, rt, name, weights="packed", borders="shared", chunk=CHUNK):
        self.m, self.t, self.facts, self.name, self.weights = rt.manifest, rt.tensors, rt.facts, name, weights
        self.borders, self.chunk = borders, chunk
        self.nodes = self.m["nodes"]
        self.index = {node["name"]: i for i, node in enumerate(self.nodes)}  # C identifiers number nodes
        self.kernels: list[Kernel] = []
        self.values: dict[str, Tensor] = {}  # node -> its integer tensor
        self.border_need: dict[int, int] = {}  # id(root tensor) -> border its readers need
        self.union: dict[int, int] = {}  # elementwise ops: tensors that share one layout
        self.all: list[Tensor] = []
        self.host_prefix: set[str] = set()  # float nodes between the input and the first layer (codes)
        self.readers = Counter(i for node in self.nodes for i in node["inputs"])  # node -> inputs naming it

    # ------------------------------------------------------------------ helpers
    def tensor(self, name, dtype, shape, lo, hi, full=None) -> Tensor:
        """A planned tensor; every extent at least 1 and its size bounded before any loop is printed."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1 or math.prod(shape) > MAX_ELEMENTS:
            raise CodegenError(f"node {name!r}: shape {list(shape)} is not a (C, H, W) of 1 to {MAX_ELEMENTS} values")
        t = Tensor(name, dtype, shape, int(lo), int(hi), full=None if full is None else tuple(full))
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
        resolve_layouts(self)
        program = Program(self.name, self.kernels, self.all, self.input, self.input_kind, self.input_node,
                          self.input_layer, output, kind, out_node, unit, self.weights, self.chunk)
        for t in self.all:  # with the borders and vector slack the layout added
            if t.elems + t.slack > MAX_ELEMENTS:
                raise CodegenError(f"node {t.name!r}: its planes with their zero borders hold {t.elems + t.slack} "
                                   f"values, beyond {MAX_ELEMENTS} (a padding too large for the C layout)")
        program.arena_bytes = plan_arena(self.all, self.kernels, self.input, program.output)
        if program.arena_bytes >= 1 << 31:
            raise CodegenError(f"the arena would take {program.arena_bytes} bytes (at most 2^31 - 1)")
        program.stack_bytes = max((_stack_bytes(k, self.weights) for k in self.kernels), default=0)
        return program

    def lower_input(self, node: dict):
        shape = node["shape"]
        if len(shape) == 1:
            shape = [shape[0], 1, 1]
        if len(shape) != 3:
            raise CodegenError(f"input shape {shape}: the C backend takes (C, H, W) or (features,)")
        if node.get("pixels"):
            scale = int(node["pixels"]["scale"])
            t = self.tensor(node["name"], dtype_for(0, scale), shape, 0, scale, full=(1, *node["shape"]))
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
        """A node through its op's C lowering (:attr:`.ops.OpDef.c`); none, or float inputs: refused."""
        definition = ops.get(node["op"])
        args = [self.values.get(i) for i in node["inputs"]]
        if definition.c == "shift_layer":
            self.shift_layer(node, args[0])
            return
        if any(a is None for a in args):
            raise CodegenError(_float(node, "computes in float32", self.m))
        step = definition.c(node, args) if definition.c is not None else None
        if step is None:
            if node["dtype"] != "float32":
                raise CodegenError(f"node {node['name']!r} ({node['op']}): the C backend has no kernel for these "
                                   "integers; backend='reference' runs this bundle")
            raise CodegenError(_float(node, "computes in float32", self.m))
        if step.kernel == "alias":
            self.values[node["name"]] = args[0]
            return
        fact = self.facts[node["name"]]
        if not fact.is_int:
            raise CodegenError(_float(node, "computes in float32", self.m))
        full = tokens.full_shape(node, fact.shape)
        out = self.tensor(node["name"], dtype_for(fact.lo, fact.hi), storage_shape(full, node.get("batch_dim", 0)),
                          fact.lo, fact.hi, full=full)
        if step.in_place:
            for a in args:
                self.join(a, out)
        if step.kernel == "constant":
            tokens.constant(self, node, out)
            return
        if step.kernel in _BUILDERS:
            _BUILDERS[step.kernel](self, node, args, out, **step.params)
            return
        if step.kernel == "unary" and self.fuse_into_add(node, args[0], out, step.params["expr"]):
            return
        kernel, prefix = _KERNELS[step.kernel]
        params = {**step.params, **{k: self.t[key] for k, key in step.tensors.items()}}  # checked at load
        self.emit(kernel(self.cname(prefix or node["op"], node), node["name"], args, out, **params))

    def fuse_into_add(self, node: dict, x: Tensor, out: Tensor, expr: str) -> bool:
        """A ReLU or clamp that is the only reader of the add just emitted becomes that add's
        ``expr``: the sum, often wider than either, is never stored."""
        last = self.kernels[-1] if self.kernels else None
        if not isinstance(last, Add) or last.output is not x or last.expr != "x" or self.readers.get(last.node) != 1:
            return False
        self.all.remove(x)
        last.output, last.expr = out, expr
        self.values[node["name"]] = out
        return True

    def emit(self, kernel: Kernel) -> None:
        self.kernels.append(kernel)
        self.values[kernel.node] = kernel.output

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
            # The levels its inputs reach (rows ascend, the loader's check): as the reference's proof
            # has them (a ReLU's output never reaches the levels below 0: unsigned bytes, longer runs).
            lo, hi = levels[int((table <= x.lo).sum(1).min())], levels[int((table <= x.hi).sum(1).max())]
            out = self.tensor(f"{node['name']}.in", dtype_for(lo, hi), x.shape, lo, hi)
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
        tokens_n = 0
        if node["op"] == "shift_linear" and x is not None and x.shape[1:] != (1, 1):
            x, tokens_n = tokens.linear_over_tokens(self, node, x, int(node["weight_shape"][1]))
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
            c, ho, wo = (cin_g, 1, tokens_n) if tokens_n else (int(np.prod(a.shape)), 1, 1)
            if a.shape[1:] != (1, 1) and not tokens_n:
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
            raw = self.thresholds(r["thresholds"]).T  # (C, L-1)
            direction = np.asarray(self.t[r["direction"]]).reshape(-1)
            table = np.clip(raw, -bound, bound + 1)
            levels = [int(v) for v in r["levels"]]
            kernel.requant = Thresholds(np.ascontiguousarray(table), levels, [bool(d < 0) for d in direction],
                                        _packed_thresholds(raw, bound, self.weights))
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
        if bound >= (1 << 31) - 1:  # the thresholds clamp to bound + 1, an int32
            raise CodegenError(f"node {node['name']!r}: accumulator bound {bound} does not fit 32 bits")
        out_dtype = "int32" if not node.get("requant") else dtype_for(lo, hi)
        kernel.output = self.tensor(node["name"], out_dtype, (cout, ho, wo), lo, hi)
        self.emit(kernel)
        if tokens_n:
            tokens.tokens_back(self, node, kernel.output, self.facts[node["name"]])

    def thresholds(self, key: str) -> np.ndarray:
        """A threshold table, stored as its first row then the differences between rows."""
        return np.cumsum(np.asarray(self.t[key], dtype=np.int64), axis=0)

    def codes_of(self, node: dict, count: int) -> np.ndarray:
        from ..format.bundle import unpack_codes
        return unpack_codes(np.asarray(self.t[node["weight_codes"]]), int(node["weight_quantizer"]["code_bits"]),
                            count)


def _packed_thresholds(raw: np.ndarray, bound: int, weights: str):
    """A requantization's many thresholds packed for packed weights (:func:`.program.pack_deltas`)."""
    return pack_deltas(raw, -bound, bound + 1) if weights == "packed" and raw.shape[1] >= DELTA_MIN else None


def _stack_bytes(k: Kernel, weights: str) -> int:
    """Scratch a kernel keeps on the stack (an upper bound): a shift layer's decoded tap lists and
    group starts or its sums per code and position, its delta-packed thresholds (packed weights), and its vector blocks
    (accumulators, byte sums, output stage); in the DSP form also a block's lane words, its
    levels, the lane thresholds and the helpers' saved registers (:mod:`.emit_dsp`). The group
    starts are 4 bytes each, the fill pointers 8 (a 64-bit host's; 4 on a Cortex-M). Or the channel
    lanes' form's (:mod:`.emit_lanes`) where the layer has it and that is larger: whatever the
    target, so on cores that never compile that form the bound is loose, not short."""
    if not isinstance(k, ShiftLayer):
        return 0
    decoded = (4 * k.requant.count if weights == "packed" and k.requant is not None and k.requant.deltas is not None
               else 0)
    block = max(CHUNK, k.chunk)  # a tile (at most DSP_WORDS words, within CHUNK) or a block of chunk positions
    dsp = 2 * block + k.output.itemsize * block + 8 * COUNT_LANES + SEARCH_BUCKETS + 64 if k.dsp_form else 0
    general = (k.taps * (int_bytes(k.tap_offsets) + 1) + 4 * (k.groups_count + 2) + 8 * (k.groups_count + 1) + 13 * k.chunk
               + decoded + dsp + sums_bytes(k, weights))
    return max(general, lanes_bytes(k, weights))
