"""Shiftmax: a softmax on integers, by shifts, whose output is zero or a power of two.

The input is attention scores on a power-of-two grid (integers ``s`` worth ``unit`` each); the
logits are ``s * unit * scale``. With ``d = s - max(s) <= 0`` along ``dim``:

1. **Base-2 exponent in fixed point.** ``unit * scale * log2(e)`` is ``k / 2^f`` with ``k`` a
   15-bit integer (:func:`exponent_multiplier`); ``E = floor(d * k / 2^(f - P))`` is the exponent
   with ``P = 8`` fraction bits. Differences below ``-D`` (:func:`vanishing_difference`), whose
   exponential is already 0, are clamped to ``-D``: a no-op that keeps ``d * k`` within int64.
2. **2^E by a shift.** ``E = p * 2^P + r`` with ``0 <= r < 2^P``: ``2^E ~ (1 + r / 2^P) * 2^p``
   (I-ViT's shiftmax, linear between powers of two), in units of ``2^-M``:
   ``e = ((2^P + r) << (M - P)) >> -p``; the largest score gives ``e = 2^M``.
3. **Quantized probabilities.** ``e / sum(e)`` goes to zero or a power of two ``2^-i``,
   ``i = 0 .. L`` (``L = 2^shift_bits - 1``), nearest in the log domain (``2^-i`` from
   ``2^(-i - 1/2)`` up), zero below half the smallest level, all by integer comparisons
   (``2 e^2 4^i >= total^2``): no division, no float. The output integers are ``2^(L - i)`` or 0,
   worth ``2^-L`` each, so ``attention @ v`` is a shift-add too.

:func:`shiftmax_codes` is that computation on int64 tensors: the PyTorch hard model and the
exported bundle run the same function, so they agree bit for bit. In training the forward is the
hard value and the gradient is the float softmax's (a straight-through estimator), blended by the
slope ``eps`` of the quantizer that makes the scores.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import RangeError

EXP_FRACTION_BITS = 8   # P
ONE_BITS = 15           # M: the largest score's exponential is 2^M
MULTIPLIER_BITS = 15    # k < 2^15
MAX_SHIFT_BITS = 4      # L <= 15: every comparison fits int64
MAX_LENGTH = 1 << 15    # the normalized dimension: the total's square fits int64
MAX_SCORE = 1 << 46     # |scores| in units: their differences times k fit int64
LOG2E = math.log2(math.e)


def exponent_multiplier(scale: float, unit: float) -> tuple[int, int]:
    """``(k, f)`` with ``unit * scale * log2(e) ~ k / 2^f``, ``2^14 <= k <= 2^15``. Raises
    ``ValueError`` for a step that is not a positive number or that no shift of up to 20 bits reaches."""
    c = float(scale) * float(unit) * LOG2E
    if not math.isfinite(c) or c <= 0:
        raise RangeError(f"the logit step scale * unit = {float(scale) * float(unit)!r} must be a positive number")
    f = MULTIPLIER_BITS - 1 - math.floor(math.log2(c))
    if not EXP_FRACTION_BITS - 20 <= f <= 200:
        raise RangeError(f"the logit step {c!r} (scale x unit x log2 e) is outside [2^-185, 2^26]")
    return round(math.ldexp(c, f)), f


def check_shift_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_SHIFT_BITS:
        raise RangeError(f"shift_bits {bits!r} must be an integer from 1 to {MAX_SHIFT_BITS}")
    return bits


def vanishing_difference(k: int, f: int) -> int:
    """``D``: every score difference ``d <= -D`` has exponential 0 (``p <= -(M + 1)``), so clamping
    ``d`` at ``-D`` changes nothing; at most ``2 * MAX_SCORE``, and 1 when ``f < 8`` (the left shift)."""
    if f < EXP_FRACTION_BITS:  # a logit step of at least 2^6: any d <= -1 vanishes
        return 1
    return min(-(-((ONE_BITS + 1) << f) // k), 2 * MAX_SCORE)


def exponentials(s: torch.Tensor, k: int, f: int, dim: int = -1) -> torch.Tensor:
    """``e``: each score's base-2 exponential relative to the largest along ``dim``, in units of
    ``2^-M`` (int64 in, int64 out; scores within ``MAX_SCORE``)."""
    d = torch.clamp(s - s.amax(dim, keepdim=True), min=-vanishing_difference(k, f))  # <= 0; exp 0 below
    shift = f - EXP_FRACTION_BITS
    t = d * k  # |d| <= 2^47 and k <= 2^15; |d| <= 1 when shifted left by up to 20: no overflow
    e_fixed = t >> min(shift, 63) if shift >= 0 else t << -shift
    p = e_fixed >> EXP_FRACTION_BITS  # floor: <= 0
    r = e_fixed & ((1 << EXP_FRACTION_BITS) - 1)
    mantissa = ((1 << EXP_FRACTION_BITS) + r) << (ONE_BITS - EXP_FRACTION_BITS)  # [2^M, 2^(M+1))
    return mantissa >> torch.clamp(-p, max=ONE_BITS + 1)


def shiftmax_codes(s: torch.Tensor, k: int, f: int, shift_bits: int, dim: int = -1) -> torch.Tensor:
    """The output integers (0 or ``2^j``, ``j = 0 .. L``, worth ``2^-L`` each) of integer scores
    ``s`` (int64), for the multiplier ``(k, f)`` of :func:`exponent_multiplier`."""
    top = (1 << shift_bits) - 1  # L
    e = exponentials(s, k, f, dim)
    total_sq = e.sum(dim, keepdim=True) ** 2
    e_sq2 = 2 * e * e
    count = torch.zeros_like(e)
    for i in range(top):  # p >= 2^(-i - 1/2): 2 e^2 4^i >= total^2
        count += (e_sq2 << (2 * i)) >= total_sq
    nonzero = (e << (top + 1)) >= e.sum(dim, keepdim=True)  # p >= 2^-L / 2
    return torch.where(nonzero, torch.ones_like(e) << count, torch.zeros_like(e))


def shiftmax(scores: torch.Tensor, unit: float, scale: float, shift_bits: int, dim: int = -1) -> torch.Tensor:
    """The hard shiftmax of float scores on the grid ``unit`` (rounded onto it, saturating at
    ``MAX_SCORE`` units), as float."""
    k, f = exponent_multiplier(scale, unit)
    s = torch.round(scores.detach().double() / unit).clamp(-MAX_SCORE, MAX_SCORE).long()
    return shiftmax_codes(s, k, f, shift_bits, dim).to(scores.dtype) * 2.0 ** -((1 << shift_bits) - 1)


class ShiftSoftmax(nn.Module):
    """``softmax(scores * scale)`` as deployed: :func:`shiftmax` of scores on the grid of
    ``unit()``'s value; the gradient is the float softmax's. ``slope()`` gives ``eps``: the output
    is ``eps * softmax + (1 - eps) * shiftmax``."""

    def __init__(self, scale: float, shift_bits: int, unit, slope, dim: int = -1):
        super().__init__()
        self.scale, self.shift_bits, self.dim = float(scale), check_shift_bits(shift_bits), dim
        self.unit, self.slope = unit, slope  # callables, so that no quantizer is registered twice

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        hard = shiftmax(scores, self.unit(), self.scale, self.shift_bits, self.dim)
        eps = self.slope()
        if eps == 0 and not torch.is_grad_enabled():
            return hard
        soft = torch.softmax(scores * self.scale, self.dim)
        mixed = soft.detach() * eps + hard * (1.0 - eps) if eps > 0 else hard
        return mixed + (soft - soft.detach())  # the value exactly, the softmax's gradient

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, shift_bits={self.shift_bits}, dim={self.dim}"
