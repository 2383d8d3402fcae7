"""Brevitas as a peer in the accuracy harness: its own QAT layers on the same ResNet-20.

The layers ours quantizes (the 3x3 convolutions of the residual blocks) become Brevitas
``QuantConv2d`` layers with

* weights: ``bits``-bit narrow-range signed integers (``{-3, ..., 3}`` at 3 bits, ``{-1, 0, 1}`` at
  2 bits) with a per-output-channel power-of-two scale from the weight statistics
  (``Int8WeightPerTensorFixedPoint`` made per channel: Brevitas's fixed-point weight quantizer);
* inputs: ``bits``-bit unsigned integers (``{0, ..., 2^b - 1}``: every code) with a learned
  power-of-two scale (``Uint8ActPerTensorFixedPoint``; its scale is initialized from runtime
  statistics during the first training steps, Brevitas's default).

That is protocol v2's setup. Protocol v3 (``mse=True``) uses Brevitas's MSE-based fixed-point
quantizers instead (``Int8WeightPerChannelFixedPointMSE``, ``Uint8ActPerTensorFixedPointMSE``: the
power-of-two scale that minimizes the quantization error, not the max-based one, which zeroed 96 %
of the weights at 2 bits), calibrated with Brevitas's ``calibration_mode`` on the run's calibration
batches; whether BatchNorm re-estimation helps it is decided on validation.

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

from torch import nn

from . import block_convs, register, replace, model_bytes as stored_bytes


def available() -> bool:
    try:
        import brevitas  # noqa: F401
    except ImportError:
        return False
    return True


def _quantizers(mse: bool):
    """Protocol v2's defaults (max-based weight scales, runtime-statistics input scales), or
    Brevitas's MSE-based fixed-point quantizers (protocol v3)."""
    if mse:
        from brevitas.quant import Int8WeightPerChannelFixedPointMSE, Uint8ActPerTensorFixedPointMSE
        return Int8WeightPerChannelFixedPointMSE, Uint8ActPerTensorFixedPointMSE
    from brevitas.quant import Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint

    class WeightPerChannelPot(Int8WeightPerTensorFixedPoint):
        """Signed narrow-range integers, one power-of-two scale per output channel."""
        scaling_per_output_channel = True

    return WeightPerChannelPot, Uint8ActPerTensorFixedPoint


def convert(model: nn.Module, weight_bits: int, act_bits: int | None, calibration: list | None = None,
            mse: bool = False) -> nn.Module:
    """Swap the residual blocks' 3x3 convolutions of ``model`` for Brevitas ``QuantConv2d`` layers
    (the float weights copied), in place; with ``calibration`` (input batches), run Brevitas's
    calibration mode on them (input scales from their statistics). Returns ``model``."""
    import torch
    from brevitas.nn import QuantConv2d

    weight_quant, act_quant = _quantizers(mse)
    for name, conv in block_convs(model):
        q = QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                        weight_quant=weight_quant, weight_bit_width=weight_bits,
                        input_quant=act_quant if act_bits is not None else None,
                        input_bit_width=act_bits, return_quant_tensor=False)
        with torch.no_grad():
            q.weight.copy_(conv.weight)
            if conv.bias is not None:
                q.bias.copy_(conv.bias)
        replace(model, name, q)
    if calibration and act_bits is not None:
        from brevitas.graph.calibrate import calibration_mode

        was_training = model.training
        model.eval()
        with torch.no_grad(), calibration_mode(model):
            for x in calibration:
                model(x)
        model.train(was_training)
    return model


def convert_mse(model, weight_bits, act_bits, calibration):
    return convert(model, weight_bits, act_bits, calibration, mse=True)


def register_v2(artifact) -> None:
    """Protocol v2's rows: ``brevitas_w{b}a{b}``, default quantizers, no calibration."""
    for bits in (3, 2):
        register("brevitas", convert, bits, bits, artifact, None)


def model_bytes(model: nn.Module) -> dict:
    """Stored size: quantized weights at their bit width plus one float32 scale per channel; every
    other parameter float32."""
    from brevitas.nn import QuantConv2d

    return stored_bytes(model, lambda m: (int(m.quant_weight().bit_width), 4 * m.weight.shape[0])
                        if isinstance(m, QuantConv2d) else None)


def overrides(weight_bits: int, act_bits: int) -> list[str]:
    """The Hydra overrides of a Brevitas row (added to the protocol's common ones)."""
    return [f"model.name=brevitas_w{weight_bits}a{act_bits}", "quant=none", "schedule=float"]
