"""Quantized layers: the original layer's forward with ``weight_quantizer`` / ``input_quantizer`` slots.

:class:`QuantConv2d` and :class:`QuantLinear` are static subclasses of ``nn.Conv2d`` / ``nn.Linear``.
:func:`QuantMixin.from_float` takes over an existing layer's attributes and parameters (no copy, no
re-initialization), so every argument of the original layer is kept and its parameters stay the
same objects. The class the layer came from is kept in ``float_class``: when that class has a
forward of its own (timm's ``Conv2dSame`` pads dynamically, for example) it is that forward that
runs, with the quantized weight in place of the float one.

:class:`QuantActivation` holds an activation between an input and an output quantizer (an
activation on the grid: :mod:`.grid_activation`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module

from ..quant.functional import round_ste


def take_over(cls: type, module: nn.Module) -> nn.Module:
    """A new ``cls`` (a static subclass of ``module``'s class) with ``module``'s attributes: own
    copies of the registries (parameters, buffers, hooks), so the float module is left as it was;
    the parameter objects themselves are shared (no copy, no re-initialization)."""
    new = cls.__new__(cls)
    new.__dict__.update({k: type(v)(v) if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    return new


class QuantMixin:
    """Shared behaviour of the quantized layers. Either quantizer slot may be ``None``."""

    weight_quantizer: nn.Module | None
    input_quantizer: nn.Module | None
    float_class: type
    exact_bias: bool = False  # deploy_exact: the bias is rounded onto the accumulator grid

    @classmethod
    def from_float(cls, layer: nn.Module, weight_quantizer=None, input_quantizer=None):
        new = take_over(cls, layer)
        new.float_class = type(layer)
        new.weight_quantizer = weight_quantizer
        new.input_quantizer = input_quantizer
        return new

    def quantized_weight(self, input_scale: torch.Tensor | None = None) -> torch.Tensor:
        """The weight the layer computes with, times ``input_scale`` when given."""
        if self.weight_quantizer is not None:
            return self.weight_quantizer(self.weight, input_scale)
        return self.weight if input_scale is None else self.weight * input_scale

    def accumulator_grid(self, input_scale: torch.Tensor) -> torch.Tensor:
        """Per output channel, the value of one unit of the integer accumulator (a power of two
        with learned power-of-two scales): weight scale x weight resolution x input scale x input
        resolution."""
        w_scale = self.weight_quantizer.decompose(self.weight)[1].reshape(-1)
        return (w_scale * self.weight_quantizer.quantizer.resolution
                * input_scale * self.input_quantizer.quantizer.resolution)

    def quantized_bias(self, input_scale: torch.Tensor | None) -> torch.Tensor | None:
        if self.bias is None or not self.exact_bias or input_scale is None:
            return self.bias
        grid = self.accumulator_grid(input_scale).detach()
        return round_ste(self.bias / grid) * grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_scale = None
        if self.input_quantizer is not None:
            # Codes times a scalar scale: the layer is linear in its input, so the scale is
            # applied to the weight, which is much smaller than the activation.
            x, input_scale = self.input_quantizer.quantize(x)
        w = self.quantized_weight(input_scale)
        b = self.quantized_bias(input_scale)
        if self.float_class.forward is type(self).plain_forward:
            return self._forward_with_weight(x, w, b)
        # A subclass with its own forward: run it with the quantized weight swapped in.
        params = {"weight": w} if b is None else {"weight": w, "bias": b}
        with _reparametrize_module(self, params):
            return self.float_class.forward(self, x)


class QuantConv2d(QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` (or a subclass of it) with quantized weight and input."""

    plain_forward = nn.Conv2d.forward

    def _forward_with_weight(self, x, w, b):
        return self._conv_forward(x, w, b)


class QuantLinear(QuantMixin, nn.Linear):
    """``nn.Linear`` (or a subclass of it) with quantized weight and input."""

    plain_forward = nn.Linear.forward

    def _forward_with_weight(self, x, w, b):
        return nn.functional.linear(x, w, b)


class QuantActivation(nn.Module):
    """``output_quantizer(act(input_quantizer(x)))``; ``input_quantizer`` may be None (a monotone
    activation, which folds into the thresholds of the layer before it)."""

    def __init__(self, act: nn.Module, output_quantizer: nn.Module, input_quantizer: nn.Module | None = None):
        super().__init__()
        self.act, self.output_quantizer, self.input_quantizer = act, output_quantizer, input_quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return self.output_quantizer(self.act(x))


QUANT_CLASSES: dict[type, type] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def quant_class_for(layer: nn.Module) -> type | None:
    """The quantized class that can take over ``layer``, or ``None``."""
    if isinstance(layer, QuantMixin):
        return None
    for base, quant in QUANT_CLASSES.items():
        if isinstance(layer, base):
            return quant
    return None
