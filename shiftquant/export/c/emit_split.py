"""The C of a stride-2 convolution's phase split (:class:`.program.Split`): its input, through the
input stage's thresholds where one is fused in, into one plane per phase modulo the stride, as the
kernel printer's method (:class:`.emit._Source`). Scalar cores go phase by phase, only the
columns that read the input; vector units zero the output, then threshold each input row once, a
whole vector of contiguous columns at a time, and store its levels into the phases that read it."""
from __future__ import annotations

from .ctext import array, smallest
from .program import Split


class SplitPrinter:
    """The phase split for :class:`.emit._Source`; ``self.count`` is :class:`.emit_thresholds.ThresholdPrinter`'s."""

    def split_stage(self, k: Split, n: str = "n") -> tuple[str, str, str, str, str | None]:
        """``(constants, stage, compare type, level type, lut)``: the fused input stage mapping
        ``v[0 .. n)`` to ``r`` (each pixel through its channel's thresholds; int16 levels where
        the values compare as int16, pairs of them on the scalar cores), a copy where there is
        none; ``lut``, where the scalar cores' stage is a table of levels, the C of column ``i``'s
        level straight from it."""
        a, th, nm = k.inputs[0], k.thresholds, k.name
        if th is None:
            return "", f"for (i = 0; i < {n}; i++) r[i] = v[i];", a.ctype, a.ctype, None
        cmp, ltype = self.compare_type(a), smallest(th.levels)
        rtype = "int16_t" if cmp == "int16_t" and ltype != "int32_t" else ltype
        pairs = (a.lo, a.hi) if cmp == rtype == "int16_t" else None
        consts, stage = self.count(th, cmp, nm, f"{nm}_thr", "v", "r", n, "thr", pairs, fused_lut=True)
        lut = self.lut_level(nm, pairs, f"src[(int)({k.stride}u * i) + x0]") if self.takes_lut(th, pairs) else None
        return consts, stage, cmp, rtype, lut

    def split(self, k: Split) -> str:
        th, nm = k.thresholds, k.name
        ys, xs = [py - k.padding[0] for py, _ in k.phases], [px - k.padding[1] for _, px in k.phases]
        consts, stage, cmp, rtype, lut = self.split_stage(k)
        what = "thresholded and split" if th is not None else "split"
        return consts + f"""\
/* {k.label}: its input {what} into {len(k.phases)} phases modulo {k.stride} for the stride-{k.stride} convolution */
{self.signature(k)}
{{
{array(smallest(ys), f"{nm}_py", ys)}{array(smallest(xs), f"{nm}_px", xs)}\
    {f"const {cmp} *thr SQ_ONE_FORM = {nm}_thr;" if th is not None else ""}
#if SQ_SWAR
{self.split_by_phase(k, stage, cmp, rtype, lut)}
#else
{self.split_by_row(k, cmp, rtype)}
#endif
}}
"""

    @staticmethod
    def columns(k: Split) -> str:
        """``NAME_from`` and ``NAME_to``: per phase, the output columns ``[from, to)`` that read
        the input (column ``i`` reads ``x = s (i - b) + px``, in ``[0, w)``)."""
        w, row = k.inputs[0].shape[2], k.output.shape[2]
        b, s = k.out_border, k.stride
        cols = [[i for i in range(row) if 0 <= s * (i - b) + px - k.padding[1] < w] for _, px in k.phases]
        i0, i1 = [c[0] if c else 0 for c in cols], [c[-1] + 1 if c else 0 for c in cols]
        return array(smallest(i0), f"{k.name}_from", i0) + array(smallest(i1), f"{k.name}_to", i1)

    def split_by_phase(self, k: Split, stage: str, cmp: str, rtype: str, lut: str | None) -> str:
        """Scalar cores: phase by phase, each output row from the input row it reads, only the
        columns that read the input (the others zeroed)."""
        a, out, th, nm = k.inputs[0], k.output, k.thresholds, k.name
        c, h, w = a.shape
        _, rows, row = out.shape
        b, s = k.out_border, k.stride
        block = min(self.p.chunk, row)
        size = out.itemsize
        scalar = f"for (i = lo; i < hi; i++) o[i] = ({out.ctype}){lut};" if lut else f"""\
for (q = lo; q < hi; q += {block}u) {{
                    const unsigned n = hi - q < {block}u ? hi - q : {block}u;
                    {cmp} v[{block}];
                    {rtype} r[{block}];
                    for (i = 0; i < n; i++) v[i] = ({cmp})src[(int)({s}u * (q + i)) + x0];
                    {stage}
                    for (i = 0; i < n; i++) o[q + i] = ({out.ctype})r[i];
                }}"""
        return f"""\
{self.columns(k)}\
    unsigned p, c, q, i, k;
    int u;
    for (p = 0; p < {len(k.phases)}u; p++) {{
        const {a.ctype} *ip = a + {a.border * a.row + a.border};
        const unsigned i0 = {nm}_from[p], i1 = {nm}_to[p];
        const int x0 = {nm}_px[p] - {s * b};  /* column i reads x = {s} i + x0 */
        {f"thr = {nm}_thr;" if th is not None else ""}
        for (c = 0; c < {c}u; c++, ip += {a.plane}u, out += {out.plane}u) {{
            for (u = 0; u < {rows}; u++) {{
                const int y = {s} * (u - {b}) + {nm}_py[p];
                const int inside = y >= 0 && y < {h};
                const {a.ctype} *src = ip + (inside ? y * {a.row} : 0);
                {out.ctype} *o = out + u * {row};
                const unsigned lo = inside ? i0 : 0u, hi = inside ? i1 : 0u;
                memset(o, 0, lo * {size}u);
                memset(o + hi, 0, ({row}u - hi) * {size}u);
                {scalar}
            }}
            {self.next_row(k)}
        }}
    }}
    (void)k;
    (void)q;"""

    def split_by_row(self, k: Split, cmp: str, rtype: str) -> str:
        """Vector units: the output zeroed, then each input row's levels once, a block of
        contiguous columns at a time, stored into the phases that read that row."""
        a, out, nm = k.inputs[0], k.output, k.name
        c, h, w = a.shape
        _, rows, row = out.shape
        b, s = k.out_border, k.stride
        # a whole vector, its columns past the row zero; at least 32 lanes: GCC unrolls a shorter block
        # into scalars instead of vectorizing its threshold count
        block = min(self.p.chunk, max(32, 1 << (w - 1).bit_length()))
        stage = self.split_stage(k, f"{block}u")[1]
        if w <= block:  # one block a row: each phase's columns are the contiguous [from, to)
            store = f"""\
                    for (x = {nm}_from[p]; x < {nm}_to[p]; x++)  /* column x reads r[{s} (x - {b}) + xs] */
                        o[x] = ({out.ctype})r[{s} * (x - {b}) + xs];"""
        else:
            store = f"""\
                    for (x = (int)q + ((xs - (int)q) % {s} + {s}) % {s}; x < (int)(q + n); x += {s}) {{
                        const int j = (x - xs) / {s} + {b};  /* column x is the row's column j */
                        if (j >= 0 && j < {row}) o[j] = ({out.ctype})r[x - (int)q];
                    }}"""
        return f"""\
{self.columns(k) if w <= block else ""}\
    unsigned p, c, y, q, i, k;
    memset(out, 0, {len(k.phases) * c * out.plane * out.itemsize}u);  /* borders, and what no input reaches */
    for (c = 0; c < {c}u; c++) {{
        const {a.ctype} *src = a + {a.border * a.row + a.border}u + c * {a.plane}u;
        for (y = 0; y < {h}u; y++, src += {a.row}u) {{
            for (q = 0; q < {w}u; q += {block}u) {{
                const unsigned n = {w}u - q < {block}u ? {w}u - q : {block}u;
                {cmp} v[{block}];
                {rtype} r[{block}];
                for (i = 0; i < n; i++) v[i] = ({cmp})src[q + i];
                for (; i < {block}u; i++) v[i] = 0;
                {stage}
                for (p = 0; p < {len(k.phases)}u; p++) {{  /* row y is phase p's row u where y = {s} (u - {b}) + py */
                    const int dy = (int)y - {nm}_py[p], xs = {nm}_px[p];
                    const int u = dy / {s} + {b};
                    {out.ctype} *o = out + (p * {c}u + c) * {out.plane}u;
                    int x;
                    if (dy % {s} || u < 0 || u >= {rows}) continue;
                    o += u * {row};
{store}
                }}
            }}
        }}
        {self.next_row(k)}
    }}
    (void)k;"""

    @staticmethod
    def next_row(k: Split) -> str:
        """The next channel's threshold row, where each channel has its own."""
        th = k.thresholds
        return f"thr += {th.count}u;" if th is not None and th.table.shape[0] > 1 else ""
