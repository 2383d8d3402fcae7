"""The integer input of a bundle: raw pixels, and how the float model's input relates to them.

A data pipeline feeds a model ``x = (p / scale - mean_c) / std_c`` (``ToTensor`` + ``Normalize``,
and the data modules) of integer pixels ``p`` in ``[0, scale]``. A bundle exported with a
:class:`PixelInput` takes ``p`` itself (``uint8`` for ``scale <= 255``): the exporter folds the
normalization into the first shift layers' input thresholds, so a camera frame goes in untouched.
:func:`pixels_to_float` is the one definition of the formula, in float32 and in that order; the
threshold search, the runtime (for a float stem) and the tests all call it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import ExportError


@dataclass(frozen=True)
class PixelInput:
    """``x = (p / scale - mean_c) / std_c`` per channel, ``p`` an integer in ``[0, scale]``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: int = 255

    def __post_init__(self):
        mean, std = _floats(self.mean, "mean"), _floats(self.std, "std")
        if len(mean) != len(std) or not mean:
            raise ExportError(f"PixelInput: mean {mean} and std {std} must have one value per channel")
        if any(s <= 0 for s in std):
            raise ExportError(f"PixelInput: std {std} must be positive")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) \
                or self.scale != int(self.scale) or not 1 <= self.scale < 1 << 16:
            raise ExportError(f"PixelInput: scale {self.scale!r} must be an integer from 1 to 65535")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "scale", int(self.scale))

    @classmethod
    def of(cls, datamodule) -> PixelInput | None:
        """From a data module's ``mean`` / ``std`` / ``pixel_max`` (None where it has none)."""
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        if mean is None or std is None:
            return None
        return cls(tuple(mean), tuple(std), int(getattr(datamodule, "pixel_max", 255)))

    def spec(self) -> dict:
        """The input node's ``pixels`` field."""
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    def to_float(self, p) -> torch.Tensor:
        """The float model's input for pixels ``p`` (N, C, ...)."""
        return pixels_to_float(np.asarray(p), self.spec())

    def from_float(self, x) -> np.ndarray:
        """The pixels a normalized float input came from (rounded, clipped to ``[0, scale]``)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        shape = _channel_shape(x.dim(), 1)
        mean = torch.tensor(self.mean, dtype=torch.float64).reshape(shape)
        std = torch.tensor(self.std, dtype=torch.float64).reshape(shape)
        p = torch.round((x * std + mean) * self.scale).clamp(0, self.scale)
        return p.numpy().astype(pixel_dtype(self.scale))


def pixels_to_float(p: np.ndarray, spec: dict, channel_dim: int = 1) -> torch.Tensor:
    """``(p / scale - mean_c) / std_c`` in float32, the channel on ``channel_dim`` (exact pixels)."""
    x = torch.from_numpy(np.asarray(p).astype(np.float32))
    shape = _channel_shape(x.dim(), channel_dim)
    mean = torch.tensor(spec["mean"], dtype=torch.float32).reshape(shape)
    std = torch.tensor(spec["std"], dtype=torch.float32).reshape(shape)
    return (x / float(spec["scale"]) - mean) / std


def pixel_dtype(scale: int):
    return np.uint8 if scale <= 255 else np.uint16


def _channel_shape(ndim: int, channel_dim: int) -> list[int]:
    shape = [1] * ndim
    shape[channel_dim] = -1
    return shape


def _floats(values, what: str) -> tuple[float, ...]:
    values = (values,) if isinstance(values, (int, float)) else values
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ExportError(f"PixelInput: {what} must be numbers, one per channel: {values!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise ExportError(f"PixelInput: {what} must be finite: {values!r}")
    return out


def describe_input(node: dict) -> str:
    """What a bundle's input node takes, in words: the pixel type and range and the normalization
    its thresholds fold in, or float values. Numbers as ``%g`` of checked floats."""
    shape = ", ".join(str(int(s)) for s in node["shape"])
    px = node.get("pixels")
    if not px:
        return f"float32 values, channel-first ({shape})"
    nums = lambda vs: ", ".join(f"{float(v):.6g}" for v in vs)
    top = int(px["scale"])
    return (f"{np.dtype(pixel_dtype(top)).name} pixels p in 0..{top}, channel-first ({shape}), as the camera or "
            f"file gives them; the float model's input (p / {top} - mean_c) / std_c, mean = ({nums(px['mean'])}), "
            f"std = ({nums(px['std'])}), is folded into the first layers")
