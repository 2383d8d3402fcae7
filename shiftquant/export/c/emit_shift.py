"""The C of the shift layers: the shift-add accumulation, its input and output stages (threshold
counts, integer logits) and the weight tables, as the C kernel printer's shift-layer methods."""
from __future__ import annotations

from .ctext import Width, array, smallest
from .program import CHUNK, Map, ShiftLayer, Thresholds


class ShiftLayerPrinter:
    """The shift-layer part of the kernel printer (:class:`.emit._Source`); ``self.p`` is the program."""

    def count(self, th: Thresholds, cmp_ctype: str, name: str, table: str | None, v: str, r: str, n: str,
              row: str) -> tuple[str, str]:
        """Constants and code mapping ``v[0..n)`` through the threshold row ``row`` of ``th`` into
        ``r``: ``r = levels[0] + sum_k [v >= t_k] * step_k``, a vectorizable count. With many
        levels only the thresholds between the block's smallest and largest value are counted
        (those below both count for every lane, those above for none), found by binary search."""
        levels, steps = th.levels, th.steps
        consts = array(cmp_ctype, table, th.table) if table else ""  # None: the caller decodes the rows
        uniform = len(set(steps)) <= 1
        step = steps[0] if steps else 0
        if uniform:
            add = f"({v}[i] >= tk)" if step == 1 else f"(({v}[i] >= tk) ? {step} : 0)"
            load_step = ""
        else:
            consts += array(smallest(steps), f"{name}_step", steps)
            add = f"(({v}[i] >= tk) ? sk : 0)"
            load_step = f"const int32_t sk = {name}_step[k];"
        if th.window:
            consts += array(smallest(levels), f"{name}_levels", levels)
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
            for (i = 0; i < {n}; i++) {r}[i] = {name}_levels[k0];"""
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
        if th.ascending and th.count >= 4:  # scalar cores: a binary search per value
            if not th.window:  # only the scalar cores' code reads it
                consts += "#if SQ_SWAR\n" + array(smallest(levels), f"{name}_levels", levels) + "#endif\n"
            code = f"""\
#if SQ_SWAR
            for (i = 0; i < {n}; i++) {{
                const {cmp_ctype} x = {v}[i];
                unsigned at = 0, len = {th.count}u;
                while (len > 0) {{
                    const unsigned half = len >> 1;
                    if ({row}[at + half] <= x) {{ at += half + 1u; len -= half + 1u; }} else len = half;
                }}
                {r}[i] = {name}_levels[at];
            }}
#else
            {code}
#endif"""
        return consts, code

    def shift_layer(self, k: ShiftLayer) -> str:
        a, out = k.inputs[0], k.output
        nm = k.name
        w = Width(k.acc_bits)
        off_t = "uint16_t" if max(k.tap_offsets, default=0) < 1 << 16 else "uint32_t"
        nseg, seg_len, out0, out_step, in0 = k.segments
        ch = k.chunk
        packed = self.p.weights == "packed"
        consts = [f"/* {k.label}: {k.cin_g * k.groups} -> {k.cout} channels, kernel {k.kernel[0]}x{k.kernel[1]}, "
                  f"stride {k.stride}, padding {k.padding}, groups {k.groups}; weights 0 or ±2^t, t in "
                  f"{k.exponents}; |accumulator| <= {k.bound} ({k.acc_bits} bits) */\n"]
        if packed:
            consts += [array("uint8_t", f"{nm}_codes", k.codes), array("uint8_t", f"{nm}_group", k.group_of_code()),
                       array(off_t, f"{nm}_tap", k.tap_offsets)]
        else:
            offsets, starts = k.grouped_taps()
            consts += [array(off_t, f"{nm}_list", offsets), array("uint32_t", f"{nm}_start", starts)]
        stage_consts, stage, rows = self.output_stage(k, w)
        consts.append(stage_consts)
        decode = self.decode_thresholds(k, w) if self.delta_packed(k) else ""
        # Per output channel: its output plane, its group's first input plane, where its weights
        # start (code bit or table row) and where its thresholds start.
        cout_g = k.cout // k.groups
        table = [[co * out.plane, (co // cout_g) * k.cin_g * a.plane,
                  co * k.taps * k.code_bits if packed else co * (k.groups_count + 1), rows[co]]
                 for co in range(k.cout)]
        consts.append(f"static const uint32_t {nm}_ch[{k.cout}][4] = {{\n    "
                      + ",\n    ".join("{" + ", ".join(str(v) for v in row) + "}" for row in table) + "\n};\n")
        return "".join(consts) + f"""
{self.signature(k)}
{{
    int co;
    SQ_PARALLEL_FOR
    for (co = 0; co < {k.cout}; co++) {{
{self.weights_block(k, off_t)}
{decode}
        const {a.ctype} *ip = a + {nm}_ch[co][1] + {in0}u;
        {out.ctype} *ob = out + {nm}_ch[co][0];
        {out.ctype} *op = ob + {out0}u;
        unsigned seg, i, j;
        for (seg = 0; seg < {nseg}u; seg++, ip += {k.in_step}u, op += {out_step}u) {{
            const {a.ctype} *base = ip;
            unsigned p;
            for (p = 0; p < {seg_len}u; p += {ch}u, base += {ch * k.x_step}u) {{
                {w.acc} acc[{ch}];
                const unsigned n = {seg_len}u - p < {ch}u ? {seg_len}u - p : {ch}u;
{self.horner(k, w)}
{stage}
            }}
        }}
        {self.clear_border(out)}
        (void)ob;
    }}
}}
"""

    def horner(self, k: ShiftLayer, w: Width) -> str:
        """``acc`` of a block, Horner-style over the exponents from the largest: shift what is
        there, add the inputs of the ``+2^t`` weights, subtract those of the ``-2^t`` weights."""
        ch, exps = k.chunk, k.exponents
        src = "src[i]" if k.x_step == 1 else f"src[i * {k.x_step}u]"
        lines = [f"            for (i = 0; i < {ch}u; i++) acc[i] = 0;"]
        for e, t in enumerate(exps):
            if e > 0:
                lines.append(f"            for (i = 0; i < {ch}u; i++) "
                             f"acc[i] = ({w.acc})(({w.shift})acc[i] << {exps[e - 1] - t});")
            lines.append(f"            /* weights ±2^{t} */")
            lines.append(self.sum_taps(k, w.acc, src, 2 * e, 2 * e + 1, "+"))
            lines.append(self.sum_taps(k, w.acc, src, 2 * e + 1, 2 * e + 2, "-"))
        if exps and exps[-1] > 0:
            lines.append(f"            for (i = 0; i < {ch}u; i++) "
                         f"acc[i] = ({w.acc})(({w.shift})acc[i] << {exps[-1]});")
        return "\n".join(lines)

    def output_stage(self, k: ShiftLayer, w: Width) -> tuple[str, str, list[int]]:
        """``(constants, code, threshold row per channel)`` storing a block's ``n`` results at
        ``op[p]``: requantized levels, integer logits, or the accumulators."""
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
        consts = array("uint8_t", f"{nm}_neg", [1 if n else 0 for n in th.negate])
        lookup = th.lookup() if self.p.weights == "tables" and th.window else None
        if lookup is not None:  # tables mode, many levels: one lookup per value
            lut, base = lookup
            span, lut_t = lut.shape[1], smallest(th.levels)
            consts += array(lut_t, f"{nm}_lut", lut) + array("int32_t", f"{nm}_lutlo", base)
            return consts, f"""\
            {{   /* the level of every accumulator value between the channel's first and last threshold */
                const {lut_t} *lut = {nm}_lut + {nm}_ch[co][3];
                const int32_t base = {nm}_lutlo[co], m = {nm}_neg[co] ? -1 : 0;
                int32_t x[{ch}];
                for (i = 0; i < {ch}u; i++) {{
                    const int32_t d = ((({w.signed}(acc[i])) ^ m) - m) - base;
                    x[i] = d < 0 ? 0 : d > {span - 1} ? {span - 1} : d;
                }}
                for (i = 0; i < n; i++) op[p + i] = ({out.ctype})lut[x[i]];
            }}""", [co * span for co in range(k.cout)]
        rtype = w.sacc if all(-32768 <= v <= 32767 for v in th.levels) else "int32_t"
        packed = self.delta_packed(k)
        count_consts, code = self.count(th, w.sacc, nm, None if packed else f"{nm}_thr", "v", "r", f"{ch}u", "thr")
        if packed:
            d = th.deltas
            consts += (array("int32_t", f"{nm}_first", d.first) + array("int32_t", f"{nm}_dstep", d.step)
                       + array("uint8_t", f"{nm}_excess", d.packed))
            rows = [co * (th.count - 1) * d.bits for co in range(k.cout)]
        else:
            rows = [co * th.count for co in range(k.cout)]
        source = "thr_c" if packed else f"{nm}_thr + {nm}_ch[co][3]"
        return consts + count_consts, f"""\
            {{
                const {w.sacc} *thr = {source};
                const int32_t m = {nm}_neg[co] ? -1 : 0;
                {w.sacc} v[{ch}];
                {rtype} r[{ch}];
                unsigned k;
                for (i = 0; i < {ch}u; i++) v[i] = ({w.sacc})((({w.signed}(acc[i])) ^ m) - m);
                {code}
                for (i = 0; i < n; i++) op[p + i] = ({out.ctype})r[i];
                (void)k;
            }}""", rows

    def delta_packed(self, k: ShiftLayer) -> bool:
        """Whether this layer's requantization thresholds are stored delta-packed (packed weights)."""
        return self.p.weights == "packed" and k.requant is not None and k.requant.deltas is not None

    @staticmethod
    def decode_thresholds(k: ShiftLayer, w) -> str:
        """This channel's thresholds from their first value, smallest step and packed excesses
        (:class:`.program.DeltaPack`), clamped as the table would be."""
        nm, d, count = k.name, k.requant.deltas, k.requant.count
        excess = (f" + (int32_t)((((uint32_t){nm}_excess[bit >> 3] | ((uint32_t){nm}_excess[(bit >> 3) + 1u] << 8))"
                  f" >> (bit & 7u)) & {(1 << d.bits) - 1}u)" if d.bits else "")
        return f"""        {w.sacc} thr_c[{count}];
        {{   /* this channel's thresholds, delta-packed: {d.bits} bits per step beyond the smallest */
            int32_t t = {nm}_first[co];
            const int32_t step = {nm}_dstep[co];
            uint32_t bit = {nm}_ch[co][3];
            unsigned kk;
            thr_c[0] = ({w.sacc})(t < {d.lo} ? {d.lo} : t > {d.hi} ? {d.hi} : t);
            for (kk = 1; kk < {count}u; kk++, bit += {d.bits}u) {{
                t += step{excess};
                thr_c[kk] = ({w.sacc})(t < {d.lo} ? {d.lo} : t > {d.hi} ? {d.hi} : t);
            }}
            (void)bit;
        }}"""

    @staticmethod
    def sum_taps(k: ShiftLayer, acc: str, src: str, first: int, end: int, sign: str) -> str:
        """``acc (sign)= sum of the inputs of taps list[start[first] .. start[end])``: directly in the
        accumulator's width, or in runs of ``narrow_run`` taps summed in byte lanes (64 per 512-bit
        register; the bound of a run's sum, taps x largest input, fits the byte) then widened."""
        a, ch = k.inputs[0], k.chunk
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
                for (i = 0; i < {ch}u; i++) acc[i] = ({acc})(acc[i] {sign} ({acc})s8[i]);
            }}"""
        if ch % 4 or k.x_step != 1:
            return host
        # 32-bit cores without vector units (Cortex-M4/M7/M33): four byte lanes per add, a plain
        # add for unsigned bytes (no lane carries: the run's sum fits a byte), SADD8 for signed.
        add = (lambda w, v: f"{w} + {v}") if a.lo >= 0 else (
            lambda w, v: f"(uint32_t)__sadd8((int32_t){w}, (int32_t){v})")
        words = min(4, ch // 4)  # words summed in registers over a run's taps (16 positions)
        loads = " ".join(f"memcpy(&v{q}, src + {4 * q}u, 4u); w{q} = {add(f'w{q}', f'v{q}')};" for q in range(words))
        return f"""\
#if SQ_SWAR{"" if a.lo >= 0 else " && defined(__ARM_FEATURE_SIMD32)"}
            for (j = start[{first}]; j < start[{end}];) {{
                const unsigned end = start[{end}] - j > {k.narrow_run}u ? j + {k.narrow_run}u : start[{end}];
                const unsigned nw = ((n + {4 * words - 1}u) >> {(4 * words).bit_length() - 1}) << {words.bit_length() - 1};
                uint32_t s32[{ch // 4}];
                for (i = 0; i < nw; i += {words}u) {{  /* the block's words in use */
                    uint32_t {", ".join(f"w{q} = 0" for q in range(words))};
                    unsigned jj;
                    for (jj = j; jj < end; jj++) {{
                        const unsigned char *src = (const unsigned char *)(base + list[jj]) + 4u * i;
                        uint32_t {", ".join(f"v{q}" for q in range(words))};
                        {loads}
                    }}
                    {" ".join(f"s32[i + {q}u] = w{q};" for q in range(words))}
                }}
                j = end;
                {{
                    const {byte} *s8 = (const {byte} *)s32;
                    for (i = 0; i < nw * 4u; i++) acc[i] = ({acc})(acc[i] {sign} ({acc})s8[i]);
                }}
            }}
#else
{host}
#endif"""

    def weights_block(self, k: ShiftLayer, off_t: str) -> str:
        """Declarations giving ``list`` (input offsets) and ``start`` (where each group of the
        channel begins in it): decoded from the packed codes, or read from the tables."""
        nm, ng, mask = k.name, k.groups_count, (1 << k.code_bits) - 1
        # The bytes holding a code: two up to 9 bits (a code starts at any of a byte's 8 bits), three beyond.
        window = " | ".join(f"((uint32_t){nm}_codes[byte + {i}u] << {8 * i})"
                            for i in range(2 if k.code_bits <= 9 else 3))
        if self.p.weights == "tables":
            return f"""\
        const {off_t} *list = {nm}_list;
        const uint32_t *start = {nm}_start + {nm}_ch[co][2];"""
        return f"""\
        {off_t} list[{max(k.taps, 1)}];
        unsigned start[{ng + 2}];
        {{   /* decode this channel's codes: input offsets grouped by exponent and sign */
            uint8_t grp[{max(k.taps, 1)}];
            unsigned fill[{ng + 1}], t, g;
            uint32_t bit = {nm}_ch[co][2];
            for (g = 0; g < {ng + 2}u; g++) start[g] = 0;
            for (t = 0; t < {k.taps}u; t++, bit += {k.code_bits}u) {{
                const uint32_t byte = bit >> 3;
                const unsigned code = (unsigned)((({window}) >> (bit & 7u)) & {mask}u);
                grp[t] = {nm}_group[code];
                start[grp[t] + 1u]++;
            }}
            for (g = 0; g < {ng + 1}u; g++) {{ start[g + 1u] += start[g]; fill[g] = start[g]; }}
            for (t = 0; t < {k.taps}u; t++) list[fill[grp[t]]++] = {nm}_tap[t];
        }}"""

    def map(self, k: Map) -> str:
        a, out = k.inputs[0], k.output
        th = k.thresholds
        nm = k.name
        cmp = "int16_t" if -32768 <= a.lo and a.hi + 1 <= 32767 else "int32_t"
        rtype = "int16_t" if all(-32768 <= v <= 32767 for v in th.levels) else "int32_t"
        consts, code = self.count(th, cmp, nm, f"{nm}_thr", "v", "r", "n", "thr")
        c, h, w = a.shape
        if a.row == out.row:  # one geometry: the whole plane at once (its border is cleared after)
            nseg, length, first_in, first_out, step_in, step_out = 1, a.plane, 0, 0, 0, 0
        else:  # row by row
            nseg, length = h, w
            first_in, first_out = a.border * a.row + a.border, out.border * out.row + out.border
            step_in, step_out = a.row, out.row
        block = min(CHUNK, length)
        return consts + f"""
/* input stage of {k.label}: thresholds on its integer input -> its input levels */
{self.signature(k)}
{{
    unsigned c, seg, p, i, k;
    const {cmp} *thr = {nm}_thr;
    for (c = 0; c < {c}u; c++, a += {a.plane}u, out += {out.plane}u) {{
        const {a.ctype} *ip = a + {first_in}u;
        {out.ctype} *ob = out;
        {out.ctype} *op = out + {first_out}u;
        for (seg = 0; seg < {nseg}u; seg++, ip += {step_in}u, op += {step_out}u) {{
            for (p = 0; p < {length}u; p += {block}u) {{
                const unsigned n = {length}u - p < {block}u ? {length}u - p : {block}u;
                {cmp} v[{block}];
                {rtype} r[{block}];
                for (i = 0; i < n; i++) v[i] = ({cmp})ip[p + i];
                {code}
                for (i = 0; i < n; i++) op[p + i] = ({out.ctype})r[i];
            }}
        }}
        {self.clear_border(out)}
        {"thr += " + str(th.count) + "u;" if th.table.shape[0] > 1 else ""}
        (void)ob; (void)k;
    }}
}}
"""
