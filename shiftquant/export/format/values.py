"""What flows between the nodes of a bundle: run-time values and load-time facts.

A :class:`Value` is what the reference runtime hands from node to node; a :class:`Fact` is what
the load-time proof (:mod:`.verify`) knows of it without data. Both have a ``kind``: ``float``, or
integers that are ``grid`` (worth a power-of-two ``unit`` each), ``sum`` (a global or window sum
of grid integers) or ``normalized`` (an integer LayerNorm's ``z``), both read only through input
thresholds, or ``pixels`` (the bundle's input). The op
definitions (:mod:`.ops`) compute the one from the other's kinds, so run and proof decide alike.
"""
from __future__ import annotations

from dataclasses import dataclass

# Integer kinds read only through a shift layer's input thresholds (which evaluate the op that made them).
THROUGH_THRESHOLDS = ("sum", "normalized")


class Value:
    """A value between nodes: float32 values (a torch tensor), or integers (a numpy array) of a kind."""

    __slots__ = ("data", "unit", "kind")

    def __init__(self, data, unit: float | None = None, kind: str = "grid"):
        import numpy as np

        self.data = data
        self.kind = kind if isinstance(data, np.ndarray) else "float"
        self.unit = unit if self.kind == "grid" else None

    @property
    def is_int(self) -> bool:
        return self.kind != "float"


@dataclass(frozen=True)
class Fact:
    """What the proof knows of a node's output: its ``shape`` for one example (the batch dimension
    removed; a constant's whole shape), its ``kind``, for integers the interval ``[lo, hi]`` every
    value lies in, and for a grid its ``unit``."""

    shape: tuple[int, ...]
    kind: str = "float"
    lo: int = 0
    hi: int = 0
    unit: float | None = None
    non_negative: bool = False  # float values: proven >= 0

    @property
    def is_int(self) -> bool:
        return self.kind != "float"

    @property
    def signless(self) -> bool:
        """Every value is >= 0 (as float values too: pixels are normalized, and may not be)."""
        return self.non_negative if self.kind == "float" else self.kind != "pixels" and self.lo >= 0

    def with_range(self, lo: int, hi: int, kind: str | None = None, unit: float | None = None) -> Fact:
        kind = kind or self.kind
        unit = unit if unit is not None else self.unit
        return Fact(self.shape, kind, int(lo), int(hi), unit if kind == "grid" else None)


def pair(v) -> tuple[int, int]:
    """A size given as one integer or two, as two."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def constant_divisor(node: dict) -> bool:
    """Whether an ``avg_pool2d`` divides every window's sum by ``kh x kw``: no window hangs over
    the end (ceil_mode adds none on this input), and padding, if any, is counted."""
    k, s, p = pair(node["kernel_size"]), pair(node["stride"] or node["kernel_size"]), pair(node["padding"])
    sizes = node["input_shape"][1:]
    whole = all((n + 2 * pi - ki) % si == 0 for n, ki, si, pi in zip(sizes, k, s, p))
    return (whole or not node["ceil_mode"]) and (not any(p) or node["count_include_pad"])
