"""Layers kept float: ``conv2d`` and ``linear`` (the shift layers are in :mod:`.shift`)."""
from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F

from .schema import Field, OnnxMap, OpDef, register

GEOMETRY = (Field("stride", "ints", "steps", count=2, low=1), Field("padding", "ints", "zero padding", count=2),
            Field("dilation", "ints", "dilation", count=2, low=1), Field("groups", "ints", "groups", low=1))


def weight_macs(node: dict, shapes: dict, weight_shape) -> int:
    """Every output element reads one weight row: ``prod(output[1:]) x prod(weight[1:])`` at batch 1."""
    return math.prod(shapes[node["name"]][1:]) * math.prod(weight_shape[1:])


def _layer_check(rank: int):
    def check(rt, node) -> None:
        w = rt.tensor(node["weight"])
        if w.ndim != rank:
            rt.fail(node, "weight has the wrong rank")
        if node.get("bias") is not None:
            rt.tensor(node["bias"], (w.shape[0],))
    return check


def _bias(node, tensor):
    return None if node.get("bias") is None else tensor(node["bias"])


def onnx_conv(b, x: str, node: dict, weight: np.ndarray | str, bias: np.ndarray | None = None) -> str:
    """An ONNX ``Conv`` of ``x`` with ``weight`` (an array, or the graph value holding it) and the
    node's geometry (also the shift layers')."""
    ph, pw = node["padding"]
    inputs = [x, weight if isinstance(weight, str) else b.const(weight)] + ([] if bias is None else [b.const(bias)])
    return b.op("Conv", *inputs, strides=list(node["stride"]), pads=[ph, pw, ph, pw],
                dilations=list(node["dilation"]), group=int(node["groups"]))


def onnx_linear(b, x: str, weight: np.ndarray, bias: np.ndarray | None = None) -> str:
    """``x @ weight^T (+ bias)`` on the last dimension (also the shift layers')."""
    out = b.op("MatMul", x, b.const(np.asarray(weight).T))
    return out if bias is None else b.op("Add", out, b.const(bias))


def _onnx_bias(b, node: dict) -> np.ndarray | None:
    return None if node.get("bias") is None else b.tensor(node["bias"])


def _lower_conv(b, node, args):
    return onnx_conv(b, args[0], node, b.tensor(node["weight"]), _onnx_bias(b, node))


def _lower_linear(b, node, args):
    return onnx_linear(b, args[0], b.tensor(node["weight"]), _onnx_bias(b, node))


_KEPT_FLOAT = "select it in the recipe (layers / types / names) and remove it from keep_float"
_WEIGHTS = (Field("weight", "tensor", "float32 weights"), Field("bias", "tensor", "float32 bias, or null",
                                                                   optional=True))

register(
    OpDef("conv2d", "`F.conv2d` (a convolution kept float)", _WEIGHTS + GEOMETRY,
          float=lambda node, args, tensor, batch: F.conv2d(args[0], tensor(node["weight"]), _bias(node, tensor),
                                                           node["stride"], node["padding"], node["dilation"],
                                                           node["groups"]),
          check=_layer_check(4), onnx=OnnxMap("Conv", _lower_conv),
          float_reason=("a convolution kept float (keep_float, or not selected by the recipe)", _KEPT_FLOAT),
          macs=lambda node, shapes, tensors: ("float", weight_macs(node, shapes, tensors[node["weight"]].shape))),
    OpDef("linear", "`F.linear` (a linear layer kept float)", _WEIGHTS,
          float=lambda node, args, tensor, batch: F.linear(args[0], tensor(node["weight"]), _bias(node, tensor)),
          check=_layer_check(2), onnx=OnnxMap("MatMul, Add", _lower_linear),
          float_reason=("a linear layer kept float (keep_float, or not selected by the recipe)", _KEPT_FLOAT),
          macs=lambda node, shapes, tensors: ("float", weight_macs(node, shapes, tensors[node["weight"]].shape))),
)
