"""The C of a shift layer with few output positions in channel lanes, for x86 hosts with AVX2
(``SQ_LANES``): a Linear, a 1x1 or 2x2 map. The general form sums a channel's taps in lanes of
output positions, so with a few positions it runs nearly scalar. Here the lanes are 32 output
channels instead: each tap's input ``x`` selects a row of the layer's product table (``x``'s
product with the weight of every code, ``±2^(t - t_min) x``, computed here, not at run time), and
one byte shuffle (``VPSHUFB``) looks the 32 channels' products up by their codes; runs of taps are
summed in bytes (the run's bound fits a signed byte) and widened into 16-bit lanes. No multiply:
a table lookup and adds. Other builds compile the general form beside it."""
from __future__ import annotations

import numpy as np

from .ctext import Width, array
from .emit_few import position_offsets
from .program import CTYPES, ShiftLayer, narrowest

LANES = 32  # output channels per block: one 256-bit register of byte lanes
POSITIONS = 8  # the most output positions per channel (a 2x2 map over bordered rows is 6; at 17, a ViT-tiny
# Linear over tokens, the general form's position lanes ran 1.3-1.6x as fast)
TABLE = 16  # entries of a product row: what one 128-bit lane of VPSHUFB looks up


def value_of_code(k: ShiftLayer) -> list[int]:
    """Per code, its weight over the smallest exponent's: ``±2^(t - t_min)``, 0 for a zero weight."""
    low, zero = (k.exponents[-1] if k.exponents else 0), k.groups_count
    return [0 if g == zero else (-1 if g & 1 else 1) << (k.exponents[g >> 1] - low) for g in k.group_of_code()]


def input_span(k: ShiftLayer) -> tuple[int, int]:
    """The values a tap can read: the input's proven range and the zero of its borders."""
    a = k.inputs[0]
    return min(int(a.lo), 0), max(int(a.hi), 0)


def run_length(k: ShiftLayer) -> int:
    """Taps whose products a signed byte holds summed: 127 over the largest product (0: none)."""
    lo, hi = input_span(k)
    largest = max(abs(v) for v in value_of_code(k)) * max(-lo, hi) if k.exponents else 0
    return 127 // largest if largest else k.taps


def takes_lanes(k: ShiftLayer, weights: str) -> bool:
    """Whether ``k`` also gets the channel-lanes form: at most :data:`POSITIONS` output positions per
    channel in one block, ungrouped, a 16-bit accumulator, codes of at most 4 bits (a 16-entry
    table), products within a signed byte, and thresholds that are not delta-packed (packed
    weights decode those per channel)."""
    delta_packed = weights == "packed" and k.requant is not None and k.requant.deltas is not None
    return (k.groups == 1 and 0 < k.positions <= POSITIONS and k.chunk >= k.segments[1] and k.acc_bits == 16
            and k.code_bits <= 4 and k.taps > 0 and run_length(k) >= 1 and not delta_packed
            and (input_span(k)[1] - input_span(k)[0] + 1) * TABLE <= 1 << 16)


# Stack the form's frame takes beside its arrays: the output stage's locals, and the 256-bit
# temporaries an unoptimized build (-O0) spills, 32-byte aligned (gcc's -fstack-usage: up to
# about 800 bytes on timm's mobilenetv2_035).
FRAME = 1024


def lanes_bytes(k: ShiftLayer, weights: str) -> int:
    """The stack the form takes where ``k`` has it (its row offsets, a block's sums, the output
    stage's arrays of a block of positions, :data:`FRAME`), else 0."""
    return 2 * k.positions * k.taps + 2 * LANES * k.positions + 13 * k.chunk + FRAME if takes_lanes(k, weights) else 0


def lanes_flash_bytes(k: ShiftLayer, weights: str) -> int:
    """The form's constants where ``k`` has it (compiled on x86 hosts with AVX2 only), else 0."""
    if not takes_lanes(k, weights):
        return 0
    return sum(CTYPES[kind][1] * np.asarray(values).size for _, kind, values in _lane_arrays(k))


def _blocks(k: ShiftLayer) -> int:
    return -(-k.cout // LANES)


def _input_offsets(k: ShiftLayer) -> list[int]:
    """Per position and tap, its input's offset from the layer's input (``NAME_lin``)."""
    return [k.segments[4] + p + t for p in position_offsets(k) for t in k.tap_offsets]


def _block_offsets(k: ShiftLayer) -> list[int]:
    """Where each block's codes start in ``NAME_lcode``: a table, as the general form's per-channel
    bases are, so that no multiply enters the address arithmetic (``blk * 32 * taps``)."""
    return [b * LANES * k.taps for b in range(_blocks(k))]


def _lane_arrays(k: ShiftLayer) -> list[tuple[str, str, object]]:
    """``(name suffix, CTYPES kind, values)`` of the form's constants: the product table (a 16-byte
    row per input value), the codes block by block, tap by tap, 32 channels each (the last block
    padded with code 0, unread), and the inputs' and blocks' offsets in their narrowest types."""
    lo, hi = input_span(k)
    values = value_of_code(k)
    rows = [[v * x for v in values] + [0] * (TABLE - len(values)) for x in range(lo, hi + 1)]
    blocks = _blocks(k)
    codes = np.zeros((blocks * LANES, k.taps), np.uint8)
    codes[:k.cout] = k.weight_codes
    lanes = codes.reshape(blocks, LANES, k.taps).transpose(0, 2, 1)  # (block, tap, lane)
    lin, starts = _input_offsets(k), _block_offsets(k)
    return [("prod", "int8", rows), ("lcode", "uint8", lanes), ("lin", narrowest(lin, signed=False), lin),
            ("lblk", narrowest(starts, signed=False), starts)]


def lane_consts(k: ShiftLayer) -> str:
    """The form's constants (:func:`_lane_arrays`), compiled where ``SQ_LANES``."""
    arrays = "".join(array(CTYPES[kind][0], f"{k.name}_{suffix}", values) for suffix, kind, values in _lane_arrays(k))
    return "#if SQ_LANES\n" + arrays + "#endif\n"


def lanes_body(k: ShiftLayer, w: Width, stage: str, clear: str) -> str:
    """The kernel's body in channel lanes: each (position, tap)'s product row found once, then per
    block of 32 channels the 16-bit sums of every position, then each channel's ``stage`` (as the
    general form runs it: ``acc``, ``n`` positions of a segment stored at ``op[p + i]``)."""
    nm, out = k.name, k.output
    lo, hi = input_span(k)
    nseg, seg_len, out0, out_step, _ = k.segments
    count, taps, run = k.positions, k.taps, min(run_length(k), k.taps)
    blocks = _blocks(k)
    low = k.exponents[-1] if k.exponents else 0
    return f"""\
    uint16_t row[{count * taps}];  /* per position and tap: where the product row of its input starts */
    int blk;
    {{
        unsigned t;
        for (t = 0; t < {count * taps}u; t++) {{
            const int32_t x = a[{nm}_lin[t]];
            row[t] = (uint16_t)((uint32_t)((x < {lo} ? {lo} : x > {hi} ? {hi} : x) - ({lo})) << 4);
        }}
    }}
    SQ_PARALLEL_FOR
    for (blk = 0; blk < {blocks}; blk++) {{
        int16_t sums[{count}][{LANES}];  /* per position, the block's 32 channels */
        unsigned q, lane, i, seg, t;
        const uint16_t *rq = row;  /* position q's rows */
        for (q = 0; q < {count}u; q++, rq += {taps}u) {{
            const uint8_t *cp = {nm}_lcode + {nm}_lblk[blk];
            __m256i low16 = _mm256_setzero_si256(), high16 = _mm256_setzero_si256();
            for (t = 0; t < {taps}u;) {{
                const unsigned end = {taps}u - t > {run}u ? t + {run}u : {taps}u;
                __m256i s8 = _mm256_setzero_si256();
                for (; t < end; t++, cp += {LANES}u) {{
                    const __m256i products = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)({nm}_prod + rq[t])));
                    s8 = _mm256_add_epi8(s8, _mm256_shuffle_epi8(products, _mm256_loadu_si256((const __m256i *)cp)));
                }}
                low16 = _mm256_add_epi16(low16, _mm256_cvtepi8_epi16(_mm256_castsi256_si128(s8)));
                high16 = _mm256_add_epi16(high16, _mm256_cvtepi8_epi16(_mm256_extracti128_si256(s8, 1)));
            }}
            _mm256_storeu_si256((__m256i *)sums[q], low16);
            _mm256_storeu_si256((__m256i *)(sums[q] + 16), high16);
        }}
        for (lane = 0; lane < {LANES}u && blk * {LANES} + (int)lane < {k.cout}; lane++) {{
            const int co = blk * {LANES} + (int)lane;
            {out.ctype} *ob = out + {nm}_ch_out[co];
            {out.ctype} *op = ob + {out0}u;
            int16_t (*sq)[{LANES}] = sums;
            for (seg = 0; seg < {nseg}u; seg++, op += {out_step}u, sq += {seg_len}u) {{
                const unsigned n = {seg_len}u, p = 0u;
                {w.acc} acc[{k.chunk}];
                for (i = 0; i < {k.chunk}u; i++)
                    acc[i] = i < n ? ({w.acc})(({w.shift})(uint16_t)sq[i][lane] << {low}) : 0u;
{stage}
            }}
            {clear}
            (void)ob;
        }}
    }}"""
