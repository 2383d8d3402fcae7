"""The FPGA flow on a trained network: Fashion-MNIST -> QONNX -> hls4ml C simulation.

A float network trained on Fashion-MNIST (``--model resnet20``: the ResNet-20 of
``benchmarks/artifacts/fmnist-r20-float.safetensors``; ``--model vgg_small --weights CKPT``: the
float control of ``benchmarks/fmnist_families.py``, ``outputs/fmnist-families-v2/vgg_small-float-s0``)
is quantized with
the ``deploy`` preset, power-of-two weights (``--weight-bits``, 3 = sign + 2 exponent bits) and
8-bit activations on power-of-two grids (weight-only: the form hls4ml computes with shifts),
calibrated on 256 training images (post-training, no fine-tuning), written as QONNX in both forms
(``thresholds``: BatchNorm folded; ``float``) and the float form built by hls4ml (``shiftquant.export.qonnx.hls.to_hls``). On ``--images`` Fashion-MNIST test images it
reports the top-1 agreement and the largest logit difference of qonnx's executor and of hls4ml's
C simulation against the PyTorch hard model, each one's accuracy, the time to compile the C
simulation (g++) and to run it, the products the generated HLS uses and the fixed-point types
hls4ml chose per layer. Results: ``benchmarks/results/fpga/NAME.json`` (no paths).

    python benchmarks/fpga_hls4ml.py [--model vgg_small --weights CKPT] [--images 100] [--io-type io_stream]
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import shiftquant as sq
from shiftquant.data import FashionMNISTDataModule
from shiftquant.export.qonnx.hls import shift_layers, to_hls
from shiftquant.export.qonnx.lower import run_qonnx
from shiftquant.models import load_weights, resnet20, vgg_small

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "benchmarks" / "artifacts" / "fmnist-r20-float.safetensors"
MODELS = {"resnet20": resnet20, "vgg_small": vgg_small}


def _batches(images: int):
    dm = FashionMNISTDataModule(batch_size=256, augment=False)
    dm.setup("fit")
    calibration = next(iter(dm.train_dataloader()))[0]
    x, y = [], []
    for xb, yb in dm.test_dataloader():
        x.append(xb)
        y.append(yb)
        if sum(len(b) for b in x) >= images:
            break
    return calibration, torch.cat(x)[:images], torch.cat(y)[:images].numpy()


def _products(source: str) -> dict[str, int]:
    return dict(collections.Counter(line.split("product::")[1].split("<")[0]
                                    for line in source.splitlines() if "product::" in line))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20", choices=tuple(MODELS))
    p.add_argument("--weights", help="float weights (default: the ResNet-20 artifact)")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--no-hls", action="store_true", help="QONNX only")
    p.add_argument("--io-type", default="io_parallel", choices=("io_parallel", "io_stream"),
                   help="hls4ml's io_type (ResNet-20's io_parallel C simulation did not compile within 40 minutes here)")
    p.add_argument("--weight-bits", type=int, default=3, help="power-of-two weight bits (sign + exponent)")
    args = p.parse_args()
    torch.manual_seed(0)
    model = MODELS[args.model](num_classes=10, in_chans=1)
    load_weights(model, args.weights or ARTIFACT)
    calibration, x, labels = _batches(args.images)
    sq.quantize_model(model.eval(), sq.QuantRecipe.preset("deploy", weight_shift_bits=args.weight_bits - 1,
                                                          act_shift_bits=None))
    sq.calibrate(model, [calibration])
    sq.set_slope(model, 0.0)
    with torch.no_grad():
        ref = model(x).numpy()
    source = Path(args.weights).name if args.weights else ARTIFACT.name
    found: dict = {"model": f"{args.model} ({source}, deploy, post-training)",
                   "weights": f"W{args.weight_bits} powers of two", "activations": "8-bit, power-of-two grid",
                   "images": args.images,
                   "pytorch_top1": float((ref.argmax(1) == labels).mean())}
    with tempfile.TemporaryDirectory() as tmp:
        for form in ("thresholds", "float"):  # the float form last: hls4ml reads it
            path = Path(tmp) / f"model-{form}.onnx"
            sq.export_qonnx(model, path, x[:1], check=False, form=form)
            got = run_qonnx(path, x.numpy())
            found["qonnx" if form == "float" else "qonnx_thresholds"] = {
                "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                "max_abs_diff": float(np.abs(got - ref).max())}
        if args.no_hls:
            return _write(args, found)
        hls_model = to_hls(path, Path(tmp) / "hls", io_type=args.io_type)
        found["io_type"] = args.io_type
        found["shift_layers"] = len(shift_layers(hls_model))
        found["layers"] = {layer.name: {"class": layer.class_name,
                                        "result": str(layer.get_output_variable().type.precision),
                                        **{k: str(v.type.precision) for k, v in layer.weights.items()}}
                           for layer in hls_model.get_layers()}
        start = time.perf_counter()
        hls_model.compile()
        found["compile_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        out = hls_model.predict(np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))).reshape(ref.shape)
        found["predict_s"] = round(time.perf_counter() - start, 2)
        found["products"] = _products((Path(tmp) / "hls" / "firmware" / "parameters.h").read_text())
    found["hls4ml"] = {"top1_agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
                       "max_abs_diff": float(np.abs(out - ref).max()), "top1": float((out.argmax(1) == labels).mean())}
    _write(args, found)


def _write(args, found: dict) -> None:
    results = ROOT / "benchmarks" / "results" / "fpga"
    results.mkdir(parents=True, exist_ok=True)
    tag = f"{args.model}-w{args.weight_bits}" + ("-qonnx" if args.no_hls else "" if args.io_type == "io_parallel"
                                                else "-stream")
    (results / f"{tag}.json").write_text(json.dumps(found, indent=2) + "\n")
    print(json.dumps({k: v for k, v in found.items() if k != "layers"}, indent=2))


if __name__ == "__main__":
    main()
