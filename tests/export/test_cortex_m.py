"""On a microcontroller (issue 23, item 1): ``shiftquant codegen --target cortex-m4`` writes a
bare-metal project for QEMU's mps2-an386 (a Cortex-M4); built with ``arm-none-eabi-gcc -mcpu=cortex-m4
-mthumb -Os`` and newlib-nano, run in ``qemu-system-arm``, its integer logits equal the PyTorch hard
model's bit for bit: a ResNet-20 on 20 Fashion-MNIST test images and a ViT on generated pixels.
The model's flash and RAM come from ``arm-none-eabi-size``, instructions per image from SysTick
under ``-icount`` (calibrated by a loop of known length)."""
import dataclasses
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import shiftquant as sq
from shiftquant.cli import bundle_summary, main
from shiftquant.errors import ConfigError
from shiftquant.data.fashion_mnist import FILES, MEAN, STD, find_root, read_idx
from shiftquant.export.c import codegen, cortex_m
from shiftquant.models import lenet5, resnet8, resnet20
from tests.export.models import deploy_exported
from tests.export.test_codegen import deepest_call, kernels_of
from tests.export.test_mobile import PIXELS, exported

pytestmark = pytest.mark.skipif(bool(cortex_m.tools_missing()),
                                reason=f"missing {cortex_m.tools_missing()} (.ci/run installs them)")


ARM_MULTIPLY = re.compile(r"^(mul|mla|mls|[su]mull|[su]mlal|smul\w*|smla\w*|smls\w*|smmul\w*|smmla\w*|smuad\w*"
                          r"|smusd\w*|umaal|[su]div)s?(\.w|\.n)?$")


# The helpers the shift layers call on cores with the DSP extension (runs of taps, threshold stages).
SHIFT_HELPERS = re.compile(r"^sq_(run|count|search|bsearch|group_codes|code_sums)_")


def _multiplies_in_shift_layers(obj) -> dict:
    """Multiply and divide instructions in the Arm object's shift-layer functions and the helpers
    they call (arm-none-eabi-objdump -d)."""
    functions = kernels_of(obj, shutil.which("arm-none-eabi-objdump"))
    shift = {f: ops for f, ops in functions.items() if "_shift_" in f or SHIFT_HELPERS.match(f)}
    assert shift
    found = {f: {op for op in ops if ARM_MULTIPLY.match(op)} for f, ops in shift.items()}
    return {f: ops for f, ops in found.items() if ops}


def _on_target(bundle, images, tmp_path, name="net", capsys=None, target="cortex-m4"):
    """The project written (and built) by the CLI, built again from Python and run in QEMU."""
    np.save(tmp_path / "images.npy", images)
    main(["codegen", str(bundle), str(tmp_path / "mcu"), "--name", name, "--target", target,
          "--images", str(tmp_path / "images.npy")])
    printed = capsys.readouterr().out if capsys is not None else ""
    assert {"Makefile", "link.ld", "startup.c", "main.c", "inputs.h", f"{name}.c"} <= {
        p.name for p in (tmp_path / "mcu").iterdir()}
    header = (tmp_path / "mcu" / f"{name}.h").read_text()
    main(["codegen", str(bundle), str(tmp_path / "host"), "--name", name])  # host C: the same Cortex-M4 sizes
    host_header = (tmp_path / "host" / f"{name}.h").read_text()
    program = cortex_m.write_project(bundle, tmp_path / "mcu", name, images, target)  # the same files: sizes
    build = cortex_m.build(tmp_path / "mcu", name, program.stack_bytes, target)
    core = target.upper().replace("-", "_")
    for text in (header, host_header) if target == "cortex-m4" else (header,):  # the host's header: a Cortex-M4's
        assert f"#define {name.upper()}_{core}_FLASH_BYTES ({build.flash_bytes})" in text
        assert f"#define {name.upper()}_{core}_RAM_BYTES ({build.ram_bytes})" in text
    if capsys is not None:  # the CLI printed the sizes of the same build
        assert f"takes {build.flash_bytes:,} bytes of flash" in printed and f"{build.ram_bytes:,} bytes of RAM" in printed
    return program, build, cortex_m.run(build.elf, target=target)


def test_resnet20_runs_on_a_cortex_m4_bit_for_bit(tmp_path, capsys):
    root = find_root(None)
    if root is None:
        pytest.skip("Fashion-MNIST is not installed (Debian: dataset-fashion-mnist)")
    torch.manual_seed(0)
    model = resnet20(num_classes=10, in_chans=1).eval()
    px = sq.PixelInput((MEAN,), (STD,))
    rt, _, _ = deploy_exported(model, (8, 1, 28, 28), px, tmp_path / "r20.sqb")
    images = read_idx(root / FILES["test"][0])[:20].reshape(20, 1, 28, 28)
    with torch.no_grad():
        ref = model(px.to_float(images)).numpy()
    program, build, result = _on_target(rt.source, images, tmp_path, capsys=capsys)
    ints, unit = rt.run_int(images)
    assert np.array_equal(result.logits, ints)
    assert np.array_equal((result.logits * unit).astype(np.float32), ref)  # the PyTorch hard model
    assert len({tuple(row) for row in ints}) == len(images)  # a distinct output per image
    assert not _multiplies_in_shift_layers(build.elf.parent / "net.o")  # shift-adds on the Cortex-M4 too
    assert "warning" not in build.warnings, build.warnings
    # The model's object holds every constant the lowering counted, its .bss the arena.
    assert build.flash_bytes >= program.flash_bytes and build.sections["bss"] >= program.arena_bytes
    summary = bundle_summary(str(rt.source), cortex_m=True)
    assert summary["c"]["cortex_m4"] == {"flash": build.flash_bytes, "ram": build.ram_bytes}
    layers = [n for n in rt.nodes if n["op"].startswith("shift_")]
    assert summary["c"]["int8_flash"] == sum(int(np.prod(n["weight_shape"])) + 4 * n["weight_shape"][0] for n in layers)
    macs = summary["macs"]["total"]
    assert (result.instructions > macs / 10).all()  # counted, not a stray clock
    print(f"ResNet-20 on mps2-an386: flash {build.flash_bytes} B, RAM {build.ram_bytes} B, "
          f"{np.median(result.instructions):.0f} instructions per image, {np.median(result.instructions) / macs:.2f} "
          "per MAC")


def test_a_vit_runs_on_a_cortex_m4_bit_for_bit(tmp_path):
    model, rt, path, images = exported("timm vit_tiny_patch16_224", tmp_path, images=4)
    with torch.no_grad():
        ref = model(PIXELS.to_float(images)).numpy()
    _, build, result = _on_target(path, images, tmp_path, "vit")
    assert "warning" not in build.warnings, build.warnings
    ints, unit = rt.run_int(images)
    assert np.array_equal(result.logits, ints)
    assert np.array_equal((result.logits * unit).astype(np.float32), ref)


def _resnet8_with_negated_channels(path, size: int = 32):
    """The MLPerf Tiny ResNet-8 at W3A3 whose BatchNorm flips some channels' sign, exported to ``path``
    for ``size`` x ``size`` images."""
    torch.manual_seed(1)
    model = resnet8(num_classes=10, in_chans=3).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)  # negative scales: thresholds compared on -acc
                m.bias.uniform_(-0.3, 0.3)
    px = sq.PixelInput((0.5,) * 3, (0.25,) * 3)
    # 3-bit codes (zero, sign, 2^0 .. 2^-3): activations of at most 8 steps sum 15 taps in a byte
    return deploy_exported(model, (8, 3, size, size), px, path, weight_shift_bits=2, act_shift_bits=2)[0]


@pytest.mark.parametrize("target", ["cortex-m3", "cortex-m7", "cortex-m33", "cortex-m55"])
def test_the_other_cores_run_the_model_bit_for_bit(target, tmp_path):
    """The ResNet-8 of the DSP forms' test on the other cores' boards: the Cortex-M3 (no DSP
    extension: plain 32-bit adds of byte lanes, binary searches), M7, M33 (secure state, its own
    memory map) and M55 (the DSP forms, not Helium); bit for bit, warning-free at -Wall, no multiply
    in a shift layer. The Cortex-M0+ (Armv6-M; QEMU has no board with the RAM) is compiled only."""
    rt = _resnet8_with_negated_channels(tmp_path / "r8.sqb", 28)
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 28, 28)).astype(np.uint8)
    program, build, result = _on_target(rt.source, images, tmp_path, target=target)
    assert np.array_equal(result.logits, rt.run_int(images)[0])
    assert "warning" not in build.warnings, build.warnings
    assert not _multiplies_in_shift_layers(build.elf.parent / "net.o")
    assert f"-mcpu={target}" in (tmp_path / "mcu" / "Makefile").read_text()
    assert (result.instructions > 9.5e6).all()  # counted: at least one instruction per MAC
    if target == "cortex-m3":  # signed inputs took the biased plain adds, not a lane at a time
        assert "static void SQ_ONE_FORM SQ_NOINLINE sq_swar_b_" in (tmp_path / "mcu" / "net.c").read_text()
        done = subprocess.run([shutil.which("arm-none-eabi-gcc"), "-std=c99", "-mcpu=cortex-m0plus", "-mthumb", "-Os",
                               "-Wall", "-c", "net.c", "-o", "m0.o"], cwd=tmp_path / "mcu", capture_output=True, text=True)
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr[-1500:]


class _NegativeInputs(torch.nn.Module):
    """A padded 5x5 convolution whose input is clamped below zero: every value it reads but the
    padding is negative (a review found the biased byte lanes overflowing on the zeros)."""

    def __init__(self, w: int = 16, size: int = 8):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, w, 3, padding=1, bias=False), torch.nn.BatchNorm2d(w),
                                        torch.nn.ReLU())
        self.b = torch.nn.Sequential(torch.nn.Conv2d(w, w, 3, padding=1, bias=False), torch.nn.BatchNorm2d(w))
        self.c = torch.nn.Sequential(torch.nn.Conv2d(w, w, 5, padding=2, bias=False), torch.nn.BatchNorm2d(w),
                                     torch.nn.ReLU())
        self.head = torch.nn.Linear(w * size * size, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.c(torch.clamp(self.b(self.stem(x)), max=-0.3)), 1))


def test_negative_inputs_and_their_zero_padding_sum_exactly_on_a_cortex_m3(tmp_path):
    """On the Cortex-M3 (signed bytes biased to x + 2^p >= 0), an input whose values are all
    negative is padded with zeros, which bias to more than any value: the runs are cut for them."""
    torch.manual_seed(3)
    model = _NegativeInputs().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-0.4, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    px = sq.PixelInput((0.5,), (0.25,))
    rt, _, _ = deploy_exported(model, (8, 1, 8, 8), px, tmp_path / "neg.sqb", act_shift_bits=None, act_uniform_bits=5)
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8)).astype(np.uint8)
    program, build, result = _on_target(rt.source, images, tmp_path, target="cortex-m3")
    negative = [k for k in program.kernels if getattr(k, "inputs", None) and k.inputs[0].hi < 0 and k.narrow_run]
    assert negative, "no shift layer reads negative bytes"
    assert "sq_swar_b_" in (tmp_path / "mcu" / "net.c").read_text()
    assert np.array_equal(result.logits, rt.run_int(images)[0])


def test_run_helpers_with_32_bit_tap_offsets_run_bit_for_bit_on_a_cortex_m4(tmp_path):
    """A 16-channel 70x70 map puts taps more than 65,535 bytes apart: the DSP run helpers that
    read 32-bit offsets (two taps a step after the first, one first where their count is odd) sum
    as the reference does; the signed first layer takes the ssum helper."""
    from torch import nn

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-0.4, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    px = sq.PixelInput((0.5,), (0.25,), 255)
    rt, pixels, _ = deploy_exported(model, (2, 1, 70, 70), px, tmp_path / "wide.sqb", weight_shift_bits=2,
                                    act_shift_bits=2)
    images = pixels[:3]
    _, _, result = _on_target(rt.source, images, tmp_path)
    helpers = set(re.findall(r"static void (sq_run_\w+)\(", (tmp_path / "mcu" / "net.c").read_text()))
    assert {"sq_run_add_8_32", "sq_run_addsub_8_32", "sq_run_ssum_8_16"} <= helpers, helpers
    assert np.array_equal(result.logits, rt.run_int(images)[0])


def test_a_lenet_runs_on_a_cortex_m0_bit_for_bit(tmp_path, monkeypatch):
    """The smallest core (Armv6-M: Thumb-1, no unaligned access, no DSP extension) on the
    micro:bit's 16 kB of RAM: LeNet-5 with its pools, bit for bit with the PyTorch hard model."""
    torch.manual_seed(0)
    model = lenet5(num_classes=10, in_chans=1).eval()
    px = sq.PixelInput((0.5,), (0.25,))
    rt, _, _ = deploy_exported(model, (8, 1, 28, 28), px, tmp_path / "lenet.sqb")
    images = np.random.default_rng(2).integers(0, 256, (3, 1, 28, 28)).astype(np.uint8)
    program, build, result = _on_target(rt.source, images, tmp_path, target="cortex-m0")
    with torch.no_grad():
        ref = model(px.to_float(images)).numpy()
    ints, unit = rt.run_int(images)
    assert np.array_equal(result.logits, ints) and np.array_equal((result.logits * unit).astype(np.float32), ref)
    assert "warning" not in build.warnings, build.warnings
    assert build.ram_bytes < 16 * 1024 and "LENGTH = 16K" in (tmp_path / "mcu" / "link.ld").read_text()
    big = _resnet8_with_negated_channels(tmp_path / "r8.sqb", 28)  # over 16 kB: refused by name, with the cores that fit
    with pytest.raises(ConfigError, match=r"target='cortex-m0'.*microbit has 16KB.*'cortex-m3'"):
        cortex_m.write_project(big.source, tmp_path / "big", "net", None, "cortex-m0")
    small = dataclasses.replace(cortex_m.TARGETS["cortex-m0"], flash_length="1K")  # constants beyond a board's flash
    monkeypatch.setitem(cortex_m.TARGETS, "cortex-m0", small)
    with pytest.raises(ConfigError, match=r"target='cortex-m0'.*bytes of flash for its constants.*microbit has 1KB"):
        cortex_m.write_project(rt.source, tmp_path / "small", "net", None, "cortex-m0")


def test_the_dsp_forms_run_bit_for_bit_on_a_cortex_m4(tmp_path):
    """A ResNet-8 whose BatchNorm flips some channels' sign (decreasing requantizations): on the
    Cortex-M4 its shift layers sum byte lanes (signed and unsigned inputs), count few thresholds
    in lanes and search the residual grid's many (from buckets; by bisection on the 7x7 maps), blocks are tiles of whole-word rows (a 28-wide row
    in 7 words, 2 rows of 14, 4 rows of 7, the last tile of a 7-row map overlapping the one before), the input
    stages go through level tables and lane pairs: all of it bit for bit with the reference, and
    no multiply or divide in a shift layer or the helpers it calls."""
    rt = _resnet8_with_negated_channels(tmp_path / "r8.sqb", 28)  # maps of 28, 14 and 7 rows
    images = np.random.default_rng(1).integers(0, 256, (8, 3, 28, 28)).astype(np.uint8)
    program, build, result = _on_target(rt.source, images, tmp_path)
    assert np.array_equal(result.logits, rt.run_int(images)[0])
    assert "warning" not in build.warnings, build.warnings  # -Wall: both forms' constants, one compiled
    source = (tmp_path / "mcu" / "net.c").read_text()
    for form in ("sq_run_ssum_", "sq_run_add_7_", "sq_run_addsub_7_", "sq_count_lanes(",
                 "sq_search_255(", "sq_bsearch_255(", "sq_count_pairs(", "_lut[", "_2x4s", "_4x2s",
                 "the last block overlaps"):
        assert form in source, form
    dsp = [k for k in program.kernels if getattr(k, "dsp_form", False) and k.requant is not None]
    assert any(any(k.requant.negate) for k in dsp)
    assert not _multiplies_in_shift_layers(build.elf.parent / "net.o")
    # Debug builds keep a frame pointer (r7): the assembly must fit the 13 registers left (the
    # run helpers' two-taps-a-step form needed 14 and did not compile so).
    for flags in (["-O0"], ["-Os", "-fno-omit-frame-pointer"], ["-O2", "-fno-omit-frame-pointer"]):
        done = subprocess.run([shutil.which("arm-none-eabi-gcc"), "-std=c99", "-mcpu=cortex-m4", "-mthumb", *flags,
                               "-c", "net.c", "-o", "debug.o"], cwd=tmp_path / "mcu", capture_output=True, text=True)
        assert done.returncode == 0, (flags, done.stderr[-1500:])
        deepest, frames = deepest_call(tmp_path / "mcu", "net", shutil.which("arm-none-eabi-gcc"),
                                       ["-mcpu=cortex-m4", "-mthumb", *flags])
        assert deepest <= program.stack_bytes, (flags, deepest, program.stack_bytes, frames)  # the stated RAM's stack
    # The same C in ARM state (-marm: Cortex-A and -R cores without NEON take the DSP forms too),
    # where LDRD/STRD take only an even, consecutive register pair.
    assert np.array_equal(_run_in_arm_state(tmp_path / "mcu", images.shape[0]), result.logits)
    done = subprocess.run([shutil.which("arm-none-eabi-gcc"), "-std=c99", "-mcpu=cortex-r5", "-marm", "-Os", "-Wall",
                           "-c", "net.c", "-o", "r5.o"], cwd=tmp_path / "mcu", capture_output=True, text=True)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr[-1500:]


ARM_STATE_MAIN = """#include <stdint.h>
#include <stdio.h>
#include "net.h"
#include "inputs.h"
int main(void)
{
    static int32_t logits[NET_OUTPUT_SIZE];
    int i, j;
    for (i = 0; i < SQ_IMAGES; i++) {
        net_run(sq_images[i], logits);
        printf("image");
        for (j = 0; j < NET_OUTPUT_SIZE; j++) printf(" %ld", (long)logits[j]);
        printf("\\n");
    }
    return 0;
}
"""


def _run_in_arm_state(mcu, images):
    """The logits of a project's model (named ``net``) on its images, built for a Cortex-A15 in ARM state
    (``-marm``, no NEON: the DSP forms) and run on QEMU's ``virt`` board through newlib's
    semihosting."""
    (mcu / "arm_state.c").write_text(ARM_STATE_MAIN)
    done = subprocess.run([shutil.which("arm-none-eabi-gcc"), "-std=c99", "-mcpu=cortex-a15", "-marm", "-Os", "-Wall",
                           "arm_state.c", "net.c", "--specs=nano.specs", "--specs=rdimon.specs",
                           "-Wl,-Ttext-segment=0x40000000", "-o", "arm_state.elf"], cwd=mcu, capture_output=True, text=True)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr[-1500:]
    ran = subprocess.run([shutil.which("qemu-system-arm"), "-M", "virt", "-cpu", "cortex-a15", "-nographic", "-nodefaults",
                          "-semihosting-config", "enable=on,target=native", "-kernel", "arm_state.elf"],
                         cwd=mcu, capture_output=True, text=True, timeout=300)
    rows = [line.split()[1:] for line in ran.stdout.splitlines() if line.startswith("image")]
    assert ran.returncode == 0 and len(rows) == images, (ran.stdout[-500:], ran.stderr[-500:])
    return np.asarray(rows, dtype=np.int64)


def test_tables_weights_build_and_run_on_a_cortex_m4(tmp_path):
    """``shiftquant codegen --weights tables`` writes the same portable C: on a Cortex-M4 its
    residual-grid layers count in lanes from the thresholds, which the host's level tables had
    left out (the build failed: ``*_thr`` undeclared); bit for bit with the reference."""
    rt = _resnet8_with_negated_channels(tmp_path / "r8.sqb", 16)
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 16, 16)).astype(np.uint8)
    cortex_m.write_project(rt.source, tmp_path / "mcu", "net", images)
    tables = codegen(rt.source, tmp_path / "mcu", "net", weights="tables", borders="minimal")
    assert "_lutlo" in (tmp_path / "mcu" / "net.c").read_text()  # the host's level tables are there
    build = cortex_m.build(tmp_path / "mcu", "net", tables.stack_bytes)
    assert "warning" not in build.warnings, build.warnings
    assert np.array_equal(cortex_m.run(build.elf).logits, rt.run_int(images)[0])


def test_column_kernels_build_without_warnings_on_a_cortex_m4(tmp_path):
    """3x1 kernels on 8x1 maps: their few thresholds are counted in lanes on the Cortex-M4, so the
    portable stage's two-values-a-step count is compiled for no core, and its helper is not
    written (-Wall warned it unused before); bit for bit with the reference."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, (3, 1)), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, (3, 1)), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    px = sq.PixelInput((0.5,), (0.25,))
    rt, pixels, _ = deploy_exported(model, (8, 1, 8, 1), px, tmp_path / "col.sqb", weight_shift_bits=2,
                                    act_shift_bits=2)
    _, build, result = _on_target(rt.source, pixels[:4], tmp_path)
    assert np.array_equal(result.logits, rt.run_int(pixels[:4])[0])
    assert "sq_count_lanes(" in (tmp_path / "mcu" / "net.c").read_text()
    assert "warning" not in build.warnings, build.warnings


def test_a_crafted_bundle_runs_on_a_cortex_m4_as_the_reference_runs_it(tmp_path):
    """A bundle nobody trained: the residual grid's 255 thresholds of three layers replaced by
    ascending tables the loader accepts but no export writes (every one at the int32 maximum or
    minimum, random ones across the proven range and far beyond it, one jump from the lowest to
    the highest; stored as int64). The bucketed count of the Cortex-M4's shift layers and the host
    C give the reference runtime's logits bit for bit, and the logits did change."""
    from shiftquant.export.format.bundle import read_bundle, write_bundle

    original = _resnet8_with_negated_channels(tmp_path / "r8.sqb")
    manifest, tensors = read_bundle(tmp_path / "r8.sqb")
    rng = np.random.default_rng(0)
    for layer, span in (("layer1_0_conv2", 3000), ("layer2_0_conv2", 5000), ("layer3_0_conv2", 9000)):
        key = f"{layer}.requant.thresholds"
        thr = np.cumsum(tensors[key].astype(np.int64), axis=0)  # stored: a first row, then differences
        n = len(thr)
        thr[:, 0], thr[:, 1] = 2 ** 31 - 1, -2 ** 31
        thr[:, 2] = np.sort(rng.integers(-span, span, n))
        thr[:, 3] = np.sort(rng.integers(-2 ** 31, 2 ** 31 - 1, n))
        thr[: n // 2, 4], thr[n // 2:, 4] = -2 ** 31, 2 ** 31 - 1
        tensors[key] = np.concatenate([thr[:1], np.diff(thr, axis=0)])
    write_bundle(tmp_path / "crafted.sqb", manifest, tensors)
    crafted = sq.load_bundle(tmp_path / "crafted.sqb")
    images = np.random.default_rng(2).integers(0, 256, (4, 3, 32, 32)).astype(np.uint8)
    want = crafted.run_int(images)[0]
    assert not np.array_equal(want, original.run_int(images)[0])
    _, _, result = _on_target(tmp_path / "crafted.sqb", images, tmp_path)
    assert "sq_search_255(" in (tmp_path / "mcu" / "net.c").read_text()
    assert np.array_equal(result.logits, want)
    assert np.array_equal(sq.load_bundle(tmp_path / "crafted.sqb", backend="c").run(images), crafted.run(images))


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m3"])
def test_crafted_input_and_eight_level_thresholds_run_as_the_reference_runs_them(target, tmp_path):
    """Input stages the loader accepts but no export writes: every threshold below the input's
    range (the layer reads one level, 8, and its zero padding), every one above it (one negative
    level), duplicates; and the 8-level requantizations' tables at the int32 extremes, random and
    one jump (those of the levels below 0 always passed, so that the declared ranges hold). The C on the core (DSP forms on the M4, the scalar ones on the M3) and on the host
    give the reference runtime's logits, which the crafting changed."""
    from shiftquant.export.format.bundle import read_bundle, write_bundle

    original = _resnet8_with_negated_channels(tmp_path / "r8.sqb")
    manifest, tensors = read_bundle(tmp_path / "r8.sqb")
    rng = np.random.default_rng(1)
    stored = lambda thr: np.concatenate([thr[:1], np.diff(thr, axis=0)])  # a first row, then differences
    tensors["layer2_0_conv1.input_thresholds"] = stored(np.full((8, 1), -2 ** 31, np.int64))  # all passed
    tensors["layer1_0_conv1.input_thresholds"] = stored(np.full((8, 1), 2 ** 31 - 1, np.int64))  # none
    dup = np.concatenate([np.full((4, 1), -2 ** 31), np.sort(rng.integers(0, 40, (4, 1)), axis=0) // 8 * 8])
    tensors["layer3_0_conv1.input_thresholds"] = stored(dup)  # duplicates; levels below 0 unreached
    for layer in ("layer1_0_conv1", "layer2_0_conv1", "layer3_0_conv1"):
        key = f"{layer}.requant.thresholds"
        thr = np.cumsum(tensors[key].astype(np.int64), axis=0)
        thr[:4] = -2 ** 31  # levels -8 .. -1 always passed: the declared range [0, 8] holds
        thr[4:, 0], thr[4:, 1] = -2 ** 31, 2 ** 31 - 1
        thr[4:, 2] = np.sort(rng.integers(-300, 300, 4))
        thr[4:6, 3], thr[6:, 3] = -2 ** 31, 2 ** 31 - 1
        tensors[key] = stored(thr)
    write_bundle(tmp_path / "crafted.sqb", manifest, tensors)
    crafted = sq.load_bundle(tmp_path / "crafted.sqb")
    images = np.random.default_rng(2).integers(0, 256, (4, 3, 32, 32)).astype(np.uint8)
    want = crafted.run_int(images)[0]
    assert not np.array_equal(want, original.run_int(images)[0])
    program, _, result = _on_target(tmp_path / "crafted.sqb", images, tmp_path, target=target)
    ranges = {k.node: (k.inputs[0].lo, k.inputs[0].hi) for k in program.kernels if k.name.split("_")[1] == "shift"}
    assert ranges["layer2_0_conv1"] == (8, 8) and ranges["layer1_0_conv1"] == (-8, -8)  # the cases, not others
    assert np.array_equal(result.logits, want)
    assert np.array_equal(sq.load_bundle(tmp_path / "crafted.sqb", backend="c").run_int(images)[0], want)
