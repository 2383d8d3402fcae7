"""Flash, RAM and instructions per inference on a Cortex-M4 (QEMU's mps2-an386), measured; with
``--targets``, on the other cores of ``cortex_m.TARGETS`` too (the same bundle).

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

The instruction count could depend on the weights (zero weights are skipped) and on the inputs
(threshold searches). ``--weights trained`` measures float models trained on Fashion-MNIST
instead, quantized at the same preset, fine-tuned hard (straight-through) on 20,000 training
images and run on Fashion-MNIST test images: ResNet-20 from
``benchmarks/artifacts/fmnist-r20-float.safetensors``, ResNet-8 from
``benchmarks/artifacts/fmnist-r8-float.safetensors`` (its images padded to 32x32 and repeated
over 3 channels; trained by this script, 4 epochs, about 5 minutes, where the file is missing).
Each row then gives the hard model's accuracy on the first 1,000 test images.

    python benchmarks/cortex_m.py [--models resnet8 resnet20] [--bits 3 2] [--images 4] [--weights random|trained]
                                  [--targets cortex-m4 cortex-m3 ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import shiftquant as sq
from shiftquant.cli import bundle_summary
from shiftquant.data.fashion_mnist import FILES, MEAN, STD, find_root, read_idx
from shiftquant.export.c import cortex_m
from shiftquant.models import build_model, load_weights

SHAPES = {"resnet8": (3, 32, 32), "resnet20": (1, 28, 28), "lenet5": (1, 28, 28), "lenet5_avg": (1, 28, 28)}
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TRAINED = {"resnet8": ARTIFACTS / "fmnist-r8-float.safetensors", "resnet20": ARTIFACTS / "fmnist-r20-float.safetensors"}


def random_model(name: str) -> tuple[torch.nn.Module, sq.PixelInput, np.ndarray, np.ndarray, None]:
    """``(model, pixel spec, calibration pixels, pixels to run, their labels)``: random weights, BatchNorm as after
    training (scales that are not powers of two), random pixels."""
    c, h, w = SHAPES.get(name, (3, 32, 32))
    torch.manual_seed(0)
    model = build_model(name, 10, c).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    rng = np.random.default_rng(0)
    return model, sq.PixelInput((0.5,) * c, (0.25,) * c), rng.integers(0, 256, (32, c, h, w)).astype(np.uint8), \
        rng.integers(0, 256, (64, c, h, w)).astype(np.uint8), None


@functools.lru_cache(maxsize=None)  # read once per run, not per model and width
def fashion_pixels(split: str, channels: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` as uint8 pixels ``(N, channels, size, size)`` (padded with zeros,
    repeated over channels) and labels."""
    root = find_root(None)
    if root is None:
        raise SystemExit("Fashion-MNIST is not installed (Debian: dataset-fashion-mnist)")
    x = read_idx(root / FILES[split][0])
    pad = (size - x.shape[1]) // 2
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    return np.repeat(x[:, None], channels, 1), read_idx(root / FILES[split][1]).astype(np.int64)


def fit(model: torch.nn.Module, px: sq.PixelInput, x: np.ndarray, y: np.ndarray, lr: float) -> float:
    """One pass of AdamW (batch 128) over pixels ``x`` with labels ``y``; returns the last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=1e-4)
    model.train()
    for idx in torch.randperm(len(x)).split(128):
        loss = torch.nn.functional.cross_entropy(model(px.to_float(x[idx.numpy()])), torch.from_numpy(y[idx.numpy()]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def train_float(name: str, path: Path, epochs: int = 4) -> None:
    """Train ``name`` in float on Fashion-MNIST at its shape and save it to ``path``."""
    from safetensors.torch import save_file

    c, _, size = SHAPES[name]
    x, y = fashion_pixels("train", c, size)
    torch.manual_seed(0)
    model = build_model(name, 10, c)
    for epoch in range(epochs):
        loss = fit(model, sq.PixelInput((MEAN,) * c, (STD,) * c), x, y, 2e-3)
        print(f"trained {name}: epoch {epoch + 1}/{epochs}, last loss {loss:.3f}", flush=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def trained_model(name: str) -> tuple[torch.nn.Module, sq.PixelInput, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`random_model`'s tuple for the float model trained on Fashion-MNIST (trained first
    where its file is missing): training pixels to calibrate, test pixels to run, test labels."""
    c, _, size = SHAPES[name]
    if not TRAINED[name].exists():
        train_float(name, TRAINED[name])
    model = build_model(name, 10, c).eval()
    load_weights(model, TRAINED[name])
    calib, test = fashion_pixels("train", c, size)[0][:256], fashion_pixels("test", c, size)
    return model, sq.PixelInput((MEAN,) * c, (STD,) * c), calib, *test


def measure(name: str, bits: int, images: int, tmp: Path, weights: str = "random",
            targets: tuple[str, ...] = ("cortex-m4",)) -> list[dict]:
    """One row per core of ``targets``: the model exported once, built and run on each."""
    model, px, calib, pixels, labels = (trained_model if weights == "trained" else random_model)(name)
    c, h, w = calib.shape[1:]
    path = tmp / f"{name}-w{bits}.sqb"
    # W3A3 = 2 shift bits (zero, sign, 2^0..2^-3), W2A2 = 1 shift bit
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=bits - 1, act_shift_bits=bits - 1))
    sq.calibrate(model, [px.to_float(calib)])
    sq.set_slope(model, 0.0)
    if labels is not None:  # trained: fine-tuned hard, straight-through, on 20,000 training images
        torch.manual_seed(0)
        fit(model, px, *(a[:20000] for a in fashion_pixels("train", c, h)), 5e-4)
    rt = sq.export(model, path, px.to_float(calib[:1]), px)
    macs = bundle_summary(str(path))["macs"]["total"]
    with torch.no_grad():  # the share of zero weights: the kernels skip them
        hard = [m.weight_quantizer(m.weight) for m in model.modules() if getattr(m, "weight_quantizer", None)]
        zero = sum(int((q == 0).sum()) for q in hard) / sum(q.numel() for q in hard)
        accuracy = None if labels is None else float(  # the hard model, first 1,000 test images
            (model(px.to_float(pixels[:1000])).argmax(1).numpy() == labels[:1000]).mean())
    rows = []
    for target in targets:
        out = tmp / f"{name}-w{bits}-{target}"
        program = cortex_m.write_project(rt, out, "net", pixels[:images], target)  # the first images run
        built = cortex_m.build(out, "net", program.stack_bytes, target)
        run = cortex_m.run(built.elf, target=target)
        assert np.array_equal(run.logits, rt.run_int(pixels[:images])[0]), "target != reference"
        per_image = float(np.median(run.instructions))
        rows.append({"model": name, "bits": f"W{bits}A{bits}", "weights": weights, "target": target,
                     "input": [c, h, w], "macs": macs, "flash_bytes": built.flash_bytes, "ram_bytes": built.ram_bytes,
                     "sections": built.sections, "host_estimate_flash": program.flash_bytes,
                     "instructions_per_image": per_image, "instructions_per_mac": per_image / macs,
                     "zero_weights": zero, "test_accuracy_1000": accuracy})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet8", "resnet20"])
    p.add_argument("--bits", type=int, nargs="+", default=[3, 2])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--weights", choices=("random", "trained"), default="random")
    p.add_argument("--targets", nargs="+", choices=list(cortex_m.TARGETS), default=["cortex-m4"])
    p.add_argument("--json")
    args = p.parse_args()
    if cortex_m.tools_missing():
        raise SystemExit(f"missing {cortex_m.tools_missing()} (Debian: gcc-arm-none-eabi libnewlib-arm-none-eabi "
                         "qemu-system-arm)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, bits in ((n, b) for n in args.models for b in args.bits):
            for r in measure(name, bits, args.images, Path(tmp), args.weights, tuple(args.targets)):
                rows.append(r)
                print(f"{r['model']:>9} {r['bits']} {r['target']}: {r['macs'] / 1e6:.2f} M MACs, "
                      f"flash {r['flash_bytes']:,} B, RAM {r['ram_bytes']:,} B, "
                      f"{r['instructions_per_image'] / 1e6:.1f} M instructions per image, "
                      f"{r['instructions_per_mac']:.2f} per MAC ({r['weights']} weights, "
                      f"{100 * r['zero_weights']:.0f} % zero)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
