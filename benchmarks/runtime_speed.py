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
count, and against onnxruntime (the int8 stack a deployment compares with): the same float model
exported to ONNX, in float32 and quantized statically to int8 (QDQ, per-channel int8 weights, int8
activations, calibrated on the images the bundle was calibrated on), on the same thread count. Targets (BENCHMARKS.md): the C backend at least 3x float at batch 1 and at least 1x at
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


def onnx_sessions(float_model, tmp: Path, calib: np.ndarray, x_of):
    """onnxruntime float32 and static int8 (QDQ, per-channel int8 weights, int8 activations,
    calibrated on ``calib``, the images the bundle was calibrated on; three forms) of the float model:
    ``{name: function(threads) -> session}``. None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        return None
    path = tmp / "float.onnx"
    torch.onnx.export(float_model, (x_of(calib[:1]),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    quant_pre_process(str(path), str(tmp / "pre.onnx"))

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": x_of(calib[i:i + 8]).numpy()} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    # int8 in onnxruntime's usual forms: QDQ with signed or unsigned activations (x86's u8 x s8
    # dot products), and the fused QOperator form; the table reports each, the fastest is the peer.
    variants = {"ort_int8_qdq_s8": (QuantFormat.QDQ, QuantType.QInt8),
                "ort_int8_qdq_u8": (QuantFormat.QDQ, QuantType.QUInt8),
                "ort_int8_qop_u8": (QuantFormat.QOperator, QuantType.QUInt8)}
    for name, (fmt, act) in variants.items():
        quantize_static(str(tmp / "pre.onnx"), str(tmp / f"{name}.onnx"), Images(), quant_format=fmt,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=act)

    def session(model: Path):
        def make(threads: int):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        return make

    return {"ort_float32": session(path), **{name: session(tmp / f"{name}.onnx") for name in variants}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20", help="a build_model name (default: resnet20)")
    p.add_argument("--options", type=json.loads, default=None,
                   help="the model constructor's keyword arguments, as JSON (a ViT's img_size, patch_size, depth)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--skip-reference", action="store_true", help="the numpy runtime is slow: leave it out")
    p.add_argument("--skip-onnxruntime", action="store_true",
                   help="leave out onnxruntime float32 and static int8 (QDQ, per-channel) of the same float model")
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        float_model, bundle, calib = models(Path(tmp), args.model, args.options)
        reference = sq.load_bundle(bundle)
        native = sq.load_bundle(bundle, backend="c")
        assert np.array_equal(native.run(calib[:8]), reference.run(calib[:8]))  # bit for bit, before timing
        x_of = sq.PixelInput((MEAN,), (STD,)).to_float
        peers = {} if args.skip_onnxruntime else (onnx_sessions(float_model, Path(tmp), calib, x_of) or {})
        print(f"{'batch':>5} {'threads':>7} {'float PyTorch':>14} {'reference':>10} "
              + "".join(f" {name:>16}" for name in peers) + f" {'C':>10} {'C/float':>8}"
              + "".join(f" {'C/' + name:>18}" for name in peers))
        for threads in args.threads:
            torch.set_num_threads(threads)
            native.threads = threads
            sessions = {name: make(threads) for name, make in peers.items()}
            for batch in args.batches:
                pixels = np.random.default_rng(batch).integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8)
                x = x_of(pixels)
                with torch.no_grad():
                    fp = images_per_second(lambda: float_model(x), batch, args.repeats)
                ref = (float("nan") if args.skip_reference else
                       images_per_second(lambda: reference.run(pixels), batch, max(1, args.repeats // 2), 0.0))
                feed = {"x": x.numpy()}
                peer = {name: images_per_second(lambda s=s: s.run(None, feed), batch, args.repeats)
                        for name, s in sessions.items()}
                c = images_per_second(lambda: native.run(pixels), batch, args.repeats)
                best = max((v for name, v in peer.items() if name.startswith("ort_int8")), default=float("nan"))
                rows.append({"batch": batch, "threads": threads, "float_pytorch": fp, "reference": ref, "c": c,
                             "reference_ratio": ref / fp, "c_ratio": c / fp, **peer,
                             **{f"c_over_{name}": c / v for name, v in peer.items()},
                             "c_over_best_int8": c / best})
                print(f"{batch:>5} {threads:>7} {fp:>14.1f} {ref:>10.1f}" + "".join(f" {v:>16.1f}" for v in peer.values())
                      + f" {c:>10.1f} {c / fp:>8.2f}" + "".join(f" {c / v:>18.2f}" for v in peer.values()))
        program = native.program
        print(f"C: {program.weights} weights, flash {program.flash_bytes:,} bytes, RAM {program.ram_bytes:,} bytes; "
              f"bundle {bundle.stat().st_size:,} bytes; torch {torch.__version__}")
    if args.json:
        c_program = {"weights": program.weights, "flash_bytes": program.flash_bytes, "ram_bytes": program.ram_bytes}
        Path(args.json).write_text(json.dumps({f"{args.model}_w3a3": rows, "c_program": c_program}, indent=2))


if __name__ == "__main__":
    main()
