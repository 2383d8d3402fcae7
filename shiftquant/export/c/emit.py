"""C text for a lowered :class:`~.lower.Program`: ``NAME.h`` and ``NAME.c``, portable C99.

The generated code uses ``<stdint.h>`` and ``<string.h>`` only (and, on Arm cores with the DSP
extension, the compiler's ``<arm_acle.h>`` and inline assembly for the lane loops of
:mod:`.emit_dsp`), allocates nothing, and has no floating point. Weights stay the bundle's bit-packed codes (``static const``); every activation
lives in one static arena whose size the header states. One entry point, ``NAME_run``, and its
reentrant form ``NAME_invoke`` (the caller passes the arena).

Shift layers: per output channel, the codes are decoded once into lists of input offsets grouped
by the weight's exponent and sign; a block of output positions then sums, per exponent, the
inputs of the positive weights and subtracts those of the negative ones, and combines the
per-exponent sums with left shifts (Horner form). The data path has no multiplication, and the
address arithmetic uses per-channel base tables and pointer increments, so the compiled kernels
(``NAME_shift_*``) contain no multiply instruction (the tests disassemble them). Accumulation is
in unsigned integers of the proven accumulator width (wrap-around arithmetic is exact, and
well-defined in C, as long as the final value fits, which the bound proves); values are read back
as signed with a portable conversion.
"""
from __future__ import annotations

import numpy as np

from ..format.pixels import describe_input
from .ctext import array, generated_text
from .emit_dsp import DspPrinter, dsp_helper
from .emit_shift import ShiftLayerPrinter, group_codes_helper
from .emit_few import FewPositionsPrinter, code_sums_helper
from .emit_split import SplitPrinter
from .emit_swar import swar_helper
from .emit_thresholds import ThresholdPrinter
from .emit_tokens import HELPERS, MACROS, TokenPrinter
from .program import (Add, Concat, Gather, GateShift, GlobalSum, Kernel, LayerNormInt, Lookup, Map, MatMul,
                      MaxPool, PotCodes, Program, ShiftLayer, Shiftmax, Split, Tensor, Unary, WindowSum)

GENERATOR = "shiftquant C emitter 1"

INPUT_NAMES = "abcdefghijklmnopqrstuvwxyz"  # a kernel's input pointers, in order

_PRELUDE = """\
#include <string.h>

#ifdef __GNUC__
#define SQ_KERNEL static __attribute__((noinline))
#else
#define SQ_KERNEL static
#endif
#ifdef _OPENMP
#define SQ_PARALLEL_FOR _Pragma("omp parallel for schedule(static, 1)")
#else
#define SQ_PARALLEL_FOR
#endif
/* Two's complement value of an unsigned 16- or 32-bit pattern, without implementation-defined
   conversions. */
#define SQ_S16(u) ((int32_t)((uint32_t)(u) ^ 0x8000u) - 0x8000)
#define SQ_S32(u) ((uint32_t)(u) < 0x80000000u ? (int32_t)(uint32_t)(u) : -(int32_t)(~(uint32_t)(u)) - 1)
/* The value of four little-endian bytes memcpy'd into a uint32_t. */
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define SQ_LE32(w) ((((w) & 0xFFu) << 24) | (((w) & 0xFF00u) << 8) | (((w) >> 8) & 0xFF00u) | ((w) >> 24))
#else
#define SQ_LE32(w) (w)
#endif
/* v = the four bytes at p as a little-endian word: one load where the core reads unaligned words,
   four byte loads where it cannot (Armv6-M: a memcpy there is a call). */
#if defined(__arm__) && !defined(__ARM_FEATURE_UNALIGNED)
#define SQ_LOAD_LE32(v, p) ((v) = (uint32_t)(p)[0] | (uint32_t)(p)[1] << 8 | (uint32_t)(p)[2] << 16 | (uint32_t)(p)[3] << 24)
#else
#define SQ_LOAD_LE32(v, p) (memcpy(&(v), (p), 4u), (v) = SQ_LE32(v))
#endif
/* 32-bit cores without vector units (the Cortex-M family): shift layers add four byte lanes at a
   time in 32-bit words; where the core has the DSP extension, in the sq_run_* helpers (SADD8,
   SXTAB16 into 16-bit lanes) with their output stages in lanes (SSUB16 and SEL). */
#if defined(__arm__) && !defined(__ARM_NEON)
#define SQ_SWAR 1
#ifdef __ARM_FEATURE_SIMD32
#include <arm_acle.h>
/* A 16-bit value in both halves of a word (two lanes). */
#define SQ_BOTH16(x) (((uint32_t)(uint16_t)(x) << 16) | (uint16_t)(x))
/* a + the signed high half of w: one SXTAH (the low half's SQ_S16(w & 0xFFFFu) + a compiles to one). */
__attribute__((always_inline)) static inline int32_t sq_add_hi16(int32_t a, uint32_t w)
{
    int32_t r;
    __asm__("sxtah %0, %1, %2, ror #16" : "=r"(r) : "r"(a), "r"(w));
    return r;
}
/* Two words at p into t and s in the helpers' assembly (p += 8 with _NEXT, the store alike): one
   LDRD/STRD in Thumb-2; ARM state (-marm) takes only an even, consecutive register pair there, so
   two LDR/STR. */
#ifdef __thumb2__
#define SQ_LDRD(t, s, p) "ldrd %[" #t "], %[" #s "], [%[" #p "]]\\n\\t"
#define SQ_LDRD_NEXT(t, s, p) "ldrd %[" #t "], %[" #s "], [%[" #p "]], #8\\n\\t"
#define SQ_STRD_NEXT(t, s, p) "strd %[" #t "], %[" #s "], [%[" #p "]], #8\\n\\t"
#else
#define SQ_LDRD(t, s, p) "ldr %[" #t "], [%[" #p "]]\\n\\tldr %[" #s "], [%[" #p "], #4]\\n\\t"
#define SQ_LDRD_NEXT(t, s, p) "ldr %[" #t "], [%[" #p "]], #4\\n\\tldr %[" #s "], [%[" #p "]], #4\\n\\t"
#define SQ_STRD_NEXT(t, s, p) "str %[" #t "], [%[" #p "]], #4\\n\\tstr %[" #s "], [%[" #p "]], #4\\n\\t"
#endif
#endif
#else
#define SQ_SWAR 0
#endif
/* x86 hosts with AVX2: shift layers of a few output positions also have a form in lanes of 32
   output channels (a byte table lookup per tap, VPSHUFB: emit_lanes), which these builds run. */
#if !SQ_SWAR && defined(__AVX2__)
#include <immintrin.h>
#define SQ_LANES 1
#else
#define SQ_LANES 0
#endif
/* Constants and pointers that only one of a kernel's forms reads: the vector units' (the host), the
   channel lanes', the scalar cores' or the DSP extension's; where one is compiled the others are not. */
#if (SQ_SWAR || SQ_LANES) && defined(__GNUC__)
#define SQ_ONE_FORM __attribute__((unused))
#else
#define SQ_ONE_FORM
#endif
#if SQ_SWAR && defined(__GNUC__)
#define SQ_NOINLINE __attribute__((noinline))  /* a helper's loop keeps its registers to itself */
#else
#define SQ_NOINLINE
#endif
""" + MACROS


def emit(program: Program) -> tuple[str, str]:
    """``(header, source)`` of ``program``."""
    return _header(program), _Source(program).text()


def _header(p: Program) -> str:
    n, up = p.name, p.name.upper()
    c, h, w = p.input.shape
    oc = p.output.shape
    unit = ""
    if p.output_kind == "logits":
        exponent = int(round(float(np.log2(p.logit_unit))))
        if 2.0 ** exponent == p.logit_unit:
            unit = f"#define {up}_LOGIT_UNIT_LOG2 ({exponent}) /* a logit integer is worth 2^{exponent} */\n"
    what_in = (generated_text(describe_input(p.input_node)) if p.input_kind == "pixels" else
               "the first shift layer's input integers (the host quantizes the float input)")
    pixel_max = (f"#define {up}_PIXEL_MAX ({int(p.input_node['pixels']['scale'])}) /* pixels are 0..{up}_PIXEL_MAX */\n"
                 if p.input_kind == "pixels" else "")
    what_out = ("integer logits on one grid (argmax needs no float)" if p.output_kind == "logits" else
                "the last layer's accumulators (the host dequantizes them)")
    extra = p.lanes_flash_bytes
    lanes = f" (x86 hosts with AVX2 compile {extra} more: the channel lanes' tables)" if extra else ""
    return f"""\
/* {n}.h: generated by {GENERATOR} from a shiftquant bundle. Do not edit.
 *
 * Input:  {p.input.ctype} x {c * h * w} ({c}, {h}, {w}): {what_in}.
 * Output: int32_t x {int(np.prod(oc))}: {what_out}.
 * Flash (constants): {p.flash_bytes} bytes{lanes}. RAM: arena {p.arena_bytes} bytes + stack {p.stack_bytes} bytes.
 * int8 equivalent (a byte per weight, an int32 bias per channel): {p.int8_flash_bytes} bytes of flash.
 * Portable C99, no dynamic allocation, no floating point; shift layers have no multiplication.
 */
#ifndef SHIFTQUANT_{up}_H
#define SHIFTQUANT_{up}_H
#include <stdint.h>

#define {up}_INPUT_C ({c})
#define {up}_INPUT_H ({h})
#define {up}_INPUT_W ({w})
#define {up}_INPUT_SIZE ({c * h * w})
#define {up}_OUTPUT_SIZE ({int(np.prod(oc))})
#define {up}_ARENA_BYTES ({max(p.arena_bytes, 1)})
#define {up}_STACK_BYTES ({p.stack_bytes})
#define {up}_FLASH_BYTES ({p.flash_bytes})
{pixel_max}{unit}
typedef {p.input.ctype} {n}_input_t;

/* Runs the network on one input; the arena ({up}_ARENA_BYTES bytes, aligned to 8 bytes, as malloc
   or a uint64_t array gives them) holds every activation. Reentrant. Returns 0. */
int {n}_invoke(const {n}_input_t *input, int32_t *output, void *arena);

/* {n}_invoke on a static arena of this file (not reentrant). Returns 0. */
int {n}_run(const {n}_input_t *input, int32_t *output);

#endif /* SHIFTQUANT_{up}_H */
"""


CLEAR_BORDER = """\
/* Zeroes the border of one plane: `rows` interior rows of `width` bytes, `side` bytes of border
   left and right of each, `border` rows of border above and below. */
static void sq_clear_border(unsigned char *plane, unsigned rows, unsigned width, unsigned border, unsigned side)
{
    const unsigned row = width + side + side;
    unsigned r;
    for (r = 0; r < border; r++, plane += row) memset(plane, 0, row);
    memset(plane, 0, side);
    plane += side + width;
    for (r = 1; r < rows; r++, plane += row) memset(plane, 0, side + side);
    memset(plane, 0, side);
    plane += side;
    for (r = 0; r < border; r++, plane += row) memset(plane, 0, row);
}
"""


class _Source(ShiftLayerPrinter, FewPositionsPrinter, DspPrinter, SplitPrinter, ThresholdPrinter, TokenPrinter):
    def __init__(self, p: Program):
        self.p = p
        self.parts: list[str] = []
        self.helpers: set[str] = set()

    def text(self) -> str:
        p = self.p
        body = [self.kernel(k) for k in p.kernels]
        out = [f"/* {p.name}.c: generated by {GENERATOR} from a shiftquant bundle. Do not edit. */\n",
               f'#include "{p.name}.h"\n', _PRELUDE]
        out += [self.helper_text(h) for h in sorted(self.helpers)]
        out += [array(t.ctype, constant_name(p, t), t.constant) for t in p.tensors
                if t.constant is not None and t.alias_of is None]
        out += body
        out.append(self.invoke())
        return "\n".join(out)

    # ------------------------------------------------------------------ helpers
    def clear_border(self, t: Tensor) -> str:
        """A call zeroing the border of plane ``ob`` of ``t`` (nothing when it has none)."""
        if t.border == 0:
            return ""
        self.helpers.add("clear_border")
        return (f"sq_clear_border((unsigned char *)ob, {t.shape[1]}u, {t.shape[2] * t.itemsize}u, {t.border}u, "
                f"{t.border * t.itemsize}u);")

    @staticmethod
    def helper_text(name: str) -> str:
        if name in HELPERS:
            return HELPERS[name]
        if name.startswith("sq_group_codes_"):
            return group_codes_helper(name)
        if name.startswith("sq_code_sums_"):
            return code_sums_helper(name)
        if name.startswith("sq_swar_"):
            return swar_helper(name)
        if name.startswith("sq_"):
            return dsp_helper(name)
        assert name == "clear_border"
        return CLEAR_BORDER

    # ------------------------------------------------------------------ kernels
    def kernel(self, k: Kernel) -> str:
        return _EMITTERS[type(k)](self, k)

    def unary(self, k: Unary) -> str:
        return self.elementwise(k, k.expr, "int32_t x = a[i];")

    def add(self, k: Add) -> str:
        s0, s1 = k.shifts
        return self.elementwise(k, k.expr, "const int32_t x = SQ_S32(((uint32_t)a[i] << %d) + ((uint32_t)b[i] << %d));"
                                % (s0, s1))

    def signature(self, k: Kernel) -> str:
        """Pointers are ``restrict`` unless the kernel writes its output over an input."""
        names, restrict = INPUT_NAMES, "" if k.in_place else "restrict "
        args = [f"const {t.ctype} *{restrict}{names[i]}" for i, t in enumerate(k.inputs)]
        return f"SQ_KERNEL void {k.name}({', '.join(args)}, {k.output.ctype} *{restrict}out)"

    def elementwise(self, k: Kernel, expr: str, load: str) -> str:
        return f"""\
/* {type(k).__name__.lower()} {k.label} */
{self.signature(k)}
{{
    unsigned i;
    for (i = 0; i < {k.output.elems}u; i++) {{
        {load}
        out[i] = ({k.output.ctype})({expr});
    }}
}}
"""

    def maxpool(self, k: MaxPool) -> str:
        return self.window_reduce(k, "max_pool2d", "padding is never selected", "INT32_MIN",
                                  "if ({v} > acc) acc = {v};", k.padding, k.dilation)

    def window_sum(self, k: WindowSum) -> str:
        return self.window_reduce(k, "window sum", "an integer average pool over whole windows: its readers' "
                                  "thresholds divide", "0", "acc += {v};", (0, 0), (1, 1))

    def window_reduce(self, k, what: str, note: str, init: str, step: str, padding, dilation) -> str:
        """One reduction (``step`` on ``acc`` with each in-image value ``{v}``) over each pooling window."""
        a, out = k.inputs[0], k.output
        c, h, w = a.shape
        _, ho, wo = out.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k.kernel, k.stride, padding, dilation
        value = f"ip[iy * {a.row} + ix]"
        return f"""\
/* {what} {k.label}: {note} */
{self.signature(k)}
{{
    unsigned c;
    int oy, ox, ky, kx;
    for (c = 0; c < {c}u; c++) {{
        const {a.ctype} *ip = a + {a.border * a.row + a.border}u;
        {out.ctype} *ob = out;
        {out.ctype} *op = out + {out.border * out.row + out.border}u;
        for (oy = 0; oy < {ho}; oy++, op += {out.row}) {{
            for (ox = 0; ox < {wo}; ox++) {{
                int32_t acc = {init};
                for (ky = 0; ky < {kh}; ky++) {{
                    const int iy = oy * {sh} - {ph} + ky * {dh};
                    if (iy < 0 || iy >= {h}) continue;
                    for (kx = 0; kx < {kw}; kx++) {{
                        const int ix = ox * {sw} - {pw} + kx * {dw};
                        if (ix >= 0 && ix < {w}) {step.format(v=value)}
                    }}
                }}
                op[ox] = ({out.ctype})acc;
            }}
        }}
        {self.clear_border(out)}
        a += {a.plane}u;
        out += {out.plane}u;
        (void)ob;
    }}
}}
"""

    def image_map(self, k, note: str, value: str, setup: str = "", lets: str = "", image: int = 0) -> str:
        """``out = value`` at each position of the image (``{x}``: input ``image`` there), channel
        by channel (``setup`` first in each); the output's border is cleared."""
        a, out = k.inputs[image], k.output
        c, h, w = out.shape
        return f"""\
/* {note} {k.label} */
{self.signature(k)}
{{
{lets}    unsigned c, y, x;
    for (c = 0; c < {c}u; c++) {{
        const {a.ctype} *ip = {INPUT_NAMES[image]} + c * {a.plane}u + {a.border * a.row + a.border}u;
        {out.ctype} *ob = out + c * {out.plane}u;
        {out.ctype} *op = ob + {out.border * out.row + out.border}u;
        {setup}
        for (y = 0; y < {h}u; y++, ip += {a.row}u, op += {out.row}u)
            for (x = 0; x < {w}u; x++) op[x] = ({out.ctype})({value.format(x="ip[x]")});
        {self.clear_border(out)}
    }}
}}
"""

    def lookup(self, k: Lookup) -> str:
        values = ", ".join(str(int(v)) for v in k.table)
        lets = f"    static const {k.output.ctype} table[{k.table.size}] = {{{values}}};\n"
        return self.image_map(k, "table", f"table[(int32_t){{x}} - ({int(k.start)})]", lets=lets)

    def gate_shift(self, k: GateShift) -> str:
        """The gate is proven 0 .. 2^30 - 1: ``s`` is floor(log2 g), -1 for 0 (no multiply)."""
        g = k.inputs[k.gate]
        at = f"c * {g.plane}u + {g.border * g.row + g.border}u"
        setup = f"const int32_t g = {INPUT_NAMES[k.gate]}[{at}]; int s = -1; int32_t v; for (v = g; v > 0; v >>= 1) s++;"
        return self.image_map(k, "squeeze-excite gate (a shift per channel)",
                              "s < 0 ? 0 : SQ_S32((uint32_t)(int32_t){x} << s)", setup=setup, image=1 - k.gate)

    def concat(self, k: Concat) -> str:
        out = k.output
        parts = []
        for name, a, shift in zip(INPUT_NAMES, k.inputs, k.shifts):
            parts.append(f"""\
    for (c = 0; c < {a.shape[0]}u; c++, ob += {out.plane}u) {{
        const {a.ctype} *ip = {name} + c * {a.plane}u + {a.border * a.row + a.border}u;
        {out.ctype} *op = ob + {out.border * out.row + out.border}u;
        for (y = 0; y < {out.shape[1]}u; y++, ip += {a.row}u, op += {out.row}u)
            for (x = 0; x < {out.shape[2]}u; x++) op[x] = ({out.ctype})SQ_S32((uint32_t)(int32_t)ip[x] << {shift});
        {self.clear_border(out)}
    }}""")
        return f"""\
/* cat {k.label}: images joined along channels, each shifted onto the finest grid */
{self.signature(k)}
{{
    unsigned c, y, x;
    {out.ctype} *ob = out;
{chr(10).join(parts)}
}}
"""

    def global_sum(self, k: GlobalSum) -> str:
        a, out = k.inputs[0], k.output
        c, h, w = a.shape
        return f"""\
/* global sum {k.label} (an integer global average pool: its readers' thresholds divide) */
{self.signature(k)}
{{
    unsigned c, y, x;
    for (c = 0; c < {c}u; c++, a += {a.plane}u) {{
        const {a.ctype} *ip = a + {a.border * a.row + a.border}u;
        int32_t sum = 0;
        for (y = 0; y < {h}u; y++, ip += {a.row}u)
            for (x = 0; x < {w}u; x++) sum += ip[x];
        out[c] = ({out.ctype})sum;
    }}
}}
"""

    # ------------------------------------------------------------------ entry points
    def invoke(self) -> str:
        p = self.p
        t = p.input
        c, h, w = t.shape

        def ptr(x: Tensor, const: bool = False) -> str:
            r = x.root
            if r is p.output:
                return "output"
            if r.constant is not None:
                return f"({'const ' if const else ''}{x.ctype} *){constant_name(p, r)}"
            return f"({'const ' if const else ''}{x.ctype} *)(arena_bytes + {r.offset}u)"

        calls = []
        for k in p.kernels:
            args = [ptr(x, True) for x in k.inputs] + [ptr(k.output)]
            calls.append(f"    {k.name}({', '.join(args)});")
        copy_in = f"""\
    {{   /* the input, into its bordered planes */
        {t.ctype} *dst = ({t.ctype} *)(arena_bytes + {t.offset}u);
        unsigned ch, y;
        memset(dst, 0, {t.elems * t.itemsize}u);
        dst += {t.border * t.row + t.border}u;
        for (ch = 0; ch < {c}u; ch++, dst += {2 * t.border * t.row}u)
            for (y = 0; y < {h}u; y++, dst += {t.row}u, input += {w}u) memcpy(dst, input, {w * t.itemsize}u);
    }}"""
        return f"""\
int {p.name}_invoke(const {p.name}_input_t *input, int32_t *output, void *arena)
{{
    unsigned char *arena_bytes = (unsigned char *)arena;
{copy_in}
{chr(10).join(calls)}
    return 0;
}}

static uint64_t {p.name}_arena[({max(p.arena_bytes, 1)}u + 7u) / 8u];

int {p.name}_run(const {p.name}_input_t *input, int32_t *output)
{{
    return {p.name}_invoke(input, output, {p.name}_arena);
}}
"""


# Each C kernel's printer (one per kernel class of :mod:`.lower`).
_EMITTERS = {ShiftLayer: _Source.shift_layer, Map: _Source.map, Unary: _Source.unary, Add: _Source.add,
             MaxPool: _Source.maxpool, GlobalSum: _Source.global_sum, WindowSum: _Source.window_sum,
             Gather: _Source.gather, Split: _Source.split, Lookup: _Source.lookup, GateShift: _Source.gate_shift,
             Concat: _Source.concat, PotCodes: _Source.pot_codes, MatMul: _Source.matmul,
             Shiftmax: _Source.shiftmax, LayerNormInt: _Source.layer_norm}


def constant_name(p: Program, t: Tensor) -> str:
    """The C name of a constant tensor (by its position, never from the bundle's names)."""
    return f"{p.name}_const_{next(i for i, x in enumerate(p.tensors) if x is t)}"
