"""The quantizer math, as small pure functions on tensors in *scale units*.

This module is the only place that knows what a level is. Everything else (quantizer modules,
scale policies, exporter, runtime) asks it.

Shift levels with ``s`` shift bits are ``±{2^0, 2^-1, ..., 2^-(2^s - 1)}``: one sign bit plus ``s``
exponent bits. Uniform levels with ``b`` bits are ``±{1/n, 2/n, ..., n/n}`` with ``n = 2^(b-1)``.
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

ROUNDINGS = ("ceil", "nearest")
GRAD_MODES = ("scaled", "raw")
# frexp mantissas are in [0.5, 1); log2(m) rounds up to 0 when m >= sqrt(1/2).
_SQRT_HALF = math.sqrt(0.5)


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
    return _assemble_levels([k / n for k in range(1, n + 1)], zero, signed)


def _assemble_levels(mags: list[float], zero: bool, signed: bool) -> torch.Tensor:
    values = set(mags)
    if signed:
        values |= {-m for m in mags}
    if zero:
        values.add(0.0)
    return torch.tensor(sorted(values), dtype=torch.float64)


def _apply_sign_and_zero(x: torch.Tensor, mag: torch.Tensor, smallest: float, zero: bool, signed: bool):
    """Shared tail of both hard quantizers: zero level, sign, unsigned clipping."""
    if zero:
        # Half the smallest level is the boundary between zero and the smallest level.
        mag = torch.where(x.abs() < smallest / 2, torch.zeros_like(mag), mag)
    if signed:
        return torch.where(x > 0, mag, -mag)
    # Unsigned: negative inputs are below every level; they go to the lowest one.
    low = 0.0 if zero else smallest
    return torch.where(x > 0, mag, torch.full_like(mag, low))


def shift_exponent(absx: torch.Tensor, shift_bits: int, rounding: str) -> torch.Tensor:
    """Integer exponent ``e`` in ``[-(2^s-1), 0]`` of the shift level for ``|x|`` (no zero handling).

    Exact for every float (uses ``frexp``, not ``log2``): ``|x| = m * 2^k`` with ``m`` in [0.5, 1).
    ``ceil(log2|x|)`` is ``k - 1`` when ``m == 0.5`` (an exact power of two) and ``k`` otherwise;
    ``round(log2|x|)`` is ``k`` when ``m >= sqrt(1/2)`` and ``k - 1`` otherwise.
    """
    mantissa, k = torch.frexp(absx)
    if rounding == "ceil":
        e = torch.where(mantissa == 0.5, k - 1, k)
    elif rounding == "nearest":
        e = torch.where(mantissa >= _SQRT_HALF, k, k - 1)
    else:
        raise ValueError(f"rounding={rounding!r}: allowed {ROUNDINGS}")
    # frexp(0) gives k = 0, which clamps to the top; zero handling happens in the caller.
    return e.clamp(shift_min_exponent(shift_bits), 0)


def shift_quantize(x: torch.Tensor, shift_bits: int, rounding: str = "ceil", zero: bool = False,
                   signed: bool = True) -> torch.Tensor:
    """Hard shift quantizer Q(x): every output is one of :func:`shift_levels`."""
    e = shift_exponent(x.abs(), shift_bits, rounding)
    mag = torch.ldexp(torch.ones_like(x), e)
    mag = torch.where(x == 0, torch.full_like(x, 2.0 ** shift_min_exponent(shift_bits)), mag)
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
        raise ValueError(f"rounding={rounding!r}: allowed {ROUNDINGS}")
    mag = k.clamp(1, n) / n
    return _apply_sign_and_zero(x, mag, 1.0 / n, zero, signed)


class _RelaxedQuantize(torch.autograd.Function):
    """Forward ``eps*x + (1-eps)*q`` (``q = Q(x)`` precomputed); backward multiplies by ``factor``."""

    @staticmethod
    def forward(ctx, x, q, eps, factor):
        ctx.save_for_backward(factor)
        return eps * x + (1 - eps) * q

    @staticmethod
    def backward(ctx, grad):
        (factor,) = ctx.saved_tensors
        return grad * factor, None, None, None


def gradient_factor(eps: torch.Tensor, grad: str) -> torch.Tensor:
    """Gradient of q_eps w.r.t. its input.

    ``scaled`` (the seed's gradient scaling): the slope ``eps`` divided by ``eps``, i.e. 1.
    ``raw``: the true slope ``eps``. At ``eps = 0`` both are straight-through (1).
    """
    if grad == "scaled":
        return torch.ones_like(eps)
    if grad == "raw":
        return torch.where(eps > 0, eps, torch.ones_like(eps))
    raise ValueError(f"grad={grad!r}: allowed {GRAD_MODES}")


def relax(x: torch.Tensor, q: torch.Tensor, eps: torch.Tensor, grad: str = "scaled") -> torch.Tensor:
    """q_eps(x) = eps*x + (1-eps)*Q(x) with the gradient rule of ``grad``.

    At ``eps = 0`` the output is exactly ``q`` (no float rounding from the blend).
    """
    eps = eps.to(x.dtype)
    return _RelaxedQuantize.apply(x, q.detach(), eps, gradient_factor(eps, grad))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer with a straight-through (identity) gradient; exact integers."""
    return relax(x, torch.round(x), torch.zeros((), dtype=x.dtype, device=x.device))
