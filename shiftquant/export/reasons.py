"""Why a bundle node stays float, and the change that would make it integer.

Read off the final manifest: a node is float when its ``dtype`` is ``float32`` or when it computes in
float (``float_ops``: a shift layer quantizing float input outputs integers). The first reason
that applies is given, with what to do: a model edit, a recipe field, or "not supported yet"
(integer forms the exporter does not have; the integer-only work tracks them).
"""
from __future__ import annotations

from dataclasses import dataclass

NOT_YET = "not supported yet: no integer form of this op in the exporter (tracked by the integer-only work)"
# Ops the requantization thresholds fold between a shift layer and the next quantized layer.
CHAIN = ("batch_norm", "relu", "clamp", "hardsigmoid", "identity", "flatten")
_OWN = {  # op -> (why it is float on its own, what to do)
    "max_pool2d": ("max pooling runs on float values here: it is not between integers on one grid", NOT_YET),
    "avg_pool2d": ("an average over windows stays float unless every window is whole and it feeds only shift "
                   "layers", "pool over whole windows (no padding past the end) right before a quantized layer, "
                   "or " + NOT_YET),
    "adaptive_avg_pool2d": ("a global average pool is integer only when it feeds only quantized layers (through "
                            "flattens)", "let it feed the quantized head directly, or " + NOT_YET),
    "add": ("adds values that are not both on power-of-two integer grids",
            "quantize the residual stream (recipe residual_bits, as the deploy preset sets it), or " + NOT_YET),
    "conv2d": ("a convolution kept float (keep_float, or not selected by the recipe)",
               "select it in the recipe (layers / types / names) and remove it from keep_float"),
    "linear": ("a linear layer kept float (keep_float, or not selected by the recipe)",
               "select it in the recipe (layers / types / names) and remove it from keep_float"),
    "input": ("the bundle takes float input", "export with an input_spec (PixelInput) so it takes integer pixels"),
}


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
    if upstream and op != "input" and not (op in CHAIN and upstream[0]["op"].startswith("shift_")):
        first = upstream[0]
        return (f"its input {first['name']!r} ({first['op']}) is float", f"make {first['name']!r} integer first")
    if op in CHAIN:
        end, at = _chain_end(node, readers)
        if end == "breaks":
            return (f"between a shift layer and the next quantized layer, {at[0]['name']!r} ({at[0]['op']}) "
                    "breaks the requantization chain", f"move {at[0]['name']!r} after the next quantized layer, "
                    f"or {NOT_YET}")
        if end == "fans out":
            return (f"{_names(at)} read its output: a requantization folds a chain with one reader",
                    f"give that stream its own power-of-two grid ({FAN_OUT})")
        return ("no quantized layer reads its output, so no requantization folds it", NOT_YET)
    return _OWN.get(op, (f"{op} has no integer form", NOT_YET))


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
    return ("its output is dequantized in float (the model's output, with logit shifts beyond 30)", NOT_YET)


FAN_OUT = "recipe residual_bits, as the deploy preset sets it"


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
        if nxt["op"] not in CHAIN:
            return "breaks", [nxt]
        cur = nxt
