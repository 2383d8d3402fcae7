"""A bundle's graph, checked field by field and proven whole, before any backend sees it.

:class:`Graph` reads a manifest and its tensors: every reference resolves, every node's fields
have the types and limits its op's definition declares (:mod:`.ops`), every tensor its shape,
every shift layer's codes decode, every ``dtype`` holds its ``range``; then :func:`.verify.verify`
proves the shapes, kinds and ranges of the whole graph. Any failure is a
:class:`~shiftquant.errors.BundleError` naming the node. The backends (the reference
:class:`~.runtime.Runtime`, the C backend) only execute what was proven here.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import BundleError, shown
from .. import ops
from ..format.ints import FLOAT, INT_TYPES, holds
from ..ops.quantizers import check_act_quantizer, quantize_input
from ..ops.schema import MAX_INT, MAX_RANK, is_int
from ..ops.shift import dequantize

MAX_NAME = 256  # characters of a node name


def valid_name(name) -> bool:
    """A node name: 1 to ``MAX_NAME`` printable characters (no control or terminal escapes)."""
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME and name.isprintable()


class Graph:
    """A loaded bundle's graph: ``nodes``, ``tensors``, the decoded ``weights`` and ``thresholds``
    of its shift layers and the proven ``facts`` of every node (:class:`~.values.Fact`).

    ``strict`` (the default): float computations are allowed only in the nodes the bundle lists in
    ``float_ops``, and kinds and ranges are proven and held to the declared types. The exporter
    builds non-strict graphs while it is still integerizing them (shapes proven only).
    """

    def __init__(self, manifest: dict, tensors: dict[str, np.ndarray], source: str = "bundle", strict: bool = True):
        self.manifest, self.tensors, self.source, self.strict = manifest, tensors, source, strict
        self.nodes = manifest.get("nodes") if isinstance(manifest, dict) else None
        listed = manifest.get("float_ops") if isinstance(manifest, dict) else None
        self.float_ops = list(listed) if isinstance(listed, list) else []
        self.weights: dict[str, np.ndarray] = {}  # decoded integer weights of the shift layers
        self.thresholds: dict[str, np.ndarray] = {}  # decoded (cumulative) threshold tables
        self.batch = 1  # the batch being run or proven (reshape and expand hold -1 for it)
        try:
            self._check()
            from .verify import verify  # the proof reads the checked graph

            self.facts = verify(self, declared=self.strict)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            raise BundleError(f"{self.source}: malformed manifest ({type(exc).__name__}: {str(exc)[:200]})") from None

    # ------------------------------------------------------------------ the rules' interface
    def fail(self, node: dict, what: str):
        op = node.get("op")
        raise BundleError(f"{self.source}: node {node.get('name')!r} ({op if ops.get(op) else repr(op)}): {what}")

    def tensor(self, key, shape=None) -> np.ndarray:
        if not isinstance(key, str) or key not in self.tensors:
            raise BundleError(f"{self.source}: the manifest names tensor {key!r}, which the bundle lacks")
        t = self.tensors[key]
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise BundleError(f"{self.source}: tensor {key!r} has shape {t.shape}, expected {tuple(shape)}")
        return t

    def ints(self, node: dict, value, what: str, n: int = 1, low: int = 0, high: int = MAX_INT) -> list[int]:
        """``value`` as ``n`` integers in ``[low, high)`` (one integer stands for ``n`` equal ones)."""
        v = [value] * n if is_int(value) else value
        if not isinstance(v, list) or len(v) != n or not all(is_int(i) and low <= i < high for i in v):
            self.fail(node, f"{what} must be {n} integer{'s' if n > 1 else ''} from {low} to {high - 1}")
        return v

    def number(self, node: dict, value, what: str, low: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < low:
            self.fail(node, f"{what} must be a finite number >= {low}")
        return float(value)

    def check_act_quantizer(self, node: dict, spec) -> None:
        check_act_quantizer(self, node, spec)

    def check_pixels(self, node: dict, px) -> None:
        if px is None:
            return
        if not isinstance(px, dict) or not isinstance(px.get("mean"), list) or not isinstance(px.get("std"), list) \
                or len(px["mean"]) != len(px["std"]) or len(px["mean"]) not in (1, node["shape"][0]):
            self.fail(node, "pixels must have a mean and a std per input channel")
        self.ints(node, px.get("scale"), "pixels scale", low=1)
        for v in px["mean"]:
            self.number(node, v, "pixels mean", -1e30)
        if not all(self.number(node, v, "pixels std", 0.0) > 0 for v in px["std"]):
            self.fail(node, "pixels std must be positive")

    # ------------------------------------------------------------------ the op set's float kernels
    # The exporter's threshold searches evaluate exactly the float chains the thresholds replace
    # with them; the reference runtime executes with them (only through ``Runtime.in_float``).
    def float_op(self, node: dict, args: list[torch.Tensor]) -> torch.Tensor:
        """``node``'s float kernel (PyTorch's) on ``args``."""
        return ops.get(node["op"]).float(node, args, lambda key: torch.from_numpy(self.tensor(key)), self.batch)

    def quantize_input(self, x: torch.Tensor, spec: dict) -> np.ndarray:
        """An input quantizer on float values: the integers on its grid."""
        return quantize_input(self, x, spec)

    def dequantize(self, node: dict, acc: np.ndarray, offset_sums: np.ndarray | None = None) -> torch.Tensor:
        """A shift layer's float output ``acc x grid + bias`` (:func:`.ops.shift.dequantize`)."""
        return dequantize(self, node, acc, offset_sums)

    # ------------------------------------------------------------------ checks
    def _check(self) -> None:
        """Every reference resolves, every field has its type and range, every tensor its shape,
        every shift layer's codes decode: all before any run."""
        if not isinstance(self.nodes, list) or not isinstance(self.manifest.get("outputs"), list):
            raise BundleError(f"{self.source}: manifest lacks its node or output list")
        inputs = [n for n in self.nodes if isinstance(n, dict) and n.get("op") == "input"]
        if len(inputs) != 1:
            raise BundleError(f"{self.source}: a bundle has exactly one input node, this one {len(inputs)}")
        self.pixels = inputs[0].get("pixels")
        seen: set[str] = set()
        for node in self.nodes:
            self._check_node(node, seen)
            seen.add(node["name"])
        if not isinstance(self.manifest.get("exact", False), bool):
            raise BundleError(f"{self.source}: exact must be true or false")
        self._check_agreement(self.manifest.get("agreement"))
        for o in self.manifest["outputs"]:
            if o not in seen:
                raise BundleError(f"{self.source}: output {o!r} is not computed")
        if self.strict:
            self._check_float_ops(seen)

    def _check_node(self, node: dict, seen: set) -> None:
        if not valid_name(node.get("name")) or node["name"] in seen:
            raise BundleError(f"{self.source}: a node has a missing, repeated or malformed name (1 to "
                              f"{MAX_NAME} printable characters): {shown(str(node.get('name')))!r}")
        if not isinstance(node.get("inputs"), list):
            self.fail(node, "inputs must be a list of node names")
        if node.get("module") is not None and not valid_name(node["module"]):
            self.fail(node, f"module must be 1 to {MAX_NAME} printable characters")
        for i in node["inputs"]:
            if i not in seen:
                raise BundleError(f"{self.source}: node {node['name']!r} reads {i!r} before it is computed")
        definition = ops.get(node["op"])
        if definition is None:
            raise BundleError(f"{self.source}: unknown op {node['op']!r}")
        bd = node.get("batch_dim", 0)
        if bd is not None and (not is_int(bd) or not 0 <= bd < MAX_RANK):
            self.fail(node, f"batch_dim must be a dimension 0..{MAX_RANK - 1} or null")
        definition.validate(self, node)
        self._check_type(node)

    def _check_agreement(self, found) -> None:
        """``agreement`` (optional, what the exporter measured): ``images`` a positive count,
        ``top1`` a share in [0, 1], ``max_abs_diff`` and ``tolerance`` finite and non-negative."""
        if found is None:
            return
        keys = {"images", "top1", "max_abs_diff", "tolerance"}
        if not isinstance(found, dict) or set(found) != keys or not is_int(found["images"]) \
                or not 0 < found["images"] < 2 ** 31 \
                or not all(isinstance(found[k], (int, float)) and not isinstance(found[k], bool)
                           and math.isfinite(found[k]) and found[k] >= 0 for k in keys - {"images"}) \
                or found["top1"] > 1:
            raise BundleError(f"{self.source}: agreement must hold images (a positive count), top1 (0 to 1), "
                              "max_abs_diff and tolerance (finite, >= 0)")

    def _check_float_ops(self, names: set) -> None:
        listed, claim = self.manifest.get("float_ops"), self.manifest.get("integer_only")
        if not isinstance(listed, list) or not all(isinstance(n, str) and n in names for n in listed) \
                or len(set(listed)) != len(listed):
            raise BundleError(f"{self.source}: float_ops must list distinct node names")
        if claim is not (not listed):
            raise BundleError(f"{self.source}: integer_only={claim!r} contradicts float_ops {listed}")

    def _check_type(self, node: dict) -> None:
        """``dtype`` is float32 or a declared integer type holding ``range``, ``[lo, hi]``."""
        dtype = node.get("dtype")
        if dtype == FLOAT:
            return
        if dtype not in INT_TYPES:
            self.fail(node, f"dtype must be {FLOAT} or one of {', '.join(INT_TYPES)}")
        r = node.get("range")
        if not isinstance(r, list) or len(r) != 2 or not all(is_int(v) for v in r) or not holds(dtype, *r):
            self.fail(node, f"range must be two integers [lo, hi] that {dtype} holds")
