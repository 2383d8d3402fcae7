"""The C of a shift layer with few output positions per channel (a Linear, a 1x1 or 2x2 map: at
most :data:`FEW`, a depthwise layer's :data:`FEW_GROUPED`), packed weights: each tap's inputs are added to sums per code and position in
one pass over the channel's packed codes, then Horner's rule over the exponents combines the sums.
The general form groups a channel's taps by exponent and sign before summing them, which pays for
itself over many positions but costs about twice the sums themselves at one."""
from __future__ import annotations

from .ctext import Width, array
from .emit_thresholds import stored_value
from .program import ShiftLayer

FEW = 4  # the most positions per channel an ungrouped layer sums by code
# A grouped (depthwise) layer's: its 2x2 maps over the host's shared borders are rows of 3 or 4, 6 or 8
# positions, where the general form's lanes are nearly empty (timm's mobilenetv2_050 at 1x28x28 as
# lists, one thread: 656-697 -> 549-550 us an image). The Cortex-M projects' minimal borders give
# square maps of 1, 4 or 9 and more positions, whose forms this leaves as they were.
FEW_GROUPED = 8


class FewPositionsPrinter:
    """Few-position shift layers for :class:`.emit._Source`; ``self.p`` is the program."""

    def few_positions(self, k: ShiftLayer) -> bool:
        """Whether ``k`` takes the by-code form (:func:`takes_few`)."""
        return takes_few(k, self.p.weights)

    @staticmethod
    def position_consts(k: ShiftLayer, off_t: str) -> list[str]:
        """The layer's constants: its codes, the taps' offsets unless they are a stride, and the
        positions' offsets where there are several."""
        codes = [array("uint8_t", f"{k.name}_codes", k.codes)]
        if not strided(k):
            codes.append(array(off_t, f"{k.name}_tap", k.stored_taps()))
        if k.positions > 1:
            codes.append(array("uint16_t", f"{k.name}_pos", position_offsets(k)))
        return codes

    def position_sums(self, k: ShiftLayer, w: Width, off_t: str, stage: str) -> str:
        """The channel's accumulators from sums per code and position (``sq_code_sums_*``), then
        ``stage`` storing each segment's at ``op``."""
        pattern, nm, count = k.tap_pattern(), k.name, k.positions
        stride, several = sums_stride(count), count > 1
        head = f"sq_code_sums_{k.code_bits}_{k.inputs[0].ctype[:-2]}"
        tail = (f"x{count}", f", {nm}_pos") if several else ("", "")
        if strided(k):
            helper = f"{head}_s{tail[0]}"
            call = f"{helper}({nm}_codes, {nm}_ch_w[co], ip + {pattern[0][0]}u, {pattern[1]}u, {k.cin_g}u{tail[1]}, s);"
        else:
            window, step, cin = (pattern[0], pattern[1], k.cin_g) if pattern else (k.stored_taps(), 0, 1)
            helper = f"{head}_{off_t[4:-2]}{tail[0]}"
            call = (f"{helper}({nm}_codes, {nm}_ch_w[co], ip, {nm}_tap, {len(window)}u, {step}u, {cin}u{tail[1]}, "
                    f"s);")
        self.helpers.add(helper)
        sums = 1 << k.code_bits
        if not several:
            return f"""\
        {{   /* one position: each tap's input summed by its code, then Horner over the exponents */
            uint32_t s[{sums}];
            const unsigned n = 1u, p = 0u;
            {w.acc} acc[1];
            for (i = 0; i < {sums}u; i++) s[i] = 0;
            {call}
            acc[0] = ({w.acc})({horner_by_code(k, lambda c: f"s[{c}]")});
{stage}
        }}"""
        nseg, seg_len, _, out_step, _ = k.segments
        return f"""\
        {{   /* {count} positions: each tap's inputs summed by its code, then Horner over the exponents, a row at a time */
            uint32_t s[{sums * stride}];
            const uint32_t *sr = s;
            const unsigned n = {seg_len}u, p = 0u;
            unsigned seg;
            {w.acc} acc[{k.chunk}];
            for (i = 0; i < {sums * stride}u; i++) s[i] = 0;
            {call}
            for (seg = 0; seg < {nseg}u; seg++, sr += {seg_len}u, op += {out_step}u) {{
                for (i = 0; i < {k.chunk}u; i++)
                    acc[i] = i < {seg_len}u ? ({w.acc})({horner_by_code(k, lambda c: f"sr[{c * stride}u + i]")}) : 0u;
{stage}
            }}
        }}"""


def takes_few(k: ShiftLayer, weights: str) -> bool:
    """Whether ``k`` takes the by-code form: codes of at most 4 bits where more than one position
    (16 sums per position, and the positions' offsets in 16 bits), and either an ungrouped layer of
    packed weights, at most :data:`FEW` positions and no DSP form, or in any weights form a grouped
    (depthwise) layer of at most :data:`FEW_GROUPED`, whose few taps a channel the general form's
    per-group loops cost more than they sum (timm's ``mobilenetv2_050`` at 1x28x28 as lists on the
    host: 1.2x as fast with its 1x1 depthwise layers by code, 1.2x again with its 2x2 ones)."""
    count = k.positions
    if k.groups == 1 and (weights != "packed" or k.dsp_form or count > FEW):
        return False
    if count > FEW_GROUPED or k.chunk < k.segments[1]:
        return False
    return count == 1 or (k.code_bits <= 4 and max(position_offsets(k)) < 1 << 16)


def sums_bytes(k: ShiftLayer, weights: str) -> int:
    """The stack its sums take where ``k`` takes the by-code form, else 0."""
    return (4 * sums_stride(k.positions)) << k.code_bits if takes_few(k, weights) else 0


def sums_stride(count: int) -> int:
    """Sums kept per code for ``count`` positions: a power of two, so a code's sums are a shift away."""
    return 1 << (count - 1).bit_length()


def position_offsets(k: ShiftLayer) -> list[int]:
    """Each output position's input offset from the channel's first (row by row)."""
    nseg, seg_len = k.segments[:2]
    return [r * k.in_step + i * k.x_step for r in range(nseg) for i in range(seg_len)]


def walks(k: ShiftLayer, packed_thresholds: bool) -> bool:
    """Whether a by-code layer of one position counts its value's thresholds along their line
    (:func:`walk_stage`): delta-packed lines (``packed_thresholds``), rising, a level apart."""
    th = k.requant
    return packed_thresholds and k.positions == 1 and th.deltas.den is not None and th.ascending and set(th.steps) == {1}


def walk_stage(k: ShiftLayer, w: Width, sign_mask: str) -> str:
    """The output stage of a one-position layer whose thresholds are a rising line a level apart:
    ``levels[0]`` plus the count of the channel's thresholds ``<= v``, found by binary lifting
    along the line instead of decoding it: from the first threshold at most ``v``, jumps of
    ``2^j`` thresholds, the largest first, each taken where the threshold it lands on is at most
    ``v`` (the line rises, so every one it passes is too). A jump's size is the step's ``2^j``
    multiple, doubled with adds from the step (``2^j (step den + frac) / den``: its whole part and
    remainder, the remainder reduced once a doubling, no multiply). About ``3 log2(count)`` steps
    a value against ``count / 2`` for a walk from the first (timm's ``mobilenetv2_035`` head,
    1280 channels of the residual grid's 255 thresholds, on the Cortex-M4: about 1.5 k instructions
    a channel before). The same clamped thresholds as :func:`.emit_thresholds.decode_thresholds`."""
    nm, th = k.name, k.requant
    d, count = th.deltas, th.count
    clamp = lambda v: min(max(v, d.lo), d.hi)
    bits = count.bit_length()  # jumps of 2^(bits - 1) down to 1 reach any of count thresholds
    return f"""\
            {{   /* one value: its thresholds counted along the channel's line by jumps of 2^j of them */
                const int32_t m = {sign_mask};
                const int32_t v = {w.compared("acc[0]", "m")};
                const unsigned first = {nm}_dstart[co], end = {nm}_dend[co] < {count}u ? {nm}_dend[co] : {count}u;
                unsigned c = 0;
                if ({clamp(d.head)} <= v) {{
                    uint32_t t = (uint32_t){nm}_first[co], rem = {nm}_rem[co];
                    const uint32_t den = {nm}_den[co];
                    c = first < end ? first : end;
                    if (c < end && {stored_value(d)} <= v) {{  /* threshold c is at most v */
                        uint32_t whole[{bits}], part[{bits}];  /* a jump of 2^j thresholds: t += whole, rem += part */
                        unsigned j;
                        whole[0] = (uint32_t){nm}_dstep[co];
                        part[0] = {nm}_frac[co];
                        for (j = 1; j < {bits}u; j++) {{  /* unsigned: a jump too long to take may wrap */
                            const uint32_t twice = part[j - 1] << 1;
                            const uint32_t carry = twice >= den;
                            whole[j] = (whole[j - 1] << 1) + carry;
                            part[j] = carry ? twice - den : twice;
                        }}
                        for (j = {bits}u; j-- > 0;) {{
                            const uint32_t r = rem + part[j], up = r >= den, there = t + whole[j] + up;
                            if (c + (1u << j) < end && {stored_value(d, "there")} <= v) {{  /* threshold c + 2^j */
                                c += 1u << j;
                                t = there;
                                rem = up ? r - den : r;
                            }}
                        }}
                        c++;  /* thresholds up to c are at most v */
                    }}
                    if (c == end && {clamp(d.tail)} <= v) c = {count}u;
                }}
                op[0] = ({k.output.ctype})({th.levels[0]} + (int32_t)c);
                (void)n; (void)p;
            }}"""


def strided(k: ShiftLayer) -> bool:
    """Whether each input channel has one tap, a fixed step apart (a 1x1 convolution, a Linear)."""
    pattern = k.tap_pattern()
    return pattern is not None and len(pattern[0]) == 1


def horner_by_code(k: ShiftLayer, ref) -> str:
    """The C expression of an accumulator from its sums per code, ``ref(code)`` each: over the
    exponents from the largest, shift what is there and add the ``+2^t`` codes' sums less the
    ``-2^t`` ones' (unsigned: it wraps as the accumulator does)."""
    group = k.group_of_code()
    codes = lambda g: " + ".join(ref(c) for c, gc in enumerate(group) if gc == g) or "0u"
    exps, h = k.exponents, "0u"
    for e, t in enumerate(exps):
        shift = exps[e - 1] - t if e else 0
        h = f"((({h}) << {shift}) + ({codes(2 * e)}) - ({codes(2 * e + 1)}))" if e else f"(({codes(0)}) - ({codes(1)}))"
    return f"({h}) << {exps[-1]}" if exps and exps[-1] else h


def code_sums_helper(name: str) -> str:
    """The text of helper ``sq_code_sums_BITS_TYPE_OFF[xP]``: ``s[code] += x[tap]`` over a
    channel's taps, reading ``BITS``-bit codes a 32-bit window at a time (as
    ``sq_group_codes_BITS``). ``OFF`` ``s``: tap ``t`` at ``x + t * step``; 16 or 32: at
    ``x + ci * step + win[w]``, ``win`` that wide. With ``xP``, P positions ``pos[q]`` apart:
    ``s[code * S + q] += x[tap + pos[q]]`` (``S``: :func:`sums_stride`)."""
    _, _, _, bits, ctype, off = name.split("_")
    off, count = (off.split("x")[0], int(off.split("x")[1])) if "x" in off else (off, 1)
    bits = int(bits)
    per, mask = 25 // bits, (1 << bits) - 1
    pos = ", const uint16_t *pos" if count > 1 else ""
    offsets = ("\n    const unsigned " + ", ".join(f"p{q} = pos[{q}]" for q in range(count)) + ";") if count > 1 else ""
    shift = sums_stride(count).bit_length() - 1

    def add(src: str) -> str:  # the tap's input(s) into its code's sums
        if count == 1:
            return f"s[window & {mask}u] += (uint32_t)(int32_t){src};"
        each = " ".join(f"sc[{q}] += (uint32_t)(int32_t)xt[p{q}];" for q in range(count))
        return (f"{{ uint32_t *const sc = s + ((window & {mask}u) << {shift}); const {ctype}_t *const xt = &{src}; "
                f"{each} }}")

    def tap(src: str, pad: str) -> str:  # the next code (a new window of codes where one is used up), its sums
        lines = ["if (!left) {", "    SQ_LOAD_LE32(window, codes + (bit >> 3));", "    window >>= bit & 7u;", f"    bit += {per * bits}u;", f"    left = {per}u;", "}",
                 add(src), f"window >>= {bits}u;", "left--;"]
        return "\n".join(pad + line for line in lines)
    positions_note = f"; {count} positions pos[q] apart" if count > 1 else ""
    if off == "s":
        return f"""\
/* s[code of tap t] += x[t * step] for t < taps, their {bits}-bit codes from bit `bit` of codes (three zero bytes end them){positions_note}. */
static void SQ_ONE_FORM {name}(const uint8_t *codes, uint32_t bit, const {ctype}_t *x, uint32_t step, unsigned taps{pos}, uint32_t *s)
{{
    uint32_t window = 0;
    unsigned left = 0;{offsets}
    for (; taps; taps--, x += step) {{  /* one loop: a counted inner one, or taps unrolled a window at a time, had gcc
                                          compute x's end, or a tap's address, with a multiply */
{tap("*x", " " * 8)}
    }}
}}"""
    return f"""\
/* s[code of tap t] += x[ci * step + win[w]] for the taps t = ci * wlen + w (ci < cin, w < wlen), their {bits}-bit
   codes from bit `bit` of codes (three zero bytes end them){positions_note}. */
static void SQ_ONE_FORM {name}(const uint8_t *codes, uint32_t bit, const {ctype}_t *x, const uint{off}_t *win, unsigned wlen,
                                uint32_t step, unsigned cin{pos}, uint32_t *s)
{{
    uint32_t window = 0;
    unsigned ci, w, left = 0;{offsets}
    for (ci = 0; ci < cin; ci++, x += step)
        for (w = 0; w < wlen; w++) {{
{tap("x[win[w]]", " " * 12)}
        }}
}}"""
