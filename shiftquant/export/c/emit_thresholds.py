"""The C of thresholds: counting a value's level among a channel's thresholds (vectorizable
counts for vector units, a binary search per value for scalar cores), the delta-packed rows a
shift layer decodes per channel, and the input-stage kernel (``Map``), as the kernel printer's
methods (:class:`.emit._Source`)."""
from __future__ import annotations

from .ctext import array, smallest
from .emit_dsp import lane_thresholds
from .program import COUNT_LANES, DeltaPack, Map, ShiftLayer, Thresholds, packed_in_range

# Scalar cores map inputs of fewer values than this through a table of their levels (one byte each).
LUT_SPAN = 257


class ThresholdPrinter:
    """Threshold code for :class:`.emit._Source`; ``self.p`` is the program."""

    def count(self, th: Thresholds, cmp_ctype: str, name: str, table: str | None, v: str, r: str, n: str,
              row: str, pairs: tuple[int, int] | None = None, dsp_cores: bool = True,
              fused_lut: bool = False) -> tuple[str, str]:
        """Constants and code mapping ``v[0..n)`` through the threshold row ``row`` of ``th`` into
        ``r``: ``r = levels[0] + sum_k [v >= t_k] * step_k``, a vectorizable count. With many
        levels only the thresholds between the block's smallest and largest value are counted
        (those below both count for every lane, those above for none), found by binary search.
        ``pairs = (lo, hi)``: ``v`` and ``r`` are int16 arrays and ``lo <= v <= hi``; cores with
        the DSP extension then count two values a step (``sq_count_pairs``) where the
        thresholds are few, unless ``dsp_cores`` is false (they never run this code). Where scalar
        cores map each value through a level table (:meth:`takes_lut`), ``fused_lut``: the caller
        reads it itself (:meth:`lut_level`), the code is the vector units' alone."""
        levels, steps = th.levels, th.steps
        consts = array(cmp_ctype, table, th.table) if table else ""  # None: the caller decodes the rows
        uniform = len(set(steps)) <= 1
        step = steps[0] if steps else 0
        # the level after ``at`` thresholds: consecutive integers need no table
        level = (lambda at: f"({levels[0]} + (int32_t)({at}))") if uniform and step == 1 else (
            lambda at: f"{name}_levels[{at}]")
        table_needed = not (uniform and step == 1)
        if uniform:
            add = f"({v}[i] >= tk)" if step == 1 else f"(({v}[i] >= tk) ? {step} : 0)"
            load_step = ""
        else:
            consts += array(smallest(steps), f"{name}_step", steps)
            add = f"(({v}[i] >= tk) ? sk : 0)"
            load_step = f"const int32_t sk = {name}_step[k];"
        if th.window:
            consts += array(smallest(levels), f"{name}_levels", levels) if table_needed else ""
            k0, k1 = "k0", "k1"
            head = f"""\
unsigned k0 = 0, k1 = 0;
            {{   /* the thresholds that can tell this block's values apart */
                {cmp_ctype} lo = {v}[0], hi = {v}[0];
                unsigned len;
                for (i = 1; i < {n}; i++) {{ lo = {v}[i] < lo ? {v}[i] : lo; hi = {v}[i] > hi ? {v}[i] : hi; }}
                for (len = {th.count}u; len > 0;) {{  /* k0 = #(t <= lo) */
                    const unsigned half = len >> 1;
                    if ({row}[k0 + half] <= lo) {{ k0 += half + 1u; len -= half + 1u; }} else len = half;
                }}
                for (k1 = k0, len = {th.count}u - k0; len > 0;) {{  /* k1 = #(t <= hi) */
                    const unsigned half = len >> 1;
                    if ({row}[k1 + half] <= hi) {{ k1 += half + 1u; len -= half + 1u; }} else len = half;
                }}
            }}
            for (i = 0; i < {n}; i++) {r}[i] = {level("k0")};"""
        else:
            k0, k1 = "0", f"{th.count}u"
            head = f"for (i = 0; i < {n}; i++) {r}[i] = {levels[0]};"
        code = f"""\
{head}
            for (k = {k0}; k < {k1}; k++) {{
                const {cmp_ctype} tk = {row}[k];
                {load_step}
                for (i = 0; i < {n}; i++) {r}[i] = ({r}[i] + {add});
            }}"""
        if self.takes_lut(th, pairs):
            consts += self.lut_table(th, name, pairs)
            return consts, code if fused_lut else self.lut_count(name, v, r, n, pairs, code)
        dsp = self.pairs_count(th, name, v, r, n, row, pairs) if dsp_cores else ""
        if th.ascending and th.count >= 4:  # scalar cores: a binary search per value
            if not th.window and table_needed:  # only the scalar cores' code reads it
                consts += "#if SQ_SWAR\n" + array(smallest(levels), f"{name}_levels", levels) + "#endif\n"
            code = f"""\
#if SQ_SWAR{dsp}
            for (i = 0; i < {n}; i++) {{
                const {cmp_ctype} x = {v}[i];
                {bisect(row, th.count)}
                {r}[i] = {level("at")};
            }}
#else
            {code}
#endif"""
        return consts, code

    @staticmethod
    def takes_lut(th: Thresholds, pairs: tuple[int, int] | None) -> bool:
        """Whether :meth:`count` maps each value through a level table on scalar cores
        (:meth:`lut_table`: ``NAME_lut[v - lo]``): one threshold row, few input values."""
        return bool(pairs) and th.table.shape[0] == 1 and pairs[1] - pairs[0] < LUT_SPAN

    @staticmethod
    def lut_level(name: str, pairs: tuple[int, int], x: str) -> str:
        """The C of value ``x``'s level from :meth:`lut_table` (``pairs`` as it takes them)."""
        return f"{name}_lut[{x} - ({pairs[0]})]"

    @staticmethod
    def lut_table(th: Thresholds, name: str, pairs: tuple[int, int]) -> str:
        """The scalar cores' table of levels of one threshold row: one entry per value of ``pairs``."""
        lo, hi = pairs
        table = [th.levels[0] + sum(s for t, s in zip(th.table[0], th.steps) if t <= x) for x in range(lo, hi + 1)]
        return "#if SQ_SWAR\n" + array(smallest(table), f"{name}_lut", table) + "#endif\n"

    @staticmethod
    def lut_count(name: str, v: str, r: str, n: str, pairs: tuple[int, int], code: str) -> str:
        """:meth:`count` of one threshold row over few input values: on scalar cores each value's
        level from :meth:`lut_table`, elsewhere ``code``."""
        return f"""\
#if SQ_SWAR
            for (i = 0; i < {n}; i++) {r}[i] = {ThresholdPrinter.lut_level(name, pairs, f"{v}[i]")};
#else
            {code}
#endif"""

    def pairs_count(self, th: Thresholds, name: str, v: str, r: str, n: str, row: str,
                    pairs: tuple[int, int] | None) -> str:
        """The DSP-extension branch of :meth:`count` (``#if`` continued, ending in ``#elif``), or
        nothing: thresholds no value of ``[lo, hi]`` can fall on are counted up front or dropped,
        the others compared two values at a time."""
        if pairs is None or th.count > COUNT_LANES or not th.ascending or th.count < 4:
            return ""
        lo, hi = pairs
        self.helpers.add("sq_count_pairs")
        return f""" && defined(__ARM_FEATURE_SIMD32)
            {{
{lane_thresholds(th, name, row, lo, hi, "                ")}
                sq_count_pairs({v}, {r}, {n}, ts, used, SQ_BOTH16(first));
            }}
#elif SQ_SWAR"""

    def delta_packed(self, k: ShiftLayer) -> bool:
        """Whether this layer's requantization thresholds are stored delta-packed (packed weights)."""
        return self.p.weights == "packed" and k.requant is not None and k.requant.deltas is not None

    @staticmethod
    def compare_type(a) -> str:
        """The C type input ``a``'s values are compared with thresholds in (thresholds clamp to
        one past its largest value)."""
        return "int16_t" if -32768 <= a.lo and a.hi + 1 <= 32767 else "int32_t"

    def map(self, k: Map) -> str:
        a, out = k.inputs[0], k.output
        th = k.thresholds
        nm = k.name
        cmp = self.compare_type(a)
        rtype = "int16_t" if all(-32768 <= v <= 32767 for v in th.levels) else "int32_t"
        pairs = (a.lo, a.hi) if cmp == rtype == "int16_t" else None
        consts, code = self.count(th, cmp, nm, f"{nm}_thr", "v", "r", "n", "thr", pairs, fused_lut=True)
        c, h, w = a.shape
        if a.row == out.row:  # one geometry: the whole plane at once (its border is cleared after)
            nseg, length, first_in, first_out, step_in, step_out = 1, a.plane, 0, 0, 0, 0
        else:  # row by row
            nseg, length = h, w
            first_in, first_out = a.border * a.row + a.border, out.border * out.row + out.border
            step_in, step_out = a.row, out.row
        block = min(self.p.chunk, length)
        blocks = f"""\
                {cmp} v[{block}];
                {rtype} r[{block}];
                for (i = 0; i < n; i++) v[i] = ({cmp})ip[p + i];
                {code}
                for (i = 0; i < n; i++) op[p + i] = ({out.ctype})r[i];"""
        if self.takes_lut(th, pairs):  # scalar cores: each value's level straight from the table
            blocks = f"""\
#if SQ_SWAR
                for (i = 0; i < n; i++) op[p + i] = ({out.ctype}){self.lut_level(nm, pairs, "ip[p + i]")};
#else
{blocks}
#endif"""
        return consts + f"""
/* input stage of {k.label}: thresholds on its integer input -> its input levels */
{self.signature(k)}
{{
    unsigned c, seg, p, i, k;
    const {cmp} *thr SQ_ONE_FORM = {nm}_thr;
    for (c = 0; c < {c}u; c++, a += {a.plane}u, out += {out.plane}u) {{
        const {a.ctype} *ip = a + {first_in}u;
        {out.ctype} *ob = out;
        {out.ctype} *op = out + {first_out}u;
        for (seg = 0; seg < {nseg}u; seg++, ip += {step_in}u, op += {step_out}u) {{
            for (p = 0; p < {length}u; p += {block}u) {{
                const unsigned n = {length}u - p < {block}u ? {length}u - p : {block}u;
{blocks}
            }}
        }}
        {self.clear_border(out)}
        {"thr += " + str(th.count) + "u;" if th.table.shape[0] > 1 else ""}
        (void)ob; (void)k;
    }}
}}
"""


def bisect(row: str, count: int) -> str:
    """C leaving in ``at`` the number of the ``count`` ascending thresholds of ``row`` that are
    ``<= x``: for 2^k - 1 of them (the residual grid's 255) k compares unrolled, one a step with no
    branch (every read is in the row: ``at + step - 1 <= count - 1``); otherwise a loop."""
    if count & (count + 1):
        return f"""unsigned at = 0, len = {count}u;
                while (len > 0) {{
                    const unsigned half = len >> 1;
                    if ({row}[at + half] <= x) {{ at += half + 1u; len -= half + 1u; }} else len = half;
                }}"""
    steps = [1 << b for b in reversed(range(count.bit_length()))]
    return "unsigned at = 0;\n" + "\n".join(f"                at += {row}[at + {step - 1}u] <= x ? {step}u : 0u;"
                                             for step in steps)


def decode_thresholds(nm: str, d: DeltaPack, sacc: str) -> str:
    """This channel's thresholds from their first value and their steps (:class:`.program.DeltaPack`:
    a line's, or the smallest step plus packed excesses), clamped as the table would be: the
    ``start`` head values, the packed ones (a store and a step each, in unsigned arithmetic:
    the step past the last may leave int32; clamped only where one leaves the table's range),
    the tail values."""
    count = d.count
    if d.den is not None:
        what = "on a line: t += step, and one more each time the remainder reaches den"
        state = (f"uint32_t rem = {nm}_rem[co];\n            const uint32_t frac = {nm}_frac[co], "
                 f"den = {nm}_den[co];")
        advance = LINE_STEP.replace("\n", "\n                ")
    else:
        what = f"delta-packed: {d.bits} bits per step beyond the smallest"
        state = f"uint32_t bit = {nm}_ch_thr[co];\n            (void)bit;"
        excess = (f" + ((((uint32_t){nm}_excess[bit >> 3] | ((uint32_t){nm}_excess[(bit >> 3) + 1u] << 8))"
                  f" >> (bit & 7u)) & {(1 << d.bits) - 1}u)" if d.bits else "")
        advance = f"t += step{excess};\n                bit += {d.bits}u;"
    clamp = lambda v: min(max(v, d.lo), d.hi)
    return f"""        {sacc} thr_c[{count}];
        {{   /* this channel's thresholds, {what};
                those before start are {clamp(d.head)}, those from end on {clamp(d.tail)} */
            uint32_t t = (uint32_t){nm}_first[co];
            const uint32_t step = (uint32_t){nm}_dstep[co];
            const unsigned first = {nm}_dstart[co], end = {nm}_dend[co] < {count}u ? {nm}_dend[co] : {count}u;
            {state}
            unsigned kk;
            for (kk = 0; kk < first && kk < end; kk++) thr_c[kk] = {clamp(d.head)};
            for (; kk < end; kk++) {{  /* t unsigned: the step past the last may leave int32 */
                thr_c[kk] = ({sacc})({stored_value(d)});
                {advance}
            }}
            for (; kk < {count}u; kk++) thr_c[kk] = {clamp(d.tail)};
        }}"""


# A line's next threshold (``t`` unsigned: :func:`decode_thresholds` steps once past the last).
LINE_STEP = "t += step;\nrem += frac;\nif (rem >= den) { rem -= den; t++; }"


def stored_value(d: DeltaPack, t: str = "t") -> str:
    """The C value of stored threshold ``t`` (a ``uint32_t``), clamped to the table's range only
    where one leaves it (:func:`.program.packed_in_range`)."""
    v = f"(int32_t){t}"
    return v if packed_in_range(d) else f"({v} < {d.lo} ? {d.lo} : {v} > {d.hi} ? {d.hi} : {v})"


def delta_arrays(nm: str, d: DeltaPack) -> str:
    """The constants :func:`decode_thresholds` reads (besides ``NAME_ch_thr``, the excesses' first bit per channel)."""
    index_t = "uint8_t" if d.index_bytes == 1 else "uint16_t"
    text = (array(smallest(d.first), f"{nm}_first", d.first) + array(smallest(d.step), f"{nm}_dstep", d.step)
            + array(index_t, f"{nm}_dstart", d.start) + array(index_t, f"{nm}_dend", d.end))
    if d.den is None:
        return text + array("uint8_t", f"{nm}_excess", d.packed)
    return text + "".join(array(smallest(v, signed=False), f"{nm}_{part}", v)
                          for part, v in (("frac", d.frac), ("den", d.den), ("rem", d.rem)))
