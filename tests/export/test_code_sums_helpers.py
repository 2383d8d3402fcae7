"""The by-code helpers (``sq_code_sums_*``, :func:`.emit_few.code_sums_helper`) compiled on their
own, every code width, input type, tap layout and count of positions, with their arguments
unknown (no call site whose constants gcc could fold in): no multiply or divide instruction on
this host at -O2 and -O3 -march=native, nor on a Cortex-M4 and M0+ at -Os where the Arm compiler
is installed. A network's build only shows the helpers with its own constant steps: with a step
gcc cannot fold, taps unrolled a window at a time compiled to a multiply (x86 ``imul``, Arm
``mla``)."""
import shutil
import subprocess

import pytest

from shiftquant.export.c.emit_few import code_sums_helper
from tests.export.test_codegen import MULTIPLY, STRICT, kernels_of
from tests.export.test_cortex_m import ARM_MULTIPLY

PRELUDE = """#include <stdint.h>
#include <string.h>
#define SQ_LE32(w) (w)
#define SQ_LOAD_LE32(v, p) (memcpy(&(v), (p), 4u), (v) = SQ_LE32(v))
#define SQ_ONE_FORM __attribute__((used))
"""
NAMES = [f"sq_code_sums_{bits}_{ctype}_{off}" + (f"x{count}" if count > 1 else "")
         for bits in (1, 2, 3, 4) for ctype in ("int8", "uint8", "int16") for off in ("s", "16", "32")
         for count in (1, 2, 4, 6, 8)]
BUILDS = [("cc", "objdump", ["-O2"], MULTIPLY), ("cc", "objdump", ["-O3", "-march=native"], MULTIPLY),
          ("arm-none-eabi-gcc", "arm-none-eabi-objdump", ["-mcpu=cortex-m4", "-mthumb", "-Os"], ARM_MULTIPLY),
          ("arm-none-eabi-gcc", "arm-none-eabi-objdump", ["-mcpu=cortex-m0plus", "-mthumb", "-Os"], ARM_MULTIPLY)]


@pytest.mark.parametrize("compiler, objdump, flags, pattern", BUILDS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_the_by_code_helpers_have_no_multiply_whatever_their_arguments(compiler, objdump, flags, pattern, tmp_path):
    if shutil.which(compiler) is None or shutil.which(objdump) is None:
        pytest.skip(f"no {compiler} or {objdump}")
    (tmp_path / "helpers.c").write_text(PRELUDE + "\n".join(code_sums_helper(name) for name in NAMES))
    subprocess.run([shutil.which(compiler), *STRICT, *flags, "-c", "helpers.c", "-o", "helpers.o"], cwd=tmp_path,
                   check=True)
    functions = kernels_of(tmp_path / "helpers.o", shutil.which(objdump))
    assert set(NAMES) <= set(functions), sorted(set(NAMES) - set(functions))
    found = {f: sorted({op for op in ops if pattern.match(op)}) for f, ops in functions.items()}
    assert not any(found.values()), {f: ops for f, ops in found.items() if ops}
