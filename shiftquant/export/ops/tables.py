"""Small-domain functions as lookup tables: an elementwise op whose input integers take few values.

An activation on the grid (:mod:`shiftquant.nn.grid_activation`) reads integers of a quantized
input and quantizes its output (``output_quantizer``). The exporter evaluates PyTorch's float
kernel and the output quantizer on every integer the input is proven to hold and stores the
results as a table (``table``, indexed by ``input - table_start``): the op becomes one lookup per
value, exact by construction, in the reference runtime and in C alike.

A table is built only where PyTorch's kernel gives each input one output wherever it sits in a
tensor (its vector and scalar paths can differ in the last bit); elsewhere the op stays float.
"""
from __future__ import annotations

import numpy as np
import torch

from ..format.values import Fact, Value
from .quantizers import check_output_quantizer, input_unit, level_ints
from .schema import CStep, Field

MAX_TABLE = 1 << 12  # entries of one table: input grids of up to 12 bits
_REPEAT = 64  # copies of each input evaluated on the vector path (several 512-bit vectors)

FIELDS = (Field("output_quantizer", "act_quantizer", "the grid its output is quantized onto (integers out)",
                optional=True),
          Field("table", "tensor", "on integers: the output integer of each input integer from `table_start` on",
                optional=True),
          Field("table_start", "number", "the input integer of the table's first entry", low=-2.0 ** 31,
                optional=True))


def check(rt, node: dict) -> None:
    """A table needs an output quantizer, an integer start, and holds 1 to :data:`MAX_TABLE`
    levels of that quantizer."""
    check_output_quantizer(rt, node)
    if node.get("table") is None:
        return
    if node.get("output_quantizer") is None:
        rt.fail(node, "a table needs the output_quantizer whose integers it holds")
    start = node.get("table_start")
    if isinstance(start, bool) or not isinstance(start, int) or abs(start) >= 1 << 31:
        rt.fail(node, "table_start must be an integer below 2^31 in magnitude")
    t = rt.tensor(node["table"])
    if t.ndim != 1 or not 1 <= t.size <= MAX_TABLE or not np.issubdtype(t.dtype, np.integer):
        rt.fail(node, f"table must be 1 to {MAX_TABLE} integers")
    if not np.isin(t, level_ints(node["output_quantizer"])).all():
        rt.fail(node, "table holds integers that are not levels of its output quantizer")


def _table(rt, node: dict, lo: int, hi: int) -> np.ndarray:
    """The table, checked to cover the input integers ``[lo, hi]``."""
    t, start = rt.tensor(node["table"]).astype(np.int64), node["table_start"]
    if lo < start or hi >= start + t.size:
        rt.fail(node, f"its input integers [{lo}, {hi}] reach beyond its table [{start}, {start + t.size - 1}]")
    return t


def integer(rt, node: dict, args):
    x = args[0]
    if node.get("table") is None or x.kind != "grid":
        return None
    lo, hi = (int(x.data.min()), int(x.data.max())) if x.data.size else (node["table_start"],) * 2
    t = _table(rt, node, lo, hi)
    return Value(t[x.data.astype(np.int64) - node["table_start"]], input_unit(node["output_quantizer"]))


def prove(rt, node: dict, args, shape):
    x = args[0]
    if node.get("table") is None or x.kind != "grid":
        return None
    t = _table(rt, node, x.lo, x.hi)
    reached = t[x.lo - node["table_start"]:x.hi - node["table_start"] + 1]
    return Fact(shape, "grid", int(reached.min()), int(reached.max()), input_unit(node["output_quantizer"]))


def integerize(node: dict, args, ctx) -> None:
    """On a grid of at most :data:`MAX_TABLE` integers, with an output quantizer: the table of
    PyTorch's kernel and the quantizer on every input integer, where every path of the kernel
    agrees on it."""
    x, spec = args[0], node.get("output_quantizer")
    if spec is None or x.kind != "grid" or x.hi - x.lo + 1 > MAX_TABLE:
        return
    inputs = torch.from_numpy((np.arange(x.lo, x.hi + 1, dtype=np.float64) * x.unit).astype(np.float32))
    g = ctx.graph

    def codes(values: torch.Tensor) -> np.ndarray:
        return g.quantize_input(g.float_op(node, [values]), spec)

    table = codes(inputs)
    vector = codes(inputs.repeat_interleave(_REPEAT)).reshape(-1, _REPEAT)
    scalar = np.concatenate([codes(v) for v in inputs.split(1)])
    if (vector != table[:, None]).any() or (scalar != table).any():
        return  # the kernel's output depends on where a value sits: it stays float
    node["table"] = ctx.add(f"{node['name']}.table", table)
    node["table_start"] = int(x.lo)


def c(node: dict, args):
    if node.get("table") is None:
        return None
    return CStep("lookup", {"start": int(node["table_start"])}, tensors={"table": node["table"]})
