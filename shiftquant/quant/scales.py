"""Scale policies: how real-valued weights and activations are brought to scale units and back.

Weights (per output channel):

* ``pretrained_std`` (the seed): ``z = (w - mu_c) / (k * sigma_c)`` with statistics taken without
  gradient, quantize, multiply by ``k * sigma_hat_c`` where ``sigma_hat_c`` is the channel's std at
  conversion time, fixed. The seed drops the mean (``keep_mean=False``); ``keep_mean=True`` adds
  ``mu_c`` back, which makes the policy the identity at ``eps = 1``.
* ``learned_pot``: ``s_c = 2^round(l_c)`` with ``l_c`` a learned log2 scale, ``w_q = s_c *
  Q(w * 2^-round(l_c))`` (a multiplication by an exact power of two, no division). The identity at
  ``eps = 1``. ``frozen=True`` keeps the initial (MSE-optimal) scale: with a BatchNorm after the
  layer the loss hardly depends on it.

Activations (per tensor):

* ``standardize`` (the seed): a BatchNorm without affine parameters, divide by ``k``, quantize,
  multiply by ``k``. Not the identity at ``eps = 1``: it normalizes the layer input.
* ``learned_pot``: ``s = 2^round(l)``, ``x_q = s * Q(x * 2^-round(l))``; for post-ReLU inputs use
  an unsigned quantizer with a zero level. The identity at ``eps = 1``.

A learned log2 scale gets the LSQ/TQT gradient of :func:`functional.scale_gradient` (in-range values
only, normalized by ``1/sqrt(N * Qmax)``, ``N`` the number of values that share the scale), and
stays in ``[LOG2_SCALE_MIN, LOG2_SCALE_MAX] = [-32, 32]`` (the forward clamps; ``bound_scales``
projects the parameter after each optimizer step).

With no quantizer (``quantizer=None``) the ``standardize`` policy is the seed's standardizing
BatchNorm on a float input (the seed inserts it in weight-only runs too).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from . import functional as F
from .quantizers import Quantizer

WEIGHT_POLICIES = ("pretrained_std", "learned_pot")
ACT_POLICIES = ("standardize", "learned_pot")


def channel_stats(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel mean and std of a weight, shaped to broadcast against it."""
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    # The unbiased std as a norm of the centred rows: several times faster than aten::std on a CPU.
    dof = max(flat.shape[1] - 1, 1)
    std = (torch.linalg.vector_norm(flat - mean, dim=1, keepdim=True) / dof**0.5).clamp_min(1e-12)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return mean.reshape(shape), std.reshape(shape)


def mse_pot_exponent(x: torch.Tensor, quantizer: Quantizer, search: int = 4) -> torch.Tensor:
    """Per-row integer log2 scale minimizing ``||x - 2^e Q(x / 2^e)||^2`` for a 2-D ``x``.

    Candidates are ``ceil(log2 max|x|) - search .. + 1``: the top level at or just above the
    largest magnitude, and coarser clipping below it. An all-zero row (a BatchNorm initialized
    with gain 0, as timm's last one in a block) is exact at any scale: it gets ``2^0``, not the
    tiniest one, which would misalign a residual add with it by dozens of bits.
    """
    x = x.detach().float()
    peak = x.abs().amax(dim=1)
    top = torch.where(peak > 0, torch.ceil(torch.log2(peak.clamp_min(1e-12))), torch.zeros_like(peak))
    best_err = torch.full_like(top, float("inf"))
    top.clamp_(F.LOG2_SCALE_MIN + search, F.LOG2_SCALE_MAX - 1)
    best = top.clone()
    for offset in range(-search, 2):
        e = top + offset
        s = torch.exp2(e)[:, None]
        err = (x - s * quantizer.hard(x / s)).pow(2).sum(dim=1)
        better = err < best_err
        best = torch.where(better, e, best)
        best_err = torch.where(better, err, best_err)
    return best


def pot_scale(log2_scale: torch.Tensor) -> torch.Tensor:
    """``2^round(l)``, ``l`` bounded to ``[LOG2_SCALE_MIN, LOG2_SCALE_MAX]``, with a straight-through
    gradient to ``l``; always an exact power of two. (The quantizers themselves use
    :func:`pot_quantize`, whose gradient is LSQ's.)"""
    return torch.exp2(F.round_ste(F.bound_log2_scale(log2_scale)))


def pot_quantize(quantizer: Quantizer, x: torch.Tensor, log2_scale: torch.Tensor,
                 values_per_scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q_eps(x * 2^-e), 2^e)`` with ``e = round(l)`` bounded: the codes at the current slope and
    the (detached) power of two they are worth; ``l`` receives the LSQ/TQT gradient."""
    e = F.pot_exponent(log2_scale)
    z = x * torch.exp2(-e).to(x.dtype)
    codes, hard = quantizer.relaxed_and_hard(z)
    lo, hi = quantizer.clip_range
    if log2_scale.requires_grad and torch.is_grad_enabled():
        grad_scale = F.lsq_grad_scale(values_per_scale, quantizer.levels())
        codes = F.scale_gradient(codes, log2_scale, z, hard, quantizer.eps_tensor, lo, hi, grad_scale)
    return codes, torch.exp2(e).to(x.dtype)


class WeightQuantizer(nn.Module):
    """Quantizes a layer's weight in real units: a scale policy around a :class:`Quantizer`."""

    def __init__(self, quantizer: Quantizer, weight: torch.Tensor, policy: str = "pretrained_std",
                 clip_sigma: float = 3.0, keep_mean: bool = False, frozen: bool = False):
        super().__init__()
        self.quantizer, self.policy = quantizer, policy
        self.clip_sigma, self.keep_mean = float(clip_sigma), bool(keep_mean)
        shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
        if policy == "pretrained_std":
            self.register_buffer("sigma_hat", torch.ones(shape))
        elif policy == "learned_pot":
            self.log2_scale = nn.Parameter(torch.zeros(shape), requires_grad=not frozen)
        else:
            raise ConfigError("weight_scale", policy, f"one of {WEIGHT_POLICIES}")
        self.reset(weight)

    @torch.no_grad()
    def reset(self, weight: torch.Tensor) -> None:
        """Take the fixed statistics (or the initial learned scale) from ``weight``."""
        if self.policy == "pretrained_std":
            self.sigma_hat.copy_(channel_stats(weight)[1])
        else:
            flat = weight.reshape(weight.shape[0], -1)
            self.log2_scale.copy_(mse_pot_exponent(flat, self.quantizer).reshape(self.log2_scale.shape))

    def decompose(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z, scale, offset)`` with ``forward(w) = quantizer(z) * scale + offset`` (no gradient to a
        learned scale here: :meth:`forward` attaches it)."""
        if self.policy == "pretrained_std":
            mu, sigma = channel_stats(w.detach())
            z = (w - mu) * (1.0 / (self.clip_sigma * sigma))
            offset = mu if self.keep_mean else torch.zeros_like(mu)
            return z, self.clip_sigma * self.sigma_hat, offset
        e = F.pot_exponent(self.log2_scale)
        s = torch.exp2(e).to(w.dtype)
        return w * torch.exp2(-e).to(w.dtype), s, torch.zeros_like(s)

    def forward(self, w: torch.Tensor, out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """The quantized weight, times ``out_scale`` when given (a layer folds its input scale here)."""
        if self.policy == "learned_pot":
            codes, scale = pot_quantize(self.quantizer, w, self.log2_scale, w[0].numel())
            return codes * (scale if out_scale is None else scale * out_scale)
        z, scale, offset = self.decompose(w)
        if out_scale is not None:
            scale, offset = scale * out_scale, offset * out_scale
        out = self.quantizer(z) * scale
        return out + offset if self.keep_mean else out

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, clip_sigma={self.clip_sigma:g}, keep_mean={self.keep_mean}"


class ActivationQuantizer(nn.Module):
    """Quantizes a layer's input in real units; ``channel_dim`` is 1 for Conv, -1 for Linear.

    ``quantizer=None`` (``standardize`` only): the input is standardized and stays float."""

    def __init__(self, quantizer: Quantizer | None, num_channels: int, policy: str = "standardize",
                 clip_sigma: float = 3.0, channel_dim: int = 1):
        super().__init__()
        if quantizer is None and policy != "standardize":
            raise ConfigError("act_scale", policy, "'standardize' for a float (unquantized) input")
        self.quantizer, self.policy = quantizer, policy
        self.clip_sigma, self.channel_dim = float(clip_sigma), channel_dim
        if policy == "standardize":
            self.norm = nn.BatchNorm1d(num_channels, affine=False)
        elif policy == "learned_pot":
            self.log2_scale = nn.Parameter(torch.zeros(()))
            self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        else:
            raise ConfigError("act_scale", policy, f"one of {ACT_POLICIES}")

    def _standardize(self, x: torch.Tensor, gain: float) -> torch.Tensor:
        """``self.norm(x) * gain``, with the gain folded into the normalization (one pass)."""
        norm = self.norm
        # BatchNorm over (N, C, L): move channels to dim 1 and flatten the rest into L.
        moved = x.movedim(self.channel_dim, 1)
        flat = moved.reshape(moved.shape[0], moved.shape[1], -1)
        momentum = norm.momentum
        # The norm's own mode (it follows this module's, except while reestimate_batchnorm runs).
        if norm.training and norm.track_running_stats:
            norm.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative average (BatchNorm re-estimation)
                momentum = 1.0 / float(norm.num_batches_tracked)
        weight = torch.full((flat.shape[1],), gain, dtype=x.dtype, device=x.device)
        out = nn.functional.batch_norm(flat, norm.running_mean, norm.running_var, weight, None,
                                       norm.training or norm.running_mean is None, momentum or 0.0, norm.eps)
        return out.reshape(moved.shape).movedim(1, self.channel_dim)

    def code_scale(self) -> torch.Tensor:
        """The scalar its codes are worth in the deployed (hard) model, as ``quantize`` returns it."""
        if self.policy == "learned_pot":
            return pot_scale(self.log2_scale).detach()
        return torch.tensor(self.clip_sigma)

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, scale)`` with ``forward(x) = quantizer(z) * scale``."""
        if self.policy == "standardize":
            k = torch.tensor(self.clip_sigma, dtype=x.dtype, device=x.device)
            return self._standardize(x, 1.0 / self.clip_sigma), k
        e = F.pot_exponent(self.log2_scale)
        return x * torch.exp2(-e).to(x.dtype), torch.exp2(e).to(x.dtype)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(quantizer(z), scale)``: codes at the current slope and the scalar they are worth.

        A layer multiplies its (small) weight by ``scale`` instead of the (large) activation.
        """
        if self.policy == "learned_pot":
            return pot_quantize(self.quantizer, x, self.log2_scale, x.numel())
        z, scale = self.decompose(x)
        return (z if self.quantizer is None else self.quantizer(z)), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self.quantize(x)
        return q * scale

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Normalization statistics of the ``standardize`` policy (per input channel)."""
        self.norm.running_mean.copy_(mean)
        self.norm.running_var.copy_(var)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set a learned power-of-two scale from a sample of inputs (no-op for ``standardize``)."""
        if self.policy == "learned_pot":
            sample = x.detach().reshape(1, -1)
            self.log2_scale.fill_(float(mse_pot_exponent(sample, self.quantizer)[0]))
            self.calibrated.fill_(True)

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, clip_sigma={self.clip_sigma:g}"
