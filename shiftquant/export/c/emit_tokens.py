"""The C of the kernels over whole tensors: data movement (gathers), integer matmuls, the
shiftmax and the integer LayerNorm, as the kernel printer's methods (:class:`.emit._Source`).

Each computes the integers its op's reference kernel defines (:mod:`shiftquant.nn.shiftmax`,
:mod:`shiftquant.nn.integer_norm`) in 64-bit integers, with the same floors: right shifts of
negative values and divisions round down here explicitly (``SQ_ASR64``, ``sq_floor_div``), not
by the compiler's choice. A matmul with an operand of zeros and powers of two shifts; the
shiftmax multiplies each score difference by its 15-bit logit step, the LayerNorm squares.
"""
from __future__ import annotations

from ...nn import integer_norm as IN
from ...nn import shiftmax as SM
from .ctext import array, smallest
from .program import Gather, LayerNormInt, MatMul, PotCodes, Shiftmax

HELPERS = {
    "pot_code": """\
/* 0 for 0, else t + 1 for |v| = 2^t, bit 7 set for v < 0 (v is proven zero or a power of two). */
static uint8_t sq_pot_code(int32_t v)
{
    uint32_t m = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
    unsigned t = 0;
    if (!m) return 0;
    while (m > 1u) { m >>= 1; t++; }
    return (uint8_t)((t + 1u) | (v < 0 ? 0x80u : 0u));
}
""",
    "bits": """\
/* Bits of v (0 for 0). */
static int sq_bits(uint64_t v)
{
    int b = 0;
    while (v) { b++; v >>= 1; }
    return b;
}

/* floor(sqrt(v)), digit by digit. */
static int64_t sq_isqrt(uint64_t v)
{
    uint64_t r = 0, bit = (uint64_t)1 << 62;
    while (bit > v) bit >>= 2;
    while (bit) {
        if (v >= r + bit) { v -= r + bit; r = (r >> 1) + bit; } else r >>= 1;
        bit >>= 2;
    }
    return (int64_t)r;
}

/* floor(n / d) for d > 0. */
static int64_t sq_floor_div(int64_t n, int64_t d)
{
    int64_t q = n / d;
    if (n % d != 0 && n < 0) q--;
    return q;
}
""",
}

MACROS = """\
/* floor(v / 2^s) of a signed 64-bit v, and the two's complement value of a 64-bit pattern. */
#define SQ_ASR64(v, s) ((v) >= 0 ? (v) >> (s) : ~(~(v) >> (s)))
#define SQ_S64(u) ((uint64_t)(u) < 0x8000000000000000u ? (int64_t)(uint64_t)(u) : -(int64_t)(~(uint64_t)(u)) - 1)
"""


class TokenPrinter:
    """Printers of :class:`Gather`, :class:`PotCodes`, :class:`MatMul`, :class:`Shiftmax` and
    :class:`LayerNormInt`; ``self.signature`` and ``self.helpers`` are :class:`.emit._Source`'s."""

    def gather(self, k: Gather) -> str:
        out = k.output
        clear = f"    memset(out, 0, {out.elems * out.itemsize}u);\n" if k.zero else ""
        if k.table is not None:
            c, h, w = out.shape
            body = f"""\
{array(smallest(k.table), f"{k.name}_from", k.table)}{self.signature(k)}
{{
    unsigned c, y, x, i = 0;
{clear}    for (c = 0; c < {c}u; c++) {{
        {out.ctype} *op = out + c * {out.plane}u + {out.border * out.row + out.border}u;
        for (y = 0; y < {h}u; y++, op += {out.row}u)
            for (x = 0; x < {w}u; x++, i++) if ({k.name}_from[i] >= 0) op[x] = ({out.ctype})a[{k.name}_from[i]];
    }}
}}
"""
        else:
            body = f"""\
{self.signature(k)}
{{
{clear}{self._strided(k)}}}
"""
        return f"/* move {k.label} */\n{body}"

    @staticmethod
    def _strided(k: Gather) -> str:
        """Nested loops with constant pointer steps (the innermost contiguous run a memcpy)."""
        a, out = k.inputs[0], k.output
        if k.start == (0, 0) and not k.axes and (k.source < 0).all():
            return ""
        lines = [f"    const {a.ctype} *s0 = a + {k.start[0]};", f"    {out.ctype} *d0 = out + {k.start[1]};"]
        axes, depth = list(k.axes), 0
        if axes and axes[-1][1:] == (1, 1) and a.dtype == out.dtype:
            n = axes.pop()[0]
            inner = f"memcpy(d{len(axes)}, s{len(axes)}, {n * a.itemsize}u);"
        else:
            inner = f"*d{len(axes)} = ({out.ctype})*s{len(axes)};"
        for depth, (n, ss, ds) in enumerate(axes):
            pad = "    " * (depth + 1)
            lines.append(f"{pad}{{ unsigned i{depth}; const {a.ctype} *s{depth + 1} = s{depth}; "
                         f"{out.ctype} *d{depth + 1} = d{depth};")
            lines.append(f"{pad}for (i{depth} = 0; i{depth} < {n}u; i{depth}++, s{depth + 1} += {ss}, "
                         f"d{depth + 1} += {ds}) {{")
        lines.append("    " * (len(axes) + 1) + inner)
        for depth in reversed(range(len(axes))):
            lines.append("    " * (depth + 1) + "} }")
        return "\n".join(lines) + "\n"

    def pot_codes(self, k: PotCodes) -> str:
        self.helpers.add("pot_code")
        a = k.inputs[0]
        batch, rows, cols = k.dims
        if k.transpose:
            loop = f"""\
    unsigned b, r, c;
    for (b = 0; b < {batch}u; b++, a += {rows * cols}u) {{
        const {a.ctype} *col = a;
        for (c = 0; c < {cols}u; c++, col++) {{
            const {a.ctype} *s = col;
            for (r = 0; r < {rows}u; r++, s += {cols}u) *out++ = sq_pot_code(*s);
        }}
    }}"""
        else:
            loop = f"""\
    unsigned i;
    for (i = 0; i < {batch * rows * cols}u; i++) out[i] = sq_pot_code(a[i]);"""
        return f"""\
/* {k.label}: a matmul operand of zeros and powers of two as shift codes{' (transposed)' if k.transpose else ''} */
{self.signature(k)}
{{
{loop}
}}
"""

    def matmul(self, k: MatMul) -> str:
        a, b = k.inputs
        out = k.output
        batch, m, depth, n = k.dims
        if k.codes is None:
            step, what = "acc += (uint32_t)(int32_t)ar[k] * (uint32_t)(int32_t)br[k];", "multiply-accumulate"
        else:
            code, value = ("br", "ar") if k.codes == 1 else ("ar", "br")
            step = (f"{{ const unsigned c = {code}[k]; if (c) {{ const uint32_t t = (uint32_t)(int32_t){value}[k] "
                    "<< ((c & 31u) - 1u); acc += (c & 0x80u) ? 0u - t : t; } }")
            what = "shift-add (one operand zeros and powers of two)"
        return f"""\
/* matmul {k.label}: integer {what}; the second operand transposed */
{self.signature(k)}
{{
    unsigned bt, i, j, k;
    for (bt = 0; bt < {batch}u; bt++, a += {m * depth}u, b += {n * depth}u) {{
        const {a.ctype} *ar = a;
        for (i = 0; i < {m}u; i++, ar += {depth}u) {{
            const {b.ctype} *br = b;
            for (j = 0; j < {n}u; j++, br += {depth}u) {{
                uint32_t acc = 0;
                for (k = 0; k < {depth}u; k++) {step}
                *out++ = ({out.ctype})SQ_S32(acc);
            }}
        }}
    }}
}}
"""

    def shiftmax(self, k: Shiftmax) -> str:
        out = k.output
        mult, f = k.multiplier
        top = (1 << k.shift_bits) - 1
        shift = f - SM.EXP_FRACTION_BITS
        fixed = (f"SQ_ASR64(t, {min(shift, 63)})" if shift >= 0 else f"SQ_S64((uint64_t)t << {-shift})")
        rows = out.elems // k.n
        frac, one = SM.EXP_FRACTION_BITS, SM.ONE_BITS
        return f"""\
/* shiftmax {k.label}: 2^(score step x (s - max)) by shifts, then zero or 2^-i by comparisons */
static int64_t {k.name}_exp(int64_t d)
{{
    const int64_t t = d * {mult};
    const int64_t e = {fixed};
    const int64_t p = SQ_ASR64(e, {frac});
    const int64_t r = (int64_t)((uint64_t)e & {(1 << frac) - 1}u);
    const int64_t down = -p > {one + 1} ? {one + 1} : -p;
    return (((int64_t)1 << {frac}) + r) << {one - frac} >> down;
}}

{self.signature(k)}
{{
    unsigned r, j, i;
    for (r = 0; r < {rows}u; r++, a += {k.n}u, out += {k.n}u) {{
        int64_t top = a[0], total = 0, total_sq;
        for (j = 1; j < {k.n}u; j++) if (a[j] > top) top = a[j];
        for (j = 0; j < {k.n}u; j++) total += {k.name}_exp((int64_t)a[j] - top);
        total_sq = total * total;
        for (j = 0; j < {k.n}u; j++) {{
            const int64_t e = {k.name}_exp((int64_t)a[j] - top), e2 = 2 * e * e;
            unsigned count = 0;
            for (i = 0; i < {top}u; i++) count += (e2 << (2 * i)) >= total_sq;
            out[j] = ({out.ctype})((e << {top + 1}) >= total ? (1u << count) : 0u);
        }}
    }}
}}
"""

    def layer_norm(self, k: LayerNormInt) -> str:
        self.helpers.add("bits")
        out = k.output
        n = k.n
        rows = out.elems // n
        return f"""\
/* integer LayerNorm {k.label}: z = (x - mean) / std with {IN.FRACTION_BITS} fraction bits, times each channel's sign */
{array("int8_t", f"{k.name}_sign", k.signs)}{self.signature(k)}
{{
    unsigned r, j;
    for (r = 0; r < {rows}u; r++, a += {n}u, out += {n}u) {{
        uint64_t lowest = (uint64_t)1 << 62, most = 0;
        int64_t s = 0, q = 0, v, root;
        int down, t;
        for (j = 0; j < {n}u; j++) {{
            const uint64_t m = a[j] < 0 ? 0u - (uint64_t)(int64_t)a[j] : (uint64_t)a[j];
            if (m && (m & (0u - m)) < lowest) lowest = m & (0u - m);
            if (m > most) most = m;
        }}
        down = sq_bits(lowest) - 1;  /* the row's common power of two */
        if (sq_bits(most) - {30 - n.bit_length()} > down) down = sq_bits(most) - {30 - n.bit_length()};
        if (down < 0) down = 0;
        if (down > 62) down = 62;
        for (j = 0; j < {n}u; j++) {{
            const int64_t x = SQ_ASR64((int64_t)a[j], down);
            s += x;
            q += x * x;
        }}
        v = {n} * q - s * s;
        t = (62 - sq_bits((uint64_t)v)) / 2;
        root = sq_isqrt((uint64_t)v << (2 * t));
        if (root < 1) root = 1;
        for (j = 0; j < {n}u; j++) {{
            const int64_t x = SQ_ASR64((int64_t)a[j], down);
            const int64_t z = sq_floor_div(SQ_S64((uint64_t)({n} * x - s) << ({IN.FRACTION_BITS} + t)), root);
            out[j] = ({out.ctype})({k.name}_sign[j] < 0 ? -z : z);
        }}
    }}
}}
"""
