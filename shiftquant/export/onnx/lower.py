"""The ONNX backend: a verified bundle graph lowered node by node, each by its op's ONNX mapping.

Every op declares its mapping once, in its definition (``OpDef.onnx``, :mod:`..ops`); this module
walks the proven graph and hands each node to it, with a :class:`Builder` for emitting ONNX nodes.
The ONNX graph computes what the reference runtime computes:

* **Integers** (grid codes, pixels, sums, accumulators) travel as float32 values holding
  integers, exact because every one is below 2^24 in magnitude (checked here from the proven
  ranges and accumulator bounds: a bundle beyond that is refused by name). Shift layers become a
  convolution or matrix product with the integer weights, thresholds become comparisons counted
  and looked up (``Gather``), shifts multiplications by powers of two. An integer-only bundle
  therefore gives the reference's logits bit for bit in onnxruntime.
* **Float ops** use the matching ONNX operator in float32, as the runtime uses PyTorch's kernel:
  equal up to float rounding (onnxruntime's kernels sum in another order).

The node's arguments reach its mapping as the runtime's kernels see them: integers where the node
computes on integers, else float values (integers times their unit, pixels normalized).
"""
from __future__ import annotations

import numpy as np

from ...errors import ExportError
from .. import ops
from ..format.ints import FLOAT32_EXACT
from ..format.pixels import pixel_dtype
from ..format.values import THROUGH_THRESHOLDS
from ..ops.quantizers import boundaries, level_ints

OPSET = 20  # Gelu (approximate), LayerNormalization, ReduceMean's axes input, Pad's wrap mode
INPUT = "input"


class Builder:
    """Emits ONNX nodes and constants for one graph; what an op's ``onnx`` mapping is handed."""

    def __init__(self, graph):
        self.graph, self.nodes, self.initializers = graph, [], []
        self.by_name = {n["name"]: n for n in graph.nodes}
        self._count = 0

    # ------------------------------------------------------------------ emitting
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        """One ONNX node of ``op_type`` on ``inputs`` (``""`` for an omitted optional input); its output."""
        from onnx import helper

        out = self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value, dtype=np.float32) -> str:
        """A constant tensor (float32 unless ``dtype``)."""
        from onnx import numpy_helper

        name = self.fresh("c")
        self.initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype, order="C"), name))
        return name

    def ints(self, values) -> str:
        return self.const(list(values), np.int64)

    def with_batch(self, shape) -> str:
        """An int64 shape: ``shape`` with the run's batch size where it holds -1."""
        if -1 not in shape:
            return self.ints(shape)
        at = list(shape).index(-1)
        batch = self.op("Shape", INPUT, start=0, end=1)
        return self.op("Concat", self.ints(shape[:at]), batch, self.ints(shape[at + 1:]), axis=0)

    def tensor(self, key: str) -> np.ndarray:
        return self.graph.tensor(key)

    def input(self) -> str:
        """The graph input (pixels or float32)."""
        return INPUT

    def float_of(self, name: str) -> str:
        """Bundle node ``name``'s output as float values (``Runtime.to_float``)."""
        return _to_float(self, name)

    # ------------------------------------------------------------------ what the graph proved
    def integer(self, node: dict) -> bool:
        """Whether ``node`` computes on integers (its proven kind), as the runtime decides."""
        return self.graph.facts[node["name"]].is_int
    def rank(self, name: str) -> int:
        """The rank of node ``name``'s output, its batch included."""
        node = self.by_name[name]
        return len(self.graph.facts[name].shape) + (node.get("batch_dim", 0) is not None)

    def shape_of(self, node: dict) -> list[int]:
        """``node``'s proven output shape with -1 where the batch goes (a ``Reshape`` target)."""
        shape = list(self.graph.facts[node["name"]].shape)
        if node.get("batch_dim", 0) is not None:
            shape.insert(node.get("batch_dim", 0), -1)
        return shape

    def channel_shape(self, rank: int, dim: int, size: int = -1) -> list[int]:
        """A shape of ``rank`` ones with ``size`` at ``dim`` (a per-channel constant's broadcast)."""
        shape = [1] * rank
        shape[dim] = size
        return shape

    # ------------------------------------------------------------------ integer building blocks
    def level_index(self, x: str, rank: int, thr: np.ndarray, channel_dim: int, direction=None) -> str:
        """``sum_k [d_c * x >= t_kc]`` (thresholds ``(L - 1, K)``, K = 1 or the channels at
        ``channel_dim``): the level index, as int64 (comparisons counted, as the runtime does)."""
        x = self.oriented(x, rank, channel_dim, direction)
        table = exact_table(thr).reshape([thr.shape[0]] + self.channel_shape(rank, channel_dim, thr.shape[1]))
        reached = self.op("Cast", self.op("GreaterOrEqual", self.op("Unsqueeze", x, self.ints([0])), self.const(table)),
                          to=1)
        return self.op("Cast", self.op("ReduceSum", reached, self.ints([0]), keepdims=0), to=7)

    def oriented(self, x: str, rank: int, channel_dim: int, direction) -> str:
        """``d_c * x``: the channels compared negated (``direction`` -1) multiplied by -1; ``x``
        itself where none is."""
        if direction is None or not np.any(np.asarray(direction) < 0):
            return x
        return self.op("Mul", x, self.const(np.asarray(direction).reshape(self.channel_shape(rank, channel_dim))))

    def lookup(self, index: str, values) -> str:
        """``values[index]`` (integers, as float32)."""
        return self.op("Gather", self.const(np.asarray(values, dtype=np.float64)), index)

    def levels(self, x: str, rank: int, thr: np.ndarray, channel_dim: int, values, direction=None) -> str:
        """``values[level_index(...)]``: integers requantized by thresholds (a shift layer's input
        and output stages)."""
        return self.lookup(self.level_index(x, rank, thr, channel_dim, direction), values)

    def shift_weights(self, w: np.ndarray) -> str:
        """A shift layer's integer weights (``Conv`` layout, or ``MatMul``'s transposed)."""
        return self.const(w)

    def quantize(self, x: str, rank: int, spec: dict) -> str:
        """An input quantizer on float values: its level integers (``quantizers.quantize_input``)."""
        if spec["policy"] == "learned_pot":
            z = self.op("Mul", x, self.const(np.float32(1.0) / np.exp2(np.float32(spec["log2_scale"]))))
        else:
            dim = spec["channel_dim"] % rank
            per_channel = self.channel_shape(rank, dim)
            mean = self.tensor(spec["running_mean"]).astype(np.float32)
            invstd = (1.0 / np.sqrt(self.tensor(spec["running_var"]).astype(np.float32) + np.float32(spec["norm_eps"])))
            gain = (invstd * np.float32(1.0 / spec["clip_sigma"])).astype(np.float32)
            z = self.op("Mul", self.op("Sub", x, self.const(mean.reshape(per_channel))), self.const(gain.reshape(per_channel)))
        return self._threshold_quantize(z, spec)

    def _threshold_quantize(self, z: str, spec: dict) -> str:
        q = spec["quantizer"]
        mags, thresholds = boundaries(q)
        mag_ints = [round(m / q["resolution"]) for m in mags]
        a = self.op("Abs", z)
        compare = "GreaterOrEqual" if q["rounding"] == "nearest" else "Greater"
        reached = self.op("Cast", self.op(compare, self.op("Unsqueeze", a, self.ints([-1])),
                                          self.const(np.asarray(thresholds, np.float32))), to=1)
        mag = self.lookup(self.op("Cast", self.op("ReduceSum", reached, self.ints([-1]), keepdims=0), to=7), mag_ints)
        zero = self.const(0.0)
        if q["zero"]:
            mag = self.op("Where", self.op("Less", a, self.const(np.float32(mags[0] / 2))), zero, mag)
        positive = self.op("Greater", z, zero)
        if q["signed"]:
            top = int(level_ints(spec).max())
            return self.op("Min", self.op("Where", positive, mag, self.op("Neg", mag)), self.const(float(top)))
        return self.op("Where", positive, mag, zero if q["zero"] else self.const(float(mag_ints[0])))


def exact_table(thr: np.ndarray) -> np.ndarray:
    """Integer thresholds as float64 clipped to +-2^24: every compared integer is below 2^24 in
    magnitude, so the clip changes no comparison and keeps the table exact in float32."""
    return np.clip(thr.astype(np.float64), -FLOAT32_EXACT, FLOAT32_EXACT)


# ---------------------------------------------------------------------------------------------- the walk
def _to_float(b: Builder, name: str) -> str:
    """Bundle node ``name``'s output as the float values the runtime's float kernels read
    (``Runtime.to_float``)."""
    fact, value = b.graph.facts[name], value_name(name)
    if fact.kind == "float":
        return value
    if fact.kind == "pixels":
        px, rank = b.graph.pixels, b.rank(name)
        shape = b.channel_shape(rank, 1)
        x = b.op("Div", value, b.const(float(px["scale"])))
        x = b.op("Sub", x, b.const(np.asarray(px["mean"], np.float32).reshape(shape)))
        return b.op("Div", x, b.const(np.asarray(px["std"], np.float32).reshape(shape)))
    if fact.kind in THROUGH_THRESHOLDS:
        raise ExportError(f"node {name!r}: integers of kind {fact.kind!r} can only feed a shift layer with input "
                          "thresholds")
    return b.op("Mul", value, b.const(np.float32(fact.unit)))


def _check_exact(g, node: dict) -> None:
    """Every integer of the node, and of a shift layer's partial sums, is exact in float32."""
    fact = g.facts[node["name"]]
    worst = max(abs(fact.lo), abs(fact.hi)) if fact.is_int else 0
    if node["op"].startswith("shift_") and node["name"] in g.weights:
        worst = max(worst, int(np.abs(g.weights[node["name"]]).reshape(len(g.weights[node["name"]]), -1).sum(1).max())
                    * _input_magnitude(g, node))
    if worst >= FLOAT32_EXACT:
        raise ExportError(f"node {node['name']!r} ({node['op']}): integers up to {worst} do not all fit float32 "
                          f"exactly (2^24), so an ONNX graph would round them")


def _input_magnitude(g, node: dict) -> int:
    ints = level_ints(node["input_quantizer"])
    return max(int(np.abs(ints).max()), 1)


def _lower_node(b: Builder, node: dict) -> str:
    g, definition = b.graph, ops.get(node["op"])
    _check_exact(g, node)
    spec = node.get("output_quantizer") if definition.quantizes_output else None
    on_integers = definition.run is not None or (g.facts[node["name"]].is_int and not spec)
    args = [value_name(a) if on_integers else _to_float(b, a) for a in node["inputs"]]
    out = definition.onnx.lower(b, node, args)
    if spec:
        out = b.quantize(out, b.rank(node["name"]), spec)
    return out


def to_onnx(graph, name: str = "shiftquant"):
    """The ONNX model of a loaded, verified bundle graph (a :class:`~..graph.loader.Graph`): input
    ``input`` (uint8 pixels, or float32), one output per bundle output, dynamic batch."""
    from onnx import TensorProto, checker, helper

    b = lower_nodes(Builder(graph))
    source = next(n for n in graph.nodes if n["op"] == "input")
    elem = TensorProto.FLOAT if graph.pixels is None else \
        helper.np_dtype_to_tensor_dtype(np.dtype(pixel_dtype(graph.pixels["scale"])))
    inputs = [helper.make_tensor_value_info(INPUT, elem, ["batch", *source["shape"]])]
    outputs = []
    for name, o in zip(output_names(graph), graph.manifest["outputs"]):
        b.nodes.append(helper.make_node("Identity", [_to_float(b, o)], [name], name=b.fresh("output")))
        shape = ["batch" if v == -1 else v for v in b.shape_of(b.by_name[o])]
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    model = helper.make_model(helper.make_graph(b.nodes, name, inputs, outputs, b.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="shiftquant")
    checker.check_model(model)
    return model


def lower_nodes(b: Builder) -> Builder:
    """Every node of ``b.graph`` lowered into ``b``, its output named :func:`value_name`."""
    from onnx import helper

    for node in b.graph.nodes:
        b.nodes.append(helper.make_node("Identity", [_lower_node(b, node)], [value_name(node["name"])],
                                        name=b.fresh("value")))
    return b


def value_name(node_name: str) -> str:
    """The ONNX value holding bundle node ``node_name``'s output (as the runtime holds it)."""
    return f"v:{node_name}"


def output_names(graph) -> list[str]:
    outs = graph.manifest["outputs"]
    return ["logits"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]


def write_onnx(graph, path) -> None:
    """Lower ``graph`` (:func:`to_onnx`) and save it at ``path``."""
    import onnx

    onnx.save(to_onnx(graph), str(path))


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    """The first output of the ONNX model at ``path`` on ``x``, in onnxruntime (CPU)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {INPUT: x})[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime refuses the exported graph {path}: {type(exc).__name__}: {str(exc)[:400]} "
                          "(check=False writes the file without this check; the shift bundle, sq.export, does not "
                          "depend on ONNX)") from None
