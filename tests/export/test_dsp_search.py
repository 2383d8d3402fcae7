"""The Cortex-M output stages for many thresholds (``sq_search_COUNT`` with its buckets, and
``sq_bsearch_255``'s binary search for channels of few positions) count ``#(thr[k] <= v)`` exactly for any ascending table a bundle may carry: compiled from the emitted
text for this host (the helpers are plain C but for two Arm instructions, USAT and SXTAH, given
their meaning in C here; the Cortex-M4 tests run them on the target) and run on tables no export writes (all equal at
either end of int16, one jump, clusters, a line, random ones) and on values across int16, both
as they are and negated."""
import re
import shutil
import subprocess

import numpy as np
import pytest

from shiftquant.export.c.emit import _PRELUDE
from shiftquant.export.c.emit_dsp import BSEARCH_255_HELPER, search_helper
from shiftquant.export.c.program import SEARCH_BUCKETS
from tests.export.test_codegen import STRICT

COUNT, POSITIONS = 255, 63  # positions: not a whole number of words (a tail of 3 lanes: both words, both halves)

# What the helpers' Arm instructions do: USAT (saturate to [0, 2^bits)) and SXTAH of a high half.
ARM_IN_C = """\
static int32_t __usat(int32_t x, unsigned bits) { return x < 0 ? 0 : x >= (1 << bits) ? (1 << bits) - 1 : x; }
static int32_t sq_add_hi16(int32_t a, uint32_t w) { return a + SQ_S16(w >> 16); }
"""


def _tables(rng) -> list[np.ndarray]:
    line = np.floor(np.linspace(-900.0, 1200.0, COUNT))
    cluster = np.sort(np.r_[rng.integers(-5, 5, COUNT - 3), [-32768, 0, 32767]])
    tables = [np.full(COUNT, -32768), np.full(COUNT, 32767), np.zeros(COUNT),
              np.r_[np.full(100, -32768), np.full(COUNT - 100, 32767)], line, cluster,
              np.sort(rng.integers(-32768, 32768, COUNT)), np.sort(rng.integers(-50, 60, COUNT)),
              np.r_[np.full(10, -984), np.arange(COUNT - 20) * 7 - 800, np.full(10, 985)]]
    return [t.astype(np.int64) for t in tables]


def _lanes(values: np.ndarray) -> list[int]:
    """acc2's words for 16-bit values at positions 4i + q (word 2i + (q & 1), half q & 2)."""
    v = np.r_[values, np.zeros(-len(values) % 4, np.int64)] & 0xFFFF
    words = []
    for i in range(0, len(v), 4):
        words += [int(v[i] | v[i + 2] << 16), int(v[i + 1] | v[i + 3] << 16)]
    return words


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_bucketed_search_counts_every_ascending_table_exactly(tmp_path):
    rng = np.random.default_rng(0)
    cases, want = [], []
    for t, thr in enumerate(_tables(rng)):
        for negate in (False, True):
            acc = np.r_[rng.integers(-32768, 32768, POSITIONS - 8),
                        [-32768, 32767, 0, thr[0], thr[-1], thr[-1] - 1, thr[COUNT // 2], -thr[COUNT // 2]]]
            acc = ((acc + 32768) % 65536) - 32768
            v = -acc if negate else acc
            want += [-128 + (thr[None, :] <= v[:, None]).sum(1)] * 2  # the bucketed count, the binary search
            words = ", ".join(f"{w}u" for w in _lanes(acc))
            cases.append(f"""\
    {{
        static const int16_t thr[{COUNT}] = {{{", ".join(map(str, thr))}}};
        static const uint32_t acc2[] = {{{words}}};
        unsigned char buckets[{SEARCH_BUCKETS}], out[{POSITIONS}];
        const unsigned shift = sq_buckets_{COUNT}(thr, buckets);
        unsigned i;
        sq_search_{COUNT}(acc2, {POSITIONS}u, thr, buckets, shift, {"0xFFFFFFFFu" if negate else "0u"}, -128, out);
        for (i = 0; i < {POSITIONS}u; i++) printf("%d ", (int)(signed char)out[i]);
        printf("\\n");
        sq_bsearch_{COUNT}(acc2, {POSITIONS}u, thr, {"0xFFFFFFFFu" if negate else "0u"}, -128, out);
        for (i = 0; i < {POSITIONS}u; i++) printf("%d ", (int)(signed char)out[i]);
        printf("\\n");
    }}""")
    s16 = re.search(r"^#define SQ_S16.*$", _PRELUDE, re.M).group(0)
    text = ("#include <stdint.h>\n#include <stdio.h>\n#define SQ_SWAR 1\n#define __ARM_FEATURE_SIMD32 1\n"
            f"{s16}\n{ARM_IN_C}\n{search_helper(f'sq_search_{COUNT}')}\n{BSEARCH_255_HELPER}\nint main(void)\n{{\n" + "\n".join(cases)
            + "\n    return 0;\n}\n")
    (tmp_path / "search.c").write_text(text)
    subprocess.run([shutil.which("cc"), *STRICT, "-O2", "search.c", "-o", "search"], cwd=tmp_path, check=True)
    out = subprocess.run([str(tmp_path / "search")], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == len(want)
    for line, expected in zip(out, want):
        assert [int(x) for x in line.split()] == expected.tolist()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("count", [255, 7, 8, 20])
def test_the_scalar_cores_bisection_counts_any_ascending_table(count, tmp_path):
    """The scalar cores' count of thresholds ``<= x`` (``emit_thresholds.bisect``: unrolled for
    2^k - 1 of them, a loop otherwise) equals numpy's over the same tables and every int16 value."""
    from shiftquant.export.c.emit_thresholds import bisect
    rng = np.random.default_rng(count)
    tables = [t[:count] for t in _tables(rng)]  # ascending prefixes
    x = np.arange(-32768, 32768, 7, dtype=np.int64)
    rows = ",\n".join("{" + ", ".join(map(str, t)) + "}" for t in tables)
    (tmp_path / "b.c").write_text(f"""#include <stdint.h>
#include <stdio.h>
static const int16_t tables[{len(tables)}][{count}] = {{{rows}}};
int main(void)
{{
    int t;
    int32_t v;
    for (t = 0; t < {len(tables)}; t++) {{
        const int16_t *thr = tables[t];
        for (v = -32768; v < 32768; v += 7) {{
            const int16_t x = (int16_t)v;
            {bisect("thr", count)}
            printf("%u\\n", at);
        }}
    }}
    return 0;
}}
""")
    subprocess.run([shutil.which("cc"), *STRICT, "-O1", "b.c", "-o", "b"], cwd=tmp_path, check=True)
    got = np.array(subprocess.run([tmp_path / "b"], capture_output=True, text=True, check=True).stdout.split(), np.int64)
    want = np.concatenate([np.searchsorted(t, x, side="right") for t in tables])
    assert np.array_equal(got, want)
