"""Few-position shift layers on the host: the channel lanes' form of ungrouped ones (x86 hosts with
AVX2, ``emit_lanes``), which the host library compiles and runs (``VPSHUFB`` in those kernels), and
the by-code form of depthwise ones in every weights form (``emit_few``): bit for bit with the
reference runtime and the PyTorch hard model, packed and as lists, on two threads; strict C99
with no multiply, within the stated stack."""
import re
import shutil
import subprocess

import numpy as np
import pytest
import timm
import torch

import shiftquant as sq
from shiftquant.export.c import CRuntime
from shiftquant.export.c.emit_few import FEW, takes_few
from shiftquant.export.c.emit_lanes import LANES, run_length, takes_lanes
from shiftquant.export.c.program import CTYPES, ShiftLayer
from tests.export.models import deploy_exported
from tests.export.test_codegen import (
    assert_no_multiply_in_shift_kernels,
    compile_object,
    deepest_call,
    kernels_of,
)
from tests.export.test_integer_mobile import PIXELS


def _native_avx2() -> bool:
    """Whether the host library's build (``-march=native``) targets AVX2."""
    cc = shutil.which("cc")
    if cc is None or shutil.which("objdump") is None:
        return False
    macros = subprocess.run([cc, "-march=native", "-dM", "-E", "-"], input="", capture_output=True, text=True,
                            check=False).stdout
    return "__AVX2__" in macros


pytestmark = pytest.mark.skipif(not _native_avx2(), reason="the host compiler does not target AVX2 (or no objdump)")
AVX2 = ["-O2", "-mavx2"]


def _mobilenet(tmp_path_factory, size: int, bits: int):
    torch.manual_seed(1)
    model = timm.create_model("mobilenetv2_035", num_classes=10).eval()
    return deploy_exported(model, (8, 3, size, size), PIXELS, tmp_path_factory.mktemp("mbv2") / "m.sqb",
                           weight_shift_bits=bits, act_shift_bits=bits)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """timm's MobileNetV2 (width 0.35) at 3x32x32, W3A3 with 2 shift bits (3-bit codes, inputs up
    to 8: every product fits a byte, one a run): 1x1 and 2x2 maps at its end, 24 to 1280 channels."""
    return _mobilenet(tmp_path_factory, 32, 2)


@pytest.fixture(scope="module")
def mobilenet_1bit(tmp_path_factory):
    """The same at 3x40x40 with 1 shift bit (inputs up to 2, weights ±1 and ±2): runs of many taps
    summed in bytes before they are widened."""
    return _mobilenet(tmp_path_factory, 40, 1)


def _lanes_array_bytes(source: str) -> int:
    """Bytes of the channel lanes' constant arrays that C ``source`` declares."""
    sizes = {ctype: size for ctype, size, _, _ in CTYPES.values()}
    found = re.findall(r"static const (\w+) \w+_(?:prod|lcode|lin|lblk)\[(\d+)\]", source)
    return sum(sizes[ctype] * int(n) for ctype, n in found)


def lane_layers(program, weights: str) -> list[ShiftLayer]:
    return [k for k in program.kernels if isinstance(k, ShiftLayer) and takes_lanes(k, weights)]


@pytest.mark.parametrize("model, weights, threads", [("mobilenet", "lists", 2), ("mobilenet", "packed", 1),
                                                    ("mobilenet_1bit", "lists", 2)])
def test_few_position_layers_run_in_channel_lanes_bit_for_bit(model, weights, threads, request, tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path))
    rt, pixels, ref = request.getfixturevalue(model)
    native = CRuntime(rt, threads=threads, weights=weights)
    lanes = lane_layers(native.program, weights)
    runs = {min(run_length(k), k.taps) for k in lanes}
    assert runs == {1} if model == "mobilenet" else max(runs) > 8, runs  # one product a run, or many
    assert lanes
    if model == "mobilenet":  # one position and several (a 2x2 map over bordered rows), channels that fill
        assert any(k.positions == 1 for k in lanes) and any(k.positions > 1 for k in lanes)  # whole blocks and not
        assert any(k.cout % LANES for k in lanes) and any(k.cout % LANES == 0 for k in lanes)
        few = [k.positions for k in native.program.kernels if isinstance(k, ShiftLayer) and k.groups > 1
               and takes_few(k, weights)]
        assert 1 in few and max(few) > FEW, few  # depthwise by code: 1x1 maps, 2x2 ones over bordered rows
    shuffles = {f.split(".")[0] for f, ops in kernels_of(native.library).items() if "vpshufb" in ops}
    assert {k.name for k in lanes} <= shuffles, sorted({k.name for k in lanes} - shuffles)  # compiled in: it runs
    assert np.array_equal(native.run(pixels), ref)
    rng = np.random.default_rng(3)
    for x in (rng.integers(0, 256, pixels.shape), np.zeros(pixels.shape), np.full(pixels.shape, 255)):
        x = x.astype(pixels.dtype)
        assert np.array_equal(native.run_int(x)[0], rt.run_int(x)[0])


def test_the_lanes_form_is_strict_c99_without_multiplies_within_the_stated_stack(mobilenet, tmp_path):
    rt = mobilenet[0]
    for weights in ("lists", "packed"):
        program = sq.codegen(rt, tmp_path, "net", weights=weights)
        assert lane_layers(program, weights)
        compile_object(tmp_path, "net", [*AVX2, "-fopenmp"])  # -Wall -Wextra -Werror -pedantic
        assert _lanes_array_bytes((tmp_path / "net.c").read_text()) == program.lanes_flash_bytes  # as printed
        assert_no_multiply_in_shift_kernels(rt, tmp_path, AVX2)
        for flags in (AVX2, ["-O0", "-mavx2"]):  # unoptimized, the intrinsics' temporaries spill
            deepest, frames = deepest_call(tmp_path, "net", shutil.which("cc"), flags)
            assert 0 < deepest <= program.stack_bytes, (weights, flags, deepest, program.stack_bytes, frames)
        assert f"x86 hosts with AVX2 compile {program.lanes_flash_bytes} more" in (tmp_path / "net.h").read_text()
        assert program.lanes_flash_bytes > sum(k.cout * k.taps for k in lane_layers(program, weights))  # a byte a code
