"""Layers kept float: ``conv2d`` and ``linear`` (the shift layers are in :mod:`.shift`)."""
from __future__ import annotations

import math

import torch.nn.functional as F

from .schema import Field, OpDef, register

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


_KEPT_FLOAT = "select it in the recipe (layers / types / names) and remove it from keep_float"
_WEIGHTS = (Field("weight", "tensor", "float32 weights"), Field("bias", "tensor", "float32 bias, or null",
                                                                   optional=True))

register(
    OpDef("conv2d", "`F.conv2d` (a convolution kept float)", _WEIGHTS + GEOMETRY,
          float=lambda node, args, tensor, batch: F.conv2d(args[0], tensor(node["weight"]), _bias(node, tensor),
                                                           node["stride"], node["padding"], node["dilation"],
                                                           node["groups"]),
          check=_layer_check(4), onnx="Conv",
          float_reason=("a convolution kept float (keep_float, or not selected by the recipe)", _KEPT_FLOAT),
          macs=lambda node, shapes, tensors: ("float", weight_macs(node, shapes, tensors[node["weight"]].shape))),
    OpDef("linear", "`F.linear` (a linear layer kept float)", _WEIGHTS,
          float=lambda node, args, tensor, batch: F.linear(args[0], tensor(node["weight"]), _bias(node, tensor)),
          check=_layer_check(2), onnx="Gemm",
          float_reason=("a linear layer kept float (keep_float, or not selected by the recipe)", _KEPT_FLOAT),
          macs=lambda node, shapes, tensors: ("float", weight_macs(node, shapes, tensors[node["weight"]].shape))),
)
