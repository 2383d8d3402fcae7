"""An op definition, its manifest fields, and the registry every part of export dispatches through.

An op is defined once (:class:`OpDef`), in the module of its family: the fields its manifest entry
carries (:class:`Field`: type, limits, meaning; the loader validates them and ``docs/bundle.md``
lists them), how many inputs it reads, its float kernel (PyTorch's, which also gives its shapes
on meta tensors), its integer kernel and range rule when it has an integer form, its sign rule,
its ONNX mapping and its multiply-accumulate count. The runtime, the load-time proof, ``summary``
and the docs look an op up by name (:func:`get`); nothing else knows which ops exist.

A rule (integer kernel, range rule, check) takes the loaded bundle ``rt`` first: it reads tensors
with ``rt.tensor(key)`` and refuses with ``rt.fail(node, why)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from shiftquant.errors import ExportError

MAX_RANK = 8  # dimensions of any value
MAX_ELEMENTS = 1 << 24  # values per example of any one node (a 224 px ResNet-18 needs 802,816)
MAX_INT = 1 << 16  # the bound of an integer field (strides, paddings, windows), unless its Field says more
FLOAT32_MAX = float(np.finfo(np.float32).max)
NOT_YET = "not supported yet: no integer form of this op in the exporter (tracked by the integer-only work)"


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def small_dim(v) -> bool:
    """A dimension index of a value of at most :data:`MAX_RANK` dimensions (negative from the end)."""
    return is_int(v) and -MAX_RANK <= v < MAX_RANK


@dataclass(frozen=True)
class Field:
    """One manifest field of an op: ``kind`` names its validator (:data:`KINDS`), ``doc`` its meaning.

    ``count``: how many integers an ``ints`` field holds (one integer stands for ``count`` equal
    ones); ``low``: the least value of a number or of each integer; ``high``: the bound (excluded)
    of each integer; ``optional``: may be absent or null; ``choices``: the values a ``choice`` field
    allows."""

    name: str
    kind: str
    doc: str
    count: int = 1
    low: float = 0
    high: int = MAX_INT
    optional: bool = False
    choices: tuple = ()

    def check(self, rt, node: dict) -> None:
        value = node.get(self.name)
        if value is None and self.optional:
            return
        KINDS[self.kind](rt, node, self, value)

    @property
    def limits(self) -> str:
        """The type and limits, in words (the docs' table)."""
        text = {"ints": f"{self.count} integer{'s' if self.count > 1 else ''} {int(self.low)}..{self.high - 1}",
                "number": f"number >= {self.low:g}" if self.low > -FLOAT32_MAX else "number",
                "flag": "true / false", "choice": " / ".join(f"`{c}`" for c in self.choices),
                "dim": "dimension", "dims": "list of dimensions, not the batch", "tensor": "tensor name",
                "shape": "list of sizes, -1 for the batch", "perm": "permutation", "index": "index items",
                "pads": f"2, 4 or 6 widths 0..{MAX_INT - 1}", "sizes": f"list of 1 to {MAX_RANK} integers 1..{MAX_ELEMENTS}", "quantizer": "quantizer",
                "act_quantizer": "activation quantizer", "pixels": "pixels", "requant": "requant table",
                "int_output": "int_output table", "table": "threshold table name",
                "shift_list": "one integer 0..30 per input",
                "batch_dim": "dimension or null", "bound": "integer >= 0",
                "int_pair": "[lo, hi], integers or null"}[self.kind]
        return text + (", optional" if self.optional else "")


def _ints(rt, node, f: Field, v) -> None:
    rt.ints(node, v, f.name, f.count, int(f.low), f.high)


def _number(rt, node, f: Field, v) -> None:
    rt.number(node, v, f.name, f.low)


def _flag(rt, node, f: Field, v) -> None:
    if not isinstance(v, bool):
        rt.fail(node, f"{f.name} must be true or false")


def _choice(rt, node, f: Field, v) -> None:
    if v not in f.choices:
        rt.fail(node, f"{f.name} must be one of {', '.join(repr(c) for c in f.choices)}")


def _dim(rt, node, f: Field, v) -> None:
    if not small_dim(v) or f.low >= 1 and v % MAX_RANK == 0:
        rt.fail(node, f"{f.name} must be a small integer" + (" other than the batch dimension" if f.low >= 1 else ""))


def _dims(rt, node, f: Field, v) -> None:
    if not isinstance(v, list) or not v or not all(small_dim(d) and d % MAX_RANK >= 1 for d in v):
        rt.fail(node, f"{f.name} must be a non-empty list of dimensions other than the batch")


def _tensor(rt, node, f: Field, v) -> None:
    rt.tensor(v)


def _shape(rt, node, f: Field, v) -> None:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_RANK or not all(is_int(s) and (s >= 0 or s == -1) for s in v) \
            or v.count(-1) > 1:
        rt.fail(node, f"{f.name} must be up to {MAX_RANK} sizes, -1 where the batch goes")


def _perm(rt, node, f: Field, v) -> None:
    if not isinstance(v, list) or not all(is_int(d) for d in v) or sorted(v) != list(range(len(v))) \
            or len(v) > MAX_RANK:
        rt.fail(node, f"{f.name} must be a permutation of 0..rank-1")


def _index(rt, node, f: Field, v) -> None:
    """Integers, ``[start, stop, step]`` slices, null (a new axis), at most one ``"..."``."""
    small = lambda s: s is None or is_int(s) and abs(s) < 1 << 31
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_RANK or v.count("...") > 1 or not all(
            item is None or item == "..." or (small(item) and item is not None)
            or isinstance(item, list) and len(item) == 3 and all(small(s) for s in item) and item[2] != 0
            for item in v):
        rt.fail(node, f"{f.name} must be integers, [start, stop, step] slices, null or '...'")


def _pads(rt, node, f: Field, v) -> None:
    if not isinstance(v, list) or not v or len(v) % 2 or len(v) > 6 or not all(is_int(p) and 0 <= p < MAX_INT for p in v):
        rt.fail(node, f"{f.name} must be 2, 4 or 6 integers from 0 to {MAX_INT - 1} (last dimension first)")


def _sizes(rt, node, f: Field, v) -> None:
    if not isinstance(v, list) or not 0 < len(v) <= MAX_RANK:
        rt.fail(node, f"{f.name} must be a list of 1 to {MAX_RANK} integers from 1 to {MAX_ELEMENTS}")
    rt.ints(node, v, f.name, len(v), 1, MAX_ELEMENTS + 1)


def _batch_dim(rt, node, f: Field, v) -> None:
    if not is_int(v) or not 0 <= v < MAX_RANK:
        rt.fail(node, f"{f.name} must be a dimension 0..7 or null")


def _int_pair(rt, node, f: Field, v) -> None:
    if not isinstance(v, list) or len(v) != 2 or not all(i is None or is_int(i) and abs(i) < 1 << 31 for i in v) \
            or None not in v and v[0] > v[1]:
        rt.fail(node, f"{f.name} must be [lo, hi], integers (or null) below 2^31 in magnitude, lo <= hi")


def _bound(rt, node, f: Field, v) -> None:
    if not is_int(v) or v < 0:
        rt.fail(node, f"{f.name} must be a non-negative integer")


def _shift_list(rt, node, f: Field, v) -> None:
    if not isinstance(v, list) or len(v) != len(node.get("inputs") or ()) or not all(is_int(i) and 0 <= i <= 30
                                                                                       for i in v):
        rt.fail(node, f"{f.name} must be one integer 0 to 30 per input")


def _checked_elsewhere(rt, node, f: Field, v) -> None:
    """Structured fields of shift layers: checked by their layer's own check, which reads them whole."""


KINDS: dict[str, Callable] = {"ints": _ints, "number": _number, "flag": _flag, "choice": _choice, "dim": _dim,
                              "dims": _dims, "tensor": _tensor, "shape": _shape, "perm": _perm, "index": _index,
                              "pads": _pads, "sizes": _sizes, "batch_dim": _batch_dim, "bound": _bound, "int_pair": _int_pair,
                              "shift_list": _shift_list,
                              **{k: _checked_elsewhere for k in ("quantizer", "act_quantizer", "pixels", "requant",
                                                                 "int_output", "table")}}


def never(node: dict, inputs_non_negative: list[bool]) -> bool:
    """Sign rule of an op whose output may be negative whatever its inputs."""
    return False


def positive(node: dict, inputs_non_negative: list[bool]) -> bool:
    """Sign rule of an op whose output is >= 0 whatever its inputs."""
    return True


def keeps_sign(node: dict, inputs_non_negative: list[bool]) -> bool:
    """Sign rule of an op whose output is >= 0 when every input is (and its number, if any)."""
    return (node.get("scalar") or 0.0) >= 0 and bool(inputs_non_negative) and all(inputs_non_negative)


@dataclass(frozen=True)
class CStep:
    """How the C backend runs a node on integers: one of its kernels by name (``unary``: an
    elementwise C expression of ``x``, written from checked integers only; ``add``, ``maxpool``,
    ``global_sum``, ``window_sum``, ``lookup``, ``gate_shift``, ``concat``; ``gather`` with
    ``move``: the op's map on an array of element indices; ``matmul``, ``shiftmax``,
    ``layer_norm``, ``constant``; ``alias``: the input itself), with its parameters; ``tensors``: parameters that are bundle tensors, by key (the
    lowering reads them); ``in_place``: it maps elements one to one and may share its inputs'
    layout. The output's shape and range are the proven ones (``Graph.facts``)."""

    kernel: str
    params: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    in_place: bool = False


@dataclass(frozen=True)
class Integerizing:
    """What an op's integer lowering (:attr:`OpDef.integerize`) may use: the ``graph`` being
    lowered (its float kernels and quantizers: ``float_op``, ``quantize_input``),
    ``readers_divide(through=())`` (every reader is a shift layer whose input thresholds can divide,
    through flattens, identities and the ops named) and
    ``add(key, integers)``, which stores a tensor in the bundle and returns its key."""

    graph: object
    readers_divide: Callable[..., bool]
    add: Callable[[str, np.ndarray], str]


@dataclass(frozen=True)
class OpDef:
    """One op, defined once.

    * ``fields``: its manifest fields (beyond every node's ``name``, ``op``, ``inputs``, ``module``,
      ``dtype``, ``range`` and ``batch_dim``); ``check(rt, node)``: limits across fields.
    * ``inputs``: how many it reads (``None``: one or more; a function of the node when it depends).
    * ``float(node, args, tensor, batch)``: the float kernel, PyTorch's; on meta tensors it gives
      the op's shapes. ``tensor(key)`` gives a bundle tensor as a torch tensor.
    * ``integer(rt, node, args)``: the integer kernel on :class:`~.values.Value` inputs, all
      integers; ``None`` when it runs in float on these inputs. ``prove(rt, node, args, shape)``:
      the same decision on :class:`~.values.Fact` inputs, with the output's interval.
    * ``sign(node, inputs_non_negative)``: whether its float output is >= 0.
    * ``quantizes_output``: an ``output_quantizer`` puts its float output on a grid (integers out).
    * ``run(rt, node, args)`` and ``shape(rt, node, args)``: for the ops that read the bundle's
      input or their own weights (``input``, the shift layers), the kernel and the meta-tensor
      shape rule in place of the float and integer kernels; their ``prove`` sees every input.
    * ``c(node, args)``: its C lowering on integer inputs (tensors with ``shape``, ``lo``, ``hi``):
      a :class:`CStep`, or None when it runs in float on these inputs; ``None`` (the default):
      float, by name, so the C backend refuses the node. A string names a lowering of the backend's
      own (the shift layers').
    * ``integerize(node, args, ctx)``: the exporter's integer lowering, where the op decides to go
      onto integers by setting its fields (``args`` have ``kind``, ``lo``, ``hi`` and ``unit``;
      ``ctx``: :class:`Integerizing`).
    * ``chain``: its part in a requantization chain between a shift layer and the next quantizer:
      ``fold`` (monotone per element and channel: folded into the thresholds, it leaves the
      graph), ``move`` (moves integers: it stays, after the thresholds), None (ends the chain).
    * ``dip``: for a ``fold`` op that is not monotone, a lower bound of its values below zero: it
      falls to its least value and rises after it, is <= 0 for inputs <= 0 and increasing (in
      float32, PyTorch's kernel) for inputs >= 0 (Hardswish). It folds only where the quantizer
      after it gives one level to every value in ``[dip, 0]`` and no fold op follows it: then the
      quantized chain is non-decreasing in its input.
    * ``float_reason``: why a node of it stays float, and what to do (``check_exportable``).
    * ``onnx``: its ONNX mapping (:class:`OnnxMap`); ``macs(node, shapes, tensors)``: its
      multiply-accumulates per example as ``(kind, count)``, kind ``shift_add``, ``integer`` or
      ``float`` (``None``: it has none).
    """

    name: str
    doc: str
    fields: tuple[Field, ...] = ()
    inputs: int | None | Callable[[dict], int] = 1
    float: Callable | None = None
    check: Callable | None = None
    integer: Callable | None = None
    prove: Callable | None = None
    sign: Callable = never
    onnx: OnnxMap | None = None
    macs: Callable | None = None
    quantizes_output: bool = False
    run: Callable | None = None
    shape: Callable | None = None
    c: Callable | str | None = None
    integerize: Callable | None = None
    chain: str | None = None
    dip: float | None = None
    float_reason: tuple[str, str] | None = None

    def expected_inputs(self, node: dict) -> int | None:
        return self.inputs(node) if callable(self.inputs) else self.inputs

    def validate(self, rt, node: dict) -> None:
        """The manifest entry's fields, its input count and its cross-field limits."""
        for f in self.fields:
            f.check(rt, node)
        expected, count = self.expected_inputs(node), len(node["inputs"])
        if count != expected if expected is not None else count < 1:
            rt.fail(node, "wrong number of inputs")
        if self.check is not None:
            self.check(rt, node)


@dataclass(frozen=True)
class OnnxMap:
    """An op's ONNX mapping: ``label`` names the ONNX operators (the docs' table), and
    ``lower(b, node, args)`` emits them with the ONNX backend's builder ``b`` (:mod:`..onnx.lower`)
    on the ONNX values ``args`` (integers where the node computes on integers, else float
    values) and returns its output value."""

    label: str
    lower: Callable


def onnx_op(op_type: str, attrs: Callable[[dict], dict] | None = None) -> OnnxMap:
    """The mapping to one ONNX node of ``op_type`` on the node's inputs, attributes from the node."""
    return OnnxMap(op_type, lambda b, node, args: b.op(op_type, *args, **(attrs(node) if attrs else {})))


REGISTRY: dict[str, OpDef] = {}


def register(*defs: OpDef) -> None:
    for d in defs:
        if d.name in REGISTRY:
            raise ExportError(f"op {d.name!r} is defined twice")
        REGISTRY[d.name] = d


def get(op) -> OpDef | None:
    """The definition of ``op``; None for a name no op has (the loader refuses it)."""
    return REGISTRY.get(op) if isinstance(op, str) else None
