"""The QONNX backend: the hard model as a fake-quantized float graph, as Brevitas writes it.

QONNX (the FINN / hls4ml interchange format) records quantization with ``Quant`` nodes of the
``qonnx.custom_op.general`` domain (QONNX 1.0 also names them ``IntQuant``; its cleanup keeps
``Quant`` on constants and folds an ``IntQuant`` weight into a plain constant):
``scale * clip(round(x / scale + zeropt), min, max)``.
This backend lowers the bundle graph *before* requantization (``Exporter.unfolded``: shift layers
with float outputs, BatchNorm, ReLU, adds and pools as float ops), node by node:

* **A shift layer** is ``Quant`` on its input (its input grid), then the ``Conv`` or ``MatMul``
  with its weights, themselves a ``Quant`` constant, then the bias. A power-of-two weight
  ``±2^e`` is exactly an integer ``±2^(e + k)`` times the scale ``2^-k``: with a power-of-two
  scale per channel (``weight_scale: learned_pot``), every weight of a layer is such an integer on
  one scale ``2^-k`` (``k`` from its smallest weight) and ``k + 2`` bits hold them (the widest
  weight tensor is wider where the channels' scales differ). Other per-channel scales stay per
  channel. The weight tensors that are all nonzero powers of two are listed in the model's
  metadata (``shiftquant.po2_weights``): an hls4ml pass (:mod:`.hls`) turns them into shifts.
* **An activation quantizer** (a shift layer's input grid, a residual BatchNorm's output grid)
  on a uniform grid with a zero level and nearest rounding is one ``Quant``, ``HALF_UP``
  rounding (the quantizer's own: half away from zero). On power-of-two levels (or without
  zero, or ceil rounding), no ``Quant`` rounds the same way: it is the comparisons of the
  ONNX backend (counted thresholds and a ``Gather``), then an ``Quant`` that records its grid
  (an identity on its values). Every form is checked against the quantizer on probe values.
* **Every other op** is its ONNX mapping (``OpDef.onnx``) on float values.

So ``qonnx.core.onnx_exec`` computes what the hard PyTorch model computes, up to float rounding
(the reference's dequantization is float64, this graph's float32).

The **thresholds form** (:func:`to_qonnx_thresholds`, the default of ``sq.export_qonnx``) lowers
the bundle graph itself, *after* requantization, as FINN reads it: integers travel as float32
values (exact, as in the ONNX backend), a shift layer is its ``Conv`` / ``MatMul`` on integer
weights held by a ``Quant`` (scale 1), and every requantization the bundle folded (BatchNorm,
bias and the next activation quantizer, or a previous grid onto the layer's input levels) is one
``MultiThreshold``: ``levels[0] + sum_k d_k [x >= t_k]`` with each threshold repeated as many
times as the level steps there (``d_k``), so power-of-two levels come out exactly. A channel
compared negated (a negative BatchNorm scale) is multiplied by -1 first. Every other op is the
ONNX backend's mapping.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from ...errors import ExportError
from .. import ops
from ..graph.loader import Graph
from ..onnx.lower import INPUT, OPSET, Builder, _to_float, exact_table, lower_nodes, output_names
from ..ops.quantizers import input_unit, level_ints, quantize_input
from ..ops.shift import dequantize_terms

DOMAIN = "qonnx.custom_op.general"
QUANT = "Quant"  # what the docs call IntQuant
PO2_WEIGHTS = "shiftquant.po2_weights"  # metadata: weight initializers that are all +-2^e


def signed_bits(top: int) -> int:
    """The bits of a signed integer that holds ``-top .. top`` (at least 2)."""
    return max(1, math.ceil(math.log2(top + 1))) + 1


def po2_exponents(data) -> np.ndarray | None:
    """The exponents ``e`` of values that are all ``±2^e`` (none zero), else None."""
    w = np.asarray(data, dtype=np.float64)
    if not w.size or np.any(w == 0) or np.any(np.frexp(np.abs(w))[0] != 0.5):
        return None
    return np.frexp(np.abs(w))[1] - 1


def int_quant_params(spec: dict) -> dict | None:
    """``{signed, narrow, bitwidth}`` of the ``Quant`` that equals the activation quantizer
    ``spec`` on its integers, or None when no ``Quant`` does (power-of-two levels, no zero level,
    ceil rounding)."""
    q = spec["quantizer"]
    ints = level_ints(spec)
    lo, hi = int(ints.min()), int(ints.max())
    if q["kind"] != "uniform" or q["rounding"] != "nearest" or not q["zero"] \
            or not np.array_equal(ints, np.arange(lo, hi + 1)):
        return None
    signed = lo < 0
    bits = max(1, math.ceil(math.log2(hi + 1))) + signed
    narrow = signed and lo == -hi
    if (signed and not (hi == 2 ** (bits - 1) - 1 and lo in (-hi - 1, -hi))) or (not signed and (lo, hi) != (0, 2 ** bits - 1)):
        return None
    return {"signed": int(signed), "narrow": int(narrow), "bitwidth": bits}


def pot_weights(w_int: np.ndarray, resolution: float, channel_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A shift layer's float weights as ``(ints, scale, bits)``: ``weights = ints * scale`` exactly,
    ``scale`` one power of two when every channel's scale is one (else one per channel)."""
    unit = channel_scale.astype(np.float64) * resolution  # per output channel
    per_channel = w_int.astype(np.float64)
    if np.all(np.frexp(unit)[0] == 0.5) and np.any(w_int):
        values = per_channel * unit.reshape((-1,) + (1,) * (w_int.ndim - 1))
        smallest = np.abs(values[values != 0]).min()
        scale = np.array(smallest, dtype=np.float64)  # a power of two: the smallest weight's magnitude
        ints = values / scale
    else:
        ints, scale = per_channel, unit.reshape((-1,) + (1,) * (w_int.ndim - 1))
    if not np.array_equal(ints, np.round(ints)):
        raise ExportError("weights are not integers on their scale")  # unreachable for a verified bundle
    return ints, scale, signed_bits(int(np.abs(ints).max()) if ints.size else 0)


def int_quant_node(b: Builder, x: str, scale, bitwidth: int, signed: int = 1, narrow: int = 0,
                   rounding: str = "HALF_UP") -> str:
    """``IntQuant(x, scale, 0, bitwidth)`` appended to ``b``."""
    from onnx import helper

    out = b.fresh("intquant")
    scale = np.asarray(scale, dtype=np.float32)
    b.nodes.append(helper.make_node(
        QUANT, [x, b.const(scale), b.const(np.zeros_like(scale)), b.const(float(bitwidth))], [out],
        name=out, domain=DOMAIN, signed=int(signed), narrow=int(narrow), rounding_mode=rounding))
    return out


class QonnxBuilder(Builder):
    """The ONNX builder on float values only: every op takes its float form."""

    def integer(self, node: dict) -> bool:
        return False

    def int_quant(self, x: str, scale, bitwidth: int, signed: int = 1, narrow: int = 0,
                  rounding: str = "HALF_UP") -> str:
        return int_quant_node(self, x, scale, bitwidth, signed, narrow, rounding)

    def quantize_float(self, x: str, rank: int, spec: dict) -> str:
        """An activation quantizer on float values: float values on its grid."""
        unit = input_unit(spec)
        form = int_quant_params(spec)
        if form is not None and spec["policy"] == "learned_pot":
            return self.int_quant(x, unit, form["bitwidth"], form["signed"], form["narrow"])
        ints = self.quantize(x, rank, spec)  # comparisons, counted and looked up: the level integers
        bits = signed_bits(int(np.abs(level_ints(spec)).max()))
        return self.int_quant(self.op("Mul", ints, self.const(np.float32(unit))), unit, bits, rounding="ROUND")


# MultiThreshold's data layouts by (rank, channel dimension); other layouts keep the comparisons
LAYOUTS = {(2, 1): "NC", (3, 1): "NCW", (3, 2): "NWC", (4, 1): "NCHW", (4, 3): "NHWC"}
MAX_STEPS = 4096  # repeated thresholds per channel; wider grids keep the comparisons


def int_datatype(lo: int, hi: int) -> str:
    """The QONNX ``DataType`` name of the integers ``lo .. hi``."""
    if lo >= 0:
        return f"UINT{max(1, int(hi).bit_length())}"
    return f"INT{max(signed_bits(max(-lo - 1, hi)), 2)}"


def repeated_thresholds(thr: np.ndarray, values) -> np.ndarray | None:
    """``(channels, steps)`` thresholds whose count equals ``values[index] - values[0]`` for the
    level index that ``thr`` (``(L - 1, K)``) gives, each repeated by its level step; None when the
    levels are not ascending integers or take more than ``MAX_STEPS``."""
    v = np.asarray(values, dtype=np.float64)
    steps = np.diff(v)
    if v.size != thr.shape[0] + 1 or np.any(steps < 1) or np.any(v != np.round(v)) or steps.sum() > MAX_STEPS:
        return None
    return np.sort(np.repeat(exact_table(thr), steps.astype(np.int64), axis=0).T, axis=1)


def _key(x: np.ndarray) -> np.ndarray:
    """float32 values as int64 keys in the same order (-0.0 and 0.0 on the same key)."""
    u = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(u < 0, -u - 2 ** 31, u)


def _from_key(k: np.ndarray) -> np.ndarray:
    return np.where(k < 0, -k - 2 ** 31, k).astype(np.int32).view(np.float32)


def input_thresholds(spec: dict) -> np.ndarray | None:
    """``(1, steps)`` float32 thresholds with which ``MultiThreshold`` (``out_bias`` the lowest
    level) equals the per-tensor input quantizer ``spec`` on every float32 value: the smallest
    float32 reaching each level, found by bisection on the quantizer itself, each repeated by its
    level step and checked on the values beside it. None for per-channel (statistics)
    quantizers, grids over ``MAX_STEPS``, or a quantizer that is not monotone there."""
    if spec["policy"] != "learned_pot":
        return None
    levels = level_ints(spec).astype(np.int64)
    if levels.size < 2 or np.any(np.diff(levels) < 1) or levels[-1] - levels[0] > MAX_STEPS:
        return None
    level = lambda x: quantize_input(None, torch.from_numpy(np.asarray(x, np.float32)), spec)
    top = np.finfo(np.float32).max
    if level([-top])[0] != levels[0] or level([top])[0] != levels[-1]:
        return None
    lo, hi = np.full(levels.size - 1, _key(-top)), np.full(levels.size - 1, _key(top))
    while np.any(hi - lo > 1):  # level(from_key(lo)) < L_k <= level(from_key(hi))
        mid = (lo + hi) // 2
        reached = level(_from_key(mid)) >= levels[1:]
        lo, hi = np.where(reached, lo, mid), np.where(reached, mid, hi)
    t = np.repeat(_from_key(hi), np.diff(levels))
    probe = np.concatenate([t, np.nextafter(t, np.float32(-np.inf)), np.float32([0.0, -0.0, top, -top])])
    if not np.array_equal(level(probe), levels[0] + (probe[:, None] >= t[None, :]).sum(1)):
        return None
    return t.reshape(1, -1)


class ThresholdBuilder(Builder):
    """The ONNX builder of the bundle graph whose requantizations are ``MultiThreshold`` nodes
    and whose shift layers' weights are ``Quant`` constants."""

    def levels(self, x: str, rank: int, thr: np.ndarray, channel_dim: int, values, direction=None) -> str:
        layout, table = LAYOUTS.get((rank, channel_dim)), repeated_thresholds(thr, values)
        if layout is None or table is None:
            return super().levels(x, rank, thr, channel_dim, values, direction)
        return self.multithreshold(self.oriented(x, rank, channel_dim, direction), table, layout, int(values[0]),
                                   int(values[-1]))

    def quantize(self, x: str, rank: int, spec: dict) -> str:
        table = input_thresholds(spec)
        if table is None or rank not in (2, 3, 4):
            return super().quantize(x, rank, spec)
        ints = level_ints(spec)
        return self.multithreshold(x, table, LAYOUTS[rank, 1], int(ints.min()), int(ints.max()))

    def multithreshold(self, x: str, table: np.ndarray, layout: str, lo: int, hi: int) -> str:
        """``lo + sum_k [x >= table[c, k]]`` (integers ``lo .. hi``)."""
        from onnx import helper

        out = self.fresh("multithreshold")
        self.nodes.append(helper.make_node(
            "MultiThreshold", [x, self.const(table)], [out], name=out, domain=DOMAIN, data_layout=layout,
            out_dtype=int_datatype(lo, hi), out_scale=1.0, out_bias=float(lo)))
        return out

    def shift_weights(self, w: np.ndarray) -> str:
        return int_quant_node(self, self.const(w), np.float32(1), signed_bits(int(np.abs(w).max(initial=0))),
                              rounding="ROUND")

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        """A node reads a value at most once, the repeats through an ``Identity`` (``x * x``):
        QONNX's cleanup renames only the first of a node's inputs that share a name."""
        seen: set[str] = set()
        distinct = []
        for x in inputs:
            distinct.append(super().op("Identity", x) if x and x in seen else x)
            seen.add(x)
        return super().op(op_type, *distinct, **attrs)


def _shift_layer(b: QonnxBuilder, node: dict, x: str) -> str:
    """``Quant`` input -> ``Conv`` / ``MatMul`` on ``Quant`` weights -> + bias."""
    conv, rank = node["op"] == "shift_conv2d", b.rank(node["inputs"][0])
    if node.get("weight_offset") is not None:
        raise ExportError(f"node {node['name']!r}: weights with an offset (weight_keep_mean) are not integers "
                          "times one scale; QONNX export needs weight_keep_mean=false")
    a = b.quantize_float(x, rank, node["input_quantizer"])
    ints, scale, bits = pot_weights(b.graph.weights[node["name"]], node["weight_quantizer"]["resolution"],
                                    b.tensor(node["weight_scale"]))
    weight = (ints * scale).astype(np.float32)
    w = b.int_quant(b.const(weight if conv else weight.T), scale if conv or scale.ndim == 0 else scale.reshape(1, -1),
                    bits, rounding="ROUND")
    bias = dequantize_terms(b.graph, node, (-1,))[3]
    if conv:
        ph, pw = node["padding"]
        return b.op("Conv", a, w, *([] if bias is None else [b.const(bias.astype(np.float32))]),
                    kernel_shape=list(weight.shape[2:]), strides=list(node["stride"]), pads=[ph, pw, ph, pw],
                    dilations=list(node["dilation"]), group=int(node["groups"]))
    out = b.op("MatMul", a, w)
    return out if bias is None else b.op("Add", out, b.const(bias.astype(np.float32)))


def _check_quantizers(graph: Graph) -> None:
    """Every ``Quant`` form equals its quantizer on probe values (levels, midpoints, ties, beyond)."""
    from qonnx.custom_op.general.intquant import int_quant

    for node in graph.nodes:
        for spec in (node.get("input_quantizer"), node.get("output_quantizer")):
            form = spec and spec.get("policy") == "learned_pot" and int_quant_params(spec)
            if not form:
                continue
            unit = input_unit(spec)
            ints = level_ints(spec).astype(np.float64)
            probe = np.concatenate([ints, ints + 0.5, ints - 0.5, ints + 0.25, [ints.min() - 3, ints.max() + 3]]) * unit
            want = quantize_input(graph, torch.from_numpy(probe.astype(np.float32)), spec) * unit
            got = int_quant(probe.astype(np.float32), np.float32(unit), np.float32(0), np.float32(form["bitwidth"]),
                            form["signed"], form["narrow"], "HALF_UP")
            if not np.array_equal(got, want):
                raise ExportError(f"node {node['name']!r}: its quantizer is not the Quant chosen for it "
                                  f"({form}); please report this")


def to_qonnx(graph: Graph, batch: int = 1, name: str = "shiftquant"):
    """The QONNX model of an unfolded bundle graph (``Exporter.unfolded``, loaded non-strict):
    input ``input`` (float32), one output per bundle output, ``batch`` images (QONNX tools and
    hls4ml expect fixed shapes; :func:`with_batch` changes it)."""
    source = next(n for n in graph.nodes if n["op"] == "input")
    if source.get("pixels"):
        raise ExportError("QONNX export takes float input: export without an input spec (PixelInput)")
    _check_quantizers(graph)
    b = QonnxBuilder(graph)
    values: dict[str, str] = {}
    for node in graph.nodes:
        definition = ops.get(node["op"])
        args = [values[a] for a in node["inputs"]]
        if node["op"] == "input":
            out = INPUT
        elif node["op"] in ("shift_conv2d", "shift_linear"):
            out = _shift_layer(b, node, args[0])
        else:
            out = definition.onnx.lower(b, node, args)
        if definition.quantizes_output and node.get("output_quantizer"):
            out = b.quantize_float(out, b.rank(node["name"]), node["output_quantizer"])
        values[node["name"]] = out
    return _model(b, {o: values[o] for o in graph.manifest["outputs"]}, batch, name)


def to_qonnx_thresholds(graph, batch: int = 1, name: str = "shiftquant"):
    """The QONNX model of a verified bundle graph in the thresholds form (module docstring):
    input ``input`` (float32), one output per bundle output, ``batch`` images."""
    if graph.pixels is not None:
        raise ExportError("QONNX export takes float input: export without an input spec (PixelInput)")
    b = lower_nodes(ThresholdBuilder(graph))
    return _model(b, {o: _to_float(b, o) for o in graph.manifest["outputs"]}, batch, name)


def _model(b: Builder, outputs: dict[str, str], batch: int, name: str):
    """The ONNX model of builder ``b``: its graph's input (float32), ``outputs`` (bundle output
    name -> value), ``batch`` images."""
    from onnx import TensorProto, helper

    source = next(n for n in b.graph.nodes if n["op"] == "input")
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, *source["shape"]])]
    infos = []
    for out_name, (o, value) in zip(output_names(b.graph), outputs.items()):
        b.nodes.append(helper.make_node("Identity", [value], [out_name], name=b.fresh("output")))
        shape = [batch if v == -1 else v for v in b.shape_of(b.by_name[o])]
        infos.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape))
    return helper.make_model(helper.make_graph(b.nodes, name, inputs, infos, b.initializers),
                             opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                             producer_name="shiftquant")


def po2_weights(model) -> list[str]:
    """The outputs of the ``Quant`` nodes of a QONNX ``ModelWrapper`` that quantize a constant
    whose every value is a nonzero power of two (shifts in hardware)."""
    constants = {node.output[0]: model.get_initializer(node.input[0]) for node in model.get_nodes_by_op_type(QUANT)}
    return [out for out, w in constants.items() if w is not None and po2_exponents(w) is not None]


def mark_po2(model):
    """``model`` (a ``ModelWrapper``) with its :func:`po2_weights` in its metadata (``PO2_WEIGHTS``)."""
    from onnx import helper

    del model.model.metadata_props[:]
    helper.set_model_props(model.model, {PO2_WEIGHTS: json.dumps(po2_weights(model))})
    return model


def cleaned(model):
    """``model`` (an ONNX ``ModelProto`` or a path) through QONNX's cleanup (shape and datatype
    inference, constant folding, unique names): a ``ModelWrapper``."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    return cleanup_model(ModelWrapper(model if not isinstance(model, (str, bytes)) else str(model)))


def without_identities(model):
    """``model`` (a ``ModelWrapper`` with shapes) without its ``Identity`` nodes (but the graph
    outputs') and its multiplications by a single 1 that broadcasts to no new dimension."""
    from qonnx.transformation.remove import remove_node_and_rewire

    outputs = {o.name for o in model.graph.output}
    for node in list(model.graph.node):
        c = model.get_initializer(node.input[1]) if node.op_type == "Mul" else None
        one = c is not None and c.size == 1 and c.ndim <= len(model.get_tensor_shape(node.input[0]) or ()) \
            and float(c.reshape(-1)[0]) == 1.0
        # kept where a reader of its output also reads its input (``x * x``: see ThresholdBuilder.op)
        both = any(node.input[0] in after.input for after in model.find_consumers(node.output[0]) or [])
        if (node.op_type == "Identity" or one) and node.output[0] not in outputs and not both:
            remove_node_and_rewire(model, node)
    return model


def with_batch(model, batch: int):
    """The QONNX ``ModelWrapper`` ``model`` for ``batch`` images (its first dimension)."""
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    return model.transform(ChangeBatchSize(batch)).transform(InferShapes())


def run_qonnx(path, x: np.ndarray) -> np.ndarray:
    """The first output of the QONNX model at ``path`` on float ``x``, by ``qonnx.core.onnx_exec``:
    the whole batch at once where QONNX's ``ChangeBatchSize`` keeps every shape known, else in
    batches of the graph's own size (a batch folded into a constant: a ViT's class token)."""
    from qonnx.core.onnx_exec import execute_onnx

    x = np.asarray(x, dtype=np.float32)
    model = cleaned(str(path))
    own = model.get_tensor_shape(model.graph.input[0].name)[0]
    resized = with_batch(model, len(x))
    if resized.check_all_tensor_shapes_specified():
        model, own = resized, len(x)
    run = lambda part: execute_onnx(model, {model.graph.input[0].name: part})[model.graph.output[0].name]
    return np.concatenate([run(x[i:i + own]) for i in range(0, len(x), own)])
