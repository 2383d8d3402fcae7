"""The graph's sources: the ``input`` and ``constant`` tensors."""
from __future__ import annotations

import torch

from ..format.values import Fact
import numpy as np

from .schema import Field, OnnxMap, OpDef, register


def _input_shape(rt, node, args, batch):
    return torch.empty((batch, *node["shape"]), device="meta")


def _input_prove(rt, node, args, shape):
    px = node.get("pixels")
    return Fact(shape, "pixels", 0, int(px["scale"])) if px else Fact(shape)


def _constant_check(rt, node) -> None:
    if node.get("batch_dim") is not None:
        rt.fail(node, "a constant has no batch dimension")


register(
    OpDef("input", "the model input: integer pixels with `pixels`, else float32 values of the float model's input",
          (Field("shape", "sizes", "the input's shape without the batch"),
           Field("pixels", "pixels", "`{scale, mean, std}`: integer pixels 0..scale and their normalization",
                 optional=True)),
          inputs=0, check=lambda rt, node: rt.check_pixels(node, node.get("pixels")),
          run=lambda rt, node, args: rt.take_input(node), shape=_input_shape, prove=_input_prove, onnx=OnnxMap("(graph input), Cast", lambda b, node, args: b.op("Cast", b.input(), to=1)),
          float_reason=("the bundle takes float input",
                        "export with an input_spec (PixelInput) so it takes integer pixels")),
    OpDef("constant", "a tensor without a batch (a ViT's class token or position embedding)",
          (Field("value", "tensor", "the tensor"),), inputs=0,
          float=lambda node, args, tensor, batch: tensor(node["value"]), check=_constant_check, onnx=OnnxMap("(initializer)", lambda b, node, args: b.const(b.tensor(node["value"]).astype(np.float32)))),
)
