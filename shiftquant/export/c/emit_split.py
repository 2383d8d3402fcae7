"""The C of a stride-2 convolution's phase split (:class:`.program.Split`): its input, through the
input stage's thresholds where one is fused in, into one plane per phase modulo the stride, as the
kernel printer's method (:class:`.emit._Source`). Vector units take whole rows (a constant count,
columns outside the input zeroed); scalar cores only the columns that read the input."""
from __future__ import annotations

from .ctext import array, smallest
from .program import Split


class SplitPrinter:
    """The phase split for :class:`.emit._Source`; ``self.count`` is :class:`.emit_thresholds.ThresholdPrinter`'s."""

    def split_stage(self, k: Split) -> tuple[str, str, str, str, str, str | None]:
        """``(constants, stage, compare type, scalar cores' level type, vector units' level type,
        lut)``: the fused input stage mapping ``v`` to ``r`` (each pixel through its channel's
        thresholds), a copy where there is none; ``lut``, where the scalar cores' stage is a
        table of levels, the C of column ``i``'s level straight from it."""
        a, th, nm = k.inputs[0], k.thresholds, k.name
        if th is None:
            return "", "for (i = 0; i < n; i++) r[i] = v[i];", a.ctype, a.ctype, a.ctype, None
        cmp, vtype = self.compare_type(a), smallest(th.levels)  # vector units: the levels' type
        rtype = "int16_t" if cmp == "int16_t" and vtype != "int32_t" else vtype  # scalar cores: pairs of int16
        pairs = (a.lo, a.hi) if cmp == rtype == "int16_t" else None
        consts, stage = self.count(th, cmp, nm, f"{nm}_thr", "v", "r", "n", "thr", pairs, fused_lut=True)
        lut = self.lut_level(nm, pairs, f"src[(int)({k.stride}u * i) + x0]") if self.takes_lut(th, pairs) else None
        return consts, stage, cmp, rtype, vtype, lut

    def split(self, k: Split) -> str:
        a, out = k.inputs[0], k.output
        c, h, w = a.shape
        _, rows, row = out.shape
        b, s = k.out_border, k.stride
        ph, pw = k.padding
        ys, xs = [py - ph for py, _ in k.phases], [px - pw for _, px in k.phases]
        block = min(self.p.chunk, row)
        th, nm = k.thresholds, k.name
        consts, stage, cmp, rtype, vtype, lut = self.split_stage(k)
        next_row = f"thr += {th.count}u;" if th is not None and th.table.shape[0] > 1 else ""
        what = "thresholded and split" if th is not None else "split"
        # Per phase, the output columns [i0, i1) that read the input (x = s (i - b) + px in [0, w)).
        cols = [[i for i in range(row) if 0 <= s * (i - b) + x < w] for x in xs]
        i0, i1 = [c[0] if c else 0 for c in cols], [c[-1] + 1 if c else 0 for c in cols]
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
        return consts + f"""\
/* {k.label}: its input {what} into {len(k.phases)} phases modulo {s} for the stride-{s} convolution */
{self.signature(k)}
{{
{array(smallest(ys), f"{nm}_py", ys)}{array(smallest(xs), f"{nm}_px", xs)}\
#if SQ_SWAR
{array(smallest(i0), f"{nm}_from", i0)}{array(smallest(i1), f"{nm}_to", i1)}#endif
    unsigned p, c, q, i, k;
    int u;
    for (p = 0; p < {len(k.phases)}u; p++) {{
        const {a.ctype} *ip = a + {a.border * a.row + a.border};
#if SQ_SWAR
        const unsigned i0 = {nm}_from[p], i1 = {nm}_to[p];
        const int x0 = {nm}_px[p] - {s * b};  /* column i reads x = {s} i + x0 */
#endif
        {f"const {cmp} *thr SQ_ONE_FORM = {nm}_thr;" if th is not None else ""}
        for (c = 0; c < {c}u; c++, ip += {a.plane}u, out += {out.plane}u) {{
            for (u = 0; u < {rows}; u++) {{
                const int y = {s} * (u - {b}) + {nm}_py[p];
                const int inside = y >= 0 && y < {h};
                const {a.ctype} *src = ip + (inside ? y * {a.row} : 0);
#if SQ_SWAR  /* scalar cores: only the columns that read the input, the others zeroed */
                {out.ctype} *o = out + u * {row};
                const unsigned lo = inside ? i0 : 0u, hi = inside ? i1 : 0u;
                memset(o, 0, lo * {size}u);
                memset(o + hi, 0, ({row}u - hi) * {size}u);
                {scalar}
#else  /* vector units: whole rows (a constant count), the columns outside the input zeroed */
                for (q = 0; q < {row}u; q += {block}u) {{
                    const unsigned n = {row}u - q < {block}u ? {row}u - q : {block}u;
                    {cmp} v[{block}];
                    {vtype} r[{block}];
                    for (i = 0; i < n; i++) {{
                        const int x = {s} * ((int)(q + i) - {b}) + {nm}_px[p];
                        v[i] = ({cmp})(x >= 0 && x < {w} ? src[x] : 0);
                    }}
                    {stage}
                    for (i = 0; i < n; i++) {{
                        const int x = {s} * ((int)(q + i) - {b}) + {nm}_px[p];
                        out[u * {row} + (int)(q + i)] = (inside && x >= 0 && x < {w}) ? ({out.ctype})r[i] : 0;
                    }}
                }}
#endif
            }}
            {next_row}
        }}
    }}
    (void)k;
    (void)q;
}}
"""
