"""The integer math of a shift layer, as small pure functions on numpy arrays.

Products with weights ``0`` or ``±2^t`` are left shifts; requantization is counting thresholds.
No multiply anywhere: this is the arithmetic the C backend's kernels implement.
"""
from __future__ import annotations

import numpy as np

_CHUNK = 16  # examples per block of the shift-add convolution (bounds its temporaries)


def patches(a: np.ndarray, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> np.ndarray:
    """The receptive fields of an integer NCHW tensor, ``(N, C * kh * kw, Ho * Wo)`` in the order
    of ``torch.nn.functional.unfold``, zero-padded, and ``(Ho, Wo)``: integer indexing only."""
    n, c = a.shape[:2]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    padded = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    ho, wo = win.shape[2:4]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, ho * wo), (ho, wo)


def shift_add_conv(a: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                   groups: int = 1) -> np.ndarray:
    """Integer convolution of ``a`` (integers, NCHW) with weights ``w`` whose entries are 0 or ``±2^t``,
    computed with left shifts and additions only. Returns the int64 accumulator (N, Cout, Ho, Wo)."""
    n = a.shape[0]
    cout, cin_g, kh, kw = w.shape
    p, (ho, wo) = patches(a.astype(np.int64), (kh, kw), stride, padding, dilation)
    p = p.reshape(n, groups, cin_g * kh * kw, ho * wo)
    cout_g = cout // groups
    acc = np.zeros((n, cout, ho * wo), dtype=np.int64)
    for g in range(groups):
        wg = w[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1)
        acc[:, g * cout_g:(g + 1) * cout_g] = shift_add(p[:, g], wg)
    return acc.reshape(n, cout, ho, wo)


def shift_add(p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_k w[c, k] * p[:, k, :]`` for ``w`` in ``{0, ±2^t}``: shifts and additions."""
    n, _, length = p.shape
    p = p.astype(np.int64)
    out = np.zeros((n, w.shape[0], length), dtype=np.int64)
    nonzero = w != 0
    shifts = np.zeros_like(w)
    shifts[nonzero] = log2_pow2(np.abs(w[nonzero]))
    for t in np.unique(shifts[nonzero]):
        shifted = p << int(t)
        for sign in (1, -1):
            rows, cols = np.nonzero(nonzero & (shifts == t) & (np.sign(w) == sign))
            if rows.size == 0:
                continue
            channels, starts = np.unique(rows, return_index=True)
            for lo in range(0, n, _CHUNK):
                sums = np.add.reduceat(shifted[lo:lo + _CHUNK, cols, :], starts, axis=1)
                if sign > 0:
                    out[lo:lo + _CHUNK, channels] += sums
                else:
                    out[lo:lo + _CHUNK, channels] -= sums
    return out


def log2_pow2(v: np.ndarray) -> np.ndarray:
    """The exponent of positive powers of two, by counting shifts (integers only)."""
    v, e = v.astype(np.int64), np.zeros(v.shape, dtype=np.int64)
    while (v > 1).any():
        more = v > 1
        v, e = np.where(more, v >> 1, v), e + more
    return e


def level_index(x: np.ndarray, thr: np.ndarray, direction: np.ndarray | None, channel_dim: int) -> np.ndarray:
    """Requantization: ``sum_k [d_c * x >= t_kc]``, a level index, by comparisons and additions.
    ``thr`` is ``(L - 1, K)``, ``K`` = 1 or the size of ``x``'s ``channel_dim``; ``direction``
    (``(K,)`` of ±1) None for +1 (thresholds from :mod:`shiftquant.export.passes.requant`)."""
    x = x.astype(np.int64)
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    if direction is not None:
        x = np.where(direction.astype(np.int64).reshape(shape) > 0, x, -x)
    idx = np.zeros(x.shape, dtype=np.int64)
    for row in thr.astype(np.int64):
        idx += x >= row.reshape(shape)
    return idx


def accumulator_range(w: np.ndarray, lo: int, hi: int) -> tuple[list[int], list[int]]:
    """Per output channel, the least and greatest ``sum_k w[c, k] * a_k`` over inputs ``a_k`` in
    ``[lo, hi]`` (Python integers: no overflow)."""
    w = w.reshape(w.shape[0], -1)
    pos = [int(v) for v in np.where(w > 0, w, 0).sum(1)]
    neg = [int(v) for v in np.where(w < 0, -w, 0).sum(1)]
    return [p * lo - n * hi for p, n in zip(pos, neg)], [p * hi - n * lo for p, n in zip(pos, neg)]
