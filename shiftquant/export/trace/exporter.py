"""Trace the hard (eps = 0) model into the bundle's op graph.

The model is traced with ``torch.fx`` (quantized layers are leaves). Each node becomes one manifest
entry: quantized Conv/Linear layers become ``shift_conv2d`` / ``shift_linear`` (bit-packed codes,
per-channel scales, the input quantizer, a proven accumulator bound); everything else is a float
op with its parameters (BatchNorm, ReLU, pooling, residual add, flatten, layers kept float).

The exporter reads the quantizers' own math (:mod:`shiftquant.quant.functional`) to produce the
codes, so the codes are those the training graph computes with.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ...convert import quantizers, set_slope
from ...errors import ExportError, ExportRefused
from ...nn.layers import QuantConv2d, QuantMixin
from ...quant.quantizers import ShiftQuantizer, UniformQuantizer
from ...quant.scales import ActivationQuantizer
from ..format.bundle import pack_codes
from ..format.ints import FLOAT, FLOAT32_EXACT, signed_type
from ..format.pixels import PixelInput
from ..graph.verify import non_negative_output
from ..ops.quantizers import input_unit
from ..passes.requant import fold, integerize
from ..reference.runtime import Runtime
from . import calls, modules
from .check import refusal, refused_message
from .tracer import trace



def _quantizer_spec(q) -> dict:
    if isinstance(q, ShiftQuantizer):
        kind, bits = "shift", q.shift_bits
    elif isinstance(q, UniformQuantizer):
        kind, bits = "uniform", q.bits
    else:  # pragma: no cover - every Quantizer is one of the two
        raise ExportError(f"unknown quantizer {type(q).__name__}")
    levels = q.levels()
    return {"kind": kind, "bits": bits, "rounding": q.rounding, "zero": q.zero, "signed": q.signed,
            "full_codes": bool(q.full_codes), "levels": levels.tolist(), "resolution": q.resolution,
            "code_bits": q.code_bits}


class Exporter:
    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval()
        set_slope(self.model, 0.0)  # the deployed model is the hard one
        self.tensors: dict[str, np.ndarray] = {}

    def add(self, name: str, value) -> str:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        self.tensors[name] = np.ascontiguousarray(arr)
        return name

    # ------------------------------------------------------------------ quantized layers
    def input_quantizer(self, name: str, aq: ActivationQuantizer) -> dict:
        spec = {"quantizer": _quantizer_spec(aq.quantizer), "policy": aq.policy, "channel_dim": aq.channel_dim}
        if aq.policy == "learned_pot":
            spec["log2_scale"] = int(torch.round(aq.log2_scale.detach()).item())
        else:
            spec["clip_sigma"] = aq.clip_sigma
            spec["norm_eps"] = aq.norm.eps
            spec["running_mean"] = self.add(f"{name}.in.mean", aq.norm.running_mean)
            spec["running_var"] = self.add(f"{name}.in.var", aq.norm.running_var)
        return spec

    def shift_layer(self, name: str, layer: QuantMixin, non_negative_input: bool = False) -> dict:
        wq, aq = layer.weight_quantizer, layer.input_quantizer
        if wq is None or not isinstance(wq.quantizer, ShiftQuantizer) or aq is None:
            raise ExportError(f"{name}: the runtime computes layers with shift weights and quantized inputs; "
                              "this one has " + ("no weight quantizer" if wq is None else
                                                 "no input quantizer" if aq is None else "uniform weights"))
        if layer.float_class not in (nn.Conv2d, nn.Linear) and _qualname(layer.float_class) not in _PLAIN_EQUIVALENTS \
                and _qualname(layer.float_class) not in _SAME_PADDING:
            raise ExportError(f"{name}: {layer.float_class.__name__} has a forward of its own; "
                              "the runtime knows plain Conv2d and Linear")
        w = layer.weight.detach()
        z, scale, offset = wq.decompose(w)
        hard = wq.quantizer.hard(z)
        levels = wq.quantizer.levels().to(hard.dtype)
        codes = torch.bucketize(hard.reshape(-1).contiguous(), levels.contiguous())
        if not torch.equal(levels[codes], hard.reshape(-1)):
            raise ExportError(f"{name}: a weight is not on its quantizer's levels")
        spec = _quantizer_spec(wq.quantizer)
        entry = {
            "op": "shift_conv2d" if isinstance(layer, QuantConv2d) else "shift_linear",
            "weight_shape": list(w.shape),
            "weight_quantizer": spec,
            "weight_codes": self.add(f"{name}.codes", pack_codes(codes.numpy(), spec["code_bits"])),
            "weight_scale": self.add(f"{name}.scale", scale.reshape(-1).float()),
            "weight_offset": self.add(f"{name}.offset", offset.reshape(-1).float()) if wq.keep_mean else None,
            "bias": self.add(f"{name}.bias", layer.quantized_bias(aq.code_scale())) if layer.bias is not None else None,
            "exact_bias": bool(layer.exact_bias),
            "input_quantizer": self.input_quantizer(name, aq),
        }
        if isinstance(layer, QuantConv2d):
            entry.update(stride=list(layer.stride), padding=list(layer.padding), dilation=list(layer.dilation),
                         groups=layer.groups)
            if layer.padding_mode != "zeros" or _qualname(layer.float_class) in _SAME_PADDING:
                entry["padding"] = [0, 0]  # a pad op before the layer pads (graph.conv_pad)
        entry.update(self.accumulator_bound(name, layer, hard, entry, non_negative_input))
        return entry

    def accumulator_bound(self, name: str, layer: QuantMixin, hard: torch.Tensor, entry: dict,
                          non_negative_input: bool) -> dict:
        """Worst case |accumulator| of each output channel over every possible input, in units of
        the accumulator grid. Inputs that the graph proves non-negative (after a ReLU) cannot
        make positive and negative weights add up, which halves the bound."""
        w_res = entry["weight_quantizer"]["resolution"]
        a_spec = entry["input_quantizer"]["quantizer"]
        res = a_spec["resolution"]
        hi = max(a_spec["levels"]) / res
        # With inputs >= 0 the lowest code is the one zero maps to (the negative side for a
        # signed zero-free quantizer), when the scaling keeps the sign: a standardizing input
        # quantizer subtracts a mean, and can make non-negative inputs negative.
        keeps_sign = non_negative_input and entry["input_quantizer"]["policy"] == "learned_pot"
        lo = (layer.input_quantizer.quantizer.hard(torch.zeros(1)).item() if keeps_sign
              else min(a_spec["levels"])) / res
        w_int = (hard.reshape(hard.shape[0], -1) / w_res).double()
        pos, neg = w_int.clamp(min=0).sum(1), (-w_int).clamp(min=0).sum(1)
        # Extremes of sum_k w_k a_k over a_k in [lo, hi].
        bound = torch.maximum((pos * hi - neg * lo).abs(), (pos * lo - neg * hi).abs())
        exact = layer.exact_bias and entry["input_quantizer"]["policy"] == "learned_pot"
        if exact and layer.bias is not None:
            scale = layer.input_quantizer.code_scale()
            grid = layer.accumulator_grid(scale).detach().double()
            bound = bound + (layer.quantized_bias(scale).detach().double() / grid).abs()
        worst = int(bound.max().item())
        if exact and worst >= FLOAT32_EXACT:  # PyTorch's float sums then equal the runtime's integer ones
            raise ExportError(f"{name}: worst-case accumulator {worst} reaches 2^24: exact float32 parity cannot be "
                              "guaranteed (use fewer shift bits or smaller inputs)")
        bits = worst.bit_length() + 1  # plus sign
        width = next(w for w in (8, 16, 32, 64) if bits <= w)
        dtype = signed_type(worst)
        if dtype is None:
            raise ExportError(f"{name}: worst-case accumulator {worst} does not fit int32")
        return {"accumulator_bound": worst, "accumulator_bits": width, "accumulator_dtype": dtype,
                "exact": bool(exact), "input_range": [round(lo), round(hi)]}

    def conv_pad(self, name: str, layer: QuantConv2d, input_shape) -> dict | None:
        """The pad op a convolution does before its kernel, when it is not symmetric zeros: its
        padding mode (reflect, replicate, circular), or timm's ``Conv2dSame`` (zeros, asymmetric,
        from the input size). The layer pads its quantized input; padding first and quantizing
        after is the same when the quantizer maps 0 to 0, or the mode only copies values."""
        if _qualname(layer.float_class) in _SAME_PADDING:
            pads = []
            for size, k, s, d in reversed(list(zip(input_shape[-2:], layer.kernel_size, layer.stride, layer.dilation))):
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            pad = {"op": "pad", "pads": pads, "mode": "constant", "value": 0.0}
        elif layer.padding_mode != "zeros":
            pad = {"op": "pad", "pads": [int(v) for v in layer._reversed_padding_repeated_twice],
                   "mode": layer.padding_mode, "value": 0.0}
        else:
            return None
        aq = layer.input_quantizer
        if pad["mode"] == "constant" and (aq.policy != "learned_pot" or aq.quantizer.hard(torch.zeros(1)).item() != 0):
            raise ExportError(f"{name}: pads its quantized input with zeros, and its input quantizer has no zero "
                              "level to pad with first; use an input quantizer with a zero level (the deploy preset)")
        return pad

    def convert(self, node: fx.Node, non_negative_input: bool) -> dict:
        """The manifest entry of a traced module call, function call or parameter read."""
        if node.op == "call_module":
            m = self.model.get_submodule(node.target)
            if isinstance(m, QuantConv2d):
                pad = self.conv_pad(node.target, m, self.traced.runs[0][node.args[0]].shape)
                layer = self.shift_layer(node.target, m, non_negative_input and pad is None)
                return layer if pad is None else [pad, layer]
            if isinstance(m, QuantMixin):
                return self.shift_layer(node.target, m, non_negative_input)
            if isinstance(m, ActivationQuantizer) and isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr":
                return self.quantized_constant(node, m)
            return modules.entry(self, node.target, m)
        if node.op == "get_attr":
            return {"op": "constant", "value": self.add(f"{node.target}", self.traced.runs[0][node])}
        return calls.entry(self, node)

    def quantized_constant(self, node: fx.Node, q: ActivationQuantizer) -> dict:
        """A parameter read through a quantizer (a ViT's class token, its position embedding): an
        integer constant on the quantizer's grid, folded here."""
        if q.policy != "learned_pot":
            raise ExportError(f"{node.target}: a quantized parameter needs a learned power-of-two scale")
        unit = input_unit(self.input_quantizer(node.target, q))
        value = self.traced.runs[0][node].detach().double().numpy() / unit
        ints = np.round(value)
        if not (ints == value).all() or np.abs(ints).max() >= FLOAT32_EXACT:
            raise ExportError(f"{node.target}: its quantized values are not integers on its grid below 2^24")
        return {"op": "constant", "value": self.add(str(node.target), ints.astype(np.int32)), "unit": unit}

    # ------------------------------------------------------------------ graph
    def build(self, example_input: torch.Tensor, pixels: PixelInput | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """``(manifest, tensors)`` of the bundle; with ``pixels`` the bundle takes integer pixels."""
        self.traced = tr = trace(self.model, example_input)
        graph = tr.graph
        nodes, outputs, refused = [], [], []
        non_negative: set[str] = set()  # nodes whose every value is >= 0
        aliases: dict[fx.Node, fx.Node] = {}  # a tuple of tensors (unbind) -> the tensor its items index
        for node in graph.nodes:
            if node in tr.static:
                continue
            params = calls.PARAMETER_ARGS.get(node.target, ()) if node.op == "call_function" else ()
            args = [a for i, arg in enumerate(node.args) if i not in params  # weights are stored, not inputs
                    for a in (arg if isinstance(arg, (list, tuple)) else [arg])]  # torch.cat's list
            inputs = [aliases.get(a, a).name for a in args if isinstance(a, fx.Node) and a not in tr.static]
            if node.op == "call_method" and node.target == "unbind" or node.target is torch.unbind:
                aliases[node] = node.args[0]
                continue
            if node.op == "placeholder":
                entry = {"op": "input", "shape": list(example_input.shape[1:])}
                if pixels is not None:
                    if len(pixels.mean) not in (1, entry["shape"][0]):
                        raise ExportError(f"PixelInput: {len(pixels.mean)} channels of mean/std for an input "
                                          f"of {entry['shape'][0]} channels")
                    entry["pixels"] = pixels.spec()
                batch_dim = 0
            elif node.op == "output":
                outputs = [a.name for a in (node.args[0] if isinstance(node.args[0], (tuple, list)) else [node.args[0]])]
                continue
            else:
                try:
                    entry = self.convert(node, bool(inputs) and inputs[0] in non_negative)
                    batch_dim = tr.batch_dim(node)
                except ExportError as exc:  # collected: every refused node is named at once
                    refused.append(refusal(self.model, node, exc))
                    continue
            entries = entry if isinstance(entry, list) else [entry]
            for k, entry in enumerate(entries):  # a module that is several ops: a chain, named after the node
                last = k == len(entries) - 1
                entry.update(name=node.name if last else f"{node.name}_{entry['op']}",
                             inputs=[] if entry["op"] == "constant" else inputs if k == 0 else [nodes[-1]["name"]],
                             module=str(node.target) if node.op == "call_module" else None,
                             dtype=FLOAT)  # integerize declares the integer ones
                if batch_dim != 0:  # not batch-first (attention's heads), or no batch (a constant)
                    entry["batch_dim"] = batch_dim
                shape = list(node.args[0].meta["tensor_meta"].shape[1:]) if entry["op"] in SUMMING else []
                if len(shape) == 3:  # an image: the ops that may sum it record its shape
                    entry["input_shape"] = shape
                if non_negative_output(entry, [i in non_negative for i in entry["inputs"]]):
                    non_negative.add(entry["name"])
                nodes.append(entry)
        if refused:
            raise ExportRefused(refused_message(type(self.model).__name__, refused), refused)
        read = {i for n in nodes for i in n["inputs"]} | set(outputs)
        nodes = [n for n in nodes if n["op"] != "constant" or n["name"] in read]  # parameters ops read whole
        shift_layers = [n for n in nodes if n["op"].startswith("shift_")]
        manifest = {
            "format": "shiftquant-bundle",
            "nodes": nodes,
            "outputs": outputs,
            "exact": all(n["exact"] for n in shift_layers) and bool(shift_layers),
            "eps": 0.0,
            "quantizers": sum(1 for _ in quantizers(self.model)),
        }
        manifest = json.loads(json.dumps(manifest))  # exactly what the file will hold (lists, not tuples)
        self.unfolded = copy.deepcopy(manifest), dict(self.tensors)  # for inspection and tests
        fold(manifest, self.tensors)
        integerize(manifest, self.tensors)
        manifest["float_ops"] = observed_float_ops(manifest, self.tensors)
        manifest["integer_only"] = not manifest["float_ops"]
        return manifest, self.tensors


SUMMING = ("adaptive_avg_pool2d", "avg_pool2d", "mean")  # ops with an integer sum form (their readers divide)
# Subclasses whose forward computes what their base's does (timm's Linear only adds a TorchScript path).
_PLAIN_EQUIVALENTS = {"timm.layers.linear.Linear", "timm.models.layers.linear.Linear"}
# timm's TensorFlow-style "same" convolution: pads from the input size, then a plain convolution.
_SAME_PADDING = {"timm.layers.conv2d_same.Conv2dSame", "timm.models.layers.conv2d_same.Conv2dSame"}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def observed_float_ops(manifest: dict, tensors: dict[str, np.ndarray]) -> list[str]:
    """The nodes in which the runtime computes in float, seen by running it once: which kernels a
    node runs depends on the graph, not on the input's values."""
    rt = Runtime(manifest, tensors, "export", strict=False)
    rt.execute(rt.example_input())
    return rt.observed_float_ops
