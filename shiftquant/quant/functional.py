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
* ``full_codes`` (unsigned with a zero level only): spend every one of the code's ``2^c`` values.
  The symmetric layout of an unsigned quantizer with zero uses ``2^s + 1`` of the ``2^(s+1)`` codes
  of its ``s + 1``-bit code (5 of 8 at ``s = 2``); with ``full_codes`` the levels are zero plus
  ``2^(s+1) - 1`` powers of two, ``{0, 2^0, ..., 2^-(2^(s+1) - 2)}`` (A3: zero and seven powers of
  two; A2: zero, 1, 1/2, 1/4). A uniform ``b``-bit quantizer with ``full_codes`` is unsigned fixed
  point, ``{0, 1, ..., 2^b - 1} / 2^b`` (zero plus seven steps at ``b = 3``) instead of
  ``{0, 1/n, ..., n/n}``.

Learned power-of-two scales (:func:`scale_gradient`, :func:`bound_log2_scale`): the gradient of a
log2 scale is LSQ/TQT-style, computed from in-range values only and normalized by
``1/sqrt(N * Qmax)``; the scale is bounded to ``[LOG2_SCALE_MIN, LOG2_SCALE_MAX]``.
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError

ROUNDINGS = ("ceil", "nearest")
GRAD_MODES = ("scaled", "raw")
# The range of a learned log2 scale: 2^-32 .. 2^32. Every level times every scale stays a normal
# float32 (the smallest level of a 5-bit full-code shift quantizer is 2^-62), and ``x * 2^-l``
# cannot overflow for any |x| below 2^95.
LOG2_SCALE_MIN, LOG2_SCALE_MAX = -32, 32


def check_full_codes(full_codes: bool, zero: bool, signed: bool, field: str = "full_codes") -> None:
    """``full_codes`` is a layout of unsigned quantizers with a zero level (the only layout that
    leaves codes unused among the unsigned ones)."""
    if full_codes and not (zero and not signed):
        raise ConfigError(field, True, "false unless the quantizer is unsigned with a zero level "
                                       "(zero=true, signed=false)")


def shift_min_exponent(shift_bits: int, full_codes: bool = False) -> int:
    """Exponent of the smallest non-zero shift level: ``-(2^s - 1)``, or ``-(2^(s+1) - 2)`` with
    ``full_codes``."""
    if full_codes:
        return -(2 ** (shift_bits + 1) - 2)
    return -(2**shift_bits - 1)


def shift_levels(shift_bits: int, zero: bool = False, signed: bool = True,
                 full_codes: bool = False) -> torch.Tensor:
    """All levels of a shift quantizer, sorted ascending (float64)."""
    check_full_codes(full_codes, zero, signed)
    mags = [2.0**e for e in range(shift_min_exponent(shift_bits, full_codes), 1)]
    return _assemble_levels(mags, zero, signed)


def _uniform_grid(bits: int, full_codes: bool) -> tuple[int, int]:
    """``(denominator, top)``: the magnitudes are ``k / denominator`` for ``k = 1 .. top``."""
    if full_codes:
        return 2**bits, 2**bits - 1
    n = 2 ** (bits - 1)
    return n, n


def uniform_resolution(bits: int, full_codes: bool = False) -> float:
    """The smallest non-zero magnitude of a uniform quantizer (every level is a multiple of it)."""
    return 1.0 / _uniform_grid(bits, full_codes)[0]


def uniform_levels(bits: int, zero: bool = False, signed: bool = True,
                   full_codes: bool = False) -> torch.Tensor:
    """All levels of a uniform quantizer, sorted ascending (float64)."""
    check_full_codes(full_codes, zero, signed)
    den, top = _uniform_grid(bits, full_codes)
    levels = _assemble_levels([k / den for k in range(1, top + 1)], zero, signed)
    return levels[:-1] if _twos_complement(zero, signed) else levels


def positive_level_count(levels: torch.Tensor) -> int:
    """``Qmax`` of the LSQ gradient scale: how many levels are above zero (LSQ's ``Q_P`` for a
    uniform grid)."""
    return max(int((levels > 0).sum()), 1)


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


def shift_magnitude(x: torch.Tensor, shift_bits: int, rounding: str, full_codes: bool = False) -> torch.Tensor:
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
    pow2.clamp_(_pow2_bits(shift_min_exponent(shift_bits, full_codes), x.dtype), _pow2_bits(0, x.dtype))
    return pow2.view(x.dtype)


def shift_exponent(x: torch.Tensor, shift_bits: int, rounding: str, full_codes: bool = False) -> torch.Tensor:
    """Integer exponent ``e`` of :func:`shift_magnitude` (``int64``)."""
    int_dtype, mant_bits, bias = _layout(x.dtype)
    return (shift_magnitude(x, shift_bits, rounding, full_codes).view(int_dtype) >> mant_bits).long() - bias


def shift_quantize(x: torch.Tensor, shift_bits: int, rounding: str = "ceil", zero: bool = False,
                   signed: bool = True, full_codes: bool = False) -> torch.Tensor:
    """Hard shift quantizer Q(x): every output is one of :func:`shift_levels`."""
    check_full_codes(full_codes, zero, signed)
    mag = shift_magnitude(x, shift_bits, rounding, full_codes)
    return _apply_sign_and_zero(x, mag, 2.0 ** shift_min_exponent(shift_bits, full_codes), zero, signed)


def uniform_quantize(x: torch.Tensor, bits: int, rounding: str = "ceil", zero: bool = False,
                     signed: bool = True, full_codes: bool = False) -> torch.Tensor:
    """Hard uniform quantizer U_b(x): every output is one of :func:`uniform_levels`."""
    check_full_codes(full_codes, zero, signed)
    n, top = _uniform_grid(bits, full_codes)
    scaled = x.abs() * n
    if rounding == "ceil":
        k = torch.ceil(scaled)
    elif rounding == "nearest":
        k = torch.floor(scaled + 0.5)
    else:
        raise ConfigError("rounding", rounding, f"one of {ROUNDINGS}")
    mag = k.clamp(1, top) / n
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


# ----------------------------------------------------------------------------- learned pot scales
def bound_log2_scale(log2_scale: torch.Tensor) -> torch.Tensor:
    """``l`` clamped to ``[LOG2_SCALE_MIN, LOG2_SCALE_MAX]`` with a straight-through gradient (a
    value outside the range is still pulled back by its gradient; the training loop also projects
    the parameter itself, :func:`shiftquant.bound_scales`)."""
    clamped = log2_scale.clamp(LOG2_SCALE_MIN, LOG2_SCALE_MAX)
    return log2_scale + (clamped - log2_scale).detach()


def pot_exponent(log2_scale: torch.Tensor) -> torch.Tensor:
    """The integer exponent ``round(l)`` of a learned scale, bounded, without gradient."""
    return torch.round(log2_scale.detach().clamp(LOG2_SCALE_MIN, LOG2_SCALE_MAX))


def lsq_grad_scale(numel: int, levels: torch.Tensor) -> float:
    """LSQ's gradient normalization ``1 / sqrt(N * Qmax)``: ``N`` values share the scale, ``Qmax``
    is the number of positive levels (:func:`positive_level_count`)."""
    return 1.0 / math.sqrt(max(int(numel), 1) * positive_level_count(levels))


def scale_gradient_coefficient(z: torch.Tensor, q: torch.Tensor, eps: torch.Tensor, lo: float, hi: float,
                               grad_scale: float) -> torch.Tensor:
    """Per value, ``d out / d l`` divided by the scale, for ``out = s * q_eps(x / s)``, ``s = 2^l``.

    The relaxed output is ``eps * x + (1 - eps) * s * Q(x / s)``; its first term does not depend on
    ``s``. With a straight-through ``Q`` inside the range ``[lo, hi]`` (the lowest and the highest
    level) and the exact derivative (``Q`` constant) outside it, ``d out / d s = (1 - eps) * (Q(z) -
    z)`` in range and ``(1 - eps) * Q(z)`` for clipped values (LSQ, TQT). ``d s / d l = s ln 2``;
    the whole is normalized by ``grad_scale`` (:func:`lsq_grad_scale`).
    """
    in_range = (z >= lo) & (z <= hi)
    diff = torch.where(in_range, q - z, q)
    return diff.mul_((1.0 - eps.to(z.dtype)) * (math.log(2.0) * grad_scale))


class _ScaleGradient(torch.autograd.Function):
    """Identity on ``codes``; hands ``log2_scale`` the gradient ``sum(grad * coefficient)``."""

    @staticmethod
    def forward(ctx, codes, log2_scale, coefficient):
        ctx.save_for_backward(coefficient)
        ctx.scale_shape = log2_scale.shape
        return codes.view_as(codes)

    @staticmethod
    def backward(ctx, grad):
        (coefficient,) = ctx.saved_tensors
        g = (grad * coefficient).sum_to_size(ctx.scale_shape) if len(ctx.scale_shape) else (grad * coefficient).sum()
        return grad, g, None


def scale_gradient(codes: torch.Tensor, log2_scale: torch.Tensor, z: torch.Tensor, q: torch.Tensor,
                   eps: torch.Tensor, lo: float, hi: float, grad_scale: float) -> torch.Tensor:
    """``codes`` (the relaxed quantizer's output in scale units, which the caller multiplies by the
    detached scale ``2^round(l)``), with the learned scale's gradient attached.

    ``z = x * 2^-round(l)`` is the quantizer input and ``q = Q(z)`` its hard output. The gradient
    ``dL/dl = sum_i dL/dcodes_i * coefficient_i`` (:func:`scale_gradient_coefficient`) is the full
    derivative of the loss through the scale (both where it divides the input and where it
    multiplies the output), since ``dL/dout_i = dL/dcodes_i / s``. At ``eps = 1`` it is zero: the
    quantizer is the identity and does not depend on the scale.
    """
    if not (log2_scale.requires_grad and torch.is_grad_enabled()):
        return codes
    coefficient = scale_gradient_coefficient(z.detach(), q.detach(), eps, lo, hi, grad_scale)
    return _ScaleGradient.apply(codes, log2_scale, coefficient)
