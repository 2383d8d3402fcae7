"""Attention: ``softmax``, ``matmul`` (products of two activations) and fused ``attention``.

All float32 with PyTorch's kernels; ``matmul`` and ``attention`` multiply two activations, so
their multiply-accumulates count as float.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .schema import Field, OpDef, positive, register


def _matmul_macs(node: dict, shapes: dict, tensors) -> tuple[str, int]:
    """Every output element sums over the first input's last dimension."""
    return "float", math.prod(shapes[node["name"]]) * int(shapes[node["inputs"][0]][-1])


def _attention_macs(node: dict, shapes: dict, tensors) -> tuple[str, int]:
    """``q k^T`` and ``softmax(.) v``."""
    q, k, v = (shapes[i] for i in node["inputs"])
    return "float", math.prod(q[:-1]) * int(k[-2]) * (int(q[-1]) + int(v[-1]))


register(
    OpDef("softmax", "`torch.softmax`", (Field("dim", "dim", "the dimension normalized"),),
          float=lambda node, args, tensor, batch: torch.softmax(args[0], node["dim"]), sign=positive, onnx="Softmax"),
    OpDef("matmul", "`torch.matmul` of two activations (attention's `q @ k^T`, `attn @ v`)", inputs=2,
          float=lambda node, args, tensor, batch: torch.matmul(args[0], args[1]), onnx="MatMul", macs=_matmul_macs),
    OpDef("attention", "`F.scaled_dot_product_attention` of q, k, v without a mask or dropout",
          (Field("scale", "number", "the logits' scale (null: PyTorch's, 1/sqrt(d))", low=1e-30, optional=True),),
          inputs=3, float=lambda node, args, tensor, batch: F.scaled_dot_product_attention(*args,
                                                                                           scale=node.get("scale")),
          onnx="MatMul, Softmax, MatMul", macs=_attention_macs),
)
