"""Why a bundle node stays float, and the change that would make it integer.

Read off the final manifest: a node is float when its ``dtype`` is ``float32`` or when it computes in
float (``float_ops``: a shift layer quantizing float input outputs integers). The first reason
that applies is given, with what to do: a model edit, a recipe field, or "not supported yet"
(integer forms the exporter does not have; the integer-only work tracks them).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import ops
from ..ops.schema import NOT_YET


@dataclass(frozen=True)
class FloatReason:
    node: str
    op: str
    reason: str
    how: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.reason}; how: {self.how}"


def float_reasons(manifest: dict) -> list[FloatReason]:
    """A :class:`FloatReason` for every float node of ``manifest``, in graph order."""
    nodes = manifest["nodes"]
    by_name = {n["name"]: n for n in nodes}
    readers: dict[str, list[dict]] = {}
    for n in nodes:
        for i in n["inputs"]:
            readers.setdefault(i, []).append(n)
    listed = set(manifest.get("float_ops") or [])
    return [FloatReason(n["name"], n["op"], *_why(n, by_name, readers)) for n in nodes
            if n.get("dtype") == "float32" or n["name"] in listed]


def _why(node: dict, by_name: dict, readers: dict) -> tuple[str, str]:
    op = node["op"]
    upstream = [by_name[i] for i in node["inputs"] if by_name[i].get("dtype") == "float32"]
    if op.startswith("shift_"):
        return _shift_layer(node, upstream, readers)
    in_chain = ops.get(op).chain is not None
    if upstream and op != "input" and not (in_chain and upstream[0]["op"].startswith("shift_")):
        first = upstream[0]
        return (f"its input {first['name']!r} ({first['op']}) is float", f"make {first['name']!r} integer first")
    if in_chain:
        end, at = _chain_end(node, readers)
        if end == "breaks":
            why = (f"between a shift layer and the next quantized layer, {at[0]['name']!r} ({at[0]['op']}) "
                   "breaks the requantization chain")
            if at[0]["op"] in ("avg_pool2d", "adaptive_avg_pool2d"):
                return why, (f"put the BatchNorm before {at[0]['name']!r} on a power-of-two grid (set the "
                             "recipe's residual_bits): it then pools integers")
            return why, f"move {at[0]['name']!r} after the next quantized layer, or {NOT_YET}"
        if end == "fans out":
            return (f"{_names(at)} read its output: a requantization folds a chain with one reader",
                    f"give that stream its own power-of-two grid ({FAN_OUT})")
        if end == "layer":
            return UNFOLDED
        return ("no quantized layer reads its output, so no requantization folds it", NOT_YET)
    return ops.get(op).float_reason or (f"{op} has no integer form", NOT_YET)


def _shift_layer(node: dict, upstream: list[dict], readers: dict) -> tuple[str, str]:
    if node.get("weight_offset"):
        return "its weights have a float offset (weight_keep_mean)", "set weight_keep_mean=false in the recipe"
    if node["input_quantizer"]["policy"] != "learned_pot":
        return (f"its input quantizer's scale is not a power of two (policy {node['input_quantizer']['policy']})",
                "use learned power-of-two input scales (act_policy=learned_pot, as the deploy preset does)")
    if upstream and upstream[0]["op"] != "input" and not node.get("input_codes") \
            and node.get("input_thresholds") is None:
        first = upstream[0]
        return (f"it quantizes float input from {first['name']!r} ({first['op']})",
                f"make {first['name']!r} integer first")
    if not node.get("exact"):
        return ("its output is not exact on one power-of-two grid (a bias off the accumulator grid)",
                "exact biases (exact_bias, the deploy preset)")
    end, at = _chain_end(node, readers)
    if end == "breaks":
        return (f"its accumulators are dequantized in float: {at[0]['name']!r} ({at[0]['op']}) stands between it "
                "and the next quantized layer", f"move {at[0]['name']!r} after the next quantized layer, or "
                + NOT_YET)
    if end == "fans out":
        return (f"its accumulators are dequantized in float: {_names(at)} read them",
                f"give that stream its own power-of-two grid ({FAN_OUT})")
    if end == "layer":
        return UNFOLDED
    return ("its output is dequantized in float (the model's output, with logit shifts beyond 30)", NOT_YET)


FAN_OUT = "recipe residual_bits, as the deploy preset sets it"
# A chain of foldable ops reaching a quantized layer that the requantization pass still refused.
UNFOLDED = ("a quantized layer reads it through foldable ops, but the requantization cannot fold them: a max pool "
            "before an op that decreases on some channel (a BatchNorm with a negative gain), a standardizing "
            "input quantizer after a flatten or pool, padding other than the quantizer's zero, or a Hardswish "
            "whose next quantizer tells its negative values apart (or that a fold op follows)",
            "pool after the BatchNorm and its activation, use learned power-of-two input scales (the deploy "
            "preset), pad zeros, or quantize after a Hardswish with unsigned levels")


def _names(nodes: list[dict]) -> str:
    return ", ".join(f"{n['name']!r} ({n['op']})" for n in nodes[:3]) + (" and more" if len(nodes) > 3 else "")


def _chain_end(node: dict, readers: dict) -> tuple[str, list[dict]]:
    """How the single-reader path of foldable ops from ``node`` ends: ``("layer", [])`` at a shift
    layer (foldable), ``("breaks", [op])`` at an op the chain cannot fold, ``("fans out",
    readers)`` where several nodes read, ``("output", [])`` where none does."""
    cur = node
    while True:
        after = readers.get(cur["name"], [])
        if len(after) > 1:
            return "fans out", after
        if not after:
            return "output", []
        nxt = after[0]
        if nxt["op"].startswith("shift_"):
            return "layer", []
        if ops.get(nxt["op"]).chain is None:
            return "breaks", [nxt]
        cur = nxt
