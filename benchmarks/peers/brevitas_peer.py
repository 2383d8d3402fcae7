"""Brevitas as a peer in the accuracy harness: its own QAT layers on the same ResNet-20.

The layers ours quantizes (the 3x3 convolutions of the residual blocks) become Brevitas
``QuantConv2d`` layers with

* weights: ``bits``-bit narrow-range signed integers (``{-3, ..., 3}`` at 3 bits, ``{-1, 0, 1}`` at
  2 bits) with a per-output-channel power-of-two scale from the weight statistics
  (``Int8WeightPerTensorFixedPoint`` made per channel: Brevitas's fixed-point weight quantizer);
* inputs: ``bits``-bit unsigned integers (``{0, ..., 2^b - 1}``: every code) with a learned
  power-of-two scale (``Uint8ActPerTensorFixedPoint``; its scale is initialized from runtime
  statistics during the first training steps, Brevitas's default).

The stem, the 1x1 downsample convolutions, the classifier and the BatchNorms stay float, as in ours.
The model starts from the protocol's float artifact and is trained by the same ``train(cfg)``
pipeline (same data, subset, budget, optimizer and learning-rate schedule); for the pipeline it is a
float model (``quant=none``: Brevitas has no relaxation, it is straight-through from the first step,
and the pipeline's distillation needs one of our recipes), so its accuracy is ``fp_test_acc`` of a
model whose quantized layers are Brevitas's.

Brevitas is an optional benchmark dependency (``pip install -e ".[peers]"``); nothing in shiftquant
imports it.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import nn

# The model names this module registers with the model factory: brevitas_w{bits}a{bits}.
NAME = re.compile(r"brevitas_w(\d+)a(\d+)")
BLOCK_CONV = re.compile(r"layer\d+\.\d+\.conv\d+")


def available() -> bool:
    try:
        import brevitas  # noqa: F401
    except ImportError:
        return False
    return True


def _quantizers():
    from brevitas.quant import Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint

    class WeightPerChannelPot(Int8WeightPerTensorFixedPoint):
        """Signed narrow-range integers, one power-of-two scale per output channel."""
        scaling_per_output_channel = True

    return WeightPerChannelPot, Uint8ActPerTensorFixedPoint


def convert(model: nn.Module, weight_bits: int, act_bits: int) -> nn.Module:
    """Swap the residual blocks' 3x3 convolutions of ``model`` for Brevitas ``QuantConv2d`` layers
    (the float weights copied), in place; returns ``model``."""
    from brevitas.nn import QuantConv2d

    weight_quant, act_quant = _quantizers()
    for name, conv in list(model.named_modules()):
        if not (isinstance(conv, nn.Conv2d) and BLOCK_CONV.fullmatch(name) and conv.kernel_size == (3, 3)):
            continue
        q = QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                        weight_quant=weight_quant, weight_bit_width=weight_bits,
                        input_quant=act_quant, input_bit_width=act_bits, return_quant_tensor=False)
        q.weight.data.copy_(conv.weight.data)
        if conv.bias is not None:
            q.bias.data.copy_(conv.bias.data)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q)
    return model


def register(artifact: str | Path | None) -> None:
    """Make ``model.name=brevitas_wXaY`` buildable by the model factory in this process: a float
    ResNet-20 with the artifact's weights (when given), converted to Brevitas layers."""
    from shiftquant.models import factory

    if getattr(factory, "_brevitas_registered", None) == str(artifact):
        return
    for w, a in ((3, 3), (2, 2)):
        factory.LOCAL_MODELS[f"brevitas_w{w}a{a}"] = _builder(w, a, artifact)
    factory._brevitas_registered = str(artifact)


def _builder(weight_bits: int, act_bits: int, artifact):
    def build(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
        from shiftquant.models import read_state_dict, resnet20

        model = resnet20(num_classes=num_classes, in_chans=in_chans)
        if artifact is not None and Path(artifact).exists():
            model.load_state_dict(read_state_dict(str(artifact)))
        return convert(model, weight_bits, act_bits)
    return build


def model_bytes(model: nn.Module) -> dict:
    """Stored size: quantized weights at their bit width plus one float32 scale per channel; every
    other parameter float32."""
    from brevitas.nn import QuantConv2d

    total = float_bytes = 0.0
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        if not own:
            continue
        n = sum(p.numel() for p in own)
        float_bytes += 4 * n
        if isinstance(m, QuantConv2d):
            bits = int(m.quant_weight().bit_width)
            total += m.weight.numel() * bits / 8 + m.weight.shape[0] * 4 + (n - m.weight.numel()) * 4
        else:
            total += 4 * n
    return {"model_bytes": total, "float_bytes": float_bytes}


def overrides(weight_bits: int, act_bits: int) -> list[str]:
    """The Hydra overrides of a Brevitas row (added to the protocol's common ones)."""
    return [f"model.name=brevitas_w{weight_bits}a{act_bits}", "quant=none", "schedule=float"]
