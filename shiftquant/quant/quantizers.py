"""Quantizer modules: the pure math of :mod:`functional` plus the slope ``eps`` they are at.

Inputs are in scale units (the scale policies of :mod:`scales` handle real units). ``eps = 1`` is
the identity, ``eps = 0`` the hard quantizer. ``eps`` lives in a non-persistent buffer so that
changing it neither recompiles a ``torch.compile``-d model nor changes the state_dict.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from . import functional as F

MAX_SHIFT_BITS = 6   # 2^6 = 64 exponents: below 2^-63 a float32 level is meaningless
MAX_UNIFORM_BITS = 16


def check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(field, value, "one of " + ", ".join(repr(a) for a in allowed))


def check_int_range(field: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(field, value, f"an integer from {low} to {high}")


def check_eps(value, field: str = "eps") -> float:
    try:
        eps = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field, value, "a number in [0, 1]") from None
    if not 0.0 <= eps <= 1.0:
        raise ConfigError(field, value, "a number in [0, 1]")
    return eps


class Quantizer(nn.Module):
    """Base of the relaxed quantizers: ``forward(x) = eps*x + (1-eps)*hard(x)``."""

    def __init__(self, rounding: str = "ceil", zero: bool = False, signed: bool = True,
                 grad: str = "scaled", full_codes: bool = False):
        super().__init__()
        check_choice("rounding", rounding, F.ROUNDINGS)
        check_choice("grad", grad, F.GRAD_MODES)
        check_choice("full_codes", full_codes, (False, True))
        F.check_full_codes(full_codes, zero, signed)
        self.rounding, self.zero, self.signed, self.grad = rounding, bool(zero), bool(signed), grad
        self.full_codes = bool(full_codes)
        self.register_buffer("eps_tensor", torch.ones(()), persistent=False)
        self._range: tuple[float, float] | None = None

    @property
    def eps(self) -> float:
        return float(self.eps_tensor)

    @eps.setter
    def eps(self, value) -> None:
        self.eps_tensor.fill_(check_eps(value))

    def hard(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def levels(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relaxed_and_hard(x)[0]

    def relaxed_and_hard(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q_eps(x), Q(x))``: the output and the hard levels it blends toward."""
        q = self.hard(x)
        return F.relax(x, q, self.eps_tensor, self.grad), q

    @property
    def clip_range(self) -> tuple[float, float]:
        """``(lowest level, highest level)``: inputs outside are clipped."""
        if self._range is None:
            levels = self.levels()
            self._range = (float(levels.min()), float(levels.max()))
        return self._range

    @property
    def code_bits(self) -> int:
        """Bits one stored code takes (sign + magnitude index, plus a code for zero if any)."""
        n = len(self.levels())
        return max(1, (n - 1).bit_length())

    def extra_repr(self) -> str:
        full = ", full_codes=True" if self.full_codes else ""
        return (f"{self._bits_repr()}, rounding={self.rounding!r}, zero={self.zero}, "
                f"signed={self.signed}{full}, grad={self.grad!r}, eps={self.eps:g}")


class ShiftQuantizer(Quantizer):
    """Power-of-two quantizer with ``shift_bits`` exponent bits: levels ``±{1, 1/2, ..., 2^-(2^s-1)}``
    (unsigned with zero and ``full_codes``: ``{0, 1, ..., 2^-(2^(s+1)-2)}``, every code of ``s + 1``
    bits)."""

    def __init__(self, shift_bits: int, rounding: str = "ceil", zero: bool = False,
                 signed: bool = True, grad: str = "scaled", full_codes: bool = False):
        check_int_range("shift_bits", shift_bits, 0, MAX_SHIFT_BITS - 1 if full_codes else MAX_SHIFT_BITS)
        super().__init__(rounding, zero, signed, grad, full_codes)
        self.shift_bits = shift_bits

    def hard(self, x):
        return F.shift_quantize(x, self.shift_bits, self.rounding, self.zero, self.signed, self.full_codes)

    def levels(self):
        return F.shift_levels(self.shift_bits, self.zero, self.signed, self.full_codes)

    def _bits_repr(self):
        return f"shift_bits={self.shift_bits}"

    @property
    def resolution(self) -> float:
        """The smallest non-zero level magnitude: every level is an integer multiple of it."""
        return 2.0 ** F.shift_min_exponent(self.shift_bits, self.full_codes)


class UniformQuantizer(Quantizer):
    """Uniform quantizer with ``bits`` bits: levels ``±{1/n, ..., n/n}``, ``n = 2^(bits-1)``."""

    def __init__(self, bits: int, rounding: str = "ceil", zero: bool = False,
                 signed: bool = True, grad: str = "scaled", full_codes: bool = False):
        check_int_range("bits", bits, 1, MAX_UNIFORM_BITS)
        super().__init__(rounding, zero, signed, grad, full_codes)
        self.bits = bits

    def hard(self, x):
        return F.uniform_quantize(x, self.bits, self.rounding, self.zero, self.signed, self.full_codes)

    def levels(self):
        return F.uniform_levels(self.bits, self.zero, self.signed, self.full_codes)

    def _bits_repr(self):
        return f"bits={self.bits}"

    @property
    def resolution(self) -> float:
        """The smallest non-zero level magnitude: every level is an integer multiple of it."""
        return F.uniform_resolution(self.bits, self.full_codes)
