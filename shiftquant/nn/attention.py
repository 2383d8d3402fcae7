"""Self-attention on integers: timm's ``Attention`` with q, k and v on a power-of-two grid.

:class:`QuantAttention` is a static subclass of ``timm.layers.Attention`` that takes over a float
one's attributes (its state_dict keys stay the float module's, plus ``qkv_quantizer``). Its
forward is timm's non-fused path with three changes, each a step the exporter runs on integers:

* ``qkv_quantizer`` puts the projection's output on the activation grid (with a shift recipe:
  zero and signed powers of two), so ``q @ k^T`` sums products of powers of two: a shift-add,
  exact in float32;
* the softmax is :class:`~.shiftmax.ShiftSoftmax`: shifts and integer comparisons, probabilities
  of zero and powers of two (``gate_shift_bits``), so ``attention @ v`` is a shift-add too;
* the logit scale (``head_dim^-0.5``) is applied inside the shiftmax, to the exponent.

QK normalization, gated attention and masks are refused: their float ops would sit between
the integer steps.
"""
from __future__ import annotations

import torch
from timm.layers import Attention
from torch import nn

from ..errors import ConfigError, RangeError
from .layers import take_over
from .shiftmax import MAX_SHIFT_BITS, ShiftSoftmax


def attentions(model: nn.Module) -> list[tuple[str, Attention]]:
    """timm's ``Attention`` modules of ``model`` (that class exactly: a subclass has its own forward)."""
    return [(name, m) for name, m in model.named_modules() if type(m) is Attention]


class QuantAttention(Attention):
    qkv_quantizer: nn.Module
    shiftmax: ShiftSoftmax

    @staticmethod
    def check(attn: Attention, shift_bits: int) -> None:
        """Refuses, before anything changes, what cannot run on integers."""
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
                and getattr(attn, "gate", None) is None):
            raise ConfigError("residual_bits", "attention with qk_norm or a gate",
                              "null for this model (only plain multi-head attention runs on integers)")
        if isinstance(shift_bits, bool) or not isinstance(shift_bits, int) or not 1 <= shift_bits <= MAX_SHIFT_BITS:
            raise ConfigError("gate_shift_bits", shift_bits,
                              f"an integer from 1 to {MAX_SHIFT_BITS} for a model with attention (its probabilities)")

    @classmethod
    def from_float(cls, attn: Attention, qkv_quantizer: nn.Module, shift_bits: int) -> QuantAttention:
        cls.check(attn, shift_bits)
        new = take_over(cls, attn)
        new.qkv_quantizer = qkv_quantizer
        new.shiftmax = ShiftSoftmax(attn.scale, shift_bits, new.score_unit, new.slope)
        return new

    def score_unit(self) -> float:
        """What one integer of ``q @ k^T`` is worth: the square of the grid's unit."""
        q = self.qkv_quantizer
        return (float(q.code_scale()) * q.quantizer.resolution) ** 2

    def slope(self) -> float:
        return self.qkv_quantizer.quantizer.eps

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if isinstance(attn_mask, torch.Tensor) or is_causal is True:  # (a traced default is neither)
            raise RangeError("QuantAttention runs unmasked self-attention only")
        B, N, _ = x.shape
        qkv = self.qkv_quantizer(self.qkv(x))
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.attn_drop(self.shiftmax(q @ k.transpose(-2, -1)))
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))
