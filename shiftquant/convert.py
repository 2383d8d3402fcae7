"""Model conversion: swap the layers a recipe selects for quantized ones, and work on the result."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .nn.layers import QuantConv2d, QuantMixin, quant_class_for
from .quant.quantizers import Quantizer, check_eps
from .quant.scales import ActivationQuantizer, WeightQuantizer
from .recipe import QuantRecipe, name_matches


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_layer(name: str, layer: nn.Module, recipe: QuantRecipe) -> QuantMixin:
    """The quantized twin of one layer, sharing its parameters."""
    cls = quant_class_for(layer)
    weight_core = recipe.weight_quantizer_core()
    weight_q = None if weight_core is None else WeightQuantizer(
        weight_core, layer.weight.detach(), recipe.weight_scale, recipe.clip_sigma,
        recipe.weight_keep_mean)
    act_core = recipe.act_quantizer_core(name)
    act_q = None
    if act_core is not None:
        is_conv = cls is QuantConv2d
        channels = layer.in_channels if is_conv else layer.in_features
        act_q = ActivationQuantizer(act_core, channels, recipe.act_scale, recipe.clip_sigma,
                                    channel_dim=1 if is_conv else -1)
    new = cls.from_float(layer, weight_q, act_q)
    return new.to(layer.weight.device).train(layer.training)


def quantize_model(model: nn.Module, recipe: QuantRecipe) -> nn.Module:
    """Swap, in place, exactly the layers ``recipe`` selects; returns ``model``.

    Refuses a recipe that selects nothing, or whose ``keep_float`` patterns match no layer.
    """
    if not isinstance(recipe, QuantRecipe):
        raise ConfigError("recipe", type(recipe).__name__, "a shiftquant.QuantRecipe")
    if isinstance(model, QuantMixin) or any(isinstance(m, QuantMixin) for m in model.modules()):
        raise ConfigError("model", type(model).__name__, "a model that is not quantized yet")
    named = list(model.named_modules())
    for pattern in recipe.keep_float:
        if not any(name_matches(name, pattern) for name, _ in named if name):
            raise ConfigError("keep_float", pattern, "patterns that match a layer name of the model")
    chosen = [(name, m) for name, m in named if name and quant_class_for(m) and recipe.selects(name, m)]
    if not chosen:
        raise ConfigError("layers", recipe.layers,
                          f"patterns that select at least one {recipe.layer_types} layer of "
                          f"{type(model).__name__}")
    for name, layer in chosen:
        _set_submodule(model, name, quantize_layer(name, layer, recipe))
    return model


def quantizers(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    """Every relaxed quantizer of the model, with its fully qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            yield name, module


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QuantMixin]]:
    for name, module in model.named_modules():
        if isinstance(module, QuantMixin):
            yield name, module


def set_slope(model: nn.Module, eps: float) -> int:
    """Set ``eps`` of every quantizer in ``model``; returns how many were set."""
    eps = check_eps(eps)
    count = 0
    for _, q in quantizers(model):
        q.eps = eps
        count += 1
    return count


def get_slope(model: nn.Module) -> float | None:
    """The common ``eps`` of the model's quantizers (``None`` without quantizers)."""
    values = {q.eps for _, q in quantizers(model)}
    if len(values) > 1:
        raise ConfigError("eps", sorted(values), "one eps shared by every quantizer")
    return values.pop() if values else None


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable) -> int:
    """Set learned activation scales from real inputs (run before training); returns the count.

    ``batches`` yields model inputs, or ``(input, target)`` pairs. The model runs in eval mode, at
    ``eps = 1`` so that each layer sees the float network's activations; slopes and mode are restored.
    """
    layers = [m for _, m in quantized_layers(model)
              if isinstance(m.input_quantizer, ActivationQuantizer) and m.input_quantizer.policy == "learned_pot"]
    if not layers:
        return 0
    samples: dict[int, list[torch.Tensor]] = {id(m): [] for m in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, args: samples[id(mod)].append(args[0].detach()))
             for m in layers]
    old_eps = {name: q.eps for name, q in quantizers(model)}
    was_training = model.training
    try:
        model.eval()
        set_slope(model, 1.0)
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        for name, q in quantizers(model):
            q.eps = old_eps[name]
        model.train(was_training)
    for m in layers:
        if samples[id(m)]:
            m.input_quantizer.calibrate(torch.cat([s.flatten() for s in samples[id(m)]]))
    return len(layers)


@dataclass
class LoadReport:
    """What :func:`load_float_weights` did: keys the float checkpoint lacked (quantizer state)."""

    added_keys: list[str]

    def __str__(self) -> str:
        return f"loaded float weights; {len(self.added_keys)} quantizer keys kept from conversion"


def load_float_weights(qmodel: nn.Module, state_dict: dict) -> LoadReport:
    """Load a float model's state_dict into a converted model.

    Every key of ``state_dict`` must exist in ``qmodel`` with the same shape; the keys ``qmodel``
    has beyond them must all belong to quantizers (they keep their conversion-time values and are
    reported). Weight statistics (``pretrained_std``) and learned weight scales are then re-taken
    from the loaded weights. Nothing is changed when the checkpoint does not fit.
    """
    own = qmodel.state_dict()
    unexpected = sorted(set(state_dict) - set(own))
    if unexpected:
        raise CheckpointError(f"float state_dict has keys the quantized model lacks: {unexpected[:8]}")
    shapes = [k for k in state_dict if tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise CheckpointError(f"shape mismatch for {k!r}: checkpoint {tuple(state_dict[k].shape)}, "
                              f"model {tuple(own[k].shape)} ({len(shapes)} keys differ)")
    added = sorted(set(own) - set(state_dict))
    not_quantizer = [k for k in added if "weight_quantizer." not in k and "input_quantizer." not in k]
    if not_quantizer:
        raise CheckpointError(f"float state_dict lacks model keys: {not_quantizer[:8]}")
    qmodel.load_state_dict(state_dict, strict=False)
    for _, layer in quantized_layers(qmodel):
        if isinstance(layer.weight_quantizer, WeightQuantizer):
            layer.weight_quantizer.reset(layer.weight.detach())
    return LoadReport(added)
