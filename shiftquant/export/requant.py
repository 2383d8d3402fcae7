"""Requantization by integer thresholds, and the integer residual stream.

**Thresholds on an accumulator** (:func:`fold`). Between a shift layer ``S`` and the quantizer
that comes next (the next shift layer's input quantizer, or a residual BatchNorm's output
quantizer) there is often a chain of per-channel monotone float ops: ``S``'s dequantization
(``accumulator x grid + bias``), BatchNorm, ReLU, a flatten. Each is monotone in its input (float
rounding keeps a monotone function monotone), so the integer the quantizer produces is a monotone
step function of ``S``'s accumulator, channel by channel, exactly described by integer thresholds:
with ``d_c = ±1`` the channel's direction, the level index is ``sum_k [d_c * acc >= t_ck]``.
The thresholds are found by binary search over the proven accumulator range, evaluating the
runtime's own float32 chain, so the comparisons give exactly the integers the float chain gives
for every accumulator the layer can produce.

**The integer residual stream** (:func:`integerize`). A residual BatchNorm's output is an integer
on its quantizer's grid (a power of two), so residual adds are integer adds aligned by shifts,
ReLU and max pooling stay integer, global average pooling is an integer sum, and a shift layer fed
by such integers gets its input codes from thresholds on them (evaluated through PyTorch's own
pooling kernel, which sums exactly and then divides). Every integer is bounded; under
``deploy_exact`` every bound stays below 2^24 units, so the PyTorch model's float32 values are
exact and equal the runtime's integers.

What remains float is listed in ``float_ops``: chains with a fan-out into float ops, adds whose
inputs are not both on the grid, pooling that is not global, layers kept float.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from ..errors import ExportError
from .runtime import Runtime

EXACT = 1 << 24
# Ops that map each element to one element of the same channel, monotonically.
CHAIN_OPS = {"batch_norm", "relu", "identity", "flatten"}
# Ops that keep integers integers (on the same grid).
INT_OPS = {"relu", "max_pool2d", "identity", "flatten"}


def _consumers(nodes: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {n["name"]: [] for n in nodes}
    for n in nodes:
        for i in n["inputs"]:
            out[i].append(n)
    return out


def find_chains(manifest: dict) -> list[tuple[dict, list[dict], dict]]:
    """``(S, chain, target)``: a shift layer, the single-consumer monotone ops after it, and the
    node whose quantizer ends the chain: a shift layer (its input quantizer; not in ``chain``) or a
    residual BatchNorm (its output quantizer; the last node of ``chain``)."""
    nodes, outputs = manifest["nodes"], set(manifest["outputs"])
    consumers = _consumers(nodes)
    found = []
    for s in nodes:
        if not s["op"].startswith("shift_") or s.get("weight_offset"):
            continue
        chain, cur, target = [], s, None
        while len(consumers[cur["name"]]) == 1 and cur["name"] not in outputs:
            nxt = consumers[cur["name"]][0]
            if nxt["op"].startswith("shift_"):
                target = nxt
                break
            if nxt["op"] not in CHAIN_OPS:
                break
            chain.append(nxt)
            if nxt.get("output_quantizer"):
                target = nxt
                break
            cur = nxt
        if target is None:
            continue
        spec = _target_spec(target)
        if any(n["op"] == "flatten" for n in chain) and spec["policy"] != "learned_pot":
            continue  # a per-feature standardization after a flatten is not per channel of S
        found.append((s, chain, target))
    return found


def _target_spec(target: dict) -> dict:
    return target["output_quantizer"] if target.get("output_quantizer") else target["input_quantizer"]


def _search(code_ints, levels: np.ndarray, bound: int, columns: int, direction: np.ndarray) -> np.ndarray:
    """Per column, the smallest ``a`` in ``[-bound, bound + 1]`` with ``code_ints(direction * a) >=
    levels[k]``, for every level ``k >= 1`` (``bound + 1``: never)."""
    k = len(levels) - 1
    lo = np.full((k, columns), -bound, dtype=np.int64)
    hi = np.full((k, columns), bound + 1, dtype=np.int64)
    target = levels[1:, None]
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = code_ints(mid * direction) >= target
        hi = np.where(ok & (lo < hi), mid, hi)
        lo = np.where(~ok & (lo < hi), mid + 1, lo)
    return lo


def thresholds(rt: Runtime, s: dict, chain: list[dict], target: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(thresholds (L-1, C), direction (C,))`` reproducing the target quantizer's integers from
    ``S``'s accumulator over ``[-bound, bound]``; ``L`` is the number of the quantizer's levels."""
    spec = _target_spec(target)
    channels = s["weight_shape"][0]
    bound = int(s["accumulator_bound"])
    conv = s["op"] == "shift_conv2d"

    def code_ints(acc: np.ndarray) -> np.ndarray:
        """``acc`` (rows, C) -> integers (rows, C). A conv's candidates are laid out as one image
        (1, C, rows, 1): PyTorch's per-channel kernels take their fast path on it (a BatchNorm
        over (rows, C, 1, 1) is ~500x slower) and give the same values elementwise."""
        rows = acc.shape[0]
        x = rt.dequantize(s, acc.T.reshape(1, channels, rows, 1) if conv else acc)
        for node in chain:
            x = rt.float_op(node, [x])
        out = rt.quantize_input(x, spec)
        return out.reshape(channels, rows).T if conv else out.reshape(acc.shape)

    ends = code_ints(np.stack([np.full(channels, -bound), np.full(channels, bound)]).astype(np.int64))
    direction = np.where(ends[1] >= ends[0], 1, -1).astype(np.int64)
    return _search(code_ints, Runtime.level_ints(spec), bound, channels, direction), direction


@contextlib.contextmanager
def _one_thread():
    """The searches run thousands of small ops: threads only add synchronization (on a loaded
    machine, milliseconds per op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _add_thresholds(tensors: dict[str, np.ndarray], key: str, thr: np.ndarray) -> str:
    """Thresholds, stored as the first row then the (non-negative) differences between rows:
    mostly small, repeated numbers, which the bundle's compression shrinks well."""
    return _add(tensors, key, np.concatenate([thr[:1], np.diff(thr, axis=0)]))


def _add(tensors: dict[str, np.ndarray], key: str, value: np.ndarray) -> str:
    """Integers at the narrowest width of int8/int16/int32/int64 that holds them."""
    top = int(np.abs(value).max()) if value.size else 0
    dtype = next(t for t in (np.int8, np.int16, np.int32, np.int64) if top <= np.iinfo(t).max - 1)
    tensors[key] = np.ascontiguousarray(value.astype(dtype))
    return key


def fold(manifest: dict, tensors: dict[str, np.ndarray]) -> None:
    """Fold every chain :func:`find_chains` finds into its shift layer's thresholds, in place.

    The chain's float ops leave the graph (a flatten stays: it moves integers); ``S`` outputs the
    target quantizer's integers (``requant``); a target shift layer reads them (``input_codes``),
    and the consumers of a target BatchNorm read ``S`` instead.
    """
    chains = find_chains(manifest)
    if not chains:
        return
    rt = Runtime(manifest, tensors, "export")
    with _one_thread():
        found = [(s, chain, t, *thresholds(rt, s, chain, t)) for s, chain, t in chains]
    removed, renamed = set(), {}
    for s, chain, t, thr, direction in found:
        spec = _target_spec(t)
        s["requant"] = {"thresholds": _add_thresholds(tensors, f"{s['name']}.requant.thresholds", thr),
                        "direction": _add(tensors, f"{s['name']}.requant.direction", direction),
                        "levels": Runtime.level_ints(spec).tolist(), "unit": Runtime.input_unit(spec)}
        kept = s["name"]
        for node in chain:
            if node["op"] == "flatten":
                node["inputs"] = [kept]
                kept = node["name"]
            else:
                removed.add(node["name"])
        if t.get("output_quantizer"):
            renamed[t["name"]] = kept
        else:
            t["input_codes"] = True
            t["inputs"] = [kept]
    manifest["nodes"] = [n for n in manifest["nodes"] if n["name"] not in removed]
    for n in manifest["nodes"]:
        n["inputs"] = [renamed.get(i, i) for i in n["inputs"]]
    manifest["outputs"] = [renamed.get(o, o) for o in manifest["outputs"]]


def integerize(manifest: dict, tensors: dict[str, np.ndarray]) -> None:
    """Mark the ops that run on integers, give adds their alignment shifts and shift layers fed by
    integers their input thresholds; check every integer's bound. In place, after :func:`fold`."""
    nodes = manifest["nodes"]
    consumers = _consumers(nodes)
    # name -> (unit, bound): the unit is None for a pooled sum (its meaning is the pooling op's).
    ints: dict[str, tuple[float | None, int]] = {}
    pooled: dict[str, dict] = {}  # pooled sum (or a flatten of one) -> the pooling node
    rt = None
    for node in nodes:
        op, inputs = node["op"], node["inputs"]
        if node.get("requant"):
            r = node["requant"]
            ints[node["name"]] = (r["unit"], max(abs(v) for v in r["levels"]))
        elif op == "batch_norm" and node.get("output_quantizer"):
            spec = node["output_quantizer"]
            ints[node["name"]] = (Runtime.input_unit(spec), int(np.abs(Runtime.level_ints(spec)).max()))
        elif op == "add" and all(i in ints and ints[i][0] is not None for i in inputs):
            (u1, b1), (u2, b2) = ints[inputs[0]], ints[inputs[1]]
            unit = min(u1, u2)
            shifts = [round(math.log2(u1 / unit)), round(math.log2(u2 / unit))]
            if any(2.0 ** sh * unit != u for sh, u in zip(shifts, (u1, u2))):
                continue  # not both powers of two apart: a float add
            node["shifts"] = shifts
            ints[node["name"]] = (unit, (b1 << shifts[0]) + (b2 << shifts[1]))
        elif op in INT_OPS and inputs and inputs[0] in ints:
            ints[node["name"]] = ints[inputs[0]]
            if inputs[0] in pooled:
                pooled[node["name"]] = pooled[inputs[0]]
        elif op == "adaptive_avg_pool2d" and inputs[0] in ints and ints[inputs[0]][0] is not None \
                and node["output_size"] in (1, [1, 1], (1, 1)) and _feeds_only_shift_layers(node, consumers):
            _, h, w = node["input_shape"]
            node["integer"] = True
            ints[node["name"]] = (None, ints[inputs[0]][1] * h * w)
            pooled[node["name"]] = node
        elif op.startswith("shift_") and inputs and inputs[0] in ints and not node.get("input_codes") \
                and node["input_quantizer"]["policy"] == "learned_pot":
            rt = rt or Runtime(manifest, tensors, "export")
            src = inputs[0]
            with _one_thread():
                thr = _stream_thresholds(rt, node, ints[src], pooled.get(src), ints, manifest)
            node["input_thresholds"] = _add_thresholds(tensors, f"{node['name']}.input_thresholds", thr)
    exact = manifest["exact"]
    for name, (_, bound) in ints.items():
        if bound >= EXACT and exact:
            raise ExportError(f"{name}: integer bound {bound} reaches 2^24: exact float32 parity cannot be "
                              "guaranteed (use fewer residual bits)")
    manifest["float_ops"] = [n["name"] for n in nodes if _is_float_op(n, ints)]


def _feeds_only_shift_layers(node: dict, consumers: dict) -> bool:
    for c in consumers[node["name"]]:
        if c["op"] in ("flatten", "identity"):
            if not _feeds_only_shift_layers(c, consumers):
                return False
        elif not (c["op"].startswith("shift_") and c["input_quantizer"]["policy"] == "learned_pot"):
            return False
    return bool(consumers[node["name"]])


def _stream_thresholds(rt: Runtime, t: dict, src: tuple, pool: dict | None, ints: dict, manifest: dict) -> np.ndarray:
    """Thresholds ``(L-1, 1)`` from a layer's integer input to its input integers. A pooled sum is
    evaluated through the pooling op itself: the sum placed at one position, zeros elsewhere."""
    spec = t["input_quantizer"]
    _, bound = src
    if pool is not None:
        unit = ints[pool["inputs"][0]][0]
        _, h, w = pool["input_shape"]

        def code_ints(c: np.ndarray) -> np.ndarray:
            x = torch.zeros(c.shape[0], 1, h, w)
            x[:, 0, 0, 0] = torch.from_numpy((c[:, 0].astype(np.float64) * unit).astype(np.float32))
            return rt.quantize_input(rt.float_op(pool, [x]).reshape(-1), spec)[:, None]
    else:
        unit = src[0]

        def code_ints(c: np.ndarray) -> np.ndarray:
            return rt.quantize_input(torch.from_numpy((c.astype(np.float64) * unit).astype(np.float32)), spec)

    return _search(code_ints, Runtime.level_ints(spec), bound, 1, np.ones(1, dtype=np.int64))


def _is_float_op(node: dict, ints: dict) -> bool:
    op = node["op"]
    if op == "input" or op.startswith("shift_") or op == "flatten":
        return False
    if op == "batch_norm" or op in ("conv2d", "linear"):
        return True
    return node["name"] not in ints
