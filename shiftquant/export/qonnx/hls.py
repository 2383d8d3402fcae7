"""hls4ml from a shiftquant QONNX graph, with the power-of-two weights as shifts (the ``[fpga]`` extra).

hls4ml's QONNX frontend turns a weight ``Quant`` into a fixed-point constant, and a fixed-point
weight is multiplied. hls4ml has a shift product (``weight_exponential``: ``x << e``, negated for
negative weights), but only QKeras's ``quantized_po2`` reaches it. :class:`PowerOfTwoWeights`, an
hls4ml optimizer pass, gives it every layer whose weights are all nonzero powers of two: their
type becomes an ``ExponentPrecisionType`` (a sign and an exponent per weight), so the generated
HLS computes ``x << e`` and keeps the accumulator hls4ml inferred from the exact fixed-point
weights. Weights with a zero (``weight_zero``) or a uniform grid stay multiplied.

Activation ``Quant`` nodes round half away from zero (the quantizer's own rounding, ``HALF_UP``),
which hls4ml's QONNX frontend does not accept: they are handed to it as ``ROUND`` and the pass
sets their fixed-point type's rounding to ``AP_RND_INF``, the same rounding in ``ap_fixed``.
Power-of-two *activations* (``act_shift_bits``) have no hls4ml layer: hls4ml refuses their
comparisons by name. ``docs/fpga.md`` gives the flow and what was measured.
"""
from __future__ import annotations

import math
from pathlib import Path

import hls4ml
import numpy as np
from hls4ml.model.flow import get_available_flows, get_flow, register_flow
from hls4ml.model.optimizer import OptimizerPass, get_available_passes, register_pass
from hls4ml.model.quantizers import Quantizer
from hls4ml.model import types as hls_types
from hls4ml.model.types import ExponentPrecisionType, RoundingMode

from ...errors import ConfigError, ExportError
from .lower import QUANT, cleaned, po2_exponents

FLOW = "shiftquant:shifts"
_HALF_UP = "HALF_UP"


def exponent_width(exponents: np.ndarray, data_integer_bits: int) -> int:
    """The bits of hls4ml's exponent type for weights ``±2^e``: enough to hold every ``e``, and
    (its product is ``ap_fixed<2 (W + w), W + w>``, ``w`` the data's width) to keep every bit of
    ``x << e`` (``e < 0`` shifts right past the data's fraction, ``e > 0`` left past its integer part)."""
    lo, hi = int(exponents.min()), int(exponents.max())
    hold = max(math.ceil(math.log2(max(-lo, hi + 1, 1))) + 1, 2)
    return max(hold, -lo - data_integer_bits + 1, hi + 1)


class PowerOfTwoQuantizer(Quantizer):
    """Weights that already are ``±2^e``, typed as exponents."""

    def __init__(self, width: int):
        super().__init__(width, ExponentPrecisionType(width=width, signed=True))

    def __call__(self, data):
        return np.asarray(data)


class ExponentWeightVariable(hls_types.ExponentWeightVariable):
    """hls4ml's exponent weights (a sign and an exponent each), written with ``np.prod`` (hls4ml
    1.3's own writer calls ``np.product``, which numpy 2 removed) and the sign as an integer
    (``{1, -3}``: the C simulation's text loader cannot read ``1.0`` into its one-bit sign).
    It keeps hls4ml's class name: hls4ml's writer picks the exponent text loader by that name."""

    def __iter__(self):
        data = self._format()
        self._iterator = iter(data.reshape((int(np.prod(data.shape[:-1])), 2)))
        return self

    def __next__(self):
        sign, exponent = next(self._iterator)
        return f"{{{int(sign)}, {self.precision_fmt.format(exponent)}}}"

    next = __next__


class PowerOfTwoWeights(OptimizerPass):
    """Layers whose weights are all nonzero powers of two get hls4ml's exponent weight type (the
    shift product), wide enough that every shifted input is exact."""

    def match(self, node):
        w = node.weights.get("weight")
        return w is not None and not isinstance(w.type.precision, ExponentPrecisionType) \
            and po2_exponents(w.data) is not None

    def transform(self, model, node):
        w = node.weights["weight"]
        data_t = node.get_input_variable().type.precision
        width = exponent_width(po2_exponents(w.data), int(getattr(data_t, "integer", data_t.width)))
        quantizer = PowerOfTwoQuantizer(width)
        data = np.asarray(w.data)
        var = ExponentWeightVariable(f"w{node.index}", type_name=f"weight{node.index}_t", precision=quantizer.hls_type,
                           data=data, quantizer=quantizer, index=node.index)
        var.data_unquantized = data
        node.set_attr("weight", var)
        return False


class HalfUpActivations(OptimizerPass):
    """Activation quantizers round half away from zero, ``AP_RND_INF`` in ``ap_fixed``. hls4ml made
    them ``AP_RND_CONV`` from the ``ROUND`` they were handed as, on the activation or on the layer
    it merged the quantizer into (a BatchNorm with a residual grid); hls4ml's own types truncate,
    and :func:`_prepared` checked that every activation ``Quant`` was ``HALF_UP``."""

    def match(self, node):
        precision = node.get_output_variable().type.precision
        return getattr(precision, "rounding_mode", None) == RoundingMode.RND_CONV

    def transform(self, model, node):
        node.get_output_variable().type.precision.rounding_mode = RoundingMode.RND_INF
        return False


class ChannelsLastGlobalPool(OptimizerPass):
    """QONNX's channels-last conversion leaves a global average pool channels-first behind a
    ``Transpose``; hls4ml's global pool reads channels-last data with the channel count of that
    channels-first shape, so the transposed data would be averaged across the wrong axis. The
    pass removes the ``Transpose``: the pool then reads the channels-last data it expects."""

    def match(self, node):
        after = model_consumers(node)
        return node.class_name == "Transpose" and list(node.get_attr("perm")) == [2, 0, 1] \
            and len(after) == 1 and after[0].class_name == "GlobalPooling2D"

    def transform(self, model, node):
        model.remove_node(node)
        return True


def model_consumers(node) -> list:
    """The layers that read ``node``'s outputs."""
    return [n for n in node.model.get_layers() if any(o in n.inputs for o in node.outputs)]


PASSES = {"shiftquant_po2_weights": PowerOfTwoWeights, "shiftquant_half_up": HalfUpActivations,
          "shiftquant_channels_last_global_pool": ChannelsLastGlobalPool}


def flow(backend: str) -> str:
    """The name of ``backend``'s default flow with :data:`PASSES` run before its
    backend-specific types and templates (registered with hls4ml once)."""
    for name, cls in PASSES.items():
        if name not in get_available_passes():
            register_pass(name, cls)
    if FLOW not in get_available_flows():
        register_flow(FLOW, list(PASSES))
    name = f"shiftquant_{backend.lower()}_ip"
    if name not in get_available_flows():
        requires = list(get_flow(hls4ml.backends.get_backend(backend).get_default_flow()).requires)
        at = next(i for i, f in enumerate(requires) if f.endswith(":specific_types"))
        register_flow(name, None, requires=requires[:at] + [FLOW] + requires[at:])
    return name


def _prepared(path):
    """The QONNX model at ``path`` as hls4ml's QONNX frontend reads it: cleaned, channels-last,
    its input too (so both io types take channels-last data), ``Gemm`` as ``MatMul``, no ``Identity``;
    activation ``HALF_UP`` rounding as ``ROUND``."""
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.transformation.remove import RemoveIdentityOps
    from qonnx.util.cleanup import cleanup_model

    model = cleaned(str(path))
    if model.get_nodes_by_op_type("MultiThreshold"):
        raise ExportError(f"{path} is in the thresholds form (MultiThreshold nodes: BatchNorm folded), which hls4ml's "
                          "QONNX frontend does not read: write it with sq.export_qonnx(..., form='float') or "
                          "shiftquant export --qonnx-form float")
    unsupported = sorted({n.op_type for n in model.graph.node} & {"GreaterOrEqual", "Greater", "Gather", "ReduceSum"})
    if unsupported:
        raise ExportError(f"{path}: power-of-two activations (their comparisons: {', '.join(unsupported)}) have no "
                          "hls4ml layer; for hls4ml train with uniform activations (act_uniform_bits) or weight-only "
                          "(act_shift_bits=null)")
    for node in model.get_nodes_by_op_type("Conv"):
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        channels = model.get_tensor_shape(node.input[0])[1]
        if group not in (1, channels):
            raise ExportError(f"{path}: convolution {node.name!r} has {group} groups over {channels} channels; "
                              "hls4ml converts plain (1 group) and depthwise convolutions only")
    for node in model.get_nodes_by_op_type(QUANT):
        if model.get_initializer(node.input[0]) is not None:
            continue  # a weight: already integers on its scale
        rounding = next(a for a in node.attribute if a.name == "rounding_mode")
        if rounding.s.decode() != _HALF_UP:
            raise ExportError(f"{path}: activation Quant {node.name!r} rounds {rounding.s.decode()}; this flow takes "
                              f"the graphs sq.export_qonnx writes, whose activations round {_HALF_UP}")
        rounding.s = b"ROUND"  # the only rounding to nearest hls4ml's frontend takes; HalfUpActivations restores it
    model = model.transform(RemoveIdentityOps()).transform(ConvertToChannelsLastAndClean(make_input_channels_last=True))
    model = model.transform(GemmToMatMul())
    return cleanup_model(model)


def to_hls(path, output_dir, backend: str = "Vitis", io_type: str = "io_parallel", part: str | None = None,
           precision: str = "fixed<32,16>"):
    """An hls4ml model of the QONNX graph at ``path`` (``sq.export_qonnx``), written to
    ``output_dir``, its power-of-two weights as shifts. ``precision`` is hls4ml's default type
    (the input's and what the frontend does not infer); ``compile()`` builds the C simulation
    (g++), ``predict(x)`` takes channels-last inputs. ``io_type``: ``io_parallel`` (every layer
    unrolled: small trigger networks) or ``io_stream`` (layers connected by streams, convolutions
    over line buffers: what a ResNet-20 needs to compile in minutes; refused where a ``Transpose``
    is left, before a ``Flatten`` of a feature map, which hls4ml 1.3 streamed wrongly)."""
    if io_type not in ("io_parallel", "io_stream"):
        raise ConfigError("io_type", io_type, "'io_parallel' or 'io_stream'")
    model = _prepared(path)
    # the Transposes before a global pool go (ChannelsLastGlobalPool); any other stays in hls4ml's graph
    moved = [n.name for n in model.get_nodes_by_op_type("Transpose")
             if {c.op_type for c in model.find_consumers(n.output[0]) or []} != {"GlobalAveragePool"}]
    if io_type == "io_stream" and moved:  # refused before hls4ml writes anything to output_dir
        raise ExportError(f"{path}: io_stream with a Transpose left after the channels-last conversion ({moved[0]}: a "
                          "Flatten of a feature map) gave wrong outputs in hls4ml 1.3's C simulation; use io_parallel, "
                          "or a global pool before the classifier")
    config = hls4ml.utils.config.config_from_onnx_model(model, granularity="name", backend=backend,
                                                        default_precision=precision)
    config["Flows"] = [flow(backend)]
    extra = {} if part is None else {"part": part}
    # the C simulation reads the weights from text files (large header initializers take g++ far longer)
    hls_model = hls4ml.converters.convert_from_onnx_model(model, output_dir=str(Path(output_dir)), io_type=io_type,
                                                          backend=backend, hls_config=config, write_weights_txt=True,
                                                          **extra)
    return hls_model


def shift_layers(hls_model) -> list[str]:
    """The layers of an hls4ml model whose weights are exponents (the shift product)."""
    return [layer.name for layer in hls_model.get_layers()
            if "weight" in layer.weights and isinstance(layer.weights["weight"].type.precision, ExponentPrecisionType)]
