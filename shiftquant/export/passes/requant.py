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

**The integer graph** (:func:`integerize`). A residual BatchNorm's output is an integer on its
quantizer's grid (a power of two), so residual adds are integer adds aligned by shifts, ReLU and
max pooling stay integer, global average pooling is an integer sum, and a shift layer fed by such
integers, or by the input's pixels, gets its input codes from thresholds on them (evaluated
through PyTorch's own pooling kernel, which sums exactly and then divides, or through the pixel
normalization). The last shift layer outputs integer logits on one power-of-two grid. Every
integer's range is proven and gives its declared type; under ``deploy_exact`` every bound stays
below 2^24 units, so the PyTorch model's float32 values are exact and equal the runtime's integers.

What remains float (chains with a fan-out into float ops, adds whose inputs are not both on the
grid, pooling that is not global, layers kept float) is whatever the runtime observes computing
in float: the exporter records it in ``float_ops`` (:mod:`shiftquant.export.trace.exporter`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from ...errors import ExportError
from ...nn import integer_norm
from .. import ops
from ..format.ints import FLOAT, FLOAT32_EXACT, narrowest
from ..format.pixels import pixels_to_float
from ..format.values import THROUGH_THRESHOLDS, Fact
from ..graph.loader import Graph
from ..ops.quantizers import input_unit, level_ints
from ..ops.schema import Integerizing



def _role(node: dict) -> str | None:
    """The node's part in a chain (:attr:`.ops.OpDef.chain`): ``fold``, ``move`` or None. Padding
    moves values only where it copies them or pads zeros the quantizer after it has (checked below)."""
    return ops.get(node["op"]).chain


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
            if _role(nxt) is None:
                break
            chain.append(nxt)
            if nxt.get("output_quantizer"):
                target = nxt
                break
            cur = nxt
        if target is None:
            continue
        spec = _target_spec(target)
        if any(_role(n) == "move" for n in chain) and spec["policy"] != "learned_pot":
            continue  # a per-feature standardization after a flatten is not per channel of S
        if any(n["op"] == "pad" and n["mode"] == "constant" and (n["value"] != 0 or n is not chain[-1] or t_bn
                                                                  or 0 not in spec["quantizer"]["levels"])
               for n in chain for t_bn in [bool(target.get("output_quantizer"))]):
            continue  # zeros padded into the codes must be the quantized zeros the target would read
        found.append((s, chain, target))
    return found


def _max_pools_commute(rt: Graph, s: dict, chain: list[dict], target: dict) -> bool:
    """A max pool in a chain moves to after the thresholds (it takes the largest code of each
    window) only where everything after it is non-decreasing per channel: ``q(max h) = max q(h)``
    for a non-decreasing ``q``. The target quantizer is; each fold op after the pool is monotone
    per channel (its ``chain`` role), so comparing it at two far apart points decides."""
    pools = [i for i, n in enumerate(chain) if n["op"] == "max_pool2d"]
    if not pools:
        return True
    channels, conv = s["weight_shape"][0], s["op"] == "shift_conv2d"
    ends = torch.tensor([-1e20, 1e20]).repeat(channels, 1)  # (C, 2): each channel's two points
    x = ends.reshape(1, channels, 2, 1) if conv else ends.T.contiguous()
    for node in chain[pools[0] + 1:]:
        if _role(node) == "fold":
            y = rt.float_op(node, [x]).reshape(channels, 2) if conv else rt.float_op(node, [x]).T
            if bool((y[:, 0] > y[:, 1]).any()):
                return False
    return True


def _dips_vanish(rt: Graph, s: dict, chain: list[dict], target: dict) -> bool:
    """An op that dips below zero before rising (``OpDef.dip``: Hardswish) folds where the target
    quantizer gives every value in ``[dip, 0]`` one level and only moves follow it: then the
    quantized chain is constant for the op's inputs <= 0 and non-decreasing above."""
    spec = _target_spec(target)
    for i, node in enumerate(chain):
        dip = ops.get(node["op"]).dip
        if dip is None:
            continue
        if any(_role(n) == "fold" for n in chain[i + 1:]):
            return False
        ends = rt.quantize_input(torch.tensor([dip, 0.0]), spec)
        if ends[0] != ends[1]:
            return False
    return True


def _target_spec(target: dict) -> dict:
    return target["output_quantizer"] if target.get("output_quantizer") else target["input_quantizer"]


def _search(code_ints, levels: np.ndarray, low: int, high: int, columns: int, direction: np.ndarray) -> np.ndarray:
    """Per column, the smallest ``a`` in ``[low, high + 1]`` with ``code_ints(direction * a) >=
    levels[k]``, for every level ``k >= 1`` (``high + 1``: never)."""
    k = len(levels) - 1
    lo = np.full((k, columns), low, dtype=np.int64)
    hi = np.full((k, columns), high + 1, dtype=np.int64)
    target = levels[1:, None]
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = code_ints(mid * direction) >= target
        hi = np.where(ok & (lo < hi), mid, hi)
        lo = np.where(~ok & (lo < hi), mid + 1, lo)
    return lo


def thresholds(rt: Graph, s: dict, chain: list[dict], target: dict) -> tuple[np.ndarray, np.ndarray]:
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
            if _role(node) != "move":  # a move (pad, flatten, max pool) moves values; the thresholds map each one
                x = rt.float_op(node, [x])
        out = rt.quantize_input(x, spec)
        return out.reshape(channels, rows).T if conv else out.reshape(acc.shape)

    ends = code_ints(np.stack([np.full(channels, -bound), np.full(channels, bound)]).astype(np.int64))
    direction = np.where(ends[1] >= ends[0], 1, -1).astype(np.int64)
    return _search(code_ints, level_ints(spec), -bound, bound, channels, direction), direction


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
    rt = Graph(manifest, tensors, "export", strict=False)
    chains = _whole_joins([c for c in chains if _max_pools_commute(rt, *c) and _dips_vanish(rt, *c)])
    with _one_thread():
        found = [(s, chain, t, *thresholds(rt, s, chain, t)) for s, chain, t in chains]
    removed, renamed = set(), {}
    for s, chain, t, thr, direction in found:
        spec = _target_spec(t)
        s["requant"] = {"thresholds": _add_thresholds(tensors, f"{s['name']}.requant.thresholds", thr),
                        "direction": _add(tensors, f"{s['name']}.requant.direction", direction),
                        "levels": level_ints(spec).tolist(), "unit": input_unit(spec)}
        kept = prev = s["name"]
        for node in chain:
            if _role(node) == "move":  # it reads what the chain kept (a cat: in place of the input on the chain)
                node["inputs"] = [kept if i == prev else i for i in node["inputs"]]
                kept = node["name"]
            else:
                removed.add(node["name"])
            prev = node["name"]
        if t.get("output_quantizer"):
            renamed[t["name"]] = kept
        else:
            t["input_codes"] = True
            t["inputs"] = [kept]
    manifest["nodes"] = [n for n in manifest["nodes"] if n["name"] not in removed]
    for n in manifest["nodes"]:
        n["inputs"] = [renamed.get(i, i) for i in n["inputs"]]
    manifest["outputs"] = [renamed.get(o, o) for o in manifest["outputs"]]


def _whole_joins(chains: list) -> list:
    """The chains that pass through a move of several inputs (a ``cat``) fold only together: one
    chain per input, all to one target; then every input of the join is the target's integers."""
    while True:
        through: dict[str, list] = {}
        for c in chains:
            for node in c[1]:
                if len(node["inputs"]) > 1:
                    through.setdefault(node["name"], []).append(c)
        joins = {n["name"]: n for c in chains for n in c[1] if len(n["inputs"]) > 1}
        broken = {name for name, cs in through.items() if len(cs) != len(joins[name]["inputs"])
                  or len({id(c[2]) for c in cs}) != 1 or len({c[0]["name"] for c in cs}) != len(cs)}
        if not broken:
            return chains
        chains = [c for c in chains if not any(n["name"] in broken for n in c[1])]


@dataclass(frozen=True)
class Ints:
    """What an integer node outputs: a ``kind`` (``grid``: worth ``unit`` each; ``sum``: a global
    sum of grid integers worth ``unit``, by the pooling node ``pool``; ``pixels``: the input), its
    proven ``[lo, hi]``, for flattened pixels the positions per channel (``spread``, 0 while
    channels are on dim 1), and whether the integers are all zeros and powers of two (the levels
    of the quantizer that made them)."""

    kind: str
    lo: int
    hi: int
    unit: float | None = None
    pool: dict | None = None  # for a sum or an integer LayerNorm's z, the node that made it
    spread: int = 0
    powers_of_two: bool = False  # every integer is 0 or a power of two (a gate's levels)


def integerize(manifest: dict, tensors: dict[str, np.ndarray]) -> None:
    """Mark the ops that run on integers, give adds their alignment shifts, shift layers fed by
    integers their input thresholds and the last shift layers integer outputs; prove every
    integer's range and declare its type. In place, after :func:`fold`.

    The exporter decides which layers read integers; each op decides, by its definition
    (:attr:`.ops.OpDef.integerize`), whether it goes onto integers (an add aligning two grids, a
    pool summing for readers that divide), and its range is its definition's
    (:attr:`.ops.OpDef.prove`), the rule the loader proves it with."""
    nodes = manifest["nodes"]
    consumers = _consumers(nodes)
    rt = Graph(manifest, tensors, "export", strict=False)  # shapes proven; the float kernels
    ints: dict[str, Ints] = {}
    for node in nodes:
        op, inputs, name = node["op"], node["inputs"], node["name"]
        src = ints.get(inputs[0]) if inputs else None
        if op == "input":
            if node.get("pixels"):
                ints[name] = Ints("pixels", 0, node["pixels"]["scale"])
            continue
        if op.startswith("shift_"):
            if src is not None and not node.get("input_codes") and node["input_quantizer"]["policy"] == "learned_pot":
                with _one_thread():
                    thr = _stream_thresholds(rt, node, src)
                node["input_thresholds"] = _add_thresholds(tensors, f"{name}.input_thresholds", thr)
            out = _requant_ints(node, tensors) if node.get("requant") else _int_output(node, tensors)
            if out is not None:
                ints[name] = out
            continue
        spec = node.get("output_quantizer") if ops.get(op).quantizes_output else None
        out = None
        if all(i in ints for i in inputs):  # a constant: no inputs
            decide = ops.get(op).integerize
            if decide is not None:
                decide(node, [ints[i] for i in inputs], Integerizing(
                    rt, lambda through=(): _feeds_only_shift_layers(node, consumers, through),
                    lambda k, v: _add(tensors, k, v)))
            out = _proven(rt, node, [ints[i] for i in inputs])
            if out is not None and op == "flatten" and src.kind == "pixels":
                out = _flattened(node, out, nodes)
        if spec:  # quantized: integers on its grid (a table's, or all of its levels)
            levels = level_ints(spec)
            out = out or Ints("grid", int(levels.min()), int(levels.max()), input_unit(spec))
            out = replace(out, powers_of_two=_powers_of_two(levels))
        if out is not None:
            ints[name] = out
    for node in nodes:
        _declare_type(node, ints.get(node["name"]), manifest["exact"])


def _proven(shapes, node: dict, args: list[Ints]) -> Ints | None:
    """The node's output integers by its op's range rule, None when it runs in float; a sum keeps
    the grid it sums and the pool that made it (its readers' thresholds evaluate that pool)."""
    prove = ops.get(node["op"]).prove
    if prove is None:
        return None
    facts = [Fact(shapes.facts[i].shape, a.kind, a.lo, a.hi, a.unit) for i, a in zip(node["inputs"], args)]
    out = prove(shapes, node, facts, shapes.facts[node["name"]].shape)
    if out is None:
        return None
    if not args:  # a constant
        return Ints(out.kind, out.lo, out.hi, out.unit)
    if out.kind in THROUGH_THRESHOLDS and args[0].kind != out.kind:  # made here: its readers evaluate this node
        return Ints(out.kind, out.lo, out.hi, args[0].unit, pool=node)
    return replace(args[0], kind=out.kind, lo=out.lo, hi=out.hi, unit=out.unit, powers_of_two=False)


def _powers_of_two(levels) -> bool:
    return all(v == 0 or v > 0 and v & (v - 1) == 0 for v in map(int, levels))


def _declare_type(node: dict, out: Ints | None, exact: bool) -> None:
    """``dtype`` and ``range`` of a node's output; an integer beyond 2^24 under ``deploy_exact`` is
    refused (the PyTorch model's float32 values would no longer be exact)."""
    if out is None:
        node["dtype"] = FLOAT
        node.pop("range", None)
        return
    if exact and out.kind != "pixels" and max(abs(out.lo), abs(out.hi)) >= FLOAT32_EXACT:
        raise ExportError(f"{node['name']}: integer bound {max(abs(out.lo), abs(out.hi))} reaches 2^24: exact "
                          "float32 parity cannot be guaranteed (use fewer residual bits)")
    dtype = narrowest(out.lo, out.hi)
    if dtype is None:
        raise ExportError(f"{node['name']}: integers in [{out.lo}, {out.hi}] do not fit int32")
    node["dtype"], node["range"] = dtype, [int(out.lo), int(out.hi)]


def _flattened(node: dict, src: Ints, nodes: list[dict]) -> Ints:
    """Pixels through a flatten: a feature's channel is its index // (positions per channel)."""
    shape = next(n for n in nodes if n["op"] == "input")["shape"]
    if node["start_dim"] != 1 or node["end_dim"] not in (-1, len(shape)):
        raise ExportError(f"{node['name']}: pixels can only be flattened from dim 1 to the end")
    return replace(src, spread=int(np.prod(shape[1:])))


def _requant_ints(node: dict, tensors: dict[str, np.ndarray]) -> Ints:
    """The levels a requantizing layer reaches from accumulators in ``[-bound, bound]``."""
    r = node["requant"]
    thr = np.cumsum(tensors[r["thresholds"]].astype(np.int64), axis=0)
    bound = int(node["accumulator_bound"])
    levels = np.asarray(r["levels"], dtype=np.int64)
    lowest, highest = (thr <= -bound).sum(0), (thr <= bound).sum(0)
    return Ints("grid", int(levels[lowest].min()), int(levels[highest].max()), r["unit"],
                powers_of_two=_powers_of_two(levels))


def _int_output(node: dict, tensors: dict[str, np.ndarray]) -> Ints | None:
    """Integer logits for an exact layer without requantization: ``(acc + bias_c) << shift_c`` on the
    finest of its channels' grids, when every grid is a power of two and the bias is on it."""
    if not node["exact"] or node.get("weight_offset") or node["input_quantizer"]["policy"] != "learned_pot":
        return None
    scale = tensors[node["weight_scale"]].astype(np.float64)
    grid = scale * node["weight_quantizer"]["resolution"] * input_unit(node["input_quantizer"])
    if not (np.frexp(grid)[0] == 0.5).all():
        return None
    unit = float(grid.min())
    shift = np.round(np.log2(grid / unit)).astype(np.int64)
    bias = None
    if node.get("bias"):
        b = tensors[node["bias"]].astype(np.float64) / grid
        if not (b == np.round(b)).all():
            return None
        bias = np.round(b).astype(np.int64)
    top = int(node["accumulator_bound"]) << int(shift.max())
    if narrowest(-top, top) is None or shift.max() > 30 or top >= FLOAT32_EXACT:
        return None  # aligned to the finest channel, beyond float32's exact integers: float values out
    name = node["name"]
    node["int_output"] = {"bias": None if bias is None else _add(tensors, f"{name}.int_output.bias", bias),
                          "shift": _add(tensors, f"{name}.int_output.shift", shift), "unit": unit}
    return Ints("grid", -top, top, unit)


def _feeds_only_shift_layers(node: dict, consumers: dict, through: tuple[str, ...] = ()) -> bool:
    """Every reader is a shift layer with a learned power-of-two input scale, through flattens,
    identities and the ops named in ``through``."""
    for c in consumers[node["name"]]:
        if c["op"] in ("flatten", "identity") + through:
            if not _feeds_only_shift_layers(c, consumers, through):
                return False
        elif not (c["op"].startswith("shift_") and c["input_quantizer"]["policy"] == "learned_pot"):
            return False
    return bool(consumers[node["name"]])


def _stream_thresholds(rt: Graph, t: dict, src: Ints) -> np.ndarray:
    """Thresholds ``(L-1, K)`` from a layer's integer input to its input integers. Pixels go through
    the normalization (a column per channel, or per feature after a flatten; one when they agree);
    a pooled sum (global, or of whole windows) through the pooling op itself: the sum at one
    position, zeros elsewhere, read at the output of the window that holds it."""
    spec = t["input_quantizer"]
    levels = level_ints(spec)
    ones = np.ones(1, dtype=np.int64)
    if src.kind == "pixels":
        px = rt.pixels
        channels = len(px["mean"])

        def code_ints(p: np.ndarray) -> np.ndarray:
            return rt.quantize_input(pixels_to_float(p, px, channel_dim=-1), spec)

        thr = _search(code_ints, levels, 0, px["scale"], channels, np.ones(channels, dtype=np.int64))
        if (thr == thr[:, :1]).all():
            return thr[:, :1]
        return np.repeat(thr, src.spread, axis=1) if src.spread else thr
    if src.kind == "normalized":
        ln = src.pool
        signs = rt.tensor(ln["signs"]).astype(np.int64)
        weight, bias = (None if ln.get(k) is None else torch.from_numpy(rt.tensor(ln[k])) for k in ("weight", "bias"))

        def code_ints(c: np.ndarray) -> np.ndarray:
            return rt.quantize_input(integer_norm.affine(torch.from_numpy((c * signs).astype(np.float32)), weight,
                                                         bias), spec)

        return _search(code_ints, levels, src.lo, src.hi, len(signs), np.ones(len(signs), dtype=np.int64))
    if src.kind == "sum":
        pool, unit = src.pool, src.unit
        _, h, w = pool["input_shape"]

        def code_ints(c: np.ndarray) -> np.ndarray:
            x = torch.zeros(c.shape[0], 1, h, w)
            x[:, 0, 0, 0] = torch.from_numpy((c[:, 0].astype(np.float64) * unit).astype(np.float32))
            return rt.quantize_input(rt.float_op(pool, [x])[:, 0, 0, 0], spec)[:, None]  # the window at (0, 0)
    else:
        def code_ints(c: np.ndarray) -> np.ndarray:
            return rt.quantize_input(torch.from_numpy((c.astype(np.float64) * src.unit).astype(np.float32)), spec)

    return _search(code_ints, levels, src.lo, src.hi, 1, ones)
