"""ONNX export of the hard (eps = 0) model as a standard graph that onnxruntime runs.

Each quantized layer becomes its input quantizer, written with comparisons against the level
boundaries (standard ONNX ops: Abs, comparisons, Where, additions), followed by a plain
convolution or matmul whose constant weights are the hard weights. The boundaries are those of
:mod:`shiftquant.quant.functional` (checked against it in the tests).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...convert import set_slope
from ...errors import ExportError
from ...nn.layers import QuantConv2d, QuantMixin
from ...nn.residual import QuantBatchNorm2d
from ...quant.quantizers import ShiftQuantizer
from ...quant.scales import ActivationQuantizer, pot_scale


def level_boundaries(quantizer) -> tuple[list[float], list[float]]:
    """``(magnitudes, thresholds)``: a magnitude ``a`` maps to ``magnitudes[i]`` where ``i`` counts
    the thresholds it reaches (``a > t`` for ceil, ``a >= t`` for nearest)."""
    mags = sorted({abs(v) for v in quantizer.levels().tolist() if v != 0})
    if quantizer.rounding == "ceil":
        thresholds = mags[:-1]
    elif isinstance(quantizer, ShiftQuantizer):
        sqrt2 = float(np.float32(math.sqrt(2.0)))
        thresholds = [m * sqrt2 for m in mags[:-1]]
    else:
        step = mags[0]
        thresholds = [m + step / 2 for m in mags[:-1]]
    return mags, thresholds


class ThresholdQuantizer(nn.Module):
    """The hard quantizer as comparisons: exportable to ONNX, equal to the functional one."""

    def __init__(self, quantizer):
        super().__init__()
        mags, thresholds = level_boundaries(quantizer)
        self.register_buffer("steps", torch.tensor([b - a for a, b in zip(mags, mags[1:])]))
        self.register_buffer("thresholds", torch.tensor(thresholds))
        self.smallest, self.zero, self.signed = mags[0], quantizer.zero, quantizer.signed
        self.inclusive = quantizer.rounding == "nearest"
        self.top = float(quantizer.levels().max())

    def forward(self, x):
        a = x.abs().unsqueeze(-1)
        reached = (a >= self.thresholds) if self.inclusive else (a > self.thresholds)
        mag = self.smallest + (reached.to(x.dtype) * self.steps).sum(-1)
        if self.zero:
            mag = torch.where(x.abs() < self.smallest / 2, torch.zeros_like(mag), mag)
        if self.signed:
            out = torch.where(x > 0, mag, -mag)
            return out.clamp(max=self.top)  # a two's complement grid has no +n/n
        return torch.where(x > 0, mag, torch.full_like(mag, 0.0 if self.zero else self.smallest))


class OnnxInput(nn.Module):
    """An input quantizer in ONNX-friendly form: scale (or standardize), thresholds."""

    def __init__(self, aq: ActivationQuantizer):
        super().__init__()
        self.quantizer = ThresholdQuantizer(aq.quantizer)
        self.policy, self.channel_dim = aq.policy, aq.channel_dim
        if aq.policy == "learned_pot":
            self.register_buffer("inv_scale", 1.0 / pot_scale(aq.log2_scale).detach())
        else:
            self.norm = copy.deepcopy(aq.norm)
            self.clip_sigma = aq.clip_sigma

    def forward(self, x):
        if self.policy == "learned_pot":
            return self.quantizer(x * self.inv_scale)
        # A non-negative dim: the ONNX exporter writes movedim(-1, 1) as Transpose(perm=[0, -1]),
        # which onnxruntime refuses; on (N, C) inputs the channel already is dim 1.
        dim = self.channel_dim % x.dim()
        moved = x if dim == 1 else x.movedim(dim, 1)
        z = nn.functional.batch_norm(moved, self.norm.running_mean, self.norm.running_var, None, None, False, 0.0,
                                     self.norm.eps) / self.clip_sigma
        return self.quantizer(z if dim == 1 else z.movedim(1, dim))


def _plain_layer(layer: QuantMixin) -> nn.Module:
    if layer.float_class not in (nn.Conv2d, nn.Linear):
        raise ExportError(f"{layer.float_class.__name__}: ONNX export knows plain Conv2d and Linear")
    aq = layer.input_quantizer
    scale = None
    if aq is not None:
        scale = aq.code_scale()
    if isinstance(layer, QuantConv2d):
        plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
    else:
        plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(layer.quantized_weight(scale))
        if layer.bias is not None:
            plain.bias.copy_(layer.quantized_bias(scale))
    return plain if aq is None else nn.Sequential(OnnxInput(aq), plain)


class OnnxOutput(nn.Module):
    """An output quantizer (the residual grid) in ONNX-friendly form: thresholds, then the scale."""

    def __init__(self, aq: ActivationQuantizer):
        super().__init__()
        self.quantize = OnnxInput(aq)
        self.register_buffer("scale", aq.code_scale())

    def forward(self, x):
        return self.quantize(x) * self.scale


def _plain_batchnorm(m: QuantBatchNorm2d) -> nn.Module:
    bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    bn.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("output_quantizer.")})
    return nn.Sequential(bn.eval(), OnnxOutput(m.output_quantizer))


def onnx_model(model: nn.Module) -> nn.Module:
    """A copy of the hard model with standard modules only (what :func:`export_onnx` writes)."""
    model = copy.deepcopy(model).eval()
    set_slope(model, 0.0)
    for name, m in list(model.named_modules()):
        if isinstance(m, (QuantMixin, QuantBatchNorm2d)):
            parent, _, child = name.rpartition(".")
            plain = _plain_layer(m) if isinstance(m, QuantMixin) else _plain_batchnorm(m)
            setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model


def export_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor, check: bool = True) -> float | None:
    """Write the hard model as ONNX; with ``check``, run it in onnxruntime and return the largest
    absolute difference from the PyTorch hard model on ``example_input``."""
    plain = onnx_model(model)
    try:
        torch.onnx.export(plain, (example_input,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}") from None
    if not check:
        return None
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": example_input.numpy()})[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime refuses the exported graph {path}: {type(exc).__name__}: {str(exc)[:400]} "
                          "(export_onnx(..., check=False) writes the file without this check; the shift bundle, "
                          "sq.export, does not depend on ONNX)") from None
    hard = copy.deepcopy(model).eval()
    set_slope(hard, 0.0)
    with torch.no_grad():
        ref = hard(example_input).numpy()
    return float(np.abs(got - ref).max())
