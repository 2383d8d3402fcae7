"""Normalization: ``batch_norm``, ``layer_norm``.

All run in float32 with PyTorch's kernels. A ``batch_norm`` with an ``output_quantizer`` (a
residual BatchNorm) quantizes its output onto the residual grid: integers out.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from ...errors import ExportError
from .quantizers import check_output_quantizer
from .schema import Field, OnnxMap, OpDef, register


def _tensor_or_none(tensor, node: dict, key: str):
    return None if node.get(key) is None else tensor(node[key])


def _batch_norm(node, args, tensor, batch):
    t = lambda k: _tensor_or_none(tensor, node, k)
    return F.batch_norm(args[0], t("mean"), t("var"), t("weight"), t("bias"), False, 0.0, node["eps"])


def _batch_norm_check(rt, node) -> None:
    mean = rt.tensor(node["mean"])
    if mean.ndim != 1:
        rt.fail(node, "mean must be 1-D")
    for k in ("var", "weight", "bias"):
        if node.get(k) is not None:
            rt.tensor(node[k], mean.shape)
    check_output_quantizer(rt, node)


def _layer_norm(node, args, tensor, batch):
    t = lambda k: _tensor_or_none(tensor, node, k)
    return F.layer_norm(args[0], node["normalized_shape"], t("weight"), t("bias"), node["eps"])


def _layer_norm_check(rt, node) -> None:
    for k in ("weight", "bias"):
        if node.get(k) is not None:
            rt.tensor(node[k], node["normalized_shape"])


def _onnx_affine(b, node: dict, shape) -> list[str]:
    """``weight`` and ``bias`` as constants (ones and zeros where null)."""
    return [b.const(np.ones(shape, np.float32) if node.get("weight") is None else b.tensor(node["weight"])),
            b.const(np.zeros(shape, np.float32) if node.get("bias") is None else b.tensor(node["bias"]))]


def _batch_norm_onnx(b, node, args):
    mean = b.tensor(node["mean"])
    if node.get("var") is None:
        raise ExportError(f"node {node['name']!r} (batch_norm): a BatchNorm in eval needs its running variance")
    var = b.tensor(node["var"])
    return b.op("BatchNormalization", args[0], *_onnx_affine(b, node, mean.shape), b.const(mean), b.const(var),
                epsilon=float(node["eps"]))


def _layer_norm_onnx(b, node, args):
    shape = node["normalized_shape"]
    return b.op("LayerNormalization", args[0], *_onnx_affine(b, node, shape), axis=-len(shape),
                epsilon=float(node["eps"]))


def _affine(what: str) -> tuple[Field, ...]:
    return (Field("weight", "tensor", f"{what} scale (gamma), or null", optional=True),
            Field("bias", "tensor", f"{what} shift (beta), or null", optional=True),
            Field("eps", "number", "added to the variance"))


register(
    OpDef("batch_norm", "`F.batch_norm` in eval; with `output_quantizer` (a residual grid) it outputs integers",
          (Field("mean", "tensor", "running mean (C,)"), Field("var", "tensor", "running variance (C,)", optional=True))
          + _affine("per-channel")
          + (Field("output_quantizer", "act_quantizer", "the residual grid its output is quantized onto",
                   optional=True),),
          float=_batch_norm, check=_batch_norm_check, onnx=OnnxMap("BatchNormalization", _batch_norm_onnx), quantizes_output=True,
          chain="fold"),
    OpDef("layer_norm", "`F.layer_norm`",
          (Field("normalized_shape", "sizes", "the trailing shape normalized"),) + _affine("elementwise"),
          float=_layer_norm, check=_layer_norm_check, onnx=OnnxMap("LayerNormalization", _layer_norm_onnx)),
)
