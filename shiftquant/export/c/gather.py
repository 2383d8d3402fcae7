"""Data movement in C: a :class:`~.program.Gather`'s element map as strided loops.

A move (flatten, reshape, permute, index, expand, pad) is defined once, by its op (the reference
kernel applied to an array of element indices gives ``source``). Here that map meets the
physical layouts, zero borders included: where both the input and the output offsets are affine
in the output's logical position (every move but reflect and circular padding), the kernel is a
few nested loops with constant pointer steps, adjacent dimensions merged; a pad's zeros become
one clear of the output. Otherwise a table lists each output position's input offset.
"""
from __future__ import annotations

import numpy as np

from .program import Gather, Tensor


def storage_shape(full: tuple[int, ...], batch_dim: int | None) -> tuple[int, int, int]:
    """The (C, H, W) planes a logical shape is stored as, in the same row-major order: the batch
    (or a batch-less constant's leading 1) dropped, a vector as (n, 1, 1), tokens (N, D) as
    (N, 1, D), leading dimensions beyond three merged into C."""
    dims = list(full)
    if batch_dim is not None:
        del dims[batch_dim]
    elif len(dims) > 1 and dims[0] == 1:
        del dims[0]
    if not dims:
        return (1, 1, 1)
    if len(dims) == 1:
        return (dims[0], 1, 1)
    if len(dims) == 2:
        return (dims[0], 1, dims[1])
    lead = int(np.prod(dims[:-2]))
    return (lead, dims[-2], dims[-1])


def physical(t: Tensor) -> np.ndarray:
    """Each logical element's offset (in elements) in ``t``'s planes."""
    c, h, w = t.shape
    b = t.border
    cc, yy, xx = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    return (cc * t.plane + (yy + b) * t.row + xx + b).reshape(-1)


def _affine(values: np.ndarray) -> tuple[int, list[int]] | None:
    """``(start, steps)`` with ``values[i...] = start + sum i_d * steps_d``, or None."""
    start = int(values.flat[0])
    steps = [int(values[(0,) * d + (1,)].flat[0]) - start if n > 1 else 0 for d, n in enumerate(values.shape)]
    grid = start + sum(np.arange(n).reshape((-1,) + (1,) * (values.ndim - d - 1)) * s
                       for d, (n, s) in enumerate(zip(values.shape, steps)))
    return (start, steps) if np.array_equal(values, grid) else None


def plan(k: Gather) -> None:
    """Fills ``k.axes``/``k.start`` (strided loops) or ``k.table``, and ``k.zero``."""
    a, out = k.inputs[0], k.output
    shape = [n for n in out.shape]
    src = np.where(k.source >= 0, physical(a)[np.maximum(k.source, 0)], -1).reshape(shape)
    dst = physical(out).reshape(shape)
    k.zero = bool((k.source < 0).any()) or out.border > 0
    inside = src >= 0
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(inside)) if inside.any() else None
    if box is None:
        k.axes, k.start = [], (0, 0)  # all zeros
        k.table = None
        return
    window_src, window_dst = src[box], dst[box]
    fs, fd = (_affine(window_src) if (window_src >= 0).all() else None), _affine(window_dst)
    if fs is not None and fd is not None and inside.sum() == window_src.size:
        axes = [(n, s, d) for n, s, d in zip(window_src.shape, fs[1], fd[1]) if n > 1]
        merged: list[tuple[int, int, int]] = []
        for n, s, d in axes:
            if merged and merged[-1][1] == n * s and merged[-1][2] == n * d:
                merged[-1] = (merged[-1][0] * n, s, d)
            else:
                merged.append((n, s, d))
        k.axes, k.start, k.table = merged, (fs[0], fd[0]), None
        return
    k.table = src.reshape(-1).astype(np.int64)
    k.axes, k.start = [], (0, 0)
