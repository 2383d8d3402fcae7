"""A channel's delta-packed thresholds (:class:`shiftquant.export.c.program.DeltaPack`) decode in
C to the clamped table, whichever form they take: compiled from the emitted text for this host
and run on tables no export writes, under UBSan. Lines that stay inside the table's range (no
clamp in the loop) and lines that leave it (clamped), excess-packed rows, a falling row, rows all
at one end, steps as large as a pack holds, and counts of head and tail values from none to all."""
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from shiftquant.export.c.ctext import Width, array
from shiftquant.export.c.emit_few import walk_stage
from shiftquant.export.c.emit_thresholds import decode_thresholds, delta_arrays
from shiftquant.export.c.program import pack_deltas, packed_in_range, unpack_deltas
from tests.export.test_codegen import STRICT

K, LO, HI = 63, -1000, 1001


def _rows(rng) -> dict[str, np.ndarray]:
    """Named (C, K) raw tables: before clamping to [LO, HI]."""
    j, big = np.arange(K), 1 << 30
    line = lambda a, b: np.floor(a + (b - a) * j / (K - 1)).astype(np.int64)
    return {
        "lines inside": np.stack([line(-900, 950), line(-10, 10), np.r_[np.full(5, -4000), line(-800, 700)[5:]],
                                  np.r_[line(-300, 300)[:-7], np.full(7, 4000)]]),
        "lines leaving the range": np.stack([line(-3000, 2500), line(-1200, 1100), line(-999, 1002),
                                             np.r_[np.full(3, -5000), line(-2000, 3000)[3:]]]),
        "excess steps": np.stack([np.cumsum(rng.integers(0, 9, K)) - 200, np.cumsum(rng.integers(3, 60, K)) - 1500,
                                  np.r_[np.full(10, -1500), np.cumsum(rng.integers(0, 4, K - 10)) + 990]]),
        "a falling row": np.stack([np.cumsum(rng.integers(0, 6, K)) - 100, -np.cumsum(rng.integers(0, 6, K)) + 100]),
        "all at one end": np.stack([np.full(K, -7), np.full(K, 9), np.r_[np.full(30, -7), np.full(K - 30, 9)]]),
        # steps of nearly 2^30 (the most a pack holds): one more step than there are thresholds leaves int32
        "steps near int32's end": np.stack([np.r_[np.full(30, 1 - big), [2 - big, 1, big - 2], np.full(30, big - 1)],
                                            np.r_[np.full(40, 1 - big), [10, 265, 265], np.full(20, big - 1)],
                                            np.r_[np.full(20, 1 - big), np.cumsum(np.arange(23) * 3) + 5,
                                                  np.full(20, big - 1)]]),
    }


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_delta_packed_thresholds_decode_in_c_to_the_clamped_table(tmp_path):
    rng = np.random.default_rng(0)
    cases, want, forms = [], [], set()
    for n, (what, raw) in enumerate(_rows(rng).items()):
        d = pack_deltas(raw, LO, HI)
        assert d is not None, what
        forms.add((d.den is not None, packed_in_range(d)))
        nm, channels = f"t{n}", raw.shape[0]
        want.append(unpack_deltas(d))
        assert np.array_equal(want[-1], np.clip(raw, LO, HI)), what
        consts = delta_arrays(nm, d)
        if d.den is None:  # the excesses' first bit per channel
            consts += array("uint32_t", f"{nm}_ch_thr", [int(b) for b in d.row_bits])
        cases.append(consts + f"""
static void run_{nm}(void)
{{
    unsigned co, q;
    for (co = 0; co < {channels}u; co++) {{
{decode_thresholds(nm, d, "int16_t")}
        for (q = 0; q < {K}u; q++) printf("%d ", (int)thr_c[q]);
        printf("\\n");
    }}
}}
""")
    # every form the emitter writes: lines with and without the clamp, excesses
    assert {(True, True), (True, False), (False, True)} <= forms
    text = ("#include <stdint.h>\n#include <stdio.h>\n#define SQ_ONE_FORM\n" + "".join(cases)
            + "int main(void)\n{\n" + "".join(f"    run_t{n}();\n" for n in range(len(cases))) + "    return 0;\n}\n")
    (tmp_path / "decode.c").write_text(text)
    # undefined behaviour (a signed overflow) stops the program
    subprocess.run([shutil.which("cc"), *STRICT, "-O2", "-fsanitize=undefined", "-fno-sanitize-recover=all", "decode.c",
                    "-o", "decode"], cwd=tmp_path, check=True)
    out = subprocess.run([str(tmp_path / "decode")], capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [row for table in want for row in table]
    assert len(out) == len(rows)
    for line, expected in zip(out, rows):
        assert [int(x) for x in line.split()] == expected.tolist()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("rows", ["lines inside", "lines leaving the range"])
def test_a_single_value_walks_its_line_to_the_same_level(rows, tmp_path):
    """A one-position layer's output stage (:func:`walk_stage`) counts a value's thresholds along
    their line by jumps: the same level as counting the clamped table, for every value of the
    accumulator's range, lines inside the range (no clamp) and leaving it, negated channels too,
    under UBSan."""
    raw = _rows(np.random.default_rng(1))[rows]
    d = pack_deltas(raw, LO, HI)
    assert d is not None and d.den is not None and packed_in_range(d) == (rows == "lines inside")
    table = unpack_deltas(d)
    channels, negate = raw.shape[0], [c % 3 == 1 for c in range(raw.shape[0])]
    th = SimpleNamespace(deltas=d, count=K, levels=list(range(-20, -20 + K + 1)), negate=negate)
    k = SimpleNamespace(name="w", requant=th, output=SimpleNamespace(ctype="int16_t"))
    mask = "((w_neg >> co) & 1u) ? -1 : 0"
    values = np.arange(-1200, 1201, 7)
    stage = walk_stage(k, Width(16), mask)
    text = ("#include <stdint.h>\n#include <stdio.h>\n#define SQ_ONE_FORM\n#define SQ_S16(x) ((int32_t)(int16_t)(uint16_t)(x))\n"
            + delta_arrays("w", d) + f"static const uint32_t w_neg = {sum(1 << c for c in range(channels) if negate[c])}u;\n"
            + "static int16_t level(unsigned co, uint16_t a)\n{\n    int16_t out[1], *op = out;\n    const unsigned n = 1u, p = 0u;\n"
            + f"    uint16_t acc[1];\n    acc[0] = a;\n{stage}\n    return out[0];\n}}\n"
            + "int main(void)\n{\n    unsigned co;\n    int v;\n"
            + f"    for (co = 0; co < {channels}u; co++) {{\n        for (v = {values[0]}; v <= {values[-1]}; v += 7) "
            + "printf(\"%d \", (int)level(co, (uint16_t)v));\n        printf(\"\\n\");\n    }\n    return 0;\n}\n")
    (tmp_path / "walk.c").write_text(text)
    subprocess.run([shutil.which("cc"), *STRICT, "-O2", "-fsanitize=undefined", "-fno-sanitize-recover=all", "walk.c",
                    "-o", "walk"], cwd=tmp_path, check=True)
    out = subprocess.run([str(tmp_path / "walk")], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == channels
    for c, line in enumerate(out):
        v = -values if negate[c] else values
        expected = -20 + (table[c][None, :] <= v[:, None]).sum(1)
        assert [int(x) for x in line.split()] == expected.tolist(), c
