"""LayerNorm on integers: integer mean and variance, an integer square root, a fixed-point result.

:class:`QuantLayerNorm` normalizes each row (the trailing ``normalized_shape``) of a tensor whose
values lie on a power-of-two grid (the residual stream, on its grid) with integer arithmetic only,
I-LayerNorm style, then applies the affine ``z * weight + bias`` in float32. The exporter folds
that affine and the next layer's input quantizer into per-channel thresholds on ``z``'s integers,
so the deployed model is integer-only; the PyTorch model computes the same ``z``.

:func:`normalized_ints`, on int64 rows ``X`` (``N`` values):

1. **Scale-free integers.** ``X`` is shifted right by ``v``: its rows' common power-of-two factor
   (the trailing zeros of the bitwise OR of ``|X|``), or more where the row's largest magnitude
   has more than ``30 - bits(N)`` bits. A row's ``z`` so depends on its values alone, not on the
   unit the integers came in (the PyTorch model does not know it; the exporter does).
2. ``S = sum X``, ``V = N * sum X^2 - S^2`` (``N^2`` times the variance) and ``D = N * X - S``
   (``N`` times the deviation), all exact in int64.
3. ``r = isqrt(V << 2T)`` with ``T = (62 - bits(V)) // 2`` (an integer square root with 31 bits
   of precision), and ``z = floor((D << (F + T)) / r)``: ``(x - mean) / std`` with ``F = 10``
   fraction bits, ``|z| <= 2^F sqrt(N)``. A constant row gives 0 (``eps`` is not used).

:func:`isqrt` and :func:`bit_length` are integer-only (comparisons and shifts), so a C kernel can
compute exactly the same integers.
"""
from __future__ import annotations

import timm.layers as timm_layers
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RangeError

from .layers import take_over

FRACTION_BITS = 10  # F
MAX_ROW = 1 << 12   # N: every product above fits int64


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Bits of each non-negative int64 (0 for 0), by comparisons."""
    out = torch.zeros_like(x)
    for k in range(63):
        out += (x >> k) > 0
    return out


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """``floor(sqrt(v))`` of non-negative int64 below 2^62: a float64 estimate, corrected by integer
    comparisons until exact."""
    r = torch.sqrt(v.double()).long()
    for _ in range(3):
        r = torch.where(r * r > v, r - 1, r)
        r = torch.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


def normalized_ints(x: torch.Tensor) -> torch.Tensor:
    """``z`` (int64, worth ``2^-F`` each) of each row of the int64 rows ``x`` (..., N)."""
    n = x.shape[-1]
    if not 1 <= n <= MAX_ROW:
        raise RangeError(f"a LayerNorm row of {n} values: 1 to {MAX_ROW} on integers")
    mag = x.abs()
    lowest = torch.where(mag > 0, mag & -mag, torch.full_like(mag, 1 << 62)).amin(-1, keepdim=True)
    common = bit_length(lowest) - 1  # trailing zeros of the OR of |x|
    cap = bit_length(mag.amax(-1, keepdim=True)) - (30 - int(n).bit_length())
    x = x >> torch.clamp(torch.maximum(common, cap), 0, 62)
    s = x.sum(-1, keepdim=True)
    v = n * (x * x).sum(-1, keepdim=True) - s * s
    t = (62 - bit_length(v)) // 2
    r = torch.clamp(isqrt(v << (2 * t)), min=1)
    return torch.div((n * x - s) << (FRACTION_BITS + t), r, rounding_mode="floor")


def float_rows_to_ints(x: torch.Tensor, dims: int) -> torch.Tensor:
    """The float rows (the last ``dims`` dimensions flattened) as int64 on each row's finest
    power-of-two grid (exact for values on a grid; at most 2^40 times the row's largest
    magnitude apart, so any float row fits)."""
    rows = x.detach().double().flatten(-dims) if dims > 1 else x.detach().double()
    mant, exp = torch.frexp(rows)
    m = (mant * 2.0**53).long()  # the mantissa as an integer, exact
    low = exp - 53 + torch.frexp((m & -m).abs().double())[1] - 1  # each value's lowest set bit (exact)
    low = torch.where(rows != 0, low, torch.full_like(low, 1 << 20)).amin(-1, keepdim=True)
    top = torch.where(rows != 0, exp, torch.full_like(exp, -(1 << 20))).amax(-1, keepdim=True)
    unit = torch.maximum(low, top - 40).clamp(-1070, 1023)
    return torch.floor(torch.ldexp(rows, -unit)).long()


def affine(z: torch.Tensor, weight, bias) -> torch.Tensor:
    """``z``'s integers (float32) times ``2^-F`` (exact), times ``weight``, plus ``bias``: the
    float32 operations the exporter's thresholds evaluate, in this order."""
    out = z * 2.0 ** -FRACTION_BITS
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def integer_layer_norm(x: torch.Tensor, normalized_shape, weight, bias) -> torch.Tensor:
    """The hard output: :func:`affine` of the rows' :func:`normalized_ints`."""
    z = normalized_ints(float_rows_to_ints(x, len(normalized_shape))).reshape(x.shape)
    return affine(z.to(x.dtype), weight, bias)


_LAYER_NORMS = (nn.LayerNorm, timm_layers.LayerNorm)  # these classes exactly: timm's is F.layer_norm too


def integer_layer_norms(model: nn.Module) -> list[str]:
    """The LayerNorm modules (``nn.LayerNorm``, timm's ``LayerNorm``) that can run on integers: one
    normalized dimension of at most ``MAX_ROW`` values."""
    return [name for name, m in model.named_modules()
            if type(m) in _LAYER_NORMS and len(m.normalized_shape) == 1 and m.normalized_shape[0] <= MAX_ROW]


class QuantLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed as :func:`integer_layer_norm`; the gradient is the float
    LayerNorm's (a straight-through estimator). Takes over a float LayerNorm's attributes (its
    state_dict keys stay the same)."""

    @classmethod
    def from_float(cls, ln: nn.LayerNorm) -> QuantLayerNorm:
        return take_over(cls, ln)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hard = integer_layer_norm(x, self.normalized_shape, self.weight, self.bias)
        if not torch.is_grad_enabled():
            return hard
        soft = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return hard.detach() + (soft - soft.detach())
