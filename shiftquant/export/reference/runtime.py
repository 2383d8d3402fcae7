"""The reference runtime: executes a bundle on numpy arrays; the oracle the other backends match.

It runs a :class:`~.loader.Graph` (every field checked, shapes, kinds and ranges proven at load)
node by node, each with its op's kernels (:mod:`.ops`): a node whose inputs are integers runs its
op's integer kernel when the op has one for them, anything else its float kernel. Integer nodes
run in integers only (comparisons, shifts, additions); every integer a node computes is checked
against the type and range the bundle declares for it (``docs/bundle.md``) and stored at that width.

Everything float goes through one choke point, :meth:`Runtime.in_float`, which records the node
(``observed_float_ops``) and refuses float in a node the bundle does not list in ``float_ops``:
a bundle that says ``integer_only`` runs with float arithmetic refused. Float kernels are
PyTorch's own in float32, so that, under ``deploy_exact``, the runtime's logits equal the
PyTorch model's bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import BundleError
from .. import ops
from ..format.bundle import read_bundle
from ..format.ints import FLOAT, INT_TYPES
from ..format.pixels import PixelInput, pixel_dtype, pixels_to_float
from ..format.values import THROUGH_THRESHOLDS, Value
from ..graph.loader import Graph
from ..ops.quantizers import input_unit


class Runtime(Graph):
    """A loaded bundle. ``run(x)`` takes and returns numpy arrays; ``run_int(x)`` returns integer
    logits and the power of two they are worth.

    ``strict`` (the default): float computations are allowed only in the nodes the bundle lists in
    ``float_ops``. The exporter builds a non-strict runtime, which allows and records them all.
    """

    def __init__(self, manifest: dict, tensors: dict[str, np.ndarray], source: str = "bundle", strict: bool = True):
        super().__init__(manifest, tensors, source, strict)
        self.observed_float_ops: list[str] = []  # nodes that computed in float, in the order they did
        self._x = None  # the input of the run in progress

    # ------------------------------------------------------------------ float (one choke point)
    def in_float(self, node: dict, kernel, *args):
        """The one way execution computes in float: records ``node``, and refuses a node that the
        bundle does not list in ``float_ops`` (strict runtimes)."""
        name = node["name"]
        if self.strict and name not in self.float_ops:
            self.fail(node, "computes in float, but the bundle does not list it in float_ops"
                      + (" (it says integer_only)" if self.manifest.get("integer_only") else ""))
        if name not in self.observed_float_ops:
            self.observed_float_ops.append(name)
        return kernel(*args)

    def to_float(self, x: Value) -> torch.Tensor:
        """Float values of a value: integers become ``integer x unit`` (exact below 2^24 units),
        pixels the float model's input."""
        if not x.is_int:
            return x.data
        if x.kind == "pixels":
            return pixels_to_float(x.data, self.pixels)
        if x.kind in THROUGH_THRESHOLDS:
            raise BundleError(f"{self.source}: integers of kind {x.kind!r} can only feed a shift layer with input "
                              "thresholds")
        return torch.from_numpy((x.data.astype(np.float64) * x.unit).astype(np.float32))

    # ------------------------------------------------------------------ execution
    def _run_node(self, node: dict, values: dict) -> Value:
        definition = ops.get(node["op"])
        args = [values[i] for i in node["inputs"]]
        if definition.run is not None:
            out = definition.run(self, node, args)
        else:
            out = None
            if all(a.is_int for a in args) and definition.integer is not None:  # a constant: no args
                out = definition.integer(self, node, args)
            if out is None:
                out = self.in_float(node, self._float_node, node, definition, args)
        dim = node.get("batch_dim", 0)
        if dim is not None and (len(out.data.shape) <= dim or out.data.shape[dim] != self.batch):
            self.fail(node, f"its output {list(out.data.shape)} lost the batch dimension ({self.batch}, dim {dim})")
        return self._store(node, out)

    def _float_node(self, node: dict, definition, args: list[Value]) -> Value:
        out = self.float_op(node, [self.to_float(a) for a in args])
        spec = node.get("output_quantizer") if definition.quantizes_output else None
        return Value(self.quantize_input(out, spec), input_unit(spec)) if spec else Value(out)

    def _store(self, node: dict, out: Value) -> Value:
        """``out`` checked against the node's declared type and range, stored at that width."""
        dtype = node["dtype"]
        if dtype == FLOAT:
            if out.is_int:
                self.fail(node, "computes integers but declares float32")
            return out
        if not out.is_int:
            self.fail(node, f"computes float values but declares {dtype}")
        lo, hi = node["range"]
        if out.data.size and (int(out.data.min()) < lo or int(out.data.max()) > hi):
            self.fail(node, f"value {int(out.data.min())}..{int(out.data.max())} outside its declared range "
                            f"[{lo}, {hi}] ({dtype})")
        return Value(out.data.astype(INT_TYPES[dtype]), out.unit, out.kind)

    def take_input(self, node: dict) -> Value:
        """The input of the run in progress, checked against the input node."""
        x = np.asarray(self._x)
        if list(x.shape[1:]) != node["shape"] or x.ndim < 2:
            raise BundleError(f"input shape {list(x.shape)}: expected (batch, {', '.join(map(str, node['shape']))})")
        if self.pixels is None:
            if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
                raise BundleError(f"input of dtype {x.dtype}: this bundle takes float32 values")
            return Value(torch.from_numpy(x.astype(np.float32)))
        top = self.pixels["scale"]
        if not np.issubdtype(x.dtype, np.integer):
            raise BundleError(f"input of dtype {x.dtype}: this bundle takes integer pixels 0..{top} "
                              f"({np.dtype(pixel_dtype(top)).name}); PixelInput.from_float converts normalized values")
        if x.size and (int(x.min()) < 0 or int(x.max()) > top):
            raise BundleError(f"input pixels {int(x.min())}..{int(x.max())} outside 0..{top}")
        return Value(x.astype(pixel_dtype(top)), None, "pixels")

    def execute(self, x) -> list[Value]:
        """Every output's :class:`Value`. A bundle whose values leave their declared types fails
        here, naming the node."""
        values = self.values(x)
        return [values[o] for o in self.manifest["outputs"]]

    @torch.no_grad()
    def values(self, x) -> dict[str, Value]:
        """Every node's :class:`Value` for the input ``x``, by node name."""
        values: dict[str, Value] = {}
        self._x, self.batch = x, int(np.shape(x)[0])
        try:
            for node in self.nodes:
                try:
                    values[node["name"]] = self._run_node(node, values)
                except BundleError:
                    raise
                except (RuntimeError, ValueError, TypeError, IndexError, KeyError, OverflowError, AttributeError,
                        MemoryError) as exc:
                    self.fail(node, f"cannot execute: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            self._x = None
        return values

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

    # ------------------------------------------------------------------ inputs
    def input_from_float(self, x) -> np.ndarray:
        """What this bundle takes for the float model's input ``x``: the pixels ``x`` was
        normalized from (a pixel bundle), or ``x`` as float32."""
        if self.pixels is None:
            return np.asarray(x, dtype=np.float32)
        return PixelInput(tuple(self.pixels["mean"]), tuple(self.pixels["std"]), self.pixels["scale"]).from_float(x)

    def example_input(self, batch: int = 1) -> np.ndarray:
        """Zeros of the input's shape and type."""
        node = next(n for n in self.nodes if n["op"] == "input")
        dtype = np.float32 if self.pixels is None else pixel_dtype(self.pixels["scale"])
        return np.zeros((batch, *node["shape"]), dtype=dtype)


def load_bundle(path: str | Path) -> Runtime:
    """Read, verify and decode a bundle; raises :class:`BundleError` unless it is intact."""
    manifest, tensors = read_bundle(path)
    return Runtime(manifest, tensors, str(path))
