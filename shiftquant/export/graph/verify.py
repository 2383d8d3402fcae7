"""The load-time proof of a bundle: every node's shape, kind and range, once, before any backend runs.

:class:`~.loader.Graph` first checks each manifest field's type and limits as it reads it. This
module then runs the whole graph abstractly, node by node, in the order the runtime executes it:

* **Shapes.** Each op runs on PyTorch *meta* tensors (shapes and dtypes, no data), so the proof
  uses PyTorch's own shape rules, the ones the reference kernels run with, at two batch sizes.
  Every extent is at least 1, every node holds at most :data:`MAX_ELEMENTS` values per example,
  and its batch is where ``batch_dim`` says. A shift layer's input matches its weights exactly
  (channels, features).
* **Kinds.** Whether the runtime computes a node in integers (``grid``: integers worth a
  power-of-two ``unit``; ``sum``: a global or window sum of grid integers; ``pixels``) or in float,
  decided by each op's definition (:mod:`.ops`) as the runtime decides it at run time.
* **Ranges.** Interval arithmetic from the pixels and the level integers through the weights,
  thresholds and shifts. A node's declared ``dtype`` must be its kind's, its declared ``range``
  must hold the proven one, and a shift layer fed by integers must declare an
  ``accumulator_bound`` at least the proven one.

A bundle that lies about any of these is refused here, with a :class:`~shiftquant.errors.BundleError`
naming the node, for every backend alike: the C backend sizes its buffers, loops and integer types
from facts that were proven, not from claims.
"""
from __future__ import annotations

import math

import torch

from ...errors import BundleError
from .. import ops
from ..format.ints import FLOAT
from ..format.values import THROUGH_THRESHOLDS, Fact
from ..ops.quantizers import input_unit, level_ints
from ..ops.schema import MAX_ELEMENTS, MAX_RANK

PROBE_BATCHES = (2, 3)  # the batch sizes the shapes are proven at


def verify(g, declared: bool = True) -> dict[str, Fact]:
    """The facts of every node of the graph ``g`` (whose fields :class:`~.loader.Graph` has checked).
    ``declared``: prove kinds and ranges too, and hold the declared types, ranges and accumulator
    bounds to them; without, shapes only (the exporter's graphs, built while it is still
    integerizing them)."""
    shapes = [_shapes(g, batch) for batch in PROBE_BATCHES]
    g.batch = 1
    facts: dict[str, Fact] = {}
    for node in g.nodes:
        shape = _per_example(g, node, [s[node["name"]] for s in shapes])
        if declared:
            facts[node["name"]] = _kind(g, node, [facts[i] for i in node["inputs"]], shape)
            _check_declared(g, node, facts[node["name"]])
        else:
            facts[node["name"]] = Fact(shape)
    return facts


# ---------------------------------------------------------------------------------------------- shapes
def _shapes(g, batch: int) -> dict[str, tuple[int, ...]]:
    """Every node's output shape at ``batch``, by running the graph on meta tensors."""
    def tensor(key: str) -> torch.Tensor:
        t = g.tensor(key)
        return torch.empty(tuple(t.shape), dtype=torch.from_numpy(t[:0].reshape(0)).dtype, device="meta")

    g.batch = batch
    values: dict[str, torch.Tensor] = {}
    for node in g.nodes:
        args = [values[i] for i in node["inputs"]]
        definition = ops.get(node["op"])
        try:
            if definition.shape is not None:
                out = definition.shape(g, node, args, batch)
            else:
                out = definition.float(node, args, tensor, batch)
        except BundleError:
            raise
        except Exception as exc:  # PyTorch's own shape errors: the shapes do not fit each other
            g.fail(node, f"shapes do not fit ({type(exc).__name__}: {str(exc)[:200]})")
        if out.dim() > MAX_RANK or math.prod(out.shape) > MAX_ELEMENTS * max(PROBE_BATCHES):
            g.fail(node, f"output shape {list(out.shape)} exceeds {MAX_RANK} dimensions or "
                         f"{MAX_ELEMENTS} values per example")
        values[node["name"]] = out.to(torch.float32)
    return {name: tuple(v.shape) for name, v in values.items()}


def _per_example(g, node: dict, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """One example's shape, from the shapes at the probe batches: the batch where ``batch_dim``
    says, every other extent the same at every batch and at least 1."""
    dim = node.get("batch_dim", 0)
    per = []
    for shape, batch in zip(shapes, PROBE_BATCHES):
        if dim is not None:
            if len(shape) <= dim or shape[dim] != batch:
                g.fail(node, f"its output {list(shape)} lost the batch dimension ({batch}, dim {dim})")
            shape = shape[:dim] + shape[dim + 1:]
        per.append(shape)
    if any(p != per[0] for p in per):
        g.fail(node, f"its output shape depends on the batch beyond dimension {dim}: {per}")
    if any(n < 1 for n in per[0]):
        g.fail(node, f"its output {list(per[0])} has an empty dimension")
    return per[0]


# ---------------------------------------------------------------------------------------------- kinds and ranges
def _kind(g, node: dict, args: list[Fact], shape: tuple[int, ...]) -> Fact:
    """The node's kind and range, decided by its op's definition as the runtime decides them."""
    definition = ops.get(node["op"])
    if definition.run is not None:
        return definition.prove(g, node, args, shape)
    if all(a.is_int for a in args) and definition.prove is not None:  # a constant: no args
        out = definition.prove(g, node, args, shape)
        if out is not None:
            return out
    if any(a.kind in THROUGH_THRESHOLDS for a in args):
        g.fail(node, "reads a global integer sum or an integer LayerNorm as float values: they can only feed a "
                     "shift layer with input thresholds")
    spec = node.get("output_quantizer") if definition.quantizes_output else None
    if spec:
        levels = level_ints(spec)
        return Fact(shape, "grid", int(levels.min()), int(levels.max()), input_unit(spec))
    return Fact(shape, non_negative=non_negative_output(node, [a.signless for a in args]))


def non_negative_output(node: dict, inputs_non_negative: list[bool]) -> bool:
    """Whether a float op's output is >= 0, given which of its inputs are (the exporter's proof
    of non-negative shift layer inputs, and this one's)."""
    return ops.get(node["op"]).sign(node, inputs_non_negative)


def _check_declared(g, node: dict, fact: Fact) -> None:
    dtype = node["dtype"]
    if not fact.is_int:
        if dtype != FLOAT:
            g.fail(node, f"computes float values but declares {dtype}")
        return
    if dtype == FLOAT:
        g.fail(node, "computes integers but declares float32")
    lo, hi = node["range"]
    if fact.lo < lo or fact.hi > hi:
        g.fail(node, f"declares the range [{lo}, {hi}], but its values reach [{fact.lo}, {fact.hi}]")
