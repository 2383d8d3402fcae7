"""Modules kept float as op entries: one builder per module class, found along the class's MRO.

:data:`MODULES` maps a ``torch.nn`` class to the builder of its manifest entry (or entries: a
BatchNorm with its activation, timm's ``BatchNormAct2d``, is two). Quantized layers are the
exporter's own business (:meth:`~.graph.Exporter.shift_layer`).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ...errors import ExportError
from ...nn.layers import QuantActivation
from ...nn.integer_norm import FRACTION_BITS, QuantLayerNorm
from ...nn.residual import QuantBatchNorm2d, is_norm_act
from ...nn.shiftmax import ShiftSoftmax
from ...quant.scales import ActivationQuantizer
from .. import ops
from .calls import layer_norm

MODULES: dict[type, Callable] = {}
_BY_NAME: dict[str, Callable] = {}  # classes of optional packages, by name (timm's DropPath)


def _on(*classes):
    def register(builder):
        for c in classes:
            (_BY_NAME if isinstance(c, str) else MODULES)[c] = builder
        return builder
    return register


def entry(exporter, name: str, m: nn.Module) -> dict | list[dict]:
    """The entry of a module kept float, by the first class of its MRO that has a builder."""
    if is_norm_act(m):
        return _norm_act(exporter, name, m)
    builder = next((MODULES[c] for c in type(m).__mro__ if c in MODULES), None) or _BY_NAME.get(type(m).__name__)
    if builder is None:
        raise ExportError(f"{type(m).__name__} is not supported by the exporter")
    return builder(exporter, name, m)


def _norm_act(exporter, name: str, m: nn.Module) -> list[dict]:
    """timm's ``BatchNormAct2d``: the BatchNorm (``<node>_bn``), then the activation."""
    if not isinstance(m.drop, (nn.Identity, nn.Dropout)):
        raise ExportError(f"{name}: {type(m.drop).__name__} after the BatchNorm is not supported")
    act = entry(exporter, f"{name}.act", m.act)
    return [_batch_norm(exporter, name, m), *(act if isinstance(act, list) else [act])]


@_on(nn.BatchNorm1d, nn.BatchNorm2d)
def _batch_norm(exporter, name: str, m: nn.Module) -> dict:
    add = exporter.add
    out = {"op": "batch_norm", "eps": m.eps, "mean": add(f"{name}.mean", m.running_mean),
           "var": add(f"{name}.var", m.running_var), "weight": add(f"{name}.weight", m.weight) if m.affine else None,
           "bias": add(f"{name}.bias", m.bias) if m.affine else None}
    if isinstance(m, QuantBatchNorm2d):  # the residual grid: integers out
        out["output_quantizer"] = exporter.input_quantizer(f"{name}.out", m.output_quantizer)
    return out


@_on(QuantActivation)
def _grid_activation(exporter, name: str, m: QuantActivation) -> list[dict]:
    """An activation on the grid: its input quantizer (a ``quantize`` node), then the activation
    with its output quantizer (integers out; a table on integers in)."""
    act = entry(exporter, f"{name}.act", m.act)
    if not isinstance(act, dict) or not ops.get(act["op"]).quantizes_output:
        raise ExportError(f"{name}: {type(m.act).__name__} cannot quantize its output")
    act["output_quantizer"] = exporter.input_quantizer(f"{name}.out", m.output_quantizer)
    if m.input_quantizer is None:
        return [act]
    return [{"op": "quantize", "output_quantizer": exporter.input_quantizer(f"{name}.in", m.input_quantizer)}, act]


@_on(ActivationQuantizer)
def _quantize(exporter, name: str, m: ActivationQuantizer) -> dict:
    """A quantizer on its own (``QuantAttention``'s q, k, v): the identity onto its grid."""
    if m.policy != "learned_pot":
        raise ExportError(f"{name}: a quantizer on its own needs a learned power-of-two scale")
    return {"op": "quantize", "output_quantizer": exporter.input_quantizer(name, m)}


@_on(ShiftSoftmax)
def _shiftmax(exporter, name: str, m: ShiftSoftmax) -> dict:
    return {"op": "shiftmax", "dim": m.dim, "scale": m.scale, "unit": m.unit(), "shift_bits": m.shift_bits}


@_on(nn.LayerNorm)
def _layer_norm(exporter, name: str, m: nn.LayerNorm) -> dict:
    return layer_norm(list(m.normalized_shape),
                      exporter.add(f"{name}.weight", m.weight) if m.weight is not None else None,
                      exporter.add(f"{name}.bias", m.bias) if m.bias is not None else None, m.eps)


@_on(QuantLayerNorm)
def _integer_layer_norm(exporter, name: str, m: QuantLayerNorm) -> dict:
    entry = _layer_norm(exporter, name, m)
    del entry["eps"]  # not used on integers
    return dict(entry, op="integer_layer_norm", fraction_bits=FRACTION_BITS)


@_on(nn.Softmax)
def _softmax(exporter, name: str, m: nn.Softmax) -> dict:
    if m.dim is None:
        raise ExportError("nn.Softmax needs dim")
    return {"op": "softmax", "dim": m.dim}


@_on(nn.Hardtanh)  # ReLU6 is one
def _hardtanh(exporter, name: str, m: nn.Hardtanh) -> dict:
    return {"op": "clamp", "min": float(m.min_val), "max": float(m.max_val)}


def _exactly(cls: type, builder: Callable) -> Callable:
    """A builder for ``cls`` itself, not its subclasses (whose forward may differ)."""
    def build(exporter, name: str, m: nn.Module):
        if type(m) is not cls:
            raise ExportError(f"{type(m).__name__} is not supported by the exporter")
        return builder(exporter, name, m)
    return build


def _simple(op: str) -> Callable:
    return lambda exporter, name, m: {"op": op}


for _cls, _op in {nn.ReLU: "relu", nn.Identity: "identity", nn.Dropout: "identity"}.items():
    _on(_cls)(_simple(_op))
for _cls, _op in {nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.SiLU: "silu",
                  nn.Sigmoid: "sigmoid"}.items():
    _on(_cls)(_exactly(_cls, _simple(_op)))
_on(nn.GELU)(_exactly(nn.GELU, lambda exporter, name, m: {"op": "gelu", "approximate": m.approximate}))
_on("DropPath")(_simple("identity"))  # eval: identity


@_on(nn.MaxPool2d)
def _max_pool2d(exporter, name: str, m: nn.MaxPool2d) -> dict:
    return {"op": "max_pool2d", "kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
            "dilation": m.dilation, "ceil_mode": m.ceil_mode}


@_on(nn.AvgPool2d)
def _avg_pool2d(exporter, name: str, m: nn.AvgPool2d) -> dict:
    return {"op": "avg_pool2d", "kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
            "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad}


@_on(nn.AdaptiveAvgPool2d)
def _adaptive_avg_pool2d(exporter, name: str, m: nn.AdaptiveAvgPool2d) -> dict:
    return {"op": "adaptive_avg_pool2d", "output_size": m.output_size}


@_on(nn.Flatten)
def _flatten(exporter, name: str, m: nn.Flatten) -> dict:
    return {"op": "flatten", "start_dim": m.start_dim, "end_dim": m.end_dim}


def _conv2d(exporter, name: str, m: nn.Conv2d) -> dict:
    if m.padding_mode != "zeros":
        raise ExportError(f"{type(m).__name__} is not supported by the exporter")
    return {"op": "conv2d", "weight": exporter.add(f"{name}.weight", m.weight),
            "bias": exporter.add(f"{name}.bias", m.bias) if m.bias is not None else None,
            "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation), "groups": m.groups}


def _linear(exporter, name: str, m: nn.Linear) -> dict:
    return {"op": "linear", "weight": exporter.add(f"{name}.weight", m.weight),
            "bias": exporter.add(f"{name}.bias", m.bias) if m.bias is not None else None}


_on(nn.Conv2d)(_exactly(nn.Conv2d, _conv2d))
_on(nn.Linear)(_exactly(nn.Linear, _linear))
