"""Tensor layouts in C: zero borders, views, and where each shift layer reads its taps.

Run once every tensor of the lowering is known (``lower._Lowering``): tensors of one image size
share one border, a flatten of a borderless tensor is a view, and each shift layer gets its tap
offsets and segments (a stride-2 convolution, or one whose stride is not a power of two, first
splits its input into phases).
"""
from __future__ import annotations

from ...errors import CodegenError
from .gather import plan
from .program import Gather, Kernel, Map, ShiftLayer, Split


def resolve_layouts(self) -> None:
    """Borders, views and the kernels each shift layer needs first, once every tensor is known
    (``self``: the lowering in progress)."""
    dense = {id(self.find(t)) for t in self.all if t.dense or t.constant is not None}
    for t in self.all:
        t.border = self.border_need.get(id(self.find(t)), 0)
        if t.border and id(self.find(t)) in dense:
            raise CodegenError(f"node {t.name!r}: read as rows by a token kernel and with a zero border by a "
                               "convolution (copy it first)")
    # Shared borders: images of one size share one border, so that a stride-1 convolution's input
    # and output rows have one length and it runs as one long vector segment (``layer_geometry``).
    widest: dict[tuple[int, int], int] = {}
    images = [t for t in self.all if t.shape[1:] != (1, 1) and id(self.find(t)) not in dense
              and self.borders == "shared"]
    for t in images:
        widest[t.shape[1:]] = max(widest.get(t.shape[1:], 0), t.border)
    for t in images:
        t.border = widest[t.shape[1:]]
    kept = []
    for k in self.kernels:
        if isinstance(k, Gather) and k.identity and k.inputs[0].border == 0 and k.output.border == 0 \
                and k.output.dtype == k.inputs[0].dtype and k.output.offset != -1:
            k.output.alias_of = k.inputs[0]  # a reshape of a borderless tensor is a view
            continue
        if isinstance(k, Gather):
            plan(k)
        kept.append(k)
    self.kernels[:] = kept
    kernels = []
    for k in self.kernels:
        if isinstance(k, ShiftLayer):
            kernels += layer_geometry(self, k)
        kernels.append(k)
    fused = {id(s.fused_map) for s in kernels if isinstance(s, Split) and s.fused_map is not None}
    self.kernels[:] = [k for k in kernels if id(k) not in fused]


def layer_geometry(self, k: ShiftLayer) -> list[Kernel]:
    """Where each output position reads its taps; returns the kernels that must run first (a
    stride-2 convolution reads its input split into phases)."""
    a, out = k.inputs[0], k.output
    kh, kw = k.kernel
    (sh, sw), (ph, pw), (dh, dw) = k.stride, k.padding, k.dilation
    ho, wo = k.out_hw
    bi, bo = a.border, out.border
    first = bo * out.row + bo
    last = (bo + ho - 1) * out.row + bo + wo
    before: list[Kernel] = []
    if (sh, sw) == (1, 1) and a.row == out.row:
        # One segment over the output plane, rows and borders between them included (the
        # border positions are computed, then cleared): long vectors on small images.
        k.tap_offsets = [ci * a.plane + y * dh * a.row + x * dw
                         for ci in range(k.cin_g) for y in range(kh) for x in range(kw)]
        delta = (bi - ph - bo) * a.row + (bi - pw - bo)
        k.segments = (1, last - first, first, 0, first + delta)
        k.in_step, k.x_step = 0, 1
    elif sh == sw and (sh == 2 or sh & (sh - 1)) and (dh, dw) == (1, 1):
        # Stride s (2, or one that is not a power of two: a ViT's patches of 7): the input split
        # into its (row, column) phases modulo s, each laid out on the output's grid; tap (y, x)
        # reads phase (y % s, x % s) shifted by (y // s, x // s).
        s = sh
        used = sorted({(y % s, x % s) for y in range(kh) for x in range(kw)})
        rows = bo + ho + (kh - 1) // s + 1
        row = max(out.row, bo + wo + (kw - 1) // s)  # the output's row, unless a tap would wrap
        split = Split(f"{self.name}_phases_{self.index[k.node]}", k.node, [a], None, phases=used,
                      padding=(ph, pw), out_border=bo, stride=s)
        fuse_input_stage(self, split)
        split.output = self.tensor(f"{k.node}.phases", a.dtype, (len(used) * a.shape[0], rows, row),
                                   a.lo, a.hi)
        t = split.output
        k.inputs = [t]
        k.tap_offsets = [(used.index((y % s, x % s)) * a.shape[0] + ci) * t.plane + (y // s) * t.row + x // s
                         for ci in range(k.cin_g) for y in range(kh) for x in range(kw)]
        if row == out.row:
            k.segments = (1, last - first, first, 0, first)
            k.in_step = 0
        else:
            k.segments = (ho, wo, first, out.row, bo * row + bo)
            k.in_step = row
        k.x_step = 1
        a = t
        before.append(split)
    else:
        if sw & (sw - 1):
            raise CodegenError(f"node {k.node!r}: stride {sw} along a row is not supported by the C backend "
                               "(1 or powers of two)")
        k.tap_offsets = [ci * a.plane + y * dh * a.row + x * dw
                         for ci in range(k.cin_g) for y in range(kh) for x in range(kw)]
        k.segments = (ho, wo, first, out.row, (bi - ph) * a.row + (bi - pw))
        k.in_step, k.x_step = sh * a.row, sw
    if a.itemsize == 1:  # byte inputs: runs of taps whose sum provably fits a byte
        top, limit = (a.hi, 255) if a.lo >= 0 else (max(-a.lo, a.hi), 127)
        k.narrow_run = limit // max(top, 1) if limit // max(top, 1) >= 4 else 0
    seg_len = k.segments[1]
    k.chunk = min(self.chunk, 1 << max(0, (seg_len - 1).bit_length()))
    a.root.slack = max(a.root.slack, k.chunk * k.x_step + 1)
    return before


def fuse_input_stage(self, split: Split) -> None:
    """A split whose input is a :class:`Map`'s output that nothing else reads applies the Map's
    thresholds itself, reading the Map's input: the thresholded image is never stored (at the
    first stride-2 block of a ResNet, the largest buffer alive)."""
    a = split.inputs[0]
    maps = [k for k in self.kernels if isinstance(k, Map) and k.output is a]
    readers = sum(x is a for k in self.kernels for x in k.inputs)
    if len(maps) != 1 or readers != 1 or a.alias_of is not None or any(t.alias_of is a for t in self.all):
        return
    split.inputs, split.thresholds, split.fused_map = list(maps[0].inputs), maps[0].thresholds, maps[0]
    self.all.remove(a)
