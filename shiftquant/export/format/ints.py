"""The integer types of a bundle: the narrowest one for proven bounds, and the checks against them.

Every integer tensor of a bundle has a declared type (``docs/bundle.md``): the narrowest of
``uint8, int8, uint16, int16, int32`` that holds its proven ``[lo, hi]`` (unsigned when ``lo >= 0``,
so post-ReLU codes are unsigned). The exporter chooses it with :func:`narrowest`; the runtime and
a C backend store values at exactly that width.
"""
from __future__ import annotations

import numpy as np

FLOAT = "float32"
# float32 holds every integer of magnitude below this exactly: integers the float kernels (PyTorch's,
# onnxruntime's) compute stay exact below it.
FLOAT32_EXACT = 1 << 24
# In the order they are tried: narrow first, unsigned before signed of the same width.
INT_TYPES: dict[str, type] = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16,
                              "int32": np.int32}


def narrowest(lo: int, hi: int) -> str | None:
    """The narrowest declared type holding ``[lo, hi]``; None when even int32 does not."""
    return next((name for name, t in INT_TYPES.items() if holds(name, lo, hi)), None)


def holds(name: str, lo: int, hi: int) -> bool:
    info = np.iinfo(INT_TYPES[name])
    return int(info.min) <= lo <= hi <= int(info.max)


def signed_type(bound: int) -> str | None:
    """The narrowest signed type holding ``[-bound, bound]`` (an accumulator)."""
    return narrowest(-abs(int(bound)) - (bound == 0), abs(int(bound)))
