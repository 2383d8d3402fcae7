"""The C of a shift layer's block on cores with the Arm DSP extension (Cortex-M4/M7/M33:
``__ARM_FEATURE_SIMD32``), as the kernel printer's methods (:class:`.emit._Source`).

Four output positions share every weight, so a tap adds one 32-bit word of four input bytes:
``SADD8`` / ``SSUB8`` for signed inputs (one run takes both signs of an exponent's taps), a plain
add for unsigned ones (a run per sign; a run's sum provably fits the byte: ``narrow_run``), up to
eight words per tap in registers. A run is widened into the 16-bit
accumulators with ``SXTAB16`` / ``UXTAB16``, two lanes an instruction: ``acc2[2i]`` holds positions
``4i`` and ``4i + 2``, ``acc2[2i + 1]`` positions ``4i + 1`` and ``4i + 3``. Horner's shift between exponents
is ``SADD16`` (per-lane doubling, wrapping as the ``uint16_t`` accumulator does). The thresholds
count two lanes per step (``SSUB16`` sets a flag per lane, ``SEL`` picks the step) and four levels
leave as one word. The code is the same arithmetic as the portable block, lane for lane."""
from __future__ import annotations

from .ctext import Width
from .program import BUCKETS_FROM, COUNT_LANES, DSP_WORDS as WORDS, SEARCH_BUCKETS as BUCKETS, ShiftLayer

# Horner's doubling of the words in use, lane by lane.
DOUBLE = "sq_double_lanes(acc2, acc2 + 2u * nw, {times});"


class DspPrinter:
    """DSP-extension blocks for :class:`.emit._Source`; ``self.p`` is the program."""

    def dsp_rows(self, k: ShiftLayer) -> int:
        """Output rows of a DSP tile: :attr:`.program.ShiftLayer.block_rows`, or 0 (blocks of
        ``chunk`` positions) where the output stage is the portable one (its arrays hold one
        ``chunk``)."""
        return k.block_rows if self.dsp_stage(k) else 0

    def dsp_rows_loop(self, k: ShiftLayer, w: Width, off_t: str) -> str:
        """The segment loop of a row-by-row layer in tiles: a block is ``rows`` input rows
        (``in_step`` apart) of whole words each, loaded by the run helper at constant offsets, so
        no column between or past the rows is computed. Where the rows do not
        divide evenly, the last block starts early and recomputes rows of the one before (it
        reads no row past the map). Each row's levels are copied out."""
        a, out = k.inputs[0], k.output
        nseg, seg_len, _, out_step, _ = k.segments
        rows, step = self.dsp_rows(k), k.in_step
        width = 4 * -(-seg_len // 4)
        last = (nseg - 1) // rows * rows
        back = last + rows - nseg
        early = (f"\n            if (seg == {last}u) {{ ip -= {back * step}u; op -= {back * out_step}u; }}"
                 "  /* the last block overlaps the one before */" if back else "")
        if rows == 1:  # the levels go straight to the row
            body = f"""\
            const unsigned n = {seg_len}u;  /* one row of {width} positions, {seg_len} in use */
{self.dsp_block(k, w, off_t, "", width, "op", (1, step))}"""
        else:
            body = f"""\
            {out.ctype} dst[{rows * width}], *row_op = op;
            const unsigned n = {rows * width}u;  /* {rows} rows of {width} positions, {step} apart in the input */
{self.dsp_block(k, w, off_t, "", rows * width, "dst", (rows, step))}
            for (j = 0; j < {rows}u; j++, row_op += {out_step}u)
                memcpy(row_op, dst + j * {width}u, {seg_len * out.itemsize}u);"""
        return f"""\
        for (seg = 0; seg < {nseg}u; seg += {rows}u, ip += {rows * step}u, op += {rows * out_step}u) {{{early}
            const {a.ctype} *const base = ip;
{body}
        }}"""

    def dsp_block(self, k: ShiftLayer, w: Width, off_t: str, stage: str, ch: int, dst: str,
                  tile: tuple[int, int] = (1, 0)) -> str:
        """A block of ``ch`` positions (``n`` in use) accumulated in lanes, then its output stage
        into ``dst``: the threshold count in lanes (:meth:`dsp_stage`), else ``stage`` (the
        portable one, writing ``op[p + i]``) on the unpacked ``acc``. ``tile``: (rows, input row
        step) where the block's words lie on several rows (:meth:`dsp_rows_loop`)."""
        exps, nm = k.exponents, k.name
        self.helpers.add("sq_double_lanes")
        nwords, g = ch // 4, min(WORDS, ch // 4)
        gap = f"{nm}_gap[e]" if self.exponent_loop(k) else "gaps[e]"
        gaps = [0] + [a - b for a, b in zip(exps, exps[1:])]
        lines = [f"            uint32_t acc2[{2 * nwords}];  /* 16-bit lanes of word i: 2i: positions 4i, 4i + 2; 2i + 1: 4i + 1, 4i + 3 */",
                 f"            const unsigned nw = ((n + {4 * g - 1}u) / {4 * g}u) * {g}u;  /* the words in use, whole groups */",
                 f"            for (i = 0; i < {2 * nwords}u; i++) acc2[i] = 0;"]
        if not self.exponent_loop(k):
            lines.append(f"            static const uint8_t gaps[{len(exps)}] = {{{', '.join(map(str, gaps))}}};")
        lines += [f"            for (e = 0; e < {len(exps)}u; e++) {{  /* weights ±2^t, t in {exps} */",
                  "                " + DOUBLE.format(times=gap),
                  *([self.dsp_runs(k, off_t, "2u * e", g, "±", tile)] if k.inputs[0].lo < 0 else
                    [self.dsp_runs(k, off_t, "2u * e", g, "+", tile), self.dsp_runs(k, off_t, "2u * e + 1u", g, "-", tile)]),
                  "            }"]
        if exps and exps[-1] > 0:
            lines.append("            " + DOUBLE.format(times=f"{exps[-1]}u"))
        how = self.dsp_stage(k)
        lines.append(self.dsp_count(k, how, dst) if how else f"""\
            {{
                {w.acc} acc[{ch}];
                for (i = 0; i < {nwords}u; i++) {{
                    acc[4u * i] = ({w.acc})acc2[2u * i]; acc[4u * i + 1u] = ({w.acc})acc2[2u * i + 1u];
                    acc[4u * i + 2u] = ({w.acc})(acc2[2u * i] >> 16); acc[4u * i + 3u] = ({w.acc})(acc2[2u * i + 1u] >> 16);
                }}
{stage}
            }}""")
        return "\n".join(lines)

    def dsp_runs(self, k: ShiftLayer, off_t: str, group: str, g: int, sign: str, tile: tuple[int, int]) -> str:
        """``acc2`` (sign)= the inputs of the taps of ``list[start[group] .. start[group + 1])``,
        in runs of ``narrow_run`` taps summed in byte lanes, ``g`` words per tap on ``tile[0]``
        rows ``tile[1]`` apart (:func:`run_helper`). Signed inputs (``sign`` ``±``) take both
        groups of an exponent in one run: the ``+`` taps to ``start[group + 1]``, then the ``-``
        ones (a run's sum fits a signed byte whatever its taps' signs)."""
        both = sign == "±"
        kind = "ssum" if both else "add" if sign == "+" else "addsub"
        words = f"{g}" if tile[0] == 1 else f"{tile[0]}x{g // tile[0]}s{tile[1]}"
        name = f"sq_run_{kind}_{words}_{16 if off_t == 'uint16_t' else 32}"
        self.helpers.add(name)
        last = f"{group} + {2 if both else 1}u"
        mid = (f"""
                    const unsigned mid = start[{group} + 1u] < j ? j : start[{group} + 1u] > end ? end : start[{group} + 1u];"""
               if both else "")
        return f"""\
                for (j = start[{group}]; j < start[{last}];) {{
                    const unsigned end = start[{last}] - j > {k.narrow_run}u ? j + {k.narrow_run}u : start[{last}];{mid}
                    for (i = 0; i < nw; i += {g}u)
                        {name}((const unsigned char *)base + 4u * i, list + j, {"list + mid, " if both else ""}list + end, acc2 + 2u * i);
                    j = end;
                }}"""

    def dsp_stage(self, k: ShiftLayer) -> str | None:
        """How the output stage runs on the lanes: ``"count"`` (few thresholds, counted two lanes
        at a time), ``"search"`` (many ascending thresholds a level apart, counted
        from each value's bucket on; ``"bsearch"``: 255 of them binary-searched, where a channel
        has fewer than :data:`.program.BUCKETS_FROM` positions), or None (the portable stage on the
        unpacked accumulators). All need byte levels and int16 thresholds and steps."""
        th, out = k.requant, k.output
        if th is None or out.itemsize != 1 or not all(-32768 <= v <= 32767 for v in list(th.levels) + list(th.steps)):
            return None
        if th.count <= COUNT_LANES:
            return "count"
        if not (th.ascending and set(th.steps) == {1}):
            return None
        return "bsearch" if th.count == 255 and k.positions < BUCKETS_FROM else "search"

    def dsp_prologue(self, k: ShiftLayer, w: Width) -> str:
        """Per output channel, before its blocks: the thresholds the lane stage compares. Those
        every value of the proven range passes (``t <= -bound``) are counted up front, those none
        passes (``t > bound``) dropped, the rest kept as (threshold, step) lane pairs (``count``);
        or the channel's row and its buckets (``search``)."""
        how = self.dsp_stage(k) if k.dsp_form else None
        if how is None:
            return ""
        th, nm = k.requant, k.name
        source = ("thr_c" if self.delta_packed(k)  # decoded onto the stack
                  else f"{nm}_thr + {nm}_thr_at[co]" if th.looked_up(self.p.weights)  # _ch_thr: the level table's rows
                  else f"{nm}_thr + {nm}_ch_thr[co]")
        if how == "bsearch":
            code = f"        const {w.sacc} *const thr_l = {source};"
            self.helpers.add(f"sq_bsearch_{th.count}")
        elif how == "search":
            code = (f"        const {w.sacc} *const thr_l = {source};\n"
                    f"        unsigned char buckets[{BUCKETS}];  /* where a value's count of thresholds starts */\n"
                    f"        const unsigned shift = sq_buckets_{th.count}(thr_l, buckets);")
            self.helpers.add(f"sq_search_{th.count}")
        else:
            code = lane_thresholds(th, nm, source, -k.bound, k.bound, "        ")
        return f"#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)\n{code}\n#endif"

    def dsp_count(self, k: ShiftLayer, how: str, dst: str) -> str:
        """The output stage on the lanes: ``r = levels[0] + sum_k [v >= t_k] * step_k``, over the
        thresholds of :meth:`dsp_prologue`: two lanes at a time (``sq_count_lanes``) or from each
        value's bucket (:func:`search_helper`)."""
        th = k.requant
        m = f"(uint32_t)({self.sign_mask(k)})" if any(th.negate) else "0u"
        if how == "bsearch":
            self.helpers.add(f"sq_bsearch_{th.count}")
            return f"            sq_bsearch_{th.count}(acc2, n, thr_l, {m}, {th.levels[0]}, (unsigned char *)({dst}));"
        if how == "search":
            self.helpers.add(f"sq_search_{th.count}")
            return (f"            sq_search_{th.count}(acc2, n, thr_l, buckets, shift, {m}, {th.levels[0]}, "
                    f"(unsigned char *)({dst}));")
        self.helpers.add("sq_count_lanes")
        return (f"            sq_count_lanes(acc2, nw, ts, used, SQ_BOTH16(first), {m}, "
                f"(unsigned char *)({dst}), n);")


def lane_thresholds(th, name: str, row: str, lo: int, hi: int, indent: str) -> str:
    """C declaring ``ts`` (the (threshold, step) pairs of threshold row ``row`` that a value of
    ``[lo, hi]`` can fall on, each in both 16-bit lanes), ``used`` (their count) and ``first``
    (``levels[0]`` plus the steps of the thresholds every such value passes), for
    ``sq_count_lanes`` and ``sq_count_pairs``."""
    step = str(th.steps[0]) if len(set(th.steps)) <= 1 else f"{name}_step[kk]"
    return "\n".join(indent + line for line in f"""\
uint32_t ts[{2 * th.count}];  /* (threshold, step) pairs, each in both lanes */
int32_t first = {th.levels[0]};
unsigned used = 0;
{{
    unsigned kk;
    for (kk = 0; kk < {th.count}u; kk++) {{  /* {lo} <= v <= {hi} */
        const int32_t t = ({row})[kk], s = {step};
        if (t <= {lo}) first += s;
        else if (t <= {hi}) {{
            ts[2u * used] = SQ_BOTH16(t);
            ts[2u * used++ + 1u] = SQ_BOTH16(s);
        }}
    }}
}}""".split("\n"))


# How a run's byte sums are kept, by its inputs' signedness: the instruction adding a tap's word, the
# one subtracting it (signed inputs: a run takes both signs of an exponent's taps; unsigned inputs have
# a run per sign), and the widening of the run's word into a pair of 16-bit lane words (e: bytes 0 and 2,
# o: bytes 1 and 3; signed runs carry their sign, unsigned ones are added or subtracted).
RUN_KINDS = {
    "ssum": ("sadd8", "ssub8", ("sxtab16 %[e], %[e], {w}", "sxtab16 %[o], %[o], {w}, ror #8")),
    "add": ("add", None, ("uxtab16 %[e], %[e], {w}", "uxtab16 %[o], %[o], {w}, ror #8")),
    "addsub": ("add", None, ("uxtb16 %[v], {w}", "ssub16 %[e], %[e], %[v]", "uxtb16 %[v], {w}, ror #8",
                             "ssub16 %[o], %[o], %[v]")),
}


COUNT_LANES_HELPER = """\
#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)
/* The byte levels of nw words of lane pairs (acc2: words 2i and 2i + 1 hold positions 4i, 4i + 2
   and 4i + 1, 4i + 3) at op[0 .. n): r = l0 + sum_k [v >= t_k] * s_k per lane, over the used
   (t_k, s_k) pairs of ts; v = -acc where m is all ones (a decreasing requantization). */
static void sq_count_lanes(const uint32_t *acc2, unsigned nw, const uint32_t *ts, unsigned used, uint32_t l0,
                           uint32_t m, unsigned char *op, unsigned n)
{
    const uint32_t *const te = ts + 2u * used;
    unsigned i, q;
    for (i = 0; i < nw; i++, acc2 += 2) {
        const uint32_t ve = (uint32_t)__ssub16((int16x2_t)(acc2[0] ^ m), (int16x2_t)m);
        const uint32_t vo = (uint32_t)__ssub16((int16x2_t)(acc2[1] ^ m), (int16x2_t)m);
        const uint32_t *tp = ts;
        uint32_t re = l0, ro = l0, t, s, d, word;
        if (used)  /* SSUB16 sets a flag per lane where v >= t, SEL takes the step there */
            __asm__("1:\\n\\t" SQ_LDRD_NEXT(t, s, tp)
                    "ssub16 %[d], %[ve], %[t]\\n\\tsel %[d], %[s], %[z]\\n\\tsadd16 %[re], %[re], %[d]\\n\\t"
                    "ssub16 %[d], %[vo], %[t]\\n\\tsel %[d], %[s], %[z]\\n\\tsadd16 %[ro], %[ro], %[d]\\n\\t"
                    "cmp %[tp], %[te]\\n\\tbcc 1b"
                    : [re] "+r"(re), [ro] "+r"(ro), [tp] "+r"(tp), [t] "=&r"(t), [s] "=&r"(s), [d] "=&r"(d)
                    : [ve] "r"(ve), [vo] "r"(vo), [te] "r"(te), [z] "r"(0u) : "cc", "memory");
        word = (re & 0x00FF00FFu) | ((ro & 0x00FF00FFu) << 8);  /* positions 4i .. 4i + 3 */
        if (4u * i + 4u <= n) memcpy(op + 4u * i, &word, 4u);
        else for (q = 0; 4u * i + q < n; q++) op[4u * i + q] = (unsigned char)(word >> (8u * q));
    }
}
#endif
"""


def search_helper(name: str) -> str:
    """The text of helpers ``sq_buckets_COUNT`` and ``sq_search_COUNT``: the byte levels ``l0 + K``
    of the lanes of ``acc2`` (as ``sq_count_lanes``), ``K`` the number of ``COUNT`` ascending
    thresholds ``<= v``. Per channel the span of the thresholds is cut into :data:`BUCKETS`
    buckets of ``2^shift`` values, each holding the count at its lowest value; a value shifts to
    its bucket and counts on from there over the few thresholds in it (compares, adds and shifts:
    no multiply). Any ascending table is counted exactly; the buckets only make it fast."""
    count = int(name.split("_")[2])
    last = count - 1  # at most 255: the levels are bytes, a level apart
    return f"""\
#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)
/* start[b] = #(thr[k] <= base + (b << shift)) over the {count} ascending thresholds, base = thr[0] - 1;
   returns shift, the smallest with (thr[{last}] - base) >> shift < {BUCKETS}. */
static unsigned sq_buckets_{count}(const int16_t *thr, unsigned char *start)
{{
    const int32_t base = (int32_t)thr[0] - 1, span = (int32_t)thr[{last}] - base;
    unsigned shift = 0, b, k = 0;
    while ((span >> shift) >= {BUCKETS}) shift++;
    for (b = 0; b < {BUCKETS}u; b++) {{
        const int32_t edge = base + (int32_t)(b << shift);
        while (k < {count}u && thr[k] <= edge) k++;
        start[b] = (unsigned char)k;
    }}
    return shift;
}}

/* #(thr[k] <= v): all from thr[{last}] on, else from v's bucket on (thr[{last}] > v ends it). A value
   below base saturates to 0, bucket 0 (its count starts at 0: thr[0] > base): no branch for it. */
__attribute__((always_inline)) static inline int32_t sq_count_{count}(int32_t v, const int16_t *thr, const unsigned char *start, unsigned shift,
                                     int32_t base, int32_t hi)
{{
    unsigned k;
    if (v >= hi) return {count};
    for (k = start[(uint32_t)__usat(v - base, 16) >> shift]; thr[k] <= v; k++) {{}}  /* v - base < hi - base <= 2^16 */
    return (int32_t)k;
}}

/* op[q] = l0 + #(thr[k] <= v) for the n lanes of acc2 (position 4i + q: word 2i + (q & 1), half q & 2;
   v = -acc where m is all ones), through the buckets of sq_buckets_{count}. */
{lane_levels(f"sq_search_{count}", "const unsigned char *start, unsigned shift, ",
             f"sq_count_{count}({{v}}, thr, start, shift, base, hi)",
             f"const int32_t base = (int32_t)thr[0] - 1, hi = thr[{last}];")}
#endif
"""


def lane_levels(name: str, params: str, count: str, locals_: str = "") -> str:
    """The text of a lane stage ``name``: ``op[q] = l0 + count`` for the ``n`` lanes of acc2
    (position 4i + q: word 2i + (q & 1), half q & 2; v = -acc where m is all ones), ``count`` a C
    expression of the value ``{v}``; ``params`` come after ``thr``, ``locals_`` before the loop.
    Whole words of four lanes unchecked (one SXTAH a value), then the last one to three."""
    level = lambda at, v: f"op[{at}] = (unsigned char)(uint32_t)(l0 + {count.format(v=v)});"
    return f"""\
static void {name}(const uint32_t *acc2, unsigned n, const int16_t *thr, {params}uint32_t m, int32_t l0,
                   unsigned char *op)
{{
    const int32_t neg = (int32_t)(m & 1u);
    unsigned q;
    {locals_}
    for (q = 0; q + 4u <= n; q += 4u, acc2 += 2) {{
        const uint32_t e = acc2[0] ^ m, o = acc2[1] ^ m;
        {level("q", "SQ_S16(e & 0xFFFFu) + neg")}
        {level("q + 1u", "SQ_S16(o & 0xFFFFu) + neg")}
        {level("q + 2u", "sq_add_hi16(neg, e)")}
        {level("q + 3u", "sq_add_hi16(neg, o)")}
    }}
    for (; q < n; q++) {{  /* the last 1 to 3 lanes */
        const uint32_t w = (acc2[q & 1u] ^ m) >> (q & 2u ? 16u : 0u);
        {level("q", "SQ_S16(w & 0xFFFFu) + neg")}
    }}
}}"""


BSEARCH_255_HELPER = """\
#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)
/* op[q] = l0 + #(thr[k] <= v) for the n lanes of acc2 (as sq_search_255), by a binary search of the
   255 ascending thresholds: eight compares a value, nothing to build per channel. */
__attribute__((always_inline)) static inline int32_t sq_bcount_255(int32_t v, const int16_t *thr)
{
    unsigned at = thr[127] <= v ? 128u : 0u;  /* at + half <= 255: every read is in the row */
    at += thr[at + 63u] <= v ? 64u : 0u;
    at += thr[at + 31u] <= v ? 32u : 0u;
    at += thr[at + 15u] <= v ? 16u : 0u;
    at += thr[at + 7u] <= v ? 8u : 0u;
    at += thr[at + 3u] <= v ? 4u : 0u;
    at += thr[at + 1u] <= v ? 2u : 0u;
    at += thr[at] <= v ? 1u : 0u;
    return (int32_t)at;
}

""" + lane_levels("sq_bsearch_255", "", "sq_bcount_255({v}, thr)") + """
#endif
"""


DOUBLE_LANES_HELPER = """\
#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)
/* Horner's shift of the 16-bit lanes of [acc2, end) (an even count of words): doubled `times` times,
   each lane wrapping as a uint16_t accumulator does (SADD16); two words a step. */
static void sq_double_lanes(uint32_t *acc2, uint32_t *const end, unsigned times)
{
    for (; times; times--) {
        uint32_t *w = acc2, a, b;
        __asm__ volatile("1:\\n\\t" SQ_LDRD(a, b, w) "sadd16 %[a], %[a], %[a]\\n\\tsadd16 %[b], %[b], %[b]\\n\\t"
                SQ_STRD_NEXT(a, b, w) "cmp %[w], %[end]\\n\\tbcc 1b"
                : [w] "+r"(w), [a] "=&r"(a), [b] "=&r"(b) : [end] "r"(end) : "cc", "memory");
    }
}
#endif
"""


COUNT_PAIRS_HELPER = """\
#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)
/* r[i] = l0 + sum_k [v[i] >= t_k] * s_k for i < n, two values a step, over the used (t_k, s_k)
   pairs of ts (as sq_count_lanes). */
static void sq_count_pairs(const int16_t *v, int16_t *r, unsigned n, const uint32_t *ts, unsigned used, uint32_t l0)
{
    const uint32_t *const te = ts + 2u * used;
    unsigned i;
    for (i = 0; i < n; i += 2u) {
        const uint32_t *tp = ts;
        uint32_t x, y = l0, t, s, d;
        if (i + 1u < n) memcpy(&x, v + i, 4u);
        else x = SQ_BOTH16(v[i]);
        if (used)
            __asm__("1:\\n\\t" SQ_LDRD_NEXT(t, s, tp)
                    "ssub16 %[d], %[x], %[t]\\n\\tsel %[d], %[s], %[z]\\n\\tsadd16 %[y], %[y], %[d]\\n\\t"
                    "cmp %[tp], %[te]\\n\\tbcc 1b"
                    : [y] "+r"(y), [tp] "+r"(tp), [t] "=&r"(t), [s] "=&r"(s), [d] "=&r"(d)
                    : [x] "r"(x), [te] "r"(te), [z] "r"(0u) : "cc", "memory");
        if (i + 1u < n) memcpy(r + i, &y, 4u);
        else r[i] = (int16_t)SQ_S16(y & 0xFFFFu);
    }
}
#endif
"""


def dsp_helper(name: str) -> str:
    """The text of DSP helper ``name`` (:data:`COUNT_LANES_HELPER`, :data:`COUNT_PAIRS_HELPER`, a
    :func:`search_helper` or a :func:`run_helper`)."""
    if name.startswith("sq_search_"):
        return search_helper(name)
    if name.startswith("sq_bsearch_"):
        return BSEARCH_255_HELPER
    known = {"sq_count_lanes": COUNT_LANES_HELPER, "sq_count_pairs": COUNT_PAIRS_HELPER,
             "sq_double_lanes": DOUBLE_LANES_HELPER}
    return known.get(name) or run_helper(name)


def run_helper(name: str) -> str:
    """The text of helper ``sq_run_KIND_G_BITS`` (or ``sq_run_KIND_RxWsS_BITS``: ``R`` rows of
    ``W`` words, ``S`` bytes apart): one run of taps over ``G`` words (4G positions) summed in
    registers, then widened into ``acc2`` (``G`` pairs of lane words). Assembly, so the 8 sums,
    the pointers and the loaded word stay in the core's 13 registers: per tap a load of its
    offset, an add, and a load and a lane add per word. The first added tap's words are loaded
    as the sums (zeros where a signed run adds none); the rest go two a step (one loop test per
    pair), one first where their count is odd. A signed run (``ssum``) adds its taps ``[lp, mid)``
    and subtracts ``[mid, le)``; ``le`` is read from memory between the two."""
    _, _, kind, words, bits = name.split("_")
    rows, wpr, step = (int(v) for v in words.replace("s", "x").split("x")) if "x" in words else (1, int(words), 0)
    g, (add, sub, widen) = rows * wpr, RUN_KINDS[kind]
    at = [q // wpr * step + 4 * (q % wpr) for q in range(g)]  # each word's byte offset from the tap's input
    size = 2 if bits == "16" else 4  # bytes of a tap's offset
    load = f"{'ldrh' if size == 2 else 'ldr'} %[v], [%[lp]], #{size}"
    offset_t = "uint16_t" if bits == "16" else "uint32_t"

    def tap(op: str | None) -> list[str]:  # op None: the words are the sums
        body = [load, "add %[src], %[b], %[v]"]
        for q in range(g):
            body += [f"ldr %[w{q}], [%[src], #{at[q]}]"] if op is None else \
                [f"ldr %[v], [%[src], #{at[q]}]", f"{op} %[w{q}], %[w{q}], %[v]"]
        return body

    def pairs(op: str, top: int, check: int) -> list[str]:  # the taps [lp, stop) two a step, one first if odd
        return ["sub %[v], %[stop], %[lp]", f"tst %[v], #{size}", f"beq {check}f", *tap(op), f"b {check}f",
                f"{top}:", *tap(op), *tap(op), f"{check}:", "cmp %[lp], %[stop]", f"bcc {top}b"]

    first = ["cmp %[lp], %[stop]", "bcs 5f", *tap(None), "b 7f", "5:", *(f"mov %[w{q}], #0" for q in range(g)), "b 6f",
             "7:"] if sub else tap(None)  # a run of one sign has at least one tap
    code = [*first, *pairs(add, 1, 2), "6:"]
    if sub:
        code += ["ldr %[stop], %[le]", *pairs(sub, 3, 4)]
    text = "\\n\\t".join(code)
    widen_asm = "\\n\\t".join(x.format(w="%[w]") for x in widen)
    widens = "\n".join(f"""\
    e = acc2[{2 * q}]; o = acc2[{2 * q + 1}];
    __asm__("{widen_asm}" : [e] "+r"(e), [o] "+r"(o), [v] "=&r"(v) : [w] "r"(w{q}));
    acc2[{2 * q}] = e; acc2[{2 * q + 1}] = o;""" for q in range(g))
    taps = "[lp, mid) added, [mid, le) subtracted" if sub else f"[lp, le) ({kind})"
    mid = f"const {offset_t} *mid, " if sub else ""
    return f"""\
#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)
/* A run of taps {taps} over {4 * g} positions from b ({rows} rows of {wpr} words, {step} bytes apart),
   widened into acc2[0 .. {2 * g}). */
static void {name}(const unsigned char *b, const {offset_t} *lp, {mid}const {offset_t} *le, uint32_t *acc2)
{{
    uint32_t {", ".join(f"w{q}" for q in range(g))}, src, v, e, o;
    const {offset_t} *stop = {"mid" if sub else "le"};
    __asm__("{text}"
            : {", ".join(f'[w{q}] "=&r"(w{q})' for q in range(g))}, [lp] "+r"(lp), [stop] "+r"(stop), [src] "=&r"(src),
              [v] "=&r"(v)
            : [b] "r"(b){', [le] "m"(le)' if sub else ""} : "cc", "memory");
{widens}
}}
#endif
"""
