"""Flash, RAM and instructions per inference on a Cortex-M4 (QEMU's mps2-an386), measured.

Each model is exported at the ``deploy`` preset (integer-only, uint8 pixels in), its C built by
``shiftquant.export.c.cortex_m`` (``arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os``, newlib-nano)
and run in ``qemu-system-arm -icount shift=0`` on ``--images`` generated pixel images; the logits
are checked against the reference runtime bit for bit before anything is reported. Flash is the
model object's ``.text + .rodata + .data`` (code and constants), RAM its ``.data + .bss`` (the
arena) plus the largest kernel's stack scratch, both from ``arm-none-eabi-size``. Weights are
random; BatchNorm statistics and affine are drawn as after training (scales that are not powers
of two), since the delta-packed thresholds take more bits when their steps vary. The int8 anchor is MLPerf Tiny's ResNet-8 reference
on TFLite Micro + CMSIS-NN: 99.3 kB of .tflite flash, a 53,972 B arena, 227 ms at 120 MHz (about
2.2 cycles per MAC): figures from the MLPerf Tiny paper and its reference submission, not
measured here.

    python benchmarks/cortex_m.py [--models resnet8 resnet20] [--bits 3 2] [--images 4] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import shiftquant as sq
from shiftquant.cli import bundle_summary
from shiftquant.export.c import cortex_m
from shiftquant.models import build_model

SHAPES = {"resnet8": (3, 32, 32), "resnet20": (1, 28, 28)}


def measure(name: str, bits: int, images: int, tmp: Path) -> dict:
    c, h, w = SHAPES.get(name, (3, 32, 32))
    torch.manual_seed(0)
    model = build_model(name, 10, c).eval()
    with torch.no_grad():  # BatchNorm as after training: scales that are not powers of two
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    # W3A3 = 2 shift bits (zero, sign, 2^0..2^-3), W2A2 = 1 shift bit
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=bits - 1, act_shift_bits=bits - 1))
    px = sq.PixelInput((0.5,) * c, (0.25,) * c)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (32, c, h, w)).astype(np.uint8)
    sq.calibrate(model, [px.to_float(calib)])
    sq.set_slope(model, 0.0)
    path = tmp / f"{name}-w{bits}.sqb"
    rt = sq.export(model, path, px.to_float(calib[:1]), px)
    pixels = rng.integers(0, 256, (images, c, h, w)).astype(np.uint8)
    program = cortex_m.write_project(rt, tmp / f"{name}-w{bits}", "net", pixels)
    built = cortex_m.build(tmp / f"{name}-w{bits}", "net", program.stack_bytes)
    run = cortex_m.run(built.elf)
    assert np.array_equal(run.logits, rt.run_int(pixels)[0]), "target != reference"
    macs = bundle_summary(str(path))["macs"]["total"]
    per_image = float(np.median(run.instructions))
    return {"model": name, "bits": f"W{bits}A{bits}", "input": [c, h, w], "macs": macs,
            "flash_bytes": built.flash_bytes, "ram_bytes": built.ram_bytes, "sections": built.sections,
            "host_estimate_flash": program.flash_bytes, "instructions_per_image": per_image,
            "instructions_per_mac": per_image / macs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet8", "resnet20"])
    p.add_argument("--bits", type=int, nargs="+", default=[3, 2])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--json")
    args = p.parse_args()
    if cortex_m.tools_missing():
        raise SystemExit(f"missing {cortex_m.tools_missing()} (Debian: gcc-arm-none-eabi libnewlib-arm-none-eabi "
                         "qemu-system-arm)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for bits in args.bits:
                r = measure(name, bits, args.images, Path(tmp))
                rows.append(r)
                print(f"{r['model']:>9} {r['bits']}: {r['macs'] / 1e6:.2f} M MACs, flash {r['flash_bytes']:,} B, "
                      f"RAM {r['ram_bytes']:,} B, {r['instructions_per_image'] / 1e6:.1f} M instructions per image, "
                      f"{r['instructions_per_mac']:.2f} per MAC", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
