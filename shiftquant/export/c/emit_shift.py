"""The C of the shift layers: the shift-add accumulation, its output stage (requantization,
integer logits) and the weight tables, as the C kernel printer's shift-layer methods (the
threshold code itself: :mod:`.emit_thresholds`)."""
from __future__ import annotations

from .ctext import Width, array, smallest
from .emit_few import walk_stage, walks
from .emit_lanes import lane_consts, lanes_body, takes_lanes
from .emit_swar import swar_runs
from .emit_thresholds import decode_thresholds, delta_arrays
from .program import ShiftLayer

# A shift layer's per-channel bases (``NAME_ch_out`` ...), each array in its narrowest type.
CHANNEL_BASES = ("out", "in", "w", "thr")


class ShiftLayerPrinter:
    """The shift-layer part of the kernel printer (:class:`.emit._Source`); ``self.p`` is the program."""

    def shift_layer(self, k: ShiftLayer) -> str:
        a, out = k.inputs[0], k.output
        nm = k.name
        w = Width(k.acc_bits)
        off_t = k.offset_ctype
        out0, in0 = k.segments[2], k.segments[4]
        packed = self.p.weights == "packed"
        consts = [f"/* {k.label}: {k.cin_g * k.groups} -> {k.cout} channels, kernel {k.kernel[0]}x{k.kernel[1]}, "
                  f"stride {k.stride}, padding {k.padding}, groups {k.groups}; weights 0 or ±2^t, t in "
                  f"{k.exponents}; |accumulator| <= {k.bound} ({k.acc_bits} bits) */\n"]
        few = self.few_positions(k)
        if few:
            consts += self.position_consts(k, off_t)
        elif packed:
            consts += [array("uint8_t", f"{nm}_codes", k.codes), array("uint8_t", f"{nm}_group", k.group_of_code()),
                       array(off_t, f"{nm}_tap", k.stored_taps())]
        else:
            offsets, starts = k.grouped_taps()
            consts += [array(off_t, f"{nm}_list", offsets), array("uint32_t", f"{nm}_start", starts)]
        if self.exponent_loop(k) and not few:
            exps = k.exponents
            consts.append(array("uint8_t", f"{nm}_gap", [0] + [a - b for a, b in zip(exps, exps[1:])]))
        walk = few and walks(k, self.delta_packed(k))
        in_lanes = not few and k.dsp_form and self.dsp_stage(k) is not None  # DSP cores count in lanes
        stage_consts, stage, rows = self.output_stage(k, w, dsp_cores=not (walk or in_lanes))
        if walk:  # one value: walk the thresholds' line, decode none
            stage_consts, stage, decode = self.signs(k) + delta_arrays(nm, k.requant.deltas), walk_stage(
                k, w, self.sign_mask(k)), ""
        else:
            decode = decode_thresholds(nm, k.requant.deltas, w.sacc) if self.delta_packed(k) else ""
        consts.append(stage_consts)
        # Per output channel: its output plane, its group's first input plane, where its weights
        # start (code bit or table row) and where its thresholds start.
        cout_g, step = k.cout // k.groups, k.weights_step(self.p.weights)
        table = [[co * out.plane, (co // cout_g) * k.cin_g * a.plane, co * step, rows[co]] for co in range(k.cout)]
        zero = []  # bases that are 0 for every channel: a constant, not an array
        for column, values in zip(CHANNEL_BASES, zip(*table)):
            if any(values):
                consts.append(array(smallest(values, signed=False), f"{nm}_ch_{column}", values))
            else:
                zero.append(f"{nm}_ch_{column}[co]")
        if few:
            weights, body, names, unused = "", self.position_sums(k, w, off_t, stage), "i", "(void)ob;"
        else:
            weights, body, names = self.weights_block(k, off_t), self.segments(k, w, off_t, stage), "seg, i, j, e"
            unused = "(void)ob; (void)e;"
        lanes = takes_lanes(k, self.p.weights)
        if lanes:
            consts.append(lane_consts(k))
        text = "".join(consts) + f"""
{self.signature(k)}
{{
{f"#if SQ_LANES{chr(10)}{lanes_body(k, w, stage, self.clear_border(out))}{chr(10)}#else" if lanes else ""}
    int co;
    SQ_PARALLEL_FOR
    for (co = 0; co < {k.cout}; co++) {{
{weights}
{decode}
{self.dsp_prologue(k, w)}
        const {a.ctype} *ip = a + {nm}_ch_in[co] + {in0}u;
        {out.ctype} *ob = out + {nm}_ch_out[co];
        {out.ctype} *op = ob + {out0}u;
        unsigned {names};
{body}
        {self.clear_border(out)}
        {unused}
    }}
{"#endif" if lanes else ""}
}}
"""
        for name in zero:
            text = text.replace(name, "0u")
        return text

    def segments(self, k: ShiftLayer, w: Width, off_t: str, stage: str) -> str:
        """The loop over a channel's segments of output positions, a block of ``chunk`` positions
        at a time: portable C, and where the layer has one the DSP-extension form (:mod:`.emit_dsp`)
        for the cores that have it (tiles of whole-word rows where they fit)."""
        a = k.inputs[0]
        nseg, seg_len, _, out_step, _ = k.segments
        ch = k.chunk
        loop = lambda block: f"""\
        for (seg = 0; seg < {nseg}u; seg++, ip += {k.in_step}u, op += {out_step}u) {{
            const {a.ctype} *base = ip;
            unsigned p;
            for (p = 0; p < {seg_len}u; p += {ch}u, base += {ch * k.x_step}u) {{
                const unsigned n = {seg_len}u - p < {ch}u ? {seg_len}u - p : {ch}u;
{block}
            }}
        }}"""
        portable = loop(f"            {w.acc} acc[{ch}];\n{self.horner(k, w)}\n{stage}")
        if not k.dsp_form:
            return portable
        dsp = self.dsp_rows_loop(k, w, off_t) if self.dsp_rows(k) else loop(self.dsp_block(k, w, off_t, stage, ch, "op + p"))
        return f"#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)\n{dsp}\n#else\n{portable}\n#endif"

    def horner(self, k: ShiftLayer, w: Width) -> str:
        """``acc`` of a block, Horner-style over the exponents from the largest: shift what is
        there, add the inputs of the ``+2^t`` weights, subtract those of the ``-2^t`` weights.
        Packed weights (least flash) loop over the exponents, so the code is printed once however
        many there are; tables (fastest) unroll them (constant shifts: 10 % faster on the host)."""
        ch, exps = k.chunk, k.exponents
        src = "src[i]" if k.x_step == 1 else f"src[i * {k.x_step}u]"
        lines = [f"            for (i = 0; i < {ch}u; i++) acc[i] = 0;"]
        if self.exponent_loop(k):  # {name}_gap[e]: the shift before exponent e's sums
            lines += [f"            for (e = 0; e < {len(exps)}u; e++) {{  /* weights ±2^t, t in {exps} */",
                      f"                if (e) for (i = 0; i < {ch}u; i++) "
                      f"acc[i] = ({w.acc})(({w.shift})acc[i] << {k.name}_gap[e]);",
                      self.sum_taps(k, w.acc, src, "2u * e", "2u * e + 1u", "+"),
                      self.sum_taps(k, w.acc, src, "2u * e + 1u", "2u * e + 2u", "-"), "            }"]
        else:
            for e, t in enumerate(exps):
                if e > 0:
                    lines.append(f"            for (i = 0; i < {ch}u; i++) "
                                 f"acc[i] = ({w.acc})(({w.shift})acc[i] << {exps[e - 1] - t});")
                lines += [f"            /* weights ±2^{t} */", self.sum_taps(k, w.acc, src, 2 * e, 2 * e + 1, "+"),
                          self.sum_taps(k, w.acc, src, 2 * e + 1, 2 * e + 2, "-")]
        if exps and exps[-1] > 0:
            lines.append(f"            for (i = 0; i < {ch}u; i++) "
                         f"acc[i] = ({w.acc})(({w.shift})acc[i] << {exps[-1]});")
        return "\n".join(lines)

    def exponent_loop(self, k: ShiftLayer) -> bool:
        """Whether :meth:`horner` loops over the exponents (packed weights, more than one)."""
        return len(k.exponents) > 1 and self.p.weights == "packed"

    def output_stage(self, k: ShiftLayer, w: Width, dsp_cores: bool = True) -> tuple[str, str, list[int]]:
        """``(constants, code, threshold row per channel)`` storing a block's ``n`` results at
        ``op[p]``: requantized levels, integer logits, or the accumulators. ``dsp_cores``: whether
        cores with the DSP extension run this code (not where they count in lanes)."""
        nm, ch, out = k.name, k.chunk, k.output
        zeros = [0] * k.cout
        if k.logit_bias is not None:
            consts = array("int32_t", f"{nm}_bias", k.logit_bias) + array("uint8_t", f"{nm}_lshift", k.logit_shift)
            return consts, f"""\
            {{
                const uint32_t bias = (uint32_t){nm}_bias[co];
                const unsigned sh = {nm}_lshift[co];
                for (i = 0; i < n; i++) op[p + i] = SQ_S32((({w.signed}(acc[i]) + bias) << sh));
            }}""", zeros
        if k.requant is None:
            return "", f"            for (i = 0; i < n; i++) op[p + i] = {w.signed}(acc[i]);", zeros
        th = k.requant
        consts = self.signs(k)
        if th.looked_up(self.p.weights):  # tables mode, many levels: one lookup per value
            lut, base = th.lookup()
            span, lut_t = lut.shape[1], smallest(th.levels)
            consts += array(lut_t, f"{nm}_lut", lut) + array("int32_t", f"{nm}_lutlo", base)
            if k.dsp_form and self.dsp_stage(k):  # cores with the DSP extension count the thresholds themselves
                at = [co * th.count for co in range(k.cout)]
                consts += ("#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)\n" + array(w.sacc, f"{nm}_thr", th.table)
                           + array(smallest(at, signed=False), f"{nm}_thr_at", at) + "#endif\n")
            return consts, f"""\
            {{   /* the level of every accumulator value between the channel's first and last threshold */
                const {lut_t} *lut = {nm}_lut + {nm}_ch_thr[co];
                const int32_t base = {nm}_lutlo[co], m = {self.sign_mask(k)};
                int32_t x[{ch}];
                for (i = 0; i < {ch}u; i++) {{
                    const int32_t v = {w.compared("acc[i]", "m")};
                    const uint32_t d = (uint32_t)v - (uint32_t)base;  /* v - base where v >= base */
                    x[i] = v < base ? 0 : d > {span - 1}u ? {span - 1} : (int32_t)d;
                }}
                for (i = 0; i < n; i++) op[p + i] = ({out.ctype})lut[x[i]];
            }}""", [co * span for co in range(k.cout)]
        rtype = w.sacc if all(-32768 <= v <= 32767 for v in th.levels) else "int32_t"
        packed = self.delta_packed(k)
        pairs = (-k.bound, k.bound) if rtype == w.sacc == "int16_t" else None
        count_consts, code = self.count(th, w.sacc, nm, None if packed else f"{nm}_thr", "v", "r", f"{ch}u", "thr",
                                        pairs, dsp_cores)
        if packed:
            consts += delta_arrays(nm, th.deltas)
            rows = [int(b) for b in th.deltas.row_bits]
        else:
            rows = [co * th.count for co in range(k.cout)]
        source = "thr_c" if packed else f"{nm}_thr + {nm}_ch_thr[co]"
        return consts + count_consts, f"""\
            {{
                const {w.sacc} *thr = {source};
                const int32_t m = {self.sign_mask(k)};
                {w.sacc} v[{ch}];
                {rtype} r[{ch}];
                unsigned k;
                for (i = 0; i < {ch}u; i++) v[i] = {w.compared("acc[i]", "m")};
                {code}
                for (i = 0; i < n; i++) op[p + i] = ({out.ctype})r[i];
                (void)k;
            }}""", rows

    @staticmethod
    def signs(k: ShiftLayer) -> str:
        """The channels whose accumulator is compared negated (a decreasing requantization), one
        bit each; nothing when there are none."""
        neg = list(k.requant.negate)
        if not any(neg):
            return ""
        bits = [sum(1 << b for b in range(8) if i + b < len(neg) and neg[i + b]) for i in range(0, len(neg), 8)]
        return array("uint8_t", f"{k.name}_neg", bits)

    @staticmethod
    def sign_mask(k: ShiftLayer) -> str:
        """-1 for a channel compared negated, else 0 (``co``: the channel)."""
        if not any(k.requant.negate):
            return "0"
        return f"(({k.name}_neg[co >> 3] >> (co & 7)) & 1) ? -1 : 0"

    def sum_taps(self, k: ShiftLayer, acc: str, src: str, first, end, sign: str) -> str:
        """``acc (sign)= sum of the inputs of taps list[start[first] .. start[end])``: directly in the
        accumulator's width, or in runs of ``narrow_run`` taps summed in byte lanes (64 per 512-bit
        register; the bound of a run's sum, taps x largest input, fits the byte) then widened."""
        a, ch = k.inputs[0], k.chunk
        widen = lambda n: f"for (i = 0; i < {n}; i++) acc[i] = ({acc})(acc[i] {sign} ({acc})s8[i]);"
        if not k.narrow_run:
            return f"""\
            for (j = start[{first}]; j < start[{end}]; j++) {{
                const {a.ctype} *src = base + list[j];
                for (i = 0; i < {ch}u; i++) acc[i] = ({acc})(acc[i] {sign} ({acc}){src});
            }}"""
        byte = "uint8_t" if a.lo >= 0 else "int8_t"
        host = f"""\
            for (j = start[{first}]; j < start[{end}];) {{
                const unsigned end = start[{end}] - j > {k.narrow_run}u ? j + {k.narrow_run}u : start[{end}];
                {byte} s8[{ch}];
                for (i = 0; i < {ch}u; i++) s8[i] = 0;
                for (; j < end; j++) {{
                    const {a.ctype} *src = base + list[j];
                    for (i = 0; i < {ch}u; i++) s8[i] = ({byte})(s8[i] + {src});
                }}
                {widen(f"{ch}u")}
            }}"""
        if ch % 4 or k.x_step != 1:
            return host
        # 32-bit cores without vector units (the Cortex-M family): four byte lanes per add, a plain
        # add for unsigned bytes (no lane carries: the run's sum fits a byte), SADD8 for signed ones
        # where the core has the DSP extension; without it, each signed byte x biased to x + 2^p >= 0
        # (XOR 0x80, then a lane-wise subtract that cannot borrow), summed as unsigned, the runs'
        # n 2^p taken off when widened.
        own = swar_runs(k, acc, first, end, sign, self.helpers)
        if a.lo >= 0:
            return f"#if SQ_SWAR\n{own}\n#else\n{host}\n#endif"
        biased = swar_runs(k, acc, first, end, sign, self.helpers, bias=max(0, (-a.lo - 1).bit_length()))  # 2^p >= -lo
        scalar = f"#elif SQ_SWAR\n{biased}\n" if biased else ""
        return f"#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)\n{own}\n{scalar}#else\n{host}\n#endif"

    def weights_block(self, k: ShiftLayer, off_t: str) -> str:
        """Declarations giving ``list`` (input offsets) and ``start`` (where each group of the
        channel begins in it): decoded from the packed codes, or read from the tables."""
        nm, ng = k.name, k.groups_count
        if self.p.weights != "packed":  # tables or lists: grouped offsets, stored
            return f"""\
        const {off_t} *list = {nm}_list;
        const uint32_t *start = {nm}_start + {nm}_ch_w[co];"""
        self.helpers.add(f"sq_group_codes_{k.code_bits}")
        return f"""\
        {off_t} list[{max(k.taps, 1)}];
        unsigned start[{ng + 2}];
        {{   /* decode this channel's codes: input offsets grouped by exponent and sign */
            uint8_t grp[{max(k.taps, 1)}];
            {off_t} *fill[{ng + 1}];  /* where each group's next offset goes */
            unsigned t, g;
            for (g = 0; g < {ng + 2}u; g++) start[g] = 0;
            sq_group_codes_{k.code_bits}({nm}_codes, {nm}_ch_w[co], grp, grp + {k.taps}u, {nm}_group, start + 1);
            for (g = 0; g < {ng + 1}u; g++) {{ start[g + 1u] += start[g]; fill[g] = list + start[g]; }}
            {place_taps(k, off_t)}
        }}"""

def place_taps(k: ShiftLayer, off_t: str) -> str:
    """Each tap's input offset into its group's place in ``list``: the offsets of one input
    channel's kernel window repeat at a fixed step per channel (read from that window and
    that step, not a table of every tap, where they do)."""
    pattern = k.tap_pattern()
    if pattern is None:
        return f"for (t = 0; t < {k.taps}u; t++) *fill[grp[t]]++ = {k.name}_tap[t];"
    window, step = pattern
    return f"""{{
            unsigned ci, w;
            uint32_t base = 0;
            for (t = 0, ci = 0; ci < {k.cin_g}u; ci++, base += {step}u)
                for (w = 0; w < {len(window)}u; w++, t++) *fill[grp[t]]++ = ({off_t})(base + {k.name}_tap[w]);
        }}"""


def group_codes_helper(name: str) -> str:
    """The text of helper ``sq_group_codes_BITS``: a channel's packed ``BITS``-bit codes to the
    group of each tap, counting each group's taps; one 32-bit read per window of as many whole
    codes as it holds, whole windows unrolled (six instructions a code on a Cortex-M4, eleven
    as a loop)."""
    bits = int(name.rsplit("_", 1)[1])
    per, mask = 25 // bits, (1 << bits) - 1  # a window is shifted by up to 7 bits
    unrolled = "\n".join(f"        g = group[(window >> {i * bits}u) & {mask}u]; grp[{i}] = (uint8_t)g; count[g]++;"
                          for i in range(per))
    return f"""\
/* grp[t] = group[code t] for the {bits}-bit codes from bit `bit` of codes, t < grp_end - grp; count[g] counts group g.
   Four bytes from a code's first hold {per} codes; three zero bytes end the codes. */
static void SQ_ONE_FORM sq_group_codes_{bits}(const uint8_t *codes, uint32_t bit, uint8_t *grp, uint8_t *const grp_end,
                                 const uint8_t *group, unsigned *count)
{{
    uint32_t window;
    unsigned g;
    for (; grp_end - grp >= {per}; grp += {per}, bit += {per * bits}u) {{  /* whole windows */
        SQ_LOAD_LE32(window, codes + (bit >> 3));
        window >>= bit & 7u;
{unrolled}
    }}
    if (grp == grp_end) return;
    SQ_LOAD_LE32(window, codes + (bit >> 3));  /* the last codes, fewer than a window */
    for (window >>= bit & 7u; grp < grp_end; window >>= {bits}u) {{
        g = group[window & {mask}u];
        *grp++ = (uint8_t)g;
        count[g]++;
    }}
}}"""
