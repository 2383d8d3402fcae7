"""Model conversion: swap the layers a recipe selects for quantized ones, and work on the result."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .nn.attention import QuantAttention, attentions
from .nn.grid_activation import grid_activations, needs_input_quantizer
from .nn.integer_norm import QuantLayerNorm, integer_layer_norms
from .nn.layers import QuantActivation, QuantConv2d, QuantMixin, quant_class_for
from .nn.residual import QuantBatchNorm2d, residual_batchnorms
from .nn.vit_stream import has_token_embeddings, quantize_stream
from .quant.functional import LOG2_SCALE_MAX, LOG2_SCALE_MIN, pot_exponent
from .quant.quantizers import Quantizer, check_eps
from .quant.scales import ActivationQuantizer, WeightQuantizer
from .recipe import PRESETS, QuantRecipe, name_matches


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_layer(name: str, layer: nn.Module, recipe: QuantRecipe) -> QuantMixin:
    """The quantized twin of one layer, sharing its parameters (``recipe``'s overrides for ``name``
    applied)."""
    recipe = recipe.for_layer(name)
    cls = quant_class_for(layer)
    weight_core = recipe.weight_quantizer_core()
    weight_q = None if weight_core is None else WeightQuantizer(
        weight_core, layer.weight.detach(), recipe.weight_scale, recipe.clip_sigma,
        recipe.weight_keep_mean, recipe.weight_scale_frozen)
    act_core = recipe.act_quantizer_core(name)
    act_q = None
    if act_core is not None or recipe.standardizes_float_inputs:
        is_conv = cls is QuantConv2d
        channels = layer.in_channels if is_conv else layer.in_features
        act_q = ActivationQuantizer(act_core, channels, recipe.act_scale, recipe.clip_sigma,
                                    channel_dim=1 if is_conv else -1)
    new = cls.from_float(layer, weight_q, act_q)
    new.exact_bias = recipe.deploy_exact
    return new.to(layer.weight.device).train(layer.training)


def select_layers(model: nn.Module, recipe: QuantRecipe) -> list[tuple[str, nn.Module]]:
    """The layers ``recipe`` selects in ``model``, without changing it.

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
                          f"{type(model).__name__}{_presets_that_select(named)}")
    return chosen


def _presets_that_select(named: list[tuple[str, nn.Module]]) -> str:
    """A hint naming the presets whose layer selection finds layers in this model."""
    hits = []
    for preset in PRESETS:
        recipe = QuantRecipe.preset(preset)
        count = sum(1 for name, m in named if name and quant_class_for(m) and recipe.selects(name, m))
        if count:
            hits.append(f"quant={preset} ({count} layers)")
    return "; presets that select layers of this model: " + ", ".join(hits) if hits else ""


def quantize_model(model: nn.Module, recipe: QuantRecipe) -> nn.Module:
    """Swap, in place, exactly the layers ``recipe`` selects; returns ``model``.

    Refuses (changing nothing) a recipe that selects nothing, or whose ``keep_float`` patterns
    match no layer. With ``residual_bits``, the residual BatchNorms and the small-domain
    activations go onto the grid (:mod:`.nn.residual`, :mod:`.nn.grid_activation`), and so do a
    ViT's residual stream (:mod:`.nn.vit_stream`); LayerNorms compute on integers
    (:mod:`.nn.integer_norm`) and timm's attention too (:mod:`.nn.attention`).
    """
    selected = select_layers(model, recipe)
    if recipe.residual_bits is not None:
        for _, attn in attentions(model):
            QuantAttention.check(attn, recipe.gate_shift_bits)
    for name, layer in selected:
        _set_submodule(model, name, quantize_layer(name, layer, recipe))
    if recipe.residual_bits is not None:
        device = next(model.parameters()).device
        grid = lambda core: ActivationQuantizer(core, 1, "learned_pot").to(device)
        activations = grid_activations(model)
        for name in residual_batchnorms(model, frozenset(activations)):
            bn = model.get_submodule(name)
            q = grid(recipe.residual_quantizer_core())
            _set_submodule(model, name, QuantBatchNorm2d.from_float(bn, q).train(bn.training))
        for name, role in activations.items():
            act = model.get_submodule(name)
            out = recipe.gate_quantizer_core() if role == "gate" else recipe.residual_quantizer_core()
            inp = grid(recipe.residual_quantizer_core()) if needs_input_quantizer(act) else None
            _set_submodule(model, name, QuantActivation(act, grid(out), inp).train(act.training))
        if has_token_embeddings(model):
            quantize_stream(model, lambda: grid(recipe.residual_quantizer_core()))
        for name in integer_layer_norms(model):
            ln = model.get_submodule(name)
            _set_submodule(model, name, QuantLayerNorm.from_float(ln).train(ln.training))
        for name, attn in attentions(model):
            core = recipe.act_quantizer_core(f"{name}.qkv")
            if core is not None:
                quant = QuantAttention.from_float(attn, grid(core), recipe.gate_shift_bits)
                _set_submodule(model, name, quant.train(attn.training))
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
def bound_scales(model: nn.Module) -> int:
    """Project every learned log2 scale into ``[LOG2_SCALE_MIN, LOG2_SCALE_MAX]`` (in place);
    returns how many values were outside. The training loop calls it after each optimizer step."""
    moved = 0
    for m in model.modules():
        if isinstance(m, (WeightQuantizer, ActivationQuantizer)) and isinstance(getattr(m, "log2_scale", None), torch.Tensor):
            l = m.log2_scale
            outside = (l < LOG2_SCALE_MIN) | (l > LOG2_SCALE_MAX)
            if bool(outside.any()):
                moved += int(outside.sum())
                l.clamp_(LOG2_SCALE_MIN, LOG2_SCALE_MAX)
    return moved


def scale_exponents(model: nn.Module) -> dict[str, torch.Tensor]:
    """The power-of-two exponent ``round(l)`` of every learned scale, by parameter name (a copy)."""
    return {name: pot_exponent(p) for name, p in model.named_parameters() if name.endswith("log2_scale")}


def exponents_moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """``{"weight": [changed, total], "input": [changed, total]}``: how many power-of-two exponents
    of the weight and of the input quantizers differ between two :func:`scale_exponents`."""
    counts = {"weight": [0, 0], "input": [0, 0]}
    for name, e in before.items():
        kind = "weight" if "weight_quantizer" in name else "input"
        counts[kind][0] += int((after[name] != e).sum())
        counts[kind][1] += e.numel()
    return counts


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm with running statistics, the standardizing ones of ``standardize`` inputs too."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable) -> int:
    """Re-estimate every BatchNorm's running statistics at the model's current slope; returns the
    number of batches used.

    The statistics are reset and replaced by the plain average over ``batches`` (inputs, or
    ``(input, target)`` pairs) of the batch statistics, computed with no gradient; everything but
    the BatchNorms runs in eval mode. Meant for the hard model (eps = 0): statistics gathered while
    eps was decaying are stale for it. Mode and momenta are restored afterwards; with no batch the
    statistics are left as they were.
    """
    norms = batchnorms(model)
    if not norms:
        return 0
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    device = next(model.parameters()).device
    count = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.train()
        for batch in (first, *batches):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            count += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return count


_CALIBRATION_SAMPLE = 1 << 18  # values kept per batch for a learned scale's search


class _Observer:
    """Statistics of one quantized layer's inputs: per-channel moments, and a strided sample."""

    def __init__(self, quantizer: ActivationQuantizer):
        self.quantizer = quantizer
        self.sum = self.sumsq = None
        self.count = 0
        self.samples: list[torch.Tensor] = []

    def __call__(self, module, args):
        x = args[0].detach().float()
        if self.quantizer.policy == "standardize":
            per_channel = x.movedim(self.quantizer.channel_dim, 0).reshape(x.shape[self.quantizer.channel_dim], -1)
            s, sq = per_channel.sum(1), per_channel.square().sum(1)
            self.sum = s if self.sum is None else self.sum + s
            self.sumsq = sq if self.sumsq is None else self.sumsq + sq
            self.count += per_channel.shape[1]
        else:
            flat = x.reshape(-1)
            self.samples.append(flat[:: max(1, flat.numel() // _CALIBRATION_SAMPLE)])

    def apply(self) -> None:
        if self.count:
            mean = self.sum / self.count
            var = (self.sumsq / self.count - mean.square()).clamp_min(0) * self.count / max(self.count - 1, 1)
            self.quantizer.set_statistics(mean, var)
        elif self.samples:
            self.quantizer.calibrate(torch.cat(self.samples))


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable) -> int:
    """Set activation statistics from real inputs before training; returns how many were set.

    Learned power-of-two scales get the scale that minimizes the quantization error of the
    observed inputs; ``standardize`` policies get their normalization statistics (otherwise they
    start from mean 0, variance 1). ``batches`` yields inputs, or ``(input, target)`` pairs. The
    model runs in eval mode at ``eps = 1``, so each layer sees the float network's activations;
    slopes and mode are restored afterwards.
    """
    # A layer's input quantizer sees the layer's input; every other activation quantizer (residual
    # BatchNorms', activation tables', a ViT's token stream and attention's q, k, v) is called on
    # what it quantizes.
    watched = [(m, m.input_quantizer) for _, m in quantized_layers(model)
               if isinstance(m.input_quantizer, ActivationQuantizer)]
    seen = {id(q) for _, q in watched}
    watched += [(q, q) for q in model.modules() if isinstance(q, ActivationQuantizer) and id(q) not in seen]
    if not watched:
        return 0
    observers = [_Observer(q) for _, q in watched]
    hooks = [m.register_forward_pre_hook(obs) for (m, _), obs in zip(watched, observers)]
    old_eps = {name: q.eps for name, q in quantizers(model)}
    was_training = model.training
    try:
        model.eval()
        set_slope(model, 1.0)
        device = next(model.parameters()).device
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        for name, q in quantizers(model):
            q.eps = old_eps[name]
        model.train(was_training)
    for obs in observers:
        obs.apply()
    for m in model.modules():  # grids that start from others' (a ViT's class token)
        if hasattr(m, "after_calibration"):
            m.after_calibration()
    return sum(1 for obs in observers if obs.count or obs.samples)


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
