"""QuantRecipe: what to quantize and how, validated when it is made.

A recipe is a flat dataclass so that every field is a Hydra override (``quant.weight_shift_bits=3``).
Layer selection: a module is quantized when its type is in ``layer_types``, its kernel size is in
``kernel_sizes`` (when given), its fully qualified name matches no ``keep_float`` pattern and some
``layers`` pattern. Patterns are ``fnmatch`` globs, or regular expressions (full match) when they
start with ``re:``. ``keep_float`` is checked first and wins.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field, fields

from torch import nn

from .errors import ConfigError
from .quant.functional import GRAD_MODES, ROUNDINGS
from .quant.quantizers import (MAX_SHIFT_BITS, MAX_UNIFORM_BITS, Quantizer, ShiftQuantizer,
                               UniformQuantizer, check_choice, check_int_range)
from .quant.scales import ACT_POLICIES, WEIGHT_POLICIES

LAYER_TYPES = {"conv2d": nn.Conv2d, "linear": nn.Linear}
# Fields an override may set for some layers (how a layer is quantized, not which layers are).
PER_LAYER_FIELDS = ("weight_shift_bits", "weight_uniform_bits", "weight_rounding", "weight_zero", "weight_scale",
                    "weight_keep_mean", "weight_scale_frozen", "act_shift_bits", "act_uniform_bits", "act_rounding",
                    "act_zero", "act_signed", "act_scale", "act_full_codes", "clip_sigma", "grad")
DEPLOY_INPUT_BITS = 8
# The 3x3 convolutions inside residual blocks of torchvision/timm ResNets and of our ResNet-20.
RESIDUAL_BLOCK_CONVS = r"re:(.*\.)?layer\d+\.\d+\.conv\d+"


def name_matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


@dataclass
class QuantRecipe:
    # Weights: shift (power-of-two) or uniform codes; set exactly one of the two bit widths.
    weight_shift_bits: int | None = 2
    weight_uniform_bits: int | None = None
    weight_rounding: str = "ceil"
    weight_zero: bool = False
    weight_scale: str = "pretrained_std"
    weight_keep_mean: bool = False
    # learned_pot only: keep each channel's initial (MSE-optimal) power-of-two scale fixed; meant
    # for layers a BatchNorm follows, where the loss hardly depends on the weight scale.
    weight_scale_frozen: bool = False
    # Activations (the input of each quantized layer); both bit widths None: weight-only.
    act_shift_bits: int | None = None
    act_uniform_bits: int | None = None
    act_rounding: str = "ceil"
    act_zero: bool = False
    act_signed: bool = True
    act_scale: str = "standardize"
    # Unsigned inputs with a zero level: spend every code (A3: zero plus seven powers of two, or
    # zero plus seven uniform steps; A2: four levels). false: the symmetric layout {0, 1, ..., 2^-(2^s-1)}.
    act_full_codes: bool = False
    # Weight-only recipes with act_scale='standardize': insert the standardizing BatchNorm on each
    # quantized layer's (float) input anyway, as the seed's code does. No effect when inputs are quantized.
    act_standardize_float: bool = False
    # Shared.
    clip_sigma: float = 3.0
    grad: str = "scaled"
    act_raw_grad_layers: list[str] = field(default_factory=list)
    # Which layers.
    layers: list[str] = field(default_factory=lambda: ["*"])
    layer_types: list[str] = field(default_factory=lambda: ["conv2d", "linear"])
    kernel_sizes: list[int] | None = None
    keep_float: list[str] = field(default_factory=list)
    # Make the hard model computable exactly by the integer runtime (power-of-two scales, inputs
    # on a power-of-two grid, biases on the accumulator grid); see docs/export.md.
    deploy_exact: bool = False
    # Put the residual stream on a power-of-two fixed-point grid of this many bits: every
    # BatchNorm2d whose output feeds a residual add quantizes it, so the adds are integer adds.
    # With deploy_exact it makes a ResNet run integer-only in the runtime. null: float residuals.
    residual_bits: int | None = None
    # With residual_bits: a sigmoid or Hardsigmoid gate that only multiplies (squeeze-excite)
    # quantizes to zero and powers of two with this many exponent bits, so the product is a shift.
    gate_shift_bits: int = 3
    # Per-layer fields: {pattern: {field: value}}, e.g. {"layer3.*": {"weight_shift_bits": 1}}. A
    # layer takes the fields of every pattern its name matches, in order (later ones win).
    overrides: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        if self.overrides is None:  # Hydra's null: no override
            self.overrides = {}
        for name in ("act_raw_grad_layers", "layers", "layer_types", "keep_float", "kernel_sizes"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str) or not hasattr(value, "__iter__"):
                    raise ConfigError(name, value, "a list")
                setattr(self, name, list(value))
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        for side in ("weight", "act"):
            shift, uniform = getattr(self, f"{side}_shift_bits"), getattr(self, f"{side}_uniform_bits")
            if shift is not None and uniform is not None:
                raise ConfigError(f"{side}_uniform_bits", uniform,
                                  f"null when {side}_shift_bits is set (one code per tensor)")
            if shift is not None:
                check_int_range(f"{side}_shift_bits", shift, 0, MAX_SHIFT_BITS)
            if uniform is not None:
                check_int_range(f"{side}_uniform_bits", uniform, 1, MAX_UNIFORM_BITS)
            check_choice(f"{side}_rounding", getattr(self, f"{side}_rounding"), ROUNDINGS)
        if not (self.quantizes_weights or self.quantizes_acts):
            raise ConfigError("weight_shift_bits", None,
                              "an integer when no activation bits are set (the recipe quantizes nothing)")
        check_choice("weight_scale", self.weight_scale, WEIGHT_POLICIES)
        check_choice("act_scale", self.act_scale, ACT_POLICIES)
        check_choice("grad", self.grad, GRAD_MODES)
        for flag in ("weight_zero", "weight_keep_mean", "weight_scale_frozen", "act_zero", "act_signed",
                     "act_full_codes", "act_standardize_float", "deploy_exact"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(flag, getattr(self, flag), "true or false")
        if self.weight_keep_mean and self.weight_scale != "pretrained_std":
            raise ConfigError("weight_keep_mean", True, "false unless weight_scale='pretrained_std'")
        if self.weight_scale_frozen and self.weight_scale != "learned_pot":
            raise ConfigError("weight_scale_frozen", True, "false unless weight_scale='learned_pot'")
        if self.act_full_codes and self.quantizes_acts:
            if not (self.act_zero and not self.act_signed):
                raise ConfigError("act_full_codes", True,
                                  "false unless act_zero=true and act_signed=false (only unsigned inputs "
                                  "with a zero level leave codes unused)")
            if self.act_shift_bits is not None:
                check_int_range("act_shift_bits", self.act_shift_bits, 0, MAX_SHIFT_BITS - 1)
        if self.act_standardize_float and not self.quantizes_acts and self.act_scale != "standardize":
            raise ConfigError("act_standardize_float", True,
                              "false unless act_scale='standardize' (it inserts the standardizing BatchNorm)")
        if self.act_scale == "standardize" and self.quantizes_acts and not self.act_signed:
            raise ConfigError("act_signed", False,
                              "true with act_scale='standardize' (standardized inputs are signed)")
        if self.deploy_exact:
            if self.weight_shift_bits is None:
                raise ConfigError("weight_shift_bits", None, "an integer with deploy_exact (shift weights)")
            if self.weight_scale != "learned_pot":
                raise ConfigError("weight_scale", self.weight_scale, "'learned_pot' with deploy_exact")
            if self.act_scale != "learned_pot":
                raise ConfigError("act_scale", self.act_scale, "'learned_pot' with deploy_exact")
        if self.residual_bits is not None:
            check_int_range("residual_bits", self.residual_bits, 2, MAX_UNIFORM_BITS)
        check_int_range("gate_shift_bits", self.gate_shift_bits, 0, MAX_SHIFT_BITS)
        if isinstance(self.clip_sigma, bool) or not isinstance(self.clip_sigma, (int, float)) \
                or not self.clip_sigma > 0:
            raise ConfigError("clip_sigma", self.clip_sigma, "a number > 0")
        for t in self.layer_types:
            check_choice("layer_types", t, tuple(LAYER_TYPES))
        if not self.layer_types:
            raise ConfigError("layer_types", self.layer_types, f"a non-empty list of {tuple(LAYER_TYPES)}")
        if not self.layers:
            raise ConfigError("layers", self.layers, "a non-empty list of name patterns")
        for name in ("layers", "keep_float", "act_raw_grad_layers"):
            for pattern in getattr(self, name):
                if not isinstance(pattern, str):
                    raise ConfigError(name, pattern, "strings (fnmatch globs or 're:' regexes)")
                if pattern.startswith("re:"):
                    try:
                        re.compile(pattern[3:])
                    except re.error as exc:
                        raise ConfigError(name, pattern, f"a valid regular expression ({exc})") from None
        if self.kernel_sizes is not None:
            for k in self.kernel_sizes:
                check_int_range("kernel_sizes", k, 1, 1024)
        self._validate_overrides()

    def _validate_overrides(self) -> None:
        if not isinstance(self.overrides, dict):
            raise ConfigError("overrides", self.overrides, "a mapping {name pattern: {field: value}}")
        for pattern, values in self.overrides.items():
            if not isinstance(pattern, str) or not isinstance(values, dict):
                raise ConfigError("overrides", {pattern: values}, "a mapping {name pattern: {field: value}}")
            for key in values:
                if key not in PER_LAYER_FIELDS:
                    raise ConfigError(f"overrides.{pattern}.{key}", values[key],
                                      "a per-layer field: " + ", ".join(PER_LAYER_FIELDS))
            try:
                self._with(values)
            except ConfigError as exc:
                raise ConfigError(f"overrides.{pattern}.{exc.field}", exc.value, exc.allowed) from None

    def _with(self, values: dict) -> "QuantRecipe":
        return dataclasses.replace(self, **values, overrides={})

    def for_layer(self, name: str) -> "QuantRecipe":
        """The recipe of the layer called ``name``: this one with every matching override applied."""
        values: dict = {}
        for pattern, fields_ in self.overrides.items():
            if name_matches(name, pattern):
                values.update(fields_)
        return self._with(values) if values else self

    @property
    def quantizes_weights(self) -> bool:
        return self.weight_shift_bits is not None or self.weight_uniform_bits is not None

    @property
    def quantizes_acts(self) -> bool:
        return self.act_shift_bits is not None or self.act_uniform_bits is not None

    # ----------------------------------------------------------------- construction
    @classmethod
    def preset(cls, name: str, **overrides) -> "QuantRecipe":
        """A named recipe (:data:`PRESETS`) with some fields overridden."""
        check_choice("preset", name, tuple(PRESETS))
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> "QuantRecipe":
        """Build from a mapping; ``preset`` selects the base, unknown keys are refused."""
        values = dict(values)
        preset = values.pop("preset", None)
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(key, values[key], "a QuantRecipe field: " + ", ".join(sorted(known)))
        if preset is not None:
            check_choice("preset", preset, tuple(PRESETS))
            values = {**PRESETS[preset], **values}
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ----------------------------------------------------------------- use
    def selects(self, name: str, module: nn.Module) -> bool:
        if not any(isinstance(module, LAYER_TYPES[t]) for t in self.layer_types):
            return False
        if self.kernel_sizes is not None and isinstance(module, nn.Conv2d):
            if any(k not in self.kernel_sizes for k in module.kernel_size):
                return False
        if any(name_matches(name, p) for p in self.keep_float):
            return False
        return any(name_matches(name, p) for p in self.layers)

    def weight_quantizer_core(self) -> Quantizer | None:
        return self._make(self.weight_shift_bits, self.weight_uniform_bits, self.weight_rounding,
                          self.weight_zero, True, self.grad)

    @property
    def standardizes_float_inputs(self) -> bool:
        """Weight-only with the seed's standardizing BatchNorm on the float inputs."""
        return self.act_standardize_float and not self.quantizes_acts and self.act_scale == "standardize" \
            and not self.deploy_exact

    def act_quantizer_core(self, layer_name: str) -> Quantizer | None:
        raw = any(name_matches(layer_name, p) for p in self.act_raw_grad_layers)
        grad = "raw" if raw else self.grad
        if self.deploy_exact and not self.quantizes_acts:
            # Weight-only, exact: inputs travel as 8-bit fixed point on a power-of-two grid.
            return UniformQuantizer(DEPLOY_INPUT_BITS, "nearest", True, self.act_signed, grad)
        return self._make(self.act_shift_bits, self.act_uniform_bits, self.act_rounding,
                          self.act_zero, self.act_signed, grad, self.act_full_codes)

    def residual_quantizer_core(self) -> Quantizer | None:
        """Signed fixed point with a zero, ``residual_bits`` bits (nearest rounding)."""
        if self.residual_bits is None:
            return None
        return UniformQuantizer(self.residual_bits, "nearest", True, True, self.grad)

    def gate_quantizer_core(self) -> Quantizer:
        """Zero and unsigned powers of two, ``gate_shift_bits`` exponent bits (nearest rounding)."""
        return ShiftQuantizer(self.gate_shift_bits, "nearest", True, False, self.grad)

    @staticmethod
    def _make(shift_bits, uniform_bits, rounding, zero, signed, grad, full_codes=False) -> Quantizer | None:
        if shift_bits is not None:
            return ShiftQuantizer(shift_bits, rounding, zero, signed, grad, full_codes)
        if uniform_bits is not None:
            return UniformQuantizer(uniform_bits, rounding, zero, signed, grad, full_codes)
        return None


# The seed paper's recipe (METHOD.md §3): the 3x3 convs of the residual blocks only, ceil rounding,
# zero-free signed levels, pretrained-std weight scale, standardized activations.
_DBSSQ = dict(layers=[RESIDUAL_BLOCK_CONVS], layer_types=["conv2d"], kernel_sizes=[3])

PRESETS: dict[str, dict] = {
    "dbssq": dict(_DBSSQ),
    # The seed as its code runs: no gradient scaling for the inputs of each block's second conv.
    "dbssq_seed_grad": dict(_DBSSQ, act_raw_grad_layers=["*.conv2"]),
    "all": dict(layers=["*"], layer_types=["conv2d", "linear"]),
    # Every Conv/Linear, exactly reproducible by the integer runtime, residual stream on an 8-bit grid.
    "deploy": dict(layers=["*"], layer_types=["conv2d", "linear"], weight_rounding="nearest",
                   weight_scale="learned_pot", act_rounding="nearest", act_zero=True, act_scale="learned_pot",
                   deploy_exact=True, residual_bits=DEPLOY_INPUT_BITS),
    # Ours: learned power-of-two scales, nearest log rounding, unsigned post-ReLU inputs with zero
    # that use every code. Identity at eps = 1, shift-only at eps = 0.
    "shiftquant": dict(_DBSSQ, weight_rounding="nearest", weight_scale="learned_pot",
                       act_rounding="nearest", act_zero=True, act_signed=False,
                       act_scale="learned_pot", act_full_codes=True),
}
