"""The shift layers' byte-lane runs on 32-bit cores without vector units (the Cortex-M family):
four byte lanes in a 32-bit word, summed over a run of taps in registers, then widened, in a
helper of their own (``sq_swar_KIND_G_SIGN_OFF_ACC``) so that the sums keep their registers."""
from __future__ import annotations

from .program import ShiftLayer

# How a run adds a tap's word of four byte lanes v into the sums w: a plain add (unsigned bytes, whose
# run sum fits a byte), SADD8 (signed, on cores with the DSP extension), or each signed byte x biased
# to x + 2^p >= 0 (XOR 0x80, then a lane-wise subtract of 128 - 2^p that cannot borrow) and added
# plainly; and a lane's value when widened (``b``: the lane minus the run's taps x 2^p, ``taken``).
KINDS = {
    "u": ("{w} + {v}", "(int32_t)(({w} >> {s}) & 0xFFu)"),
    "s": ("(uint32_t)__sadd8((int32_t){w}, (int32_t){v})", "((int32_t)((({w} >> {s}) & 0xFFu) ^ 0x80u) - 128)"),
    "b": ("{w} + (({v} ^ 0x80808080u) - cut)", "((int32_t)(({w} >> {s}) & 0xFFu) - taken)"),
}


def swar_runs(k: ShiftLayer, acc: str, first, end, sign: str, helpers: set, bias: int | None = None) -> str:
    """:meth:`.emit_shift.ShiftLayerPrinter.sum_taps` on a 32-bit core, four byte lanes per word: a
    plain add (unsigned inputs), SADD8 (signed, ``bias`` None), or each signed byte biased by
    ``2^bias`` and added plainly, in runs of as many taps as keep the biased sum in a byte (""
    where that is under 4). Adds the helper it calls to ``helpers``."""
    a, ch = k.inputs[0], k.chunk
    kind = "u" if a.lo >= 0 else "s" if bias is None else "b"
    run, cut, taken = k.narrow_run, "0u", "0"
    if kind == "b":
        # a biased lane is at most max(hi, 0) + 2^p: borders and padding are zeros even where every
        # value of the tensor is negative
        run = 255 // (max(a.hi, 0) + (1 << bias))
        if run < 4:
            return ""
        cut, taken = f"{(128 - (1 << bias)) * 0x01010101:#010x}u", f"(int32_t)((end - j) << {bias})"
    words = min(4, ch // 4)  # words summed in registers over a run's taps (16 positions)
    name = f"sq_swar_{kind}_{words}_{'add' if sign == '+' else 'sub'}_{k.offset_ctype[4:-2]}_{acc[4:-2]}"
    helpers.add(name)
    return f"""\
            for (j = start[{first}]; j < start[{end}];) {{
                const unsigned end = start[{end}] - j > {run}u ? j + {run}u : start[{end}];
                {name}((const unsigned char *)base, list + j, list + end, acc,
                       ((n + {4 * words - 1}u) >> {(4 * words).bit_length() - 1}) << {words.bit_length() - 1}, {cut}, {taken});
                j = end;
            }}"""


def swar_helper(name: str) -> str:
    """The text of helper ``sq_swar_KIND_G_SIGN_OFF_ACC``: the taps ``[lp, le)`` (offsets from
    ``base``), ``G`` words at a time over the block's ``nw`` words, summed in registers as
    :data:`KINDS` says, then each lane widened into (``add``) or out of (``sub``) ``acc``. Only the
    portable form of a layer calls it, which cores with the DSP extension may not compile."""
    _, _, kind, words, sign, off, width = name.split("_")
    g, (add, lane) = int(words), KINDS[kind]
    op, off_t, acc_t = "+" if sign == "add" else "-", f"uint{off}_t", f"uint{width}_t"
    loads = " ".join(f"SQ_LOAD_LE32(v, src + {4 * q}u); w{q} = {add.format(w=f'w{q}', v='v')};" for q in range(g))
    widen = "\n".join(f"        acc[{4 * q + b}] = ({acc_t})(acc[{4 * q + b}] {op} ({acc_t}){lane.format(w=f'w{q}', s=8 * b)});"
                      for q in range(g) for b in range(4))
    guard = "#if SQ_SWAR && defined(__ARM_FEATURE_SIMD32)" if kind == "s" else "#if SQ_SWAR"
    return f"""\
{guard}
static void SQ_ONE_FORM SQ_NOINLINE {name}(const unsigned char *base, const {off_t} *lp, const {off_t} *le, {acc_t} *acc, unsigned nw,
    uint32_t cut, int32_t taken)
{{
    unsigned i;
    (void)cut; (void)taken;
    for (i = 0; i < nw; i += {g}u, acc += {4 * g}) {{
        uint32_t {", ".join(f"w{q} = 0" for q in range(g))}, v;
        const {off_t} *t;
        for (t = lp; t < le; t++) {{
            const unsigned char *src = base + *t + 4u * i;
            {loads}
        }}
{widen}
    }}
}}
#endif
"""
