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
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from ...errors import ExportError
from .. import ops
from ..graph.loader import Graph
from ..onnx.lower import INPUT, OPSET, Builder, output_names
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


class QonnxBuilder(Builder):
    """The ONNX builder on float values only: every op takes its float form."""

    def integer(self, node: dict) -> bool:
        return False

    def int_quant(self, x: str, scale, bitwidth: int, signed: int = 1, narrow: int = 0,
                  rounding: str = "HALF_UP") -> str:
        """``IntQuant(x, scale, 0, bitwidth)``."""
        from onnx import helper

        out = self.fresh("intquant")
        scale = np.asarray(scale, dtype=np.float32)
        self.nodes.append(helper.make_node(
            QUANT, [x, self.const(scale), self.const(np.zeros_like(scale)), self.const(float(bitwidth))], [out],
            name=out, domain=DOMAIN, signed=int(signed), narrow=int(narrow), rounding_mode=rounding))
        return out

    def quantize_float(self, x: str, rank: int, spec: dict) -> str:
        """An activation quantizer on float values: float values on its grid."""
        unit = input_unit(spec)
        form = int_quant_params(spec)
        if form is not None and spec["policy"] == "learned_pot":
            return self.int_quant(x, unit, form["bitwidth"], form["signed"], form["narrow"])
        ints = self.quantize(x, rank, spec)  # comparisons, counted and looked up: the level integers
        bits = signed_bits(int(np.abs(level_ints(spec)).max()))
        return self.int_quant(self.op("Mul", ints, self.const(np.float32(unit))), unit, bits, rounding="ROUND")


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
    from onnx import TensorProto, helper

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
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, *source["shape"]])]
    outputs = []
    for out_name, o in zip(output_names(graph), graph.manifest["outputs"]):
        b.nodes.append(helper.make_node("Identity", [values[o]], [out_name], name=b.fresh("output")))
        shape = [batch if v == -1 else v for v in b.shape_of(b.by_name[o])]
        outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape))
    model = helper.make_model(helper.make_graph(b.nodes, name, inputs, outputs, b.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                              producer_name="shiftquant")
    return model


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


def with_batch(model, batch: int):
    """The QONNX ``ModelWrapper`` ``model`` for ``batch`` images (its first dimension)."""
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    return model.transform(ChangeBatchSize(batch)).transform(InferShapes())


def run_qonnx(path, x: np.ndarray) -> np.ndarray:
    """The first output of the QONNX model at ``path`` on float ``x``, by ``qonnx.core.onnx_exec``."""
    from qonnx.core.onnx_exec import execute_onnx

    model = with_batch(cleaned(str(path)), len(x))
    out = execute_onnx(model, {model.graph.input[0].name: np.asarray(x, dtype=np.float32)})
    return out[model.graph.output[0].name]
