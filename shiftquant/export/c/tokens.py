"""Lowering of the ops that move or combine whole tensors: data movement, integer matmuls, the
shiftmax, the integer LayerNorm, integer constants, and shift layers over tokens.

Functions of the lowering in progress (``self``: :class:`.lower._Lowering`), as :mod:`.layout`'s.
A tensor's logical shape (``Tensor.full``, the batch as 1) is stored row-major as (C, H, W)
planes (:func:`.gather.storage_shape`): an image as itself, tokens (N, D) as (N, 1, D). A move is
a :class:`.program.Gather` of the map its op defines; the token kernels (matmul, shiftmax,
LayerNorm) read and write rows without borders (``dense``). A linear layer over tokens runs as a
1x1 convolution over a (D, 1, N) image: its input is transposed to channel planes and its output
back, so that its thresholds and shift-add kernel are the convolutions' own.
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import CodegenError
from ...nn import shiftmax as SM
from .program import Gather, LayerNormInt, MatMul, PotCodes, Shiftmax, Tensor

# Ops that pass their input's values on unchanged (a pot operand stays one through them).
_MOVES = ("identity", "flatten", "reshape", "permute", "index", "expand")


def full_shape(node: dict, fact_shape) -> tuple[int, ...]:
    """A node's logical shape with its batch (where ``batch_dim`` says, if any) as 1."""
    dims = [int(v) for v in fact_shape]
    bd = node.get("batch_dim", 0)
    if bd is not None:
        dims.insert(bd, 1)
    return tuple(dims)


def _dims(t: Tensor) -> list[int]:
    """Logical dimensions without the batch (the storage's row-major order)."""
    c, h, w = t.shape
    full = list(t.full or (c, h, w))
    if math.prod(full) != c * h * w:
        raise CodegenError(f"node {t.name!r}: logical shape {full} does not match its planes {t.shape}")
    return full


def gather(self, node: dict, args: list, out: Tensor, move) -> None:
    """``out`` = ``move`` (the op's own definition, on an array of element indices) of the input."""
    a = args[0]
    index = np.arange(math.prod(_dims(a)), dtype=np.int64).reshape(_dims(a))
    source = np.asarray(move(index))
    if source.size != math.prod(out.shape):
        raise CodegenError(f"node {node['name']!r} ({node['op']}): moves {source.size} values into {out.shape}")
    self.emit(Gather(self.cname("move", node), node["name"], [a], out,
                     source=np.ascontiguousarray(source.reshape(-1))))


def transpose(self, node: dict, a: Tensor, rows: int, cols: int, prefix: str, out: Tensor | None = None) -> Tensor:
    """``a`` as (rows, cols) transposed: (cols, 1, rows) planes, or into ``out``."""
    if out is None:
        out = self.tensor(f"{node['name']}.{prefix}", a.dtype, (cols, 1, rows), a.lo, a.hi)
    source = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols).T.reshape(-1)
    self.kernels.append(Gather(self.cname(prefix, node), node["name"], [a], out, source=np.ascontiguousarray(source)))
    return out


def constant(self, node: dict, out: Tensor) -> None:
    """An integer constant: ``out`` lives in flash."""
    value = np.asarray(self.t[node["value"]], dtype=np.int64).reshape(-1)
    out.constant, out.dense = value, True
    self.values[node["name"]] = out


def pot_values(self, name: str) -> bool:
    """Whether every value of node ``name`` is zero or a signed power of two: a shift layer's
    requantized levels, or a shiftmax, passed on by moves."""
    node = self.nodes[self.index[name]]
    while node["op"] in _MOVES:
        node = self.nodes[self.index[node["inputs"][0]]]
    if node["op"] == "shiftmax":
        return True
    levels = (node.get("requant") or {}).get("levels")
    return bool(levels) and all(v == 0 or (abs(int(v)) & (abs(int(v)) - 1)) == 0 for v in levels)


def matmul(self, node: dict, args: list, out: Tensor) -> None:
    """An integer matmul: the product is a shift wherever an operand is proven zeros and powers of
    two (its values become :class:`PotCodes` once), else a multiply."""
    a, b = args
    da, db = _dims(a), _dims(b)
    if len(da) < 2 or len(db) < 2 or da[:-2] != db[:-2] or da[-1] != db[-2]:
        raise CodegenError(f"node {node['name']!r} (matmul): shapes {da} and {db} (the C backend multiplies "
                           "matrices of one batch shape, without broadcasting)")
    batch, m, k, n = math.prod(da[:-2]), da[-2], da[-1], db[-1]
    for t in (a, b, out):
        t.dense = True
    pot_b, pot_a = pot_values(self, node["inputs"][1]), pot_values(self, node["inputs"][0])
    if pot_b:  # codes of b, transposed
        y = self.tensor(f"{node['name']}.codes", "uint8", (batch, n, k), 0, 255)
        self.kernels.append(PotCodes(self.cname("codes", node), node["name"], [b], y, dims=(batch, k, n)))
        inputs, codes = [a, y], 1
    else:  # b transposed: (batch, n, k)
        y = self.tensor(f"{node['name']}.t", b.dtype, (batch, n, k), b.lo, b.hi)
        source = np.arange(batch * k * n, dtype=np.int64).reshape(batch, k, n).transpose(0, 2, 1).reshape(-1)
        self.kernels.append(Gather(self.cname("bt", node), node["name"], [b], y, source=source))
        if pot_a:
            x = self.tensor(f"{node['name']}.codes", "uint8", (batch, m, k), 0, 255)
            self.kernels.append(PotCodes(self.cname("codes", node), node["name"], [a], x, dims=(batch, m, k),
                                         transpose=False))
            inputs, codes = [x, y], 0
        else:
            inputs, codes = [a, y], None
    for t in inputs:
        t.dense = True
    self.emit(MatMul(self.cname("matmul", node), node["name"], inputs, out, dims=(batch, m, k, n), codes=codes))


def _rows(node: dict, a: Tensor, dim: int) -> int:
    """The length of the rows ``a`` is normalized along: ``dim`` must be its last dimension."""
    rank = len(a.full or a.shape)
    if dim % rank != rank - 1:
        raise CodegenError(f"node {node['name']!r} ({node['op']}): the C backend normalizes the last dimension only")
    return _dims(a)[-1]


def shiftmax(self, node: dict, args: list, out: Tensor) -> None:
    a = args[0]
    n = _rows(node, a, node["dim"])
    a.dense = out.dense = True
    self.emit(Shiftmax(self.cname("shiftmax", node), node["name"], [a], out, n=n,
                       multiplier=SM.exponent_multiplier(node["scale"], node["unit"]),
                       shift_bits=int(node["shift_bits"])))


def layer_norm(self, node: dict, args: list, out: Tensor) -> None:
    a = args[0]
    n = _rows(node, a, -1)
    if n != int(node["normalized_shape"][0]):
        raise CodegenError(f"node {node['name']!r}: rows of {n} values, normalized shape {node['normalized_shape']}")
    a.dense = out.dense = True
    signs = np.asarray(self.t[node["signs"]], dtype=np.int8).reshape(-1)  # checked at load: n values of -1 / 1
    self.emit(LayerNormInt(self.cname("layernorm", node), node["name"], [a], out, n=n, signs=signs))


def linear_over_tokens(self, node: dict, x: Tensor, cin: int) -> tuple[Tensor, int]:
    """A linear layer's input of N tokens of ``cin`` values, as (cin, 1, N) planes; returns it
    and N."""
    dims = _dims(x)
    if dims[-1] != cin:
        raise CodegenError(f"node {node['name']!r}: tokens of {dims[-1]} values for a layer of {cin} inputs")
    tokens = math.prod(dims[:-1])
    return transpose(self, node, x, tokens, cin, "planes"), tokens


def tokens_back(self, node: dict, planes: Tensor, fact) -> Tensor:
    """A linear layer's (Cout, 1, N) output as the node's (N, Cout) tokens."""
    cout, _, tokens = planes.shape
    out = self.tensor(node["name"], planes.dtype, (tokens, 1, cout), planes.lo, planes.hi,
                      full=full_shape(node, fact.shape))
    transpose(self, node, planes, cout, tokens, "tokens", out)
    self.values[node["name"]] = out
    return out


