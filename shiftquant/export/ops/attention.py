"""Attention: ``softmax``, ``matmul`` (products of two activations) and fused ``attention``.

All float32 with PyTorch's kernels; ``matmul`` and ``attention`` multiply two activations, so
their multiply-accumulates count as float.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .schema import Field, OnnxMap, OpDef, onnx_op, positive, register


def _matmul_macs(node: dict, shapes: dict, tensors) -> tuple[str, int]:
    """Every output element sums over the first input's last dimension."""
    return "float", math.prod(shapes[node["name"]]) * int(shapes[node["inputs"][0]][-1])


def _attention_macs(node: dict, shapes: dict, tensors) -> tuple[str, int]:
    """``q k^T`` and ``softmax(.) v``."""
    q, k, v = (shapes[i] for i in node["inputs"])
    return "float", math.prod(q[:-1]) * int(k[-2]) * (int(q[-1]) + int(v[-1]))


def _attention_onnx(b, node, args):
    """``softmax(q k^T x scale) v``."""
    q, k, v = args
    rank, depth = b.rank(node["inputs"][1]), b.graph.facts[node["inputs"][0]].shape[-1]
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scale = node.get("scale") or 1.0 / math.sqrt(depth)
    scores = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, perm=perm)), b.const(scale))
    return b.op("MatMul", b.op("Softmax", scores, axis=-1), v)


register(
    OpDef("softmax", "`torch.softmax`", (Field("dim", "dim", "the dimension normalized"),),
          float=lambda node, args, tensor, batch: torch.softmax(args[0], node["dim"]), sign=positive,
          onnx=onnx_op("Softmax", lambda node: {"axis": node["dim"]})),
    OpDef("matmul", "`torch.matmul` of two activations (attention's `q @ k^T`, `attn @ v`)", inputs=2,
          float=lambda node, args, tensor, batch: torch.matmul(args[0], args[1]), onnx=onnx_op("MatMul"), macs=_matmul_macs),
    OpDef("attention", "`F.scaled_dot_product_attention` of q, k, v without a mask or dropout",
          (Field("scale", "number", "the logits' scale (null: PyTorch's, 1/sqrt(d))", low=1e-30, optional=True),),
          inputs=3, float=lambda node, args, tensor, batch: F.scaled_dot_product_attention(*args,
                                                                                           scale=node.get("scale")),
          onnx=OnnxMap("MatMul, Softmax, MatMul", _attention_onnx), macs=_attention_macs),
)
