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
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..convert import quantizers, set_slope
from ..errors import ExportError, ExportRefused
from ..nn.layers import QuantConv2d, QuantMixin
from ..nn.residual import ADDS, QuantBatchNorm2d
from ..quant.quantizers import ShiftQuantizer, UniformQuantizer
from ..quant.scales import ActivationQuantizer, pot_scale
from .bundle import pack_codes
from .check import refusal, refused_message
from .ints import FLOAT, signed_type
from .pixels import PixelInput
from .requant import fold, integerize
from .runtime import Runtime, pair
from .trace import Traced, is_norm_act, trace
from .verify import non_negative_output

# float32 represents every integer below 2^24 exactly: an accumulator bounded by it makes the
# float computation of PyTorch and the integer one of the runtime agree bit for bit.
EXACT_ACCUMULATOR = 1 << 24


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
            "bias": self.add(f"{name}.bias", layer.quantized_bias(input_scale(aq))) if layer.bias is not None else None,
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
            scale = input_scale(layer.input_quantizer)
            grid = layer.accumulator_grid(scale).detach().double()
            bound = bound + (layer.quantized_bias(scale).detach().double() / grid).abs()
        worst = int(bound.max().item())
        if exact and worst >= EXACT_ACCUMULATOR:
            raise ExportError(f"{name}: worst-case accumulator {worst} reaches 2^24: exact float32 parity cannot be "
                              "guaranteed (use fewer shift bits or smaller inputs)")
        bits = worst.bit_length() + 1  # plus sign
        width = next(w for w in (8, 16, 32, 64) if bits <= w)
        dtype = signed_type(worst)
        if dtype is None:
            raise ExportError(f"{name}: worst-case accumulator {worst} does not fit int32")
        return {"accumulator_bound": worst, "accumulator_bits": width, "accumulator_dtype": dtype,
                "exact": bool(exact), "input_range": [round(lo), round(hi)]}

    # ------------------------------------------------------------------ float ops
    def float_module(self, name: str, m: nn.Module) -> dict | list[dict]:
        """The entry of a module kept float; a BatchNorm with its activation (timm's
        ``BatchNormAct2d``) becomes two, the BatchNorm (``<node>_bn``) then the activation."""
        if is_norm_act(m):
            if not isinstance(m.drop, (nn.Identity, nn.Dropout)):
                raise ExportError(f"{name}: {type(m.drop).__name__} after the BatchNorm is not supported")
            bn = nn.BatchNorm2d(m.num_features, m.eps, affine=m.affine)
            bn.load_state_dict({k: v for k, v in m.state_dict().items() if k in bn.state_dict()})
            return [self.float_module(name, bn), self.float_module(f"{name}.act", m.act)]
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            entry = {"op": "batch_norm", "eps": m.eps,
                     "mean": self.add(f"{name}.mean", m.running_mean), "var": self.add(f"{name}.var", m.running_var),
                     "weight": self.add(f"{name}.weight", m.weight) if m.affine else None,
                     "bias": self.add(f"{name}.bias", m.bias) if m.affine else None}
            if isinstance(m, QuantBatchNorm2d):  # the residual grid: integers out
                entry["output_quantizer"] = self.input_quantizer(f"{name}.out", m.output_quantizer)
            return entry
        if isinstance(m, nn.ReLU):
            return {"op": "relu"}
        if isinstance(m, nn.LayerNorm):
            return self.layer_norm(name, list(m.normalized_shape),
                                   self.add(f"{name}.weight", m.weight) if m.weight is not None else None,
                                   self.add(f"{name}.bias", m.bias) if m.bias is not None else None, m.eps)
        if isinstance(m, nn.Softmax):
            if m.dim is None:
                raise ExportError("nn.Softmax needs dim")
            return {"op": "softmax", "dim": m.dim}
        if isinstance(m, nn.Hardtanh):  # ReLU6 is one
            return {"op": "clamp", "min": float(m.min_val), "max": float(m.max_val)}
        if type(m) in _ACTIVATION_MODULES:
            entry = {"op": _ACTIVATION_MODULES[type(m)]}
            if isinstance(m, nn.GELU):
                entry["approximate"] = m.approximate
            return entry
        if isinstance(m, nn.MaxPool2d):
            return {"op": "max_pool2d", "kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                    "dilation": m.dilation, "ceil_mode": m.ceil_mode}
        if isinstance(m, nn.AvgPool2d):
            return {"op": "avg_pool2d", "kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                    "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad}
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return {"op": "adaptive_avg_pool2d", "output_size": m.output_size}
        if isinstance(m, nn.Flatten):
            return {"op": "flatten", "start_dim": m.start_dim, "end_dim": m.end_dim}
        if isinstance(m, (nn.Identity, nn.Dropout)) or type(m).__name__ == "DropPath":  # eval: identity
            return {"op": "identity"}
        if isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d and m.padding_mode == "zeros":
            return {"op": "conv2d", "weight": self.add(f"{name}.weight", m.weight),
                    "bias": self.add(f"{name}.bias", m.bias) if m.bias is not None else None,
                    "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation),
                    "groups": m.groups}
        if isinstance(m, nn.Linear) and type(m) is nn.Linear:
            return {"op": "linear", "weight": self.add(f"{name}.weight", m.weight),
                    "bias": self.add(f"{name}.bias", m.bias) if m.bias is not None else None}
        raise ExportError(f"{type(m).__name__} is not supported by the exporter")

    def function(self, node: fx.Node) -> dict:
        """A traced function or method call; its constant arguments (numbers, shapes the graph
        computed) become the entry's fields."""
        target, tr = node.target, self.traced

        def arg(i, key, default=None):
            a = node.args[i] if len(node.args) > i else node.kwargs.get(key, default)
            return tr.value(a) if isinstance(a, fx.Node) and a in tr.static else a

        tensors = [a for a in node.args if isinstance(a, fx.Node) and a not in tr.static]
        if target in _BINARY:
            return self.binary(node, _BINARY[target])
        if target in (torch.flatten, "flatten"):
            return {"op": "flatten", "start_dim": arg(1, "start_dim", 0), "end_dim": arg(2, "end_dim", -1)}
        if target in (torch.relu, F.relu, "relu"):
            return {"op": "relu"}
        if target in (F.relu6, "relu6"):
            return {"op": "clamp", "min": 0.0, "max": 6.0}
        if target in (F.hardtanh, "hardtanh"):
            return {"op": "clamp", "min": float(arg(1, "min_val", -1.0)), "max": float(arg(2, "max_val", 1.0))}
        if target in (torch.clamp, torch.clip, "clamp", "clip"):
            lo, hi = arg(1, "min"), arg(2, "max")
            if any(v is not None and not isinstance(v, (int, float)) for v in (lo, hi)):
                raise ExportError("clamp with tensor bounds is not supported (numbers only)")
            return {"op": "clamp", "min": None if lo is None else float(lo), "max": None if hi is None else float(hi)}
        if target in _ACTIVATION_FUNCTIONS:
            entry = {"op": _ACTIVATION_FUNCTIONS[target]}
            if entry["op"] == "gelu":
                entry["approximate"] = arg(1, "approximate", "none")
            return entry
        if target in (F.dropout, "dropout"):
            if arg(2, "training", True):
                raise ExportError("dropout in training mode (call it with training=self.training, or use nn.Dropout)")
            return {"op": "identity"}
        if target is F.pad:
            mode = arg(2, "mode", "constant")
            if mode not in ("constant", "reflect", "replicate", "circular"):
                raise ExportError(f"pad mode {mode!r}: allowed constant, reflect, replicate, circular")
            return {"op": "pad", "pads": [int(v) for v in arg(1, "pad")], "mode": mode,
                    "value": float(arg(3, "value", None) or 0.0)}
        if target in ("contiguous", "clone", torch.clone):
            return {"op": "identity"}
        if getattr(target, "__name__", None) == "maybe_add_mask" and arg(1, "attn_mask") is None:
            return {"op": "identity"}  # timm's attention without a mask
        if target is torch.cat:
            return {"op": "cat", "dim": arg(1, "dim", 0)}
        if target in (torch.mean, "mean"):
            dim = arg(1, "dim")
            if dim is None:
                raise ExportError("a mean over every dimension (batch included) is not supported; give dim")
            return {"op": "mean", "dim": [dim] if isinstance(dim, int) else list(dim), "keepdim": bool(arg(2, "keepdim", False))}
        if target is F.adaptive_avg_pool2d:
            size = arg(1, "output_size")
            return {"op": "adaptive_avg_pool2d", "output_size": list(size) if isinstance(size, (tuple, list)) else [size, size]}
        if target in (F.avg_pool2d, F.max_pool2d):
            kernel = pair(arg(1, "kernel_size"))
            stride = arg(2, "stride")
            stride = kernel if stride in (None, [], ()) else pair(stride)
            if target is F.max_pool2d:
                return {"op": "max_pool2d", "kernel_size": kernel, "stride": stride, "padding": pair(arg(3, "padding", 0)),
                        "dilation": pair(arg(4, "dilation", 1)), "ceil_mode": bool(arg(5, "ceil_mode", False))}
            if arg(6, "divisor_override") is not None:
                raise ExportError("avg_pool2d with divisor_override is not supported")
            return {"op": "avg_pool2d", "kernel_size": kernel, "stride": stride, "padding": pair(arg(3, "padding", 0)),
                    "ceil_mode": bool(arg(4, "ceil_mode", False)), "count_include_pad": bool(arg(5, "count_include_pad", True))}
        if target is F.linear:  # a float Linear traced through (timm's subclass), or a functional one
            return {"op": "linear", "weight": self.parameter(node, 1, "weight"), "bias": self.parameter(node, 2, "bias")}
        if target is F.conv2d:
            padding = arg(4, "padding", 0)
            if isinstance(padding, str):
                raise ExportError(f"conv2d with padding={padding!r} is not supported (give the padding in pixels)")
            return {"op": "conv2d", "weight": self.parameter(node, 1, "weight"), "bias": self.parameter(node, 2, "bias"),
                    "stride": pair(arg(3, "stride", 1)), "padding": pair(padding), "dilation": pair(arg(5, "dilation", 1)),
                    "groups": int(arg(6, "groups", 1))}
        if target is F.layer_norm:
            return self.layer_norm(node.name, list(arg(1, "normalized_shape")), self.parameter(node, 2, "weight"),
                                   self.parameter(node, 3, "bias"), float(arg(4, "eps", 1e-5)))
        if target in (F.softmax, torch.softmax, "softmax"):
            if node.kwargs.get("dtype") is not None or arg(1, "dim") is None:
                raise ExportError("softmax needs dim, and no dtype")
            return {"op": "softmax", "dim": int(arg(1, "dim"))}
        if target in (operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"):
            return {"op": "matmul"}
        if target is F.scaled_dot_product_attention:
            if arg(3, "attn_mask") is not None or arg(4, "dropout_p", 0.0) or arg(5, "is_causal", False) \
                    or arg(7, "enable_gqa", False):
                raise ExportError("scaled_dot_product_attention with a mask, dropout, is_causal or enable_gqa is "
                                  "not supported")
            scale = arg(6, "scale")
            return {"op": "attention", "scale": None if scale is None else float(scale)}
        if target in ("reshape", "view", torch.reshape):
            if self.is_flatten(node):  # x.view(x.size(0), -1): the integer flatten
                return {"op": "flatten", "start_dim": 1, "end_dim": -1}
            return {"op": "reshape", "shape": tr.shape(node)}
        if target in ("expand", "expand_as"):
            return {"op": "expand", "shape": tr.shape(node)}
        if target in ("permute", torch.permute, "transpose", torch.transpose, "t"):
            return {"op": "permute", "dims": _permutation(node, target, arg, tr.runs[0][tensors[0]].dim())}
        if target is operator.getitem:
            source = node.args[0]
            if source.op == "call_method" and source.target == "unbind" or source.target is torch.unbind:
                dim = source.args[1] if len(source.args) > 1 else source.kwargs.get("dim", 0)
                return {"op": "index", "index": [[None, None, None]] * dim + [int(node.args[1])]}
            if not isinstance(tr.runs[0][source], torch.Tensor):
                raise ExportError(f"indexing the tuple {source.target} returns is not supported (unbind only)")
            return {"op": "index", "index": _index_spec(arg(1, "index"), tr)}
        raise ExportError(f"{getattr(target, '__name__', target)} is not supported by the exporter")

    def binary(self, node: fx.Node, op: str) -> dict:
        """``a op b`` on two tensors, or a tensor and a number (``scalar``; ``reverse``: number first)."""
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
            raise ExportError(f"{op} with alpha or rounding_mode is not supported")
        tensor = lambda v: isinstance(v, fx.Node) and v not in self.traced.static
        if tensor(a) and tensor(b):
            return {"op": op}
        number = [self.traced.value(v) if isinstance(v, fx.Node) else v for v in (a, b) if not tensor(v)][0]
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ExportError(f"{op} with a {type(number).__name__} operand is not supported (tensors and numbers)")
        return {"op": op, "scalar": float(number), "reverse": not tensor(a)}

    def parameter(self, node: fx.Node, i: int, key: str) -> str | None:
        """A tensor argument read from the model (``get_attr``), stored in the bundle."""
        a = node.args[i] if len(node.args) > i else node.kwargs.get(key)
        if a is None:
            return None
        if not isinstance(a, fx.Node) or a.op != "get_attr":
            raise ExportError(f"{key} must be a parameter of the model")
        return self.add(f"{node.name}.{key}", self.traced.runs[0][a])

    def layer_norm(self, name: str, shape: list[int], weight: str | None, bias: str | None, eps: float) -> dict:
        return {"op": "layer_norm", "normalized_shape": [int(v) for v in shape], "weight": weight, "bias": bias,
                "eps": eps}

    def is_flatten(self, node: fx.Node) -> bool:
        """Whether a reshape of a batch-first tensor to ``(batch, -1)`` is a flatten from dim 1."""
        src = next(a for a in node.args if isinstance(a, fx.Node))
        return self.traced.batch_dim(src) == 0 and self.traced.batch_dim(node) == 0 \
            and self.traced.runs[0][node].dim() == 2

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
            return self.float_module(node.target, m)
        if node.op == "get_attr":
            return {"op": "constant", "value": self.add(f"{node.target}", self.traced.runs[0][node])}
        return self.function(node)

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
            params = _PARAMETER_ARGS.get(node.target, ()) if node.op == "call_function" else ()
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
                             inputs=inputs if k == 0 else [nodes[-1]["name"]],
                             module=str(node.target) if node.op == "call_module" else None,
                             dtype=FLOAT)  # integerize declares the integer ones
                if batch_dim != 0:  # not batch-first (attention's heads), or no batch (a constant)
                    entry["batch_dim"] = batch_dim
                if entry["op"] in ("adaptive_avg_pool2d", "avg_pool2d"):
                    entry["input_shape"] = list(node.args[0].meta["tensor_meta"].shape[1:])
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


# Subclasses whose forward computes what their base's does (timm's Linear only adds a TorchScript path).
_PLAIN_EQUIVALENTS = {"timm.layers.linear.Linear", "timm.models.layers.linear.Linear"}
# timm's TensorFlow-style "same" convolution: pads from the input size, then a plain convolution.
_SAME_PADDING = {"timm.layers.conv2d_same.Conv2dSame", "timm.models.layers.conv2d_same.Conv2dSame"}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# Positional arguments of functional layers that are the layer's parameters (read with get_attr).
_PARAMETER_ARGS = {F.linear: (1, 2), F.conv2d: (1, 2), F.layer_norm: (2, 3)}
# Elementwise arithmetic: ``a op b`` on tensors, or with a number.
_BINARY = {**{f: "add" for f in ADDS}, "add": "add", operator.mul: "mul", torch.mul: "mul", "mul": "mul",
           operator.sub: "sub", torch.sub: "sub", "sub": "sub", operator.truediv: "div", torch.div: "div", "div": "div"}


def _permutation(node: fx.Node, target, arg, rank: int) -> list[int]:
    """The dims of a permute, transpose or t as one permutation."""
    if target in ("permute", torch.permute):
        dims = [arg(i, "dims") for i in range(1, len(node.args))] if len(node.args) > 2 else arg(1, "dims")
        dims = list(dims)
    else:
        a, b = (0, 1) if target == "t" else (arg(1, "dim0"), arg(2, "dim1"))
        dims = list(range(rank))
        dims[a], dims[b] = dims[b], dims[a]
    return [int(d) % rank for d in dims]


def _index_spec(index, traced: Traced) -> list:
    """A tensor index as JSON: an integer, ``[start, stop, step]`` for a slice, null for a new axis,
    ``"..."`` for an ellipsis."""
    const = lambda v: traced.value(v) if isinstance(v, fx.Node) else v
    items = list(index) if isinstance(index, tuple) else [index]
    spec = []
    for item in items:
        item = const(item)
        if isinstance(item, slice):
            bounds = [const(v) for v in (item.start, item.stop, item.step)]
            if not all(v is None or isinstance(v, int) for v in bounds):
                raise ExportError("a slice with bounds other than integers is not supported")
            spec.append(bounds)
        elif item is None or item is Ellipsis:
            spec.append(None if item is None else "...")
        elif isinstance(item, int) and not isinstance(item, bool):
            spec.append(item)
        else:
            raise ExportError(f"indexing with {type(item).__name__} is not supported (integers and slices)")
    return spec
# Elementwise activations the runtime computes with PyTorch's kernel of the same name.
_ACTIVATION_MODULES = {nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.SiLU: "silu",
                       nn.Sigmoid: "sigmoid", nn.GELU: "gelu"}
_ACTIVATION_FUNCTIONS = {F.hardswish: "hardswish", "hardswish": "hardswish", F.hardsigmoid: "hardsigmoid",
                         "hardsigmoid": "hardsigmoid", F.silu: "silu", "silu": "silu", torch.sigmoid: "sigmoid",
                         F.sigmoid: "sigmoid", "sigmoid": "sigmoid", F.gelu: "gelu", "gelu": "gelu"}


def observed_float_ops(manifest: dict, tensors: dict[str, np.ndarray]) -> list[str]:
    """The nodes in which the runtime computes in float, seen by running it once: which kernels a
    node runs depends on the graph, not on the input's values."""
    rt = Runtime(manifest, tensors, "export", strict=False)
    rt.execute(rt.example_input())
    return rt.observed_float_ops


def input_scale(aq: ActivationQuantizer) -> torch.Tensor:
    """The scalar an input quantizer's codes are worth (as its ``quantize`` returns it)."""
    if aq.policy == "learned_pot":
        return pot_scale(aq.log2_scale).detach()
    return torch.tensor(aq.clip_sigma)
