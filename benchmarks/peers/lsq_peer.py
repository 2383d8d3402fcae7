"""LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020) as a peer, and LSQ with
power-of-two step sizes.

On the layers every row quantizes (the residual blocks' 3x3 convolutions):

* weights: ``b``-bit narrow-range signed integers ``{-(2^(b-1) - 1), ..., 2^(b-1) - 1}`` (the levels
  of the uniform and Brevitas rows) times a learned step size per output channel;
* inputs: ``b``-bit unsigned integers ``{0, ..., 2^b - 1}`` times a learned per-tensor step size.

Step sizes are trained with LSQ's gradient: the straight-through estimate of ``round`` gives the
step size ``-v/s + round(v/s)`` inside the range and the clip level outside it, scaled by
``g = 1/sqrt(N Qp)`` (``N`` the weights per channel, or the input features per example). They
start at LSQ's ``2 mean|v| / sqrt(Qp)`` (weights from the float weights, inputs from the run's
calibration batches). With ``pot=True`` the forward uses ``2^round(log2 s)`` (straight-through), so
every step size is a power of two while ``s`` itself learns as in LSQ.

The pipeline trains it as a float model (``quant=none``): straight-through from the first step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import block_convs, replace, model_bytes as stored_bytes


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """``x`` in the forward, ``g`` times its gradient in the backward."""
    return (x - x * g).detach() + x * g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def lsq_quantize(v: torch.Tensor, s: torch.Tensor, low: int, high: int, g: float, pot: bool) -> torch.Tensor:
    """LSQ: ``round(clip(v / s, low, high)) * s`` with the step size's gradient scaled by ``g``."""
    s = grad_scale(s, g)
    if pot:
        s = torch.exp2(round_ste(torch.log2(s.clamp_min(1e-12))))
    return round_ste(torch.clamp(v / s, low, high)) * s


class LSQConv2d(nn.Conv2d):
    """A Conv2d whose weight and (optionally) input are LSQ-quantized; the conv itself is PyTorch's."""

    def __init__(self, conv: nn.Conv2d, weight_bits: int, act_bits: int | None, pot: bool):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.w_high = 2 ** (weight_bits - 1) - 1
        self.a_high = None if act_bits is None else 2 ** act_bits - 1
        self.pot = pot
        self.quantizing = True  # False only while calibrating: the float conv
        mean_abs = self.weight.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
        self.weight_step = nn.Parameter(2 * mean_abs.clamp_min(1e-8) / math.sqrt(self.w_high))
        if self.a_high is not None:
            self.input_step = nn.Parameter(torch.ones(()))

    @torch.no_grad()
    def calibrate(self, inputs: list[torch.Tensor]) -> None:
        """LSQ's initial input step size from a sample of this layer's inputs."""
        if self.a_high is not None:
            mean_abs = torch.cat([x.abs().flatten() for x in inputs]).mean()
            self.input_step.fill_(float(2 * mean_abs.clamp_min(1e-8) / math.sqrt(self.a_high)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantizing:
            return self._conv_forward(x, self.weight, self.bias)
        w = lsq_quantize(self.weight, self.weight_step, -self.w_high, self.w_high,
                         1.0 / math.sqrt(self.weight[0].numel() * self.w_high), self.pot)
        if self.a_high is not None:
            x = lsq_quantize(x, self.input_step, 0, self.a_high, 1.0 / math.sqrt(x[0].numel() * self.a_high), self.pot)
        return self._conv_forward(x, w, self.bias)


def convert(model: nn.Module, weight_bits: int, act_bits: int | None, calibration: list | None,
            pot: bool = False) -> nn.Module:
    """Swap the block convolutions for :class:`LSQConv2d`, initialize the input step sizes on
    ``calibration`` (a list of input batches), in place; returns ``model``."""
    layers = []
    for name, conv in block_convs(model):
        layer = LSQConv2d(conv, weight_bits, act_bits, pot)
        replace(model, name, layer)
        layers.append(layer)
    if calibration and act_bits is not None:
        seen: dict[LSQConv2d, list] = {layer: [] for layer in layers}
        hooks = [layer.register_forward_pre_hook(lambda m, args: seen[m].append(args[0].detach()))
                 for layer in layers]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for layer in layers:  # the float model's activations, as ours calibrates on
                layer.quantizing = False
            for x in calibration:
                model(x)
            for layer in layers:
                layer.quantizing = True
        model.train(was_training)
        for h in hooks:
            h.remove()
        for layer in layers:
            layer.calibrate(seen[layer])
    return model


def convert_pot(model, weight_bits, act_bits, calibration):
    return convert(model, weight_bits, act_bits, calibration, pot=True)


def model_bytes(model: nn.Module) -> dict:
    """Stored size: quantized weights at their bit width, the step sizes (parameters) and every other
    parameter float32."""
    return stored_bytes(model, lambda m: (int(math.log2(m.w_high + 1)) + 1, 0) if isinstance(m, LSQConv2d) else None)
