"""The quantizer math, as small pure functions on tensors in *scale units*.

This module is the only place that knows what a level is. Everything else (quantizer modules,
scale policies, exporter, runtime) asks it.

Shift levels with ``s`` shift bits are ``±{2^0, 2^-1, ..., 2^-(2^s - 1)}``: one sign bit plus ``s``
exponent bits. Uniform levels with ``b`` bits are ``±{1/n, 2/n, ..., n/n}`` with ``n = 2^(b-1)``;
with a zero level and signed they are two's complement fixed point, ``{-n/n, ..., (n-1)/n}``:
``2^b`` levels, so ``b`` bits hold them (an 8-bit grid is ``-128..127``).
Options common to both:

* ``rounding``: ``"ceil"`` rounds the magnitude up to the next level (the seed paper);
  ``"nearest"`` rounds to the nearest level, in the log domain for shift levels (DeepShift, INQ).
* ``zero``: add a zero level. Magnitudes below half the smallest non-zero level go to zero.
* ``signed``: symmetric levels. Without a zero level, ``x <= 0`` goes to the negative side.
  ``signed=False`` keeps the non-negative levels only (post-ReLU activations); inputs below the
  smallest level go to the smallest level (or to zero when there is one).
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError

ROUNDINGS = ("ceil", "nearest")
GRAD_MODES = ("scaled", "raw")


def shift_min_exponent(shift_bits: int) -> int:
    """Exponent of the smallest non-zero shift level: ``-(2^s - 1)``."""
    return -(2**shift_bits - 1)


def shift_levels(shift_bits: int, zero: bool = False, signed: bool = True) -> torch.Tensor:
    """All levels of a shift quantizer, sorted ascending (float64)."""
    mags = [2.0**e for e in range(shift_min_exponent(shift_bits), 1)]
    return _assemble_levels(mags, zero, signed)


def uniform_levels(bits: int, zero: bool = False, signed: bool = True) -> torch.Tensor:
    """All levels of a uniform quantizer, sorted ascending (float64)."""
    n = 2 ** (bits - 1)
    levels = _assemble_levels([k / n for k in range(1, n + 1)], zero, signed)
    return levels[:-1] if _twos_complement(zero, signed) else levels


def _twos_complement(zero: bool, signed: bool) -> bool:
    """A signed uniform grid with a zero drops its top level, ``+n/n``: ``2^b`` levels in ``b`` bits."""
    return zero and signed


def _assemble_levels(mags: list[float], zero: bool, signed: bool) -> torch.Tensor:
    values = set(mags)
    if signed:
        values |= {-m for m in mags}
    if zero:
        values.add(0.0)
    return torch.tensor(sorted(values), dtype=torch.float64)


def _apply_sign_and_zero(x: torch.Tensor, mag: torch.Tensor, smallest: float, zero: bool,
                         signed: bool) -> torch.Tensor:
    """Shared tail of both hard quantizers: zero level, sign, unsigned clipping.

    ``mag`` is a fresh tensor of magnitudes and is modified in place (large temporaries cost more
    than the arithmetic on a CPU).
    """
    if zero:
        # Half the smallest level is the boundary between zero and the smallest level.
        mag.masked_fill_(x.abs() < smallest / 2, 0.0)
    if signed:
        mag.copysign_(x)
        if not zero:
            mag.masked_fill_(x == 0, -smallest)  # +0.0 goes to the negative side too
        return mag
    # Unsigned: inputs at or below zero are below every level; they go to the lowest one.
    return mag.masked_fill_(x <= 0, 0.0 if zero else smallest)


# Float layouts: the integer type of the same width, mantissa bits, exponent bias.
_LAYOUTS = {
    torch.float32: (torch.int32, 23, 127),
    torch.float64: (torch.int64, 52, 1023),
    torch.float16: (torch.int16, 10, 15),
    torch.bfloat16: (torch.int16, 7, 127),
}


def _layout(dtype: torch.dtype):
    if dtype not in _LAYOUTS:
        raise ConfigError("dtype", dtype, "a floating point dtype: " + ", ".join(map(str, _LAYOUTS)))
    return _LAYOUTS[dtype]


def _pow2_bits(exponent: int, dtype: torch.dtype) -> int:
    """Bit pattern of the float ``2^exponent`` in ``dtype``, as a Python int."""
    int_dtype, mant_bits, bias = _layout(dtype)
    return (exponent + bias) << mant_bits


def shift_magnitude(x: torch.Tensor, shift_bits: int, rounding: str) -> torch.Tensor:
    """``2^e`` for ``|x|``, ``e`` in ``[-(2^s-1), 0]`` the ceil or nearest log2, on the bit pattern.

    Positive floats are ordered like their bit patterns, and an exponent is the bits above the
    mantissa. So ``ceil(log2|x|)`` adds ``mantissa_max`` and masks the mantissa off (a non-zero
    mantissa carries into the exponent), and ``round(log2|x|)`` adds ``2^m - mantissa(sqrt 2)``
    (a significand of at least sqrt 2 carries). Clipping to the levels is an integer clamp.
    Exact for every float, subnormals and zero included (zero goes to the smallest level).
    """
    int_dtype, mant_bits, _ = _layout(x.dtype)
    mant_mask = (1 << mant_bits) - 1
    if rounding == "ceil":
        carry = mant_mask
    elif rounding == "nearest":
        sqrt2_mant = int(torch.tensor(math.sqrt(2.0), dtype=x.dtype).view(int_dtype)) & mant_mask
        carry = (1 << mant_bits) - sqrt2_mant
    else:
        raise ConfigError("rounding", rounding, f"one of {ROUNDINGS}")
    pow2 = x.view(int_dtype) & ~(1 << (torch.iinfo(int_dtype).bits - 1))  # |x|
    pow2.add_(carry).bitwise_and_(~mant_mask)
    pow2.clamp_(_pow2_bits(shift_min_exponent(shift_bits), x.dtype), _pow2_bits(0, x.dtype))
    return pow2.view(x.dtype)


def shift_exponent(x: torch.Tensor, shift_bits: int, rounding: str) -> torch.Tensor:
    """Integer exponent ``e`` of :func:`shift_magnitude` (``int64``)."""
    int_dtype, mant_bits, bias = _layout(x.dtype)
    return (shift_magnitude(x, shift_bits, rounding).view(int_dtype) >> mant_bits).long() - bias


def shift_quantize(x: torch.Tensor, shift_bits: int, rounding: str = "ceil", zero: bool = False,
                   signed: bool = True) -> torch.Tensor:
    """Hard shift quantizer Q(x): every output is one of :func:`shift_levels`."""
    mag = shift_magnitude(x, shift_bits, rounding)
    return _apply_sign_and_zero(x, mag, 2.0 ** shift_min_exponent(shift_bits), zero, signed)


def uniform_quantize(x: torch.Tensor, bits: int, rounding: str = "ceil", zero: bool = False,
                     signed: bool = True) -> torch.Tensor:
    """Hard uniform quantizer U_b(x): every output is one of :func:`uniform_levels`."""
    n = 2 ** (bits - 1)
    scaled = x.abs() * n
    if rounding == "ceil":
        k = torch.ceil(scaled)
    elif rounding == "nearest":
        k = torch.floor(scaled + 0.5)
    else:
        raise ConfigError("rounding", rounding, f"one of {ROUNDINGS}")
    mag = k.clamp(1, n) / n
    out = _apply_sign_and_zero(x, mag, 1.0 / n, zero, signed)
    return out.clamp_(max=(n - 1) / n) if _twos_complement(zero, signed) else out


class _RelaxedQuantize(torch.autograd.Function):
    """Forward ``eps*x + (1-eps)*q`` (``q = Q(x)`` precomputed); backward multiplies by ``factor``."""

    @staticmethod
    def forward(ctx, x, q, eps, factor, scaled):
        ctx.save_for_backward(factor)
        ctx.scaled = scaled
        # lerp is exact at both ends: q at eps = 0, x at eps = 1.
        return torch.lerp(q, x, eps)

    @staticmethod
    def backward(ctx, grad):
        (factor,) = ctx.saved_tensors
        if ctx.scaled:  # the factor is 1: skip a pass over the tensor
            return grad, None, None, None, None
        return grad * factor, None, None, None, None


def gradient_factor(eps: torch.Tensor, grad: str) -> torch.Tensor:
    """Gradient of q_eps w.r.t. its input.

    ``scaled`` (the seed's gradient scaling): the slope ``eps`` divided by ``eps``, i.e. 1.
    ``raw``: the true slope ``eps``. At ``eps = 0`` both are straight-through (1).
    """
    if grad == "scaled":
        return torch.ones_like(eps)
    if grad == "raw":
        return torch.where(eps > 0, eps, torch.ones_like(eps))
    raise ConfigError("grad", grad, f"one of {GRAD_MODES}")


def relax(x: torch.Tensor, q: torch.Tensor, eps: torch.Tensor, grad: str = "scaled") -> torch.Tensor:
    """q_eps(x) = eps*x + (1-eps)*Q(x) with the gradient rule of ``grad``.

    At ``eps = 0`` the output is exactly ``q`` (no float rounding from the blend).
    """
    eps = eps.to(x.dtype)
    return _RelaxedQuantize.apply(x, q.detach(), eps, gradient_factor(eps, grad), grad == "scaled")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer with a straight-through (identity) gradient; exact integers."""
    return relax(x, torch.round(x), torch.zeros((), dtype=x.dtype, device=x.device))
