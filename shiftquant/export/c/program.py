"""The C program a bundle lowers to: integer tensors, the kernels between them, and their sizes.

Plain data, as CMSIS-NN's parameter structs: :mod:`.lower` fills it from the proven graph,
:mod:`.layout` and :mod:`.arena` place it in memory, :mod:`.emit` prints it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ...errors import CodegenError

# Types of values between kernels, narrowest first (the bundle's declared integer types).
CTYPES = {"uint8": ("uint8_t", 1, 0, 255), "int8": ("int8_t", 1, -128, 127),
          "uint16": ("uint16_t", 2, 0, 65535), "int16": ("int16_t", 2, -32768, 32767),
          "int32": ("int32_t", 4, -2**31, 2**31 - 1)}
ALIGN = 64  # bytes: every tensor starts on a cache line (and a 512-bit vector)
CHUNK = 64  # output positions per vector block of a shift layer (a microcontroller's; the default)
HOST_CHUNK = 128  # the host backend's: 9 % faster than 64 on ResNet-20 (AVX-512), as fast as 256
MAX_CHUNK = 1024
# Words (four byte lanes each) a DSP-extension run adds in registers: 8 + its pointers fill the core's 13.
DSP_WORDS = 8
# The most thresholds counted in 16-bit lanes on cores with the DSP extension (more: a search).
COUNT_LANES = 16
# Buckets a channel's many thresholds are cut into for the DSP search (bytes of stack).
SEARCH_BUCKETS = 128
# Below this many positions per channel, the DSP form binary-searches the residual grid's 255
# thresholds instead: building a channel's buckets (about 3.1 k instructions) costs more than they
# save over its few values. At 64 the two cost about the same on a Cortex-M4 (ResNet-8: 0.6 % fewer
# instructions for 728 B more flash), so 64 positions keep the buckets.
BUCKETS_FROM = 64
WINDOW = 24  # beyond this many thresholds, a block counts only those between its extremes
LOOKUP_SPAN = 4096  # tables mode: many levels become a lookup table over at most this many values


def dtype_for(lo: int, hi: int) -> str:
    for name, (_, _, tlo, thi) in CTYPES.items():
        if tlo <= lo and hi <= thi:
            return name
    raise CodegenError(f"integer range [{lo}, {hi}] does not fit 32 bits")


@dataclass
class Tensor:
    """A (C, H, W) integer tensor stored as C planes of (H + 2B) x (W + 2B), zero border B."""

    name: str
    dtype: str
    shape: tuple[int, int, int]
    lo: int
    hi: int
    border: int = 0
    offset: int = -1  # bytes into the arena; -1: the caller's output buffer (the logits)
    alias_of: Tensor | None = None
    slack: int = 0  # elements readable past the end (vector blocks that overrun)
    full: tuple[int, ...] | None = None  # the node's logical shape, its batch (if any) as 1
    dense: bool = False  # read row-major by a token kernel: never a border
    constant: np.ndarray | None = None  # a bundle constant: in flash (``static const``), not in the arena

    @property
    def ctype(self) -> str:
        return CTYPES[self.dtype][0]

    @property
    def itemsize(self) -> int:
        return CTYPES[self.dtype][1]

    @property
    def row(self) -> int:
        return self.shape[2] + 2 * self.border

    @property
    def plane(self) -> int:
        return (self.shape[1] + 2 * self.border) * self.row

    @property
    def elems(self) -> int:
        return self.shape[0] * self.plane

    @property
    def nbytes(self) -> int:
        return (self.elems + self.slack) * self.itemsize

    @property
    def root(self) -> Tensor:
        return self.alias_of.root if self.alias_of is not None else self


@dataclass
class Thresholds:
    """``levels[sum_k [v >= t_k,c]]``, computed as ``levels[0] + sum_k [v >= t_k,c] * step_k``.
    ``table``: (channels, K) integers (one row for every channel when it has one row)."""

    table: np.ndarray
    levels: list[int]
    negate: list[bool] | None = None  # per channel: compare -v (a decreasing channel)
    deltas: DeltaPack | None = None  # the same thresholds in little flash (:func:`pack_deltas`)

    @property
    def count(self) -> int:
        return self.table.shape[1]

    @property
    def window(self) -> bool:
        """Many levels: count only the thresholds a block's values fall between (found by binary
        search: rows must be non-decreasing, which a hostile bundle's need not be)."""
        return self.count > WINDOW and self.ascending

    @cached_property
    def ascending(self) -> bool:
        """Every row non-decreasing (computed once: ``window`` and the emitters ask often)."""
        return bool((np.diff(self.table, axis=1) >= 0).all())

    @property
    def steps(self) -> list[int]:
        return [b - a for a, b in zip(self.levels, self.levels[1:])]

    @property
    def lookup_span(self) -> int:
        """Values a channel's level table (:meth:`lookup`) covers: from one below its first
        threshold to its last, in the widest channel."""
        return int((self.table[:, -1] - self.table[:, 0]).max()) + 2

    def looked_up(self, weights: str) -> bool:
        """Whether the ``weights`` form stores these thresholds as a level table (:meth:`lookup`):
        tables weights (not lists), many ascending thresholds, a span of at most ``LOOKUP_SPAN`` values."""
        return weights == "tables" and self.window and self.lookup_span <= LOOKUP_SPAN

    def lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """``(table (channels, span), base (channels,))``: the level of every value ``base_c + i``
        for ``i`` in ``[0, span)``, from one below the first threshold to the last (values beyond
        either end clamp to it); where :meth:`looked_up`."""
        base, span = self.table[:, 0] - 1, self.lookup_span
        levels = np.asarray(self.levels)
        rows = [levels[np.searchsorted(t, b + np.arange(span), side="right")] for t, b in zip(self.table, base)]
        return np.stack(rows), base


@dataclass
class DeltaPack:
    """A channel's K thresholds as: ``start`` thresholds equal to ``head`` (the layer's smallest) and
    ``K - end`` equal to ``tail`` (its largest: a requantization whose extreme levels the
    accumulator cannot reach puts them at the search's ends), and between them the first one,
    the smallest step and each step's excess over it in ``bits`` bits
    (0 to 8; channels one after another, bit-packed, two zero bytes after): ``t_start = first``,
    ``t_k = t_(k-1) + step + excess_k``, each clamped to ``[lo, hi]`` (as the table is). A
    requantization onto a fine uniform grid has nearly equal steps: a bit or two per threshold
    instead of two or four bytes."""

    first: np.ndarray  # (C,) int32
    step: np.ndarray  # (C,) int32
    bits: int
    packed: np.ndarray  # uint8
    lo: int
    hi: int
    count: int  # K
    start: np.ndarray = None  # (C,) thresholds before the first packed one (they are head)
    end: np.ndarray = None  # (C,) one past the last packed one (those after it are tail)
    head: int = 0
    tail: int = 0
    # The line form (``bits`` 0, ``step`` floor(A / den)): the packed thresholds are
    # ``first + floor((j A + rem) / den)`` for the j-th, A = step den + frac, decoded with adds
    # only (a remainder that carries into t when it reaches den). None: the excess form.
    frac: np.ndarray | None = None
    den: np.ndarray | None = None
    rem: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        c = self.first.size
        line = 0 if self.den is None else sum(_smallest_size(v, signed=False) for v in (self.frac, self.den, self.rem))
        return (c * (_smallest_size(self.first) + _smallest_size(self.step) + 2 * self.index_bytes + line)
                + self.packed.size)

    @property
    def index_bytes(self) -> int:
        return 1 if self.count < 256 else 2

    @property
    def row_bits(self) -> np.ndarray:
        """Where each channel's excesses start in ``packed``, in bits."""
        return np.concatenate([[0], np.cumsum(np.maximum(self.end - self.start - 1, 0) * self.bits)[:-1]])


def pack_deltas(raw: np.ndarray, lo: int, hi: int) -> DeltaPack | None:
    """``raw`` (C, K) thresholds (before clamping to ``[lo, hi]``) delta-packed; None where a
    value leaves int32 or an excess needs more than 8 bits. In a non-decreasing row, the
    thresholds equal to the table's smallest or largest value are counted, not packed: a
    saturated end would otherwise make the smallest step 0 and every excess a whole step."""
    from ..format.bundle import pack_codes

    raw = np.asarray(raw, dtype=np.int64)
    c, k = raw.shape
    if k < 2 or raw.size == 0 or int(np.abs(raw).max()) >= 1 << 30:
        return None
    rising = (np.diff(raw, axis=1) >= 0).all(axis=1)
    head, tail = int(raw.min()), int(raw.max())
    start = np.where(rising, (raw == head).sum(axis=1), 0)
    end = np.where(rising, k - (raw == tail).sum(axis=1), k)
    end = np.maximum(end, start)
    first = raw[np.arange(c), np.minimum(start, k - 1)]
    lines = [fit_line(raw[i, start[i]:end[i]] - first[i]) if rising[i] else None for i in range(c)]
    if all(f is not None for f in lines):
        (step, frac, den, rem) = (np.asarray(v, np.int64) for v in zip(*lines))
        if int(np.abs(step).max()) < 1 << 30:
            pack = DeltaPack(first.astype(np.int32), step.astype(np.int32), 0, np.zeros(2, np.uint8), int(lo), int(hi),
                             k, start.astype(np.int64), end.astype(np.int64), head, tail, frac, den, rem)
            if np.array_equal(unpack_deltas(pack), np.clip(raw, lo, hi)):  # decoded as the C will, before use
                return pack
    rows = [np.diff(raw[i, start[i]:end[i]]) for i in range(c)]
    step = np.asarray([int(d.min()) if d.size else 0 for d in rows], np.int64)
    excess = np.concatenate([d - s for d, s in zip(rows, step)] + [np.zeros(0, np.int64)])
    bits = int(excess.max()).bit_length() if excess.size else 0
    if bits > 8 or int(np.abs(step).max()) >= 1 << 30:
        return None
    packed = pack_codes(excess, bits) if bits and excess.size else np.zeros(0, np.uint8)
    pack = DeltaPack(first.astype(np.int32), step.astype(np.int32), bits, np.concatenate([packed, np.zeros(2, np.uint8)]),
                     int(lo), int(hi), k, start.astype(np.int64), end.astype(np.int64), head, tail)
    return pack if np.array_equal(unpack_deltas(pack), np.clip(raw, lo, hi)) else None


LINE_DENOMINATORS = 256  # the largest denominator a line of thresholds is searched with


def fit_line(u: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(step, frac, den, rem)`` with ``u[j] = floor((j (step den + frac) + rem) / den)`` for
    every j (``u[0]`` = 0, ``0 <= frac, rem < den``), the smallest denominator up to
    :data:`LINE_DENOMINATORS`; None where none is. Thresholds onto a uniform grid are a line's
    ceilings up to the float rounding of the requantization: usually exactly one."""
    n = u.size
    if n <= 1:
        return 0, 0, 1, 0
    j = np.arange(n, dtype=np.int64)
    # the slopes m of every line with u_j = floor(j m + c): low < m < high, over the pairs i > k
    pairs = j[:, None] > j[None, :]
    du, dj = (u[:, None] - u[None, :])[pairs], (j[:, None] - j[None, :])[pairs]
    low, high = float(((du - 1) / dj).max()), float(((du + 1) / dj).min())
    if not low < high:
        return None
    den = np.arange(1, LINE_DENOMINATORS + 1, dtype=np.int64)[:, None]  # (D, 1)
    width = int(np.ceil((high - low) * LINE_DENOMINATORS)) + 2
    a = np.floor(low * den).astype(np.int64) + np.arange(width + 1)[None, :]  # numerators from just above low
    near = (a >= low * den - 1e-6) & (a <= high * den + 1e-6)  # slopes in the interval (a superset: checked below)
    d_of, a_of = np.broadcast_to(den, a.shape)[near], a[near]  # by denominator, smallest first
    for at in range(0, d_of.size, 64):
        dd, aa = d_of[at:at + 64, None], a_of[at:at + 64, None]
        lo = (u[None, :] * dd - j * aa).max(axis=1)  # rem >= u_j den - j A
        hi = ((u[None, :] + 1) * dd - 1 - j * aa).min(axis=1)  # rem < (u_j + 1) den - j A
        ok = np.flatnonzero(lo <= hi)
        if ok.size:
            big_a, best = int(aa[ok[0], 0]), int(dd[ok[0], 0])
            return big_a // best, big_a % best, best, int(lo[ok[0]])
    return None


def unpack_deltas(p: DeltaPack) -> np.ndarray:
    """The clamped (C, K) table a :class:`DeltaPack` stands for: what the C decodes."""
    return np.clip(decoded_deltas(p), p.lo, p.hi)


def packed_in_range(p: DeltaPack) -> bool:
    """Whether every packed threshold (those from ``start`` to ``end``) decodes within ``[lo, hi]``
    already, so that the C need not clamp them."""
    table = decoded_deltas(p)
    inside = (table >= p.lo) & (table <= p.hi)
    k = np.arange(p.count)
    packed = (k >= p.start[:, None]) & (k < p.end[:, None])
    return bool(inside[packed].all())


def decoded_deltas(p: DeltaPack) -> np.ndarray:
    """The (C, K) table of a :class:`DeltaPack` before clamping."""
    from ..format.bundle import unpack_codes

    c, k = p.first.size, p.count
    counts = np.maximum(p.end - p.start - 1, 0)
    excess = unpack_codes(p.packed[:-2], p.bits, int(counts.sum())) if p.bits else np.zeros(int(counts.sum()), np.int64)
    table = np.empty((c, k), np.int64)
    at = 0
    for i in range(c):
        s, e = int(p.start[i]), int(p.end[i])
        if p.den is not None:  # the line form
            a, j = int(p.step[i]) * int(p.den[i]) + int(p.frac[i]), np.arange(max(e - s, 0), dtype=np.int64)
            table[i, :s], table[i, e:] = p.head, p.tail
            table[i, s:e] = int(p.first[i]) + (j * a + int(p.rem[i])) // int(p.den[i])
            continue
        steps = int(p.step[i]) + excess[at:at + max(e - s - 1, 0)]
        at += max(e - s - 1, 0)
        table[i, :s], table[i, e:] = p.head, p.tail
        table[i, s:e] = int(p.first[i]) + np.concatenate([[0], np.cumsum(steps)])[:e - s]
    return table


@dataclass
class Kernel:
    name: str  # C identifier
    node: str  # the manifest node it computes
    inputs: list[Tensor]
    output: Tensor
    in_place: bool = False  # the arena puts its output over an input that dies here (same layout)

    @property
    def label(self) -> str:
        """The node's name as it may appear in a C comment (:func:`comment`)."""
        return comment(self.node)


@dataclass
class ShiftLayer(Kernel):
    """Shift-add convolution (a linear layer is a 1x1 convolution of a 1x1 image)."""

    cout: int = 0
    groups: int = 1
    cin_g: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    codes: np.ndarray = None  # uint8, bit-packed as in the bundle, plus a zero byte
    code_bits: int = 1
    code_shift: list[int] = field(default_factory=list)  # per code: t of ±2^t, or -1 for a zero weight
    code_negative: list[bool] = field(default_factory=list)
    exponents: list[int] = field(default_factory=list)  # distinct t, descending
    acc_bits: int = 16
    bound: int = 0
    requant: Thresholds | None = None
    logit_bias: list[int] | None = None  # integer logits: (acc + bias_c) << shift_c
    logit_shift: list[int] | None = None
    # Segments of consecutive output positions: NSEG segments of LEN positions; the input of the
    # first position of segment s is at in0 + s * in_step, its output at out0 + s * out_step.
    segments: tuple[int, int, int, int, int] = (1, 0, 0, 0, 0)  # nseg, len, out0, out_step, in0
    in_step: int = 0
    x_step: int = 1
    chunk: int = 1
    tap_offsets: list[int] = field(default_factory=list)  # per (ci, kh, kw) of one output channel
    weight_codes: np.ndarray = None  # (cout, taps): each weight's code
    narrow_run: int = 0  # taps summed in 8-bit lanes before widening (0: sum in the accumulator width)

    @property
    def taps(self) -> int:
        return self.cin_g * self.kernel[0] * self.kernel[1]

    @property
    def offset_ctype(self) -> str:
        """The C type of the input offsets of a channel's taps."""
        return "uint16_t" if max(self.tap_offsets, default=0) < 1 << 16 else "uint32_t"

    @property
    def dsp_form(self) -> bool:
        """Whether the layer's blocks have a form for cores with the Arm DSP extension
        (:mod:`.emit_dsp`): byte inputs summed in runs along a row, a 16-bit accumulator,
        blocks of whole words."""
        return bool(self.narrow_run) and self.x_step == 1 and self.chunk % 4 == 0 and self.acc_bits == 16

    @property
    def positions(self) -> int:
        """Output positions per channel."""
        return self.segments[0] * self.segments[1]

    @property
    def block_rows(self) -> int:
        """Output rows of a tile, the block where blocks sum lanes (the DSP form): consecutive
        rows of a row-by-row layer, each of whole words, as many as fill :data:`DSP_WORDS` words
        (an 8x8 map: 4 rows of 2 words; a 28-wide one: 1 row of 7 words); 0 where a row takes
        more words or the layer's positions are strided."""
        nseg, seg_len = self.segments[:2]
        wpr = -(-seg_len // 4)
        if self.x_step != 1 or wpr > DSP_WORDS:
            return 0
        if nseg < 2 or seg_len > self.in_step:
            return 1
        return min(nseg, DSP_WORDS // wpr)

    @property
    def groups_count(self) -> int:
        return 2 * len(self.exponents)

    def keeps_codes(self, weights: str) -> bool:
        """Whether the C reads this layer's packed codes (a channel's weights start at a code bit)
        rather than its taps grouped by exponent and sign: packed weights, or in any weights form
        the by-code form of few positions (:func:`.emit_few.takes_few`)."""
        from .emit_few import takes_few  # emit_few imports this module

        return weights == "packed" or takes_few(self, weights)

    def weights_step(self, weights: str) -> int:
        """How far a channel's weights start from the one before's: code bits where the C keeps
        packed codes (:meth:`keeps_codes`), else rows of the grouped taps' start table."""
        return self.taps * self.code_bits if self.keeps_codes(weights) else self.groups_count + 1

    def base_bytes(self, weights: str) -> int:
        """The per-channel bases' bytes (:data:`.emit_shift.CHANNEL_BASES`; one that is 0 for every
        channel is a constant), the thresholds' not counted."""
        last = self.cout - 1
        ends = (last * self.output.plane, (self.groups - 1) * self.cin_g * self.inputs[0].plane,
                last * self.weights_step(weights))
        return self.cout * sum(0 if e == 0 else _smallest_size([e], signed=False) for e in ends)

    def tap_pattern(self) -> tuple[list[int], int] | None:
        """``(window, step)`` when tap ``ci * len(window) + j`` is at ``ci * step + window[j]`` (a
        convolution's taps: one input channel's kernel window, repeated a plane further per
        channel); None otherwise."""
        per = self.kernel[0] * self.kernel[1]
        taps = np.asarray(self.tap_offsets, np.int64)
        if self.cin_g < 2 or taps.size != self.cin_g * per:
            return None
        window, step = taps[:per], int(taps[per] - taps[0])
        expected = (np.arange(self.cin_g, dtype=np.int64)[:, None] * step + window[None, :]).reshape(-1)
        return ([int(v) for v in window], step) if step > 0 and np.array_equal(expected, taps) else None

    def stored_taps(self) -> list[int]:
        """The tap offsets packed weights keep in flash: the window of :meth:`tap_pattern`, or all."""
        pattern = self.tap_pattern()
        return self.tap_offsets if pattern is None else pattern[0]

    def group_of_code(self) -> list[int]:
        """Per code: its group, ``2 e`` (+2^t) or ``2 e + 1`` (-2^t) for ``t = exponents[e]``, or
        ``groups_count`` for a zero weight."""
        ng = self.groups_count
        return [ng if t < 0 or t not in self.exponents else 2 * self.exponents.index(t) + int(neg)
                for t, neg in zip(self.code_shift, self.code_negative)]

    def grouped_taps(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, starts)``: every output channel's input offsets, grouped by exponent and sign,
        concatenated, and per channel where each group starts (``(cout, groups + 1)``, absolute)."""
        group = np.asarray(self.group_of_code())[self.weight_codes]  # (cout, taps)
        ng = self.groups_count
        offsets, starts, pos = [], [], 0
        taps = np.asarray(self.tap_offsets)
        for co in range(self.cout):
            row = [pos]
            for g in range(ng):
                sel = taps[group[co] == g]
                offsets.append(sel)
                pos += sel.size
                row.append(pos)
            starts.append(row)
        return (np.concatenate(offsets) if offsets else np.zeros(0, np.int64)), np.asarray(starts, np.int64)


@dataclass
class Map(Kernel):
    """A shift layer's input stage on integers: thresholds per element (pixels, the residual
    stream, a global sum) to the layer's input level integers."""

    thresholds: Thresholds = None


@dataclass
class Unary(Kernel):
    """An elementwise map of integers, ``out[i] = expr(x)`` with ``x = a[i]`` (an op's C lowering
    writes ``expr`` from checked integers only: ``x > 0 ? x : 0`` for ReLU)."""

    expr: str = "x"


@dataclass
class Add(Kernel):
    """``x = (a << s0) + (b << s1)``, then ``out = expr(x)``: a ReLU or clamp that reads only the
    sum is fused into it (its input is never stored)."""

    shifts: tuple[int, int] = (0, 0)
    expr: str = "x"


# Elementwise kernels that read each input element before writing the output element at the same
# position: the arena may put the output over an input of the same layout that dies there.
ELEMENTWISE = (Unary, Add, Map)


@dataclass
class Lookup(Kernel):
    """A table per element: ``out = table[x - start]`` over the image (the border stays zero);
    the proof holds every ``x`` in the table."""

    table: np.ndarray = None
    start: int = 0


@dataclass
class GateShift(Kernel):
    """A per-channel gate of zeros and powers of two times an image: ``x << floor(log2 g)``, 0
    where ``g`` is 0; ``gate``: which input is the gate (C, 1, 1)."""

    gate: int = 1


@dataclass
class Concat(Kernel):
    """Images joined along channels, input ``i``'s integers shifted left by ``shifts[i]``."""

    shifts: tuple[int, ...] = ()


@dataclass
class MaxPool(Kernel):
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)


@dataclass
class GlobalSum(Kernel):
    pass


@dataclass
class WindowSum(Kernel):
    """An integer average pool over whole windows: the sum of each window (its readers'
    thresholds divide)."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)


@dataclass
class Split(Kernel):
    """A stride-s convolution's input as phases modulo s: output plane ``p * C + c`` holds, at row
    ``u`` and column ``v`` (the convolution output's grid, border ``out_border`` included), input
    pixel ``(s (u - out_border) + py - padding, s (v - out_border) + px - padding)`` of channel
    ``c``, with ``(py, px) = phases[p]``; zero outside the image. With ``thresholds``, the
    convolution's input stage is fused in: each pixel goes through its channel's thresholds (a
    :class:`Map` that would otherwise store the whole image once more)."""

    phases: list[tuple[int, int]] = field(default_factory=list)
    padding: tuple[int, int] = (0, 0)
    out_border: int = 0
    stride: int = 2
    thresholds: Thresholds | None = None
    fused_map: Map | None = None  # the Map kernel whose work it does (dropped from the program)


@dataclass
class Gather(Kernel):
    """Data movement (flatten, reshape, permute, index, expand, pad, a transpose around a shift
    layer over tokens): output element ``i`` (in the output's logical row-major order) is input
    element ``source[i]`` (the input's logical order), or zero where it is -1. The emitter turns it
    into strided loops over the physical layouts (a table where no strides exist)."""

    source: np.ndarray = None
    # The plan (:func:`.gather.plan`, once the layouts are known): strided loops, (size, input
    # step, output step) outermost first, from physical offsets ``start``; or a table of input
    # offsets (-1: zero) over the output's positions; ``zero``: clear the output first.
    axes: list = field(default_factory=list)
    start: tuple[int, int] = (0, 0)
    table: np.ndarray | None = None
    zero: bool = False

    @property
    def identity(self) -> bool:
        return bool(np.array_equal(self.source, np.arange(self.source.size)))


@dataclass
class PotCodes(Kernel):
    """A matmul operand proven to hold zeros and signed powers of two, as one byte per value:
    0 for zero, else ``t + 1`` (``|v| = 2^t``) with bit 7 set for a negative value; stored
    transposed, (batch, N, K) from (batch, K, N), when ``transpose``."""

    dims: tuple[int, int, int] = (1, 1, 1)  # batch, rows, columns of the input
    transpose: bool = True


@dataclass
class MatMul(Kernel):
    """``out[b, i, j] = sum_k a[b, i, k] * y[b, j, k]``: ``y`` is the second operand transposed;
    ``codes``: which input holds :class:`PotCodes` (the product is a shift), or None (a multiply)."""

    dims: tuple[int, int, int, int] = (1, 1, 1, 1)  # batch, M, K, N
    codes: int | None = 1


@dataclass
class Shiftmax(Kernel):
    """:func:`shiftquant.nn.shiftmax.shiftmax_codes` along each row of ``n`` values."""

    n: int = 1
    multiplier: tuple[int, int] = (1, 0)  # (k, f)
    shift_bits: int = 1


@dataclass
class LayerNormInt(Kernel):
    """:func:`shiftquant.nn.integer_norm.normalized_ints` of each row of ``n`` values, times its
    channel's sign."""

    n: int = 1
    signs: np.ndarray = None


@dataclass
class Program:
    name: str
    kernels: list[Kernel]
    tensors: list[Tensor]
    input: Tensor  # as the caller passes it (no border)
    input_kind: str  # "pixels" or "codes" (the first shift layer's input integers, host-quantized)
    input_node: dict  # the manifest's input node (host side: shape, pixels)
    input_layer: dict | None  # with "codes": the shift layer whose input quantizer the host applies
    output: Tensor
    output_kind: str  # "logits" (integers on one grid) or "accumulators" (host dequantizes)
    output_node: dict
    logit_unit: float | None
    weights: str = "packed"  # "packed": the bundle's codes; "tables", "lists": precomputed grouped offsets
    chunk: int = CHUNK  # the most positions of a vector block (shift layers, input stages, phase splits)
    arena_bytes: int = 0
    stack_bytes: int = 0

    @property
    def flash_bytes(self) -> int:
        """Bytes of constant data: packed codes, tap tables, thresholds, per-channel constants."""
        total = 0
        for k in self.kernels:
            if isinstance(k, ShiftLayer):
                if k.keeps_codes(self.weights):
                    total += k.codes.size + len(k.code_shift) + int_bytes(k.tap_offsets) * len(k.stored_taps())
                else:
                    nonzero = int((np.asarray(k.group_of_code())[k.weight_codes] < k.groups_count).sum())
                    total += int_bytes(k.tap_offsets) * nonzero + 4 * k.cout * (k.groups_count + 1)
                total += k.base_bytes(self.weights)
                if k.requant is not None and k.requant.looked_up(self.weights):
                    total += k.requant.lookup()[0].size * (1 if max(map(abs, k.requant.levels)) < 128 else 2) + 4 * k.cout
                elif k.requant is not None and k.requant.deltas is not None and self.weights == "packed":
                    total += k.requant.deltas.nbytes + _sign_bytes(k.requant)
                elif k.requant is not None:
                    total += _threshold_bytes(k.requant, k.acc_bits, negate=True)
                if k.logit_bias is not None:
                    total += 5 * k.cout
            elif isinstance(k, (Map, Split)) and k.thresholds is not None:  # compared in 16 bits where
                a = k.inputs[0]  # the input allows (emit_thresholds.compare_type)
                total += _threshold_bytes(k.thresholds, 16 if -32768 <= a.lo and a.hi + 1 <= 32767 else 32)
            elif isinstance(k, Lookup):
                total += k.table.size * k.output.itemsize
            elif isinstance(k, LayerNormInt):
                total += k.signs.size
            elif isinstance(k, Gather) and k.table is not None:
                total += k.table.size * int_bytes(k.table)
        return total + sum(t.constant.size * t.itemsize for t in self.tensors if t.constant is not None)

    @property
    def lanes_flash_bytes(self) -> int:
        """Bytes of constants x86 hosts with AVX2 compile on top of :attr:`flash_bytes`: the channel
        lanes' product tables, codes and offsets (:mod:`.emit_lanes`)."""
        from .emit_lanes import lanes_flash_bytes

        return sum(lanes_flash_bytes(k, self.weights) for k in self.kernels if isinstance(k, ShiftLayer))

    @property
    def int8_flash_bytes(self) -> int:
        """The int8 equivalent for comparison: a byte per weight, an int32 bias per output channel."""
        return sum(k.weight_codes.size + 4 * k.cout for k in self.kernels if isinstance(k, ShiftLayer))

    @property
    def ram_bytes(self) -> int:
        """Peak RAM: the arena plus the largest kernel's stack scratch (the caller's input and
        logits buffers are not counted)."""
        return self.arena_bytes + self.stack_bytes


def int_bytes(values) -> int:
    top = max((abs(int(v)) for v in values), default=0)
    return 2 if top < 1 << 16 else 4


def _threshold_bytes(t: Thresholds, bits: int, negate: bool = False) -> int:
    """The constants :meth:`.emit_thresholds.ThresholdPrinter.count` prints on every target: the
    table, the steps between unequal levels, the levels of a windowed count, and a shift layer's
    per-channel signs."""
    steps = t.steps
    total = t.table.size * bits // 8 + (_sign_bytes(t) if negate else 0)
    if len(set(steps)) > 1:
        total += len(steps) * _smallest_size(steps)
    consecutive = len(set(steps)) <= 1 and (not steps or steps[0] == 1)
    return total + (len(t.levels) * _smallest_size(t.levels) if t.window and not consecutive else 0)


def _sign_bytes(t: Thresholds) -> int:
    """A shift layer's negated channels, a bit each (none printed when no channel is)."""
    return (len(t.negate) + 7) // 8 if t.negate is not None and any(t.negate) else 0


def narrowest(values, signed: bool = True) -> str:
    """The :data:`CTYPES` key of the narrowest C type holding ``values`` (unsigned ones are tried
    first for values that are all >= 0 when not ``signed``)."""
    vals = np.asarray(values).reshape(-1)
    lo, hi = (int(vals.min()), int(vals.max())) if vals.size else (0, 0)
    for name in (("int8", "int16", "int32") if signed or lo < 0 else ("uint8", "uint16", "int32")):
        if CTYPES[name][2] <= lo and hi <= CTYPES[name][3]:
            return name
    return "int32"


def _smallest_size(values, signed: bool = True) -> int:
    return CTYPES[narrowest(values, signed)][1]


def comment(text: str, limit: int = 64) -> str:
    """``text`` (a bundle's node name) as safe text inside a C comment: letters, digits and ``_ . -
    : [ ] ( ) ,`` kept, everything else (``*/``, ``/*``, ``//``, newlines, ``\\``, ``#``, ``?``,
    non-ASCII, control characters) becomes ``_``; at most ``limit`` characters."""
    safe = "".join(ch if ch in _COMMENT_SAFE else "_" for ch in text[:limit])
    return safe + ("..." if len(text) > limit else "")


_COMMENT_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-:[](), ")
