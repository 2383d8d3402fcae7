"""The shift layers' byte-lane runs on 32-bit cores without vector units (the Cortex-M family):
four byte lanes in a 32-bit word, summed over a run of taps in registers, then widened."""
from __future__ import annotations

from .program import ShiftLayer


def swar_runs(k: ShiftLayer, acc: str, first, end, sign: str, bias: int | None = None) -> str:
    """:meth:`.emit_shift.ShiftLayerPrinter.sum_taps` on a 32-bit core, four byte lanes per word: a
    plain add (unsigned inputs), SADD8 (signed, ``bias`` None), or each signed byte biased by
    ``2^bias`` and added plainly, in runs of as many taps as keep the biased sum in a byte (""
    where that is under 4)."""
    a, ch = k.inputs[0], k.chunk
    if bias is None:
        run, byte, lane = k.narrow_run, "uint8_t" if a.lo >= 0 else "int8_t", "s8[i]"
        add = (lambda w, v: f"{w} + {v}") if a.lo >= 0 else (
            lambda w, v: f"(uint32_t)__sadd8((int32_t){w}, (int32_t){v})")
    else:
        run, byte, lane = 255 // (a.hi + (1 << bias)), "uint8_t", "((int32_t)s8[i] - (int32_t)taken)"
        if run < 4:
            return ""
        cut = f"{(128 - (1 << bias)) * 0x01010101:#010x}u"
        add = lambda w, v: f"{w} + (({v} ^ 0x80808080u) - {cut})"
    words = min(4, ch // 4)  # words summed in registers over a run's taps (16 positions)
    loads = " ".join(f"memcpy(&v{q}, src + {4 * q}u, 4u); w{q} = {add(f'w{q}', f'v{q}')};" for q in range(words))
    taken = "" if bias is None else f"\n                const uint32_t taken = (end - j) << {bias};  /* the run's bias */"
    return f"""\
            for (j = start[{first}]; j < start[{end}];) {{
                const unsigned end = start[{end}] - j > {run}u ? j + {run}u : start[{end}];
                const unsigned nw = ((n + {4 * words - 1}u) >> {(4 * words).bit_length() - 1}) << {words.bit_length() - 1};{taken}
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
                    for (i = 0; i < nw * 4u; i++) acc[i] = ({acc})(acc[i] {sign} ({acc}){lane});
                }}
            }}"""
