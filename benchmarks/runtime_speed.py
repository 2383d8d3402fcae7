"""Images/s of float32 PyTorch, the reference runtime and the C backend, side by side in one run.

A model on Fashion-MNIST's shape (1x28x28 uint8 pixels in, the normalization folded into the first
layer's thresholds), every Conv/Linear quantized with the ``deploy`` recipe (W3A3: 2 shift bits,
8 levels, for weights and activations; the 8-bit integer residual grid), batch 1 and 64, on 1 and
2 threads (PyTorch and the C backend use the same count). ``--model``: ``resnet20`` (default), or
the integer-only families ``lenet5``, ``lenet5_avg``, ``vgg_small``, ``timm:mobilenetv2_050``,
``timm:efficientnet_lite0``, ``timm:vit_tiny_patch16_224`` with ``--options '{"img_size": 28,
"patch_size": 7, "depth": 4}'`` (``conf/model/timm_vit_tiny.yaml``; any name ``build_model`` knows
whose deploy bundle is integer-only, ``--options`` its constructor's keyword arguments).
Ratios are against float PyTorch measured in the same run, at the same batch size and thread
count. Targets (BENCHMARKS.md): the C backend at least 3x float at batch 1 and at least 1x at
batch 64.

    python benchmarks/runtime_speed.py [--model NAME] [--repeats 5] [--threads 1 2] [--skip-reference] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import shiftquant as sq
from shiftquant.data.fashion_mnist import MEAN, STD
from shiftquant.models import build_model


def images_per_second(fn, batch: int, repeats: int, min_seconds: float = 0.2) -> float:
    """Median over ``repeats`` timings, each of enough calls to last ``min_seconds``."""
    fn()
    t = time.perf_counter()
    fn()
    calls = max(1, int(min_seconds / max(time.perf_counter() - t, 1e-6)))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls)
    return batch / statistics.median(times)


def models(tmp: Path, name: str = "resnet20", options: dict | None = None):
    """The float model, and the bundle of its W3A3 deploy twin (pixel input)."""
    torch.manual_seed(0)
    float_model = build_model(name, 10, 1, options=options).eval()
    qmodel = build_model(name, 10, 1, options=options)
    qmodel.load_state_dict(float_model.state_dict())
    sq.quantize_model(qmodel, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    pixels = sq.PixelInput((MEAN,), (STD,))
    calib = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    sq.calibrate(qmodel, [pixels.to_float(calib.numpy())])
    sq.export(qmodel.eval(), tmp / "model.sqb", pixels.to_float(calib[:1].numpy()), pixels)
    return float_model, tmp / "model.sqb", calib.numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20", help="a build_model name (default: resnet20)")
    p.add_argument("--options", type=json.loads, default=None,
                   help="the model constructor's keyword arguments, as JSON (a ViT's img_size, patch_size, depth)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--skip-reference", action="store_true", help="the numpy runtime is slow: leave it out")
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        float_model, bundle, calib = models(Path(tmp), args.model, args.options)
        reference = sq.load_bundle(bundle)
        native = sq.load_bundle(bundle, backend="c")
        assert np.array_equal(native.run(calib[:8]), reference.run(calib[:8]))  # bit for bit, before timing
        print(f"{'batch':>5} {'threads':>7} {'float PyTorch':>14} {'reference':>10} {'C':>10} "
              f"{'reference/float':>15} {'C/float':>8}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            native.threads = threads
            for batch in args.batches:
                pixels = np.random.default_rng(batch).integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8)
                x = sq.PixelInput((MEAN,), (STD,)).to_float(pixels)
                with torch.no_grad():
                    fp = images_per_second(lambda: float_model(x), batch, args.repeats)
                ref = (float("nan") if args.skip_reference else
                       images_per_second(lambda: reference.run(pixels), batch, max(1, args.repeats // 2), 0.0))
                c = images_per_second(lambda: native.run(pixels), batch, args.repeats)
                rows.append({"batch": batch, "threads": threads, "float_pytorch": fp, "reference": ref, "c": c,
                             "reference_ratio": ref / fp, "c_ratio": c / fp})
                print(f"{batch:>5} {threads:>7} {fp:>14.1f} {ref:>10.1f} {c:>10.1f} {ref / fp:>15.3f} {c / fp:>8.2f}")
        program = native.program
        print(f"C: flash {program.flash_bytes:,} bytes, RAM {program.ram_bytes:,} bytes; "
              f"bundle {bundle.stat().st_size:,} bytes; torch {torch.__version__}")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{args.model}_w3a3": rows}, indent=2))


if __name__ == "__main__":
    main()
