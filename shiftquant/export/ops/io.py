"""The graph's sources: the ``input`` and ``constant`` tensors."""
from __future__ import annotations

import numpy as np
import torch

from ..format.ints import FLOAT32_EXACT
from ..format.values import Fact, Value
from .schema import CStep, Field, OnnxMap, OpDef, register


def _input_shape(rt, node, args, batch):
    return torch.empty((batch, *node["shape"]), device="meta")


def _input_prove(rt, node, args, shape):
    px = node.get("pixels")
    return Fact(shape, "pixels", 0, int(px["scale"])) if px else Fact(shape)


def _constant_check(rt, node) -> None:
    if node.get("batch_dim") is not None:
        rt.fail(node, "a constant has no batch dimension")
    if node.get("unit") is not None:
        value = rt.tensor(node["value"])
        if value.dtype != np.int32 or value.size and int(np.abs(value.astype(np.int64)).max()) >= FLOAT32_EXACT:
            rt.fail(node, "an integer constant holds int32 values of magnitude below 2^24")
        if np.frexp(node["unit"])[0] != 0.5:
            rt.fail(node, "an integer constant's unit must be a power of two")


def _constant_float(node, args, tensor, batch):
    value = tensor(node["value"])
    return value if node.get("unit") is None else (value.double() * node["unit"]).float()


def _constant_int(rt, node, args):
    return None if node.get("unit") is None else Value(rt.tensor(node["value"]), node["unit"])


def _constant_prove(rt, node, args, shape):
    if node.get("unit") is None:
        return None
    value = rt.tensor(node["value"]).astype(np.int64)
    return Fact(shape, "grid", int(value.min(initial=0)), int(value.max(initial=0)), node["unit"])


def _constant_onnx(b, node, args):
    value = b.tensor(node["value"])
    return b.const(value.astype(np.float32))  # integers as float32 values (exact below 2^24)


register(
    OpDef("input", "the model input: integer pixels with `pixels`, else float32 values of the float model's input",
          (Field("shape", "sizes", "the input's shape without the batch"),
           Field("pixels", "pixels", "`{scale, mean, std}`: integer pixels 0..scale and their normalization",
                 optional=True)),
          inputs=0, check=lambda rt, node: rt.check_pixels(node, node.get("pixels")),
          run=lambda rt, node, args: rt.take_input(node), shape=_input_shape, prove=_input_prove, onnx=OnnxMap("(graph input), Cast", lambda b, node, args: b.op("Cast", b.input(), to=1)),
          float_reason=("the bundle takes float input",
                        "export with an input_spec (PixelInput) so it takes integer pixels")),
    OpDef("constant", "a tensor without a batch (a ViT's class token or position embedding); with `unit`, "
          "int32 integers on that grid (a quantized parameter)",
          (Field("value", "tensor", "the tensor"),
           Field("unit", "number", "integer constant: what one integer is worth (a power of two)", low=1e-30,
                 optional=True)), inputs=0,
          float=_constant_float, check=_constant_check, integer=_constant_int, prove=_constant_prove,
          c=lambda node, args: CStep("constant") if node.get("unit") is not None else None, onnx=OnnxMap("(initializer)", _constant_onnx)),
)
