"""Integer arithmetic in ONNX (int64, opset 20): the building blocks of the integer kernels whose
steps float32 cannot hold (the shiftmax, the integer LayerNorm).

ONNX has no signed shift, and its integer ``Div`` truncates toward zero; here a floor division is
``(a - Mod(a, d)) / d`` (``Mod`` with the divisor's sign: exact), a power of two ``2^v`` an
unsigned ``BitShift`` of 1, and a bit length a count of comparisons with ``2^0 .. 2^62``. Each
function takes the ONNX builder (:class:`..onnx.lower.Builder`) and value names and returns a value name (int64).
"""
from __future__ import annotations

import numpy as np

INT64, UINT64, DOUBLE, FLOAT = 7, 13, 11, 1  # ONNX TensorProto element types


def const(b, value) -> str:
    return b.const(np.asarray(value, dtype=np.int64), np.int64)


def floor_div(b, a: str, d: str) -> str:
    """``floor(a / d)`` for ``d > 0`` (int64)."""
    return b.op("Div", b.op("Sub", a, b.op("Mod", a, d, fmod=0)), d)


def pow2(b, v: str) -> str:
    """``2^v`` for int64 ``0 <= v <= 62``."""
    one = b.const(np.asarray(1, dtype=np.uint64), np.uint64)
    return b.op("Cast", b.op("BitShift", one, b.op("Cast", v, to=UINT64), direction="LEFT"), to=INT64)


def bit_length(b, v: str) -> str:
    """Bits of each non-negative int64 (0 for 0): how many of ``2^0 .. 2^62`` it reaches."""
    powers = const(b, [1 << k for k in range(63)])
    reached = b.op("GreaterOrEqual", b.op("Unsqueeze", v, const(b, [-1])), powers)
    return b.op("ReduceSum", b.op("Cast", reached, to=INT64), const(b, [-1]), keepdims=0)


def isqrt(b, v: str) -> str:
    """``floor(sqrt(v))`` for int64 ``0 <= v < 2^62``: a float64 estimate corrected by integer
    comparisons (:func:`shiftquant.nn.integer_norm.isqrt`)."""
    r = b.op("Cast", b.op("Floor", b.op("Sqrt", b.op("Cast", v, to=DOUBLE))), to=INT64)
    one = const(b, 1)
    for _ in range(3):
        r = b.op("Where", b.op("Greater", b.op("Mul", r, r), v), b.op("Sub", r, one), r)
        up = b.op("Add", r, one)
        r = b.op("Where", b.op("LessOrEqual", b.op("Mul", up, up), v), up, r)
    return r
