"""Peers run in the accuracy harness with their own QAT layers (Brevitas is optional: pip install -e ".[peers]").

A peer module has ``convert(model, weight_bits, act_bits, calibration)`` (swap the residual blocks'
3x3 convolutions for its own layers, in place) and ``model_bytes(model)``. :func:`register` makes
its models buildable by the model factory as ``PREFIX_wW`` (weights only) or ``PREFIX_wWaA``: a
float ResNet-20 with the protocol's artifact loaded, converted, and calibrated on the run's own
calibration batches (the first training batches of its seed, the ones ours calibrates on).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from torch import nn

BLOCK_CONV = re.compile(r"layer\d+\.\d+\.conv\d+")


def block_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The layers every row quantizes: the residual blocks' 3x3 convolutions."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and BLOCK_CONV.fullmatch(name) and m.kernel_size == (3, 3)]


def replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def model_bytes(model: nn.Module, quantized) -> dict:
    """Stored size: float32 for every parameter, but a quantized layer's weight, stored at its bit
    width. ``quantized(module)`` gives a module's ``(weight bits, extra bytes)`` (the extra: scales
    stored beside the codes), or None for a float module."""
    total = float_bytes = 0.0
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        if not own:
            continue
        n = sum(p.numel() for p in own)
        float_bytes += 4 * n
        q = quantized(m)
        if q is None:
            total += 4 * n
        else:
            bits, extra = q
            total += m.weight.numel() * bits / 8 + extra + 4 * (n - m.weight.numel())
    return {"model_bytes": total, "float_bytes": float_bytes}


def model_name(prefix: str, weight_bits: int, act_bits: int | None) -> str:
    return f"{prefix}_w{weight_bits}" + (f"a{act_bits}" if act_bits is not None else "")


def register(prefix: str, convert: Callable, weight_bits: int, act_bits: int | None, artifact,
             calibration: list | None) -> str:
    """Make ``model.name=PREFIX_wW[aA]`` buildable in this process; returns the name."""
    from shiftquant.models import factory

    def build(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
        from shiftquant.models import read_state_dict, resnet20

        model = resnet20(num_classes=num_classes, in_chans=in_chans)
        if artifact is not None and Path(artifact).exists():
            model.load_state_dict(read_state_dict(str(artifact)))
        return convert(model, weight_bits, act_bits, calibration)

    name = model_name(prefix, weight_bits, act_bits)
    factory.LOCAL_MODELS[name] = build
    return name
